"""Small modal dialogs: confirmations (kill, overwrite, pair), and the quit-with-a-live-run question."""

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

    def __init__(self, question: str, choices: list[tuple[str, str]], danger: bool = True) -> None:
        super().__init__()
        self.question = question
        self.choices = choices  # (id, label)
        self.danger = danger  # the first choice destroys something: show it in red

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, id="question", markup=False)
            with Horizontal():
                for i, (choice_id, label) in enumerate(self.choices):
                    variant = ("error" if self.danger else "primary") if i == 0 else "default"
                    yield Button(label, id=choice_id, variant=variant)

    def on_mount(self) -> None:
        # Focus the last (safest) button, so a stray enter never kills or overwrites anything.
        self.set_focus(self.query(Button).last())

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id or "cancel")


def kill_modal(run: str) -> ChoiceModal:
    """Confirmation before SIGKILL."""
    return ChoiceModal(f"Kill run {run!r} now? No checkpoint is written and no final event either.",
                       [("kill", "Kill"), ("cancel", "Cancel")])


def overwrite_modal(path: str, changes: list[str]) -> ChoiceModal:
    """Confirmation before a preset file is replaced."""
    what = f" with {len(changes)} changed key(s): {', '.join(changes[:8])}{' ...' if len(changes) > 8 else ''}" \
        if changes else ""
    return ChoiceModal(f"{path} exists. Overwrite it{what}? Its comments are kept; only keys that differ "
                       "from the engine defaults are added.", [("overwrite", "Overwrite"), ("cancel", "Cancel")])


def quit_modal(run: str) -> ChoiceModal:
    """The question asked on quit while a run is live."""
    return ChoiceModal(f"Run {run!r} is still going. Stop it, or leave it running in the background?",
                       [("stop", "Stop run and quit"), ("leave", "Leave running and quit"),
                        ("cancel", "Cancel")])
