"""Kill-and-resume: SIGKILL the engine at every phase and every file write, resume, get the same run.

One uninterrupted reference run of tests/data/tiny.toml (teacher 1 epoch x 4 steps, then FBT
distillation 2 epochs x 4 steps, log_every=1, eval every epoch) is compared with, for each kill
point in KILLS, a run killed there by `FBT_FAULT="POINT[@N]=kill"` (fbt_engine/faults.py) and then
recovered the way a user would (see `recovery` below and docs/reliability.md):

  * every (phase, step) of the final events.jsonl -- the LAST logged value of each step, since a
    resumed run repeats the steps after its last checkpoint -- has the reference's loss, terms and
    lr, EXACTLY (bit for bit: the preset is deterministic and every process runs with
    OMP_NUM_THREADS=1, so no tolerance is needed or allowed);
  * the last eval event of each (phase, epoch) equals the reference's;
  * student.safetensors and teacher.safetensors have the reference's sha256;
  * the recovery command exits 0, the last event of events.jsonl is `finished` / `completed`;
  * no `.tmp` file is left anywhere in the run folder, and the run folder holds the same files as
    the reference's (checkpoints/best.pt included).

Every problem of a case is collected and reported together, naming the kill point, the first
differing step and both values.

The engine processes are independent, so all cases (and the reference) run in a pool of two
worker threads, started by the session fixture `kill_runs` for the cases pytest selected; each
parametrised test then waits for its own case. The module costs about 350 CPU-seconds: about
3 minutes on an idle 2-core box, 8-9 minutes on a busy one.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fault_helpers import engine_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "data" / "tiny.toml"
ENGINE = [sys.executable, "-m", "fbt_engine.cli"]
TIMEOUT = 300  # seconds per engine process (a full tiny run takes ~10 s on one core)
WORKERS = 2


@dataclass(frozen=True)
class Kill:
    """One kill moment: FBT_FAULT `point` (POINT[@N]), and how a user recovers from it.

    recovery "resume": `fbt-engine resume RUN_DIR` must finish the run.
    recovery "resume-or-run": the kill may come before the run folder holds config.toml; then
    `resume` must refuse with "is not a run folder" (exit 2) and the user starts again with `run`.
    """

    point: str
    where: str  # what has happened when the engine dies (for failure messages and the docs)
    recovery: str = "resume"


KILLS = [
    Kill("run.folder", "run folder made, nothing trained", "resume-or-run"),
    Kill("teacher.step@1", "teacher step 1 done, no checkpoint yet"),
    Kill("teacher.step@3", "teacher step 3 done, no checkpoint yet"),
    Kill("write:teacher-last.pt", "teacher epoch 1 evaluated, teacher-last.pt written to .tmp, not renamed"),
    Kill("saved:teacher-last.pt", "teacher-last.pt saved, teacher.safetensors not yet"),
    Kill("write:teacher.safetensors", "teacher.safetensors written to .tmp, not renamed"),
    Kill("saved:teacher.safetensors", "teacher.safetensors saved, distill not started"),
    Kill("phase.distill", "distill phase event emitted, no distill step"),
    Kill("distill.step@1", "distill step 1 done, no distill checkpoint"),
    Kill("distill.step@2", "distill step 2 done, no distill checkpoint"),
    Kill("distill.step@4", "last step of distill epoch 1 done, not evaluated"),
    Kill("write:last.pt@1", "distill epoch 1 evaluated, last.pt written to .tmp, not renamed"),
    Kill("saved:last.pt@1", "distill epoch 1 last.pt saved, best.pt not yet"),
    Kill("write:best.pt", "best.pt (epoch 1) written to .tmp, not renamed"),
    Kill("saved:best.pt", "best.pt (epoch 1) saved, checkpoint event not emitted"),
    Kill("distill.step@5", "distill step 5 (first of epoch 2) done"),
    Kill("distill.step@8", "last distill step done, epoch 2 not evaluated"),
    Kill("write:last.pt@2", "distill epoch 2 evaluated, last.pt written to .tmp, not renamed"),
    Kill("saved:last.pt@2", "distill epoch 2 last.pt saved, student not exported"),
    Kill("write:student.safetensors", "student.safetensors written to .tmp, not renamed"),
    Kill("saved:student.safetensors", "student.safetensors saved, export/timm not yet"),
    Kill("saved:model.safetensors", "export/timm/model.safetensors saved, its config.json not yet"),
    Kill("finish", "everything saved, finished event not emitted"),
]


# --- running the engine ----------------------------------------------------------------------

def engine(*args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*ENGINE, *args], cwd=REPO, env=engine_env(fault), capture_output=True, text=True,
                          timeout=TIMEOUT)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line torn by the kill
            out.append({"type": "<torn line>", "text": line})
    return out


def sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Outcome:
    """What a finished run folder holds, reduced to what the comparison needs."""

    run_dir: Path
    steps: dict[tuple[str, int], dict[str, Any]]  # (phase, step) -> last logged {loss, terms, lr}
    evals: dict[tuple[str, int], dict[str, Any]]  # (phase, epoch) -> last eval fields
    last_event: dict[str, Any] | None
    student_sha: str | None
    teacher_sha: str | None
    files: set[str]  # relative paths of non-temporary files
    tmp_files: list[str]


def summarise(run_dir: Path) -> Outcome:
    events = read_jsonl(run_dir / "events.jsonl")
    steps, evals = {}, {}
    for e in events:  # later events overwrite earlier ones: the last logged value wins
        if e.get("type") == "step":
            steps[(e["phase"], e["step"])] = {"loss": e["loss"], "terms": e["terms"], "lr": e["lr"]}
        elif e.get("type") == "eval":
            evals[(e["phase"], e["epoch"])] = {k: v for k, v in e.items() if k not in ("v", "type", "run", "t")}
    files = {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}
    tmp = sorted(f for f in files if f.endswith(".tmp"))
    out = Outcome(run_dir, steps, evals, events[-1] if events else None, sha256(run_dir / "student.safetensors"),
                  sha256(run_dir / "teacher.safetensors"), files - set(tmp), tmp)
    for p in run_dir.rglob("*"):  # hashed: free the disk (~230 MB a run) for the other cases
        if p.is_file() and p.suffix in (".pt", ".safetensors", ".tmp"):
            p.unlink()
    return out


def run_reference(runs: Path) -> Outcome:
    res = engine("run", str(TINY), "--jsonl", "--runs-dir", str(runs))
    assert res.returncode == 0, f"the reference run failed (exit {res.returncode}):\n{res.stderr[-3000:]}"
    return summarise(runs / "tiny")


@dataclass
class CaseResult:
    kill: Kill
    kill_rc: int
    kill_stderr: str
    after_kill: list[str]  # files in the run folder right after the kill
    recovery: list[tuple[str, int, str]] = field(default_factory=list)  # (command, exit code, stderr tail)
    resumed_from: str = ""  # what the recovery did, from its own events
    outcome: Outcome | None = None
    problems: list[str] = field(default_factory=list)  # found while running (before the comparison)
    seconds: float = 0.0


def describe_recovery(stdout: str) -> str:
    """'distill from epoch 2 (steps 5-8)' etc., from the recovery process's event stream."""
    evs = []
    for line in stdout.splitlines():
        try:
            evs.append(json.loads(line))
        except ValueError:
            pass
    parts = []
    for e in evs:
        if e.get("type") == "phase":
            steps = [s["step"] for s in evs if s.get("type") == "step" and s.get("phase") == e["phase"]]
            span = f"steps {steps[0]}-{steps[-1]}" if steps else "no steps"
            parts.append(f"{e['phase']} from epoch {e['start_epoch']} ({span})")
    return "; ".join(parts) or "no phase run"


