"""Runs screen: every run folder with its status and start date; open, overlay, compare, resume,
re-attach, rename, delete (asks first), and open a run's folder, log or config outside the TUI.

Scanning reads every events.jsonl, so it runs in a thread worker and answers with RunsScanned.
"""

from __future__ import annotations

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
                    format_duration, opener_command, rename_run, scan_runs, warning_badge)
from ..widgets.charts import Chart, Series
from ..widgets.modals import ChoiceModal
from .base import FbtScreen

METRICS = ("accuracy", "loss")
MARK = "*"
COLUMNS = ("sel", "name", "started", "status", "pair", "method", "best top-1", "duration")
# Statuses whose folder no engine is writing: these may be renamed or deleted.
AT_REST = ("completed", "stopped", "failed", "crashed")


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


def delete_modal(run: RunSummary) -> ChoiceModal:
    return ChoiceModal(f"Delete run {run.name!r}? Its whole folder goes: {run.path} (checkpoints, weights, "
                       "log). This cannot be undone.", [("delete", "Delete"), ("cancel", "Cancel")])


class RunsScreen(FbtScreen):
    """History of runs under the runs folder."""

    MODE = "runs"
    BINDINGS = [("space", "mark", "Select"), ("enter", "open", "Open"), ("o", "overlay", "Overlay"),
                ("c", "compare", "Compare"), ("m", "metric", "Acc/loss"), ("u", "resume", "Resume"),
                ("a", "attach", "Attach"), ("r", "rename", "Rename"), ("d", "delete", "Delete"),
                Binding("f", "folder", "Folder", show=False), Binding("v", "log", "Log", show=False),
                Binding("p", "config", "Config", show=False), Binding("g", "rescan", "Refresh", show=False)]
    DEFAULT_CSS = """
    RunsScreen #compare { height: 1fr; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[RunSummary] = []
        self.marked: set[str] = set()
        self.metric = METRICS[0]
        self._pending_select: str | None = None  # the row to highlight after the next scan

    def compose_body(self) -> ComposeResult:
        yield Static("", id="runs-dir")
        table: DataTable = DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        table.add_columns(*COLUMNS)
        yield table
        yield Chart("overlay: select runs with space, then press o", "epoch", id="overlay")
        yield DataTable(id="compare", zebra_stripes=True, cursor_type="none", classes="hidden")

    def on_mount(self) -> None:
        self._caption()
        self.action_rescan()

    def on_screen_resume(self) -> None:
        self.action_rescan()

    def _caption(self) -> None:
        marked = f", {len(self.marked)} selected" if self.marked else ""
        self.query_one("#runs-dir", Static).update(
            f"runs folder: {getattr(self.app, 'runs_dir', 'runs')}  ({len(self.runs)} runs{marked})")

    # --- scanning ---------------------------------------------------------------------------
    def action_rescan(self) -> None:
        self.scan(Path(getattr(self.app, "runs_dir", "runs")))

    @work(thread=True, exclusive=True, group="scan")
    def scan(self, runs_dir: Path) -> None:
        self.post_message(RunsScanned(scan_runs(runs_dir)))

    def on_runs_scanned(self, message: RunsScanned) -> None:
        self.runs = message.runs
        self.marked &= {r.name for r in self.runs}
        self._fill(self._pending_select)
        self._pending_select = None

    def _fill(self, select: str | None = None) -> None:
        table = self.query_one("#runs", DataTable)
        row = table.cursor_row
        table.clear()
        for r in self.runs:
            best = f"{r.best_top1:.2f}%" if r.best_top1 is not None else "-"
            status = Text.from_markup(f"{escape(r.status)} {warning_badge(r.warnings)}") if r.warnings else r.status
            table.add_row(MARK if r.name in self.marked else "", r.name, format_date(r.started), status, r.pair,
                          r.method or "?", best, format_duration(r.duration_s), key=r.name)
        names = [r.name for r in self.runs]
        if select in names:
            row = names.index(select)
        if self.runs:
            table.move_cursor(row=min(row, len(self.runs) - 1))
        self._caption()

    # --- the highlighted run ------------------------------------------------------------------
    def current(self) -> RunSummary | None:
        table = self.query_one("#runs", DataTable)
        if not table.row_count:
            return None
        return self.runs[table.cursor_row] if table.cursor_row < len(self.runs) else None

    def action_mark(self) -> None:
        run = self.current()
        if run is None:
            return
        self.marked ^= {run.name}
        table = self.query_one("#runs", DataTable)
        table.update_cell(run.name, table.ordered_columns[0].key, MARK if run.name in self.marked else "")
        self._caption()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "runs":
            self.action_open()

    def action_open(self) -> None:
        run = self.current()
        if run is not None:
            self.post_message(OpenRun(run, "attach" if run.status == "running" else "replay"))

    def action_resume(self) -> None:
        run = self.current()
        if run is None:
            return
        if run.status not in ("stopped", "crashed"):
            self.notify(f"only a stopped or crashed run can be resumed ({run.name} is {run.status})",
                        severity="warning", timeout=3)
            return
        self.post_message(OpenRun(run, "resume"))

    def action_attach(self) -> None:
        run = self.current()
        if run is None:
            return
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
            open_outside(self, run.path / "log.txt", prefer_editor=True)

    def action_config(self) -> None:
        if (run := self.current()) is not None:
            open_outside(self, run.path / "config.toml", prefer_editor=True)

    # --- rename and delete -----------------------------------------------------------------------
    def _at_rest(self, run: RunSummary | None, verb: str) -> bool:
        if run is None:
            return False
        if run.status not in AT_REST:
            self.notify(f"{run.name} is {run.status}: stop it before you {verb} it", severity="warning", timeout=4)
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
    def remove_folder(self, run: RunSummary) -> None:
        try:
            delete_run(run.path)
        except (RunBusy, OSError) as exc:
            self.app.call_from_thread(self.notify, f"not deleted: {exc}", severity="error", timeout=6, markup=False)
            return
        self.app.call_from_thread(self._deleted, run)

    def _deleted(self, run: RunSummary) -> None:
        self.notify(f"deleted {run.path}", timeout=3, markup=False)
        self.marked.discard(run.name)
        self.action_rescan()

    def action_rename(self) -> None:
        run = self.current()
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
        self.runs = [r for r in self.runs if r.name != run.name]
        self._pending_select = name
        self.action_rescan()

    # --- overlay and comparison --------------------------------------------------------------
    def chosen(self) -> list[RunSummary]:
        """The selected runs, or the highlighted one when none is selected."""
        chosen = [r for r in self.runs if r.name in self.marked]
        if not chosen and (current := self.current()) is not None:
            chosen = [current]
        return chosen

    def _show_bottom(self, which: str) -> None:
        self.query_one("#overlay", Chart).set_class(which != "overlay", "hidden")
        self.query_one("#compare", DataTable).set_class(which != "compare", "hidden")

    def action_metric(self) -> None:
        self.metric = METRICS[(METRICS.index(self.metric) + 1) % len(METRICS)]
        self.action_overlay()

    def action_overlay(self) -> None:
        chosen = self.chosen()
        chart = self.query_one("#overlay", Chart)
        chart.title_text = f"{self.metric} per {'epoch' if self.metric == 'accuracy' else 'step'}"
        chart.xlabel_text = "epoch" if self.metric == "accuracy" else "step"
        self._show_bottom("overlay")
        self.build_overlay(chosen, self.metric)

    @work(thread=True, exclusive=True, group="overlay")
    def build_overlay(self, chosen: list[RunSummary], metric: str) -> None:
        # Replaying long events files takes a while: read them off the UI thread.
        series = overlay_series(chosen, metric)
        self.app.call_from_thread(self.query_one("#overlay", Chart).draw, series)

    def action_compare(self) -> None:
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
