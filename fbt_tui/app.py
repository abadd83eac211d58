"""The FBT Workbench Textual app: five screens (modes), one app state, one watched run.

Attributes down: `state` (fbt_tui/state.py: the working preset, so the pair, input size, model
kwargs and the loaded file) and `run_label` are reactive attributes that the header, Preview and
Configure watch; `session` is what the run screen draws. Messages up: screens ask for things
(PairChosen, PresetEdited, LoadPreset, StartRun, OpenRun) and the app does them through the pure
transitions of `state.py`. Nothing here imports torch or timm.
"""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from typing import Any, Callable

from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import ModalScreen, Screen

from fbt_engine.errors import ConfigError

from .commands import FbtCommands
from .engine_client import RunSession
from .service import EngineService
from .messages import CatalogLoaded, LoadPreset, OpenRun, PairChosen, PresetEdited, PresetSaved, RunEnded, StartRun
from .run_state import RunState, replay, same_ranks
from .runs import RunSummary
from .screens.catalog import CatalogScreen
from .state import AppState, choose, edit, failed_load, keep_pair, loaded_state, pair_conflict, reset, saved_state
from .widgets.modals import ChoiceModal, quit_modal

STOP_WAIT_S = 30.0
SCREENS = {"catalog": (".screens.catalog", "CatalogScreen"), "preview": (".screens.preview", "PreviewScreen"),
           "configure": (".screens.configure", "ConfigureScreen"), "run": (".screens.run", "RunScreen"),
           "runs": (".screens.runs", "RunsScreen")}


def screen_class(mode: str) -> type[Screen]:
    """The screen class of a mode (imports its module on first use)."""
    module, name = SCREENS[mode]
    return getattr(importlib.import_module(module, __package__), name)


def _lazy(mode: str) -> Callable[[], Screen]:
    """A screen factory that imports its module on first use: only the catalog is needed for
    the first frame, and the chart/text-area widgets of the others cost start-up time."""
    return lambda: screen_class(mode)()


def config_error_text(err: ConfigError) -> str:
    return err.message + (f"\nhint: {err.hint}" if err.hint else "")


def read_preset(path: Path) -> tuple[dict[str, Any], str]:
    """A preset's data and text; ConfigError (naming the file) when it cannot be read."""
    from fbt_engine.config import read_toml  # torch-free, but not needed for the first frame

    data = read_toml(path)
    return data, path.read_bytes().decode("utf-8-sig")


def initial_state(preset: str | Path | None) -> AppState:
    if not preset:
        return AppState()
    try:
        data, text = read_preset(Path(preset))
    except ConfigError as err:
        return failed_load(AppState(), config_error_text(err))
    return loaded_state(Path(preset), data, text)


