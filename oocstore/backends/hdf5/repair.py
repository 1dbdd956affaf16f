"""Resuming a file a kill may have left apart from its record: a child-process probe of
HDF5's metadata, matching datasets against the record, and copying rows into a rebuilt file."""

from __future__ import annotations

import errno
import itertools
import os
from pathlib import Path
from typing import Any

import h5py

from ..._durable import pwrite_all
from ...errors import (
    CorruptStoreError,
    DiskFullError,
)
from ...manifest import ArraySpec
from ...sizing import BLOCK_BYTES
from .extents import _Layout
from .files import _Array, _chunk_offsets
from .h5 import _NOSPACE, ATTRIBUTE, _stored_dtype

PROBE_SECONDS = 20.0
"""How long reading a file's HDF5 metadata may take in the probe before it counts as damaged."""

_PROBE = """
import sys
import h5py
with h5py.File(sys.argv[1], "r") as f:
    f.attrs.get(sys.argv[2])
    for name in f:
        obj = f[name]
        getattr(obj, "shape", None)
        dict(obj.attrs)
"""


def _probe_metadata(path: Path) -> None:
    """Read the file's HDF5 metadata in a child process; OSError if it fails, crashes or hangs.

    A resumed writer opens the file read-write in this process, where a libhdf5 hang or crash
    on damaged metadata could not be recovered from; the commit record can rebuild the file.
    """
    import subprocess
    import sys

    env = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE"}
    cmd = [sys.executable, "-c", _PROBE, os.fspath(path), ATTRIBUTE]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=PROBE_SECONDS, env=env, check=False)
    except subprocess.TimeoutExpired:
        msg = f"reading its HDF5 metadata did not finish in {PROBE_SECONDS:.0f} s"
        raise OSError(errno.EIO, msg) from None
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines() or ["no output"]
        msg = f"reading its HDF5 metadata failed (exit {proc.returncode}): {lines[-1][:200]}"
        raise OSError(errno.EIO, msg)


class _NoH5:
    """Stands in for h5py's handle of a file whose HDF5 metadata cannot be trusted."""

    def close(self) -> None:
        """Nothing to close."""


def _match(dset: Any, name: str, spec: ArraySpec, lay: _Layout) -> tuple[_Array | None, str]:
    """The writer's state of dataset ``dset`` if it holds ``name`` as the record says."""
    if not isinstance(dset, h5py.Dataset):
        return None, f"{name!r} is not a dataset"
    if _stored_dtype(dset) != spec.dtype or dset.shape[1:] != spec.shape:
        return None, f"{name!r} has dtype {dset.dtype} and rows {dset.shape[1:]}"
    if dset.compression is not None:
        return None, f"{name!r} is compressed"
    arr = _Array(name, spec.dtype, spec.shape, lay.layout, lay.chunk_rows)
    arr.allocated = arr.requested = dset.shape[0]
    if arr.layout == "empty":
        return arr, ""
    if dset.chunks is None:
        off = dset.id.get_offset() if arr.allocated else None
        if lay.layout != "contiguous" or (arr.allocated and off is None):
            return None, f"{name!r} is contiguous, the record says {lay.layout}"
        if off is not None:
            arr.runs = [[0, arr.allocated, int(off), 1, 0]]
    else:
        c = dset.chunks[0]
        if lay.layout != "chunked" or c != lay.chunk_rows or dset.chunks[1:] != spec.shape:
            return None, f"{name!r} has chunks {dset.chunks}, the record says {lay.chunk_rows}"
        chunks = _chunk_offsets(dset, 0)
        for k in range(-(-arr.allocated // c)):
            off, size = chunks.get(k * c, (None, 0))
            if off is None or size != c * arr.row_nbytes:
                return None, f"chunk {k} of {name!r} is not allocated whole"
            arr.add_extent(k * c, c, off)
    if not _same_rows(arr, lay, spec.length):
        return None, f"{name!r} keeps its committed rows elsewhere than the record says"
    return arr, ""


def _same_rows(arr: _Array, lay: _Layout, length: int) -> bool:
    """Do ``arr``'s extents put rows ``[0, length)`` where the record's extents do?"""
    ref = _Array(arr.name, arr.dtype, arr.shape, lay.layout, lay.chunk_rows)
    ref.runs = lay.runs
    mine = ((lo, off) for lo, _, off in arr.pieces(0, length))
    theirs = ((lo, off) for lo, _, off in ref.pieces(0, length))
    try:
        return all(a == b for a, b in itertools.zip_longest(mine, theirs))
    except IndexError:
        return False


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
