"""Runs screen: every run folder with its status; open, overlay, resume, re-attach.

Scanning reads every events.jsonl, so it runs in a thread worker and answers with RunsScanned.
"""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from ..messages import OpenRun, RunsScanned
from ..run_state import replay
from ..runs import RunSummary, format_duration, scan_runs
from ..widgets.charts import Chart, Series
from .base import FbtScreen

METRICS = ("accuracy", "loss")
MARK = "*"


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


class RunsScreen(FbtScreen):
    """History of runs under the runs folder."""

    MODE = "runs"
    BINDINGS = [("space", "mark", "Select"), ("enter", "open", "Open"), ("o", "overlay", "Overlay"),
                ("m", "metric", "Acc/loss"), ("u", "resume", "Resume"), ("a", "attach", "Attach"),
                ("g", "rescan", "Refresh")]

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[RunSummary] = []
        self.marked: set[str] = set()
        self.metric = METRICS[0]

    def compose_body(self) -> ComposeResult:
        yield Static("", id="runs-dir")
        table: DataTable = DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        table.add_columns("sel", "name", "status", "pair", "method", "best top-1", "duration")
        yield table
        yield Chart("overlay: select runs with space, then press o", "epoch", id="overlay")

    def on_mount(self) -> None:
        self.query_one("#runs-dir", Static).update(f"runs folder: {getattr(self.app, 'runs_dir', 'runs')}")
        self.action_rescan()

    def on_screen_resume(self) -> None:
        self.action_rescan()

    # --- scanning ---------------------------------------------------------------------------
    def action_rescan(self) -> None:
        self.scan(Path(getattr(self.app, "runs_dir", "runs")))

    @work(thread=True, exclusive=True, group="scan")
    def scan(self, runs_dir: Path) -> None:
        self.post_message(RunsScanned(scan_runs(runs_dir)))

    def on_runs_scanned(self, message: RunsScanned) -> None:
        self.runs = message.runs
        self.marked &= {r.name for r in self.runs}
        self._fill()

    def _fill(self) -> None:
        table = self.query_one("#runs", DataTable)
        row = table.cursor_row
        table.clear()
        for r in self.runs:
            best = f"{r.best_top1:.2f}%" if r.best_top1 is not None else "-"
            table.add_row(MARK if r.name in self.marked else "", r.name, r.status, r.pair,
                          r.method or "?", best, format_duration(r.duration_s), key=r.name)
        if self.runs:
            table.move_cursor(row=min(row, len(self.runs) - 1))

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

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_open(self) -> None:
        run = self.current()
        if run is not None:
            self.post_message(OpenRun(run, "attach" if run.status == "running" else "replay"))

    def action_resume(self) -> None:
        run = self.current()
        if run is None:
            return
        if run.status != "stopped":
            self.notify(f"only a stopped run can be resumed ({run.name} is {run.status})",
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

    # --- overlay ------------------------------------------------------------------------------
    def action_metric(self) -> None:
        self.metric = METRICS[(METRICS.index(self.metric) + 1) % len(METRICS)]
        self.action_overlay()

    def action_overlay(self) -> None:
        chosen = [r for r in self.runs if r.name in self.marked]
        if not chosen:
            current = self.current()
            chosen = [current] if current is not None else []
        chart = self.query_one("#overlay", Chart)
        chart.title_text = f"{self.metric}: " + ", ".join(r.name for r in chosen)
        chart.xlabel_text = "epoch" if self.metric == "accuracy" else "step"
        self.build_overlay(chosen, self.metric)

    @work(thread=True, exclusive=True, group="overlay")
    def build_overlay(self, chosen: list[RunSummary], metric: str) -> None:
        # Replaying long events files takes a while: read them off the UI thread.
        series = overlay_series(chosen, metric)
        self.app.call_from_thread(self.query_one("#overlay", Chart).draw, series)
