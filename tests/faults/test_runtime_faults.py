"""Runtime faults: divergence, a full disk, CUDA OOM, a killed data worker, contended locks, a double Ctrl-C.

Every case runs tests/data/tiny.toml (teacher 1 epoch x 4 steps, FBT distillation 2 epochs x 4 steps)
or a smaller variant of it, mostly as `fbt-engine` subprocesses with `FBT_FAULT` (fbt_engine/faults.py)
injecting the fault, and checks what a user sees: the `failed` event (kind, message, hint), the exit
code, no traceback, no `.tmp` debris, no file holding a non-finite tensor, and that the run can be
resumed (or, where nothing was written, started again) to the same student.safetensors, bit for bit,
as one uninterrupted reference run (OMP_NUM_THREADS=1 everywhere).

Most cases need a trained teacher: the reference run trains one, and cases that do not fault the
teacher phase load it (`teacher.checkpoint`), which skips ~2 s of training and 170 MB of writes.

The subprocess cases are independent, so the module fixture `cases` starts every selected case at
once in a pool of two threads (this box has two cores); each test then waits for its own case, whose
body runs in the pool (its asserts surface in the test). The in-process cases (divergence: huge lr,
huge loss weight, weights poisoned after an optimiser step; events.jsonl/log.txt on a full disk) run
in the test's own thread meanwhile (the engine's signal handlers need the main thread). About 2-3
minutes on an idle 2-core box, ~4 on a busy one. docs/reliability.md ("Runtime faults") lists what each case
shows.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from fault_helpers import engine_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "data" / "tiny.toml"
ENGINE = [sys.executable, "-m", "fbt_engine.cli"]
TIMEOUT = 180  # seconds per engine process (a tiny run takes ~10 s, most of it imports)
SETS_SHORT = ["train.epochs=1", "train.max_steps_per_epoch=2"]
SHORT = [a for kv in SETS_SHORT for a in ("--set", kv)]


# --- running the engine ----------------------------------------------------------------------

def parse_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"type": "<not json>", "text": line})
    return out


@dataclass
class Done:
    rc: int
    events: list[dict[str, Any]]  # the --jsonl stream
    stderr: str
    seconds: float


def engine(*args: str, fault: str | None = None) -> Done:
    t0 = time.monotonic()
    res = subprocess.run([*ENGINE, *args], cwd=REPO, env=engine_env(fault), capture_output=True, text=True,
                         timeout=TIMEOUT)
    return Done(res.returncode, parse_lines(res.stdout), res.stderr, time.monotonic() - t0)


def run_tiny(runs: Path, *extra: str, fault: str | None = None, name: str = "tiny") -> Done:
    return engine("run", str(TINY), "--jsonl", "--runs-dir", str(runs), "--name", name, *extra, fault=fault)


class Engine:
    """A running engine whose stdout events and stderr lines are collected by threads, so a test
    can wait for a moment in the run (an event, a note) while the pipes never fill up."""

    def __init__(self, *args: str, fault: str | None = None) -> None:
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([*ENGINE, *args], cwd=REPO, env=engine_env(fault), text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pid = self.proc.pid
        self.events: list[dict[str, Any]] = []
        self.err: list[str] = []
        self._cond = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True)]
        for t in self._readers:
            t.start()

    def _read(self, stream: Any, is_events: bool) -> None:
        for line in stream:
            with self._cond:
                (self.events.extend(parse_lines(line)) if is_events else self.err.append(line))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def wait_for(self, pred: Callable[["Engine"], bool], what: str, timeout: float = TIMEOUT) -> None:
        end = time.monotonic() + timeout
        with self._cond:
            while not pred(self):
                assert self.proc.poll() is None or any(t.is_alive() for t in self._readers), \
                    f"the engine ended (exit {self.proc.poll()}) before {what}; stderr:\n{self.stderr[-2000:]}"
                assert time.monotonic() < end, f"timed out waiting for {what}; stderr:\n{self.stderr[-2000:]}"
                self._cond.wait(0.2)

    def wait_event(self, pred: Callable[[dict[str, Any]], bool], what: str) -> None:
        self.wait_for(lambda e: any(pred(ev) for ev in e.events), what)

    def finish(self, timeout: float = TIMEOUT) -> Done:
        rc = self.proc.wait(timeout)
        for t in self._readers:
            t.join(10)
        return Done(rc, list(self.events), self.stderr, time.monotonic() - self.t0)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


def distill_step(ev: dict[str, Any]) -> bool:
    return ev.get("type") == "step" and ev.get("phase") == "distill"


# --- what a run folder holds -----------------------------------------------------------------

def sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return parse_lines(path.read_text(encoding="utf-8")) if path.is_file() else []


def tmp_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.tmp"))


def _tensors(obj: Any, where: str = "") -> list[tuple[str, Any]]:
    import torch
    if isinstance(obj, torch.Tensor):
        return [(where, obj)]
    if isinstance(obj, dict):
        return [t for k, v in obj.items() for t in _tensors(v, f"{where}.{k}" if where else str(k))]
    if isinstance(obj, (list, tuple)):
        return [t for i, v in enumerate(obj) for t in _tensors(v, f"{where}[{i}]")]
    return []


def nonfinite_in_files(root: Path) -> list[str]:
    """Every .pt/.safetensors under `root`, loaded weights-only: unloadable files and non-finite tensors."""
    import torch
    from safetensors.torch import load_file
    problems = []
    for path in sorted([*root.rglob("*.pt"), *root.rglob("*.safetensors")]):
        try:
            obj = load_file(str(path)) if path.suffix == ".safetensors" else \
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
            problems.append(f"{path.relative_to(root)} does not load: {exc}")
            continue
        bad = [k for k, t in _tensors(obj) if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            problems.append(f"{path.relative_to(root)} holds non-finite tensors: {bad[:3]}")
    return problems


def ckpt_epoch(path: Path) -> tuple[str, int]:
    from fbt_engine.checkpoint import load
    ckpt = load(path)
    return ckpt["phase"], ckpt["state"]["epoch"]


def failed(events: list[dict[str, Any]]) -> dict[str, Any]:
    fails = [e for e in events if e.get("type") == "failed"]
    assert fails, f"no `failed` event; last events: {events[-3:]}"
    return fails[-1]


def assert_not_completed(run_dir: Path) -> None:
    done = [e for e in read_jsonl(run_dir / "events.jsonl") if e.get("type") == "finished"]
    assert not done, f"a faulted run wrote `finished`: {done}"
    assert not (run_dir / "student.safetensors").exists(), "a faulted run exported the student"


def assert_completed(res: Done, run_dir: Path, ref: "Reference") -> None:
    assert res.rc == 0, f"exit {res.rc}; stderr:\n{res.stderr[-2000:]}"
    last = read_jsonl(run_dir / "events.jsonl")[-1]
    assert (last.get("type"), last.get("reason")) == ("finished", "completed"), last
    assert sha256(run_dir / "student.safetensors") == ref.student_sha, \
        "the recovered run's student differs from the uninterrupted run's"
    assert not tmp_files(run_dir), tmp_files(run_dir)


# --- the reference and the case pool ---------------------------------------------------------

@dataclass
class Reference:
    run_dir: Path
    student_sha: str
    teacher: Path  # a trained teacher other cases load (read only)
    teacher_sha: str

    def teacher_set(self) -> str:
        return f'teacher.checkpoint="{self.teacher}"'

    def teacher_args(self) -> list[str]:
        return ["--set", self.teacher_set()]


def run_reference(runs: Path) -> Reference:
    res = run_tiny(runs)
    assert res.rc == 0, f"the reference run failed (exit {res.rc}):\n{res.stderr[-3000:]}"
    run_dir = runs / "tiny"
    return Reference(run_dir, sha256(run_dir / "student.safetensors"), run_dir / "teacher.safetensors",
                     sha256(run_dir / "teacher.safetensors"))


CASES: dict[str, Callable[[Path, Callable[[], Reference]], None]] = {}
# cases that start before the reference is done (they train their own teacher): queued first
NO_REFERENCE = {"test_disk_full_during_write[teacher-last.pt]", "test_disk_full_during_write[teacher.safetensors]",
                "test_double_sigint_in_teacher_phase"}


def case(key: str) -> Callable:
    def add(fn: Callable) -> Callable:
        CASES[key] = fn
        return fn
    return add


@pytest.fixture(scope="module", autouse=True)
def cases(request, tmp_path_factory) -> dict[str, Future]:
    """Start every selected subprocess case now, two at a time; tests wait for theirs."""
    selected = {item.name for item in request.session.items if getattr(item, "module", None) is sys.modules[__name__]}
    keys = sorted((k for k in CASES if k in selected), key=lambda k: k not in NO_REFERENCE)
    with ThreadPoolExecutor(2, thread_name_prefix="runtime-fault") as pool:
        ref_future = pool.submit(run_reference, tmp_path_factory.mktemp("reference"))
        futures = {"reference": ref_future}
        for key in keys:
            futures[key] = pool.submit(CASES[key], tmp_path_factory.mktemp(key.replace(":", "_").replace("@", "-")),
                                       ref_future.result)
        yield futures
        pool.shutdown(wait=True, cancel_futures=True)


def wait_case(cases: dict[str, Future], key: str) -> None:
    cases[key].result(timeout=600)


# --- 1. divergence ---------------------------------------------------------------------------

def test_huge_lr_diverges(cases, tmp_path):
    ref = cases["reference"].result(timeout=600)
    code, run_dir = _in_process_run(tmp_path, SETS_SHORT + ["train.lr=1e30", ref.teacher_set()])
    ev = failed(read_jsonl(run_dir / "events.jsonl"))
    assert code == 1, code
    assert ev["kind"] == "nan_loss" and ev["step"] == 2 and ev["term"] == "ce", ev
    assert "step 2" in ev["message"] and "`ce`" in ev["message"], ev
    assert "learning rate" in ev["hint"] and "grad_clip" in ev["hint"], ev
    assert_not_completed(run_dir)
    assert not nonfinite_in_files(run_dir)


def test_huge_loss_weight_names_the_term(cases, tmp_path):
    ref = cases["reference"].result(timeout=600)
    code, run_dir = _in_process_run(tmp_path, SETS_SHORT + ["loss.nce=1e38", ref.teacher_set()])
    ev = failed(read_jsonl(run_dir / "events.jsonl"))
    assert code == 1 and ev["kind"] == "nan_loss" and ev["step"] == 1, (code, ev)
    # every term is finite; their weighted sum is not: the term and its weight are named, not `total`
    assert ev["term"].startswith("nce") and "weight 1e+38" in ev["term"] and ev["term"] != "total", ev
    assert_not_completed(run_dir)
    assert not nonfinite_in_files(run_dir)


def _in_process_run(tmp: Path, sets: list[str], jsonl: bool = False) -> tuple[int, Path]:
    from fbt_engine import config as C
    from fbt_engine.run import start
    cfg = C.load_preset(TINY, sets)
    return start(cfg, runs_dir=str(tmp), jsonl=jsonl)


@pytest.mark.parametrize("poison_step, log_every, saved_before", [
    (2, 1, []),  # caught by the per-step check (a `step` event is due)
    (4, 100, []),  # an epoch's last step, no step event: caught at the epoch's end, before any checkpoint
    (8, 100, ["best.pt", "last.pt"]),  # epoch 1 saved; epoch 2's poisoned weights never reach a file
], ids=["step-check", "epoch-end-check", "after-a-best-epoch"])
def test_weights_poisoned_after_the_optimiser_step(cases, tmp_path, monkeypatch, poison_step, log_every,
                                                   saved_before):
    """Weights turn NaN after an optimiser step while the loss was still finite (in-process)."""
    import torch
    from fbt_engine import trainer
    original = trainer.Loop.train_step

    def poisoned(self, x, y):
        n = original(self, x, y)
        if self.phase.name == "distill" and self.state.step == poison_step:
            with torch.no_grad():
                next(p for p in self.module.student.parameters() if p.requires_grad).view(-1)[0] = float("nan")
        return n
    monkeypatch.setattr(trainer.Loop, "train_step", poisoned)
    ref = cases["reference"].result(timeout=600)
    code, run_dir = _in_process_run(tmp_path, [f"train.log_every={log_every}", ref.teacher_set()])
    events = read_jsonl(run_dir / "events.jsonl")
    ev = failed(events)
    assert code == 1 and ev["kind"] == "nan_loss", (code, ev)
    assert ev["step"] == poison_step, ev  # the loss of that step was finite: the weights are named
    assert ev["term"].startswith("weights"), ev
    assert_not_completed(run_dir)
    assert not nonfinite_in_files(run_dir), nonfinite_in_files(run_dir)
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert ckpts == saved_before
    if saved_before:
        assert ckpt_epoch(run_dir / "checkpoints" / "best.pt") == ("distill", 1)
        assert not [e for e in events if e.get("type") == "checkpoint" and e.get("phase") == "distill"
                    and e.get("epoch") == 2], "a checkpoint event for the poisoned epoch"
        assert "the last good checkpoint is kept" in ev["hint"], ev


# --- 2. a full disk --------------------------------------------------------------------------

BEST_SO_FAR = -1  # in DiskFull.intact: the best distill epoch up to the faulted one, per the reference run


def best_epoch_up_to(run_dir: Path, epoch: int) -> int:
    """The epoch best.pt holds after `epoch` in an uninterrupted run (the first of equal top-1s)."""
    evals = [e for e in read_jsonl(run_dir / "events.jsonl")
             if e.get("type") == "eval" and e.get("phase") == "distill" and e["epoch"] <= epoch]
    return max(evals, key=lambda e: (e["student_top1"], -e["epoch"]))["epoch"]


@dataclass(frozen=True)
class DiskFull:
    fault: str  # FBT_FAULT point (write:<file>[@N]): the temporary file is written, the rename not done
    file: str  # relative to the run folder
    own_teacher: bool  # the teacher is trained in this run (else loaded from the reference's)
    intact: tuple[tuple[str, tuple[str, int]], ...] = ()  # checkpoints that must still load: (file, (phase, epoch))


DISK_FULL = {
    "teacher-last.pt": DiskFull("write:teacher-last.pt", "checkpoints/teacher-last.pt", True),
    "teacher.safetensors": DiskFull("write:teacher.safetensors", "teacher.safetensors", True,
                                    (("checkpoints/teacher-last.pt", ("teacher", 1)),)),
    "best.pt": DiskFull("write:best.pt", "checkpoints/best.pt", False),
    "last.pt@1": DiskFull("write:last.pt@1", "checkpoints/last.pt", False,
                          (("checkpoints/best.pt", ("distill", 1)),)),
    # best.pt holds epoch 2 when epoch 2 beat epoch 1 (it is written before last.pt): BEST_SO_FAR asks
    # the reference run's evaluations which epoch that is
    "last.pt@2": DiskFull("write:last.pt@2", "checkpoints/last.pt", False,
                          (("checkpoints/last.pt", ("distill", 1)), ("checkpoints/best.pt", ("distill", BEST_SO_FAR)))),
    "student.safetensors": DiskFull("write:student.safetensors", "student.safetensors", False,
                                    (("checkpoints/last.pt", ("distill", 2)),)),
}


def _disk_full_case(key: str) -> Callable:
    def body(tmp: Path, reference: Callable[[], Reference]) -> None:
        c = DISK_FULL[key]
        extra = [] if c.own_teacher else reference().teacher_args()
        res = run_tiny(tmp, *extra, fault=f"{c.fault}=enospc")
        run_dir = tmp / "tiny"
        ev = failed(res.events)
        assert res.rc == 2, f"exit {res.rc}; stderr:\n{res.stderr[-2000:]}"
        assert ev["kind"] == "write_error", ev
        assert "disk is full" in ev["message"] and str(run_dir / c.file) in ev["message"], ev
        name = Path(c.file).name
        existed = any(f == c.file for f, _ in c.intact)  # the file had a previous version to keep
        assert (f"previous version of {name} is intact" if existed else f"nothing was replaced ({name} did not "
                "exist yet)") in ev["hint"], ev
        assert failed(read_jsonl(run_dir / "events.jsonl")) == ev, "events.jsonl and the stream disagree"
        assert "Traceback" not in res.stderr and "disk is full" in res.stderr, res.stderr[-2000:]
        assert not tmp_files(tmp), tmp_files(tmp)
        assert_not_completed(run_dir)
        assert not nonfinite_in_files(run_dir)
        for name, (phase, epoch) in c.intact:
            if epoch == BEST_SO_FAR:
                epoch = best_epoch_up_to(reference().run_dir, int(c.fault.rsplit("@", 1)[1]))
            assert ckpt_epoch(run_dir / name) == (phase, epoch), name
        res = engine("resume", str(run_dir), "--jsonl")
        ref = reference()
        assert_completed(res, run_dir, ref)
        if c.own_teacher:
            assert sha256(run_dir / "teacher.safetensors") == ref.teacher_sha
    CASES[f"test_disk_full_during_write[{key}]"] = body
    return body


for _key in DISK_FULL:
    _disk_full_case(_key)


@pytest.mark.parametrize("key", list(DISK_FULL))
def test_disk_full_during_write(cases, key):
    wait_case(cases, f"test_disk_full_during_write[{key}]")


@case("test_disk_full_writing_config_toml")
def _config_toml(tmp: Path, reference: Callable[[], Reference]) -> None:
    ref = reference()
    res = run_tiny(tmp, *ref.teacher_args(), fault="write:config.toml=enospc")
    ev = failed(res.events)  # on the stream: there is no run folder to hold events.jsonl
    assert res.rc == 2 and ev["kind"] == "write_error", (res.rc, ev)
    assert "disk is full" in ev["message"] and "config.toml" in ev["message"], ev
    assert "nothing was written" in ev["hint"] and "start the run again" in ev["hint"], ev
    assert "Traceback" not in res.stderr
    assert list(tmp.iterdir()) == [], f"a failed start left {list(tmp.rglob('*'))}"
    res = run_tiny(tmp, *ref.teacher_args())
    assert_completed(res, tmp / "tiny", ref)


def test_disk_full_writing_config_toml(cases):
    wait_case(cases, "test_disk_full_writing_config_toml")


class FullFile:
    """A text file whose writes fail with ENOSPC after `room` successful ones."""

    def __init__(self, inner: Any, room: int) -> None:
        self.inner, self.room = inner, room

    def write(self, text: str) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= 1
        return self.inner.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_disk_full_for_events_and_log(cases, tmp_path, monkeypatch, capsys):
    """events.jsonl and log.txt hit a full disk (in-process): by design the run goes on (checkpoints are
    the state; a truly full disk fails the next checkpoint write, see test_real_full_tmpfs), the
    stream still carries every event, stderr says so once, and the file is retried at the next
    non-step event, so the folder still ends with `finished`."""
    from fbt_engine import events as E
    from fbt_engine import run as R
    init_emitter, init_run = E.Emitter.__init__, R.Run.__init__

    def emitter(self, *a, **kw):
        init_emitter(self, *a, **kw)
        if self._file is not None:
            self._file = FullFile(self._file, room=5)

    def run(self, *a, **kw):
        init_run(self, *a, **kw)
        self.reporter.log = FullFile(self.reporter.log, room=3)
    monkeypatch.setattr(E.Emitter, "__init__", emitter)
    monkeypatch.setattr(R.Run, "__init__", run)
    ref = cases["reference"].result(timeout=600)
    code, run_dir = _in_process_run(tmp_path, ["train.max_steps_per_epoch=2", ref.teacher_set()], jsonl=True)
    out, err = capsys.readouterr()
    stream = parse_lines(out)
    assert code == 0, err[-2000:]
    assert (stream[-1]["type"], stream[-1]["reason"]) == ("finished", "completed")
    assert err.count("events.jsonl could not be written") == 1, err[-2000:]
    assert "Traceback" not in err
    on_disk = read_jsonl(run_dir / "events.jsonl")  # 5 events, then the retried checkpoint/eval/end events
    assert [e["type"] for e in on_disk[:5]] == [e["type"] for e in stream[:5]] and len(on_disk) < len(stream)
    assert (on_disk[-1]["type"], on_disk[-1]["reason"]) == ("finished", "completed")  # resume sees it complete
    assert (run_dir / "student.safetensors").is_file() and not nonfinite_in_files(run_dir)


@case("test_real_full_tmpfs")
def _real_tmpfs(tmp: Path, reference: Callable[[], Reference]) -> None:
    ref = reference()
    disk = tmp / "small"
    disk.mkdir()
    # 64 MiB: best.pt (43 MiB, epoch 1) fits, last.pt next to it does not
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True).returncode:
        raise pytest.skip.Exception("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        res = run_tiny(disk, *ref.teacher_args())
        run_dir = disk / "tiny"
        ev = failed(res.events)
        assert res.rc == 2 and ev["kind"] == "write_error", (res.rc, ev, res.stderr[-2000:])
        assert "disk is full" in ev["message"] and "last.pt" in ev["message"], ev
        assert "nothing was replaced" in ev["hint"] and "Traceback" not in res.stderr and "Exception ignored" not in res.stderr
        assert not tmp_files(disk) and not nonfinite_in_files(run_dir)
        assert ckpt_epoch(run_dir / "checkpoints" / "best.pt") == ("distill", 1)
        assert failed(read_jsonl(run_dir / "events.jsonl")) == ev  # the .tmp was removed: room for the event
        subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
        res = engine("resume", str(run_dir), "--jsonl")
        assert_completed(res, run_dir, ref)
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_real_full_tmpfs(cases):
    wait_case(cases, "test_real_full_tmpfs")


# --- 3. CUDA out of memory -------------------------------------------------------------------

@case("test_cuda_oom")
def _oom(tmp: Path, reference: Callable[[], Reference]) -> None:
    ref = reference()
    res = run_tiny(tmp, *ref.teacher_args(), fault="distill.step@2=oom")
    ev = failed(res.events)
    assert res.rc != 0 and ev["kind"] == "oom", (res.rc, ev)
    assert "out of GPU memory" in ev["message"], ev
    for advice in ("train.batch_size", "amp", "data.num_workers"):
        assert advice in ev["hint"], ev
    assert "Traceback" not in res.stderr
    run_dir = tmp / "tiny"
    assert_not_completed(run_dir)
    assert_completed(engine("resume", str(run_dir), "--jsonl"), run_dir, ref)


def test_cuda_oom(cases):
    wait_case(cases, "test_cuda_oom")


# --- 4. a data-loading worker killed ---------------------------------------------------------

WORKER_REPORT: dict[str, float] = {}  # seconds from the (last) SIGKILL to the engine's exit, for the docs


@case("test_data_worker_killed")
def _worker(tmp: Path, reference: Callable[[], Reference]) -> None:
    import psutil
    eng = Engine("run", str(TINY), "--jsonl", "--runs-dir", str(tmp), "--set", "data.num_workers=1",
                 "--set", "train.epochs=50", *reference().teacher_args())
    try:
        eng.wait_event(lambda e: e.get("type") == "checkpoint" and e.get("phase") == "distill", "a checkpoint")
        # workers are not persistent (one per epoch and per evaluation): a worker caught while it exits
        # is no fault, so kill whichever worker is alive until the engine notices
        killed, deadline, last_kill = [], time.monotonic() + 30, 0.0
        while eng.proc.poll() is None and time.monotonic() < deadline:
            if time.monotonic() - last_kill > 3:  # a kill the engine has not reported within 3 s missed
                for child in psutil.Process(eng.pid).children():
                    try:
                        child.kill()
                        killed.append(child.pid)
                        last_kill = time.monotonic()
                    except psutil.NoSuchProcess:
                        pass
            time.sleep(0.02)
        ended = time.monotonic()
        assert killed, "no data-loader worker was found"
        assert eng.proc.poll() is not None, f"the engine still runs 30 s after killing workers {killed}"
        res = eng.finish(timeout=30)
    finally:
        eng.kill()
    WORKER_REPORT.update(seconds=round(ended - last_kill, 2), kills=len(killed))
    ev = failed(res.events)
    assert res.rc != 0 and ev["kind"] == "data_worker", (res.rc, ev, res.stderr[-2000:])
    assert "data-loading worker died" in ev["message"] and "data.num_workers" in ev["hint"], ev
    assert "fbt-engine resume" in ev["hint"] and "Traceback" not in res.stderr
    run_dir = tmp / "tiny"
    assert not nonfinite_in_files(run_dir) and not tmp_files(run_dir)
    # still resumable: the resume starts after the saved epoch (then is stopped, 50 epochs is long)
    eng = Engine("resume", str(run_dir), "--jsonl")
    try:
        eng.wait_event(distill_step, "the resumed run's first step")
        eng.proc.send_signal(signal.SIGINT)
        res = eng.finish(timeout=60)
    finally:
        eng.kill()
    assert res.rc == 0, res.stderr[-2000:]
    started = next(e for e in res.events if e.get("type") == "started")
    phase = next(e for e in res.events if e.get("type") == "phase")
    assert started["resumed"] and phase["start_epoch"] >= 2, (started.get("resumed"), phase)
    assert (res.events[-1]["type"], res.events[-1]["reason"]) == ("finished", "stopped")


def test_data_worker_killed(cases):
    wait_case(cases, "test_data_worker_killed")
    print(f"worker SIGKILL -> engine exit: {WORKER_REPORT}")


# --- 5. locks --------------------------------------------------------------------------------

def stopped_run(tmp: Path, *extra: str) -> Path:
    """A tiny run stopped by SIGINT after its first distill step (last.pt saved mid-epoch)."""
    eng = Engine("run", str(TINY), "--jsonl", "--runs-dir", str(tmp), *extra)
    try:
        eng.wait_event(distill_step, "the first distill step")
        eng.proc.send_signal(signal.SIGINT)
        res = eng.finish()
    finally:
        eng.kill()
    assert res.rc == 0 and res.events[-1].get("reason") == "stopped", res.stderr[-2000:]
    assert (tmp / "tiny" / "checkpoints" / "last.pt").is_file()
    return tmp / "tiny"


@case("test_two_resumes_of_one_folder")
def _two_resumes(tmp: Path, reference: Callable[[], Reference]) -> None:
    ref = reference()
    run_dir = stopped_run(tmp, *ref.teacher_args())
    first = Engine("resume", str(run_dir), "--jsonl")
    try:
        lock = run_dir / ".lock"
        first.wait_for(lambda e: lock.read_text().strip() == str(e.pid), "the first resume to take the lock")
        os.kill(first.pid, signal.SIGSTOP)  # holds the lock, however slow this box is
        try:
            second = engine("resume", str(run_dir), "--jsonl")
        finally:
            os.kill(first.pid, signal.SIGCONT)
        res = first.finish()
    finally:
        first.kill()
    assert second.rc == 2, second.stderr
    assert f"in use by another fbt-engine process (pid {first.pid})" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    assert failed(second.events)["kind"] == "training_error"  # on the stream too (a TUI shows it)
    assert second.seconds < 20, f"the second resume took {second.seconds:.1f} s to refuse"
    assert_completed(res, run_dir, ref)
    # not interleaved: events.jsonl ends with exactly the first resume's stream
    lines = read_jsonl(run_dir / "events.jsonl")
    assert lines[-len(res.events):] == res.events
    assert "<not json>" not in {e["type"] for e in lines}
    assert [e["pid"] for e in res.events if e["type"] == "started"] == [first.pid]


def test_two_resumes_of_one_folder(cases):
    wait_case(cases, "test_two_resumes_of_one_folder")


@case("test_four_runs_with_one_name")
def _four_runs(tmp: Path, reference: Callable[[], Reference]) -> None:
    ref = reference()
    args = ["run", str(TINY), "--jsonl", "--runs-dir", str(tmp / "runs"), "--name", "same", *SHORT,
            "--set", "train.max_steps_per_epoch=1", *ref.teacher_args()]
    engines = [Engine(*args) for _ in range(4)]
    try:
        results = [e.finish() for e in engines]
    finally:
        for e in engines:
            e.kill()
    for res in results:
        assert res.rc == 0 and "FileExistsError" not in res.stderr and "Traceback" not in res.stderr, res.stderr
    folders = sorted(p.name for p in (tmp / "runs").iterdir())
    assert folders == ["same", "same-2", "same-3", "same-4"]
    assert sorted(res.events[0]["run"] for res in results) == folders  # each run wrote its own folder
    for name in folders:
        evs = read_jsonl(tmp / "runs" / name / "events.jsonl")
        assert {e["run"] for e in evs} == {name} and evs[-1]["reason"] == "completed"
        assert f'name = "{name}"' in (tmp / "runs" / name / "config.toml").read_text()


def test_four_runs_with_one_name(cases):
    wait_case(cases, "test_four_runs_with_one_name")


@case("test_shared_teacher_trained_once")
def _shared_teacher(tmp: Path, reference: Callable[[], Reference]) -> None:
    ref = reference()
    shared = tmp / "shared" / "teacher.safetensors"
    args = ["run", str(TINY), "--jsonl", "--runs-dir", str(tmp / "runs"), "--set", f'teacher.checkpoint="{shared}"']
    a = Engine(*args, "--name", "a")
    b = None
    try:
        a.wait_event(lambda e: e.get("type") == "phase" and e.get("phase") == "teacher", "a's teacher phase")
        os.kill(a.pid, signal.SIGSTOP)  # a training teacher, however fast this box is
        try:
            b = Engine(*args, "--name", "b")
            b.wait_for(lambda e: f"waiting: another process (pid {a.pid}) is training the teacher" in e.stderr,
                       "b to wait for a's teacher")
        finally:
            os.kill(a.pid, signal.SIGCONT)
        ra, rb = a.finish(), b.finish()
    finally:
        a.kill()
        if b is not None:
            b.kill()
    for res, name in ((ra, "a"), (rb, "b")):
        assert_completed(res, tmp / "runs" / name, ref)
    phases = [(run, e["phase"]) for run in ("a", "b") for e in read_jsonl(tmp / "runs" / run / "events.jsonl")
              if e["type"] == "phase"]
    assert phases == [("a", "teacher"), ("a", "distill"), ("b", "distill")]
    assert sha256(shared) == ref.teacher_sha
    digest = next(e["teacher_digest"] for e in rb.events if e["type"] == "started")
    assert digest == ref.teacher_sha[:16]  # b distilled from the file a wrote


def test_shared_teacher_trained_once(cases):
    wait_case(cases, "test_shared_teacher_trained_once")


@case("test_teacher_replaced_before_resume")
def _teacher_replaced(tmp: Path, reference: Callable[[], Reference]) -> None:
    from safetensors.torch import load_file, save_file
    ref = reference()
    teacher = tmp / "teacher.safetensors"
    shutil.copyfile(ref.teacher, teacher)
    run_dir = stopped_run(tmp, "--set", f'teacher.checkpoint="{teacher}"')
    weights = load_file(str(teacher))
    key = next(iter(weights))
    weights[key] = weights[key] + 1
    shutil.move(teacher, tmp / "original.safetensors")
    save_file(weights, str(teacher))
    res = engine("resume", str(run_dir), "--jsonl")
    ev = failed(res.events)
    assert res.rc == 2 and ev["kind"] == "training_error", (res.rc, ev)
    old, new = sha256(tmp / "original.safetensors")[:16], sha256(teacher)[:16]
    assert str(teacher) in ev["message"] and old in ev["message"] and new in ev["message"], ev
    assert "restore the teacher" in ev["hint"] and "Traceback" not in res.stderr


def test_teacher_replaced_before_resume(cases):
    wait_case(cases, "test_teacher_replaced_before_resume")


# --- 6. Ctrl-C twice before any checkpoint ---------------------------------------------------

@case("test_double_sigint_in_teacher_phase")
def _double_sigint(tmp: Path, reference: Callable[[], Reference]) -> None:
    # 64 px, batch 64: the first teacher step takes ~1 s, long enough for both Ctrl-Cs to land in it
    eng = Engine("run", str(TINY), "--jsonl", "--runs-dir", str(tmp), "--set", "data.img_size=64",
                 "--set", "teacher.train.batch_size=64")
    try:
        eng.wait_event(lambda e: e.get("type") == "phase" and e.get("phase") == "teacher", "the teacher phase")
        eng.proc.send_signal(signal.SIGINT)
        eng.wait_for(lambda e: "stop requested" in e.stderr, "the first Ctrl-C to be acknowledged")
        eng.proc.send_signal(signal.SIGINT)
        res = eng.finish(timeout=60)
    finally:
        eng.kill()
    ev = failed(res.events)
    assert res.rc == 130 and ev["kind"] == "aborted", (res.rc, ev)
    run_dir = tmp / "tiny"
    assert not list(run_dir.glob("checkpoints/*")), "a checkpoint was written: the Ctrl-Cs came too late"
    assert "no checkpoint had been written yet" in ev["hint"] and "checkpoint is kept" not in ev["hint"], ev
    assert "Traceback" not in res.stderr and not tmp_files(run_dir)


def test_double_sigint_in_teacher_phase(cases):
    wait_case(cases, "test_double_sigint_in_teacher_phase")
