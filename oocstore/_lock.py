"""The single-writer lock: an ``flock`` the kernel releases when the holder dies."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

from ._durable import open_nofollow
from .errors import CorruptStoreError, StoreLockedError, StorePermissionError

__all__ = ["NoLock", "StoreLock", "refused_write"]


def refused_write(err: OSError, path: Path) -> StorePermissionError:
    """The error for a store or lock file at ``path`` this process may not create or write."""
    try:
        owner: int | None = os.stat(path, follow_symlinks=False).st_uid
    except OSError:
        owner = None
    if err.errno == errno.EROFS:
        reason = "the file system is read-only"
        hint = "write the store on a writable file system (it can still be opened read-only)"
    elif owner is not None and owner != os.geteuid():
        reason = f"it belongs to another user (uid {owner}) and is not writable by this one"
        hint = (
            "write as that user, or have them remove it if it is a lock file (it holds no "
            "data) once nothing writes the store"
        )
    else:
        reason = f"the directory {os.fspath(path.parent)!r} is not writable"
        hint = "choose a directory you can write to, or ask its owner for write permission"
    return StorePermissionError(os.fspath(path), f"{reason} ({err.strerror})", hint=hint)


class StoreLock:
    """An exclusive, non-blocking lock on ``path`` that records the holder's pid."""

    def __init__(self, path: Path, store: Path) -> None:
        self.path = path
        self.store = store
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`StoreLockedError` naming the holder's pid."""
        where = os.fspath(self.path)
        while True:
            try:
                fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise refused_write(err, self.path) from None
                if err.errno != errno.ELOOP:
                    raise
                problem = "the lock file is a symlink (never followed); remove it if nothing writes"
                raise CorruptStoreError(where, problem) from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise CorruptStoreError(where, "the lock file is not a regular file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = None
                with contextlib.suppress(OSError, ValueError):
                    pid = int(os.pread(fd, 32, 0).decode().strip() or 0) or None
                os.close(fd)
                raise StoreLockedError(os.fspath(self.store), pid) from None
            if self._is_current(fd):
                break
            # The holder removed the file between our open and flock: lock the new one.
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def _is_current(self, fd: int) -> bool:
        """Is ``fd`` still the file at ``self.path`` (not one unlinked by its last holder)?"""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def release(self, *, remove: bool = False) -> None:
        """Drop the lock; with ``remove``, delete its file first (while still holding it).

        Removing is safe because :meth:`acquire` checks, once it holds a lock, that the file
        it locked is still the one at the path.
        """
        if self._fd is not None:
            with contextlib.suppress(OSError):
                if remove:
                    os.unlink(self.path)
                else:
                    os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None


class NoLock:
    """A store at a URL has no flock: nothing to take (see docs/dask.md)."""

    def acquire(self) -> None:
        """Nothing to lock."""

    def release(self, *, remove: bool = False) -> None:
        """Nothing to unlock."""
