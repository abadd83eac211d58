"""Runs screen: every run folder with its status and start date; open, overlay, compare, resume,
re-attach, rename, delete (asks first), and open a run's folder, log or config outside the TUI.

A sweep folder (`fbt-engine sweep`/`compare`) is one group row (grid, progress, status) with its
cells listed under it; enter on it shows its results table (mean ± std per grid point) above the
overlay of its cells' accuracy curves. Scanning reads every events.jsonl, so it runs in a thread
worker and answers with RunsScanned; while something runs, the screen rescans every POLL_S.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from rich.markup import escape
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Input, Static

from ..messages import OpenRun, RunsScanned
from ..run_state import replay
from ..runs import (RunBusy, RunSummary, check_new_name, compare_rows, delete_run, editor_command, format_date,
                    format_duration, opener_command, rename_run, scan_all, warning_badge)
from ..sweeps import SweepSummary, delete_sweep, results_table, sweep_pid
from ..widgets.charts import Chart, Series
from ..widgets.modals import ChoiceModal
from .base import FbtScreen

METRICS = ("accuracy", "loss")
MARK = "*"
COLUMNS = ("sel", "name", "started", "status", "pair", "method", "best top-1", "duration")
# Statuses whose folder no engine is writing: these may be renamed or deleted.
AT_REST = ("completed", "stopped", "failed", "crashed", "unreadable")
POLL_S = 2.0  # rescan period while a run or sweep on the list is running
Row = RunSummary | SweepSummary


def cells_of(rows: list[Row]) -> list[RunSummary]:
    """Runs, with each sweep replaced by its cells (the overlay draws runs, not sweeps)."""
    out: list[RunSummary] = []
    for row in rows:
        out += list(row.cells) if isinstance(row, SweepSummary) else [row]
    return list(dict.fromkeys(out))


def overlay_series(runs: list[RunSummary], metric: str) -> list[Series]:
    """One series per run: student top-1 per epoch, or total loss per step."""
    out: list[Series] = []
    for run in runs:
        try:
            state = replay(run.events_path)
        except OSError:  # deleted since the scan
            continue
        xs, ys = (state.accs.get("student") if metric == "accuracy" else state.losses.get("total")) or ([], [])
        out.append((f"{run.name} ({run.method})", xs, ys))
    return out


# --- opening things outside the TUI ---------------------------------------------------------------

def open_outside(screen: Screen, path: Path, prefer_editor: bool) -> None:
    """Open a run's file in `$EDITOR` (in this terminal, the TUI suspended meanwhile) or in the
    desktop's opener (file manager for a folder); with neither, show and copy the path."""
    app, path = screen.app, path.resolve()
    if not path.exists():
        app.notify(f"{path} does not exist (yet)", severity="warning", timeout=4, markup=False)
        return
    editor, opener = editor_command(path), opener_command(path)
    for cmd in ((editor, opener) if prefer_editor else (opener, editor)):
        if cmd is editor and cmd is not None and _in_terminal(screen, cmd):
            return
        if cmd is opener and cmd is not None:
            subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
            app.notify(f"opened {path}", timeout=3, markup=False)
            return
    app.copy_to_clipboard(str(path))
    app.notify(f"{path} (path copied; set $EDITOR, or run on a desktop, to open it from here)",
               timeout=8, markup=False)


def _in_terminal(screen: Screen, cmd: list[str]) -> bool:
    """Run an editor in this terminal with the TUI suspended; False where that is not possible."""
    from textual.app import SuspendNotSupported

    try:
        with screen.app.suspend():
            subprocess.run(cmd, check=False)
    except SuspendNotSupported:
        return False
    except OSError as exc:
        screen.app.notify(f"{cmd[0]}: {exc.strerror or exc}", severity="error", timeout=5, markup=False)
    screen.app.refresh()
    return True


