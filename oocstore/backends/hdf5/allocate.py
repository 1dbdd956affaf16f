"""Space for the HDF5 backend's arrays: chunk sizes, datasets created, grown, relocated and
parked, always with real allocation and room kept for HDF5's own metadata."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py

from ..._durable import preallocate
from ...errors import (
    DiskFullError,
    SchemaError,
)
from .files import _Array, _chunk_offsets, _copy_rows, _File
from .h5 import DROPPED_GROUP, _h5_dtype, _writing

if TYPE_CHECKING:
    from .backend import Hdf5Backend

log = logging.getLogger("oocstore.backends.hdf5")

TARGET_CHUNK_BYTES = 4 * 2**20
"""Chunk size aimed at when the length is not declared (whole samples per chunk)."""
MIN_CHUNK_BYTES = 64 * 2**10
MAX_CHUNK_BYTES = 2**32 - 2**20  # HDF5 chunks must stay below 4 GiB
ALIGNMENT = 64
"""Every dataset starts at a multiple of this: NumPy views are aligned for any dtype."""
ALIGNMENT_THRESHOLD = 512  # smaller HDF5 objects (metadata) are packed as usual
MIN_GROWTH_BYTES = 16 * 2**20
MAX_GROWTH_BYTES = 2**30
SPACE_MARGIN = 8 * 2**20
"""Free space kept for HDF5's own metadata: h5py on a full disk raises RuntimeError and can
crash at exit, so oocstore refuses to grow before HDF5 could hit ENOSPC."""


def check_space(b: Hdf5Backend, nbytes: int, path: Path | None = None) -> None:
    """Refuse to grow when the disk cannot take ``nbytes`` plus HDF5's metadata margin."""
    where = path or b.root
    try:
        st = os.statvfs(where.parent)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if nbytes + SPACE_MARGIN > free:
        raise DiskFullError(os.fspath(where), needed=nbytes + SPACE_MARGIN, free=free)


