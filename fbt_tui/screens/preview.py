"""Pair preview: both models' 4-stage views, the fusion chain, parameters, mult-adds, torchinfo tree.

Each change of order, split, input size or depth asks `fbt-engine fuse ... --json` again in an
exclusive worker: a newer request cancels (and kills) the older one, so the screen never shows a
stale answer and never blocks.
"""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Input, Label, Select, Static, TextArea

from ..engine_client import EngineError, run_json
from ..messages import EngineFailed, PreviewLoaded
from .base import FbtScreen
from .catalog import format_params

ORDERS = ("auto", "student-first", "teacher-first")
PARAM_ROWS = (("teacher", "teacher"), ("student", "student"), ("fused total", "fused_total"),
              ("shared with teacher", "shared_with_teacher"),
              ("shared with student", "shared_with_student"), ("new learnable", "new_learnable"))
DEBOUNCE_S = 0.4

Key = tuple[str, str, int, str, int, int]


def fuse_args(key: Key) -> list[str]:
    """The engine arguments for one preview request."""
    teacher, student, img, order, split, depth = key
    return ["fuse", teacher, student, "--json", "--img-size", str(img), "--order", order,
            "--split", str(split), "--depth", str(depth)]


def format_shape(shape: Any) -> str:
    return "x".join(str(s) for s in shape) if isinstance(shape, list) else str(shape)


def format_count(n: Any) -> str:
    """Exact count with thousands separators, plus the short form."""
    return f"{n:,} ({format_params(n)})" if isinstance(n, (int, float)) else "?"


class PreviewScreen(FbtScreen):
    """Shows what the engine will build for the chosen pair."""

    MODE = "preview"
    BINDINGS = [("r", "refresh_preview", "Refresh"), ("plus", "depth(1)", "Depth+"),
                ("minus", "depth(-1)", "Depth-")]

    def __init__(self) -> None:
        super().__init__()
        self.shown_key: Key | None = None
        self.pending_key: Key | None = None
        self._debounce = None

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="preview-bar"):
            yield Label("order")
            yield Select([(o, o) for o in ORDERS], value="auto", allow_blank=False, id="order")
            yield Label("split")
            yield Select([(str(i), i) for i in (1, 2, 3)], value=3, allow_blank=False, id="split")
            yield Label("input size")
            yield Input("224", type="integer", id="img-size")
            yield Label("summary depth")
            yield Select([(str(i), i) for i in range(1, 7)], value=3, allow_blank=False, id="depth")
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
        for attr in ("teacher", "student"):
            self.watch(self.app, attr, lambda *_: self.schedule_request(0), init=False)
        self.schedule_request(0)

    def on_screen_resume(self) -> None:
        self.schedule_request(0)

    # --- requests ---------------------------------------------------------------------------
    def current_key(self) -> Key | None:
        """The request the controls describe, or None while the pair is incomplete."""
        teacher, student = getattr(self.app, "teacher", ""), getattr(self.app, "student", "")
        if not (teacher and student):
            return None
        try:
            img = int(self.query_one("#img-size", Input).value)
        except ValueError:
            return None
        return (teacher, student, img, str(self.query_one("#order", Select).value),
                int(self.query_one("#split", Select).value), int(self.query_one("#depth", Select).value))

    @on(Select.Changed)
    def _select_changed(self) -> None:
        self.schedule_request(0)

    @on(Input.Changed, "#img-size")
    def _img_changed(self) -> None:
        # Typing "384" passes through 3 and 38: wait until the user pauses.
        self.schedule_request(DEBOUNCE_S)

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
            self._message("Pick a teacher (t) and a student (s) on the catalog screen (1)." if
                          not (getattr(self.app, "teacher", "") and getattr(self.app, "student", ""))
                          else "Input size must be a whole number.")
            return
        if not force and key in (self.shown_key, self.pending_key):
            return
        self.pending_key = key
        self.query_one("#preview-body").loading = True
        self._message(f"asking the engine to fuse {key[0]} and {key[1]}...")
        self.fetch(key)

    @work(exclusive=True, group="preview")
    async def fetch(self, key: Key) -> None:
        try:
            data = await run_json(fuse_args(key))
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
