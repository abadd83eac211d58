"""The engine's wire protocols as typed code (stdlib only: the TUI, the fake engine and the docs use it).

One definition per message, one version for all of them:

- **Run events** (`events.jsonl`, `run --jsonl`): one dataclass per event type (`Started`, `Step`, ...),
  registered in `EVENTS`. `fbt_engine.events` encodes and decodes them; readers ignore unknown types
  and fields.
- **The service** (`fbt-engine serve`): one dataclass per request (`FuseRequest`, ...; registry
  `REQUESTS`), per result (`FuseResult`, ...) and per answer (`Response`, `ErrorResponse`, `Ready`).

docs/protocol.md carries the tables `markdown()` writes from these definitions, and a test fails
when the two disagree: change a field here, then run `python -m fbt_engine.protocol --write`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

PROTOCOL_VERSION = 1
ORDERS = ("auto", "student-first", "teacher-first")
MIXERS = ("auto", "attention", "swin", "none")
LINE_LIMIT = 1 << 20  # a request line longer than this (1 MiB) is refused, not read into memory


def doc(text: str, default: Any = MISSING, factory: Any = MISSING) -> Any:
    """A dataclass field that carries its documentation (docs/protocol.md is written from it)."""
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: encode them as strings so a diverging loss still round-trips."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def plain(value: Any) -> Any:
    """Dataclasses (also nested in lists and dicts) as plain JSON data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def dumps(obj: dict[str, Any]) -> str:
    """One JSON line (with its newline); NaN/inf as strings."""
    return json.dumps(_clean(obj), separators=(",", ":"), default=str) + "\n"


# ==== run events ===============================================================================

@dataclass(frozen=True, kw_only=True)
class EventBody:
    """The fields of one event type beyond the common `v`, `type`, `run` and `t`."""

    TYPE: ClassVar[str] = ""


EVENTS: dict[str, type[EventBody]] = {}


def _event(cls: type[EventBody]) -> type[EventBody]:
    EVENTS[cls.TYPE] = cls
    return cls


@_event
@dataclass(frozen=True, kw_only=True)
class Started(EventBody):
    """A run has started (after every pre-flight check)."""

    TYPE: ClassVar[str] = "started"
    config: dict[str, Any] = doc("the resolved preset as a dict", factory=dict)
    method: str = doc("training method (`fbt-engine methods`)", "")
    teacher: str = doc("teacher model name", "")
    student: str = doc("student model name", "")
    device: str = doc("torch device, e.g. `cpu`, `cuda:0`", "")
    world_size: int = doc("processes training together (1 without torchrun)", 1)
    params: dict[str, int] = doc("`student`, `teacher`, `extra` (what the method adds), `trainable`; fbt adds "
                                 "the fuse table's keys", factory=dict)
    pid: int = doc("the engine's process id (a reader checks whether the run is still alive)", 0)
    resumed: bool = doc("whether this start continues a stopped run", False)
    teacher_digest: str | None = doc("sha256 prefix of the teacher file, null when none", None)
    torch: str = doc("torch version", "")
    dataset: dict[str, Any] = doc("`name`, `train`, `val` (sizes), `classes`", factory=dict)


@_event
@dataclass(frozen=True, kw_only=True)
class Phase(EventBody):
    """A training phase starts: the teacher's own training, or distillation."""

    TYPE: ClassVar[str] = "phase"
    phase: str = doc("`teacher` or `distill`", "")
    epochs: int = doc("epochs of the phase", 0)
    steps_per_epoch: int = doc("optimizer steps per epoch", 0)
    start_epoch: int = doc("first epoch run now (above 1 after a resume)", 1)