class RenameModal(ModalScreen[str]):
    """Ask for a run's new folder name; says at once why a name cannot be used (escape: cancel)."""

    BINDINGS = [("escape", "dismiss('')", "Cancel")]
    DEFAULT_CSS = """
    RenameModal { align: center middle; }
    RenameModal > Vertical { width: 64; height: auto; border: thick $primary; background: $surface; padding: 1 2; }
    RenameModal #rename-why { color: $error; height: auto; }
    """

    def __init__(self, run: RunSummary) -> None:
        super().__init__()
        self.run = run

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"Rename run {self.run.name!r} to (enter to rename, escape to cancel):", markup=False)
            yield Input(self.run.name, id="rename-input")
            yield Static("", id="rename-why", markup=False)

    def on_input_changed(self, event: Input.Changed) -> None:
        name = event.value.strip()
        why = "" if name == self.run.name else check_new_name(self.run.path.parent, name)
        self.query_one("#rename-why", Static).update(why)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        name = event.value.strip()
        if name == self.run.name:
            self.dismiss("")
        elif not check_new_name(self.run.path.parent, name):
            self.dismiss(name)


def delete_modal(run: Row) -> ChoiceModal:
    if isinstance(run, SweepSummary):
        return ChoiceModal(f"Delete sweep {run.name!r}? Its whole folder goes: {run.path} ({run.total} cell runs, "
                           "shared teachers, results). This cannot be undone.",
                           [("delete", "Delete"), ("cancel", "Cancel")])
    cell = f" It is a cell of sweep {run.sweep!r}: resuming the sweep runs it again." if run.sweep else ""
    return ChoiceModal(f"Delete run {run.name!r}? Its whole folder goes: {run.path} (checkpoints, weights, "
                       f"log). This cannot be undone.{cell}", [("delete", "Delete"), ("cancel", "Cancel")])


