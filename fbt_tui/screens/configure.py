"""Configure screen: edit the common settings of a preset, validate with the engine's own rules.

The form is an editor over a preset's plain data: only fields the user changed become
`section.key=value` overrides on what was loaded, so keys the form does not show (and values it
shows but nobody touched) survive a load -> save round trip. Validation is `fbt_engine.config`
itself (stdlib only, no torch), and its ConfigError sentence appears next to the offending field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Input, Label, Select, Static

from fbt_engine.config import DATASETS, METHODS, RunConfig, apply_overrides, dumps, from_dict, read_toml, to_dict
from fbt_engine.errors import ConfigError

from ..messages import StartRun
from .base import FbtScreen


@dataclass(frozen=True)
class Field:
    """One form field: the preset key it edits, its label, its value type, optional choices."""

    key: str
    label: str
    kind: str = "str"  # str | int | float
    choices: tuple[Any, ...] = ()

    @property
    def wid(self) -> str:
        return "f-" + self.key.replace(".", "-").replace("_", "-")


FIELDS = (
    Field("name", "run name"),
    Field("method", "method", choices=METHODS),
    Field("teacher.model", "teacher"),
    Field("student.model", "student"),
    Field("data.name", "dataset", choices=DATASETS),
    Field("data.root", "dataset path"),
    Field("data.img_size", "input size", "int"),
    Field("train.epochs", "epochs", "int"),
    Field("train.batch_size", "batch size", "int"),
    Field("train.lr", "learning rate", "float"),
    Field("train.device", "device"),
    Field("fusion.order", "fusion order", choices=("auto", "student-first", "teacher-first")),
    Field("fusion.split", "fusion split", "int", choices=(1, 2, 3)),
    Field("loss.ce", "loss weight ce", "float"),
    Field("loss.kd", "loss weight kd", "float"),
    Field("loss.ofa", "loss weight ofa", "float"),
    Field("loss.nce", "loss weight nce", "float"),
    Field("loss.fused_ce", "loss weight fused ce", "float"),
)
KEY_IN_MESSAGE = re.compile(r"`([A-Za-z_.]+)`")


def lookup(data: dict[str, Any], key: str) -> Any:
    """`a.b.c` in nested dicts, or None."""
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def shown_value(base: dict[str, Any], key: str) -> str:
    """What the form shows for `key`: the preset's value, else the engine default."""
    value = lookup(base, key)
    if value is None:
        value = lookup(to_dict(RunConfig()), key)
    return "" if value is None else str(value)


def override_for(f: Field, text: str) -> str:
    """`key=value` in `--set` syntax; strings are quoted so `name = 123` stays a string."""
    value = json.dumps(text) if f.kind == "str" else text.strip()
    return f"{f.key}={value}"


def error_key(err: ConfigError) -> str:
    """The preset key a ConfigError names first (empty when it names none)."""
    match = KEY_IN_MESSAGE.search(err.message)
    return match.group(1) if match else ""


def error_text(err: ConfigError) -> str:
    return f"{err.message}" + (f"\nhint: {err.hint}" if err.hint else "")