@_event
@dataclass(frozen=True, kw_only=True)
class Step(EventBody):
    """One logged optimizer step."""

    TYPE: ClassVar[str] = "step"
    phase: str = doc("`teacher` or `distill`", "")
    epoch: int = doc("1-based epoch", 0)
    step: int = doc("global step within the phase", 0)
    epoch_step: int = doc("step within the epoch", 0)
    steps_per_epoch: int = doc("optimizer steps per epoch", 0)
    lr: float | None = doc("learning rate", None)
    loss: float | None = doc("total loss", None)
    terms: dict[str, float] = doc("named loss terms, e.g. `ce`, `ofa/t->s`, `nce/f->s`", factory=dict)
    samples_per_s: float | None = doc("training throughput", None)
    eta_s: float | None = doc("seconds left in the phase", None)
    signals: dict[str, float] = doc("cheap health signals of the step (docs/health.md): `grad_norm` (before "
                                    "clipping); fbt adds `fused_spread` and `tau/<path>`", factory=dict)
    rank_samples_per_s: list[float] = doc("under torchrun: each rank's own throughput, by rank (empty with one "
                                          "process)", factory=list)


@_event
@dataclass(frozen=True, kw_only=True)
class Eval(EventBody):
    """End-of-epoch evaluation (accuracies are percentages, 0-100)."""

    TYPE: ClassVar[str] = "eval"
    phase: str = doc("`teacher` or `distill`", "")
    epoch: int = doc("1-based epoch", 0)
    student_top1: float | None = doc("student top-1", None)
    student_top5: float | None = doc("student top-5", None)
    fused_top1: float | None = doc("fused model top-1 (fbt only, else null)", None)
    teacher_top1: float | None = doc("teacher top-1 (null until known)", None)
    ema_top1: float | None = doc("top-1 of the student's EMA (null without EMA)", None)


@_event
@dataclass(frozen=True, kw_only=True)
class Checkpoint(EventBody):
    """A checkpoint was written."""

    TYPE: ClassVar[str] = "checkpoint"
    phase: str = doc("`teacher` or `distill`", "")
    path: str = doc("the checkpoint file", "")
    epoch: int = doc("epoch it holds", 0)
    best: bool = doc("whether it is the best so far", False)


@_event
@dataclass(frozen=True, kw_only=True)
class Finished(EventBody):
    """The run ended normally."""

    TYPE: ClassVar[str] = "finished"
    reason: str = doc("`completed` or `stopped`", "")
    best: dict[str, Any] = doc("{`epoch`, `student_top1`} of the best epoch", factory=dict)
    last: dict[str, Any] = doc("{`epoch`, `student_top1`} of the last epoch", factory=dict)
    duration_s: float = doc("wall time of the run", 0.0)
    student_path: str | None = doc("the student's weights (null when stopped)", None)
    best_eval: dict[str, Any] = doc("the best epoch's whole `eval` fields", factory=dict)
    last_eval: dict[str, Any] = doc("the last epoch's whole `eval` fields", factory=dict)


@_event
@dataclass(frozen=True, kw_only=True)
class Failed(EventBody):
    """The run failed (see the failure kinds)."""

    TYPE: ClassVar[str] = "failed"
    kind: str = doc("one of the failure kinds below", "")
    message: str = doc("one sentence naming the bad input", "")
    hint: str = doc("what to do instead", "")
    step: int | None = doc("the step it failed at (when known)", None)
    term: str | None = doc("`nan_loss`: the loss term, or `weights`", None)
    rank: int | None = doc("under torchrun: the rank that failed (null when it is not known, and without "
                           "torchrun)", None)


@_event
@dataclass(frozen=True, kw_only=True)
class HealthWarning(EventBody):
    """A health check tripped (docs/health.md): the run goes on, but something looks wrong."""

    TYPE: ClassVar[str] = "warning"
    signal: str = doc("what was measured, e.g. `fused_spread`, `nce/t->f`, `grad_norm`", "")
    rule: str = doc("the rule that tripped (`fbt_engine.health.RULES`), e.g. `collapse`, `grad_spike`", "")
    value: float | None = doc("the measured value", None)
    threshold: float | None = doc("the threshold it crossed", None)
    phase: str = doc("`teacher` or `distill`", "")
    epoch: int = doc("1-based epoch", 0)
    step: int | None = doc("the step (null for a check at an evaluation)", None)
    message: str = doc("one sentence: the signal, its value and the threshold", "")
    hint: str = doc("what to look at or change", "")


