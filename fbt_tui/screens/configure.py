"""Configure screen: every key of the working preset, checked by the engine's own rules.

The working preset is the app state (fbt_tui/state.py), the same one Preview and the header read.
The common keys are form fields; every key (those too) is in the key/value list below them, where
`key = value` (TOML) sets one and `key =` puts the engine default back. Every edit goes to the app
state as a PresetEdited message and the whole preset is validated by `fbt_engine.config` (stdlib
only, no torch); its ConfigError sentence appears next to the field (or the editor) it names.

Saving writes into the loaded file's own text with tomlkit: its comments and layout stay, changed
keys change, and a key is added only when it differs from the engine default. An existing file is
only replaced after a yes. Enter in the load box loads, in the save box saves.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Input, Label, Select, Static
from textual.widgets.input import Selection

from fbt_engine.config import DATASETS, METHODS, RunConfig, dumps
from fbt_engine.errors import ConfigError

from ..messages import LoadPreset, PresetEdited, PresetSaved, StartRun
from ..state import (OPTIONAL_TABLES, AppState, default_of, has_key, lookup, parse_toml_value, preset_keys,
                     preset_text, toml_text)
from ..widgets.modals import overwrite_modal
from ..widgets.sysmon import gpu_count
from .base import FbtScreen, is_text_field


@dataclass(frozen=True)
class Field:
    """One form field: the preset key it edits, its label, its value kind, optional choices."""

    key: str
    label: str
    kind: str = "str"  # str | int | float | table (TOML inline table, e.g. {patch_size = 8})
    choices: tuple[Any, ...] = ()

    @property
    def wid(self) -> str:
        return "f-" + self.key.replace(".", "-").replace("_", "-")


FIELDS = (
    Field("name", "run name"),
    Field("method", "method", choices=METHODS),
    Field("teacher.model", "teacher"),
    Field("student.model", "student"),
    Field("teacher.kwargs", "teacher kwargs", "table"),
    Field("student.kwargs", "student kwargs", "table"),
    Field("teacher.checkpoint", "teacher weights"),
    Field("teacher.train.epochs", "teacher epochs", "int"),
    Field("data.name", "dataset", choices=DATASETS),
    Field("data.root", "dataset path"),
    Field("data.img_size", "input size", "int"),
    Field("seed", "seed", "int"),
    Field("train.epochs", "epochs", "int"),
    Field("train.batch_size", "batch size", "int"),
    Field("train.lr", "learning rate", "float"),
    Field("train.max_steps_per_epoch", "max steps/epoch", "int"),
    Field("train.device", "device"),
    Field("train.threads", "CPU threads", "int"),
    Field("fusion.order", "fusion order", choices=("auto", "student-first", "teacher-first")),
    Field("fusion.split", "fusion split", "int", choices=(1, 2, 3)),
    Field("loss.ce", "weight ce", "float"),
    Field("loss.kd", "weight kd", "float"),
    Field("loss.ofa", "weight ofa", "float"),
    Field("loss.nce", "weight nce", "float"),
    Field("loss.fused_ce", "weight fused_ce", "float"),
)
BY_KEY = {f.key: f for f in FIELDS}
BY_WID = {f.wid: f for f in FIELDS}
KEY_IN_MESSAGE = re.compile(r"`([A-Za-z_.]+)(?:\[\d+\])?`")
PLACEHOLDERS = {"teacher.train.epochs": "none: the checkpoint is used as is",
                "teacher.checkpoint": "none: trained here or downloaded",
                "teacher.kwargs": "{} e.g. {drop_path_rate = 0.1}", "student.kwargs": "{} e.g. {patch_size = 8}",
                "data.root": "the dataset's default location"}


def shown_text(state: AppState, f: Field) -> str:
    """What the form shows for a field: the preset's value, else the default ("" for none)."""
    if f.key.startswith("teacher.train.") and not has_key(state.data, "teacher.train"):
        return ""  # no [teacher.train]: the teacher is not trained here
    value = state.value(f.key)
    if f.kind == "table":
        return toml_text(value) if value else ""
    if f.kind == "str" or isinstance(value, str):
        return "" if value is None else str(value)
    return toml_text(value)


