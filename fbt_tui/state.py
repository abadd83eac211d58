"""The one app state: the working preset (what a run will train) and the file it came from.

The header, Preview and Configure all read `app.state`; nothing else holds the pair, the input
size or the model kwargs. Screens ask for changes with messages (PairChosen, PresetEdited,
LoadPreset) and the app applies the pure transitions below, so a pair picked on the catalog, an
input size typed in Preview and a field edited in Configure are one value seen everywhere.

A model change clears what belonged to the old model (its `kwargs` and `checkpoint`), says so in
`flags`, and keeps the cleared values aside: picking that model again brings them back.

Pure data and stdlib; `fbt_engine.config` (torch-free) is imported on first use, not at start-up,
and tomlkit only when a preset is written.
"""

from __future__ import annotations

import copy
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

if typing.TYPE_CHECKING:  # pragma: no cover
    from fbt_engine.config import RunConfig

ROLES = ("teacher", "student")
MODEL_OWNED = ("kwargs", "checkpoint")  # [teacher]/[student] keys that only fit the model they were set for
OPTIONAL_TABLES = ("teacher.train",)  # tables whose presence means something even when empty
SKIPPED = ("student.train",)  # in the dataclass, but only the teacher has a training phase
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


# --- the preset's keys, read from the config dataclasses ------------------------------------

@dataclass(frozen=True)
class KeySpec:
    """One preset key: its dotted name, its default and its value kind."""

    key: str
    default: Any
    kind: str  # str | int | float | bool | list | table (a free-form inline table: kwargs, weights)


def _kind(tp: Any) -> str:
    origin = typing.get_origin(tp) or tp
    return {str: "str", int: "int", float: "float", bool: "bool", list: "list", dict: "table"}.get(origin, "str")


def _walk_specs(cls: type, prefix: str) -> typing.Iterator[KeySpec]:
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        key = prefix + f.name
        tp = hints[f.name]
        optional = typing.get_origin(tp) in (typing.Union, types.UnionType)
        inner = [a for a in typing.get_args(tp) if a is not type(None)] if optional else [tp]
        if key in SKIPPED:
            continue
        if is_dataclass(inner[0]):
            yield from _walk_specs(inner[0], key + ".")
            continue
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        yield KeySpec(key, default, _kind(inner[0]))


@lru_cache(maxsize=1)
def preset_keys() -> dict[str, KeySpec]:
    """Every key a preset may hold, in the dataclasses' order (teacher.train.* included)."""
    from fbt_engine.config import RunConfig

    return {s.key: s for s in _walk_specs(RunConfig, "")}


def is_table_key(key: str) -> bool:
    """True for a dataclass section (train, teacher.train), whose keys are listed one by one."""
    return any(k.startswith(key + ".") for k in preset_keys())


# --- nested plain data ------------------------------------------------------------------------

def lookup(data: dict[str, Any], key: str, default: Any = None) -> Any:
    """`a.b.c` in nested dicts, or `default`."""
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def has_key(data: dict[str, Any], key: str) -> bool:
    marker = object()
    return lookup(data, key, marker) is not marker


def with_value(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of `data` with `key` set (missing tables are made; a non-table in the way is replaced)."""
    out = copy.deepcopy(data)
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)
    return out


def without(data: dict[str, Any], key: str) -> dict[str, Any]:
    """A copy of `data` without `key`; tables it leaves empty go too."""
    out = copy.deepcopy(data)
    parts = key.split(".")
    chain = [out]
    for part in parts[:-1]:
        nxt = chain[-1].get(part)
        if not isinstance(nxt, dict):
            return out
        chain.append(nxt)
    chain[-1].pop(parts[-1], None)
    for depth in range(len(parts) - 1, 0, -1):
        if chain[depth]:
            break
        del chain[depth - 1][parts[depth - 1]]
    return out


def leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flat `{dotted key: value}`; free-form tables (kwargs, loss.weights) stay one value."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = prefix + k
        if isinstance(v, dict) and key not in preset_keys():
            out.update(leaves(v, key + "."))
            if not v:
                out[key] = {}
        else:
            out[key] = v
    return out


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys whose value differs between two presets (added, removed or changed), sorted."""
    a, b = leaves(old), leaves(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, MISSING) != b.get(k, MISSING))


