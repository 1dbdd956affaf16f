"""The writer's view of the file: arrays with their extents, and the open file they live in."""

from __future__ import annotations

import bisect
import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..._direct import DirectWriter
from ..._durable import fsync_fd, open_nofollow, pwrite_all
from ...errors import CorruptStoreError, DiskFullError
from ...sizing import BLOCK_BYTES
from .extents import Run, _append_extent, _first_row, _runs_end, _runs_json
from .h5 import _NOSPACE
from .record import HEADER_BYTES

# -- the writer's view of an array ------------------------------------------------------------


class _Array:
    """Writer-side state of one physical array: its dataset and where its rows are."""

    def __init__(
        self,
        name: str,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        layout: str,
        chunk_rows: int = 0,
    ) -> None:
        self.name = name
        self.dtype = np.dtype(dtype)
        self.shape = tuple(shape)
        self.row_nbytes = math.prod(self.shape) * self.dtype.itemsize
        self.layout = layout if self.row_nbytes else "empty"
        self.chunk_rows = chunk_rows if self.layout == "chunked" else 0
        self.allocated = 0  # rows with storage: the dataset's length in HDF5
        self.requested = 0  # rows the writer reserved; chunked arrays grow to it in steps
        self.runs: list[Run] = []  # where rows ``[0, covered)`` are, in row order

    @property
    def covered(self) -> int:
        """Rows the extents cover (a chunked array's last chunk may reach past ``allocated``)."""
        return _runs_end(self.runs)

    def add_extent(self, first: int, rows: int, offset: int) -> None:
        """Append rows at ``offset``: they lengthen the last extent when adjacent to it, and an
        extent that ended joins the run before it when it repeats that run's extents."""
        runs, row = self.runs, self.row_nbytes
        if runs:
            f, r, o, n, s = runs[-1]
            last, at = f + (n - 1) * r, o + (n - 1) * s
            if last + r == first and at + r * row == offset:
                if n == 1:
                    runs[-1][1] += rows
                    return
                # Only a run read from a record ends in several extents: split its last one.
                runs[-1][3:] = [n - 1, s if n > 2 else 0]
                runs.append([last, r + rows, at, 1, 0])
                return
            if n == 1 and len(runs) > 1:
                runs.pop()  # it ended: it may repeat the run before
                _append_extent(runs, f, r, o, row)
        runs.append([first, rows, offset, 1, 0])

    def pieces(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """``(first row, end row, file offset of first row)`` runs covering ``[start, stop)``."""
        if stop <= start:
            return
        runs, row = self.runs, self.row_nbytes
        k = max(bisect.bisect_right(runs, start, key=_first_row) - 1, 0)
        pos = start
        while pos < stop:
            if k >= len(runs) or pos < runs[k][0]:
                msg = f"rows {pos}..{stop} of {self.name!r} have no storage"
                raise IndexError(msg)
            f, r, o, n, s = runs[k]
            j = (pos - f) // r
            while pos < stop and j < n:
                end = min(stop, f + (j + 1) * r)
                yield pos, end, o + j * s + (pos - f - j * r) * row
                pos = end
                j += 1
            k += 1

    def layout_json(self) -> dict[str, Any]:
        """This array's entry in the commit record."""
        out: dict[str, Any] = {"layout": self.layout, "rows": self.allocated}
        if self.layout == "chunked":
            out["chunk_rows"] = self.chunk_rows
        out["extents"] = _runs_json(self.runs)
        return out


@dataclass
class _File:
    """One open HDF5 file being written: h5py's handle, oocstore's descriptor, its arrays."""

    path: Path
    h5: Any  # h5py.File, or _NoH5 for a file whose HDF5 metadata is not to be trusted
    fd: int
    userblock: int
    arrays: dict[str, _Array] = field(default_factory=dict)
    dsync: int | None = None  # the same file opened O_DSYNC, for commit slots
    direct: dict[str, DirectWriter] = field(default_factory=dict)
    """Per array, its rows' writer (long sequential runs go O_DIRECT; see oocstore._direct)."""

    def writer(self, name: str) -> DirectWriter:
        """The writer of array ``name``'s rows (one per array: each writes its own runs)."""
        w = self.direct.get(name)
        if w is None:
            w = self.direct[name] = DirectWriter(self.fd, self.path)
        return w

    def drain(self) -> None:
        """Every row written so far is in the file (before reading, copying or syncing it)."""
        for w in list(self.direct.values()):
            w.drain()

    @property
    def slot(self) -> int:
        return (self.userblock - HEADER_BYTES) // 2

    def write_slot(self, data: bytes, offset: int) -> None:
        """Write a commit slot durably, flushing only its own pages.

        ``O_DSYNC`` makes the write return once its range is on disk; an ``fdatasync`` would
        also flush every row written since the last commit, which a background commit then
        waits for while the writer keeps appending.
        """
        flag = getattr(os, "O_DSYNC", 0)
        if not flag:
            pwrite_all(self.fd, data, offset, self.path)
            fsync_fd(self.fd, self.path)
            return
        if self.dsync is None:
            self.dsync = open_nofollow(self.path, os.O_WRONLY | flag)
        pwrite_all(self.dsync, data, offset, self.path)

    def close(self) -> None:
        for w in list(self.direct.values()):
            with contextlib.suppress(OSError):
                w.close()
        self.direct.clear()
        with contextlib.suppress(Exception):
            self.h5.close()
        for fd in (self.fd, self.dsync):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _write_into(f: _File, arr: _Array, start: int, values: np.ndarray) -> None:
    """Write rows into ``arr`` of file ``f`` at their offsets (its storage is there)."""
    _pwrite_rows(arr, start, values, f.writer(arr.name).pwrite)


def _pwrite_rows(
    arr: _Array,
    start: int,
    values: np.ndarray,
    pwrite: Callable[[np.ndarray, int], None],
) -> None:
    """Write rows of ``arr`` from row ``start`` at the file offsets of its extents."""
    if not arr.row_nbytes or not len(values):
        return
    data = np.ascontiguousarray(values)
    if data.dtype != arr.dtype:
        data = data.astype(arr.dtype)
    buf = data.reshape(-1).view(np.uint8)
    row = arr.row_nbytes
    for lo, hi, off in arr.pieces(start, start + len(data)):
        pwrite(buf[(lo - start) * row : (hi - start) * row], off)


def _chunk_offsets(dset: h5py.Dataset, first_row: int) -> dict[int, tuple[int, int]]:
    """First row -> (file offset, bytes) of every allocated chunk from ``first_row`` on."""
    out: dict[int, tuple[int, int]] = {}

    def visit(info: Any) -> None:
        row = int(info.chunk_offset[0])
        if row >= first_row and info.byte_offset is not None:
            out[row] = (int(info.byte_offset), int(info.size))

    if hasattr(dset.id, "chunk_iter"):  # HDF5 >= 1.14: one pass in C
        dset.id.chunk_iter(visit)
    else:  # each lookup walks the index: quadratic, only for old HDF5
        zeros = (0,) * (dset.ndim - 1)
        for row in range(first_row, dset.shape[0], dset.chunks[0]):
            visit(dset.id.get_chunk_info_by_coord((row, *zeros)))
    return out


def _copy_rows(src_fd: int, src: _Array, dst_fd: int, dst: _Array, rows: int, path: Path) -> None:
    """Copy rows ``[0, rows)`` of ``src`` into ``dst`` (kernel-side where it can)."""
    if not src.row_nbytes or rows <= 0:
        return
    row = src.row_nbytes
    for lo, hi, soff in src.pieces(0, rows):
        for dlo, dhi, doff in dst.pieces(lo, hi):
            _copy_bytes(src_fd, soff + (dlo - lo) * row, dst_fd, doff, (dhi - dlo) * row, path)


def _copy_bytes(src_fd: int, src_off: int, dst_fd: int, dst_off: int, n: int, path: Path) -> None:
    done = 0
    use_kernel = hasattr(os, "copy_file_range")
    while done < n:
        k = 0
        if use_kernel:
            try:
                k = os.copy_file_range(
                    src_fd, dst_fd, min(n - done, 2**30), src_off + done, dst_off + done
                )
            except OSError as err:
                if err.errno in _NOSPACE:
                    raise DiskFullError(os.fspath(path)) from err
                use_kernel = False  # EXDEV, EINVAL, ENOSYS...: copy through memory
                continue
            if k == 0:
                use_kernel = False
                continue
        else:
            block = os.pread(src_fd, min(n - done, BLOCK_BYTES), src_off + done)
            if not block:
                raise CorruptStoreError(os.fspath(path), "the file ends inside committed rows")
            pwrite_all(dst_fd, block, dst_off + done, path)
            k = len(block)
        done += k
