"""What the fault suites share: the environment every engine subprocess runs in."""

from __future__ import annotations

import os


def engine_env(fault: str | None = None) -> dict[str, str]:
    """The same environment for a reference run and every faulted one: one thread (so runs are
    bit-identical), no inherited fault plan, and `FBT_FAULT=fault` when given."""
    env = {k: v for k, v in os.environ.items() if k != "FBT_FAULT"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if fault:
        env["FBT_FAULT"] = fault
    return env
