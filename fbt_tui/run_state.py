"""What the TUI knows about one run, built from its events: pure data, no Textual, no I/O.

The same `RunState` is fed by a live stdout stream, a tailed events.jsonl or a replay, so the
charts and status lines have exactly one source. `version` grows with every change; the run
screen redraws on a timer only when it moved (coalescing: never one redraw per event).
"""

from __future__ import annotations

import math
import re
import signal
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from fbt_engine.events import Event, LogLine

# "lost": the TUI stopped following the run (its folder was deleted), not a verdict on the run.
FINAL_STATUSES = ("completed", "stopped", "failed", "crashed", "lost")
# A chart line keeps its newest RECENT_POINTS at full resolution and thins older ones evenly to
# at most HISTORY_POINTS, so a week-long (or flooding) run costs the same memory as a short one.
RECENT_POINTS = 1000
HISTORY_POINTS = 1000
WARNINGS_KEPT = 50  # the run screen's tooltip lists the newest; the count covers them all
LOG_LINE_CHARS = 2000  # longer log lines are cut (a 1 MB stray line must not live 2000 times)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # would move the cursor or recolour the terminal
# Words for the signals that end engines in practice (a negative return code is -signal): the
# name, then what it usually means. One table: the run screen, the exit messages and the tests.
SIGNAL_HINTS = {
    signal.SIGKILL: "possibly out of memory (the kernel's OOM killer) or killed by the user (kill -9)",
    signal.SIGTERM: "stopped from outside before it could write a final event",
    signal.SIGINT: "interrupted before it could write a final event",
    signal.SIGSEGV: "a crash in native code (torch, a CUDA driver, a C extension)",
    signal.SIGABRT: "a native library gave up (abort)",
    signal.SIGBUS: "bad memory access, often a full /dev/shm",
    signal.SIGHUP: "its terminal went away",
    signal.SIGPIPE: "a reader of its output went away",
}


def as_float(value: Any) -> float | None:
    """A finite float, or None (the protocol writes NaN/inf as strings)."""
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if math.isfinite(out) else None


def as_int(value: Any) -> int | None:
    """An int from an int, an integral float or a numeric string; None for anything else."""
    if isinstance(value, bool):
        return None
    number = as_float(value)
    return int(number) if number is not None else None


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def signal_words(num: int) -> str:
    """`killed by SIGKILL (signal 9), possibly out of memory ...` for a signal number ("" if unknown)."""
    try:
        sig = signal.Signals(num)
    except ValueError:
        return f"killed by signal {num}" if num > 0 else ""
    hint = SIGNAL_HINTS.get(sig)
    return f"killed by {sig.name} (signal {num})" + (f", {hint}" if hint else "")


def describe_exit(returncode: int) -> str:
    """What an exit code means, in words ("" when it means nothing in particular).

    A negative code is the signal that killed the process; 128+N is how a shell wrapper
    reports the same thing.
    """
    if returncode < 0:
        return signal_words(-returncode)
    if 128 < returncode <= 128 + 64:
        words = signal_words(returncode - 128)
        return f"128+{returncode - 128}: {words}" if words else ""
    return {1: "an unhandled error (see stderr)", 2: "a user error (bad preset or missing data)"}.get(returncode, "")


def exit_message(returncode: int) -> str:
    """The sentence for an engine that exited without a final event."""
    words = describe_exit(returncode)
    if returncode < 0:
        return f"the engine died without a final event: {words}"
    return f"the engine exited with code {returncode} without a final event" + (f": {words}" if words else "")


def clean_log_text(text: str) -> str:
    """One log line made safe to show: control characters replaced, very long lines cut."""
    if len(text) > LOG_LINE_CHARS:
        text = f"{text[:LOG_LINE_CHARS]}... ({len(text) - LOG_LINE_CHARS} more characters)"
    return _CONTROL.sub("\ufffd", text.replace("\t", "    "))