class FbtApp(App[None]):
    """`fbt-tui`: catalog -> pair preview -> configure -> run monitor -> runs history."""

    CSS_PATH = "app.tcss"
    TITLE = "FBT Workbench"
    COMMANDS = App.COMMANDS | {FbtCommands}
    MODES = {"catalog": CatalogScreen, **{m: _lazy(m) for m in SCREENS if m != "catalog"}}
    # Digits switch screens unless a text field has focus (then they are typed: escape leaves the
    # field); F1-F5 switch from anywhere and are never typed. Keys that switch screens or move
    # focus are priority bindings, gated by check_action: they then act in the order the keys
    # came, before the keys typed after them are routed (see screens/base.py).
    BINDINGS = [
        *(Binding(str(i), f"go('{m}')", f"{m.capitalize()} screen", show=False, priority=True)
          for i, m in enumerate(SCREENS, 1)),
        *(Binding(f"f{i}", f"switch_mode('{m}')", f"{m.capitalize()} screen", show=False, priority=True)
          for i, m in enumerate(SCREENS, 1)),
        Binding("question_mark", "help", "Help", show=False),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]

    state: reactive[AppState] = reactive(AppState())
    run_label: reactive[str] = reactive("")

    def __init__(self, runs_dir: str | Path = "runs", preset: str | Path | None = None,
                 sysmon: bool = True, start_mode: str = "catalog") -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.sysmon = sysmon
        self.start_mode = start_mode
        self.session: RunSession | None = None
        self.service = EngineService()  # one warm `fbt-engine serve` per session, for previews
        self.model_names: list[str] = []  # the catalog's names, for the command palette
        self.sweep_procs: dict[Path, Any] = {}  # sweep folder -> the sweep process this TUI launched
        self.set_reactive(FbtApp.state, initial_state(preset))  # the header shows the pair at once

    def on_mount(self) -> None:
        self.run_worker(self.service.start(), group="service", exit_on_error=False)  # torch warms meanwhile
        self.switch_mode(self.start_mode)
        self.set_interval(0.5, self._update_run_label)
        if self.state.problem:
            self.notify(self.state.problem, severity="error", timeout=8, markup=False)

    async def on_unmount(self) -> None:
        await self.service.close()

    def _update_run_label(self) -> None:
        s = self.session
        self.run_label = f"{s.state.name} ({s.state.status})" if s is not None else ""

    def check_action(self, action: str, parameters: tuple[Any, ...]) -> bool | None:
        if action in ("switch_mode", "go", "help") and isinstance(self.screen, ModalScreen):
            return False  # a dialog or the help is open: answer it first
        if action in ("go", "help"):
            from .screens.base import is_text_field

            return not is_text_field(self.screen.focused)  # a digit or ? in a text field is typed
        return True

    def action_go(self, mode: str) -> None:
        """A digit key: switch screens (only while no text field has focus)."""
        self.switch_mode(mode)

    # --- the one state --------------------------------------------------------------------------
    @property
    def teacher(self) -> str:
        return self.state.teacher

    @teacher.setter
    def teacher(self, name: str) -> None:
        self.choose("teacher", name)

    @property
    def student(self) -> str:
        return self.state.student

    @student.setter
    def student(self, name: str) -> None:
        self.choose("student", name)

    def set_state(self, new: AppState, announce: bool = False) -> None:
        """Replace the state; with `announce`, say what a model change cleared."""
        old, self.state = self.state, new
        if announce:
            for flag in new.flags:
                if flag not in old.flags:
                    self.notify(flag + " (see Configure)", severity="warning", timeout=6, markup=False)

    def choose(self, role: str, name: str) -> None:
        self.set_state(choose(self.state, role, name), announce=True)

    def on_catalog_loaded(self, message: CatalogLoaded) -> None:  # bubbled up from the catalog
        self.model_names = [str(m.get("name")) for m in message.models if isinstance(m, dict) and m.get("name")]

    def on_pair_chosen(self, message: PairChosen) -> None:
        self.choose(message.role, message.name)

    def on_preset_edited(self, message: PresetEdited) -> None:
        if message.remove:
            self.set_state(reset(self.state, message.key))
        else:
            self.set_state(edit(self.state, message.key, message.value))

    def on_preset_saved(self, message: PresetSaved) -> None:
        self.set_state(saved_state(self.state, message.path, message.text))

    def on_load_preset(self, message: LoadPreset) -> None:
        self.load_preset(message.path)

    def load_preset(self, path: Path) -> None:
        """Read a preset into the state; ask first when it would replace a pair picked by hand."""
        try:
            data, text = read_preset(path)
        except ConfigError as err:
            self.set_state(failed_load(self.state, config_error_text(err)))
            self.notify(config_error_text(err), severity="error", timeout=6, markup=False)
            return
        roles = pair_conflict(self.state, data)
        if not roles:
            self._loaded(path, data, text, [])
            return
        theirs = " and ".join(f"{r} {data.get(r, {}).get('model') or '(none)'}" for r in roles)
        mine = " and ".join(f"{r} {self.state.model(r)}" for r in roles)

        def answered(choice: str | None) -> None:
            if choice in ("preset", "mine"):
                self._loaded(path, data, text, roles if choice == "mine" else [])

        self.push_screen(ChoiceModal(
            f"{path} trains {theirs}, but you picked {mine}. Use the preset's pair, or keep yours "
            "(kwargs and checkpoints the preset set for its models are then cleared)?",
            [("preset", "Use the preset's pair"), ("mine", "Keep my pair"), ("cancel", "Cancel")],
            danger=False), answered)

    def _loaded(self, path: Path, data: dict[str, Any], text: str, keep: list[str]) -> None:
        old = self.state
        self.set_state(keep_pair(loaded_state(path, data, text), old, keep), announce=True)
        s = self.state
        self.notify(f"loaded {path}: {s.teacher or '-'} -> {s.student or '-'}, img {s.value('data.img_size')}",
                    timeout=4, markup=False)

    # --- actions for keys and the command palette ------------------------------------------------
    def action_help(self) -> None:
        from .screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def _on_screen(self, mode: str, action: str, *args: Any) -> None:
        """Switch to `mode` and run one of its screen's actions there."""
        await self.switch_mode(mode)
        await self.run_action(f"screen.{action}({', '.join(repr(a) for a in args)})")

    async def action_save_preset(self) -> None:
        await self._on_screen("configure", "save")

    async def action_start_run(self) -> None:
        await self._on_screen("configure", "start")

    async def action_compare_runs(self) -> None:
        await self._on_screen("runs", "overlay")

    async def action_open_run_folder(self) -> None:
        await self._on_screen("run", "folder")

    async def action_focus_load(self) -> None:
        await self._on_screen("configure", "focus_load")

    async def action_sweep_methods(self) -> None:
        """Ask which methods, seeds and jobs, then launch `fbt-engine compare` on the working preset."""
        from fbt_engine.methods import names

        from .widgets.modals import SweepModal

        try:
            cfg = self.state.config()
        except ConfigError as err:
            self.notify(f"the preset is not valid yet: {config_error_text(err)}", severity="error", timeout=6,
                        markup=False)
            return

        def answered(choice: dict | None) -> None:
            if choice:
                self.start_sweep(cfg, choice["methods"], choice["seeds"], choice["jobs"])

        self.push_screen(SweepModal(self.state_pair(), list(names()), str(cfg.seed)), answered)

    def state_pair(self) -> str:
        return f"{self.teacher or '-'} -> {self.student or '-'}"

    def action_stop_run(self) -> None:
        if self.session is not None and self.session.stop():
            self.notify("asked the run to stop (it finishes the step and writes a checkpoint)", timeout=3)
        else:
            self.notify("no live run to stop", severity="warning", timeout=2)

    # --- runs -------------------------------------------------------------------------------------
    def on_start_run(self, message: StartRun) -> None:
        args = ["run", str(message.preset), "--jsonl", "--name", message.name, "--runs-dir", str(self.runs_dir)]
        args += ["--gpus", str(message.gpus)] if message.gpus > 1 else []  # the engine starts torchrun
        self.start_session(RunState(name=message.name, run_dir=self.runs_dir / message.name), args)

    # --- sweeps ----------------------------------------------------------------------------------
    def start_sweep(self, cfg: Any, methods: list[str], seeds: str, jobs: int) -> None:
        """Write the resolved preset under runs/.presets/ and launch `fbt-engine compare` on it."""
        from fbt_engine.config import dumps

        from .screens.configure import unique_name, write_atomic

        name = unique_name(self.runs_dir, f"{cfg.name}-compare")
        preset = self.runs_dir / ".presets" / f"{name}.toml"
        try:
            write_atomic(preset, dumps(cfg))  # fully resolved: the sweep repeats exactly
        except OSError as err:
            self.notify(f"could not write {preset}: {err}", severity="error", timeout=6, markup=False)
            return
        self.launch_sweep(self.runs_dir / name, ["compare", str(preset), "--methods", ",".join(methods), "--seeds",
                                                 seeds, "--jobs", str(jobs), "--name", name, "--runs-dir",
                                                 str(self.runs_dir)])
        self.switch_mode("runs")

    def launch_sweep(self, folder: Path, args: list[str]) -> bool:
        """Start a sweep (or its resume) in the background; it outlives the TUI. Its output goes to
        runs/.presets/<sweep>.log (the engine keeps its own sweep.log in the sweep folder)."""
        from .engine_client import engine_command
        from .sweeps import launch

        if (old := self.sweep_procs.get(folder)) is not None and old.poll() is None:
            self.notify(f"sweep {folder.name} is already running", severity="warning", timeout=4, markup=False)
            return False
        log = self.runs_dir / ".presets" / f"{folder.name}.log"
        try:
            proc = launch(engine_command() + args, log)
        except OSError as exc:
            self.notify(f"could not start the engine: {exc.strerror or exc}", severity="error", timeout=6,
                        markup=False)
            return False
        self.sweep_procs[folder] = proc
        self.notify(f"sweep {folder.name} started in the background: {args[0]} (log {log})", timeout=5,
                    markup=False)
        self.run_worker(self._watch_sweep(folder, proc, log), group="sweeps", exit_on_error=False)
        return True

    def live_sweeps(self) -> list[Path]:
        """Sweep folders whose sweep process this TUI launched and which is still going."""
        return [folder for folder, proc in self.sweep_procs.items() if proc.poll() is None]

    async def _watch_sweep(self, folder: Path, proc: Any, log: Path) -> None:
        from .engine_client import parse_error

        while (code := proc.poll()) is None:
            await asyncio.sleep(0.5)
        if code == 0:
            self.notify(f"sweep {folder.name}: completed", timeout=5, markup=False)
            return
        if code == 130:
            self.notify(f"sweep {folder.name}: stopped (u on Runs resumes it)", timeout=5, markup=False)
            return
        try:
            tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError:
            tail = ""
        err = parse_error(tail, code)
        self.notify(f"sweep {folder.name}: {err.message}" + (f"\nhint: {err.hint}" if err.hint else ""),
                    severity="error", timeout=10, markup=False)

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
                self.start_session(state, ["resume", str(run.path), "--jsonl", *same_ranks(state)])
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