@_event
@dataclass(frozen=True, kw_only=True)
class Log(EventBody):
    """A line of text for the reader's log."""

    TYPE: ClassVar[str] = "log"
    level: str = doc("`info`, `warning` or `error`", "info")
    message: str = doc("the text", "")


# kind -> (exit code, meaning). `failed.kind` is one of these.
FAILED_KINDS: dict[str, tuple[int, str]] = {
    "config_error": (2, "the preset is wrong"),
    "model_error": (2, "a model cannot be built, or the pair cannot be fused"),
    "data_error": (2, "the data is missing or unreadable"),
    "training_error": (2, "training cannot go on for a reason the user can act on"),
    "damaged_file": (2, "a checkpoint or weight file is truncated, corrupt, or not weights"),
    "write_error": (2, "a file could not be written (disk full, permissions)"),
    "nan_weights": (2, "refused to save weights holding NaN/inf"),
    "user_error": (2, "any other problem the user can fix"),
    "nan_loss": (1, "the loss or the weights became non-finite (`term` says which)"),
    "oom": (1, "out of GPU memory"),
    "data_worker": (1, "a data-loading worker died"),
    "crash": (1, "a bug: the traceback is in log.txt"),
    "rank_failed": (1, "under torchrun: another rank raised an error (`rank`, its message)"),
    "rank_lost": (1, "under torchrun: another rank ended without a word (SIGKILL, the OOM killer)"),
    "hang": (1, "under torchrun: no progress for `train.watchdog_s` seconds (`rank`: the stuck one, if known)"),
    "aborted": (130, "a second Ctrl-C"),
}


def event_body(type: str, data: dict[str, Any]) -> EventBody | None:
    """The typed body of an event (unknown fields dropped, missing ones defaulted); None for unknown types.

    Lenient on purpose: events come from files that may be old, torn or hand-edited."""
    cls = EVENTS.get(type)
    if cls is None:
        return None
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


# ==== the service: requests ====================================================================

@dataclass(frozen=True, kw_only=True)
class Request:
    """Every request carries `v`, `id` and `op`; the answer carries the same `id`."""

    OP: ClassVar[str] = ""
    LANE: ClassVar[str] = "general"  # preview: a newer request supersedes the older ones still waiting
    id: int | str = doc("chosen by the client, echoed in the answer")


REQUESTS: dict[str, type[Request]] = {}


def _request(cls: type[Request]) -> type[Request]:
    REQUESTS[cls.OP] = cls
    return cls


@_request
@dataclass(frozen=True, kw_only=True)
class ModelsRequest(Request):
    """The catalog (what `fbt-engine models --json` prints). Answer: a list of `CatalogEntry`."""

    OP: ClassVar[str] = "models"
    filter: str = doc("name pattern: glob (`resnet*`) or substring", "")
    kind: str = doc("only this kind: cnn, msa, mlp, hybrid, unknown (empty: all)", "")
    fusable: bool = doc("only models FBT can fuse", False)
    counts: bool = doc("compute missing parameter counts (first time: minutes, then cached)", False)


@_request
@dataclass(frozen=True, kw_only=True)
class FuseRequest(Request):
    """The fused model of a pair (what `fbt-engine fuse --json` prints). Answer: `FuseResult`."""

    OP: ClassVar[str] = "fuse"
    LANE: ClassVar[str] = "preview"
    teacher: str = doc("teacher: a timm model name")
    student: str = doc("student: a timm model name")
    img_size: int = doc("input size (square), 8 to 2048", 224)
    num_classes: int = doc("classes of the task", 1000)
    order: str = doc(f"which model gives the local stages: {', '.join(ORDERS)}", "auto")
    split: int = doc("stages taken from the local model, 1 to 3", 3)
    mixer: str = doc(f"L2G mixing: {', '.join(MIXERS)}", "auto")
    depth: int = doc("depth of the torchinfo tree, 0 to 10 (changing only this never rebuilds)", 2)
    teacher_kwargs: dict[str, Any] = doc("extra create_model arguments", factory=dict)
    student_kwargs: dict[str, Any] = doc("extra create_model arguments", factory=dict)

    def build_key(self) -> str:
        """Everything that decides the built models and F: the request minus `id` and `depth`."""
        data = {f.name: getattr(self, f.name) for f in fields(FuseRequest) if f.name not in ("id", "depth")}
        return json.dumps(data, sort_keys=True, default=str)