def field_value(f: Field, text: str) -> tuple[bool, Any]:
    """(remove, value) for what a field holds: text as typed for strings, TOML for the rest; an
    empty table or optional number removes the key (so the default applies)."""
    if f.kind == "str":
        return False, text
    stripped = text.strip()
    if not stripped and (f.kind == "table" or f.key.startswith("teacher.train.")):
        return True, None
    return False, parse_toml_value(stripped)


def error_key(err: ConfigError) -> str:
    """The preset key a ConfigError names first (empty when it names none)."""
    match = KEY_IN_MESSAGE.search(err.message)
    return match.group(1) if match else ""


def error_text(err: ConfigError) -> str:
    return f"{err.message}" + (f"\nhint: {err.hint}" if err.hint else "")


def parse_assignment(text: str) -> tuple[str, str]:
    """`key = value` -> (key, value text); raises ConfigError naming what is missing."""
    key, eq, value = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise ConfigError(f"{text.strip()!r} is not `key = value`",
                          "write e.g. train.threads = 1 (TOML value), or `key =` for the default")
    return key, value.strip()


class ConfigureScreen(FbtScreen):
    """The working preset: load, edit every key, validate, save (asking first), start."""

    MODE = "configure"
    AUTO_FOCUS = HOME = "#kv"
    BINDINGS = [Binding("ctrl+s", "save", "Save preset", priority=True),
                Binding("ctrl+r", "start", "Start run", priority=True),
                Binding("ctrl+l", "focus_load", "Load preset", priority=True),
                Binding("question_mark", "app.help", "Help"),
                Binding("enter", "submit", "Apply / next field", show=False, priority=True)]
    HELP = (("enter", "load box: load; save box: save; a field: next field; key list: edit that key; "
                      "key editor: apply"),
            ("key = value", "in the key editor: set any preset key (TOML value); `key =` resets it"))

    def __init__(self) -> None:
        super().__init__()
        self.kv_key = ""  # the key last applied from the key/value editor (its errors show there)
        self._path: object = object()  # the preset path the load and save boxes were last set to

    # --- layout -------------------------------------------------------------------------------
    def compose_body(self) -> ComposeResult:
        with Horizontal(id="preset-bar"):
            yield Input(placeholder="preset file to load, e.g. presets/quickstart.toml", id="load-path", compact=True)
            yield Button("Load", id="load", compact=True)
            yield Input(placeholder="save as, e.g. presets/mine.toml", id="save-path", compact=True)
            yield Button("Save", id="save", compact=True)
            gpus = Select([("1 GPU", 1)], value=1, allow_blank=False, id="gpus", compact=True,
                          tooltip="GPUs of this machine the run uses (torchrun, one process each)")
            gpus.display = False  # shown when CUDA shows more than one GPU
            yield gpus
            yield Button("Start run", id="start", variant="success", compact=True)
        yield Static("", id="config-status")
        with Vertical(id="form"):
            for f in FIELDS:
                with Vertical(classes="field"):
                    with Horizontal(classes="field-row"):
                        yield Label(f.label, classes="field-label")
                        yield self._widget(f)
                    yield Static("", id=f"e-{f.wid}", classes="field-error hidden")
        yield Label("every key (enter: edit it below; * set in the preset, differs from the default)",
                    classes="section")
        yield DataTable(id="kv", cursor_type="row", zebra_stripes=True)
        yield Input(placeholder="key = value (TOML), enter applies; `key =` puts the default back",
                    id="kv-edit", compact=True, select_on_focus=False)  # the cursor waits after `=`
        yield Static("", id="kv-error", classes="field-error hidden")

    @staticmethod
    def _widget(f: Field) -> Input | Select:
        if f.choices:
            return Select([(str(c), str(c)) for c in f.choices], allow_blank=False, id=f.wid, compact=True)
        return Input(id=f.wid, compact=True, placeholder=PLACEHOLDERS.get(f.key, ""))

    def on_mount(self) -> None:
        table = self.query_one("#kv", DataTable)
        table.add_column("", key="mark", width=1)
        table.add_column("key", key="key", width=30)
        table.add_column("value", key="value")
        self.watch(self.app, "state", self._state_changed, init=False)
        self._state_changed()
        self.run_worker(self._count_gpus, thread=True, group="gpus", exit_on_error=False)

    def _count_gpus(self) -> None:
        count = gpu_count()
        if count > 1:
            self.app.call_from_thread(self._offer_gpus, count)

    def _offer_gpus(self, count: int) -> None:
        """Several local GPUs: a choice of how many the run uses (1 keeps a plain one-process run)."""
        select = self.query_one("#gpus", Select)
        select.set_options([(f"{n} GPU{'s' if n > 1 else ''}", n) for n in range(1, count + 1)])
        select.value = 1
        select.display = True

    @property
    def state(self) -> AppState:
        return getattr(self.app, "state", None) or AppState()

    # --- the app state -> the form --------------------------------------------------------------
    def _state_changed(self, *_: object) -> None:
        state = self.state
        with self.prevent(Input.Changed, Select.Changed):
            for f in FIELDS:
                self._show_field(f, state)
        if state.path != self._path:  # a preset was loaded or saved: both boxes name it
            self._path = state.path
            for box in self.query("#load-path, #save-path").results(Input):
                if box is not self.focused:
                    box.value = str(state.path or "")
        self._fill_keys(state)
        self.validate_form()

    def _show_field(self, f: Field, state: AppState) -> None:
        """Put the state's value in a field, unless it is being typed in or already means the same."""
        widget = self.query_one(f"#{f.wid}")
        text = shown_text(state, f)
        if isinstance(widget, Select):
            options = [str(c) for c in f.choices]
            widget.value = text if text in options else options[0]
        elif widget is not self.focused and field_value(f, widget.value) != field_value(f, text):
            widget.value = text

    def _fill_keys(self, state: AppState) -> None:
        """The key/value list: every preset key, plus any unknown key the preset holds."""
        table = self.query_one("#kv", DataTable)
        keys = list(preset_keys()) + [k for k in _data_leaves(state.data) if k not in preset_keys()]
        for key in keys:
            present = has_key(state.data, key)
            value = lookup(state.data, key) if present else default_of(key)
            mark = "*" if present and value != default_of(key) else ""
            text = toml_text(value) if value is not None else ""
            if not present and any(key.startswith(t + ".") and not has_key(state.data, t) for t in OPTIONAL_TABLES):
                text = f"- (no [{key.rsplit('.', 1)[0]}]: setting a key adds it)"
            if key not in table.rows:  # cells are Text: a value like [1, 2] is not markup
                table.add_row(mark, key, Text(text), key=key)
                continue
            if str(table.get_cell(key, "value")) != text:
                table.update_cell(key, "value", Text(text))
            if table.get_cell(key, "mark") != mark:
                table.update_cell(key, "mark", mark)
        wanted = set(keys)
        for gone in [k for k in table.rows if str(k.value) not in wanted]:  # an unknown key was removed
            table.remove_row(gone)

    # --- the form -> the app state ------------------------------------------------------------------
    @on(Input.Changed)
    @on(Select.Changed)
    def _changed(self, event: Input.Changed | Select.Changed) -> None:
        f = BY_WID.get(event.control.id or "")
        if f is not None:
            self._apply_field(f)

    def _apply_field(self, f: Field) -> None:
        widget = self.query_one(f"#{f.wid}")
        if isinstance(widget, Select):
            value: Any = int(str(widget.value)) if f.kind == "int" else widget.value
            remove = False
        else:
            remove, value = field_value(f, widget.value)
        data = self.state.data
        current = lookup(data, f.key) if has_key(data, f.key) else default_of(f.key)
        if remove:
            if has_key(data, f.key):
                self.post_message(PresetEdited(f.key, remove=True))
        elif value != current or type(value) is not type(current):
            self.post_message(PresetEdited(f.key, value))

    # --- validation ---------------------------------------------------------------------------
    def validate_form(self) -> RunConfig | None:
        """Validate the working preset; put its error next to the field or key it names."""
        state = self.state
        errors: dict[str, str] = {}
        general = ""
        try:
            cfg: RunConfig | None = state.config()
        except ConfigError as err:
            cfg = None
            key = error_key(err)
            if key in BY_KEY:
                errors[key] = error_text(err)
            elif key and key == self.kv_key:
                errors["kv"] = error_text(err)
            else:
                general = error_text(err)
        self._field_errors(errors)
        self._status(self._status_text(state, cfg, general), error=cfg is None or bool(state.problem))
        return cfg

    @staticmethod
    def _status_text(state: AppState, cfg: RunConfig | None, general: str) -> str:
        lines = []
        if state.problem:
            lines.append(state.problem)
        changes = state.changes
        where = f"to {state.path}" if state.path else "(no preset loaded: ctrl+s saves them)"
        listed = ", ".join(changes[:10]) + (f" and {len(changes) - 10} more" if len(changes) > 10 else "")
        summary = f"{len(changes)} change(s) {where}" + (f": {listed}" if changes else "")
        if cfg is not None:
            lines.append(f"valid  |  {summary}")
        else:
            lines.append(general or f"fix the key marked in red  |  {summary}")
        lines += list(state.flags)
        return "\n".join(lines)

    def _field_errors(self, errors: dict[str, str]) -> None:
        for f in FIELDS:
            widget = self.query_one(f"#e-{f.wid}", Static)
            widget.update(errors.get(f.key, ""))
            widget.set_class(f.key not in errors, "hidden")
            self.query_one(f"#{f.wid}").set_class(f.key in errors, "invalid")
        kv_error = self.query_one("#kv-error", Static)
        kv_error.update(errors.get("kv", ""))
        kv_error.set_class("kv" not in errors, "hidden")
        self.query_one("#kv-edit").set_class("kv" in errors, "invalid")

    def _status(self, text: str, error: bool = False) -> None:
        status = self.query_one("#config-status", Static)
        status.update(text)
        status.set_class(error, "error")

    # --- keys ---------------------------------------------------------------------------------
    def after_typing(self, callback: Callable[[], Any]) -> None:
        """Run `callback` once the keys already sent to the focused field are in it, and its
        value is in the app state (ctrl+s right after typing saves what was typed)."""
        widget = self.focused  # now: focus may move on before flush runs

        def flush() -> None:
            f = BY_WID.get(getattr(widget, "id", None) or "")
            if f is not None:
                self._apply_field(f)  # posts PresetEdited to the app before...
            self.app.call_later(callback)  # ...this, so the app applies it first
        (widget or self).call_later(flush)

    def check_action(self, action: str, parameters: tuple[Any, ...]) -> bool | None:
        if action == "submit":  # enter: ours in text fields and the key list; elsewhere the widget's
            return is_text_field(self.focused) or self.focused is self.query_one("#kv", DataTable)
        return super().check_action(action, parameters)

    def action_submit(self) -> None:
        focused = self.focused
        wid = getattr(focused, "id", "")
        if wid in ("load-path", "save-path", "kv-edit"):  # enter submits the box and leaves it
            self.after_typing({"load-path": self.load_typed, "save-path": self.save, "kv-edit": self.apply_kv}[wid])
            self.go_home()
        elif wid == "kv":
            table = self.query_one("#kv", DataTable)
            if table.row_count:
                self.edit_key(str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value))
        else:
            self.app.action_focus_next()

    def action_focus_load(self) -> None:
        box = self.query_one("#load-path", Input)
        self.set_focus(box)
        box.selection = Selection(0, len(box.value))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "load":
            self.load_typed()
        elif event.button.id == "save":
            self.save()
        elif event.button.id == "start":
            self.start()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.edit_key(str(event.row_key.value))

    # --- load, key/value editor -----------------------------------------------------------------
    def load_typed(self) -> None:
        path = self.query_one("#load-path", Input).value.strip()
        if not path:
            self._status("type the path of a preset to load first, e.g. presets/quickstart.toml", error=True)
            return
        self.query_one("#save-path", Input).value = path
        self.post_message(LoadPreset(Path(path)))

    def edit_key(self, key: str) -> None:
        """Put `key = value` in the editor and go there."""
        state = self.state
        value = state.value(key) if key in preset_keys() else lookup(state.data, key)
        editor = self.query_one("#kv-edit", Input)
        editor.value = f"{key} = {toml_text(value) if value is not None else ''}"
        self.set_focus(editor)
        editor.selection = Selection.cursor(len(editor.value))

    def apply_kv(self) -> None:
        """Apply `key = value` from the editor; `key =` removes the key (the default applies)."""
        editor = self.query_one("#kv-edit", Input)
        try:
            key, text = parse_assignment(editor.value)
        except ConfigError as err:
            self.kv_key = ""
            self._field_errors({"kv": error_text(err)})
            return
        self.kv_key = key
        if text:
            self.post_message(PresetEdited(key, parse_toml_value(text)))
        else:
            self.post_message(PresetEdited(key, remove=True))
        table = self.query_one("#kv", DataTable)
        if key in table.rows:
            table.move_cursor(row=table.get_row_index(key))

    # --- save and start -----------------------------------------------------------------------
    def action_save(self) -> None:
        self.after_typing(self.save)

    def action_start(self) -> None:
        self.after_typing(self.start)

    def save(self) -> None:
        """Write the working preset to the save box's file (asks before replacing a file)."""
        target = self.query_one("#save-path", Input).value.strip() or (str(self.state.path or ""))
        if not target:
            self._status("type a file name to save to first (the box next to Save)", error=True)
            return
        if self.validate_form() is None:
            self.notify("the preset is not valid yet: fix the key marked in red", severity="error", timeout=3)
            return
        path = Path(target)
        if path.exists():
            self.app.push_screen(overwrite_modal(target, self.state.changes),
                                 lambda choice: self._write(path) if choice == "overwrite" else None)
        else:
            self._write(path)

    def _write(self, path: Path) -> None:
        try:
            text = preset_text(self.state)
            write_atomic(path, text)
        except (OSError, ValueError) as err:
            self._status(f"could not write {path}: {err}", error=True)
            return
        self.post_message(PresetSaved(path, text))
        self.notify(f"saved {path}", timeout=3, markup=False)

    def start(self) -> None:
        """Start a run of the working preset (written fully resolved under runs/.presets/)."""
        cfg = self.validate_form()
        if cfg is None:
            self.notify("the preset is not valid yet", severity="error", timeout=3)
            return
        runs_dir = Path(getattr(self.app, "runs_dir", "runs"))
        name = unique_name(runs_dir, cfg.name)
        preset = runs_dir / ".presets" / f"{name}.toml"
        try:
            write_atomic(preset, dumps(cfg))  # fully resolved: the run repeats exactly
        except OSError as err:
            self._status(f"could not write {preset}: {err}", error=True)
            return
        gpus = self.query_one("#gpus", Select)
        self.post_message(StartRun(preset, name, int(gpus.value) if gpus.display else 1))


def _data_leaves(data: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in data.items():
        key = prefix + k
        if isinstance(v, dict) and key not in preset_keys():
            out += _data_leaves(v, key + ".")
        else:
            out.append(key)
    return out


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file, so a failed write leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def unique_name(runs_dir: Path, name: str) -> str:
    """`name`, or `name-2`, `name-3`... when a run folder of that name exists already."""
    candidate, i = name, 2
    while (runs_dir / candidate).exists():
        candidate, i = f"{name}-{i}", i + 1
    return candidate
