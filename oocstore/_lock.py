"""The single-writer lock: an ``flock`` the kernel releases when the holder dies."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ._durable import open_nofollow
from .errors import StoreLockedError

__all__ = ["StoreLock"]


class StoreLock:
    """An exclusive, non-blocking lock on ``path`` that records the holder's pid."""

    def __init__(self, path: Path, store: Path) -> None:
        self.path = path
        self.store = store
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`StoreLockedError` naming the holder's pid."""
        fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = None
            with contextlib.suppress(OSError, ValueError):
                pid = int(os.pread(fd, 32, 0).decode().strip() or 0) or None
            os.close(fd)
            raise StoreLockedError(os.fspath(self.store), pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays: unlinking it would race with a new holder)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None
