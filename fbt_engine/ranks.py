"""Several ranks, one story: who failed, who hangs, how fast each rank goes (torchrun runs only).

Only rank 0 writes events. The other ranks leave notes in `RUN/ranks/<attempt>/` (a shared file
system on several nodes; without one the notes are skipped and rank 0 says less):

    rank-R.json         {rank, pid, host}: written at start
    rank-R.failed.json  {rank, kind, message, traceback}: the failure a rank would have emitted
    rank-R.hang.json    {rank, idle_s, where, waiting, stack}: written by its watchdog

so that when rank 0's collective breaks ("connection closed by peer") its `failed` event names the
rank that caused it and that rank's error, not the symptom. A rank killed outright (SIGKILL, the
OOM killer) leaves no note; rank 0 finds its pid gone (same host) and names it. When rank 0 itself
died, `fbt-engine run --gpus/--nproc-per-node` (launch.py) writes the `failed` event from the notes.

The watchdog (a daemon thread per rank) fails the job when no step, evaluation or checkpoint has
finished for `train.watchdog_s` seconds: a hung rank blocks every other rank in its next collective,
and without it the job would wait for the gloo/NCCL timeout (`train.dist_timeout_s`) or forever.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from .events import Emitter

# Substrings of the errors a rank sees when a peer is gone or late (gloo, NCCL, the store).
_PEER_ERRORS = ("connection closed by peer", "connection reset by peer", "broken pipe", "gloo", "nccl",
                "timed out waiting", "c10d")


def is_peer_error(exc: BaseException) -> bool:
    """Whether `exc` is what a rank sees when another rank died or stalled (not its own fault)."""
    try:
        import torch.distributed as dist
        if isinstance(exc, getattr(dist, "DistError", ())):
            return True
    except ImportError:  # pragma: no cover
        pass
    text = f"{type(exc).__name__}: {exc}".lower()
    return isinstance(exc, RuntimeError) and any(s in text for s in _PEER_ERRORS)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (its parent, torchrun, has not reaped it yet) is dead too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class RankBoard:
    """The notes of one attempt's ranks (see the module docstring)."""

    def __init__(self, folder: Path, rank: int, world: int) -> None:
        self.folder, self.rank, self.world = folder, rank, world
        self.host = socket.gethostname()

    @staticmethod
    def start(run_dir: Path, rank: int, world: int, attempt: str) -> RankBoard:
        """Rank 0 removes older attempts' notes; every rank then writes its own start note."""
        root = run_dir / "ranks"
        if rank == 0 and root.is_dir():
            for old in root.iterdir():
                if old.name != attempt and old.is_dir():
                    for f in old.iterdir():
                        f.unlink(missing_ok=True)
                    old.rmdir()
        board = RankBoard(root / attempt, rank, world)
        board.write("", {"pid": os.getpid(), "host": board.host})
        return board

    def write(self, what: str, data: dict[str, Any]) -> None:
        """One note, atomically (a reader never sees half of it); nothing when the folder is not
        reachable from this node."""
        if not self.folder.parent.parent.is_dir():
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"rank-{self.rank}{'.' + what if what else ''}.json"
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps({"rank": self.rank, "t": time.time(), **data}))
            os.replace(tmp, path)
        except OSError:
            pass

    def read(self, what: str) -> dict[int, dict[str, Any]]:
        """Every rank's note of one kind ("" start, "failed", "hang"), by rank."""
        out = {}
        for r in range(self.world):
            path = self.folder / f"rank-{r}{'.' + what if what else ''}.json"
            try:
                out[r] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
        return out

    def culprit(self, wait_s: float = 3.0, skip: tuple[int, ...] = ()) -> tuple[int, str, str] | None:
        """(rank, kind, message) of the rank that broke the job: the first one whose own error is
        not a peer error, else one whose process is gone without a note. Waits up to `wait_s` for
        notes and exits to show up (the failing rank writes just before it exits)."""
        end = time.monotonic() + wait_s
        while True:
            found = self._culprit_now(skip)
            if found is not None or time.monotonic() >= end:
                return found
            time.sleep(0.1)

    def _culprit_now(self, skip: tuple[int, ...]) -> tuple[int, str, str] | None:
        failed = self.read("failed")
        own = [n for r, n in sorted(failed.items(), key=lambda kv: kv[1].get("t", 0)) if r not in skip
               and not n.get("peer_error")]
        if own:
            return own[0]["rank"], own[0].get("kind", "crash"), own[0].get("message", "")
        for r, note in sorted(self.read("hang").items()):
            if r not in skip and not note.get("waiting"):
                return r, "hang", (f"rank {r} made no progress for {note.get('idle_s')} s (stuck at "
                                   f"{note.get('where')}); its watchdog ended it")
        for r, note in sorted(self.read("").items()):
            if r in skip or r in failed or note.get("host") != self.host:
                continue
            if not _alive(int(note.get("pid", 0))):
                return r, "rank_lost", (f"rank {r} (pid {note.get('pid')}) ended without reporting an error: it was "
                                        "killed (SIGKILL, the OOM killer) or crashed hard")
        return None


