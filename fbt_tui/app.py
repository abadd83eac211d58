"""The FBT Workbench Textual app: five screens (modes), one watched run, the chosen pair.

Attributes down: `teacher`, `student` and `run_label` are reactive attributes every screen's
header watches, and `session` is what the run screen draws. Messages up: screens ask for things
(PairChosen, StartRun, OpenRun) and the app does them. Nothing here imports torch or timm.
"""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from typing import Callable

from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen

from .engine_client import RunSession
from .messages import OpenRun, PairChosen, RunEnded, StartRun
from .run_state import RunState, replay
from .runs import RunSummary
from .screens.catalog import CatalogScreen
from .widgets.modals import quit_modal

STOP_WAIT_S = 30.0


def _lazy(module: str, name: str) -> Callable[[], Screen]:
    """A screen factory that imports its module on first use: only the catalog is needed for
    the first frame, and the chart/text-area widgets of the others cost start-up time."""
    def make() -> Screen:
        return getattr(importlib.import_module(module, __package__), name)()
    return make


class FbtApp(App[None]):
    """`fbt-tui`: catalog -> pair preview -> configure -> run monitor -> runs history."""

    CSS_PATH = "app.tcss"
    TITLE = "FBT Workbench"
    MODES = {"catalog": CatalogScreen, "preview": _lazy(".screens.preview", "PreviewScreen"),
             "configure": _lazy(".screens.configure", "ConfigureScreen"),
             "run": _lazy(".screens.run", "RunScreen"), "runs": _lazy(".screens.runs", "RunsScreen")}
    BINDINGS = [
        Binding("1", "switch_mode('catalog')", "Catalog", show=False),
        Binding("2", "switch_mode('preview')", "Preview", show=False),
        Binding("3", "switch_mode('configure')", "Configure", show=False),
        Binding("4", "switch_mode('run')", "Run", show=False),
        Binding("5", "switch_mode('runs')", "Runs", show=False),
        # F-keys work even while a text field has focus (digits would be typed into it).
        *(Binding(f"f{i}", f"switch_mode('{m}')", show=False, priority=True)
          for i, m in enumerate(("catalog", "preview", "configure", "run", "runs"), start=1)),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]

    teacher: reactive[str] = reactive("")
    student: reactive[str] = reactive("")
    run_label: reactive[str] = reactive("")

    def __init__(self, runs_dir: str | Path = "runs", preset: str | Path | None = None,
                 sysmon: bool = True, start_mode: str = "catalog") -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.preset = Path(preset) if preset else None
        self.sysmon = sysmon
        self.start_mode = start_mode
        self.session: RunSession | None = None

    def on_mount(self) -> None:
        self.switch_mode(self.start_mode)
        self.set_interval(0.5, self._update_run_label)

    def _update_run_label(self) -> None:
        s = self.session
        self.run_label = f"{s.state.name} ({s.state.status})" if s is not None else ""

    # --- messages up ------------------------------------------------------------------------
    def on_pair_chosen(self, message: PairChosen) -> None:
        setattr(self, message.role, message.name)

    def on_start_run(self, message: StartRun) -> None:
        args = ["run", str(message.preset), "--jsonl", "--name", message.name, "--runs-dir", str(self.runs_dir)]
        self.start_session(RunState(name=message.name, run_dir=self.runs_dir / message.name), args)

    def on_open_run(self, message: OpenRun) -> None:
        run = message.run
        if not run.path.is_dir():
            self._folder_gone(run.path)
            return
        try:
            if message.how == "replay":
                self.watch_session(RunSession(replay(run.events_path)))
            elif message.how == "resume":
                state = replay(run.events_path) if run.events_path.is_file() else RunState(run.name, run.path)
                self.start_session(state, ["resume", str(run.path), "--jsonl"])
                return
            else:
                self._attach(run)
        except OSError:  # deleted between the check and the read
            self._folder_gone(run.path)
            return
        self.switch_mode("run")

    def _attach(self, run: RunSummary) -> None:
        session = RunSession(RunState(name=run.name, run_dir=run.path), self._session_ended)
        if self.watch_session(session):
            self.run_worker(session.tail(run.events_path, run.pid), group="run", exit_on_error=False)

    def _folder_gone(self, path: Path) -> None:
        self.notify(f"the run folder {path} is gone (deleted?); press g to refresh the list",
                    severity="error", timeout=5, markup=False)

    def on_run_ended(self, message: RunEnded) -> None:
        self._update_run_label()
        severity = "information" if message.status in ("completed", "stopped") else "error"
        self.notify(f"run {message.name}: {message.status}", severity=severity, timeout=4, markup=False)

    # --- sessions -----------------------------------------------------------------------------
    def watch_session(self, session: RunSession) -> bool:
        """Make `session` the one the run screen shows (refused while another run is live)."""
        if self.session is not None and self.session.live:
            self.notify(f"run {self.session.state.name} is still live: stop it or wait first",
                        severity="error", timeout=4, markup=False)
            return False
        self.session = session
        self._update_run_label()
        return True

    def start_session(self, state: RunState, args: list[str]) -> None:
        """Spawn an engine run (run or resume) and show it on the run screen."""
        session = RunSession(state, self._session_ended)
        if not self.watch_session(session):
            return
        self.run_worker(session.spawn(args), group="run", exit_on_error=False)
        self.switch_mode("run")

    def _session_ended(self, session: RunSession) -> None:
        self.post_message(RunEnded(session.state.name, session.state.status))

    # --- quitting -----------------------------------------------------------------------------
    async def action_quit(self) -> None:
        """Quit; with a live run, ask whether to stop it or leave it running."""
        session = self.session
        if session is None or not session.live:
            self.exit()
            return

        def answered(choice: str | None) -> None:
            if choice == "leave":
                session.detach()
                self.exit()
            elif choice == "stop":
                session.stop()
                self.notify("stopping the run, then quitting...", timeout=STOP_WAIT_S)
                self.run_worker(self._exit_when_ended(session), group="quit")

        self.push_screen(quit_modal(session.state.name), answered)

    async def _exit_when_ended(self, session: RunSession) -> None:
        waited = 0.0
        while session.live and waited < STOP_WAIT_S:
            await asyncio.sleep(0.1)
            waited += 0.1
        self.exit()
