"""Advisory file locks (flock): one writer per run folder, one trainer per shared teacher file.

The kernel drops a flock when its process dies, so a SIGKILLed run never leaves a stale lock.
The lock file holds the owner's pid, for the message a second process prints.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Callable

from .errors import TrainingError


class FileLock:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if free; returns False when another process holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def wait(self, note: Callable[[str], None], should_stop: Callable[[], bool], what: str,
             poll_s: float = 1.0) -> bool:
        """Block until the lock is ours (True) or a stop was requested (False), saying who we wait for."""
        if self.try_acquire():
            return True
        note(f"waiting: another process (pid {self.holder()}) is {what}")
        while not should_stop():
            time.sleep(poll_s)
            if self.try_acquire():
                return True
        return False

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_run_folder(run_dir: Path) -> FileLock:
    """The run folder's lock, or a TrainingError when another process is using the folder."""
    lock = FileLock(run_dir / ".lock")
    if not lock.try_acquire():
        raise TrainingError(f"run folder {str(run_dir)!r} is in use by another fbt-engine process (pid {lock.holder()})",
                            f"wait for it to end, or stop it first (kill -INT {lock.holder()}); two processes must "
                            "never write one run folder")
    return lock
