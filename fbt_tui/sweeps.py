"""Sweep folders on disk (`fbt-engine sweep` / `compare`): summarise them for the Runs screen, build
their results table, delete them, and launch a sweep (or its resume) as a background process.

A sweep folder holds `sweep.json` (the manifest) and one ordinary run folder per cell. What a sweep
is and how its cells went is read through `fbt_engine.sweep` (`Sweep.read`, `aggregate`), the one
source of truth; the cells themselves are summarised like any run (`fbt_tui.runs.summarize`), so a
cell whose process is alive reads as running. The sweep process keeps its pid in the folder's
`.lock` while it runs: a sweep reads as running while that pid is alive, one of its cells runs, or
the sweep process this TUI launched is alive. Pure stdlib at import; `fbt_engine.sweep` is
imported where used (it is torch-free, but not needed for the first frame).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .runs import RunSummary, _hold_folder, started_at, summarize

MANIFEST = "sweep.json"  # fbt_engine.sweep.MANIFEST, without importing it to look at a folder


@dataclass(frozen=True)
class SweepSummary:
    """One sweep folder: the group row of the Runs screen, with its cells' summaries."""

    name: str
    path: Path
    status: str  # running | completed | stopped | failed | unreadable
    grid: str  # "method x 3 seeds"
    completed: int
    total: int
    cells: tuple[RunSummary, ...]
    teacher: str = ""
    student: str = ""
    started: float | None = None
    problem: str = ""  # why the manifest could not be read
    manifest: Any = field(default=None, compare=False)  # the fbt_engine.sweep.Sweep, for the results table

    is_sweep = True

    @property
    def key(self) -> str:
        return self.name

    @property
    def pair(self) -> str:
        if self.teacher and self.student:
            return f"{self.teacher} -> {self.student}"
        return self.student or self.teacher or "?"

    @property
    def progress(self) -> str:
        return f"{self.completed}/{self.total} completed"

    @property
    def best_top1(self) -> float | None:
        values = [c.best_top1 for c in self.cells if c.best_top1 is not None]
        return max(values) if values else None

    @property
    def duration_s(self) -> float | None:
        """The cells' run time added up (compute time; cells side by side overlap in wall time)."""
        values = [c.duration_s for c in self.cells if c.duration_s is not None]
        return sum(values) if values else None

    @property
    def warnings(self) -> int:
        return sum(c.warnings for c in self.cells)

    @property
    def latest_warning(self) -> str:
        return next((c.latest_warning for c in reversed(self.cells) if c.warnings), "")

    @property
    def running_cells(self) -> list[RunSummary]:
        return [c for c in self.cells if c.status == "running"]


def is_sweep_dir(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".") and (path / MANIFEST).is_file()


def grid_text(axes: list[Any], seeds: list[int], vary: list[Any] = ()) -> str:  # type: ignore[assignment]
    """`method x 3 seeds`, `method x fusion.split x 1 seed`, `vary loss.feature x 1 seed` (--vary ablations)."""
    n = len(seeds)
    varied = [f"vary {', '.join(a.key for a in vary)}"] if vary else []
    return " x ".join([*(a.key for a in axes), *varied, f"{n} seed{'s' if n != 1 else ''}"])


def sweep_status(cells: list[str], process_alive: bool) -> str:
    """A sweep's status from its cells' statuses (pending for a cell not started yet)."""
    if process_alive or "running" in cells:
        return "running"
    if cells and all(s == "completed" for s in cells):
        return "completed"
    if "failed" in cells:
        return "failed"
    return "stopped"  # stopped, crashed (killed) or pending cells: `fbt-engine resume` continues them


def summarize_sweep(folder: Path, alive: Collection[Path] = ()) -> SweepSummary:
    """Summarise a sweep folder; `alive`: sweep folders whose sweep process is known to be alive."""
    from fbt_engine.errors import FBTError
    from fbt_engine.sweep import Sweep

    process_alive = folder.resolve() in {Path(p).resolve() for p in alive} or driver_pid(folder) is not None
    try:
        sweep = Sweep.read(folder)
    except FBTError as exc:
        cells = tuple(s for s in map(summarize, sorted(p for p in folder.iterdir() if (p / "events.jsonl").is_file()))
                      if s is not None) if folder.is_dir() else ()
        return SweepSummary(folder.name, folder, "running" if process_alive else "unreadable", "?", 0, len(cells),
                            tuple(_cell(c, folder.name) for c in cells), started=_started(folder),
                            problem=exc.message)
    cells: list[RunSummary] = []
    statuses: list[str] = []
    for cell in sweep.cells:
        run = summarize(folder / cell.name) if (folder / cell.name).is_dir() else None
        if run is not None and run.status == "crashed" and not run.events_path.is_file():
            run = replace(run, status="starting")  # folder made, no event yet (a failed start leaves no folder)
        statuses.append(run.status if run is not None else "pending")
        if run is not None:
            cells.append(_cell(run, folder.name))
    grid = grid_text(sweep.axes, sweep.seeds, getattr(sweep, "vary", []))
    return SweepSummary(folder.name, folder, sweep_status(statuses, process_alive), grid, statuses.count("completed"),
                        len(sweep.cells), tuple(cells), sweep.base.teacher.model or "", sweep.base.student.model or "",
                        _started(folder), manifest=sweep)


