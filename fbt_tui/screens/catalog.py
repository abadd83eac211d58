"""Catalog screen: every timm architecture the engine knows, searchable, filterable, sortable.

The list comes from `fbt-engine models --json` in a worker (the engine imports timm, we never
do); a loading indicator covers the table meanwhile. Typing anywhere on the table searches
(the filter runs at most once per SEARCH_S and redraws only the visible lines, see ModelTable);
ctrl+t / ctrl+s make the highlighted model the teacher / student, even from the search box.
"""

from __future__ import annotations

import string
import time
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Checkbox, Input, Select, Static
from textual.widgets.input import Selection

from ..engine_client import EngineError, run_json
from ..messages import CatalogLoaded, EngineFailed, PairChosen
from ..widgets.model_table import ModelTable
from .base import FbtScreen, is_text_field

KINDS = ("all", "cnn", "msa", "mlp", "hybrid", "unknown")
COLUMNS = (("name", "name"), ("family", "family"), ("kind", "kind"), ("params", "params"),
           ("input", "input_size"), ("pretrained", "pretrained_tags"), ("fusable", "fusable"))
COLUMN_CAPS = (44, 20, 7, 7, 9, 28, 7)  # widest a column gets (longer cells end with ...)
SEARCH_S = 0.03  # at most one refilter per window: a burst of keys shares one (keystroke -> table < 50 ms)
# Keys that start a search when typed on the table. Not digits (they switch screens), not q
# (quit) or ? (help): no timm name starts with one of those.
SEARCH_KEYS = {c: c for c in string.ascii_letters if c != "q"} | {"underscore": "_", "minus": "-", "full_stop": "."}


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
    """Browse models; type to search; ctrl+t makes the highlighted one the teacher, ctrl+s the student."""

    MODE = "catalog"
    DEFAULT_CSS = "#catalog-progress { height: 1; padding: 0 1; color: $text-muted; }"
    AUTO_FOCUS = HOME = "#models"  # digits switch screens at once; typing a letter searches
    # Priority bindings run in the order keys arrive (see screens/base.py): `swin<ctrl+t>` picks
    # what the search for "swin" shows, however fast it is typed.
    BINDINGS = [Binding("ctrl+t", "choose('teacher')", "Teacher", priority=True),
                Binding("ctrl+s", "choose('student')", "Student", priority=True),
                Binding("slash", "focus_search", "Search", priority=True),
                Binding("ctrl+o", "cycle_sort", "Sort", priority=True),
                Binding("question_mark", "app.help", "Help"),
                *(Binding(key, "leave_search", "In the search box: to the results", show=False, priority=True)
                  for key in ("enter", "down")),
                *(Binding(key, f"type_to_search({char!r})", show=False, priority=True)
                  for key, char in SEARCH_KEYS.items())]
    HELP = (("a-z . _ -", "on the table: start a new search with that letter"),
            ("enter", "on the table: preview the pair"),
            ("click a header", "sort by that column (again: reverse)"))

    def __init__(self) -> None:
        super().__init__()
        self.models: list[dict[str, Any]] = []
        self.sort_key = "name"
        self.sort_reverse = False
        self.rows: dict[str, tuple[str, ...]] = {}  # name -> its table row, built once per answer
        self._search_timer: Any = None
        self._filtered_at = 0.0
        self._shown: tuple[Any, ...] | None = None  # the filter the table shows (query, kind, fusable, sort)

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="catalog-bar"):
            # No select-on-focus: a letter typed on the table is already in the box when focus lands.
            yield Input(placeholder="search models: type anywhere (filters as you type)", id="search",
                        select_on_focus=False)
            yield Select([(k, k) for k in KINDS], value="all", allow_blank=False, id="kind")
            yield Checkbox("fusable only", id="fusable")
        yield Static("", id="catalog-error", classes="error hidden")
        yield ModelTable([label for label, _ in COLUMNS], id="models")
        yield Static("", id="catalog-progress", classes="hidden")
        yield Static("loading models from the engine...", id="catalog-count")

    def on_mount(self) -> None:
        self.query_one("#models", ModelTable).loading = True
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
                counted = await run_json(["models", "--json"], on_stderr_line=self._counting_line)
                if isinstance(counted, list):
                    self.post_message(CatalogLoaded(counted))
        except EngineError as err:
            self.post_message(EngineFailed("catalog", err.message, err.hint))
        finally:
            self.query("#catalog-progress").add_class("hidden")  # (no error when the screen is gone)

    def _counting_line(self, line: str) -> None:
        if line.startswith("counting "):  # the engine counting models its shipped table lacks
            self._show_count_progress(line)

    def _show_count_progress(self, line: str) -> None:
        """`counting 300/1,373` from the engine (at most twice a second) above the status line."""
        bar = self.query_one("#catalog-progress", Static)
        bar.update(f"{line} models not in the shipped table: parameter counts at low priority (cached afterwards)")
        bar.remove_class("hidden")

    def on_catalog_loaded(self, message: CatalogLoaded) -> None:
        first = not self.models
        self.models = [m for m in message.models if isinstance(m, dict)]
        self.rows = {str(m.get("name")): model_row(m) for m in self.models}
        table = self.query_one("#models", ModelTable)
        table.loading = False
        table.fit_columns(list(self.rows.values()), list(COLUMN_CAPS))
        self.refilter()
        if first and not is_text_field(self.focused):  # never steal focus from the search box
            self.set_focus(table)

    def on_engine_failed(self, message: EngineFailed) -> None:
        self.query_one("#models", ModelTable).loading = False
        err = self.query_one("#catalog-error", Static)
        err.update(f"error: {message.message}\nhint: {message.hint}")
        err.remove_class("hidden")
        self.query_one("#catalog-count", Static).update("no catalog")

    # --- filtering and sorting ------------------------------------------------------------
    @on(Input.Changed, "#search")
    def _search_changed(self) -> None:
        # The first key of a pause filters at once; keys right after it share one refilter at the
        # end of the window (it reads the box then, so the last key always counts).
        if self._search_timer is not None:
            return
        wait = self._filtered_at + SEARCH_S - time.monotonic()
        if wait <= 0:
            self.refilter()
        else:
            self._search_timer = self.set_timer(wait, self.refilter)

    @on(Select.Changed, "#kind")
    @on(Checkbox.Changed, "#fusable")
    def refilter(self) -> None:
        """Show the models the search box, kind and fusable filter let through, sorted."""
        if self._search_timer is not None:
            self._search_timer.stop()
            self._search_timer = None
        self._filtered_at = time.monotonic()
        self._shown = self._filter()
        query, kind, fusable, _, _ = self._shown
        shown = sort_models(filter_models(self.models, query, kind, fusable), self.sort_key, self.sort_reverse)
        self._fill(shown)

    def _filter(self) -> tuple[Any, ...]:
        return (self.query_one("#search", Input).value, str(self.query_one("#kind", Select).value),
                self.query_one("#fusable", Checkbox).value, self.sort_key, self.sort_reverse)

    def _fill(self, shown: list[dict[str, Any]]) -> None:
        table = self.query_one("#models", ModelTable)
        keys = [str(m.get("name")) for m in shown]
        exact = self.query_one("#search", Input).value.strip()
        # Typing a full name puts the cursor on it (not on a longer name that contains it).
        table.set_rows([self.rows.get(k) or model_row(m) for k, m in zip(keys, shown)], keys,
                       cursor_key=exact if exact in keys else table.highlighted)
        arrow = "v" if self.sort_reverse else "^"
        self.query_one("#catalog-count", Static).update(
            f"{len(shown)} of {len(self.models)} models  |  sorted by {self.sort_key} {arrow}  |  "
            "type: search  ctrl+t: teacher  ctrl+s: student  enter: preview  click a header or ctrl+o: sort")

    def on_model_table_header_clicked(self, event: ModelTable.HeaderClicked) -> None:
        self.set_sort(COLUMNS[event.column][1])

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
        return self.query_one("#models", ModelTable).highlighted

    # Keys typed before a pick may still wait in the focused widget's message queue (letters in
    # the search box, arrows on the table); each action below queues its work behind them
    # (call_later) and moves focus at once, so the keys typed after it go where they belong.
    def action_choose(self, role: str) -> None:
        """Pick the highlighted model (after the keys typed before); a pick ends the search."""
        search, table = self.query_one("#search", Input), self.query_one("#models", ModelTable)
        (search if self.focused is search else table).call_later(self._choose_now, role)
        if self.focused is search:
            self.set_focus(table)  # digits switch screens again, letters start a new search

    def _choose_now(self, role: str) -> None:
        if self._filter() != self._shown:
            self.refilter()  # the search typed just before must count
        name = self.highlighted()
        if name:
            self.post_message(PairChosen(role, name))
            self.notify(f"{role}: {name}", timeout=2)

    def check_action(self, action: str, parameters: tuple[Any, ...]) -> bool | None:
        search, table = self.query_one("#search", Input), self.query_one("#models", ModelTable)
        if action in ("type_to_search", "focus_search"):
            return self.focused is table or (action == "focus_search" and self.focused is None)
        if action == "leave_search":
            return self.focused is search
        return super().check_action(action, parameters)

    def action_type_to_search(self, char: str) -> None:
        """A letter typed on the table starts a new search with it."""
        search = self.query_one("#search", Input)
        self.set_focus(search)
        search.call_later(self._start_search, char)

    def _start_search(self, text: str) -> None:
        search = self.query_one("#search", Input)
        search.value = text
        search.selection = Selection.cursor(len(text))

    def action_focus_search(self) -> None:
        """`/`: to the search box with its text selected (typing replaces it)."""
        search = self.query_one("#search", Input)
        self.set_focus(search)
        search.call_later(lambda: setattr(search, "selection", Selection(0, len(search.value))))

    def action_leave_search(self) -> None:
        self.set_focus(self.query_one("#models", ModelTable))

    def action_preview(self) -> None:
        self.app.switch_mode("preview")

    def on_model_table_selected(self, event: ModelTable.Selected) -> None:
        self.action_preview()
