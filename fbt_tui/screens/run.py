"""Run screen: live status, loss and accuracy charts, engine log; stop, kill, open folder/log/config.

The engine client folds events into a RunState as they arrive; this screen looks at it on a timer
(REDRAW_S) and redraws only when its version moved. However fast the engine talks, the screen
repaints a few times per second and keys are answered between repaints.
"""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Log, ProgressBar, Static

from ..engine_client import RunSession
from ..run_state import RunState
from ..run_state import warning_text
from ..runs import format_duration, latest_signal, warning_badge
from ..widgets.charts import AccChart, Chart, Series
from ..widgets.modals import kill_modal
from ..widgets.sysmon import SysMon
from .base import FbtScreen
from .runs import open_outside

REDRAW_S = 0.25
STATUS_STYLE = {"running": "bold green", "completed": "bold cyan", "stopped": "bold yellow",
                "failed": "bold red", "crashed": "bold red", "lost": "bold red", "starting": "bold"}


def fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def rank_rates(state: RunState) -> str:
    """` (ranks 0:617 1:555)`: each rank's img/s under torchrun (a slow rank holds the others back)."""
    rates = state.rank_samples_per_s
    if len(rates) < 2:
        return ""
    return " (ranks " + " ".join(f"{r}:{v:.0f}" for r, v in enumerate(rates)) + ")"


def status_text(state: RunState) -> str:
    """The three status lines above the charts (Rich markup; text from the run is escaped)."""
    style = STATUS_STYLE.get(state.status, "bold")
    phase = f"  phase {escape(state.phase)}" if state.phase else ""
    took = ""
    if state.final is not None and format_duration(state.final.get("duration_s")):
        took = f"  took {format_duration(state.final.get('duration_s'))}"
    badge = warning_badge(state.warning_count, latest_signal(state))
    ranks = f" x{state.world_size} ranks" if state.world_size > 1 else ""
    line1 = (f"[b]{escape(state.name or '?')}[/b]  [{style}]{state.status}[/]{phase}  "
             f"{escape(state.method)}  {escape(state.device)}{ranks}{took}" + (f"  {badge}" if badge else ""))
    line2 = escape(f"{state.teacher} -> {state.student}" if state.teacher else state.student)
    epochs = f"{state.epoch}/{state.epochs}" if state.epochs else str(state.epoch)
    done, total = state.progress
    eta = format_duration(state.eta_s) if state.status == "running" else ""
    line3 = (f"epoch {epochs}  step {done}/{total or '?'}  ETA {eta or '-'}  "
             f"img/s {fmt(state.samples_per_s, '.0f')}{rank_rates(state)}  lr {fmt(state.lr, '.1e')}  "
             f"loss {fmt(state.loss, '.4f')}  best {fmt(state.best_top1, '.2f', '%')}")
    return f"{line1}\n{line2}\n{line3}"


def warnings_tooltip(state: RunState, newest: int = 5) -> str | None:
    """The health warnings behind the badge, newest last (None without any)."""
    if not state.warning_count:
        return None
    shown = list(state.warnings)[-newest:]
    more = state.warning_count - len(shown)
    head = [f"{state.warning_count} health warnings ({more} older not shown):"] if more else []
    return "\n".join(head + [warning_text(ev) for ev in shown])


def error_text(state: RunState) -> str:
    """The error box: what went wrong, then the hint or the tail of stderr (Rich markup escaped)."""
    text = f"{state.status}: {state.error}"
    if state.hint:
        text += f"\n{state.hint}" if state.hint.startswith("stderr:") else f"\nhint: {state.hint}"
    return escape(text)


def loss_series(state: RunState) -> list[Series]:
    return [(term, xs, ys) for term, (xs, ys) in state.losses.items()]


def acc_series(state: RunState) -> list[Series]:
    return [(name, xs, ys) for name, (xs, ys) in state.accs.items()]


