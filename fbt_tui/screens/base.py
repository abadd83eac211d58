"""Common frame of every screen: the pair header on top, the footer with keys at the bottom.

Keys that move focus (tab, shift+tab, escape) are priority bindings here. Textual resolves an
ordinary binding only after the key has bubbled up from the focused widget, by which time the
keys typed after it have already gone to the old field; a priority binding runs in the order the
keys came, so a fast `abc<tab>def` puts `def` in the next field, not the first.

A text field (an Input, an editable TextArea) never keeps focus across a screen switch: the
screen's HOME widget gets it back, so digits meant for switching screens are never typed.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Input, TextArea

from ..widgets.pair_header import PairHeader


def is_text_field(widget: Widget | None) -> bool:
    """True when `widget` takes printable keys as text (so digits and letters do not reach bindings)."""
    return isinstance(widget, (Input, TextArea)) and widget.check_consume_key("a", "a")


class FbtScreen(Screen):
    """Subclasses set MODE and HOME and implement `compose_body`."""

    MODE = ""
    HOME = ""  # selector of the widget holding focus while no field is edited ("" = nothing)
    HELP: tuple[tuple[str, str], ...] = ()  # extra lines for the help screen: (keys, what they do)
    BINDINGS = [
        Binding("tab", "app.focus_next", "Next field", show=False, priority=True),
        Binding("shift+tab", "app.focus_previous", "Previous field", show=False, priority=True),
        Binding("escape", "leave_field", "Leave the text field", show=False, priority=True),
    ]

    def compose(self) -> ComposeResult:
        yield PairHeader(self.MODE)
        yield from self.compose_body()
        yield Footer()

    def compose_body(self) -> ComposeResult:
        raise NotImplementedError

    def home(self) -> Widget | None:
        """The widget that holds focus while no field is being edited."""
        if not self.HOME:
            return None
        found = self.query(self.HOME)
        return found.first() if found else None

    def go_home(self) -> None:
        """Focus the home widget now (not later: keys typed next must already go there)."""
        self.set_focus(self.home())

    def check_action(self, action: str, parameters: tuple[Any, ...]) -> bool | None:
        if action == "leave_field":
            return is_text_field(self.focused)  # otherwise escape goes to the widget (Select, modal)
        return True

    def action_leave_field(self) -> None:
        self.go_home()

    def on_screen_resume(self) -> None:
        if is_text_field(self.focused):
            self.go_home()
