"""The HDF5 backend: one ``.h5`` file, one dataset per array, commits that survive SIGKILL.

The file
--------
``train.h5`` is an ordinary HDF5 file in the format HDF5 1.10 reads (h5py, ``h5dump``,
``h5ls``, MATLAB...): one dataset per physical array at the root, named by the array
(``images``, ``labels``; for ragged fields also ``x.shapes``, ``x.values``, ``x.offsets``),
uncompressed, and oocstore's manifest as the root attribute ``oocstore`` (JSON text). Dtypes
HDF5 has no type for (datetime64, timedelta64, unicode ``U``) are stored the way h5py does it,
as opaque data tagged with the NumPy dtype: plain h5py reads them back exactly, ``h5dump``
shows their bytes. The file starts with a 1 MiB HDF5 *userblock* (a region HDF5 reserves for
applications and skips) that holds oocstore's commit record.

When the length is declared (``length=``), each array is one contiguous dataset allocated up
front (``posix_fallocate``, so a full disk fails at creation); otherwise arrays are chunked and
resizable (``maxshape=(None, ...)``, about 4 MiB of whole samples per chunk, ``chunks=`` to
choose), and grow in steps as rows arrive.

Crash safety
------------
HDF5 rewrites its metadata (object headers, chunk indexes, superblock) in place, without a
journal; a process killed while HDF5 writes metadata can leave a file HDF5 cannot open, and
files written with ``libver="latest"`` (SWMR too) refuse to open after a kill until
``h5clear`` resets their status flags. So oocstore never depends on HDF5 metadata to find
committed rows:

* samples are written by oocstore itself with ``pwrite``, at file offsets HDF5 reports, into
  space HDF5 allocated up front (contiguous datasets, or chunks allocated early, no filters):
  appending never changes HDF5 metadata;
* HDF5 metadata changes only when an array is created, grown or dropped, and is flushed then;
* a commit ``fdatasync``\\ s the data, then writes the manifest -- with each array's *extents*
  (row ranges and their file offsets) -- into one of two checksummed slots of the userblock
  and ``fdatasync``\\ s again. That slot write is the commit point; the other slot keeps the
  previous commit, so a torn slot write falls back to it;
* readers take the newest valid slot and map committed rows straight from their offsets, with
  no HDF5 call: torn HDF5 metadata never hides committed rows, and readers in other processes
  never wait for the writer's HDF5 file lock;
* a writer that resumes checks HDF5's metadata against the record and, if a kill left them
  apart, rebuilds the file from the record (a new file renamed over the old one).

Readers
-------
An array whose committed rows lie in one extent (every contiguous dataset, and a chunked one
whose chunks happen to be adjacent) is a read-only ``np.memmap``; others are lazy
:class:`ExtentArray` objects that slice to NumPy. ``zero_copy`` is therefore False for the
class: check ``isinstance(store[name], np.memmap)`` per field. Space a commit declared is
never freed or reused while the writer runs (dropped arrays are parked in the group
``.oocstore-dropped``), so views of older commits stay valid and the file never shrinks under
them; ``close()`` compacts a file that has dropped arrays or over-allocated contiguous ones by
writing a new file and renaming it over the old one (readers of the old one keep it).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import stat
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from ..._durable import fsync_dir, fsync_fd, open_nofollow, preallocate, pwrite_all
from ...errors import (
    CommitRecordTooLargeError,
    CorruptStoreError,
    DiskFullError,
    SchemaError,
    UnsupportedDtypeError,
)
from ...manifest import Manifest
from ..base import ArrayReader, Backend, BackendOptions, FileRegionWriter, RegionWriter
from . import reading, record, repair
from .extents import _LAYOUT_VERSION, _cut_runs
from .files import _Array, _chunk_offsets, _File, _pwrite_rows, _write_into
from .h5 import (
    _HDF5_SIGNATURE,
    ATTRIBUTE,
    DROPPED_GROUP,
    LIBVER,
    _h5_dtype,
    _writing,
)
from .record import (
    _MAGIC,
    _SLOT,
    HEADER_BYTES,
    _header_bytes,
    _slot_bytes,
    _slot_offset,
)
from .repair import _copy_rows

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


# -- the backend ------------------------------------------------------------------------------


class Hdf5Backend(Backend):
    """Store arrays as datasets of one HDF5 file; commits live in the file's userblock.

    Options (``BackendOptions``): ``chunks`` (rows per chunk, for all arrays or per array),
    ``extra["length"]`` (the declared number of samples: arrays of exactly that many rows are
    contiguous), ``extra["layout"]`` (``"contiguous"`` or ``"chunked"`` for every array),
    ``extra["userblock"]`` (bytes, a power of two: room for the commit record). Compression is
    not offered: crash safety rests on writing rows at known file offsets (``h5repack -f
    GZIP=4`` compresses a finished file, which oocstore still opens through the attribute).
    """

    name: ClassVar[str] = "hdf5"
    zero_copy: ClassVar[bool] = False  # contiguous arrays are np.memmap; chunked ones may not be
    suffixes: ClassVar[tuple[str, ...]] = (".h5", ".hdf5")
    background_sync: ClassVar[bool] = True

    def __init__(self, root: Path, options: BackendOptions | None = None) -> None:
        super().__init__(root, options)
        if self.options.compressors is not None:
            msg = (
                "the HDF5 backend writes uncompressed datasets (crash safety rests on writing "
                "rows at known file offsets); leave compressors=None, compress the finished "
                "file with h5repack, or use backend='zarr'"
            )
            raise ValueError(msg)
        extra = self.options.extra
        layout = extra.get("layout")
        if layout not in (None, "contiguous", "chunked"):
            msg = f"extra['layout'] must be 'contiguous' or 'chunked', not {layout!r}"
            raise ValueError(msg)
        self._force_layout: str | None = layout
        length = extra.get("length")
        self._declared: int | None = int(length) if length is not None else None
        userblock = int(extra.get("userblock", record.USERBLOCK_BYTES))  # patchable in tests
        if userblock < 2 * HEADER_BYTES or userblock & (userblock - 1) or userblock > 2**28:
            msg = (
                f"extra['userblock'] must be a power of two from 8 KiB to 256 MiB, not {userblock}"
            )
            raise ValueError(msg)
        self._userblock = userblock
        self._file: _File | None = None
        self._final: _File | None = None  # a compacted file waiting for the final manifest
        self._seq = 0
        self._published = False  # has the file been renamed to root (first commit done)?
        self._meta_dirty = True  # HDF5 metadata changed since the attribute was last written
        self._unsynced = False  # bytes written since the last fdatasync (outside sync())
        self._parked = 0
        self._mutex = threading.RLock()  # background commits vs. growth in the writer thread

    # -- reading -----------------------------------------------------------------------------

    @classmethod
    def supports_dtype(cls, dtype: np.dtype[Any]) -> bool:
        """Whether arrays of ``dtype`` can be stored (others raise UnsupportedDtypeError)."""
        try:
            _h5_dtype(np.dtype(dtype))
        except (UnsupportedDtypeError, TypeError):
            return False
        return True

    @classmethod
    def holds_store(cls, root: Path) -> bool:
        try:
            fd = open_nofollow(root, os.O_RDONLY)
        except OSError:
            return False
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            if os.pread(fd, len(_MAGIC), 0).startswith(_MAGIC):
                return True
            # HDF5 looks for its superblock at 0, 512, 1024, 2048... (after a userblock): a
            # file rewritten by h5repack or h5py, or one whose oocstore header is damaged, is
            # a store if HDF5 opens it and it carries the manifest attribute.
            hdf5 = any(
                os.pread(fd, len(_HDF5_SIGNATURE), at) == _HDF5_SIGNATURE
                for at in (0, *(512 << k for k in range(20)))
            )
        finally:
            os.close(fd)
        if not hdf5:
            return False
        try:
            with h5py.File(root, "r", locking=False) as f:
                return ATTRIBUTE in f.attrs
        except Exception:  # any HDF5 failure means "not recognised"
            return False

    @classmethod
    def lock_path(cls, root: Path) -> Path:
        """A hidden file beside the store: the store is one file, which HDF5 itself locks."""
        return root.with_name(f".{root.name}.lock")

    @classmethod
    def read_manifest(cls, root: Path) -> Manifest:
        """The newest valid commit record's manifest (see :func:`.reading.read_manifest`)."""
        return reading.read_manifest(root)

    @classmethod
    def open_arrays(cls, root: Path, manifest: Manifest) -> dict[str, ArrayReader]:
        """Committed rows of every array, mapped from the record (see :mod:`.reading`)."""
        return reading.open_arrays(root, manifest)

    # -- writing: files ------------------------------------------------------------------------

    def _sibling(self, suffix: str) -> Path:
        return self.root.with_name(f".{self.root.name}{suffix}")

    def _new_file(self, path: Path) -> _File:
        """Create an empty HDF5 file with oocstore's userblock header at ``path``."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._check_space(self._userblock, path)
        with _writing(path, "creating the file"):
            h5 = h5py.File(
                path,
                "w",
                libver=LIBVER,
                userblock_size=self._userblock,
                alignment_threshold=ALIGNMENT_THRESHOLD,
                alignment_interval=ALIGNMENT,
            )
        try:
            fd = open_nofollow(path, os.O_RDWR)
        except BaseException:
            h5.close()
            raise
        out = _File(path, h5, fd, self._userblock)
        try:
            pwrite_all(fd, _header_bytes(self._userblock), 0, path)
        except BaseException:
            out.close()
            raise
        return out

    def _current(self) -> _File:
        if self._file is None:
            # The file is born beside the store and renamed into place by the first commit,
            # so a writer killed before it leaves no half-made store at the path.
            self._file = self._new_file(self._sibling(".partial"))
        return self._file

    def _check_space(self, nbytes: int, path: Path | None = None) -> None:
        """Refuse to grow when the disk cannot take ``nbytes`` plus HDF5's metadata margin."""
        where = path or self.root
        try:
            st = os.statvfs(where.parent)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        if nbytes + SPACE_MARGIN > free:
            raise DiskFullError(os.fspath(where), needed=nbytes + SPACE_MARGIN, free=free)

    # -- writing: arrays -----------------------------------------------------------------------

    def _chunk_rows_for(self, name: str, row: int, capacity: int) -> int:
        chunks = self.options.chunks
        given = (
            chunks.get(name, chunks.get(name.split(".", 1)[0]))
            if isinstance(chunks, dict)
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
                hint="declare length= so the HDF5 backend stores it contiguous, or use the npy "
                "backend",
            )
        return rows

    def _dataset(self, f: _File, arr: _Array, rows: int) -> h5py.Dataset:
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

    def _create(self, f: _File, arr: _Array, rows: int) -> None:
        """Create ``arr`` in ``f`` with room for ``rows`` rows, space really allocated."""
        if arr.layout == "chunked":
            with _writing(f.path, f"creating {arr.name!r}"):
                self._dataset(f, arr, 0)
            try:
                self._grow(f, arr, rows, rows)
            except BaseException:
                with contextlib.suppress(Exception):  # never committed: nothing maps it
                    del f.h5[arr.name]
                    f.h5.flush()
                raise
            f.arrays[arr.name] = arr
            return
        nbytes = rows * arr.row_nbytes
        self._check_space(nbytes, f.path)
        with _writing(f.path, f"creating {arr.name!r}"):
            dset = self._dataset(f, arr, rows)
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
        self._meta_dirty = True

    def _grow(self, f: _File, arr: _Array, need: int, want: int) -> None:
        """Give chunked ``arr`` storage for at least ``need`` rows, ``want`` if steps allow."""
        c = arr.chunk_rows
        old = arr.allocated
        step = min(max(old * arr.row_nbytes // 8, MIN_GROWTH_BYTES), MAX_GROWTH_BYTES)
        new = max(need, min(want, old + max(step // arr.row_nbytes, 1)))
        new = -(-new // c) * c
        first_chunk = -(-arr.covered // c) if arr.runs else -(-old // c)
        self._check_space((new - first_chunk * c) * arr.row_nbytes, f.path)
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
        self._meta_dirty = True
        self._unsynced = True

    def _park(self, f: _File, name: str) -> None:
        """Move dataset ``name`` aside: a commit may still name its bytes, so they stay."""
        with _writing(f.path, f"dropping {name!r}"):
            group = f.h5.require_group(DROPPED_GROUP)
            k = 0
            while f"{name}~{k}" in group:
                k += 1
            f.h5.move(name, f"{DROPPED_GROUP}/{name}~{k}")
            f.h5.flush()
        self._parked += 1
        self._meta_dirty = True

    def _layout_for(self, capacity: int) -> str:
        if self._force_layout is not None:
            return self._force_layout
        if self._declared is not None and capacity == self._declared and capacity > 0:
            return "contiguous"
        return "chunked"

    def create(self) -> None:
        # Only the directory: the file itself is created beside the store by the first array
        # (the writer holds its lock by then) and renamed into place by the first commit.
        self.root.parent.mkdir(parents=True, exist_ok=True)

    def create_array(
        self, name: str, dtype: np.dtype[Any], shape: tuple[int, ...], capacity: int
    ) -> None:
        _h5_dtype(dtype)  # refuse an unsupported dtype before touching the file
        with self._mutex:
            f = self._current()
            if name in f.h5:
                self._park(f, name)
            f.arrays.pop(name, None)
            layout = self._layout_for(capacity)
            row = math.prod(shape) * np.dtype(dtype).itemsize
            chunk_rows = self._chunk_rows_for(name, row, capacity) if row else 0
            arr = _Array(name, dtype, shape, layout, chunk_rows)
            self._create(f, arr, capacity)

    def reserve(self, name: str, capacity: int) -> None:
        with self._mutex:
            f = self._current()
            arr = f.arrays[name]
            if arr.layout == "empty":
                self._resize_empty(f, arr, capacity)
            elif arr.layout == "contiguous":
                if capacity > arr.allocated:
                    self._relocate(f, arr, arr.allocated, capacity)
            elif capacity > arr.requested:
                # Checked now, allocated in steps as rows arrive (write): a step is at most an
                # eighth of the array, so trimming at close() leaves little dead space.
                self._check_space((capacity - arr.allocated) * arr.row_nbytes, f.path)
                arr.requested = capacity

    def _resize_empty(self, f: _File, arr: _Array, rows: int) -> None:
        """Rows of zero bytes hold nothing: recreate the (contiguous) dataset at ``rows``."""
        if rows == arr.allocated:
            return
        with _writing(f.path, f"resizing {arr.name!r}"):
            del f.h5[arr.name]
            self._dataset(f, arr, rows)
            f.h5.flush()
        arr.allocated = arr.requested = rows
        self._meta_dirty = True

    def _relocate(self, f: _File, arr: _Array, need: int, capacity: int) -> None:
        """A contiguous array got more rows than declared: move it into a chunked dataset."""
        log.debug(
            "%r outgrew its %d contiguous rows: moving it to a chunked dataset",
            arr.name,
            arr.allocated,
        )
        self._park(f, arr.name)
        new = _Array(
            arr.name,
            arr.dtype,
            arr.shape,
            "chunked",
            self._chunk_rows_for(arr.name, arr.row_nbytes, capacity),
        )
        with _writing(f.path, f"creating {arr.name!r}"):
            self._dataset(f, new, 0)
        f.arrays[arr.name] = new
        new.requested = max(capacity, need)
        self._grow(f, new, max(need, arr.allocated, 1), new.requested)
        f.drain()
        moved = f.direct.pop(arr.name, None)  # the rows move: their runs start anew
        if moved is not None:
            moved.close()  # its thread, buffers and direct descriptor
        _copy_rows(f.fd, arr, f.fd, new, arr.allocated, f.path)
        self._unsynced = True

    def _allocate(self, f: _File, name: str, stop: int) -> _Array:
        """Give ``name`` storage for rows ``[0, stop)``; return its (maybe new) state."""
        arr = f.arrays[name]
        if stop > arr.allocated:
            with self._mutex:
                if arr.layout == "empty":
                    self._resize_empty(f, arr, max(stop, arr.requested))
                elif arr.layout == "contiguous":
                    self._relocate(f, arr, stop, max(stop, arr.requested))
                    arr = f.arrays[name]
                else:
                    self._grow(f, arr, stop, max(arr.requested, stop))
        return arr

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        f = self._current()
        n = len(values)
        if n == 0:
            return
        arr = self._allocate(f, name, start + n)
        _write_into(f, arr, start, values)

    def region_writer(self, name: str, stop: int) -> RegionWriter:
        f = self._current()
        arr = self._allocate(f, name, stop)
        with self._mutex:
            # The extents now cover [0, stop): they never move while the writer runs.
            copy = _Array(arr.name, arr.dtype, arr.shape, arr.layout, arr.chunk_rows)
            copy.allocated = arr.allocated
            copy.runs = [list(run) for run in arr.runs]
        return Hdf5RegionWriter(name, f.path, copy)

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        f = self._current()
        f.drain()
        arr = f.arrays[name]
        out = np.empty((max(stop - start, 0), *arr.shape), dtype=arr.dtype)
        if out.nbytes == 0:
            return out
        buf = memoryview(out.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        row = arr.row_nbytes
        for lo, hi, off in arr.pieces(start, stop):
            view = buf[(lo - start) * row : (hi - start) * row]
            done = 0
            while done < len(view):
                k = os.preadv(f.fd, [view[done:]], off + done)
                if k == 0:
                    raise CorruptStoreError(os.fspath(f.path), f"file ends inside {name!r}")
                done += k
        return out

    def delete_array(self, name: str) -> None:
        with self._mutex:
            if self._file is None:
                return
            f = self._file
            arr = f.arrays.pop(name, None)
            if name not in f.h5:
                return
            if arr is not None and arr.layout == "empty":
                with _writing(f.path, f"deleting {name!r}"):
                    del f.h5[name]  # no bytes: nothing a reader could map
                    f.h5.flush()
                self._meta_dirty = True
                return
            self._park(f, name)

    def chunk_rows(self, name: str) -> int:
        # Rows are written at their file offsets, never through HDF5's chunk cache: a partial
        # chunk costs nothing, so the writer need not stage whole chunks.
        return 1

    def sync(self, lengths: dict[str, int]) -> None:
        with self._mutex:
            f = self._current()
            for name, length in lengths.items():
                arr = f.arrays.get(name)
                if arr is None or (arr.row_nbytes and length > arr.covered):
                    msg = f"{name!r} has storage for {arr.covered if arr else 0} rows, not {length}"
                    raise CorruptStoreError(os.fspath(f.path), msg)
            self._unsynced = False
        f.drain()
        fsync_fd(f.fd, f.path)

    def _record(self, f: _File, manifest: Manifest, *, extents: bool = True) -> bytes:
        """The manifest with this file's extents, as the commit record's JSON (``extents=False``:
        with none, to measure what they take)."""
        arrays = {}
        for name in manifest.arrays:
            arr = f.arrays.get(name)
            if arr is None:
                msg = f"the manifest names {name!r}, which this writer has not created"
                raise CorruptStoreError(os.fspath(f.path), msg)
            arrays[name] = arr.layout_json()
            if not extents:
                arrays[name]["extents"] = []
        extra = {k: v for k, v in manifest.extra.items() if k != "hdf5"}
        extra["hdf5"] = {"version": _LAYOUT_VERSION, "arrays": arrays}
        return replace(manifest, extra=extra).dumps()

    def write_manifest(self, manifest: Manifest) -> None:
        with self._mutex:
            if self._final is not None:
                self._commit_file(self._final, manifest, attribute=True)
                self._install(self._final)
                self._final = None
                return
            f = self._current()
            if not self._published:
                self._commit_file(f, manifest, attribute=True)
                os.replace(f.path, self.root)
                fsync_dir(self.root.parent)
                f.path = self.root
                self._published = True
                return
            payload, flush = self._prepare(f, manifest, self._meta_dirty or manifest.complete)
        # Outside the lock: the writer thread may grow an array meanwhile (a background
        # commit); what it adds is not named by this record.
        self._publish(f, payload, flush)

    def _commit_file(self, f: _File, manifest: Manifest, *, attribute: bool) -> None:
        """Write ``manifest`` as ``f``'s newest commit: the next slot, after the data."""
        self._publish(f, *self._prepare(f, manifest, attribute))

    def _prepare(self, f: _File, manifest: Manifest, attribute: bool) -> tuple[bytes, bool]:
        """The record for ``manifest``, and whether the file needs an fdatasync before it."""
        payload = self._record(f, manifest)
        if len(payload) + _SLOT.size > f.slot:
            raise self._too_large(f, manifest, len(payload))
        if attribute:
            # The attribute mirrors the record for plain HDF5 readers; it is written only when
            # HDF5 metadata changes anyway (or at the end), to keep metadata writes rare.
            with _writing(f.path, "writing the manifest attribute"):
                text = payload.decode()
                if ATTRIBUTE in f.h5.attrs:
                    f.h5.attrs.modify(ATTRIBUTE, text)
                else:
                    f.h5.attrs[ATTRIBUTE] = text
                f.h5.flush()
            self._meta_dirty = False
        # sync() made the rows durable; what changed since (HDF5 metadata, grown or relocated
        # arrays) must be too before the record names it.
        flush = attribute or self._unsynced
        self._unsynced = False
        return payload, flush

    def _too_large(self, f: _File, manifest: Manifest, size: int) -> CommitRecordTooLargeError:
        """The error for a record of ``size`` bytes that its slot cannot hold: the array with
        the most runs, and what chunk size or userblock would fit the record."""
        slot = f.slot - _SLOT.size
        arr = max((f.arrays[name] for name in manifest.arrays), key=lambda a: len(a.runs))
        userblock = 2 * HEADER_BYTES
        while (userblock - HEADER_BYTES) // 2 - _SLOT.size < size:
            userblock *= 2
        # Runs come from HDF5's index nodes between chunks: about one per so many chunks, so
        # chunks k times larger make about k times fewer (measured: 164 runs at 8 rows per
        # chunk, 43 at 32, for 4M rows of 16 bytes). Rounded up to a power of two: room to grow.
        share = size - len(self._record(f, manifest, extents=False))
        excess = size - slot
        min_rows = None
        if arr.layout == "chunked" and share > excess:
            need = -(-arr.chunk_rows * share // (share - excess))
            min_rows = 1 << (need - 1).bit_length()
        return CommitRecordTooLargeError(
            os.fspath(self.root),
            array=arr.name,
            runs=len(arr.runs),
            record_bytes=size,
            slot_bytes=slot,
            chunk_rows=arr.chunk_rows,
            min_chunk_rows=min_rows,
            min_userblock=userblock,
        )

    def _publish(self, f: _File, payload: bytes, flush: bool) -> None:
        """The commit point: the next slot, durable, after the data it declares."""
        if flush:
            fsync_fd(f.fd, f.path)
        seq = self._seq + 1
        f.write_slot(_slot_bytes(seq, payload), _slot_offset(seq % 2, f.slot))
        self._seq = seq

    def _install(self, new: _File) -> None:
        """Rename a rebuilt file over the store: the commit point of a rewrite."""
        os.replace(new.path, self.root)
        fsync_dir(self.root.parent)
        new.path = self.root
        old, self._file = self._file, new
        self._published = True
        self._parked = 0
        if old is not None:
            old.close()  # readers that mapped the old file keep it; it goes when they do

    def finalize(self, lengths: dict[str, int]) -> None:
        with self._mutex:
            f = self._current()
            f.drain()
            try:
                names = set(f.h5.keys())
            except Exception as err:
                raise OSError(errno.EIO, f"HDF5 cannot list {str(f.path)!r}: {err}") from err
            leftovers = names - set(lengths) - {DROPPED_GROUP}
            over = [
                n
                for n, k in lengths.items()
                if f.arrays[n].layout == "contiguous" and f.arrays[n].allocated != k
            ]
            if self._parked or DROPPED_GROUP in names or leftovers or over:
                log.debug(
                    "compacting %s (dropped %s, over-allocated %s)", self.root, leftovers, over
                )
                try:
                    self._final = self._rebuild(f, lengths, final=True)
                except DiskFullError:
                    if over:
                        raise  # a contiguous dataset can only shrink by being rewritten
                    # No room for a second copy: drop the dead arrays in place instead. Views
                    # of older commits that mapped them may then see their space reused.
                    log.warning("no room to compact %s: dropping arrays in place", self.root)
                    with _writing(f.path, "dropping arrays"):
                        for name in (*leftovers, DROPPED_GROUP):
                            if name in f.h5:
                                del f.h5[name]
                    self._parked = 0
                else:
                    return
            with _writing(f.path, "trimming the datasets"):
                for name, n in lengths.items():
                    arr = f.arrays[name]
                    if arr.layout == "empty" and arr.allocated != n:
                        self._resize_empty(f, arr, n)
                    elif arr.layout == "chunked" and arr.allocated != n:
                        # Only chunks past the committed rows go; readers never map those.
                        f.h5[name].resize(n, axis=0)
                        arr.allocated = arr.requested = n
                        keep = -(-n // arr.chunk_rows) * arr.chunk_rows
                        arr.runs = _cut_runs(arr.runs, keep)
                f.h5.flush()
            self._meta_dirty = True

    def _rebuild(self, src: _File, lengths: dict[str, int], *, final: bool) -> _File:
        """Copy the committed rows into a new file beside the store (renamed over it later).

        ``final``: every array contiguous, exactly its length (readers get memmaps). Else the
        arrays keep their layouts, with room for at least their committed rows.
        """
        dst = self._new_file(self._sibling(".rebuild"))
        src.drain()
        try:
            for name, n in lengths.items():
                old = src.arrays[name]
                if final or old.layout != "chunked":
                    layout, rows = "contiguous", n if final else max(old.allocated, n)
                    chunk_rows = 0
                else:
                    layout, rows, chunk_rows = "chunked", n, old.chunk_rows
                new = _Array(name, old.dtype, old.shape, layout, chunk_rows)
                self._create(dst, new, rows)
                _copy_rows(src.fd, old, dst.fd, new, n, dst.path)
            with _writing(dst.path, "flushing"):
                dst.h5.flush()
        except BaseException:
            dst.close()
            with contextlib.suppress(OSError):
                dst.path.unlink()
            raise
        return dst

    def open_existing(self, manifest: Manifest) -> dict[str, int]:
        """Reopen for appending; a file a kill left apart from its record is rebuilt first
        (see :func:`.repair.open_existing`)."""
        return repair.open_existing(self, manifest)

    def destroy(self) -> None:
        """Remove what a writer that never committed made (the file beside the store)."""
        self.close()
        if not self._published:
            with contextlib.suppress(FileNotFoundError):
                self._sibling(".partial").unlink()

    def close(self) -> None:
        with self._mutex:
            if self._final is not None:
                self._final.close()
                with contextlib.suppress(OSError):
                    self._final.path.unlink()
                self._final = None
            if self._file is not None:
                self._file.close()
                self._file = None


class Hdf5RegionWriter(FileRegionWriter):
    """Rows of one dataset, written with ``pwrite`` at the file offsets its extents give."""

    def __init__(self, name: str, path: Path, array: _Array) -> None:
        self.name = name
        self.path = path
        self.array = array
        self._fd = None

    def write(self, start: int, values: np.ndarray) -> None:
        fd = self._open()
        _pwrite_rows(
            self.array, start, values, lambda data, off: pwrite_all(fd, data, off, self.path)
        )
