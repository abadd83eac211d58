"""The header on every screen: where you are, the pair a run will train, the preset, the live run.

It reads `app.state` (the one app state, fbt_tui/state.py) and `app.run_label`, and re-renders
when either changes.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..state import AppState, toml_text

SCREENS = (("1", "catalog", "Catalog"), ("2", "preview", "Preview"), ("3", "configure", "Configure"),
           ("4", "run", "Run"), ("5", "runs", "Runs"))


def pair_line(state: AppState, run_label: str) -> Text:
    """`teacher X  student Y {kwargs}  img N  preset P (k changes)  run R`; parts only when known."""
    parts: list[tuple[str, str] | str] = []
    for role, style in (("teacher", "bold cyan"), ("student", "bold magenta")):
        parts += [(f"{'   ' if role == 'student' else ''}{role} ", "dim"), (state.model(role) or "-", style)]
        if state.kwargs(role):
            parts.append((f" {toml_text(state.kwargs(role))}", style.replace("bold ", "")))
    if state.teacher or state.student or state.path:
        parts += [("   img ", "dim"), (str(state.value("data.img_size")), "bold")]
    if state.path:
        changes = len(state.changes)
        parts += [("   preset ", "dim"), (str(state.path), "bold")]
        if changes:
            parts.append((f" ({changes} change{'s' if changes > 1 else ''})", "yellow"))
    parts += [("   run ", "dim"), (run_label or "-", "bold")]
    return Text.assemble(*parts)


class PairHeader(Static):
    """Two lines: the screen tabs, then the pair, input size, preset and run."""

    DEFAULT_CSS = """
    PairHeader { dock: top; height: 2; background: $panel; padding: 0 1; }
    """

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def on_mount(self) -> None:
        for attr in ("state", "run_label"):
            self.watch(self.app, attr, self._refresh_text, init=False)
        self.watch(self.screen, "focused", self._refresh_text, init=False)
        self._refresh_text()

    def _refresh_text(self, *_: object) -> None:
        from ..screens.base import is_text_field  # (base imports this module)

        app = self.app
        line1 = Text.assemble(("FBT Workbench  ", "bold"), *self._tabs())
        if is_text_field(self.screen.focused):
            line1.append("  typing in a field: esc leaves it, F1-F5 switch screens", "yellow")
        state = getattr(app, "state", None) or AppState()
        self.update(Text("\n").join([line1, pair_line(state, getattr(app, "run_label", ""))]))

    def _tabs(self) -> list[tuple[str, str]]:
        parts: list[tuple[str, str]] = []
        for key, mode, label in SCREENS:
            style = "reverse bold" if mode == self.current else ""
            parts += [(f" {key} {label} ", style), (" ", "")]
        return parts
