"""What the TUI knows about one run, built from its events: pure data, no Textual, no I/O.

The same `RunState` is fed by a live stdout stream, a tailed events.jsonl or a replay, so the
charts and status lines have exactly one source. `version` grows with every change; the run
screen redraws on a timer only when it moved (coalescing: never one redraw per event).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fbt_engine.events import Event, LogLine

FINAL_STATUSES = ("completed", "stopped", "failed", "crashed")


def as_float(value: Any) -> float | None:
    """A finite float, or None (the protocol writes NaN/inf as strings)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


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
    eta_s: float | None = None
    t: float = 0.0
    # term -> ([x], [y]); x is the step counted across phases so the teacher phase comes first.
    losses: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    # series name (student/fused/teacher) -> ([epoch], [top1])
    accs: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    best_top1: float | None = None
    final: Event | None = None
    error: str = ""
    hint: str = ""
    log: deque[str] = field(default_factory=lambda: deque(maxlen=2000))
    log_seq: int = 0  # counts every log line ever added (the pane appends only the new ones)
    version: int = 0
    _phase_offset: int = 0
    _phase_last_step: int = 0

    # --- events ---------------------------------------------------------------------------
    def apply(self, item: Event | LogLine) -> None:
        """Fold one decoded line into the state; unknown types are ignored per the protocol."""
        self.version += 1
        if isinstance(item, LogLine):
            self.note_log(item.text)
            return
        if item.run and not self.name:
            self.name = item.run
        self.t = max(self.t, item.t)
        handler = getattr(self, f"_on_{item.type}", None)
        if handler is not None:
            handler(item)

    def _on_started(self, ev: Event) -> None:
        self.status = "running"
        self.teacher = str(ev.get("teacher") or "")
        self.student = str(ev.get("student") or "")
        self.method = str(ev.get("method") or "")
        self.device = str(ev.get("device") or "")
        self.pid = ev.get("pid")
        self.final, self.error, self.hint = None, "", ""
        if self.status == "running" and ev.get("resumed"):
            self.note_log("resumed")

    def _on_phase(self, ev: Event) -> None:
        # Steps restart per phase: continue the x axis after the previous phase's last step.
        self._phase_offset += self._phase_last_step
        self._phase_last_step = 0
        self.phase = str(ev.get("phase") or "")
        self.epochs = int(ev.get("epochs") or 0)
        self.steps_per_epoch = int(ev.get("steps_per_epoch") or 0)
        self.note_log(f"phase {self.phase}: {self.epochs} epochs x {self.steps_per_epoch} steps")

    def _on_step(self, ev: Event) -> None:
        self.status = "running" if self.status == "starting" else self.status
        self.phase = str(ev.get("phase") or self.phase)
        self.epoch = int(ev.get("epoch") or 0)
        self.step = int(ev.get("step") or 0)
        self.steps_per_epoch = int(ev.get("steps_per_epoch") or self.steps_per_epoch)
        self.lr, self.loss = as_float(ev.get("lr")), as_float(ev.get("loss"))
        self.samples_per_s, self.eta_s = as_float(ev.get("samples_per_s")), as_float(ev.get("eta_s"))
        self._phase_last_step = self.step
        x = float(self._phase_offset + self.step)
        prefix = "teacher " if self.phase == "teacher" else ""
        terms = dict(ev.get("terms") or {})
        if self.loss is not None and "total" not in terms:
            terms = {"total": self.loss, **terms}
        for term, value in terms.items():
            y = as_float(value)
            if y is not None:
                xs, ys = self.losses.setdefault(prefix + term, ([], []))
                xs.append(x)
                ys.append(y)

    def _on_eval(self, ev: Event) -> None:
        epoch = float(ev.get("epoch") or 0)
        teacher_phase = ev.get("phase") == "teacher"
        for key in ("student", "fused", "teacher"):
            y = as_float(ev.get(f"{key}_top1"))
            if y is None:
                continue
            series = "teacher training" if teacher_phase and key == "teacher" else key
            xs, ys = self.accs.setdefault(series, ([], []))
            xs.append(epoch)
            ys.append(y)
            if key == "student" and not teacher_phase:
                self.best_top1 = y if self.best_top1 is None else max(self.best_top1, y)

    def _on_checkpoint(self, ev: Event) -> None:
        best = " (best)" if ev.get("best") else ""
        self.note_log(f"checkpoint epoch {ev.get('epoch')}{best}: {ev.get('path')}")

    def _on_finished(self, ev: Event) -> None:
        self.final = ev
        self.status = "stopped" if ev.get("reason") == "stopped" else "completed"
        best = ev.get("best") or {}
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

    def _on_log(self, ev: Event) -> None:
        self.note_log(f"[{ev.get('level', 'info')}] {ev.get('message', '')}")

    # --- outside the event stream ---------------------------------------------------------
    def note_log(self, text: str) -> None:
        """Append a line to the log pane's buffer."""
        self.log.append(text)
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
        tail = [ln for ln in stderr_tail if ln.strip()][-3:]
        self.mark_crashed(f"the engine exited with code {returncode} without a final event",
                          " / ".join(tail))

    def mark_crashed(self, message: str, hint: str = "") -> None:
        self.status = "crashed"
        self.error, self.hint = message, hint
        self.version += 1
        self.note_log(f"crashed: {message}")

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def progress(self) -> tuple[int, int]:
        """(done, total) steps for the current phase; total 0 when unknown."""
        total = self.epochs * self.steps_per_epoch
        return min(self.step, total) if total else self.step, total


def ema(values: list[float], alpha: float = 0.1) -> list[float]:
    """Exponential moving average (alpha = weight of the newest value), same length as input."""
    out: list[float] = []
    acc: float | None = None
    for v in values:
        acc = v if acc is None else alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


def replay(events_path: str | Path) -> RunState:
    """Build a RunState from a whole events.jsonl (a finished or paused run)."""
    from fbt_engine.events import read_events

    path = Path(events_path)
    state = RunState(name=path.parent.name, run_dir=path.parent)
    for item in read_events(path):
        state.apply(item)
    return state