class RunsScreen(FbtScreen):
    """History of runs under the runs folder."""

    MODE = "runs"
    BINDINGS = [("space", "mark", "Select"), ("enter", "open", "Open"), ("o", "overlay", "Overlay"),
                ("c", "compare", "Compare"), ("m", "metric", "Acc/loss"), ("u", "resume", "Resume"),
                ("a", "attach", "Attach"), ("r", "rename", "Rename"), ("d", "delete", "Delete"),
                Binding("f", "folder", "Folder", show=False), Binding("v", "log", "Log", show=False),
                Binding("p", "config", "Config", show=False), Binding("g", "rescan", "Refresh", show=False),
                Binding("s", "app.sweep_methods", "Sweep methods", show=False),
                Binding("x", "stop_sweep", "Stop sweep", show=False),
                Binding("e", "fold", "Fold/unfold a sweep", show=False)]
    HELP = (("enter (sweep row)", "the sweep's table (mean ± std per grid point) and its cells' accuracy curves"),
            ("space (sweep row)", "select or unselect all of the sweep's cells"),
            ("u / a / d (sweep row)", "resume the sweep in the background / watch its running cell / delete it"),
            ("x (sweep row)", "stop the sweep: its running cells checkpoint and stop, no new cell starts"))
    DEFAULT_CSS = """
    RunsScreen #compare { height: 1fr; }
    RunsScreen #sweep-table { height: auto; max-height: 11; border-top: solid $primary; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[Row] = []  # the table's rows, in order: runs, sweeps, each sweep's cells under it
        self.scanned: list[Row] = []  # every row of the last scan, the cells of collapsed sweeps too
        self.collapsed: set[str] = set()  # sweeps whose cells are hidden (e)
        self.marked: set[str] = set()  # row keys (a cell's is sweep/cell) of the selected runs
        self.metric = METRICS[0]
        self.shown_sweep: str | None = None  # the sweep whose table is open
        self._pending_select: str | None = None  # the row to highlight after the next scan

    def compose_body(self) -> ComposeResult:
        yield Static("", id="runs-dir")
        table: DataTable = DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        table.add_columns(*COLUMNS)
        yield table
        yield DataTable(id="sweep-table", zebra_stripes=True, cursor_type="none", classes="hidden")
        yield Chart("overlay: select runs with space, then press o", "epoch", id="overlay")
        yield DataTable(id="compare", zebra_stripes=True, cursor_type="none", classes="hidden")

    def on_mount(self) -> None:
        self._caption()
        self.action_rescan()
        self.set_interval(POLL_S, self._poll)

    def _poll(self) -> None:
        """Rescan while something on the list runs (or a sweep this TUI launched is still going)."""
        if self.is_current and (any(r.status == "running" for r in self.scanned) or self._live_sweeps()):
            self.action_rescan()

    def _live_sweeps(self) -> list[Path]:
        live = getattr(self.app, "live_sweeps", None)
        return live() if callable(live) else []

    def on_screen_resume(self) -> None:
        self.action_rescan()

    def _caption(self) -> None:
        marked = f", {len(self.marked)} selected" if self.marked else ""
        sweeps = [r for r in self.scanned if isinstance(r, SweepSummary)]
        runs = len(self.scanned) - len(sweeps) - sum(len(s.cells) for s in sweeps)
        grouped = f", {len(sweeps)} sweep{'s' if len(sweeps) != 1 else ''}" if sweeps else ""
        self.query_one("#runs-dir", Static).update(
            f"runs folder: {getattr(self.app, 'runs_dir', 'runs')}  ({runs} runs{grouped}{marked})")

    # --- scanning ---------------------------------------------------------------------------
    def action_rescan(self) -> None:
        self.scan(Path(getattr(self.app, "runs_dir", "runs")), self._live_sweeps())

    @work(thread=True, exclusive=True, group="scan")
    def scan(self, runs_dir: Path, alive: list[Path] | None = None) -> None:
        self.post_message(RunsScanned(scan_all(runs_dir, alive or [])))

    def on_runs_scanned(self, message: RunsScanned) -> None:
        self.scanned = message.runs
        self.runs = self._visible()
        self.marked &= {r.key for r in self.scanned if not isinstance(r, SweepSummary)}
        self._fill(self._pending_select)
        self._pending_select = None
        sweep = self._sweep(self.shown_sweep)
        if sweep is not None and sweep.status == "running":
            self.show_sweep(sweep)  # its table and curves follow the running cells

    def _sweep(self, name: str | None) -> SweepSummary | None:
        return next((r for r in self.scanned if isinstance(r, SweepSummary) and r.name == name), None)

    def _visible(self) -> list[Row]:
        return [r for r in self.scanned if isinstance(r, SweepSummary) or r.sweep not in self.collapsed]

    def action_fold(self) -> None:
        """Hide or show the cells of the highlighted sweep (or of the sweep the highlighted cell is in)."""
        row = self.current()
        sweep = row if isinstance(row, SweepSummary) else self._sweep(row.sweep) if row is not None else None
        if sweep is None:
            return
        self.collapsed ^= {sweep.name}
        self.runs = self._visible()
        self._fill(select=sweep.key)

    def _fill(self, select: str | None = None) -> None:
        table = self.query_one("#runs", DataTable)
        row, key = table.cursor_row, self._cursor_key()
        table.clear()
        for r in self.runs:
            table.add_row(*self._cells(r), key=r.key)
        keys = [r.key for r in self.runs]
        if select in keys or key in keys:
            row = keys.index(select if select in keys else key)  # the same row stays highlighted
        if self.runs:
            table.move_cursor(row=min(row, len(self.runs) - 1))
        self._caption()

    def _cursor_key(self) -> str | None:
        table = self.query_one("#runs", DataTable)
        if not table.row_count or table.cursor_row >= table.row_count:
            return None
        return str(table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value)

    def _cells(self, r: Row) -> list[object]:
        best = f"{r.best_top1:.2f}%" if r.best_top1 is not None else "-"
        status_text = f"{r.status} {r.completed}/{r.total}" if isinstance(r, SweepSummary) else r.status
        status = Text.from_markup(f"{escape(status_text)} {warning_badge(r.warnings)}") if r.warnings else status_text
        if isinstance(r, SweepSummary):
            fold = "▸" if r.name in self.collapsed else "▾"
            return [self._mark(r), Text(f"{fold} {r.name}", style="bold"), format_date(r.started), status, r.pair,
                    r.grid, best, format_duration(r.duration_s)]
        name = r.name
        if r.sweep:
            sweep = self._sweep(r.sweep)
            name = f"{'└' if sweep is not None and sweep.cells[-1].key == r.key else '├'} {r.name}"
        return [self._mark(r), name, format_date(r.started), status, r.pair, r.method or "?", best,
                format_duration(r.duration_s)]

    def _mark(self, r: Row) -> str:
        if isinstance(r, SweepSummary):
            return MARK if r.cells and all(c.key in self.marked for c in r.cells) else ""
        return MARK if r.key in self.marked else ""

    # --- the highlighted run ------------------------------------------------------------------
    def current(self) -> Row | None:
        table = self.query_one("#runs", DataTable)
        if not table.row_count:
            return None
        return self.runs[table.cursor_row] if table.cursor_row < len(self.runs) else None

    def action_mark(self) -> None:
        """Select or unselect the highlighted run; on a sweep, all of its cells at once."""
        run = self.current()
        if run is None:
            return
        if isinstance(run, SweepSummary):
            keys = {c.key for c in run.cells}
            self.marked = self.marked - keys if keys and keys <= self.marked else self.marked | keys
        else:
            self.marked ^= {run.key}
        table = self.query_one("#runs", DataTable)
        for row in self.runs:
            if row.key in table.rows:
                table.update_cell(row.key, table.ordered_columns[0].key, self._mark(row))
        self._caption()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "runs":
            self.action_open()

    def action_open(self) -> None:
        run = self.current()
        if isinstance(run, SweepSummary):
            self.show_sweep(run)
        elif run is not None:
            self.post_message(OpenRun(run, "attach" if run.status == "running" else "replay"))

    def action_resume(self) -> None:
        run = self.current()
        if run is None:
            return
        if isinstance(run, SweepSummary):
            self.resume_sweep(run)
            return
        if run.status not in ("stopped", "crashed"):
            self.notify(f"only a stopped or crashed run can be resumed ({run.name} is {run.status})",
                        severity="warning", timeout=3)
            return
        self.post_message(OpenRun(run, "resume"))

    def resume_sweep(self, sweep: SweepSummary) -> None:
        """`fbt-engine resume <sweep folder>` in the background: completed cells are kept, stopped ones
        resumed, the rest started."""
        if sweep.status not in ("stopped", "failed"):
            why = "every cell completed" if sweep.status == "completed" else sweep.problem or sweep.status
            self.notify(f"sweep {sweep.name} cannot be resumed: {why}", severity="warning", timeout=4, markup=False)
            return
        launch = getattr(self.app, "launch_sweep", None)
        if launch is not None and launch(sweep.path, ["resume", str(sweep.path)]):
            self.action_rescan()

    def action_stop_sweep(self) -> None:
        """SIGINT to the sweep process, which forwards it to its running cells (each checkpoints and
        stops) and starts no new cell; `u` continues it later."""
        sweep = self.current()
        if not isinstance(sweep, SweepSummary):
            self.notify("x stops a sweep (highlight its row); a run stops on the run screen (enter, then x)",
                        severity="warning", timeout=4)
            return
        if sweep.status != "running":
            self.notify(f"sweep {sweep.name} is not running ({sweep.status})", severity="warning", timeout=3,
                        markup=False)
            return
        proc = getattr(self.app, "sweep_procs", {}).get(sweep.path)
        try:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # launched here, in its own session: only the sweep
            elif (pid := sweep_pid(sweep)) is not None:
                os.kill(pid, signal.SIGINT)
            else:
                self.notify(f"cannot tell which process drives sweep {sweep.name}: stop it where it was started "
                            "(ctrl+c), or stop its running cells (enter, then x)", severity="warning", timeout=6,
                            markup=False)
                return
        except ProcessLookupError:
            self.action_rescan()
            return
        self.notify(f"asked sweep {sweep.name} to stop: its running cells checkpoint and stop (u resumes it)",
                    timeout=4, markup=False)

    def action_attach(self) -> None:
        run = self.current()
        if run is None:
            return
        if isinstance(run, SweepSummary):
            running = run.running_cells
            if not running:
                self.notify(f"no cell of sweep {run.name} is running ({run.status}); enter shows its table",
                            severity="warning", timeout=3, markup=False)
                return
            run = running[0]  # a sweep has no stream of its own: watch its running cell
        if run.status != "running":
            self.notify(f"{run.name} is not running ({run.status}); enter replays it", severity="warning", timeout=3)
            return
        self.post_message(OpenRun(run, "attach"))

    # --- folder, log, config outside the TUI ----------------------------------------------------
    def action_folder(self) -> None:
        if (run := self.current()) is not None:
            open_outside(self, run.path, prefer_editor=False)

    def action_log(self) -> None:
        if (run := self.current()) is not None:
            open_outside(self, run.path / ("sweep.log" if isinstance(run, SweepSummary) else "log.txt"),
                         prefer_editor=True)

    def action_config(self) -> None:
        if (run := self.current()) is not None:
            open_outside(self, run.path / ("sweep.json" if isinstance(run, SweepSummary) else "config.toml"),
                         prefer_editor=True)

    # --- rename and delete -----------------------------------------------------------------------
    def _at_rest(self, run: Row | None, verb: str) -> bool:
        if run is None:
            return False
        if run.status not in AT_REST:
            what = "sweep" if isinstance(run, SweepSummary) else "run"
            self.notify(f"{what} {run.name} is {run.status}: stop it before you {verb} it", severity="warning",
                        timeout=4, markup=False)
            return False
        return True

    def action_delete(self) -> None:
        run = self.current()
        if not self._at_rest(run, "delete"):
            return
        assert run is not None

        def answered(choice: str | None) -> None:
            if choice == "delete":
                self.remove_folder(run)

        self.app.push_screen(delete_modal(run), answered)

    @work(thread=True, exclusive=True, group="delete")
    def remove_folder(self, run: Row) -> None:
        try:
            delete_sweep(run.path) if isinstance(run, SweepSummary) else delete_run(run.path)
        except (RunBusy, OSError) as exc:
            self.app.call_from_thread(self.notify, f"not deleted: {exc}", severity="error", timeout=6, markup=False)
            return
        self.app.call_from_thread(self._deleted, run)

    def _deleted(self, run: Row) -> None:
        self.notify(f"deleted {run.path}", timeout=3, markup=False)
        if isinstance(run, SweepSummary):
            self.marked -= {c.key for c in run.cells}
            if self.shown_sweep == run.name:
                self.shown_sweep = None
                self._show_bottom("overlay")
        self.marked.discard(run.key)
        self.action_rescan()

    def action_rename(self) -> None:
        run = self.current()
        if isinstance(run, SweepSummary) or (run is not None and run.sweep):
            what = f"sweep {run.name}" if isinstance(run, SweepSummary) else f"{run.name}, a cell of sweep {run.sweep},"
            self.notify(f"{what} cannot be renamed: sweep.json names its cells and their folders", severity="warning",
                        timeout=4, markup=False)
            return
        if not self._at_rest(run, "rename"):
            return
        assert run is not None

        def answered(name: str | None) -> None:
            if name:
                self._rename(run, name)

        self.app.push_screen(RenameModal(run), answered)

    def _rename(self, run: RunSummary, name: str) -> None:
        try:
            target = rename_run(run.path, name)
        except (RunBusy, ValueError, OSError) as exc:
            self.notify(f"not renamed: {exc}", severity="error", timeout=6, markup=False)
            return
        session = getattr(self.app, "session", None)
        if session is not None and not session.live and session.state.run_dir == run.path:
            session.state.run_dir, session.state.name = target, name  # the replay on the run screen follows
        if run.name in self.marked:
            self.marked = (self.marked - {run.name}) | {name}
        self.notify(f"renamed {run.name} -> {name}", timeout=3, markup=False)
        self.runs = [r for r in self.runs if r.key != run.key]
        self.scanned = [r for r in self.scanned if r.key != run.key]
        self._pending_select = name
        self.action_rescan()

    # --- overlay, comparison, sweep table ----------------------------------------------------
    def chosen(self) -> list[RunSummary]:
        """The selected runs, or the highlighted one (a sweep: its cells) when none is selected."""
        chosen = [r for r in self.scanned if not isinstance(r, SweepSummary) and r.key in self.marked]
        if not chosen and (current := self.current()) is not None:
            chosen = cells_of([current])
        return chosen

    def _show_bottom(self, which: str) -> None:
        self.query_one("#overlay", Chart).set_class(which not in ("overlay", "sweep"), "hidden")
        self.query_one("#sweep-table", DataTable).set_class(which != "sweep", "hidden")
        self.query_one("#compare", DataTable).set_class(which != "compare", "hidden")
        if which != "sweep":
            self.shown_sweep = None

    def action_metric(self) -> None:
        self.metric = METRICS[(METRICS.index(self.metric) + 1) % len(METRICS)]
        sweep = self._sweep(self.shown_sweep)
        if sweep is not None:
            self.show_sweep(sweep)
        else:
            self.action_overlay()

    def _chart_labels(self) -> None:
        chart = self.query_one("#overlay", Chart)
        chart.title_text = f"{self.metric} per {'epoch' if self.metric == 'accuracy' else 'step'}"
        chart.xlabel_text = "epoch" if self.metric == "accuracy" else "step"

    def action_overlay(self) -> None:
        chosen = self.chosen()
        self._chart_labels()
        self._show_bottom("overlay")
        self.build_overlay(chosen, self.metric)

    @work(thread=True, exclusive=True, group="overlay")
    def build_overlay(self, chosen: list[RunSummary], metric: str) -> None:
        # Replaying long events files takes a while: read them off the UI thread.
        series = overlay_series(chosen, metric)
        self.app.call_from_thread(self.query_one("#overlay", Chart).draw, series)

    def show_sweep(self, sweep: SweepSummary) -> None:
        """The sweep's results table (mean ± std per grid point) above the overlay of its cells."""
        if sweep.problem:
            self.notify(f"sweep {sweep.name}: {sweep.problem}", severity="error", timeout=6, markup=False)
        self._chart_labels()
        self._show_bottom("sweep")
        self.shown_sweep = sweep.name
        self.build_sweep(sweep)
        self.build_overlay(list(sweep.cells), self.metric)

    @work(thread=True, exclusive=True, group="sweep")
    def build_sweep(self, sweep: SweepSummary) -> None:
        columns, rows = results_table(sweep)  # reads every cell's events
        self.app.call_from_thread(self._fill_sweep, sweep, columns, rows)

    def _fill_sweep(self, sweep: SweepSummary, columns: list[str], rows: list[list[str]]) -> None:
        table = self.query_one("#sweep-table", DataTable)
        table.clear(columns=True)
        table.add_columns(*columns)
        for row in rows:
            table.add_row(*row)
        table.border_title = f"{sweep.name}: {sweep.grid}, {sweep.progress} ({sweep.status})"

    def action_compare(self) -> None:
        current = self.current()
        if isinstance(current, SweepSummary) and not self.marked:
            self.show_sweep(current)  # a sweep's comparison is its table
            return
        chosen = self.chosen()
        if not chosen:
            return
        self._show_bottom("compare")
        self.build_compare(chosen)

    @work(thread=True, exclusive=True, group="compare")
    def build_compare(self, chosen: list[RunSummary]) -> None:
        rows = compare_rows(chosen)  # reads every config.toml
        self.app.call_from_thread(self._fill_compare, [r.name for r in chosen], rows)

    def _fill_compare(self, names: list[str], rows: list[tuple[str, list[str]]]) -> None:
        table = self.query_one("#compare", DataTable)
        table.clear(columns=True)
        table.add_columns("", *names)
        for key, values in rows:
            table.add_row(key, *values)