@_request
@dataclass(frozen=True, kw_only=True)
class SummaryRequest(FuseRequest):
    """Only the torchinfo tree of a pair at a depth (same fields as `fuse`). Answer: `SummaryResult`."""

    OP: ClassVar[str] = "summary"


@_request
@dataclass(frozen=True, kw_only=True)
class ValidateRequest(Request):
    """Check a preset as `fbt-engine validate` does. Answer: `ValidateResult`; a bad preset is an error."""

    OP: ClassVar[str] = "validate"
    preset: str = doc("preset TOML file (relative to the service's folder)")
    set: list[str] = doc("overrides, `section.key=value`", factory=list)
    quick: bool = doc("types, names and ranges only (no models)", False)


@_request
@dataclass(frozen=True, kw_only=True)
class CancelRequest(Request):
    """Cancel a request: a waiting one is answered `cancelled` at once, a running one at its next
    checkpoint (between model builds). Answer: `CancelResult`."""

    OP: ClassVar[str] = "cancel"
    LANE: ClassVar[str] = "now"
    target: int | str = doc("the `id` of the request to cancel")


# ==== the service: results and answers =========================================================

@dataclass(frozen=True, kw_only=True)
class Stage:
    """One boundary of a model's 4-stage view (shapes exclude the batch dimension)."""

    name: str = doc("`stem`, `stage1` .. `stage4`")
    layout: str = doc("`nchw`, `nhwc` or `tokens`")
    shape: list[int] = doc("output shape in that layout")
    num_prefix: int = doc("prefix tokens (class/distillation/register) of a token layout")


@dataclass(frozen=True, kw_only=True)
class ModelView:
    """A teacher or student as F sees it."""

    name: str = doc("timm model name")
    kind: str = doc("cnn, msa, mlp, hybrid")
    family: str = doc("adapter family")
    params: int = doc("parameter count")
    stages: list[Stage] = doc("stem and the four stages at `img_size`")


@dataclass(frozen=True, kw_only=True)
class ParamCounts:
    """Parameters of T, S and F; sharing is by object identity."""

    teacher: int = doc("T's parameters")
    student: int = doc("S's parameters")
    fused_total: int = doc("F's parameters")
    shared_with_teacher: int = doc("F's parameters that are T's own")
    shared_with_student: int = doc("F's parameters that are S's own")
    new_learnable: int = doc("F's own new parameters (L2G)")


@dataclass(frozen=True, kw_only=True)
class FuseResult:
    """The answer to `fuse`, and the object `fbt-engine fuse --json` prints."""

    teacher: ModelView = doc("the teacher")
    student: ModelView = doc("the student")
    plan: dict[str, Any] = doc("the fusion plan (`FusionPlan.to_dict()`: local, global, split, order, reason, "
                               "junction_in/out, l2g, chain, ...)")
    params: ParamCounts = doc("parameter counts")
    mult_adds: int = doc("F's mult-adds for one image")
    img_size: int = doc("input size")
    num_classes: int = doc("classes")
    depth: int = doc("depth of `summary`")
    summary: str = doc("torchinfo's table of F at `depth` (fixed width: never re-wrap it)")


@dataclass(frozen=True, kw_only=True)
class SummaryResult:
    """The answer to `summary`."""

    depth: int = doc("depth of `summary`")
    summary: str = doc("torchinfo's table of F at `depth`")
    mult_adds: int = doc("F's mult-adds for one image")


@dataclass(frozen=True, kw_only=True)
class CatalogEntry:
    """One element of the answer to `models` (and of `fbt-engine models --json`)."""

    name: str = doc("timm model name")
    family: str = doc("timm module")
    kind: str = doc("cnn, msa, mlp, hybrid, unknown")
    params: int | None = doc("parameter count, null when not computed yet")
    input_size: list[int] = doc("default input, e.g. [3, 224, 224]")
    pretrained_tags: list[str] = doc("timm pretrained tags")
    fusable: bool = doc("whether FBT has a 4-stage adapter for it")