def _cell(run: RunSummary, sweep: str) -> RunSummary:
    return replace(run, sweep=sweep)


def _started(folder: Path) -> float | None:
    try:
        return (folder / MANIFEST).stat().st_mtime  # written once, as the sweep folder is made
    except OSError:
        return started_at(folder)


# --- the results table ------------------------------------------------------------------------

def mean_std(row: dict[str, Any], name: str, fmt: str = "{:.2f}") -> str:
    """`61.20 ± 1.30` (as the engine's table prints it); `-` with no completed seed."""
    mean, std = row.get(f"{name}_mean"), row.get(f"{name}_std")
    if mean is None:
        return "-"
    return fmt.format(mean) + ("" if std is None else " ± " + fmt.format(std))


def results_table(sweep: SweepSummary) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the sweep's table: one row per grid point, mean ± std over its completed
    seeds (`fbt_engine.sweep.aggregate`, read live from the cells' events)."""
    from fbt_engine.sweep import aggregate

    if sweep.manifest is None:
        return ["problem"], [[sweep.problem or "no manifest"]]
    _, groups = aggregate(sweep.manifest)
    keys = list(getattr(sweep.manifest, "columns", [a.key for a in sweep.manifest.axes]))
    gains = any(g.get("student_vs_scratch") is not None for g in groups)  # the engine's table shows it then too
    columns = [*keys, "seeds done", "student top-1", *(["vs scratch"] if gains else []), "fused top-1",
               "teacher top-1", "time"]
    rows = [[*(str(g.get(k, "")) for k in keys), f"{g['completed']}/{g['seeds']}", mean_std(g, "student_top1"),
             *([_signed(g.get("student_vs_scratch"))] if gains else []), mean_std(g, "fused_top1"),
             "-" if g.get("teacher_top1") is None else f"{g['teacher_top1']:.2f}", mean_std(g, "time_s", "{:.0f}s")]
            for g in groups]
    return columns, rows


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


# --- acting on a sweep folder -------------------------------------------------------------------

def delete_sweep(folder: Path) -> None:
    """Delete a sweep folder with every cell (refused while an engine writes one of its cells)."""
    if folder.is_symlink() or not (folder / MANIFEST).is_file():
        raise OSError(f"{folder} is not a sweep folder")
    locks = [_hold_folder(folder)]  # the sweep's own lock first: RunBusy while a process drives it
    try:
        for cell in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()):
            if (cell / "config.toml").is_file() or (cell / "events.jsonl").is_file():
                locks.append(_hold_folder(cell))  # RunBusy when a cell's engine holds it
        shutil.rmtree(folder)
    finally:
        for lock in locks:
            lock.release()


def driver_pid(folder: Path) -> int | None:
    """The pid the sweep process keeps in the folder's `.lock` while it runs, if it is alive."""
    from .engine_client import pid_alive
    try:
        pid = int((folder / ".lock").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def sweep_pid(sweep: SweepSummary) -> int | None:
    """The pid of the process driving a running sweep launched elsewhere (a shell, another TUI): the
    one in its `.lock`, else (a sweep from an older engine) the parent of a running cell if that
    parent is an fbt-engine sweep (Linux /proc); None when it cannot be told, so nothing else is
    ever signalled."""
    pid = driver_pid(sweep.path)
    if pid is not None:
        return pid
    for cell in sweep.running_cells:
        parent = _parent_pid(cell.pid)
        if parent is not None and _is_sweep_process(parent, sweep.path):
            return parent
    return None


def _parent_pid(pid: int | None) -> int | None:
    try:
        stat = Path(f"/proc/{int(pid or 0)}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state letter
    except (OSError, ValueError, IndexError):
        return None


def _is_sweep_process(pid: int, folder: Path) -> bool:
    """Whether `pid` runs `fbt-engine sweep|compare ...`, or `fbt-engine resume FOLDER` of this sweep
    (a cell resumed on its own, e.g. under torchrun, has a `resume CELL` parent: not the sweep)."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace").split("\0")
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    if not any("fbt-engine" in w or "fbt_engine" in w for w in words):
        return False
    if "sweep" in words or "compare" in words:
        return True
    i = words.index("resume") if "resume" in words else -1
    return 0 <= i < len(words) - 1 and (cwd / words[i + 1]).resolve() == folder.resolve()


def launch(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a sweep process detached from the TUI: its own session (Ctrl+C in this terminal and
    the TUI quitting do not reach it), output into `log_path` rather than a pipe that closes with
    the TUI. It survives the TUI; the Runs screen reads its progress from the folder."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

