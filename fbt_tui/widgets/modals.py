"""Small modal dialogs: confirmations (kill, overwrite, pair), the quit-with-a-live-run question, and
what a sweep of methods runs."""

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


class SweepModal(ModalScreen["dict | None"]):
    """Ask what a sweep of methods runs: which methods (all by default), which seeds, how many at a
    time. Dismisses with {"methods": [...], "seeds": "0,1", "jobs": 1}, or None (escape: cancel)."""

    BINDINGS = [("escape", "dismiss(None)", "Cancel")]
    DEFAULT_CSS = """
    SweepModal { align: center middle; }
    SweepModal > Vertical { width: 72; height: auto; max-height: 90%; border: thick $primary; background: $surface;
                            padding: 1 2; }
    SweepModal SelectionList { height: auto; max-height: 12; }
    SweepModal Horizontal { height: auto; margin-top: 1; }
    SweepModal Horizontal Label { padding: 1 1 0 0; }
    SweepModal Input { width: 16; }
    SweepModal Button { margin-right: 1; }
    SweepModal #sweep-why { color: $error; height: auto; }
    """

    def __init__(self, pair: str, methods: list[str], seeds: str = "0", jobs: int = 1) -> None:
        super().__init__()
        self.pair = pair
        self.methods = methods
        self.seeds = seeds
        self.jobs = jobs

    def compose(self) -> ComposeResult:
        from textual.widgets import Input, Label, SelectionList

        with Vertical():
            yield Static(f"Sweep methods for {self.pair}: one run per method and seed, same data, budget and "
                         "teacher (`fbt-engine compare`), in the background: the Runs screen shows it. Space toggles a "
                         "method.",
                         markup=False)
            yield SelectionList[str](*((m, m, True) for m in self.methods), id="sweep-methods")
            with Horizontal():
                yield Label("seeds")
                yield Input(self.seeds, id="sweep-seeds", placeholder="0,1,2")
                yield Label("jobs")
                yield Input(str(self.jobs), id="sweep-jobs", type="integer")
            yield Static("", id="sweep-why", markup=False)
            with Horizontal():
                yield Button("Start sweep", id="start", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.set_focus(self.query_one("#sweep-methods"))

    def answer(self) -> tuple[dict | None, str]:
        """The choices, or None and why they cannot be run."""
        from textual.widgets import Input, SelectionList

        methods = list(self.query_one("#sweep-methods", SelectionList).selected)
        seeds = self.query_one("#sweep-seeds", Input).value.replace(" ", "").strip(",")
        jobs = self.query_one("#sweep-jobs", Input).value.strip()
        if not methods:
            return None, "pick at least one method (space toggles the highlighted one)"
        try:
            values = [int(s) for s in seeds.split(",")] if seeds else [0]
        except ValueError:
            return None, f"seeds {seeds!r} are not comma-separated integers, e.g. 0,1,2"
        if len(set(values)) != len(values):
            return None, "a seed is given twice"
        if not jobs.isdigit() or int(jobs) < 1:
            return None, "jobs is how many runs go side by side: 1 or more"
        return {"methods": methods, "seeds": ",".join(map(str, values)), "jobs": int(jobs)}, ""

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id != "start":
            self.dismiss(None)
            return
        self.submit()

    def on_input_submitted(self) -> None:
        self.submit()

    def submit(self) -> None:
        choice, why = self.answer()
        self.query_one("#sweep-why", Static).update(why)
        if choice is not None:
            self.dismiss(choice)
