"""Run folders on disk: find them, derive their status per docs/protocol.md, summarise them.

Status rule: `finished` last -> completed/stopped; `failed` -> failed; no final event and the pid
in `started` alive -> running; otherwise crashed. Pure stdlib; safe to call from a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .engine_client import pid_alive
from .run_state import RunState, as_float, replay


@dataclass(frozen=True)
class RunSummary:
    """One row of the runs screen."""

    name: str
    path: Path
    status: str
    teacher: str
    student: str
    method: str
    best_top1: float | None
    duration_s: float | None
    pid: int | None

    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def pair(self) -> str:
        if self.teacher and self.student:
            return f"{self.teacher} -> {self.student}"
        return self.student or self.teacher or "?"


def derive_status(state: RunState) -> str:
    """Status of a run read from disk (a replayed state never saw its process exit)."""
    if state.final is not None:
        return state.status
    if state.pid is not None and pid_alive(int(state.pid)):
        return "running"
    return "crashed"


def summarize(run_dir: Path) -> RunSummary | None:
    """Summarise one run folder from its events.jsonl (a folder without one reads as crashed).

    None when the folder vanished or cannot be read while being scanned.
    """
    events = run_dir / "events.jsonl"
    try:
        state = replay(events) if events.is_file() else RunState(name=run_dir.name, run_dir=run_dir)
    except OSError:
        return None
    duration = as_float(state.final.get("duration_s")) if state.final is not None else None
    return RunSummary(
        name=run_dir.name, path=run_dir, status=derive_status(state), teacher=state.teacher,
        student=state.student, method=state.method, best_top1=state.best_top1,
        duration_s=duration if duration is not None else (state.t or None), pid=state.pid)


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".") and (
        (path / "events.jsonl").is_file() or (path / "config.toml").is_file())


def scan_runs(runs_dir: str | Path) -> list[RunSummary]:
    """Every run folder directly under `runs_dir`, sorted by name (folders deleted meanwhile are left out)."""
    root = Path(runs_dir)
    try:
        folders = sorted(p for p in root.iterdir() if is_run_dir(p))
    except OSError:  # missing, or deleted while listed
        return []
    return [s for s in map(summarize, folders) if s is not None]


def format_duration(seconds: object) -> str:
    """`1h02m`, `3m05s`, `12s`; empty when unknown (or not a finite number)."""
    value = as_float(seconds)
    if value is None:
        return ""
    s = int(round(value))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