class RunScreen(FbtScreen):
    """Watches `app.session` (a spawned run, an attached run, or a replay)."""

    MODE = "run"
    BINDINGS = [("x", "stop", "Stop"), ("k", "kill", "Kill"), ("f", "folder", "Folder"),
                ("e", "toggle_ema", "EMA"), ("l", "toggle_log", "Log scale"), ("t", "series", "Series"),
                Binding("z", "reset_zoom", "Unzoom", show=False),
                Binding("v", "log", "Log file", show=False), Binding("p", "config", "Config", show=False)]
    DEFAULT_CSS = """
    RunScreen #run-progress.-ended Bar > .bar--bar { color: $warning; }
    RunScreen #run-progress.-failed Bar > .bar--bar { color: $error; }
    """

    def __init__(self) -> None:
        super().__init__()
        self._session: RunSession | None = None
        self._drawn = -1
        self._log_seq = 0
        self._tip: str | None = None

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="run-top"):
            yield Static("No run yet: start one from Configure (3) or open one from Runs (5).", id="run-info")
            with Vertical(id="run-side"):
                yield ProgressBar(total=None, show_eta=False, id="run-progress")
                yield SysMon(getattr(self.app, "sysmon", True), id="sysmon")
        yield Static("", id="run-error", classes="error hidden")
        with Horizontal(id="charts"):
            yield Chart("loss terms", "step", id="loss-chart")
            yield AccChart(id="acc-chart")
        yield Log(id="run-log", max_lines=2000)

    def on_mount(self) -> None:
        self.set_interval(REDRAW_S, self.redraw)
        self.redraw()

    @property
    def state(self) -> RunState | None:
        return self._session.state if self._session is not None else None

    def redraw(self, force: bool = False) -> None:
        """Repaint from the session's state if it changed since the last repaint."""
        session = getattr(self.app, "session", None)
        if session is not self._session:
            self._session, self._drawn, self._log_seq = session, -1, 0
            self.query_one("#run-log", Log).clear()
        state = self.state
        if state is None or (state.version == self._drawn and not force):
            return
        self._drawn = state.version
        # Fixed-size text: no layout pass (a layout repaints the whole screen, charts included).
        info = self.query_one("#run-info", Static)
        info.update(status_text(state), layout=False)
        if (tip := warnings_tooltip(state)) != self._tip:
            self._tip = tip  # the full messages behind the badge (the log pane has them too); plain text
            info.tooltip = Text(tip) if tip else None
        self._draw_progress(state)
        self._draw_error(state)
        self.query_one("#loss-chart", Chart).draw(loss_series(state))
        self.query_one("#acc-chart", AccChart).draw(acc_series(state))
        self._draw_log(state)

    def _draw_progress(self, state: RunState) -> None:
        done, total = state.progress
        if not total and state.is_final:
            total = max(done, 1)  # an unknown total animates forever: a run that ended must not
        bar = self.query_one("#run-progress", ProgressBar)
        bar.update(total=total or None, progress=done)
        # A run that ended short of its total keeps its bar where it stopped, in the status's colour.
        bar.set_class(state.status in ("failed", "crashed", "lost"), "-failed")
        bar.set_class(state.status == "stopped", "-ended")

    def _draw_error(self, state: RunState) -> None:
        box = self.query_one("#run-error", Static)
        show = state.status in ("failed", "crashed", "lost") and bool(state.error)
        box.set_class(not show, "hidden")
        if show and (text := error_text(state)) != getattr(box, "shown_text", None):
            box.shown_text = text
            box.update(text)

    def _draw_log(self, state: RunState) -> None:
        new = min(state.log_seq - self._log_seq, len(state.log))
        if new > 0:
            self.query_one("#run-log", Log).write_lines(list(state.log)[-new:])
        self._log_seq = state.log_seq

    # --- keys -----------------------------------------------------------------------------
    def action_stop(self) -> None:
        if self._session is not None and self._session.stop():
            self.notify("asked the run to stop (it finishes the step and writes a checkpoint)", timeout=3)
        else:
            self.notify("no live run to stop", severity="warning", timeout=2)

    def action_kill(self) -> None:
        session = self._session
        if session is None or not session.live:
            self.notify("no live run to kill", severity="warning", timeout=2)
            return

        def answered(choice: str | None) -> None:
            if choice == "kill" and session.kill():
                self.notify("killed", severity="warning", timeout=2)

        self.app.push_screen(kill_modal(session.state.name), answered)

    def _run_dir(self):  # type: ignore[no-untyped-def]
        state = self.state
        if state is None or state.run_dir is None:
            self.notify("no run folder yet", severity="warning", timeout=2)
            return None
        return state.run_dir.resolve()

    def action_folder(self) -> None:
        """Open the run folder in the file manager (else $EDITOR, else copy its path)."""
        if (folder := self._run_dir()) is not None:
            self.query_one("#run-log", Log).write_line(f"run folder: {folder}")
            open_outside(self, folder, prefer_editor=False)

    def action_log(self) -> None:
        if (folder := self._run_dir()) is not None:
            open_outside(self, folder / "log.txt", prefer_editor=True)

    def action_config(self) -> None:
        if (folder := self._run_dir()) is not None:
            open_outside(self, folder / "config.toml", prefer_editor=True)

    def action_reset_zoom(self) -> None:
        """Undo the mouse's zoom and pan on both charts."""
        for chart in self.query(Chart):
            chart.reset_zoom()

    def action_series(self) -> None:
        """Focus the loss chart's legend: space/enter there hides or shows a series."""
        self.query_one("#loss-chart", Chart).legend.focus()

    def action_toggle_ema(self) -> None:
        chart = self.query_one("#loss-chart", Chart)
        chart.smooth = not chart.smooth
        self.redraw(force=True)

    def action_toggle_log(self) -> None:
        chart = self.query_one("#loss-chart", Chart)
        chart.log_scale = not chart.log_scale
        self.redraw(force=True)

    def on_screen_resume(self) -> None:
        self.redraw(force=True)
