"""Catalog screen: every timm architecture the engine knows, searchable, filterable, sortable.

The list comes from `fbt-engine models --json` in a worker (the engine imports timm, we never
do); a loading indicator covers the table meanwhile. `t`/`s` pick teacher and student.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Checkbox, DataTable, Input, Select, Static

from ..engine_client import EngineError, engine_command, parse_error, run_json
from ..messages import CatalogLoaded, EngineFailed, PairChosen
from .base import FbtScreen

KINDS = ("all", "cnn", "msa", "mlp", "hybrid", "unknown")
COLUMNS = (("name", "name"), ("family", "family"), ("kind", "kind"), ("params", "params"),
           ("input", "input_size"), ("pretrained", "pretrained_tags"), ("fusable", "fusable"))


def format_params(n: Any) -> str:
    """11689512 -> `11.7M`; unknown -> `?`."""
    if not isinstance(n, (int, float)):
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.0f}K"


def model_row(m: dict[str, Any]) -> tuple[str, ...]:
    """One table row for one catalog entry."""
    size = m.get("input_size") or []
    tags = m.get("pretrained_tags") or []
    return (str(m.get("name", "")), str(m.get("family", "")), str(m.get("kind", "")),
            format_params(m.get("params")), "x".join(str(s) for s in size[1:]) or "?",
            ", ".join(tags[:2]) + (f" +{len(tags) - 2}" if len(tags) > 2 else ""),
            "yes" if m.get("fusable") else "no")


async def run_json_with_progress(args: list[str], report: Callable[[str], None]) -> Any:
    """`run_json`, but each `counting i/n` line the engine prints on stderr reaches `report` as it
    comes (the engine counts, at low priority, the models its shipped table does not know)."""
    argv = engine_command() + list(args)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=1 << 20)
    except FileNotFoundError:
        return await run_json(args)  # raises run_json's own "not found" error and hint
    err: list[str] = []

    async def read_stderr() -> None:
        async for raw in proc.stderr:  # type: ignore[union-attr]
            err.append(raw.decode("utf-8", "replace").rstrip())
            if err[-1].startswith("counting "):
                report(err[-1])
    try:
        out, _ = await asyncio.gather(proc.stdout.read(), read_stderr())  # type: ignore[union-attr]
        await proc.wait()
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
        raise
    if proc.returncode != 0:
        raise parse_error("\n".join(err), proc.returncode)
    try:
        return json.loads(out.decode("utf-8", "replace"))
    except ValueError:
        raise EngineError(f"`{' '.join(argv)}` did not print JSON",
                          "check that FBT_ENGINE points at fbt-engine") from None


def filter_models(models: list[dict[str, Any]], query: str = "", kind: str = "all",
                  fusable_only: bool = False) -> list[dict[str, Any]]:
    """Models whose name or family contains every word of `query` (case-insensitive)."""
    words = query.lower().split()
    out = []
    for m in models:
        hay = f"{m.get('name', '')} {m.get('family', '')}".lower()
        if all(w in hay for w in words) and (kind == "all" or m.get("kind") == kind) \
                and (m.get("fusable") or not fusable_only):
            out.append(m)
    return out


def sort_models(models: list[dict[str, Any]], key: str, reverse: bool = False) -> list[dict[str, Any]]:
    """Sort by a catalog field; missing values go last whatever the direction."""
    def sort_key(m: dict[str, Any]) -> tuple[bool, Any]:
        v = m.get(key)
        if isinstance(v, list):
            v = v[-1] if key == "input_size" and v else len(v)
        if isinstance(v, str):
            v = v.lower()
        return (v is None) != reverse, v if v is not None else 0
    return sorted(models, key=sort_key, reverse=reverse)


class CatalogScreen(FbtScreen):
    """Browse models; `t` makes the highlighted one the teacher, `s` the student."""

    MODE = "catalog"
    DEFAULT_CSS = "#catalog-progress { height: 1; padding: 0 1; color: $text-muted; }"
    AUTO_FOCUS = "#models"  # keys (t, s, digits) work at once; `/` goes to the search box
    BINDINGS = [("t", "choose('teacher')", "Teacher"), ("s", "choose('student')", "Student"),
                ("slash", "focus_search", "Search"), ("o", "cycle_sort", "Sort"),
                Binding("enter", "preview", "Preview pair", show=False)]

    def __init__(self) -> None:
        super().__init__()
        self.models: list[dict[str, Any]] = []
        self.sort_key = "name"
        self.sort_reverse = False

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="catalog-bar"):
            yield Input(placeholder="search models (filters as you type)", id="search")
            yield Select([(k, k) for k in KINDS], value="all", allow_blank=False, id="kind")
            yield Checkbox("fusable only", id="fusable")
        yield Static("", id="catalog-error", classes="error hidden")
        table: DataTable = DataTable(id="models", cursor_type="row", zebra_stripes=True)
        table.add_columns(*(label for label, _ in COLUMNS))
        yield table
        yield Static("", id="catalog-progress", classes="hidden")
        yield Static("loading models from the engine...", id="catalog-count")

    def on_mount(self) -> None:
        self.query_one("#models", DataTable).loading = True
        # Paint first: the engine child (which imports torch) competes for the CPU.
        self.call_after_refresh(self.load_catalog)

    @work(exclusive=True, group="catalog")
    async def load_catalog(self) -> None:
        """Names at once (`--no-counts`, with the counts of the engine's shipped table); when
        some are missing (another timm version) the engine counts them at low priority, its
        `counting i/n` progress shows above the status line, and the table fills them in."""
        try:
            models = await run_json(["models", "--json", "--no-counts"])
            models = models if isinstance(models, list) else []
            self.post_message(CatalogLoaded(models))
            if any(m.get("params") is None for m in models if isinstance(m, dict)):
                counted = await run_json_with_progress(["models", "--json"], self._show_count_progress)
                if isinstance(counted, list):
                    self.post_message(CatalogLoaded(counted))
        except EngineError as err:
            self.post_message(EngineFailed("catalog", err.message, err.hint))
        finally:
            self.query("#catalog-progress").add_class("hidden")  # (no error when the screen is gone)

    def _show_count_progress(self, line: str) -> None:
        """`counting 300/1,373` from the engine (at most twice a second) above the status line."""
        bar = self.query_one("#catalog-progress", Static)
        bar.update(f"{line} models not in the shipped table: parameter counts at low priority (cached afterwards)")
        bar.remove_class("hidden")

    def on_catalog_loaded(self, message: CatalogLoaded) -> None:
        first = not self.models
        self.models = message.models
        self.query_one("#models", DataTable).loading = False
        self.refilter()
        if first:  # a later answer (parameter counts filled in) must not steal focus from typing
            self.query_one("#models", DataTable).focus()

    def on_engine_failed(self, message: EngineFailed) -> None:
        self.query_one("#models", DataTable).loading = False
        err = self.query_one("#catalog-error", Static)
        err.update(f"error: {message.message}\nhint: {message.hint}")
        err.remove_class("hidden")
        self.query_one("#catalog-count", Static).update("no catalog")

    # --- filtering and sorting ------------------------------------------------------------
    @on(Input.Changed, "#search")
    @on(Select.Changed, "#kind")
    @on(Checkbox.Changed, "#fusable")
    def refilter(self) -> None:
        query = self.query_one("#search", Input).value
        kind = str(self.query_one("#kind", Select).value)
        fusable = self.query_one("#fusable", Checkbox).value
        shown = sort_models(filter_models(self.models, query, kind, fusable), self.sort_key, self.sort_reverse)
        self._fill(shown)

    def _fill(self, shown: list[dict[str, Any]]) -> None:
        table = self.query_one("#models", DataTable)
        current = self.highlighted()
        table.clear()
        for m in shown:
            table.add_row(*model_row(m), key=str(m.get("name")))
        exact = self.query_one("#search", Input).value.strip()
        # Typing a full name puts the cursor on it (not on a longer name that contains it).
        target = exact if exact in table.rows else current
        if target is not None and target in table.rows:
            table.move_cursor(row=table.get_row_index(target))
        arrow = "v" if self.sort_reverse else "^"
        self.query_one("#catalog-count", Static).update(
            f"{len(shown)} of {len(self.models)} models  |  sorted by {self.sort_key} {arrow}  |  "
            "t: teacher  s: student  enter: preview  click a header or o: sort")

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        self.set_sort(COLUMNS[event.column_index][1])

    def set_sort(self, key: str) -> None:
        """Sort by `key`; choosing the current key again flips the direction."""
        self.sort_reverse = (not self.sort_reverse) if key == self.sort_key else False
        self.sort_key = key
        self.refilter()

    def action_cycle_sort(self) -> None:
        keys = [k for _, k in COLUMNS]
        self.sort_reverse = False
        self.sort_key = keys[(keys.index(self.sort_key) + 1) % len(keys)]
        self.refilter()

    # --- choosing ---------------------------------------------------------------------------
    def highlighted(self) -> str | None:
        """Name of the model under the cursor, if any."""
        table = self.query_one("#models", DataTable)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return row_key.value

    def action_choose(self, role: str) -> None:
        name = self.highlighted()
        if name:
            self.post_message(PairChosen(role, name))
            self.notify(f"{role}: {name}", timeout=2)

    def action_focus_search(self) -> None:
        self.query_one("#search", Input).focus()

    def action_preview(self) -> None:
        self.app.switch_mode("preview")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_preview()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one("#models", DataTable).focus()

    def on_key(self, event: object) -> None:
        # Down from the search box goes straight to the table, as in most pickers.
        key = getattr(event, "key", "")
        if key == "down" and self.focused is self.query_one("#search", Input):
            self.query_one("#models", DataTable).focus()
