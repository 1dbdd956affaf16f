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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import h5py
import numpy as np

from ..._durable import fsync_dir, fsync_fd, open_nofollow, pwrite_all
from ...errors import (
    CorruptStoreError,
    DiskFullError,
    UnsupportedDtypeError,
)
from ...manifest import Manifest
from ..base import Backend, BackendOptions, FileRegionWriter, RegionWriter, StoreHandle
from . import allocate, commit, reading, record, repair
from .allocate import ALIGNMENT, ALIGNMENT_THRESHOLD
from .extents import _cut_runs
from .files import _Array, _copy_rows, _File, _pwrite_rows, _write_into
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
    HEADER_BYTES,
    _header_bytes,
)

log = logging.getLogger("oocstore.backends.hdf5")


# -- the backend ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hdf5Options(BackendOptions):
    """Write options of the HDF5 backend: ``chunks`` (rows per chunk, for all arrays or per
    array) and ``length`` (the declared number of samples: arrays of exactly that many rows
    are contiguous), and these."""

    layout: Literal["contiguous", "chunked"] | None = None
    """Every array contiguous or chunked (None: contiguous where the length is declared)."""
    userblock: int | None = None
    """Bytes of the userblock, a power of two: room for the commit record (None: the
    default, :data:`.record.USERBLOCK_BYTES`)."""


class Hdf5Backend(Backend):
    """Store arrays as datasets of one HDF5 file; commits live in the file's userblock.

    Options: :class:`Hdf5Options`. Compression is not offered: crash safety rests on writing
    rows at known file offsets (``h5repack -f GZIP=4`` compresses a finished file, which
    oocstore still opens through the attribute).
    """

    name: ClassVar[str] = "hdf5"
    zero_copy: ClassVar[bool] = False  # contiguous arrays are np.memmap; chunked ones may not be
    suffixes: ClassVar[tuple[str, ...]] = (".h5", ".hdf5", ".hdf")
    background_sync: ClassVar[bool] = True
    options_class: ClassVar[type[BackendOptions]] = Hdf5Options
    options: Hdf5Options

    def __init__(self, root: Path, options: BackendOptions | None = None) -> None:
        super().__init__(root, options)
        if self.options.compressors is not None:
            msg = (
                "the HDF5 backend writes uncompressed datasets (crash safety rests on writing "
                "rows at known file offsets); leave compressors=None, compress the finished "
                "file with h5repack, or use backend='zarr'"
            )
            raise ValueError(msg)
        layout = self.options.layout
        if layout not in (None, "contiguous", "chunked"):
            msg = f"Hdf5Options.layout must be 'contiguous' or 'chunked', not {layout!r}"
            raise ValueError(msg)
        self._force_layout: str | None = layout
        length = self.options.length
        self._declared: int | None = int(length) if length is not None else None
        given = self.options.userblock
        userblock = int(given if given is not None else record.USERBLOCK_BYTES)
        if userblock < 2 * HEADER_BYTES or userblock & (userblock - 1) or userblock > 2**28:
            msg = (
                "Hdf5Options.userblock must be a power of two from 8 KiB to 256 MiB, "
                f"not {userblock}"
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
    def array_file(cls, root: Path, name: str) -> Path | None:
        return root  # every array is a dataset of the one file

    @classmethod
    def open(cls, root: Path, storage_options: Mapping[str, Any] | None = None) -> StoreHandle:
        return reading.Hdf5Handle(root)

    @classmethod
    def lock_path(cls, root: Path) -> Path:
        """A hidden file beside the store: the store is one file, which HDF5 itself locks."""
        return root.with_name(f".{root.name}.lock")

    # -- writing: files ------------------------------------------------------------------------

    def _sibling(self, suffix: str) -> Path:
        return self.root.with_name(f".{self.root.name}{suffix}")

    def _new_file(self, path: Path) -> _File:
        """Create an empty HDF5 file with oocstore's userblock header at ``path``."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        allocate.check_space(self, self._userblock, path)
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

    # -- writing: arrays -----------------------------------------------------------------------

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
                allocate.park(self, f, name)
            f.arrays.pop(name, None)
            layout = self._layout_for(capacity)
            row = math.prod(shape) * np.dtype(dtype).itemsize
            chunk_rows = allocate.chunk_rows_for(self, name, row, capacity) if row else 0
            arr = _Array(name, dtype, shape, layout, chunk_rows)
            allocate.create(self, f, arr, capacity)

    def reserve(self, name: str, capacity: int) -> None:
        with self._mutex:
            f = self._current()
            arr = f.arrays[name]
            if arr.layout == "empty":
                allocate.resize_empty(self, f, arr, capacity)
            elif arr.layout == "contiguous":
                if capacity > arr.allocated:
                    allocate.relocate(self, f, arr, arr.allocated, capacity)
            elif capacity > arr.requested:
                # Checked now, allocated in steps as rows arrive (write): a step is at most an
                # eighth of the array, so trimming at close() leaves little dead space.
                allocate.check_space(self, (capacity - arr.allocated) * arr.row_nbytes, f.path)
                arr.requested = capacity

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        f = self._current()
        n = len(values)
        if n == 0:
            return
        arr = allocate.allocate(self, f, name, start + n)
        _write_into(f, arr, start, values)

    def region_writer(self, name: str, stop: int) -> RegionWriter:
        f = self._current()
        arr = allocate.allocate(self, f, name, stop)
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
            allocate.park(self, f, name)

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

    def write_manifest(self, manifest: Manifest) -> None:
        with self._mutex:
            if self._final is not None:
                commit.commit_file(self, self._final, manifest, attribute=True)
                self._install(self._final)
                self._final = None
                return
            f = self._current()
            if not self._published:
                commit.commit_file(self, f, manifest, attribute=True)
                os.replace(f.path, self.root)
                fsync_dir(self.root.parent)
                f.path = self.root
                self._published = True
                return
            payload, flush = commit.prepare(
                self, f, manifest, self._meta_dirty or manifest.complete
            )
        # Outside the lock: the writer thread may grow an array meanwhile (a background
        # commit); what it adds is not named by this record.
        commit.publish(self, f, payload, flush)

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
                        allocate.resize_empty(self, f, arr, n)
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
                allocate.create(self, dst, new, rows)
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