class ConfigureScreen(FbtScreen):
    """Form over a preset: load, edit, validate, save, start."""

    MODE = "configure"
    BINDINGS = [("ctrl+s", "save", "Save preset"), ("ctrl+r", "start", "Start run")]

    def __init__(self) -> None:
        super().__init__()
        self.base: dict[str, Any] = {}
        self.source = "<form>"
        self.initial: dict[str, str] = {}

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="preset-bar"):
            yield Input(placeholder="preset file to load, e.g. presets/quickstart.toml", id="load-path")
            yield Button("Load", id="load")
            yield Input(placeholder="save as, e.g. presets/mine.toml", id="save-path")
            yield Button("Save", id="save")
            yield Button("Start run", id="start", variant="success")
        yield Static("", id="config-status")
        with VerticalScroll(id="form"):
            for f in FIELDS:
                with Vertical(classes="field"):
                    with Horizontal(classes="field-row"):
                        yield Label(f.label, classes="field-label")
                        yield self._widget(f)
                    yield Static("", id=f"e-{f.wid}", classes="field-error hidden")

    @staticmethod
    def _widget(f: Field) -> Input | Select:
        if f.choices:
            return Select([(str(c), str(c)) for c in f.choices], allow_blank=False, id=f.wid)
        return Input(id=f.wid)

    def on_mount(self) -> None:
        preset = getattr(self.app, "preset", None)
        if preset:
            self.query_one("#load-path", Input).value = str(preset)
            self.load(Path(preset))
        else:
            self.populate({})
        for attr in ("teacher", "student"):
            self.watch(self.app, attr, self._pair_changed, init=False)

    # --- load / populate ----------------------------------------------------------------------
    def load(self, path: Path) -> bool:
        """Read a preset file into the form; show the engine's message when it cannot."""
        try:
            data = read_toml(path)
        except ConfigError as err:
            self._status(error_text(err), error=True)
            return False
        self.source = str(path)
        self.query_one("#save-path", Input).value = str(path)
        self.populate(data)
        self._status(f"loaded {path}")
        return True

    def populate(self, data: dict[str, Any]) -> None:
        """Show `data` (plus defaults) in the form; the app's chosen pair wins over the preset."""
        self.base = data
        self.initial = {f.key: shown_value(data, f.key) for f in FIELDS}
        with self.prevent(Input.Changed, Select.Changed):
            for f in FIELDS:
                self.set_field(f, self.initial[f.key])
        self._pair_changed()

    def set_field(self, f: Field, text: str) -> None:
        widget = self.query_one(f"#{f.wid}")
        if isinstance(widget, Select):
            options = [str(c) for c in f.choices]
            widget.value = text if text in options else options[0]
        else:
            widget.value = text  # type: ignore[attr-defined]

    def get_field(self, f: Field) -> str:
        widget = self.query_one(f"#{f.wid}")
        return str(widget.value)  # type: ignore[attr-defined]

    def _pair_changed(self, *_: object) -> None:
        for role in ("teacher", "student"):
            name = getattr(self.app, role, "")
            if name:
                self.set_field(next(f for f in FIELDS if f.key == f"{role}.model"), name)
        self.validate_form()

    # --- validation ---------------------------------------------------------------------------
    def overrides(self) -> list[str]:
        """`key=value` for every field whose text differs from what was loaded."""
        return [override_for(f, self.get_field(f)) for f in FIELDS
                if self.get_field(f) != self.initial.get(f.key)]

    def merged(self) -> dict[str, Any]:
        """The loaded preset with the form's changes applied (plain data)."""
        return apply_overrides(self.base, self.overrides())

    @on(Input.Changed)
    @on(Select.Changed)
    def _changed(self, event: Input.Changed | Select.Changed) -> None:
        if event.control.id and event.control.id.startswith("f-"):
            self.validate_form()

    def validate_form(self) -> RunConfig | None:
        """Validate; put each error next to its field. Returns the config when valid."""
        errors: dict[str, str] = {}
        general = ""
        try:
            cfg = from_dict(self.merged(), source=self.source)
        except ConfigError as err:
            cfg = None
            key = error_key(err)
            if any(f.key == key for f in FIELDS):
                errors[key] = error_text(err)
            else:
                general = error_text(err)
        self._field_errors(errors)
        if cfg is not None:
            self._status(f"valid  |  {len(self.overrides())} change(s) to {self.source}")
        elif general:
            self._status(general, error=True)
        else:
            self._status("fix the field marked in red", error=True)
        return cfg

    def _field_errors(self, errors: dict[str, str]) -> None:
        for f in FIELDS:
            widget = self.query_one(f"#e-{f.wid}", Static)
            widget.update(errors.get(f.key, ""))
            widget.set_class(f.key not in errors, "hidden")
            self.query_one(f"#{f.wid}").set_class(f.key in errors, "invalid")

    def _status(self, text: str, error: bool = False) -> None:
        status = self.query_one("#config-status", Static)
        status.update(text)
        status.set_class(error, "error")

    # --- actions ------------------------------------------------------------------------------
    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "load":
            path = self.query_one("#load-path", Input).value.strip()
            if path:
                self.load(Path(path))
        elif event.button.id == "save":
            self.action_save()
        elif event.button.id == "start":
            self.action_start()

    def save_to(self, path: Path) -> bool:
        """Write the validated, fully resolved preset as TOML."""
        cfg = self.validate_form()
        if cfg is None:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps(cfg), encoding="utf-8")
        return True

    def action_save(self) -> None:
        target = self.query_one("#save-path", Input).value.strip()
        if not target:
            self._status("type a file name to save to first", error=True)
            return
        if self.save_to(Path(target)):
            self._status(f"saved {target}")
            self.notify(f"saved {target}", timeout=3)

    def action_start(self) -> None:
        cfg = self.validate_form()
        if cfg is None:
            self.notify("the preset is not valid yet", severity="error", timeout=3)
            return
        runs_dir = Path(getattr(self.app, "runs_dir", "runs"))
        name = unique_name(runs_dir, cfg.name)
        preset = runs_dir / ".presets" / f"{name}.toml"
        if self.save_to(preset):
            self.post_message(StartRun(preset, name))


def unique_name(runs_dir: Path, name: str) -> str:
    """`name`, or `name-2`, `name-3`... when a run folder of that name exists already."""
    candidate, i = name, 2
    while (runs_dir / candidate).exists():
        candidate, i = f"{name}-{i}", i + 1
    return candidate
