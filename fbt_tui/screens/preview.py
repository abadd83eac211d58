"""Pair preview: both models' 4-stage views, the fusion chain, parameters, mult-adds, torchinfo tree.

It shows exactly the model a run will train: the pair, input size, model kwargs, fusion order,
split and mixer all come from the app state (the working preset). Order, split and input size are
edited here and go back into that state (Configure shows the same values); only the summary depth
is this screen's own. Each change asks the engine again in an exclusive worker: a newer request
cancels (and kills) the older one, so the screen never shows a stale answer and never blocks.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Input, Label, Select, Static, TextArea

from ..engine_client import EngineError
from ..service import Superseded
from ..messages import EngineFailed, PresetEdited, PreviewLoaded
from ..state import AppState, toml_text
from .base import FbtScreen
from .catalog import format_params

ORDERS = ("auto", "student-first", "teacher-first")
PARAM_ROWS = (("teacher", "teacher"), ("student", "student"), ("fused total", "fused_total"),
              ("shared with teacher", "shared_with_teacher"),
              ("shared with student", "shared_with_student"), ("new learnable", "new_learnable"))
DEBOUNCE_S = 0.4



class Key(NamedTuple):
    """One preview request: what a run would build (kwargs as sorted JSON, so the key hashes)."""

    teacher: str
    student: str
    img_size: int
    order: str
    split: int
    depth: int
    mixer: str = "auto"
    teacher_kwargs: str = "{}"
    student_kwargs: str = "{}"

    def fields(self) -> dict[str, Any]:
        """The request's fields other than the pair, as plain values (kwargs as dicts)."""
        return {"img_size": self.img_size, "order": self.order, "split": self.split, "depth": self.depth,
                "mixer": self.mixer, "teacher_kwargs": json.loads(self.teacher_kwargs),
                "student_kwargs": json.loads(self.student_kwargs)}


def state_key(state: AppState, depth: int) -> Key | None:
    """The preview of what the state would train, or None while the pair or input size is missing."""
    img, split = state.img_size, state.value("fusion.split")
    if not (state.teacher and state.student) or img is None or not isinstance(split, int):
        return None
    return Key(state.teacher, state.student, img, str(state.value("fusion.order")), split, depth,
               str(state.value("fusion.mixer")), json.dumps(state.kwargs("teacher"), sort_keys=True),
               json.dumps(state.kwargs("student"), sort_keys=True))


def fuse_args(key: Key) -> list[str]:
    """The engine arguments for one preview request."""
    args = ["fuse", key.teacher, key.student, "--json", "--img-size", str(key.img_size), "--order", key.order,
            "--split", str(key.split), "--depth", str(key.depth)]
    if key.mixer != "auto":
        args += ["--mixer", key.mixer]
    for role, kwargs in (("teacher", key.teacher_kwargs), ("student", key.student_kwargs)):
        if kwargs != "{}":
            args += [f"--{role}-kwargs", kwargs]
    return args


async def ask_engine(app: Any, key: Key) -> Any:
    """The warm engine service's answer to one preview request (`fbt-engine serve`, started with the
    app); a newer request supersedes an older one there."""
    return await app.service.fuse(key.teacher, key.student, **key.fields())


def format_shape(shape: Any) -> str:
    return "x".join(str(s) for s in shape) if isinstance(shape, list) else str(shape)


def format_count(n: Any) -> str:
    """Exact count with thousands separators, plus the short form."""
    return f"{n:,} ({format_params(n)})" if isinstance(n, (int, float)) else "?"


