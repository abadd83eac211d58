"""Run folders on disk: find them, derive their status per docs/protocol.md, summarise them.

Status rule: `finished` last -> completed/stopped; `failed` -> failed; no final event and the pid
in `started` alive -> running; otherwise crashed. Pure stdlib; safe to call from a thread.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import time
import tomllib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine_client import pid_alive
from .run_state import RunState, as_float, replay

DATE_FORMAT = "%Y-%m-%d %H:%M"


class RunBusy(Exception):
    """The run folder is being written by an engine process (it holds the folder's lock)."""


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
    started: float | None = None  # when the run started (epoch seconds), None when unknown
    warnings: int = 0  # `warning` events (health checks) in its events.jsonl
    latest_warning: str = ""  # the newest one's signal
    sweep: str = ""  # the sweep folder (under the runs folder) this run is a cell of; "" for a run of its own

    is_sweep = False  # a SweepSummary (fbt_tui/sweeps.py) stands beside runs in the Runs screen's list

    @property
    def key(self) -> str:
        """Unique among the Runs screen's rows: `name`, or `sweep/name` for a sweep's cell."""
        return f"{self.sweep}/{self.name}" if self.sweep else self.name

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

    None when the folder vanished or cannot be read while being scanned. A run at rest is read
    once: while its events.jsonl keeps its size and date, the summary is reused (the Runs screen
    rescans every few seconds while something runs; replaying every finished run each time would not
    be cheap).
    """
    events = run_dir / "events.jsonl"
    stamp = _stamp(run_dir)
    cached = _AT_REST.get(run_dir)
    if stamp is not None and cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        state = replay(events) if events.is_file() else RunState(name=run_dir.name, run_dir=run_dir)
    except OSError:
        return None
    duration = as_float(state.final.get("duration_s")) if state.final is not None else None
    summary = RunSummary(
        name=run_dir.name, path=run_dir, status=derive_status(state), teacher=state.teacher,
        student=state.student, method=state.method, best_top1=state.best_top1,
        duration_s=duration if duration is not None else (state.t or None), pid=state.pid,
        started=started_at(run_dir), warnings=state.warning_count, latest_warning=latest_signal(state))
    if stamp is not None and summary.status != "running":  # a running one's status depends on its pid
        _AT_REST[run_dir] = (stamp, summary)
    return summary


_AT_REST: dict[Path, tuple[tuple[int, int, float | None], RunSummary]] = {}


def _stamp(run_dir: Path) -> tuple[int, int, float | None] | None:
    try:
        st = (run_dir / "events.jsonl").stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, started_at(run_dir)


def latest_signal(state: RunState) -> str:
    """The signal of a run's newest health warning ("" without one)."""
    return str(state.warnings[-1].get("signal") or "?") if state.warnings else ""


WARNING_STYLE = "bold black on yellow"


def warning_badge(count: int, signal: str = "") -> str:
    """Rich markup of the health-warning badge: `⚠ 2 fused_spread` ("" for no warnings)."""
    if count <= 0:
        return ""
    from rich.markup import escape
    return f"[{WARNING_STYLE}] ⚠ {count}{' ' + escape(signal) if signal else ''} [/]"


def started_at(run_dir: Path) -> float | None:
    """When a run started: config.toml is written once, as the run folder is made (the events
    carry only seconds since the start); events.jsonl stands in for a folder without one."""
    for name in ("config.toml", "events.jsonl"):
        try:
            return (run_dir / name).stat().st_mtime
        except OSError:
            continue
    return None


def format_date(seconds: float | None) -> str:
    """`2025-06-01 14:05` in local time; empty when unknown."""
    return time.strftime(DATE_FORMAT, time.localtime(seconds)) if seconds is not None else ""


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".") and (
        (path / "events.jsonl").is_file() or (path / "config.toml").is_file())


def scan_runs(runs_dir: str | Path) -> list[RunSummary]:
    """Every run folder directly under `runs_dir`, sorted by name (folders deleted meanwhile are left
    out; sweep folders too: `scan_all` lists them with their cells)."""
    root = Path(runs_dir)
    try:
        folders = sorted(p for p in root.iterdir() if is_run_dir(p) and not (p / "sweep.json").is_file())
    except OSError:  # missing, or deleted while listed
        return []
    return [s for s in map(summarize, folders) if s is not None]


def scan_all(runs_dir: str | Path, alive: Collection[Path] = ()) -> list[Any]:
    """The Runs screen's rows: every run and sweep folder under `runs_dir` by name, each sweep
    (a `SweepSummary`) followed by its cells' summaries. `alive`: sweep folders whose sweep process
    this TUI knows to be running."""
    from .sweeps import is_sweep_dir, summarize_sweep

    root = Path(runs_dir)
    try:
        folders = sorted(p for p in root.iterdir() if is_sweep_dir(p) or is_run_dir(p))
    except OSError:
        return []
    rows: list[Any] = []
    for folder in folders:
        try:
            if is_sweep_dir(folder):
                sweep = summarize_sweep(folder, alive)
                rows += [sweep, *sweep.cells]
            elif (run := summarize(folder)) is not None:
                rows.append(run)
        except OSError:  # deleted while scanned
            continue
    return rows


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


