"""Stdlib-only timing helpers shared by scripts that run in different virtualenvs (ours and OFA-KD's
timm 0.6.5 one), so both sides of a comparison are timed by the same code."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def median(v: list[float]) -> float:
    return statistics.median(v) if v else float("nan")


def time_closures(fns: dict[str, Callable[[], object]], steps: int) -> dict[str, float]:
    """Median seconds of each closure: one warm-up call each, then `steps` rounds of every closure in turn."""
    for fn in fns.values():
        fn()
    res: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(steps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            res[k].append(time.perf_counter() - t0)
    return {k: median(v) for k, v in res.items()}
