"""Fault injection for the fault suite (tests/faults): kill or fail the engine at a named point.

`FBT_FAULT="POINT[@N]=ACTION[,POINT[@N]=ACTION...]"` makes the N-th passage (default 1) through
`point(POINT)` perform ACTION:

    kill     SIGKILL this process (a power cut, the OOM killer, `kill -9`)
    enospc   raise OSError(ENOSPC) (the disk filled up during a write)
    oom      raise torch.OutOfMemoryError (CUDA ran out of memory)
    error    raise RuntimeError (a bug)
    hang     sleep forever (a deadlock, a stuck collective: the watchdog's case, see ranks.py)

`FBT_FAULT_RANK=R` limits the plan to the process whose torchrun `RANK` is R (one rank of a job
fails while the others go on).

Points (see docs/reliability.md): `run.folder` (run folder made, before data), `teacher.step`,
`distill.step` (after each optimiser step), `phase.distill` (after the distill `phase` event),
`write:<file name>` (a temporary file fully written, before it replaces the target, e.g.
`write:last.pt`, `write:teacher-last.pt`, `write:best.pt`, `write:teacher.safetensors`,
`write:student.safetensors`), `saved:<file name>` (right after the replace), `finish` (before the
`finished` event). Unset (every normal run), `point` costs one dict lookup.
"""

from __future__ import annotations

import errno
import os
import signal

_PLAN: dict[str, tuple[int, str]] = {}
_SEEN: dict[str, int] = {}


def _parse(spec: str) -> dict[str, tuple[int, str]]:
    plan = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        where, _, action = item.partition("=")
        name, _, nth = where.partition("@")
        plan[name] = (int(nth or 1), action or "kill")
    return plan


if os.environ.get("FBT_FAULT_RANK", os.environ.get("RANK", "0")) == os.environ.get("RANK", "0"):
    _PLAN.update(_parse(os.environ.get("FBT_FAULT", "")))


def point(name: str) -> None:
    """Mark a place where a fault may be injected (a no-op unless FBT_FAULT names it)."""
    if not _PLAN or name not in _PLAN:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    nth, action = _PLAN[name]
    if _SEEN[name] != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "hang":
        import time
        while True:
            time.sleep(3600)
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if action == "oom":
        import torch
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by FBT_FAULT)")
    raise RuntimeError(f"fault injected at {name} by FBT_FAULT")


def configure(spec: str) -> None:
    """Replace the plan (in-process tests); an empty spec turns injection off."""
    _PLAN.clear()
    _SEEN.clear()
    _PLAN.update(_parse(spec))