def run_case(kill: Kill, runs: Path) -> CaseResult:
    t0 = time.monotonic()
    res = engine("run", str(TINY), "--jsonl", "--runs-dir", str(runs), fault=f"{kill.point}=kill")
    run_dir = runs / "tiny"
    after = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()) if run_dir.is_dir() else []
    case = CaseResult(kill, res.returncode, res.stderr[-2000:], after)
    if res.returncode != -signal.SIGKILL:
        case.problems.append(f"the engine was not killed at {kill.point}: exit code {res.returncode} instead of "
                             f"-9 (SIGKILL); is faults.point({kill.point.split('@')[0]!r}) wired and reached?\n"
                             f"stderr tail:\n{res.stderr[-1500:]}")
        case.seconds = time.monotonic() - t0
        return case
    if any(e.get("type") == "finished" for e in read_jsonl(run_dir / "events.jsonl")):
        case.problems.append("the killed run had already written its `finished` event")

    if not (run_dir / "config.toml").is_file():
        # Killed before the run folder was complete: resume must say it is no run folder; then `run` again.
        res = engine("resume", str(run_dir), "--jsonl")
        case.recovery.append((f"resume {run_dir.name}", res.returncode, res.stderr[-1500:]))
        if kill.recovery != "resume-or-run":
            case.problems.append(f"the kill left no config.toml in {run_dir} (files: {after}), so it cannot be "
                                 "resumed")
        if res.returncode != 2 or "is not a run folder" not in res.stderr:
            case.problems.append(f"`resume` of a folder without config.toml should refuse with exit 2 and "
                                 f"'is not a run folder'; got exit {res.returncode}:\n{res.stderr[-1500:]}")
        before = {p.name for p in runs.iterdir()}
        res = engine("run", str(TINY), "--jsonl", "--runs-dir", str(runs))
        case.recovery.append(("run (fresh)", res.returncode, res.stderr[-1500:]))
        new = sorted({p.name for p in runs.iterdir()} - before)
        run_dir = runs / (new[0] if new else "tiny")
        case.resumed_from = "fresh run: " + describe_recovery(res.stdout)
    else:
        res = engine("resume", str(run_dir), "--jsonl")
        case.recovery.append((f"resume {run_dir.name}", res.returncode, res.stderr[-1500:]))
        started = next((json.loads(line) for line in res.stdout.splitlines()
                        if line.startswith("{") and '"type":"started"' in line), None)
        if res.returncode == 0 and not (started and started.get("resumed")):
            case.problems.append(f"the resume's first `started` event does not say resumed=true: {started}")
        ckpts = [f for f in after if f.startswith("checkpoints/") and not f.endswith(".tmp")]
        case.resumed_from = (f"from {', '.join(ckpts) or 'no checkpoint'}: " + describe_recovery(res.stdout))
        # What the user is told: the checkpoint resumed from (the engine's order, run.CHECKPOINT_ORDER), or,
        # with none yet, a start from epoch 1 in the same folder.
        newest = next((n for n in ("last.pt", "best.pt", "teacher-last.pt") if f"checkpoints/{n}" in ckpts), None)
        if res.returncode == 0 and newest and f"resuming from {newest}" not in res.stderr:
            case.problems.append(f"the resume did not say 'resuming from {newest}'; stderr tail:\n{res.stderr[-800:]}")
        first_phase = next((json.loads(line) for line in res.stdout.splitlines()
                            if line.startswith("{") and '"type":"phase"' in line), None)
        if res.returncode == 0 and not newest and (first_phase or {}).get("start_epoch") != 1:
            case.problems.append(f"with no checkpoint the resume should start over at epoch 1: {first_phase}")
    if case.recovery[-1][1] != 0:
        cmd, rc, err = case.recovery[-1]
        case.problems.append(f"`{cmd}` exited {rc} (expected 0); stderr tail:\n{err}")
    case.outcome = summarise(run_dir)
    case.seconds = time.monotonic() - t0
    return case