class Series:
    """The points of one chart line, bounded in memory; unpacks as `xs, ys` like a pair of lists.

    The newest points stay at full resolution; points that age out of that window are thinned
    evenly (every `stride`-th kept, the stride doubling whenever history outgrows its budget),
    so the whole run stays visible with the same shape, just coarser, however long it runs.
    """

    def __init__(self, recent: int = RECENT_POINTS, history: int = HISTORY_POINTS) -> None:
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.recent, self.history = recent, history
        self.stride = 1  # keep every stride-th aged point
        self._hist = 0  # the first _hist points are thinned history, the rest recent
        self._aged = 0  # how many points have aged out of the recent window

    def append(self, x: float, y: float) -> None:
        """Add a point; an x at or before the last one rewinds first (see `rewind`)."""
        if self.xs and x <= self.xs[-1]:
            self.rewind(x)
        self.xs.append(x)
        self.ys.append(y)
        if len(self.xs) - self._hist >= 2 * self.recent:
            self._age(self.recent)  # in batches, so the cost per point stays O(1)

    def _age(self, n: int) -> None:
        lo = self._hist
        keep = [i for i in range(lo, lo + n) if (self._aged + i - lo) % self.stride == 0]
        self._aged += n
        self.xs[lo:lo + n] = [self.xs[i] for i in keep]
        self.ys[lo:lo + n] = [self.ys[i] for i in keep]
        self._hist += len(keep)
        while self._hist > self.history:
            self.xs[:self._hist] = self.xs[:self._hist:2]
            self.ys[:self._hist] = self.ys[:self._hist:2]
            self._hist = (self._hist + 1) // 2
            self.stride *= 2

    def rewind(self, x: float) -> None:
        """Drop the points at or after `x`: a run resumed from its last checkpoint redoes the steps
        (or epochs) after it, and the redone points replace the lost ones instead of zigzagging."""
        while self.xs and self.xs[-1] >= x:
            self.xs.pop()
            self.ys.pop()
        self._hist = min(self._hist, len(self.xs))

    def __iter__(self) -> Iterator[list[float]]:
        return iter((self.xs, self.ys))

    def __getitem__(self, index: int) -> list[float]:
        return (self.xs, self.ys)[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (Series, tuple)) and (self.xs, self.ys) == tuple(other)

    def __repr__(self) -> str:
        return f"Series({len(self.xs)} points, stride {self.stride})"


