"""Common frame of every screen: the pair header on top, the footer with keys at the bottom."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer

from ..widgets.pair_header import PairHeader


class FbtScreen(Screen):
    """Subclasses set MODE and implement `compose_body`."""

    MODE = ""

    def compose(self) -> ComposeResult:
        yield PairHeader(self.MODE)
        yield from self.compose_body()
        yield Footer()

    def compose_body(self) -> ComposeResult:
        raise NotImplementedError