# --- comparing -------------------------------------------------------------------------------

def _flat(v: dict[str, Any]) -> dict[str, Any]:
    return {"loss": v["loss"], "lr": v["lr"], **{f"terms.{k}": t for k, t in v["terms"].items()}}


def compare(ref: Outcome, got: Outcome) -> list[str]:
    problems = []
    order = sorted(set(ref.steps) | set(got.steps), key=lambda k: (k[0] != "teacher", k[1]))
    missing = [k for k in order if k not in got.steps]
    extra = [k for k in order if k not in ref.steps]
    if missing:
        problems.append(f"steps never logged: {missing}")
    if extra:
        problems.append(f"steps the reference does not have: {extra}")
    differing = []
    for key in order:
        if key in ref.steps and key in got.steps:
            a, b = _flat(ref.steps[key]), _flat(got.steps[key])
            fields = [f for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]
            if fields:
                differing.append((key, fields, a, b))
    if differing:
        (phase, step), fields, a, b = differing[0]
        detail = ", ".join(f"{f}: reference {a.get(f)!r} vs {b.get(f)!r}" for f in fields[:4])
        more = f" (+{len(fields) - 4} more fields)" if len(fields) > 4 else ""
        problems.append(f"{len(differing)} of {len(ref.steps)} steps differ; first: {phase} step {step}: "
                        f"{detail}{more}; differing steps: {[f'{p}:{s}' for (p, s), *_ in differing]}")
    for key in sorted(set(ref.evals) | set(got.evals), key=lambda k: (k[0] != "teacher", k[1])):
        a, b = ref.evals.get(key), got.evals.get(key)
        if a != b:
            if a is None or b is None:
                problems.append(f"eval {key[0]} epoch {key[1]}: reference {a} vs {b}")
            else:
                diff = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
                problems.append(f"eval {key[0]} epoch {key[1]} differs (reference, resumed): {diff}")
    if got.student_sha != ref.student_sha:
        problems.append(f"student.safetensors sha256 {got.student_sha} != reference {ref.student_sha}")
    if got.teacher_sha != ref.teacher_sha:
        problems.append(f"teacher.safetensors sha256 {got.teacher_sha} != reference {ref.teacher_sha}")
    last = got.last_event or {}
    if last.get("type") != "finished" or last.get("reason") != "completed":
        problems.append(f"the last event is not finished/completed: "
                        f"{ {k: last.get(k) for k in ('type', 'reason', 'kind', 'message')} }")
    if got.tmp_files:
        problems.append(f".tmp files left in the run folder: {got.tmp_files}")
    if got.files != ref.files:
        problems.append(f"the run folder's files differ from the reference's: missing "
                        f"{sorted(ref.files - got.files)}, extra {sorted(got.files - ref.files)}")
    return problems


