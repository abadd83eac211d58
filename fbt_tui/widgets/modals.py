"""Small modal dialogs: a yes/no confirmation and the quit-with-a-live-run question."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ChoiceModal(ModalScreen[str]):
    """Ask a question with a few buttons; dismisses with the chosen button's id (escape: cancel)."""

    BINDINGS = [("escape", "dismiss('cancel')", "Cancel")]
    DEFAULT_CSS = """
    ChoiceModal { align: center middle; }
    ChoiceModal > Vertical { width: 64; height: auto; border: thick $warning; background: $surface; padding: 1 2; }
    ChoiceModal Horizontal { height: auto; margin-top: 1; }
    ChoiceModal Button { margin-right: 1; }
    """

    def __init__(self, question: str, choices: list[tuple[str, str]]) -> None:
        super().__init__()
        self.question = question
        self.choices = choices  # (id, label)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, id="question")
            with Horizontal():
                for i, (choice_id, label) in enumerate(self.choices):
                    yield Button(label, id=choice_id, variant="error" if i == 0 else "default")

    def on_mount(self) -> None:
        # Focus the last (safest) button, so a stray enter never kills anything.
        self.query(Button).last().focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id or "cancel")


def kill_modal(run: str) -> ChoiceModal:
    """Confirmation before SIGKILL."""
    return ChoiceModal(f"Kill run {run!r} now? No checkpoint is written and no final event either.",
                       [("kill", "Kill"), ("cancel", "Cancel")])


def quit_modal(run: str) -> ChoiceModal:
    """The question asked on quit while a run is live."""
    return ChoiceModal(f"Run {run!r} is still going. Stop it, or leave it running in the background?",
                       [("stop", "Stop run and quit"), ("leave", "Leave running and quit"),
                        ("cancel", "Cancel")])
