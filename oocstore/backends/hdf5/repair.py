"""Resuming a file a kill may have left apart from its record: a child-process probe of
HDF5's metadata, matching datasets against the record, and copying rows into a rebuilt file."""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from ..._durable import open_nofollow
from ...errors import (
    CorruptStoreError,
    DiskFullError,
)
from ...manifest import ArraySpec, Manifest
from ...sizing import BLOCK_BYTES
from . import allocate, commit
from .extents import _check_layouts, _Layout
from .files import _Array, _chunk_offsets, _File, _write_into
from .h5 import ATTRIBUTE, DROPPED_GROUP, LIBVER, _stored_dtype, _writing
from .record import _read_header, _read_record

if TYPE_CHECKING:
    from .backend import Hdf5Backend

log = logging.getLogger("oocstore.backends.hdf5")

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


# -- resuming: the backend's side ------------------------------------------------------------


def open_existing(b: Hdf5Backend, manifest: Manifest) -> dict[str, int]:
    where = os.fspath(b.root)
    for suffix in (".partial", ".rebuild"):
        with contextlib.suppress(FileNotFoundError):
            b._sibling(suffix).unlink()  # a killed writer's (we hold the lock now)
    info = manifest.extra.get("hdf5")
    fd = open_nofollow(b.root, os.O_RDWR)
    try:
        header = _read_header(fd, where)
        record = _read_record(fd, header[1]) if header is not None else None
        size = os.fstat(fd).st_size
    except BaseException:
        os.close(fd)
        raise
    b._seq = record[0] if record is not None else 0
    b._published = True
    with b._mutex:
        if header is None or record is None:
            os.close(fd)
            _adopt(b, manifest)  # a file without a commit record (h5repack, h5py copy)
        else:
            layouts = _check_layouts(manifest, info, size, header[0], where)
            try:
                # libhdf5 can loop forever or crash on damaged metadata (seen: one flipped
                # bit in an attribute heap): read it in a child process first.
                _probe_metadata(b.root)
                with _writing(b.root, "opening the file"):
                    h5 = h5py.File(b.root, "r+", libver=LIBVER)
            except OSError as err:
                if isinstance(err, DiskFullError):
                    os.close(fd)
                    raise
                log.warning(
                    "HDF5 cannot open %s (%s): rebuilding it from its commit record", where, err
                )
                _repair(b, fd, header[0], manifest, layouts)
            else:
                f = _File(b.root, h5, fd, header[0])
                b._file = f
                # The probe above read the manifest attribute the next commit rewrites.
                problem = _adopt_datasets(b, f, manifest, layouts)
                if problem is not None:
                    log.warning(
                        "HDF5 metadata of %s disagrees with its commit record (%s): "
                        "rebuilding the file from the record",
                        where,
                        problem,
                    )
                    b._file = None
                    h5.close()
                    _repair(b, fd, header[0], manifest, layouts)
        f = b._current()
        for name in list(f.h5.keys()):
            if name not in manifest.arrays and name != DROPPED_GROUP:
                allocate.park(b, f, name)  # created after the last commit, or dropped by it
        b._parked += int(DROPPED_GROUP in f.h5)
        b._meta_dirty = True
        return {name: max(a.allocated, a.covered) for name, a in f.arrays.items()}


def _adopt_datasets(
    b: Hdf5Backend, f: _File, manifest: Manifest, layouts: dict[str, _Layout]
) -> str | None:
    """Take each array's state from HDF5, checked against the record; say what differs.

    A writer killed between moving a committed dataset aside (a contiguous array that
    outgrew its length, a layout change) and its next commit leaves the committed bytes
    in the dropped group: they are moved back under their name, no copy needed.
    """
    try:
        for name, spec in manifest.arrays.items():
            lay = layouts[name]
            arr, problem = _match(f.h5.get(name), name, spec, lay)
            if arr is None:
                group = f.h5.get(DROPPED_GROUP)
                parked = sorted(group) if isinstance(group, h5py.Group) else []
                for key in parked:
                    if key.rsplit("~", 1)[0] == name:
                        arr, _ = _match(group[key], name, spec, lay)
                        if arr is not None:
                            if name in f.h5:
                                allocate.park(b, f, name)  # made after the last commit
                            f.h5.move(f"{DROPPED_GROUP}/{key}", name)
                            f.h5.flush()
                            break
            if arr is None:
                return problem
            f.arrays[name] = arr
    except Exception as err:  # torn metadata shows up as any HDF5 error
        return f"HDF5 error: {err}"
    return None


def _repair(
    b: Hdf5Backend, fd: int, userblock: int, manifest: Manifest, layouts: dict[str, _Layout]
) -> None:
    """Rebuild the file from the commit record alone (HDF5 metadata is damaged)."""
    src = _File(b.root, _NoH5(), fd, userblock)
    for name, spec in manifest.arrays.items():
        lay = layouts[name]
        arr = _Array(name, spec.dtype, spec.shape, lay.layout, lay.chunk_rows)
        arr.runs = [list(run) for run in lay.runs]
        arr.allocated = lay.rows
        src.arrays[name] = arr
    lengths = {name: spec.length for name, spec in manifest.arrays.items()}
    try:
        new = b._rebuild(src, lengths, final=False)
    finally:
        os.close(fd)
    commit.commit_file(b, new, manifest, attribute=True)
    b._install(new)


def _adopt(b: Hdf5Backend, manifest: Manifest) -> None:
    """Give a file without a commit record one: copy its datasets into a new file."""
    where = os.fspath(b.root)
    try:
        h5 = h5py.File(b.root, "r", locking=False)  # we hold the store's lock
    except Exception as err:
        raise CorruptStoreError(where, f"HDF5 cannot open the file ({err})") from None
    dst = b._new_file(b._sibling(".rebuild"))
    try:
        with h5:
            for name, spec in manifest.arrays.items():
                dset = h5.get(name)
                if not isinstance(dset, h5py.Dataset) or dset.shape[0] < spec.length:
                    raise CorruptStoreError(where, f"dataset {name!r} is missing or short")
                new = _Array(name, spec.dtype, spec.shape, "contiguous")
                allocate.create(b, dst, new, spec.length)
                step = max(BLOCK_BYTES // max(spec.row_nbytes, 1), 1)
                for start in range(0, spec.length if new.row_nbytes else 0, step):
                    stop = min(start + step, spec.length)
                    block = np.asarray(dset[start:stop])
                    _write_into(dst, new, start, block.view(spec.dtype))
    except BaseException:
        dst.close()
        with contextlib.suppress(OSError):
            dst.path.unlink()
        raise
    commit.commit_file(b, dst, manifest, attribute=True)
    b._install(dst)
