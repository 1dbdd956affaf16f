"""Copy-on-write maps of a store's files, so ``torch.from_numpy`` gets writable views.

A store's memory-mapped fields are read-only; each field file is mapped again here
``MAP_PRIVATE`` (``np.memmap(mode="c")``): the same page-cache pages until someone writes, so a
sample is a view that costs no copy and a tensor written in place changes only this process's
page, never the file. The file is opened by its path without following symlinks, and on Linux
checked to be the very file the store mapped.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Reader = Callable[[int], np.ndarray]
"""One sample of a field by index."""


def _mapped_file(address: int) -> tuple[int, int] | None:
    """``(device, inode)`` of the file mapped at ``address``, from ``/proc/self/maps``."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                lo, hi = (int(v, 16) for v in parts[0].split("-"))
                if lo <= address < hi:
                    major, minor = (int(v, 16) for v in parts[3].split(":"))
                    return os.makedev(major, minor), int(parts[4])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _private_map(array: Any, path: Path | None) -> np.ndarray | None:
    """A copy-on-write map of the file behind a read-only ``np.memmap``; None if there is none.

    ``path`` is where the store keeps the array's file (the memmap may not know its name).
    """
    if not isinstance(array, np.memmap) or array.size == 0 or not array.flags.c_contiguous:
        return None
    where = array.filename or path
    if where is None:
        return None
    try:
        fd = os.open(where, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None
        # On Linux, check it is the very file the store mapped, not one put there since.
        maps = Path("/proc/self/maps").exists()
        if maps and _mapped_file(array.ctypes.data) != (st.st_dev, st.st_ino):
            return None
        try:
            return np.memmap(f, dtype=array.dtype, mode="c", offset=array.offset, shape=array.shape)
        except (OSError, ValueError):  # the file shrank: read through the store instead
            return None


def _writable(value: Any) -> np.ndarray:
    arr = np.asarray(value)
    return arr if arr.flags.writeable else arr.copy()


def _dense_reader(array: Any, path: Path | None) -> Reader:
    mapped = _private_map(array, path)
    if mapped is not None:
        return lambda i: mapped[i, ...]  # "..." keeps a 0-d sample an array (a view)
    return lambda i: _writable(array[i])