# --- acting on a run folder ----------------------------------------------------------------------

def _hold_folder(run_dir: Path) -> Any:
    """The run folder's lock (the one `fbt-engine` holds while it writes the folder), held by us,
    so no engine starts writing it while we move or delete it. RunBusy when an engine holds it."""
    from fbt_engine.locks import FileLock

    if run_dir.is_symlink() or not run_dir.is_dir():
        raise OSError(f"{run_dir} is not a run folder")
    lock = FileLock(run_dir / ".lock")
    if not lock.try_acquire():
        raise RunBusy(f"run {run_dir.name} is in use by fbt-engine (pid {lock.holder()}): stop it first")
    return lock


def delete_run(run_dir: Path) -> None:
    """Delete a run folder and everything in it (refused while an engine writes it)."""
    lock = _hold_folder(run_dir)
    try:
        shutil.rmtree(run_dir)
    finally:
        lock.release()


def check_new_name(runs_dir: Path, name: str) -> str:
    """Why `name` cannot be a new run folder name under `runs_dir` ("" when it can)."""
    from fbt_engine.config import check_name
    from fbt_engine.errors import FBTError

    try:
        check_name(name, "the rename box")
    except FBTError as exc:
        return exc.message
    if (runs_dir / name).exists():
        return f"{runs_dir / name} already exists"
    return ""


def rename_run(run_dir: Path, name: str) -> Path:
    """Rename a run folder (and the `name` its config.toml records, keeping the file's date, which
    is the run's start). Refused while an engine writes it; a resume continues under the new name."""
    reason = check_new_name(run_dir.parent, name)
    if reason:
        raise ValueError(reason)
    lock = _hold_folder(run_dir)
    target = run_dir.parent / name
    try:
        os.rename(run_dir, target)
    finally:
        lock.release()
    _rename_in_config(target / "config.toml", name)
    return target


def _rename_in_config(path: Path, name: str) -> None:
    try:
        text, stat = path.read_text(encoding="utf-8"), path.stat()
    except OSError:
        return  # no config.toml: nothing records the name
    new, count = re.subn(r'(?m)^name\s*=\s*"[^"\n]*"\s*$', f'name = "{name}"', text, count=1)
    if not count:
        return
    try:
        if tomllib.loads(new).get("name") != name:
            return
    except tomllib.TOMLDecodeError:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)
    os.utime(path, (stat.st_atime, stat.st_mtime))


def read_config(run_dir: Path) -> dict[str, Any]:
    """A run's config.toml as a dict ({} when missing or unreadable)."""
    try:
        with open(run_dir / "config.toml", "rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 1}}` -> `{"train.lr": 1}`."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def compare_rows(runs: list[RunSummary]) -> list[tuple[str, list[str]]]:
    """Rows of the comparison of several runs: results first, then every config key whose value
    differs between them (the run name aside). One column per run."""
    rows: list[tuple[str, list[str]]] = [
        ("status", [r.status for r in runs]),
        ("started", [format_date(r.started) for r in runs]),
        ("method", [r.method or "?" for r in runs]),
        ("teacher", [r.teacher or "-" for r in runs]),
        ("student", [r.student or "?" for r in runs]),
        ("best top-1", [f"{r.best_top1:.2f}%" if r.best_top1 is not None else "-" for r in runs]),
        ("duration", [format_duration(r.duration_s) or "-" for r in runs]),
    ]
    if any(r.warnings for r in runs):
        rows.append(("warnings", [f"{r.warnings} ({r.latest_warning})" if r.warnings else "0" for r in runs]))
    configs = [flatten(read_config(r.path)) for r in runs]
    keys = sorted({k for c in configs for k in c} - {"name", "method", "teacher.model", "student.model"})
    for key in keys:
        values = [_show(c.get(key, "-")) for c in configs]
        if len(set(values)) > 1:
            rows.append((key, values))
    return rows


def _show(value: Any) -> str:
    return "true" if value is True else "false" if value is False else str(value)


def editor_command(path: Path) -> list[str] | None:
    """`$VISUAL`/`$EDITOR` on `path` (it runs in this terminal), or None when neither is set."""
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR")
    if not editor:
        return None
    try:
        return [*shlex.split(editor), str(path)]
    except ValueError:
        return None


def opener_command(path: Path) -> list[str] | None:
    """The desktop's opener (file manager for a folder, default app for a file), or None
    when there is none (a server over ssh)."""
    if sys.platform != "darwin" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return None  # no desktop to open it on
    names = ("open",) if sys.platform == "darwin" else ("xdg-open", "gio")
    for name in names:
        exe = shutil.which(name)
        if exe:
            return [exe, "open", str(path)] if name == "gio" else [exe, str(path)]
    return None