class RankEmitter(Emitter):
    """The emitter of a run under torchrun (every rank has one; only rank 0's writes).

    - a `failed` event on rank R > 0 becomes R's note (rank 0 names it in its own event);
    - a `failed` event on rank 0 whose error is a peer's fault names that peer instead;
    - at each logged `step`, every rank's throughput is gathered (one small all_gather; every rank
      emits its step events at the same steps) into `rank_samples_per_s`.
    """

    def __init__(self, *args: Any, board: RankBoard, device: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.board, self.device = board, device
        self.peer_error = False  # set by the run before it emits a failure caused by a broken collective
        self.on_any: Callable[[], None] | None = None  # the watchdog's tick: every event is progress

    def emit(self, type: str, **data: Any) -> Any:
        if self.on_any is not None:
            self.on_any()
        if type == "step" and "samples_per_s" in data:
            data["rank_samples_per_s"] = self._gather(float(data["samples_per_s"] or 0.0) / self.board.world)
        if type == "failed":
            data = self._failed(data)
            if data is None:
                return None
        return super().emit(type, **data)

    def _gather(self, value: float) -> list[float]:
        import torch
        import torch.distributed as dist
        out = [torch.zeros(1, dtype=torch.float64, device=self.device) for _ in range(self.board.world)]
        dist.all_gather(out, torch.tensor([value], dtype=torch.float64, device=self.device))
        return [round(float(t.item()), 2) for t in out]

    def _failed(self, data: dict[str, Any]) -> dict[str, Any] | None:
        rank = self.board.rank
        if rank != 0:
            self.board.write("failed", {"kind": data.get("kind", "crash"), "message": data.get("message", ""),
                                        "peer_error": self.peer_error, "traceback": traceback.format_exc()})
            return None
        if not self.peer_error:
            return {"rank": 0, **data}
        found = self.board.culprit(skip=(0,))
        if found is None:
            return {**data, "kind": "rank_failed", "rank": None,
                    "message": f"another rank failed or stopped answering: {data.get('message', '')}",
                    "hint": "see the launcher's output (every rank's stderr); " + data.get("hint", "")}
        r, kind, message = found
        if kind == "hang":
            return {**data, "kind": kind, "rank": r, "message": message,
                    "hint": f"its stack is in {self.board.folder}/rank-{r}.hang.json; {data.get('hint', '')}"}
        if kind == "rank_lost":
            return {**data, "kind": kind, "rank": r, "message": message,
                    "hint": f"look for the OOM killer (`dmesg`, the job's memory limit) or who sent the signal; "
                            f"the other ranks stopped with it. {data.get('hint', '')}".strip()}
        return {**data, "kind": "rank_failed", "rank": r, "message": f"rank {r} failed ({kind}): {message}",
                "hint": f"rank {r}'s traceback is in the launcher's output (its stderr); the other ranks stopped "
                        f"with it. {data.get('hint', '')}".strip()}


def _main_stack() -> tuple[str, str, bool]:
    """(innermost frame, whole stack, whether it waits on other ranks) of the main thread."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None:
        return "?", "", False
    stack = traceback.extract_stack(frame)
    waiting = any(("torch/distributed" in f.filename or "torch/autograd" in f.filename
                   or f.name in ("_agree", "_gather")) for f in stack)
    ours = [f"{Path(f.filename).name}:{f.lineno} ({f.name})" for f in reversed(stack) if "fbt_engine" in f.filename]
    where = " <- ".join(ours[:2]) or f"{Path(stack[-1].filename).name}:{stack[-1].lineno}"
    return where, "".join(traceback.format_list(stack)), waiting


class Watchdog:
    """Fails the job when this rank sees no progress for `seconds` (see the module docstring).

    `tick()` marks progress (each step, each event). The first tick arms it. On rank R > 0 it writes
    its note and exits the process shortly after; on rank 0 it waits for the others' notes, emits
    one `failed` event (kind `hang`) naming the rank that is not waiting in a collective, writes
    every rank's stack to log.txt and exits the process (torchrun then stops the rest).
    """

    def __init__(self, seconds: float, board: RankBoard, emit: Callable[..., Any], log: Any,
                 hint: Callable[[], str], exit: Callable[[int], None] = os._exit) -> None:
        self.seconds, self.board, self.emit, self.log, self.hint, self.exit = seconds, board, emit, log, hint, exit
        self.last: float | None = None
        self.fired = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fbt-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def tick(self, *_: Any) -> None:
        self.last = time.monotonic()

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.seconds / 4)):
            if self.last is not None and time.monotonic() - self.last > self.seconds:
                self.fired.set()
                self._fire(time.monotonic() - self.last)
                return

    def _fire(self, idle: float) -> None:
        where, stack, waiting = _main_stack()
        self.board.write("hang", {"idle_s": round(idle, 1), "where": where, "waiting": waiting, "stack": stack})
        if self.board.rank != 0:
            time.sleep(5.0)  # rank 0 reads the notes first; then free the others from this rank's collectives
            self.exit(1)
            return
        notes = self._collect(5.0)
        stuck = [r for r, n in sorted(notes.items()) if not n.get("waiting")]
        r = stuck[0] if stuck else None
        who = f"rank {r} is stuck at {notes[r].get('where')}" if r is not None else \
            "every rank waits in a collective (a peer that is lost or much slower)"
        self._log(notes)
        self.emit("failed", kind="hang", rank=r,
                  message=f"no training progress for {idle:.0f} s (train.watchdog_s = {self.seconds:g}): {who}",
                  hint=f"every rank's stack is in log.txt; if evaluation or a checkpoint write takes longer, raise "
                       f"train.watchdog_s. {self.hint()}")
        self.exit(1)

    def _collect(self, wait_s: float) -> dict[int, dict[str, Any]]:
        end = time.monotonic() + wait_s
        while True:
            notes = self.board.read("hang")
            if len(notes) >= self.board.world or time.monotonic() >= end:
                return notes
            time.sleep(0.2)

    def _log(self, notes: dict[int, dict[str, Any]]) -> None:
        if self.log is None:
            return
        try:
            for r, n in sorted(notes.items()):
                self.log.write(f"watchdog: rank {r} idle {n.get('idle_s')} s at {n.get('where')}"
                               f"{' (waiting for other ranks)' if n.get('waiting') else ''}:\n{n.get('stack', '')}\n")
            self.log.flush()
        except (OSError, ValueError):
            pass
