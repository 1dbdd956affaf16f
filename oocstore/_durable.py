"""Durability primitives: positioned writes, fsync, directory fsync, preallocation, atomic replace.

These are the only places oocstore calls ``os.fsync``; a full disk becomes
:class:`DiskFullError` here, at the write that failed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path

import numpy as np

from .errors import DiskFullError, FileTooLargeError

__all__ = [
    "atomic_write_bytes",
    "fsync_dir",
    "fsync_fd",
    "open_nofollow",
    "preallocate",
    "pwrite_all",
]

_NOSPACE = {errno.ENOSPC, errno.EDQUOT}


def _raise_disk_full(err: OSError, path: Path, needed: int | None = None) -> None:
    if err.errno in _NOSPACE:
        free = free_bytes(path.parent) if needed is not None else None
        raise DiskFullError(os.fspath(path), needed=needed, free=free) from err
    if err.errno == errno.EFBIG:
        msg = (
            f"{os.fspath(path)!r} would outgrow the largest file its file system holds; the "
            "store keeps its last commit. Write it on a file system that holds larger files, "
            "or split the data over several stores"
        )
        raise FileTooLargeError(errno.EFBIG, msg, os.fspath(path)) from err
    raise err


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """Open ``path`` without following a symlink planted in its place.

    Read-only opens are non-blocking: a FIFO planted in a store would otherwise block the
    open until some process writes to it (callers then refuse anything but a regular file;
    on a regular file ``O_NONBLOCK`` changes nothing).
    """
    if flags & os.O_ACCMODE == os.O_RDONLY:
        flags |= getattr(os, "O_NONBLOCK", 0)
    return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)


def pwrite_all(fd: int, data: np.ndarray | bytes | memoryview, offset: int, path: Path) -> None:
    """Write all of ``data`` at ``offset``; a short write is continued, ENOSPC is DiskFullError."""
    if isinstance(data, np.ndarray):
        if data.nbytes == 0:
            return
        # A byte view: memoryview refuses datetime64 and zero-size shapes.
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    view = memoryview(data).cast("B")  # type: ignore[arg-type]
    done = 0
    total = len(view)
    try:
        while done < total:
            # Linux writes at most 0x7ffff000 bytes per call.
            n = os.pwrite(fd, view[done : done + 0x40000000], offset + done)
            if n == 0:
                raise OSError(errno.EIO, "pwrite wrote nothing", os.fspath(path))
            done += n
    except OSError as err:
        _raise_disk_full(err, path)


def fsync_fd(fd: int, path: Path) -> None:
    """Make a file's data durable (``fdatasync`` where it exists: sizes are data too)."""
    try:
        if hasattr(os, "fdatasync"):
            os.fdatasync(fd)
        else:  # pragma: no cover - macOS
            os.fsync(fd)
    except OSError as err:
        _raise_disk_full(err, path)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (new names, renames) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as err:  # some filesystems refuse fsync on directories
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def preallocate(fd: int, start: int, length: int, path: Path) -> bool:
    """Reserve ``[start, start+length)`` with real blocks, so a full disk fails here.

    Returns False where the filesystem cannot allocate (the caller then checks free space
    and extends the file with ``ftruncate``, writing with ``pwrite`` so that a full disk is
    still an ``OSError``, never a ``SIGBUS``).
    """
    if length <= 0:
        return True
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, start, length)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                _raise_disk_full(err, path, needed=length)
        else:
            return True
    free = free_bytes(path.parent)
    size = os.fstat(fd).st_size
    needed = start + length - size
    if free is not None and needed > free:
        raise DiskFullError(os.fspath(path), needed=needed, free=free)
    if start + length > size:
        try:
            os.ftruncate(fd, start + length)
        except OSError as err:
            _raise_disk_full(err, path)
    return False


def free_bytes(path: Path) -> int | None:
    """Free bytes for an unprivileged user on the filesystem holding ``path``."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: temp file, fsync, rename, directory fsync."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            pwrite_all(fd, data, 0, tmp)
            fsync_fd(fd, tmp)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