@dataclass
class RunState:
    """Accumulated view of one run. Mutated only through `apply` and the `mark_*` helpers."""

    name: str = ""
    run_dir: Path | None = None
    status: str = "starting"  # starting | running | completed | stopped | failed | crashed
    teacher: str = ""
    student: str = ""
    method: str = ""
    device: str = ""
    pid: int | None = None
    phase: str = ""
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    lr: float | None = None
    loss: float | None = None
    samples_per_s: float | None = None
    rank_samples_per_s: list[float] = field(default_factory=list)  # under torchrun: each rank's img/s
    world_size: int = 1
    eta_s: float | None = None
    t: float = 0.0
    # term -> (xs, ys); x is the step counted across phases so the teacher phase comes first.
    losses: dict[str, Series] = field(default_factory=dict)
    # series name (student/fused/teacher) -> (epochs, top1s)
    accs: dict[str, Series] = field(default_factory=dict)
    best_top1: float | None = None
    final: Event | None = None
    error: str = ""
    hint: str = ""
    # `warning` events (health checks, fbt_engine/health.py): the newest WARNINGS_KEPT, and how many in all
    warnings: deque[Event] = field(default_factory=lambda: deque(maxlen=WARNINGS_KEPT))
    warning_count: int = 0
    log: deque[str] = field(default_factory=lambda: deque(maxlen=2000))
    log_seq: int = 0  # counts every log line ever added (the pane appends only the new ones)
    version: int = 0
    # Where each phase's step 1 sits on the chart's x axis, fixed when the phase is first seen: a
    # phase announced again (every resume does) continues at the same place, however many resumes.
    _phase_offsets: dict[str, int] = field(default_factory=dict)
    _last_x: int = 0  # x of the newest step: where a phase seen for the first time starts

    # --- events ---------------------------------------------------------------------------
    def apply(self, item: Event | LogLine) -> None:
        """Fold one decoded line into the state; unknown types are ignored per the protocol.

        Fields of the wrong type are read as missing, so a malformed event never raises; the
        last guard turns a fold that still fails into a log line rather than a dead screen.
        """
        self.version += 1
        if isinstance(item, LogLine):
            self.note_log(item.text)
            return
        if item.run and not self.name:
            self.name = item.run
        self.t = max(self.t, as_float(item.t) or 0.0)
        handler = HANDLERS.get(item.type)
        if handler is None:
            return
        try:
            handler(self, item)
        except Exception as exc:  # noqa: BLE001 - a reader must survive any producer
            self.note_log(f"ignored a malformed {item.type} event ({type(exc).__name__}: {exc})")

    def _on_started(self, ev: Event) -> None:
        self.status = "running"
        self.teacher = str(ev.get("teacher") or "")
        self.student = str(ev.get("student") or "")
        self.method = str(ev.get("method") or "")
        self.device = str(ev.get("device") or "")
        self.world_size = max(1, as_int(ev.get("world_size")) or 1)
        self.pid = as_int(ev.get("pid"))
        self.final, self.error, self.hint = None, "", ""
        if ev.get("resumed") is True:
            self.note_log("resumed")

    def _on_phase(self, ev: Event) -> None:
        self.phase = str(ev.get("phase") or "")
        self.phase_offset(self.phase)
        self.epochs = max(0, _or(as_int(ev.get("epochs")), self.epochs))
        self.steps_per_epoch = max(0, _or(as_int(ev.get("steps_per_epoch")), self.steps_per_epoch))
        self.note_log(f"phase {self.phase}: {self.epochs} epochs x {self.steps_per_epoch} steps")

    def _on_step(self, ev: Event) -> None:
        step = as_int(ev.get("step"))
        if step is None:
            self.note_log("ignored a step event without a numeric step")
            return
        self.status = "running" if self.status == "starting" else self.status
        self.phase = str(ev.get("phase") or self.phase)
        self.epoch = as_int(ev.get("epoch")) or self.epoch
        self.step = step
        self.steps_per_epoch = as_int(ev.get("steps_per_epoch")) or self.steps_per_epoch
        self.lr, self.loss = as_float(ev.get("lr")), as_float(ev.get("loss"))
        self.samples_per_s, self.eta_s = as_float(ev.get("samples_per_s")), as_float(ev.get("eta_s"))
        ranks = ev.get("rank_samples_per_s")
        self.rank_samples_per_s = [v for v in map(as_float, ranks) if v is not None] if isinstance(ranks, list) else []
        self._last_x = self.phase_offset(self.phase) + self.step
        x = float(self._last_x)
        prefix = "teacher " if self.phase == "teacher" else ""
        terms = ev.get("terms")
        terms = dict(terms) if isinstance(terms, dict) else {}
        if self.loss is not None and "total" not in terms:
            terms = {"total": self.loss, **terms}
        for term, value in terms.items():
            y = as_float(value)
            if y is not None:
                self.losses.setdefault(prefix + str(term), Series()).append(x, y)

    def _on_eval(self, ev: Event) -> None:
        epoch = as_float(ev.get("epoch"))
        if epoch is None:
            self.note_log("ignored an eval event without a numeric epoch")
            return
        teacher_phase = ev.get("phase") == "teacher"
        for key in ("student", "fused", "teacher"):
            y = as_float(ev.get(f"{key}_top1"))
            if y is None:
                continue
            series = "teacher training" if teacher_phase and key == "teacher" else key
            self.accs.setdefault(series, Series()).append(epoch, y)
            if key == "student" and not teacher_phase:
                self.best_top1 = y if self.best_top1 is None else max(self.best_top1, y)

    def _on_checkpoint(self, ev: Event) -> None:
        best = " (best)" if ev.get("best") is True else ""
        self.note_log(f"checkpoint epoch {ev.get('epoch')}{best}: {ev.get('path')}")

    def _on_finished(self, ev: Event) -> None:
        self.final = ev
        self.status = "stopped" if ev.get("reason") == "stopped" else "completed"
        best = ev.get("best")
        top1 = as_float(best.get("student_top1")) if isinstance(best, dict) else None
        if top1 is not None:
            self.best_top1 = top1
        self.note_log(f"finished: {ev.get('reason')}")

    def _on_failed(self, ev: Event) -> None:
        self.final = ev
        self.status = "failed"
        self.error = str(ev.get("message") or ev.get("kind") or "failed")
        self.hint = str(ev.get("hint") or "")
        self.note_log(f"failed: {self.error}")

    def _on_warning(self, ev: Event) -> None:
        self.warnings.append(ev)
        self.warning_count += 1
        self.note_log(warning_text(ev))

    def _on_log(self, ev: Event) -> None:
        self.note_log(f"[{ev.get('level', 'info')}] {ev.get('message', '')}")

    def phase_offset(self, phase: str) -> int:
        """Steps restart at 1 in every phase: phase `phase`'s steps sit after the steps of the
        phases before it. Fixed the first time the phase is seen, so a resume (which announces its
        phase again) neither adds the last step twice nor opens a gap."""
        if phase not in self._phase_offsets:
            self._phase_offsets[phase] = self._last_x
        return self._phase_offsets[phase]

    # --- outside the event stream ---------------------------------------------------------
    def note_log(self, text: str) -> None:
        """Append a line to the log pane's buffer (cut to LOG_LINE_CHARS, control characters replaced)."""
        self.log.append(clean_log_text(text))
        self.log_seq += 1
        self.version += 1

    def process_exited(self, returncode: int, stderr_tail: list[str]) -> None:
        """The child exited: a non-zero exit with no final event is a crash (show stderr's tail)."""
        self.version += 1
        if self.final is not None:
            return
        if returncode == 0:
            # Exited cleanly without a final event: treat as stopped rather than invent a result.
            self.status = "stopped"
            return
        tail = [clean_log_text(ln) for ln in stderr_tail if ln.strip()][-3:]
        self.mark_crashed(exit_message(returncode),
                          "stderr: " + " / ".join(tail) if tail else "it printed nothing on stderr")

    def mark_crashed(self, message: str, hint: str = "") -> None:
        self.status = "crashed"
        self.error, self.hint = message, hint
        self.version += 1
        self.note_log(f"crashed: {message}")

    def mark_lost(self, message: str, hint: str = "") -> None:
        """The TUI can no longer follow the run (its folder is gone); the run itself may go on."""
        self.status = "lost"
        self.error, self.hint = message, hint
        self.note_log(f"lost: {message}")

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def progress(self) -> tuple[int, int]:
        """(done, total) steps for the current phase; total 0 when unknown."""
        total = self.epochs * self.steps_per_epoch
        return min(self.step, total) if total else self.step, total


