"""One run per output folder at a time.

Two runs writing the same folder (a cron job that overlaps the previous night's) would do
the same images twice. The first run holds an exclusive lock on ``OUTPUT/.rvgen.lock`` for
its whole life; a second run either says so and exits 75 (EX_TEMPFAIL: try again later) or,
when asked, says whom it waits for and waits for the lock. The lock is the operating
system's (``flock``), so it goes away with the process however that ends, kill -9 included:
there is no stale lock to clear.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from rvgen.errors import LockedError

LOCK_NAME = ".rvgen.lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt


class OutputLock:
    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def _try(self, wait: bool) -> bool:
        assert self._fd is not None
        try:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            else:
                msvcrt.locking(self._fd, msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            pid = ""
        return f" (pid {pid})" if pid.isdigit() else ""

    def acquire(self, wait: bool = False, on_wait: Callable[[str], None] | None = None) -> OutputLock:
        """Take the lock, or raise :class:`LockedError`; with ``wait``, wait for it instead,
        first telling ``on_wait`` in one line whom it waits for (once, and only if it must)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not self._try(False):
            holder = self.holder()
            if wait and on_wait is not None:
                on_wait(f"waiting for another rvgen run{holder} to finish writing to {self.path.parent}")
            if not (wait and self._try(True)):
                os.close(self._fd)
                self._fd = None
                raise LockedError(
                    f"another rvgen run{holder} is writing to {self.path.parent}; "
                    "exiting (use --wait to wait for it)"
                )
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode())
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