def default_of(key: str) -> Any:
    spec = preset_keys().get(key)
    return None if spec is None else copy.deepcopy(spec.default)


def toml_text(value: Any) -> str:
    """A value as TOML writes it on the right of `key = `: what the key/value editor shows."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        keys = [k if BARE_KEY.fullmatch(str(k)) else json.dumps(str(k)) for k in value]
        return "{" + ", ".join(f"{k} = {toml_text(v)}" for k, v in zip(keys, value.values())) + "}"
    return str(value)


def parse_toml_value(text: str) -> Any:
    """The right side of `key = value` as TOML; a bare word stays a string (like `--set`)."""
    try:
        return tomllib.loads(f"x = {text}")["x"]
    except tomllib.TOMLDecodeError:
        return text


# --- the state ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class AppState:
    """Everything the screens share about what will run. Replace it, never mutate it."""

    data: dict[str, Any] = field(default_factory=dict)  # the working preset, as TOML reads it
    loaded: dict[str, Any] = field(default_factory=dict)  # what `path` held when loaded or saved
    path: Path | None = None  # the preset file, if any
    text: str = ""  # that file's text when loaded or saved (its comments survive a save)
    picked: frozenset[str] = frozenset()  # roles chosen by hand since the last load
    flags: tuple[str, ...] = ()  # what a model change cleared, for the user to look at
    stash: tuple[tuple[str, str, str, Any], ...] = ()  # (role, model, key, value) cleared by a model change
    problem: str = ""  # why the last preset load failed, if it did

    # --- reading ------------------------------------------------------------------------------
    def value(self, key: str) -> Any:
        """The preset's value for `key`, else the engine default."""
        return copy.deepcopy(lookup(self.data, key, default_of(key)))

    @property
    def teacher(self) -> str:
        return str(lookup(self.data, "teacher.model", "") or "")

    @property
    def student(self) -> str:
        return str(lookup(self.data, "student.model", "") or "")

    def model(self, role: str) -> str:
        return self.teacher if role == "teacher" else self.student

    def kwargs(self, role: str) -> dict[str, Any]:
        value = lookup(self.data, f"{role}.kwargs", {})
        return value if isinstance(value, dict) else {}

    @property
    def img_size(self) -> int | None:
        """The input size a run will use, or None while it is not a whole number in range."""
        value = self.value("data.img_size")
        return value if isinstance(value, int) and not isinstance(value, bool) and 8 <= value <= 2048 else None

    @property
    def changes(self) -> list[str]:
        """Keys changed since the preset was loaded (or since the start, without one)."""
        return changed_keys(self.loaded, self.data)

    def config(self, source: str = "") -> RunConfig:
        """The validated RunConfig; raises the engine's ConfigError naming the bad key."""
        from fbt_engine.config import from_dict

        return from_dict(self.data, source=source or self.source)

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "<form>"


def loaded_state(path: Path | None, data: dict[str, Any], text: str = "") -> AppState:
    """The state right after a preset was read (nothing picked, nothing flagged)."""
    return AppState(data=copy.deepcopy(data), loaded=copy.deepcopy(data), path=path, text=text)


def failed_load(state: AppState, problem: str) -> AppState:
    return replace(state, problem=problem)


def choose(state: AppState, role: str, name: str, by_hand: bool = True) -> AppState:
    """`role` becomes `name`; kwargs and checkpoint set for the old model are cleared (and flagged)."""
    old = state.model(role)
    picked = state.picked | {role} if by_hand else state.picked
    if name == old:
        return replace(state, picked=picked)
    data = with_value(state.data, f"{role}.model", name) if name else without(state.data, f"{role}.model")
    stash = list(state.stash)
    flags = [f for f in state.flags if not f.startswith(f"{role}.")]
    for key in MODEL_OWNED:
        full = f"{role}.{key}"
        if has_key(data, full):
            stash = [s for s in stash if s[:3] != (role, old, key)] + [(role, old, key, lookup(data, full))]
            flags.append(f"{full} cleared: {toml_text(lookup(data, full))} was set for {old or 'no model'}")
            data = without(data, full)
    for s in [s for s in stash if s[:2] == (role, name)]:
        data = with_value(data, f"{role}.{s[2]}", s[3])
        stash.remove(s)
    return replace(state, data=data, picked=picked, flags=tuple(flags), stash=tuple(stash))


