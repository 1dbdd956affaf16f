"""Reading a store's own files safely: one copy each of the checks every backend needs.

A store's files are opened without following symlinks (a link planted in a store is never
followed) and must be regular files; what a file holds is bounded before it is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from .._durable import open_nofollow
from ..errors import CorruptStoreError

__all__ = ["open_regular", "pread_into", "read_bounded"]


def open_regular(path: Path, flags: int = os.O_RDONLY, what: str = "file") -> int:
    """Open ``path`` (never through a symlink) and return its descriptor; CorruptStoreError
    naming ``what`` if it is missing, a link, or not a regular file."""
    where = os.fspath(path)
    try:
        fd = open_nofollow(path, flags)
    except FileNotFoundError:
        raise CorruptStoreError(where, f"{what} is missing") from None
    except OSError as err:  # ELOOP: a symlink planted in the store
        raise CorruptStoreError(where, f"cannot open the {what} ({err.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CorruptStoreError(where, f"{what} is not a regular file")
    return fd


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a small regular file (at most ``limit``); CorruptStoreError otherwise."""
    fd = open_regular(path, what=what)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise CorruptStoreError(os.fspath(path), f"{what} is {size:,} bytes, more than allowed")
        return os.pread(fd, size + 1, 0)
    finally:
        os.close(fd)


def pread_into(fd: int, out: np.ndarray, offset: int, where: str) -> None:
    """Fill contiguous ``out`` with the file's bytes from ``offset``; CorruptStoreError if the
    file ends first."""
    view = memoryview(out.reshape(-1).view(np.uint8)) if out.size else memoryview(b"")  # type: ignore[arg-type]
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise CorruptStoreError(where, "file ends before the rows it should hold (truncated?)")
        done += n
