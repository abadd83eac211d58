"""`?`: every key binding of the app, screen by screen, read from the binding tables themselves.

Nothing here is a second list of keys: the app's and each screen's BINDINGS are the one table,
plus each screen's HELP lines for what is not a binding (typing to search, clicking a header).
"""

from __future__ import annotations

from typing import Any, Iterable

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HIDDEN_ACTIONS = ("type_to_search",)  # one binding per letter: HELP says it in one line


def binding_rows(app: Any, bindings: Iterable[Any]) -> list[tuple[str, str]]:
    """(keys, description), the keys of one description joined (`1 / f1  Catalog screen`)."""
    rows: dict[str, list[str]] = {}
    for binding in Binding.make_bindings(bindings):
        if not binding.action.startswith(HIDDEN_ACTIONS):
            rows.setdefault(binding.description or binding.action, []).append(app.get_key_display(binding))
    return [(" / ".join(dict.fromkeys(keys)), what) for what, keys in rows.items()]


def help_sections(app: Any) -> list[tuple[str, list[tuple[str, str]]]]:
    """(title, rows) for the whole app: keys that work everywhere, then each screen's."""
    from ..app import SCREENS, screen_class
    from .base import FbtScreen

    sections = [("Everywhere", binding_rows(app, [*type(app).BINDINGS, *FbtScreen.BINDINGS]) +
                 [("ctrl+p", "command palette: every action by name (screens, pair, presets, runs)")])]
    everywhere = {b.action for b in Binding.make_bindings(FbtScreen.BINDINGS)}
    for i, mode in enumerate(SCREENS, 1):
        cls = screen_class(mode)
        own = [b for b in Binding.make_bindings(cls.BINDINGS) if b.action not in everywhere]
        sections.append((f"{i} {mode.capitalize()}", binding_rows(app, own) + list(getattr(cls, "HELP", ()))))
    return sections


class HelpScreen(ModalScreen[None]):
    """Every binding; escape, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 96; height: 90%; border: thick $primary; background: $surface;
                                  padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(self.text(), id="help-text")

    def on_mount(self) -> None:
        self.set_focus(self.query_one("#help"))

    def text(self) -> str:
        lines = ["[b]Keys[/b]  (escape, q or ? closes; digits are typed while a text field has focus: "
                 "escape leaves the field, F1-F5 switch from anywhere)"]
        for title, rows in help_sections(self.app):
            lines.append(f"\n[b]{escape(title)}[/b]")
            width = max((len(k) for k, _ in rows), default=0)
            lines += [f"  [cyan]{escape(keys.ljust(width))}[/cyan]  {escape(what)}" for keys, what in rows]
        return "\n".join(lines)