def edit(state: AppState, key: str, value: Any) -> AppState:
    """Set one key (a model key goes through `choose`)."""
    if key in ("teacher.model", "student.model"):
        return choose(state, key.split(".")[0], value if isinstance(value, str) else toml_text(value))
    return replace(state, data=with_value(state.data, key, value))


def reset(state: AppState, key: str) -> AppState:
    """Remove one key: the engine default applies again."""
    if key in ("teacher.model", "student.model"):
        return choose(state, key.split(".")[0], "")
    return replace(state, data=without(state.data, key))


def pair_conflict(state: AppState, data: dict[str, Any]) -> list[str]:
    """Roles picked by hand whose model differs from the one a preset about to load names."""
    return [r for r in ROLES if r in state.picked and state.model(r)
            and state.model(r) != str(lookup(data, f"{r}.model", "") or "")]


def keep_pair(new: AppState, old: AppState, roles: list[str]) -> AppState:
    """After loading a preset, put back the models picked by hand for `roles`."""
    for role in roles:
        new = choose(new, role, old.model(role))
    return new


def saved_state(state: AppState, path: Path, text: str) -> AppState:
    """The state once the working preset was written to `path` (it becomes the loaded file)."""
    return replace(state, path=path, text=text, loaded=copy.deepcopy(state.data), flags=(), problem="")


# --- writing a preset: only what differs from the defaults, comments kept ----------------------

def preset_text(state: AppState) -> str:
    """The working preset as TOML, edited into the loaded file's text (tomlkit keeps its comments
    and layout): changed keys change, removed keys go, new keys are added only when they differ
    from the engine default. Raises ValueError if the result would not load back the same."""
    import tomlkit  # only writers need it

    from fbt_engine.config import from_dict, to_dict

    doc = tomlkit.parse(state.text) if state.text.strip() else tomlkit.document()
    _sync(doc, state.data, "")
    text = tomlkit.dumps(doc)
    want = to_dict(from_dict(state.data, source=state.source))
    got = to_dict(from_dict(tomllib.loads(text), source="the written preset"))
    if got != want:  # a safety net: never write a preset that means something else
        raise ValueError("the written preset would differ in: " + ", ".join(changed_keys(want, got)))
    return text


def _sync(table: Any, data: dict[str, Any], prefix: str) -> None:
    import tomlkit
    from tomlkit.items import Table

    for k in [k for k in list(table) if k not in data]:
        del table[k]
    for k, v in data.items():
        key = prefix + k
        if isinstance(v, dict) and key not in preset_keys():
            if not isinstance(table.get(k), Table):
                if k in table:
                    del table[k]
                new = tomlkit.table()
                _sync(new, v, key + ".")
                if len(new) or key in OPTIONAL_TABLES or not is_table_key(key):
                    table[k] = new
            else:
                _sync(table[k], v, key + ".")
        elif k in table:
            if _plain(table[k]) != v:
                table[k] = _item(v)
        elif v != default_of(key) or key not in preset_keys():
            table[k] = _item(v)


def _plain(item: Any) -> Any:
    return item.unwrap() if hasattr(item, "unwrap") else item


def _item(value: Any) -> Any:
    import tomlkit

    if isinstance(value, dict):
        inline = tomlkit.inline_table()
        inline.update({k: _item(v) for k, v in value.items()})
        return inline
    return tomlkit.item(value)


__all__ = ["AppState", "KeySpec", "ROLES", "preset_keys", "lookup", "with_value", "without", "leaves",
           "changed_keys", "toml_text", "parse_toml_value", "loaded_state", "failed_load", "choose", "edit",
           "reset", "pair_conflict", "keep_pair", "saved_state", "preset_text", "default_of"]
