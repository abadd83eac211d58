"""The header on every screen: where you are, the chosen teacher/student pair, the live run."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

SCREENS = (("1", "catalog", "Catalog"), ("2", "preview", "Preview"), ("3", "configure", "Configure"),
           ("4", "run", "Run"), ("5", "runs", "Runs"))


class PairHeader(Static):
    """Reads `teacher`, `student` and `run_label` from the app and re-renders when they change."""

    DEFAULT_CSS = """
    PairHeader { dock: top; height: 2; background: $panel; padding: 0 1; }
    """

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def on_mount(self) -> None:
        for attr in ("teacher", "student", "run_label"):
            self.watch(self.app, attr, self._refresh_text, init=False)
        self._refresh_text()

    def _refresh_text(self, *_: object) -> None:
        app = self.app
        line1 = Text.assemble(("FBT Workbench  ", "bold"), *self._tabs())
        line2 = Text.assemble(
            ("teacher ", "dim"), (getattr(app, "teacher", "") or "-", "bold cyan"),
            ("   student ", "dim"), (getattr(app, "student", "") or "-", "bold magenta"),
            ("   run ", "dim"), (getattr(app, "run_label", "") or "-", "bold"))
        self.update(Text("\n").join([line1, line2]))

    def _tabs(self) -> list[tuple[str, str]]:
        parts: list[tuple[str, str]] = []
        for key, mode, label in SCREENS:
            style = "reverse bold" if mode == self.current else ""
            parts += [(f" {key} {label} ", style), (" ", "")]
        return parts