def chunk_rows_for(b: Hdf5Backend, name: str, row: int, capacity: int) -> int:
    chunks = b.options.chunks
    given = (
        chunks.get(name, chunks.get(name.split(".", 1)[0]))
        if isinstance(chunks, Mapping)
        else chunks
    )
    if given is not None:
        rows = int(given)
        if rows < 1 or rows * row > MAX_CHUNK_BYTES:
            msg = f"chunks={rows} rows for {name!r}: chunks need 1 row or more and under 4 GiB"
            raise ValueError(msg)
        return rows
    # About TARGET_CHUNK_BYTES, less for a small array; a multiple of the rows that make
    # whole ALIGNMENT units, so chunks allocated together lie end to end in the file.
    target = min(TARGET_CHUNK_BYTES, max(MIN_CHUNK_BYTES, capacity * row // 8))
    unit = ALIGNMENT // math.gcd(row, ALIGNMENT)
    rows = max(-(-target // (row * unit)), 1) * unit  # whole units, at least the target
    if rows * row > MAX_CHUNK_BYTES:
        rows = max(MAX_CHUNK_BYTES // row, 1)
    if rows * row > MAX_CHUNK_BYTES:
        msg = f"a row of {row:,} bytes does not fit in an HDF5 chunk (4 GiB at most)"
        raise SchemaError(
            msg,
            field=name.split(".", 1)[0],
            hint="declare length= so the HDF5 backend stores it contiguous, or use the npy backend",
        )
    return rows


def dataset(b: Hdf5Backend, f: _File, arr: _Array, rows: int) -> h5py.Dataset:
    """Create ``arr``'s dataset with ``rows`` rows, space allocated now, never filled."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    kwargs: dict[str, Any] = {}
    if arr.layout == "chunked":
        kwargs = {"chunks": (arr.chunk_rows, *arr.shape), "maxshape": (None, *arr.shape)}
    return f.h5.create_dataset(
        arr.name,
        shape=(rows, *arr.shape),
        dtype=_h5_dtype(arr.dtype),
        dcpl=dcpl,
        track_times=False,
        **kwargs,
    )


def create(b: Hdf5Backend, f: _File, arr: _Array, rows: int) -> None:
    """Create ``arr`` in ``f`` with room for ``rows`` rows, space really allocated."""
    if arr.layout == "chunked":
        with _writing(f.path, f"creating {arr.name!r}"):
            dataset(b, f, arr, 0)
        try:
            grow(b, f, arr, rows, rows)
        except BaseException:
            with contextlib.suppress(Exception):  # never committed: nothing maps it
                del f.h5[arr.name]
                f.h5.flush()
            raise
        f.arrays[arr.name] = arr
        return
    nbytes = rows * arr.row_nbytes
    check_space(b, nbytes, f.path)
    with _writing(f.path, f"creating {arr.name!r}"):
        dset = dataset(b, f, arr, rows)
        offset = dset.id.get_offset() if nbytes else None
    try:
        if nbytes:
            if offset is None:
                msg = f"HDF5 allocated no storage for {arr.name!r}"
                raise OSError(errno.EIO, msg, os.fspath(f.path))
            # Real blocks first: a full disk fails here, and the superblock HDF5 writes
            # next never counts bytes the file does not have.
            preallocate(f.fd, int(offset), nbytes, f.path)
    except BaseException:
        with contextlib.suppress(Exception):
            del f.h5[arr.name]
        raise
    finally:
        with _writing(f.path, f"creating {arr.name!r}"):
            f.h5.flush()
    arr.allocated = arr.requested = rows
    f.arrays[arr.name] = arr
    if nbytes and offset is not None:
        arr.runs = [[0, rows, int(offset), 1, 0]]
    b._meta_dirty = True


def grow(b: Hdf5Backend, f: _File, arr: _Array, need: int, want: int) -> None:
    """Give chunked ``arr`` storage for at least ``need`` rows, ``want`` if steps allow."""
    c = arr.chunk_rows
    old = arr.allocated
    step = min(max(old * arr.row_nbytes // 8, MIN_GROWTH_BYTES), MAX_GROWTH_BYTES)
    new = max(need, min(want, old + max(step // arr.row_nbytes, 1)))
    new = -(-new // c) * c
    first_chunk = -(-arr.covered // c) if arr.runs else -(-old // c)
    check_space(b, (new - first_chunk * c) * arr.row_nbytes, f.path)
    with _writing(f.path, f"growing {arr.name!r}"):
        dset = f.h5[arr.name]
        dset.resize(new, axis=0)
        added = []
        chunks = _chunk_offsets(dset, first_chunk * c)
        for k in range(first_chunk, new // c):
            off, size = chunks.get(k * c, (None, 0))
            if off is None or size != c * arr.row_nbytes:
                msg = f"HDF5 did not allocate chunk {k} of {arr.name!r} as asked"
                raise OSError(errno.EIO, msg, os.fspath(f.path))
            added.append((k * c, off))
    runs: list[list[int]] = []
    for _, off in added:
        if runs and runs[-1][1] == off:
            runs[-1][1] += c * arr.row_nbytes
        else:
            runs.append([off, off + c * arr.row_nbytes])
    try:
        # Real blocks before HDF5 writes a superblock that counts them: a kill between
        # the two must not leave a file shorter than HDF5 says ("truncated file").
        for lo, hi in runs:
            preallocate(f.fd, lo, hi - lo, f.path)
    except BaseException:
        with contextlib.suppress(Exception):
            dset.resize(old, axis=0)
        raise
    finally:
        with _writing(f.path, f"growing {arr.name!r}"):
            f.h5.flush()
    for first, off in added:
        arr.add_extent(first, c, off)
    arr.allocated = new
    arr.requested = max(arr.requested, want)
    b._meta_dirty = True
    b._unsynced = True


def park(b: Hdf5Backend, f: _File, name: str) -> None:
    """Move dataset ``name`` aside: a commit may still name its bytes, so they stay."""
    with _writing(f.path, f"dropping {name!r}"):
        group = f.h5.require_group(DROPPED_GROUP)
        k = 0
        while f"{name}~{k}" in group:
            k += 1
        f.h5.move(name, f"{DROPPED_GROUP}/{name}~{k}")
        f.h5.flush()
    b._parked += 1
    b._meta_dirty = True


def resize_empty(b: Hdf5Backend, f: _File, arr: _Array, rows: int) -> None:
    """Rows of zero bytes hold nothing: recreate the (contiguous) dataset at ``rows``."""
    if rows == arr.allocated:
        return
    with _writing(f.path, f"resizing {arr.name!r}"):
        del f.h5[arr.name]
        dataset(b, f, arr, rows)
        f.h5.flush()
    arr.allocated = arr.requested = rows
    b._meta_dirty = True


def relocate(b: Hdf5Backend, f: _File, arr: _Array, need: int, capacity: int) -> None:
    """A contiguous array got more rows than declared: move it into a chunked dataset."""
    log.debug(
        "%r outgrew its %d contiguous rows: moving it to a chunked dataset",
        arr.name,
        arr.allocated,
    )
    park(b, f, arr.name)
    new = _Array(
        arr.name,
        arr.dtype,
        arr.shape,
        "chunked",
        chunk_rows_for(b, arr.name, arr.row_nbytes, capacity),
    )
    with _writing(f.path, f"creating {arr.name!r}"):
        dataset(b, f, new, 0)
    f.arrays[arr.name] = new
    new.requested = max(capacity, need)
    grow(b, f, new, max(need, arr.allocated, 1), new.requested)
    f.drain()
    moved = f.direct.pop(arr.name, None)  # the rows move: their runs start anew
    if moved is not None:
        moved.close()  # its thread, buffers and direct descriptor
    _copy_rows(f.fd, arr, f.fd, new, arr.allocated, f.path)
    b._unsynced = True


def allocate(b: Hdf5Backend, f: _File, name: str, stop: int) -> _Array:
    """Give ``name`` storage for rows ``[0, stop)``; return its (maybe new) state."""
    arr = f.arrays[name]
    if stop > arr.allocated:
        with b._mutex:
            if arr.layout == "empty":
                resize_empty(b, f, arr, max(stop, arr.requested))
            elif arr.layout == "contiguous":
                relocate(b, f, arr, stop, max(stop, arr.requested))
                arr = f.arrays[name]
            else:
                grow(b, f, arr, stop, max(arr.requested, stop))
    return arr