class PreviewScreen(FbtScreen):
    """Shows what the engine will build for the chosen pair."""

    MODE = "preview"
    AUTO_FOCUS = HOME = "#summary"  # read-only: digits and letters reach the bindings
    BINDINGS = [("r", "refresh_preview", "Refresh"), ("plus", "depth(1)", "Depth+"),
                ("minus", "depth(-1)", "Depth-"), Binding("question_mark", "app.help", "Help"),
                Binding("enter", "commit_size", "In the input size: apply it now", show=False, priority=True)]
    HELP = (("tab", "to the order, split, input size and depth controls"),)

    def __init__(self) -> None:
        super().__init__()
        self.shown_key: Key | None = None
        self.pending_key: Key | None = None
        self._debounce = None
        self._img_timer: Any = None

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="preview-bar"):
            yield Label("order")
            yield Select([(o, o) for o in ORDERS], value="auto", allow_blank=False, id="order")
            yield Label("split")
            yield Select([(str(i), i) for i in (1, 2, 3)], value=3, allow_blank=False, id="split")
            yield Label("input size")
            yield Input("32", type="integer", id="img-size")
            yield Label("summary depth")
            yield Select([(str(i), i) for i in range(1, 7)], value=3, allow_blank=False, id="depth")
        yield Static("", id="preview-model")
        yield Static("", id="preview-message")
        with Horizontal(id="preview-body"):
            with VerticalScroll(id="preview-left"):
                yield Static("", id="chain")
                with Horizontal(id="stage-tables"):
                    yield DataTable(id="teacher-stages", cursor_type="none")
                    yield DataTable(id="student-stages", cursor_type="none")
                yield DataTable(id="params", cursor_type="none")
                yield Static("", id="mult-adds")
            with Vertical(id="preview-right"):
                yield Label("torchinfo summary of the fused model", classes="section")
                yield TextArea("", read_only=True, soft_wrap=False, id="summary")

    def on_mount(self) -> None:
        for table_id in ("#teacher-stages", "#student-stages"):
            self.query_one(table_id, DataTable).add_columns("stage", "layout", "output shape")
        self.query_one("#params", DataTable).add_columns("parameters", "count")
        self.watch(self.app, "state", self._state_changed, init=False)
        self._show_state()
        self.schedule_request(0)

    def on_screen_resume(self) -> None:
        self.schedule_request(0)

    # --- the app state -> controls ---------------------------------------------------------
    @property
    def state(self) -> AppState:
        return getattr(self.app, "state", None) or AppState()

    def _state_changed(self, *_: object) -> None:
        self._show_state()
        if self.app.screen is self:  # off screen, the request waits for the next visit
            self.schedule_request(0)

    def _show_state(self) -> None:
        """Put the state's order, split and input size in the controls (not into a field being
        typed in) and say what the preview is built from."""
        state = self.state
        with self.prevent(Select.Changed, Input.Changed):
            order, split = str(state.value("fusion.order")), state.value("fusion.split")
            if order in ORDERS:
                self.query_one("#order", Select).value = order
            if split in (1, 2, 3):
                self.query_one("#split", Select).value = split
            img = self.query_one("#img-size", Input)
            if self.focused is not img:
                img.value = str(state.value("data.img_size"))
        self.query_one("#preview-model", Static).update(self._model_line(state))

    @staticmethod
    def _model_line(state: AppState) -> str:
        parts = [f"img {state.value('data.img_size')}"]
        for role in ("teacher", "student"):
            if state.kwargs(role):
                parts.append(f"{role} kwargs {toml_text(state.kwargs(role))}")
        if state.value("fusion.mixer") != "auto":
            parts.append(f"mixer {state.value('fusion.mixer')}")
        source = f"preset {state.path}" if state.path else "engine defaults, no preset loaded"
        return f"[dim]as a run trains it: {escape(', '.join(parts))}  |  {escape(source)}  |  edit in Configure[/dim]"

    # --- controls -> the app state -----------------------------------------------------------
    def current_key(self) -> Key | None:
        """The request the state describes (depth is this screen's), or None while incomplete."""
        return state_key(self.state, int(self.query_one("#depth", Select).value))

    @on(Select.Changed, "#order")
    @on(Select.Changed, "#split")
    def _fusion_changed(self, event: Select.Changed) -> None:
        key = "fusion.order" if event.select.id == "order" else "fusion.split"
        if event.value != self.state.value(key):
            self.post_message(PresetEdited(key, event.value))

    @on(Select.Changed, "#depth")
    def _depth_changed(self) -> None:
        self.schedule_request(0)

    @on(Input.Changed, "#img-size")
    def _img_changed(self) -> None:
        # Typing "384" passes through 3 and 38: wait until the user pauses.
        if self._img_timer is not None:
            self._img_timer.stop()
        self._img_timer = self.set_timer(DEBOUNCE_S, self.commit_size)

    def commit_size(self) -> None:
        """Put the typed input size into the state (an invalid one is named, not applied)."""
        if self._img_timer is not None:
            self._img_timer.stop()
            self._img_timer = None
        text = self.query_one("#img-size", Input).value.strip()
        try:
            size = int(text)
        except ValueError:
            self._message(f"input size {text!r} is not a whole number: type one from 8 to 2048", error=True)
            return
        if size != self.state.value("data.img_size"):
            self.post_message(PresetEdited("data.img_size", size))

    def check_action(self, action: str, parameters: tuple[Any, ...]) -> bool | None:
        if action == "commit_size":
            return self.focused is self.query_one("#img-size", Input)
        return super().check_action(action, parameters)

    def action_commit_size(self) -> None:
        """enter in the input size: apply it once the digits typed before are in, leave the field."""
        self.query_one("#img-size", Input).call_later(self.commit_size)
        self.go_home()

    def schedule_request(self, delay: float) -> None:
        if self._debounce is not None:
            self._debounce.stop()
        self._debounce = self.set_timer(delay, self.request) if delay else None
        if not delay:
            self.request()

    def request(self, force: bool = False) -> None:
        """Ask the engine for the preview the controls describe, unless it is already shown."""
        key = self.current_key()
        if key is None:
            state = self.state
            if not (state.teacher and state.student):
                self._message("Pick a teacher (ctrl+t) and a student (ctrl+s) on the catalog screen (1), "
                              "or load a preset in Configure (3).")
            else:
                self._message(f"input size {toml_text(state.value('data.img_size'))} is not a whole number "
                              "from 8 to 2048: fix it here or in Configure (data.img_size)", error=True)
            return
        if not force and key in (self.shown_key, self.pending_key):
            return
        self.pending_key = key
        self.query_one("#preview-body").loading = True
        self._message(f"asking the engine to fuse {key.teacher} and {key.student} at {key.img_size} px...")
        self.fetch(key)

    @work(exclusive=True, group="preview")
    async def fetch(self, key: Key) -> None:
        try:
            data = await ask_engine(self.app, key)
        except Superseded:
            return  # a newer request replaced it: its answer is the one to show
        except EngineError as err:
            self.post_message(EngineFailed("preview", err.message, err.hint))
            self.pending_key = None
            return
        self.post_message(PreviewLoaded(key, data if isinstance(data, dict) else {}))

    def action_refresh_preview(self) -> None:
        self.request(force=True)

    def action_depth(self, delta: int) -> None:
        select = self.query_one("#depth", Select)
        select.value = max(1, min(6, int(select.value) + delta))

    # --- results ----------------------------------------------------------------------------
    def on_preview_loaded(self, message: PreviewLoaded) -> None:
        if message.key != self.current_key():
            return  # an answer to a question nobody asks any more
        self.pending_key = None
        self.shown_key = message.key
        self.query_one("#preview-body").loading = False
        self._message("")
        self.show(message.data)

    def on_engine_failed(self, message: EngineFailed) -> None:
        self.query_one("#preview-body").loading = False
        self.shown_key = None
        hint = f"\nhint: {message.hint}" if message.hint else ""
        self._message(f"error: {message.message}{hint}", error=True)
        self.clear_panels()

    def clear_panels(self) -> None:
        """No answer for another pair stays next to an error."""
        self.query_one("#chain", Static).update("")
        for table_id in ("#teacher-stages", "#student-stages", "#params"):
            self.query_one(table_id, DataTable).clear()
        self.query_one("#mult-adds", Static).update("")
        self.query_one("#summary", TextArea).load_text("")

    def show(self, data: dict[str, Any]) -> None:
        """Fill every panel from one `fuse --json` answer."""
        plan = data.get("plan") or {}
        self.query_one("#chain", Static).update(
            f"[b]fusion chain[/b]\n{plan.get('chain', '?')}\n[dim]{plan.get('reason', '')}[/dim]")
        for role in ("teacher", "student"):
            self._fill_stages(role, data.get(role) or {})
        params = data.get("params") or {}
        table = self.query_one("#params", DataTable)
        table.clear()
        for label, key in PARAM_ROWS:
            table.add_row(label, format_count(params.get(key)))
        mult_adds = data.get("mult_adds")
        self.query_one("#mult-adds", Static).update(
            f"mult-adds: {mult_adds / 1e9:.2f} G" if isinstance(mult_adds, (int, float)) else "mult-adds: ?")
        self.query_one("#summary", TextArea).load_text(str(data.get("summary", "")))

    def _fill_stages(self, role: str, model: dict[str, Any]) -> None:
        table = self.query_one(f"#{role}-stages", DataTable)
        table.clear()
        table.border_title = f"{role}: {model.get('name', '?')} ({model.get('kind', '?')})"
        for stage in model.get("stages") or []:
            table.add_row(stage.get("name", ""), stage.get("layout", ""), format_shape(stage.get("shape")))

    def _message(self, text: str, error: bool = False) -> None:
        widget = self.query_one("#preview-message", Static)
        widget.update(text)
        widget.set_class(error, "error")