def warning_text(ev: Event) -> str:
    """One line for a `warning` event: where, what, and the hint."""
    where = f"step {ev.get('step')}" if ev.get("step") is not None else f"epoch {ev.get('epoch')}"
    hint = f"; hint: {ev.get('hint')}" if ev.get("hint") else ""
    return f"warning ({ev.get('phase') or '?'} {where}): {ev.get('message') or ev.get('signal')}{hint}"


def ema(values: list[float], alpha: float = 0.1) -> list[float]:
    """Exponential moving average (alpha = weight of the newest value), same length as input."""
    out: list[float] = []
    acc: float | None = None
    for v in values:
        acc = v if acc is None else alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


HANDLERS = {name[len("_on_"):]: fn for name, fn in vars(RunState).items() if name.startswith("_on_")}


def replay(events_path: str | Path) -> RunState:
    """Build a RunState from a whole events.jsonl (a finished or paused run).

    A run without a final event whose process is gone is marked crashed here (its progress must
    not look live). Raises OSError when the file cannot be read (deleted meanwhile, a directory):
    callers treat that as a vanished run."""
    from fbt_engine.errors import FBTError
    from fbt_engine.events import read_events

    from .engine_client import pid_alive

    path = Path(events_path)
    state = RunState(name=path.parent.name, run_dir=path.parent)
    try:
        items = read_events(path)
    except FBTError as exc:
        raise OSError(exc.message) from None
    for item in items:
        state.apply(item)
    if state.final is None and not pid_alive(state.pid):
        state.mark_crashed("the run ended without a final event (its process was killed, or the machine went down)",
                           f"the last lines of {state.run_dir / 'log.txt'} may say why; u resumes it from its last checkpoint")
    return state


def same_ranks(state: RunState) -> list[str]:
    """The launch options that resume a run on as many ranks as it trained on (`fbt-engine resume
    RUN --gpus N`; CPU ranks: `--nproc-per-node N`); none for a one-process run."""
    if state.world_size <= 1:
        return []
    return ["--gpus" if state.device.startswith("cuda") else "--nproc-per-node", str(state.world_size)]
