"""Typed messages: one per background result, and the requests screens send up to the app.

Attributes flow down (the app sets reactive attributes, `state` above all, that screens watch);
results and requests flow up as these messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.message import Message

from .runs import RunSummary


class CatalogLoaded(Message):
    """`fbt-engine models --json` answered."""

    def __init__(self, models: list[dict[str, Any]]) -> None:
        super().__init__()
        self.models = models


class EngineFailed(Message):
    """An engine command failed; `what` says which (catalog, preview)."""

    def __init__(self, what: str, message: str, hint: str = "") -> None:
        super().__init__()
        self.what = what
        self.message = message
        self.hint = hint


class PreviewLoaded(Message):
    """`fbt-engine fuse ... --json` answered for the request identified by `key`."""

    def __init__(self, key: tuple[Any, ...], data: dict[str, Any]) -> None:
        super().__init__()
        self.key = key
        self.data = data


class RunsScanned(Message):
    """The runs folder was scanned."""

    def __init__(self, runs: list[RunSummary]) -> None:
        super().__init__()
        self.runs = runs


class PairChosen(Message):
    """The user picked a model as teacher or student (role is "teacher" or "student")."""

    def __init__(self, role: str, name: str) -> None:
        super().__init__()
        self.role = role
        self.name = name


class PresetEdited(Message):
    """Set one preset key in the app state (`remove`: drop it, so the engine default applies)."""

    def __init__(self, key: str, value: Any = None, remove: bool = False) -> None:
        super().__init__()
        self.key = key
        self.value = value
        self.remove = remove


class LoadPreset(Message):
    """Load a preset file into the app state (the app asks first when it would replace a picked pair)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path


class PresetSaved(Message):
    """The working preset was written to `path` as `text`: that file is now the loaded one."""

    def __init__(self, path: Path, text: str) -> None:
        super().__init__()
        self.path = path
        self.text = text


class StartRun(Message):
    """Start `fbt-engine run PRESET` under this run name (on `gpus` local GPUs when above 1)."""

    def __init__(self, preset: Path, name: str, gpus: int = 1) -> None:
        super().__init__()
        self.preset = preset
        self.name = name
        self.gpus = gpus


class OpenRun(Message):
    """Show a run on the run screen: replay it, resume it, or attach to it (`how`)."""

    def __init__(self, run: RunSummary, how: str) -> None:
        super().__init__()
        self.run = run
        self.how = how  # replay | resume | attach


class RunEnded(Message):
    """The watched run's stream ended (process exited, final event read, or tail gave up)."""

    def __init__(self, name: str, status: str) -> None:
        super().__init__()
        self.name = name
        self.status = status
