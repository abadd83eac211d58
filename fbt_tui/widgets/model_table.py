"""A table that stays fast at thousands of rows: only the lines on screen are ever drawn.

Textual's DataTable measures every cell of every row it is given (0.3-0.7 s for the 1,373-model
catalog), so rebuilding it per keystroke made typing lag. Here replacing the rows is a list
assignment and a repaint of the visible lines; widths are fixed once from the whole catalog.
"""

from __future__ import annotations

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

PAD = 1  # blank cells on each side of a cell


class ModelTable(ScrollView, can_focus=True):
    """Rows of text under a fixed header line; a row cursor; enter or a double click selects."""

    COMPONENT_CLASSES = {"model-table--header", "model-table--cursor", "model-table--odd"}
    DEFAULT_CSS = """
    ModelTable { background: $surface; }
    ModelTable > .model-table--header { text-style: bold; background: $panel; }
    ModelTable > .model-table--odd { background: $surface-lighten-1; }
    ModelTable > .model-table--cursor { background: $block-cursor-blurred-background; text-style: bold; }
    ModelTable:focus > .model-table--cursor { background: $block-cursor-background; color: $block-cursor-foreground; }
    """
    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False), Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False), Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "cursor_to(0)", "First", show=False), Binding("end", "cursor_to(-1)", "Last", show=False),
        Binding("enter", "select", "Select", show=False),
    ]

    cursor_row: reactive[int] = reactive(0, always_update=True)

    class Selected(Message):
        """Enter (or a double click) on a row."""

        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

    class HeaderClicked(Message):
        def __init__(self, column: int) -> None:
            super().__init__()
            self.column = column

    def __init__(self, labels: list[str], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.labels = labels
        self.widths = [cell_len(label) for label in labels]
        self.rows: list[tuple[str, ...]] = []
        self.keys: list[str] = []
        self._index: dict[str, int] = {}

    # --- data -----------------------------------------------------------------------------
    def fit_columns(self, rows: list[tuple[str, ...]], caps: list[int]) -> None:
        """Column widths from the widest cell in `rows`, each at most its cap."""
        for i, cap in enumerate(caps):
            widest = max((cell_len(r[i]) for r in rows), default=0)
            self.widths[i] = min(cap, max(cell_len(self.labels[i]), widest))
        self.refresh()

    def set_rows(self, rows: list[tuple[str, ...]], keys: list[str], cursor_key: str | None = None) -> None:
        """Show these rows (keys name them); the cursor goes to `cursor_key` when it is shown."""
        self.rows, self.keys = rows, keys
        self._index = {k: i for i, k in enumerate(keys)}
        self.virtual_size = Size(self.size.width, len(rows) + 1)
        target = self._index.get(cursor_key) if cursor_key is not None else None
        self.cursor_row = target if target is not None else min(self.cursor_row, max(0, len(rows) - 1))
        self.refresh()

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def get_row(self, key: str) -> tuple[str, ...]:
        return self.rows[self._index[key]]

    def get_row_at(self, index: int) -> tuple[str, ...]:
        return self.rows[index]

    def has_key(self, key: str) -> bool:
        return key in self._index

    @property
    def highlighted(self) -> str | None:
        return self.keys[self.cursor_row] if 0 <= self.cursor_row < len(self.keys) else None

    def move_to(self, key: str) -> None:
        if key in self._index:
            self.cursor_row = self._index[key]

    # --- cursor -----------------------------------------------------------------------------
    def validate_cursor_row(self, row: int) -> int:
        return max(0, min(row, len(self.rows) - 1))

    def watch_cursor_row(self, row: int) -> None:
        body = max(1, self.size.height - 1)  # lines below the header
        top = int(self.scroll_offset.y)
        if row < top:
            self.scroll_to(y=row, animate=False)
        elif row >= top + body:
            self.scroll_to(y=row - body + 1, animate=False)
        self.refresh()

    def action_cursor(self, delta: int) -> None:
        self.cursor_row += delta

    def action_page(self, direction: int) -> None:
        self.cursor_row += direction * max(1, self.size.height - 2)

    def action_cursor_to(self, row: int) -> None:
        self.cursor_row = row if row >= 0 else len(self.rows) - 1

    def action_select(self) -> None:
        if self.highlighted is not None:
            self.post_message(self.Selected(self.highlighted))

    def on_resize(self, event: events.Resize) -> None:
        self.virtual_size = Size(event.size.width, len(self.rows) + 1)

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            column = self._column_at(event.x)
            if column is not None:
                self.post_message(self.HeaderClicked(column))
            return
        self.cursor_row = int(self.scroll_offset.y) + event.y - 1
        if event.chain >= 2:
            self.action_select()

    def _column_at(self, x: int) -> int | None:
        left = 0
        for i, width in enumerate(self.widths):
            left += width + 2 * PAD
            if x < left:
                return i
        return None

    # --- drawing ----------------------------------------------------------------------------
    def _line(self, cells: tuple[str, ...] | list[str]) -> str:
        parts = []
        for text, width in zip(cells, self.widths):
            if cell_len(text) > width:
                text = set_cell_size(text, max(0, width - 1)) + "…"
            parts.append(" " * PAD + set_cell_size(text, width) + " " * PAD)
        return "".join(parts)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        if y == 0:
            style = base + self.get_component_rich_style("model-table--header")
            return Strip([Segment(self._line(self.labels), style)]).adjust_cell_length(width, style)
        index = int(self.scroll_offset.y) + y - 1
        if index >= len(self.rows):
            return Strip.blank(width, base)
        style = base
        if index % 2:
            style += self.get_component_rich_style("model-table--odd")
        if index == self.cursor_row:
            style += self.get_component_rich_style("model-table--cursor")
        return Strip([Segment(self._line(self.rows[index]), style)]).adjust_cell_length(width, style)