@dataclass(frozen=True, kw_only=True)
class ValidateResult:
    """The answer to `validate` for a preset `run` would start."""

    preset: str = doc("the preset file")
    valid: bool = doc("always true (an invalid preset is an error answer)")
    quick: bool = doc("whether only types, names and ranges were checked")
    checks: list[str] = doc("what was checked, one line each")


@dataclass(frozen=True, kw_only=True)
class CancelResult:
    """The answer to `cancel`."""

    target: int | str = doc("the request cancelled")
    cancelled: bool = doc("false when it was unknown or already answered")


RESULTS: dict[str, type] = {"models": CatalogEntry, "fuse": FuseResult, "summary": SummaryResult,
                            "validate": ValidateResult, "cancel": CancelResult}
LIST_RESULTS = ("models",)  # these answer a list of their result type


@dataclass(frozen=True, kw_only=True)
class ErrorInfo:
    """What went wrong, in the CLI's error/hint shape."""

    kind: str = doc("one of the error kinds below")
    message: str = doc("one sentence naming the bad input")
    hint: str = doc("what to do instead", "")


@dataclass(frozen=True, kw_only=True)
class Response:
    """A request that succeeded."""

    id: int | str = doc("the request's id")
    ok: bool = doc("true", True)
    result: Any = doc("the op's result (see the results)")
    elapsed_s: float = doc("seconds the service spent on it (queueing excluded)", 0.0)


@dataclass(frozen=True, kw_only=True)
class ErrorResponse:
    """A request that failed. A line that is not a request is answered with `id` null."""

    id: int | str | None = doc("the request's id (null when the line had none)")
    ok: bool = doc("false", False)
    error: ErrorInfo = doc("`kind`, `message`, `hint`")


@dataclass(frozen=True, kw_only=True)
class Ready:
    """Written once, when torch and timm are imported and the catalog is loaded. Requests sent
    before it wait; clients need not wait for it."""

    type: str = doc("`ready`", "ready")
    pid: int = doc("the service's process id")
    warm_s: float = doc("seconds from start to ready (imports and catalog)")
    versions: dict[str, str] = doc("`fbt_engine`, `torch`, `timm`")
    ops: list[str] = doc("the ops it answers")


# Error kinds of the service: FBTError kinds (as the CLI's exit-2 errors) plus the service's own.
ERROR_KINDS: dict[str, str] = {
    "user_error": "a problem the user can fix (the CLI's exit 2)",
    "config_error": "a bad value: out of range, unknown choice, bad preset",
    "model_error": "unknown model, unsupported pair, an input size the model cannot take",
    "data_error": "missing or unreadable data",
    "training_error": "a run cannot go on (from `validate`)",
    "damaged_file": "a weight file is corrupt",
    "write_error": "a file cannot be written",
    "nan_weights": "weights hold NaN/inf",
    "bad_request": "the line is not JSON, not an object, has an unknown op or field, or a wrong type",
    "superseded": "a newer preview request (`fuse`/`summary`) replaced this one",
    "cancelled": "cancelled by a `cancel` request, or the service is shutting down",
    "oom": "out of memory while building the models",
    "crash": "a bug in the engine: the service prints the traceback on stderr and keeps running",
}


# ==== encoding and decoding ====================================================================

