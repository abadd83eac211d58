"""Suite-wide set-up: under pytest-xdist each worker gets its share of the CPU's threads.

The README runs the suite with `-n auto` (one worker per core). torch's default is one thread per
core *per process*, so two workers (and the engine processes they start, which inherit the
environment) on a 2-core box would each run two threads: over-subscribed BLAS slows steps 5-20x
(docs/benchmarks.md, "Thread over-subscription"). This runs before any test module imports torch.
"""
from __future__ import annotations

import os
import sys


def _share_threads() -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers <= 1 or "OMP_NUM_THREADS" in os.environ:  # serial run, or the user chose
        return
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    os.environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    if "torch" in sys.modules:  # a plugin imported it first: the environment is read too late
        sys.modules["torch"].set_num_threads(int(threads))


_share_threads()
