"""Training methods, one module per method: `fbt_engine/methods/<name>.py` defines `method = <name>`.

The registry is the package itself: every public module here (no leading `_`) is one method, named
after its file, whose `Method` subclass is registered with `@register`. Listing the names needs no
torch (`names()` reads the folder), so config validation and the TUI stay light; `get(name)` imports
the method's module on first use.

Adding a method: copy `kd.py` to `<name>.py`, change the class (its terms, what it builds, what
trains) and add `tests/engine/methods/test_<name>.py`. Nothing else lists methods.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ._base import Method

# The order lists show: no distillation, the paper's baselines as its table orders them, then FBT.
# A method not named here is listed after these, alphabetically.
DISPLAY_ORDER = ("scratch", "kd", "fitnet", "crd", "dkd", "dist", "cc", "rkd", "ofa", "fbt")

_REGISTRY: dict[str, type["Method"]] = {}


def names() -> tuple[str, ...]:
    """Every method's name, in display order (reads the package folder; imports nothing)."""
    found = [m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_")]
    rank = {n: i for i, n in enumerate(DISPLAY_ORDER)}
    return tuple(sorted(found, key=lambda n: (rank.get(n, len(rank)), n)))


def register(cls: type["Method"]) -> type["Method"]:
    """Class decorator of a method module: registers `cls` under its module's file name."""
    name = cls.__module__.rsplit(".", 1)[-1]
    cls.name = name
    _REGISTRY[name] = cls
    return cls


def get(name: str) -> type["Method"]:
    """The Method class of `name`; an unknown name is a ConfigError with a did-you-mean."""
    known = names()
    if name not in known:
        near = difflib.get_close_matches(name, known, n=1)
        raise ConfigError(f"unknown method {name!r}",
                          (f"did you mean `{near[0]}`? " if near else "") + f"use one of: {', '.join(known)}")
    if name not in _REGISTRY:
        importlib.import_module(f"{__name__}.{name}")
    if name not in _REGISTRY:
        raise ConfigError(f"fbt_engine/methods/{name}.py registers no method",
                          "decorate its Method subclass with @register")
    return _REGISTRY[name]


def all_methods() -> dict[str, type["Method"]]:
    """Every Method class by name, in display order (imports each method's module)."""
    return {n: get(n) for n in names()}


__all__ = ["DISPLAY_ORDER", "names", "register", "get", "all_methods"]