class ProtocolError(Exception):
    """A line that is not a valid request: answered with a `bad_request` error, never a crash."""

    def __init__(self, message: str, hint: str = "", id: int | str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint, self.id = message, hint, id


def encode_request(request: Request) -> str:
    return dumps({"v": PROTOCOL_VERSION, "op": request.OP, **plain(request)})


def encode(message: Response | ErrorResponse | Ready) -> str:
    """A service answer as one JSON line."""
    return dumps({"v": PROTOCOL_VERSION, **plain(message)})


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _type_name(field_: dataclasses.Field) -> str:
    """A field's annotation as written (annotations are postponed: it is a string)."""
    return str(field_.type).replace(" | ", " or ")


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's annotation (the few shapes requests use)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return True


def parse_request(line: str | bytes) -> Request:
    """One request line -> its typed request. Raises ProtocolError naming what is wrong."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        raise ProtocolError("the line is not JSON", 'send one JSON object per line, e.g. {"v":1,"id":1,"op":"models"}')
    if not isinstance(obj, dict):
        raise ProtocolError(f"the line is a JSON {type(obj).__name__}, not an object",
                            'send one JSON object per line, e.g. {"v":1,"id":1,"op":"models"}')
    rid = obj.get("id")
    if not _valid_id(rid):
        raise ProtocolError(f"the request has {'no' if rid is None else 'a bad'} `id` ({rid!r})",
                            "give every request a number or string id; the answer carries it back")
    v = obj.get("v", PROTOCOL_VERSION)
    if v != PROTOCOL_VERSION:
        raise ProtocolError(f"request {rid!r} is protocol version {v!r}; this engine speaks {PROTOCOL_VERSION}",
                            "use the fbt-tui and fbt-engine of the same install", rid)
    op = obj.get("op")
    cls = REQUESTS.get(op) if isinstance(op, str) else None
    if cls is None:
        near = difflib.get_close_matches(str(op), REQUESTS, n=1)
        raise ProtocolError(f"request {rid!r} has an unknown op {op!r}",
                            f"did you mean {near[0]}?" if near else f"use one of: {', '.join(REQUESTS)}", rid)
    return _build(cls, {k: v for k, v in obj.items() if k not in ("v", "op")}, rid)


def _build(cls: type[Request], data: dict[str, Any], rid: int | str) -> Request:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    for key, value in data.items():
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            raise ProtocolError(f"request {rid!r} ({cls.OP}) has an unknown field {key!r}",
                                f"did you mean {near[0]}?" if near else f"{cls.OP} takes: {', '.join(known)}", rid)
        if not _matches(value, hints[key]):
            raise ProtocolError(f"request {rid!r} ({cls.OP}): `{key}` is {value!r}, not {_type_name(known[key])}",
                                f"send {key} as {_type_name(known[key])}", rid)
    missing = [n for n, f in known.items()
               if n not in data and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ProtocolError(f"request {rid!r} ({cls.OP}) has no `{missing[0]}`",
                            f"{cls.OP} needs: {', '.join(missing)}", rid)
    return cls(**data)


def parse_answer(line: str | bytes) -> Response | ErrorResponse | Ready | None:
    """One line from the service -> a typed answer; None for a line that is not one (log text).

    `Response.result` stays plain JSON data; `result_of` gives it its type."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    if obj.get("type") == "ready":
        return Ready(pid=int(obj.get("pid") or 0), warm_s=float(obj.get("warm_s") or 0.0),
                     versions=dict(obj.get("versions") or {}), ops=list(obj.get("ops") or []))
    if "ok" not in obj or not (_valid_id(obj.get("id")) or obj.get("id") is None):
        return None
    if obj["ok"] is True:
        return Response(id=obj["id"], result=obj.get("result"), elapsed_s=float(obj.get("elapsed_s") or 0.0))
    err = obj.get("error") if isinstance(obj.get("error"), dict) else {}
    return ErrorResponse(id=obj.get("id"), error=ErrorInfo(kind=str(err.get("kind", "crash")),
                                                           message=str(err.get("message", "the engine failed")),
                                                           hint=str(err.get("hint", ""))))


def from_plain(cls: type, data: Any) -> Any:
    """Plain JSON data -> the dataclass `cls` (nested dataclasses and lists of them too)."""
    if not dataclasses.is_dataclass(cls) or not isinstance(data, dict):
        return data
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        hint, value = hints[f.name], data[f.name]
        if typing.get_origin(hint) is list and typing.get_args(hint) and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            value = [from_plain(typing.get_args(hint)[0], v) for v in value]
        elif dataclasses.is_dataclass(hint):
            value = from_plain(hint, value)
        out[f.name] = value
    return cls(**out)


def result_of(op: str, result: Any) -> Any:
    """A response's plain `result` as the op's typed result (a list of them for `models`)."""
    cls = RESULTS[op]
    return [from_plain(cls, r) for r in result] if op in LIST_RESULTS else from_plain(cls, result)


# ==== the docs ===================================================================================

def _default(f: dataclasses.Field) -> str:
    if f.default is not MISSING:
        return "`" + json.dumps(f.default) + "`"
    if f.default_factory is not MISSING:
        return "`" + json.dumps(f.default_factory()) + "`"
    return "required"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _fields_table(cls: type, with_default: bool = True, skip: tuple[str, ...] = ()) -> list[str]:
    head = "| field | type | default | meaning |" if with_default else "| field | type | meaning |"
    rows = [head, "|---|---|---|---|" if with_default else "|---|---|---|"]
    for f in fields(cls):
        if f.name in skip:
            continue
        kind = _type_name(f)
        cells = [f"`{f.name}`", kind] + ([_default(f)] if with_default else []) + [f.metadata.get("doc", "")]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return rows


def _first_line(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


def markdown() -> str:
    """The protocol tables of docs/protocol.md, written from the definitions above."""
    out = [f"Protocol version: `{PROTOCOL_VERSION}`.", "", "### Requests",
           "Every request: `v` (protocol version), `id` (number or string, echoed in the answer), `op`.", ""]
    for op, cls in REQUESTS.items():
        lane = {"preview": " Lane: preview (a newer `fuse`/`summary` supersedes the older ones still waiting).",
                "now": " Answered at once, whatever is running."}.get(cls.LANE, " Lane: general.")
        out += [f"#### `{op}` ({cls.__name__})", _first_line(cls) + lane, ""]
        out += _fields_table(cls, skip=("id",)) + [""]
    out += ["### Answers"]
    for cls in (Response, ErrorResponse, ErrorInfo, Ready):
        out += [f"#### {cls.__name__}", _first_line(cls), ""] + _fields_table(cls, with_default=False) + [""]
    out += ["### Results"]
    for cls in (FuseResult, ModelView, Stage, ParamCounts, SummaryResult, CatalogEntry, ValidateResult, CancelResult):
        out += [f"#### {cls.__name__}", _first_line(cls), ""] + _fields_table(cls, with_default=False) + [""]
    out += ["### Error kinds", "| kind | meaning |", "|---|---|"]
    out += [f"| `{k}` | {_cell(v)} |" for k, v in ERROR_KINDS.items()]
    out += ["", "### Run events",
            "Every event: `v`, `type`, `run` (run name), `t` (seconds since the run started).", "",
            "| type | fields |", "|---|---|"]
    for t, cls in EVENTS.items():
        parts = [f"`{f.name}`: {f.metadata.get('doc', '')}" for f in fields(cls)]
        out.append(f"| {t} | " + _cell(f"{_first_line(cls)} " + "; ".join(parts)) + " |")
    out += ["", "### Failure kinds (`failed.kind`)", "| kind | exit code | meaning |", "|---|---|---|"]
    out += [f"| `{k}` | {code} | {_cell(meaning)} |" for k, (code, meaning) in FAILED_KINDS.items()]
    return "\n".join(out) + "\n"


DOCS_BEGIN = "<!-- protocol tables: written by `python -m fbt_engine.protocol --write`; do not edit by hand -->"
DOCS_END = "<!-- end of protocol tables -->"
DOCS_PATH = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def docs_block(text: str) -> str | None:
    """The generated block of a protocol.md text (None when its markers are missing)."""
    start, end = text.find(DOCS_BEGIN), text.find(DOCS_END)
    if start < 0 or end < start:
        return None
    return text[start + len(DOCS_BEGIN):end].strip("\n") + "\n"


def write_docs(path: Path = DOCS_PATH) -> None:
    text = path.read_text(encoding="utf-8")
    start, end = text.find(DOCS_BEGIN), text.find(DOCS_END)
    if start < 0 or end < start:
        raise SystemExit(f"{path} has no {DOCS_BEGIN!r} ... {DOCS_END!r} markers")
    path.write_text(text[:start] + DOCS_BEGIN + "\n" + markdown() + text[end:], encoding="utf-8")


if __name__ == "__main__":
    if "--write" in sys.argv[1:]:
        write_docs()
    else:
        sys.stdout.write(markdown())
