"""Rows into chunk files: in place where a unit is uncompressed whole rows (through one
kept-open file and its direct writer), else a unit read, merged, encoded and replaced."""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..._direct import DIRECT_AFTER
from ..._durable import (
    atomic_write_bytes,
    fsync_fd,
    open_nofollow,
    preallocate,
    pwrite_all,
)
from .codecs import _encode_unit
from .spec import _TMP_PREFIX, _disk_errors
from .state import _WriteState
from .view import _open_zarr

if TYPE_CHECKING:
    from .backend import ZarrBackend


def write_rows(
    b: ZarrBackend, st: _WriteState, start: int, data: np.ndarray, tile: tuple[int, ...] | None
) -> None:
    """Write rows of chunk files (of one tile of the grid, when rows are tiled)."""
    lay = st.layout
    unit = lay.unit_rows
    stop = start + len(data)
    pos = start
    while pos < stop:
        u = pos // unit
        end = min(stop, (u + 1) * unit)
        part = data[pos - start : end - start]
        if lay.in_place:
            write_in_place(b, st, u, pos - u * unit, part, tile)
        else:
            write_unit(b, st, u, pos, part, tile)
        pos = end


def unit_file(b: ZarrBackend, st: _WriteState, u: int, tile: tuple[int, ...] | None = None) -> Path:
    path = st.layout.unit_path(u, tile)
    parent = path.parent
    if parent not in st.dirs:  # only with "/" chunk keys: c/<u>/0/0 directories
        new = []
        d = parent
        while d not in st.dirs and d != st.layout.path:
            new.append(d)
            d = d.parent
        with _disk_errors(parent):
            parent.mkdir(parents=True, exist_ok=True)
        for d in new:
            b._touched(dirs=(d.parent,))
            st.dirs.add(d)
    return path


def write_in_place(
    b: ZarrBackend,
    st: _WriteState,
    u: int,
    row: int,
    part: np.ndarray,
    tile: tuple[int, ...] | None,
) -> None:
    """Write rows of an uncompressed chunk at their offset in its file.

    Rows already committed in that chunk are rewritten with the same bytes, so a crash
    mid-write leaves them intact.
    """
    lay = st.layout
    path = unit_file(b, st, u, tile)
    if tile is None:
        write_chunk_run(b, st, path, row, part)
        return
    with _disk_errors(path):
        fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        full = lay.chunk_rows * lay.cell_nbytes  # zarr stores edge chunks whole
        data = part.reshape(-1).view(np.uint8)
        offset = row * lay.cell_nbytes
        if row and lay.tiled and lay.fill_bytes_nonzero and os.fstat(fd).st_size == 0:
            # A tile new to this chunk (the rows grew): its earlier rows are padding
            # (a zero fill needs no bytes: they stay a hole, which reads as zeros).
            data = np.concatenate(
                [
                    np.full((row, *lay.tile_shape), lay.fill, lay.store_dtype)
                    .reshape(-1)
                    .view(np.uint8),
                    data,
                ]
            )
            offset = 0
        # Real blocks for these rows first: a full disk fails here, and writing into
        # allocated space is faster than letting ext4 allocate at writeback. Only these
        # rows: a store of a few rows must not take a whole chunk of disk.
        preallocate(fd, offset, data.nbytes, path)
        if os.fstat(fd).st_size < full:
            # The chunk's full size, as zarr reads it; rows not written yet are a hole.
            with _disk_errors(path):
                os.ftruncate(fd, full)
        pwrite_all(fd, data, offset, path)
    finally:
        os.close(fd)
    b._touched(files=(path,), dirs=(path.parent,))


def write_chunk_run(
    b: ZarrBackend, st: _WriteState, path: Path, row: int, part: np.ndarray
) -> None:
    """Rows into an uncompressed chunk file of whole rows, kept open while it fills.

    Its writes go on from one chunk to the next as one run, so a long one goes to the
    disk with ``O_DIRECT`` (oocstore._direct) instead of through the page cache.
    """
    lay = st.layout
    full = lay.chunk_rows * lay.cell_nbytes  # zarr stores edge chunks whole
    data = part.reshape(-1).view(np.uint8)
    offset = row * lay.cell_nbytes
    if st.chunk is None or st.chunk.path != path:
        with _disk_errors(path):
            fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            if st.run >= DIRECT_AFTER:
                # A long run: the whole chunk's blocks now, not per write (fallocate
                # waits for the direct write in flight, which stalled every batch).
                preallocate(fd, offset, full - offset, path)
            if os.fstat(fd).st_size < full:
                # The chunk's full size, as zarr reads it; rows not written are a hole.
                with _disk_errors(path):
                    os.ftruncate(fd, full)
        except BaseException:
            os.close(fd)
            raise
        st.next_chunk(path, fd)
    assert st.chunk is not None
    if st.run < DIRECT_AFTER:
        # Real blocks for these rows first (see _write_in_place): a short store takes
        # only what it wrote.
        preallocate(st.chunk.fd, offset, data.nbytes, path)
    st.chunk.writer.pwrite(data, offset)
    st.run += data.nbytes
    b._touched(files=(path,), dirs=(path.parent,))


def write_unit(
    b: ZarrBackend,
    st: _WriteState,
    u: int,
    pos: int,
    part: np.ndarray,
    tile: tuple[int, ...] | None,
) -> None:
    """Encode and write a whole chunk or shard file holding ``part`` from row ``pos``."""
    lay = st.layout
    unit = lay.unit_rows
    us = u * unit
    first, end = pos - us, pos - us + len(part)
    valid = max(end, min(st.written - us, unit))  # rows of this unit holding data
    path = unit_file(b, st, u, tile)
    exists = path.exists()
    if first == 0 and end == unit:
        block = part
    else:
        # Rows of this unit outside ``part`` that were written before are kept (a commit
        # wrote the unit partially, or a resumed writer starts inside it). A tile new to
        # the unit (the rows grew) holds padding for them.
        block = np.full((unit, *lay.cell_shape), lay.fill, dtype=lay.store_dtype)
        block[first:end] = part
        for lo, hi in ((0, first), (end, valid)):
            if hi > lo and exists:
                block[lo:hi] = st.reader.read_cells(u, tile, lo, hi)
    payload = _encode_unit(lay, block, valid)
    if exists:
        # The file may hold committed rows: make the old file durable (a sync running in
        # the background may not have reached it), then replace it whole with a durable
        # new one. Never rewritten in place: a crash would tear committed rows.
        with _disk_errors(path):
            fd = open_nofollow(path, os.O_RDONLY)
            try:
                fsync_fd(fd, path)
            finally:
                os.close(fd)
        tmp = lay.path / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        with _disk_errors(tmp):
            try:
                atomic_write_bytes(tmp, bytes(payload))
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
        b._touched(dirs=(path.parent,))
    else:
        with _disk_errors(path):
            fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            preallocate(fd, 0, len(payload), path)
            pwrite_all(fd, payload, 0, path)
        finally:
            os.close(fd)
        b._touched(files=(path,), dirs=(path.parent,))


def write_zarr(b: ZarrBackend, st: _WriteState, start: int, data: np.ndarray) -> None:
    # zarr-python writes every key with fsync before its rename (_durable_local_store).
    b._flush_meta(st)
    if st.zarr_array is None:
        st.zarr_array = _open_zarr(st.layout.path, read_only=False)
    try:
        st.zarr_array[start : start + len(data)] = data
    except OSError:
        raise
    except Exception as err:
        msg = f"zarr could not write rows {start}.. of {os.fspath(st.layout.path)!r}: {err}"
        raise OSError(errno.EIO, msg) from err
