"""The protocol is code: docs/protocol.md carries the tables fbt_engine.protocol writes, every event the
engine emits uses only declared fields, and requests round-trip through their JSON lines."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from fbt_engine import errors, events
from fbt_engine import protocol as P

ROOT = Path(__file__).resolve().parents[2]


def test_docs_carry_the_tables_the_code_writes() -> None:
    block = P.docs_block((ROOT / "docs" / "protocol.md").read_text(encoding="utf-8"))
    assert block is not None, "docs/protocol.md lost its protocol-table markers"
    assert block == P.markdown(), ("docs/protocol.md and fbt_engine/protocol.py disagree: "
                                   "run `python -m fbt_engine.protocol --write` and review the diff")


def test_every_message_and_field_is_documented() -> None:
    documented = [*P.REQUESTS.values(), *P.RESULTS.values(), *P.EVENTS.values(), P.Response, P.ErrorResponse,
                  P.ErrorInfo, P.Ready, P.Stage, P.ModelView, P.ParamCounts]
    for cls in documented:
        assert cls.__doc__, cls
        for f in dataclasses.fields(cls):
            assert f.name == "id" or f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"


def _emitted_fields() -> list[tuple[str, str, int, set[str]]]:
    """(file, event type, line, keyword names) of every `.emit("type", k=...)` call in the engine."""
    out = []
    for path in sorted((ROOT / "fbt_engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "emit"
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                names = {k.arg for k in node.keywords if k.arg is not None}
                out.append((path.name, node.args[0].value, node.lineno, names))
    return out


def test_engine_emits_only_declared_event_types_and_fields() -> None:
    calls = _emitted_fields()
    assert len(calls) >= 8  # the scan found the trainer's and the run's emits
    for file, type_, line, names in calls:
        assert type_ in P.EVENTS, f"{file}:{line} emits undeclared event type {type_!r}"
        declared = {f.name for f in dataclasses.fields(P.EVENTS[type_])}
        assert names <= declared, f"{file}:{line} emits {sorted(names - declared)} not declared in protocol.{P.EVENTS[type_].__name__}"


def test_events_module_uses_the_protocol_definitions() -> None:
    assert events.PROTOCOL_VERSION == P.PROTOCOL_VERSION
    assert set(events.EVENT_TYPES) == set(P.EVENTS)
    ev = events.decode(events.encode(events.Event("step", "r", 1.5, {"epoch": 2, "loss": float("nan"), "new": 1})))
    body = ev.typed()
    assert isinstance(body, P.Step) and body.epoch == 2 and body.loss == "nan"  # unknown fields dropped
    assert events.Event("wibble", "r", 0.0).typed() is None


def test_emitter_sends_typed_events(tmp_path: Path) -> None:
    em = events.Emitter("r", tmp_path / "events.jsonl")
    em.send(P.Failed(kind="oom", message="out of memory", hint="smaller batch"))
    em.close()
    (ev,) = events.read_events(tmp_path / "events.jsonl")
    assert ev.type == "failed" and ev.get("hint") == "smaller batch" and ev.typed().kind == "oom"


def test_error_kinds_cover_every_user_error() -> None:
    kinds = {errors.FBTError.kind} | {c.kind for c in errors.FBTError.__subclasses__()}
    assert kinds <= set(P.ERROR_KINDS) and kinds <= set(P.FAILED_KINDS)


def test_catalog_entry_matches_the_catalog() -> None:
    from fbt_engine.catalog import ModelEntry
    assert [f.name for f in dataclasses.fields(P.CatalogEntry)] == [f.name for f in dataclasses.fields(ModelEntry)]


@pytest.mark.parametrize("request_", [
    P.ModelsRequest(id=1, filter="resnet*", fusable=True),
    P.FuseRequest(id="a", teacher="swin_tiny_patch4_window7_224", student="resnet18", depth=4,
                  student_kwargs={"drop_rate": 0.1}),
    P.SummaryRequest(id=3, teacher="t", student="s", order="teacher-first"),
    P.ValidateRequest(id=4, preset="presets/quickstart.toml", set=["train.epochs=1"]),
    P.CancelRequest(id=5, target="a"),
])
def test_requests_round_trip(request_: P.Request) -> None:
    line = P.encode_request(request_)
    assert line.endswith("\n") and json.loads(line)["op"] == request_.OP and json.loads(line)["v"] == P.PROTOCOL_VERSION
    assert P.parse_request(line) == request_


@pytest.mark.parametrize("line, words", [
    ("not json", "not JSON"),
    ("[1, 2]", "JSON list, not an object"),
    ('{"op": "models"}', "no `id`"),
    ('{"id": true, "op": "models"}', "bad `id`"),
    ('{"v": 2, "id": 1, "op": "models"}', "protocol version 2"),
    ('{"id": 1, "op": "fuze"}', "unknown op 'fuze'"),
    ('{"id": 1, "op": "fuse", "teacher": "a", "student": "b", "img-size": 3}', "unknown field 'img-size'"),
    ('{"id": 1, "op": "fuse", "teacher": "a", "student": "b", "img_size": "224"}', "`img_size` is '224', not int"),
    ('{"id": 1, "op": "fuse", "teacher": "a", "student": "b", "split": true}', "`split` is True, not int"),
    ('{"id": 1, "op": "fuse", "teacher": "a"}', "has no `student`"),
    ('{"id": 1, "op": "validate", "preset": "p.toml", "set": ["a=1", 2]}', "`set`"),
    ("[" * 100000, "not JSON"),
])
def test_bad_requests_name_the_problem(line: str, words: str) -> None:
    with pytest.raises(P.ProtocolError) as info:
        P.parse_request(line)
    assert words in info.value.message and info.value.hint


def test_answers_parse_into_their_types() -> None:
    ok = P.parse_answer(P.encode(P.Response(id=7, result=P.CancelResult(target=3, cancelled=True), elapsed_s=0.5)))
    assert ok == P.Response(id=7, result={"target": 3, "cancelled": True}, elapsed_s=0.5)
    assert P.result_of("cancel", ok.result) == P.CancelResult(target=3, cancelled=True)
    err = P.parse_answer(P.encode(P.ErrorResponse(id=None, error=P.ErrorInfo(kind="bad_request", message="m"))))
    assert err == P.ErrorResponse(id=None, error=P.ErrorInfo(kind="bad_request", message="m", hint=""))
    ready = P.parse_answer(P.encode(P.Ready(pid=5, warm_s=1.0, versions={"torch": "x"}, ops=["fuse"])))
    assert isinstance(ready, P.Ready) and ready.pid == 5
    for junk in (b"Traceback (most recent call last):", b"[]", b'{"id": 1}', b"\xff"):
        assert P.parse_answer(junk) is None


def test_typed_results_round_trip() -> None:
    stage = P.Stage(name="stem", layout="nchw", shape=[64, 8, 8], num_prefix=0)
    view = P.ModelView(name="resnet18", kind="cnn", family="resnet", params=1, stages=[stage])
    res = P.FuseResult(teacher=view, student=view, plan={"chain": "x"},
                       params=P.ParamCounts(teacher=1, student=1, fused_total=1, shared_with_teacher=0,
                                            shared_with_student=0, new_learnable=1),
                       mult_adds=3, img_size=32, num_classes=10, depth=2, summary="tree")
    wire = json.loads(P.encode(P.Response(id=1, result=res)))["result"]
    assert P.result_of("fuse", wire) == res
    entries = [P.CatalogEntry(name="a", family="f", kind="cnn", params=None, input_size=[3, 8, 8],
                              pretrained_tags=[], fusable=True)]
    assert P.result_of("models", json.loads(P.encode(P.Response(id=1, result=entries)))["result"]) == entries