# --- fixtures and the test -------------------------------------------------------------------

@pytest.fixture(scope="session")
def pool():
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="kill") as ex:
        yield ex
        ex.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="session")
def reference_future(pool, tmp_path_factory) -> Future:
    return pool.submit(run_reference, tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="session")
def reference(reference_future) -> Outcome:
    """The uninterrupted run: per-step losses, evals and weight hashes."""
    ref = reference_future.result()
    assert ref.student_sha and ref.teacher_sha, "the reference run exported no weights"
    assert len(ref.steps) == 12, f"tiny.toml should log 4 teacher + 8 distill steps, got {sorted(ref.steps)}"
    return ref


@pytest.fixture(scope="session")
def kill_runs(request, pool, reference_future, tmp_path_factory) -> dict[str, Future]:
    """Start every selected kill case at once (the pool runs two at a time, after the reference)."""
    selected = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if callspec and getattr(item, "originalname", "") == "test_kill_and_resume":
            kill = callspec.params["kill"]
            if kill not in selected:
                selected.append(kill)
    return {k.point: pool.submit(run_case, k, tmp_path_factory.mktemp("kill")) for k in selected}


@pytest.mark.parametrize("kill", KILLS, ids=[k.point for k in KILLS])
def test_kill_and_resume(kill: Kill, kill_runs, reference):
    case: CaseResult = kill_runs[kill.point].result()
    problems = list(case.problems)
    if case.outcome is not None:
        problems += compare(reference, case.outcome)
    recovery = "; ".join(f"{cmd} -> exit {rc}" for cmd, rc, _ in case.recovery)
    print(f"{kill.point}: killed (exit {case.kill_rc}) with {case.after_kill}; {recovery}; "
          f"{case.resumed_from} [{case.seconds:.1f}s]")
    assert not problems, (f"killed at {kill.point} ({kill.where}); files after the kill: {case.after_kill}; "
                          f"recovery: {recovery or 'none'}; {case.resumed_from}\n  - " + "\n  - ".join(problems))
