"""`fbt-engine serve`: the same answers as `fuse --json`, depth changes without a rebuild, models kept
across order/split changes, user errors before any build, supersede/cancel/crash/EOF semantics, and
the real command over pipes (tiny models, small inputs)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from fbt_engine import fusion
from fbt_engine import protocol as P
from fbt_engine.serve import Service
from fbt_engine.warm import LRU, Job, Workbench

ROOT = Path(__file__).resolve().parents[2]
PICO, R18 = "swin_pico_patch4_window7_224", "resnet18"


class Lines:
    """The service's stdout: each written line lands in a queue."""

    def __init__(self) -> None:
        self.q: queue.Queue[str] = queue.Queue()

    def write(self, text: str) -> None:
        for line in text.splitlines():
            self.q.put(line)

    def flush(self) -> None:
        pass


class Harness:
    """A Service on a pipe, run in a thread: `send` requests, `answer(id)` waits for one."""

    def __init__(self, bench: Any) -> None:
        r, w = os.pipe()
        self.inp, self.writer = os.fdopen(r, "rb"), os.fdopen(w, "wb", buffering=0)
        self.out = Lines()
        self.service = Service(self.inp, self.out, bench)
        self.code: int | None = None
        self.seen: dict[Any, dict] = {}
        self.others: list[dict] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.service.run()

    def send(self, request: P.Request | str | bytes) -> None:
        data = P.encode_request(request) if isinstance(request, P.Request) else request
        self.writer.write(data.encode() if isinstance(data, str) else data)

    def answer(self, rid: Any, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while rid not in self.seen:
            obj = json.loads(self.out.q.get(timeout=max(0.01, deadline - time.monotonic())))
            assert obj["v"] == P.PROTOCOL_VERSION
            if "id" in obj:
                self.seen[obj["id"]] = obj
            else:
                self.others.append(obj)
        return self.seen[rid]

    def ask(self, request: P.Request) -> dict:
        self.send(request)
        return self.answer(request.id)

    def close(self) -> int | None:
        self.writer.close()
        self.thread.join(30)
        return self.code


@pytest.fixture(scope="module")
def real() -> Any:
    """One warm service for the module (models stay built across its tests)."""
    threads, original = torch.get_num_threads(), fusion.stage_output
    h = Harness(Workbench())
    yield h
    assert h.close() == 0
    fusion.stage_output = original  # the service's preview memo: leave the module as found
    torch.set_num_threads(threads)


_ids = iter(range(1000, 100000))


def fuse_req(cls: type = P.FuseRequest, **kw: Any) -> P.FuseRequest:
    fields = {"teacher": PICO, "student": R18, "img_size": 64, **kw}
    return cls(id=next(_ids), **fields)


def ok(answer: dict) -> Any:
    assert answer["ok"], answer
    return answer["result"]


def err(answer: dict) -> dict:
    assert not answer["ok"], answer
    return answer["error"]


def report(**kw: Any) -> dict:
    from fbt_engine.summary import fuse_report
    args = {"teacher": PICO, "student": R18, "img_size": 64, **kw}
    return json.loads(json.dumps(fuse_report(**args)))


# --- answers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("order, split, depth", [("auto", 3, 2), ("teacher-first", 2, 3)])
def test_fuse_answers_what_fuse_json_prints(real: Harness, order: str, split: int, depth: int) -> None:
    """teacher-first puts the CNN last: its L2G BatchNorm is calibrated (the service's memo path)."""
    got = ok(real.ask(fuse_req(order=order, split=split, depth=depth)))
    want = report(order=order, split=split, depth=depth)
    assert [f.name for f in P.dataclasses.fields(P.FuseResult)] == list(want)
    assert got == want
    if order == "teacher-first":
        assert got["plan"]["l2g"]["norm"].startswith("batchnorm")


def test_depth_change_reprints_without_a_rebuild(real: Harness) -> None:
    ok(real.ask(fuse_req(depth=2)))
    bench = real.service.bench
    builds, models = bench.builds_made, bench.models_made
    for depth in (4, 1, 0):
        got = ok(real.ask(fuse_req(depth=depth)))
        assert got["depth"] == depth and got["summary"] == report(depth=depth)["summary"]
    summary = ok(real.ask(fuse_req(P.SummaryRequest, depth=3)))
    assert set(summary) == {"depth", "summary", "mult_adds"} and summary["summary"] == report(depth=3)["summary"]
    assert (bench.builds_made, bench.models_made) == (builds, models)


def test_order_and_split_changes_reuse_the_built_models(real: Harness) -> None:
    ok(real.ask(fuse_req()))
    bench = real.service.bench
    builds, models = bench.builds_made, bench.models_made
    got = ok(real.ask(fuse_req(split=1, order="student-first")))
    assert "stem..stage1" in got["plan"]["chain"]
    assert bench.models_made == models and bench.builds_made == builds + 1
    ok(real.ask(fuse_req(img_size=96)))  # the swin is rebuilt for 96 px, the CNN serves every size
    assert bench.models_made == models + 1


def test_unsupported_pair_is_answered_from_the_catalog(real: Harness) -> None:
    models = real.service.bench.models_made
    e = err(real.ask(fuse_req(student="levit_128")))
    assert e["kind"] == "model_error" and "levit_128" in e["message"] and "no 4-stage adapter" in e["message"]
    assert "fusable" in e["hint"]
    e = err(real.ask(fuse_req(teacher="resnt18")))
    assert "unknown model 'resnt18'" in e["message"] and "resnet18" in e["hint"]
    assert real.service.bench.models_made == models  # nothing was built


@pytest.mark.parametrize("field, value, words", [
    ("img_size", 4, "input size 4 is out of range: it must be from 8 to 2048"),
    ("img_size", 4096, "input size 4096 is out of range"),
    ("split", 4, "fusion split 4 is out of range"),
    ("depth", 11, "summary depth 11 is out of range"),
    ("num_classes", 0, "num_classes 0 is out of range"),
    ("order", "global-first", "order 'global-first' is not one of"),
    ("mixer", "mlp", "fusion mixer 'mlp' is not one of"),
])
def test_bad_values_are_user_errors(real: Harness, field: str, value: Any, words: str) -> None:
    models = real.service.bench.models_made
    e = err(real.ask(fuse_req(**{field: value})))
    assert e["kind"] in ("config_error", "model_error") and words in e["message"] and e["hint"]
    assert real.service.bench.models_made == models


def test_models_and_validate(real: Harness) -> None:
    rows = ok(real.ask(P.ModelsRequest(id=next(_ids), filter="swin_pico*")))
    assert [r["name"] for r in rows] == [PICO] and rows[0]["fusable"] is True
    assert err(real.ask(P.ModelsRequest(id=next(_ids), kind="cnnn")))["message"] == "unknown kind 'cnnn'"
    quick = ok(real.ask(P.ValidateRequest(id=next(_ids), preset=str(ROOT / "presets/quickstart.toml"), quick=True)))
    assert quick["valid"] and quick["quick"]
    e = err(real.ask(P.ValidateRequest(id=next(_ids), preset="no/such.toml", quick=True)))
    assert e["kind"] == "config_error" and "no/such.toml" in e["message"]


def test_bad_lines_are_answered_and_the_service_goes_on(real: Harness) -> None:
    real.send("this is not json\n")
    real.send(b"{" + b"x" * (P.LINE_LIMIT + 10) + b"\n")
    real.send('{"v":1,"id":"q","op":"fuse","teacher":"resnet18"}\n')
    assert err(real.answer("q"))["kind"] == "bad_request"
    nulls = [real.out.q.get(timeout=5) for _ in range(0)]
    assert not nulls
    rows = ok(real.ask(P.ModelsRequest(id=next(_ids), filter=R18)))
    assert R18 in [r["name"] for r in rows]
    assert None in real.seen and real.seen[None]["error"]["kind"] == "bad_request"


# --- lanes, with a stand-in workbench (no torch) ----------------------------------------------------

class SlowBench:
    """Blocks `fuse` of the teacher named `block` until released; counts what it answers."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.answered: list[Any] = []

    def warm(self) -> dict[str, str]:
        return {"fbt_engine": "test"}

    def fuse(self, req: P.FuseRequest, job: Job) -> dict:
        if req.teacher == "block":
            self.started.set()
            assert self.release.wait(30)
            job.check()
        if req.teacher == "bug":
            raise RuntimeError("a bug\nsecond line")
        self.answered.append(req.id)
        return {"teacher": req.teacher, "depth": req.depth}

    summary = fuse

    def models_list(self, req: P.ModelsRequest, job: Job) -> list:
        return []

    def validate(self, req: P.ValidateRequest, job: Job) -> dict:
        return {"preset": req.preset}


@pytest.fixture
def slow() -> Any:
    bench = SlowBench()
    h = Harness(bench)
    yield h, bench
    bench.release.set()
    h.close()


def test_a_newer_preview_supersedes_waiting_and_running_ones(slow: Any) -> None:
    h, bench = slow
    h.send(P.FuseRequest(id=1, teacher="block", student="s"))
    assert bench.started.wait(10)
    h.send(P.FuseRequest(id=2, teacher="t2", student="s"))
    h.send(P.FuseRequest(id=3, teacher="t3", student="s"))
    assert err(h.answer(2))["kind"] == "superseded" and "by request 3" in err(h.answer(2))["message"]
    assert ok(h.ask(P.ModelsRequest(id=9))) == []  # the general lane is not held up
    bench.release.set()
    assert err(h.answer(1))["kind"] == "superseded"  # it stopped at its next checkpoint
    assert ok(h.answer(3))["teacher"] == "t3"
    assert bench.answered == [3]


def test_a_depth_change_does_not_stop_the_build_it_needs(slow: Any) -> None:
    h, bench = slow
    h.send(P.FuseRequest(id=1, teacher="block", student="s", depth=2))
    assert bench.started.wait(10)
    h.send(P.FuseRequest(id=2, teacher="block", student="s", depth=4))
    bench.release.set()
    assert ok(h.answer(1))["depth"] == 2 and ok(h.answer(2))["depth"] == 4


def test_cancel_a_waiting_and_a_running_request(slow: Any) -> None:
    h, bench = slow
    h.send(P.FuseRequest(id=1, teacher="block", student="s"))
    assert bench.started.wait(10)
    h.send(P.ValidateRequest(id=2, preset="p"))
    assert ok(h.ask(P.CancelRequest(id=3, target=1))) == {"target": 1, "cancelled": True}
    assert ok(h.ask(P.CancelRequest(id=4, target="nope"))) == {"target": "nope", "cancelled": False}
    bench.release.set()
    assert err(h.answer(1))["kind"] == "cancelled"
    assert ok(h.answer(2)) == {"preset": "p"}


def test_a_bug_is_answered_and_the_service_goes_on(slow: Any) -> None:
    h, _ = slow
    e = err(h.ask(P.FuseRequest(id=1, teacher="bug", student="s")))
    assert e["kind"] == "crash" and e["message"] == "RuntimeError: a bug" and "bug in fbt-engine" in e["hint"]
    assert ok(h.ask(P.FuseRequest(id=2, teacher="t", student="s")))["teacher"] == "t"


def test_eof_answers_what_was_sent_then_exits_0(slow: Any) -> None:
    h, bench = slow
    h.send(P.FuseRequest(id=1, teacher="block", student="s"))
    assert bench.started.wait(10)
    h.send(P.ValidateRequest(id=2, preset="p"))
    h.writer.close()
    time.sleep(0.2)
    assert h.thread.is_alive()  # still working on 1
    bench.release.set()
    h.thread.join(20)
    assert h.code == 0 and not h.thread.is_alive()
    assert ok(h.answer(1))["teacher"] == "block" and ok(h.answer(2)) == {"preset": "p"}


def test_lru_bounds_count_and_weight() -> None:
    lru = LRU(3, max_weight=10)
    for k, w in (("a", 2), ("b", 2), ("c", 2)):
        lru.put(k, k, w)
    lru.get("a")
    lru.put("d", "d", 2)  # over 3 entries: the least recently used ("b") goes
    assert [lru.get(k) for k in "abcd"] == ["a", None, "c", "d"]
    lru.put("e", "e", 9)  # over the weight: everything older goes, the newest stays even alone
    assert len(lru) == 1 and lru.get("e") == "e"


# --- the real command ---------------------------------------------------------------------------

def test_serve_command_over_pipes() -> None:
    """Ready line, answers, a bad line answered, nothing else on stdout, exit 0 at EOF."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    lines = [P.encode_request(P.ModelsRequest(id=1, filter=PICO)), "garbage\n",
             P.encode_request(P.FuseRequest(id=2, teacher=PICO, student="levit_128"))]
    proc = subprocess.run([sys.executable, "-m", "fbt_engine.cli", "serve"], input="".join(lines), text=True,
                          capture_output=True, timeout=180, env=env, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    answers = [P.parse_answer(line) for line in proc.stdout.splitlines()]
    assert None not in answers, proc.stdout  # only protocol lines on stdout
    ready = [a for a in answers if isinstance(a, P.Ready)]
    assert len(ready) == 1 and set(ready[0].ops) == set(P.REQUESTS)
    by_id = {a.id: a for a in answers if not isinstance(a, P.Ready)}
    assert isinstance(by_id[1], P.Response) and by_id[1].result[0]["name"] == PICO
    assert by_id[None].error.kind == "bad_request"
    assert by_id[2].error.kind == "model_error"


def test_preview_latency_benchmark_quick() -> None:
    """The benchmark drives the service through the TUI's client and prints its JSON line last."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "preview_latency.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"first_s", "p50_s", "p95_s", "import_s"} <= set(res) and res["steps"] == res["n"] > 0
    assert 0 < res["p50_s"] <= res["p95_s"]
