"""The backend interface: what every storage format (npy, Zarr, HDF5) must do.

Backends move bytes of *physical arrays* (a field's data and, for ragged fields, its shapes and
offsets). Sizing, padding, staging and commit policy stay in the writer; a backend only creates,
grows, writes, syncs and trims arrays, stores the manifest, and opens arrays for readers.
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self

import numpy as np

from .._durable import fsync_fd, open_nofollow
from .._lock import NoLock, StoreLock
from ..manifest import Manifest
from ..sizing import BLOCK_BYTES

__all__ = ["ArrayReader", "Backend", "BackendOptions", "RegionWriter", "StoreHandle"]


class ArrayReader(Protocol):
    """What a reader gets for a physical array: an ``np.ndarray`` or a lazy array."""

    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    def __getitem__(self, key: Any) -> Any: ...
    def __len__(self) -> int: ...


@dataclass(frozen=True)
class BackendOptions:
    """Write options every backend takes; a backend with more has a subclass
    (:attr:`Backend.options_class`), and ignores the ones it has no use for."""

    chunks: Mapping[str, int] | int | None = None
    """Rows per chunk along axis 0 (chunked backends), per array or for all."""
    compressors: Any = None
    """Passed to the chunked backends' compressors (None: the backend's default)."""
    length: int | None = None
    """The declared number of samples, when known: arrays of exactly that many rows may be
    laid out for it (HDF5: contiguous; Zarr: chunks sized to it)."""

    @classmethod
    def pick(cls, **given: Any) -> Self:
        """These options from ``given``, keeping only the names this class declares."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in given.items() if k in names})


class StoreHandle(ABC):
    """A store opened for reading: its manifest, its arrays and where their bytes are.

    What one open learns about the files (which commit slot, which file it was) stays here,
    never in the manifest. Reading again (``refresh``) asks the same handle.
    """

    location: str
    """The store's path or URL, as given (for messages and pickling)."""
    url: str | None = None
    """The fsspec URL of a store opened from one; None for a local path."""

    @abstractmethod
    def read_manifest(self) -> Manifest:
        """Read and validate the newest committed manifest; CorruptStoreError if damaged."""

    @abstractmethod
    def open_arrays(self, manifest: Manifest) -> dict[str, ArrayReader]:
        """Open every physical array ``manifest`` names, read-only, cut to its committed rows."""

    def chunk_rows(self, manifest: Manifest, name: str, array: ArrayReader) -> int | None:
        """Rows per chunk of committed array ``name`` on disk (``array`` is its open reader);
        None when it is not chunked."""
        chunks = getattr(array, "chunks", None)
        return int(chunks[0]) if isinstance(chunks, tuple) and chunks else None

    def array_file(self, name: str) -> Path | None:
        """The one local file holding physical array ``name``'s bytes, where there is one (a
        reader may map it privately); None where an array is many files or not a file."""
        return None

    def identity(self) -> tuple[int, int]:
        """What tells this store from another later made at the same location (device and
        inode of a local store; ``(0, 0)`` where there is no such thing)."""
        return (0, 0)

    def close(self) -> None:  # noqa: B027 -- optional: most handles hold no resources
        """Release what the handle holds; arrays already opened stay valid."""


class LocalHandle(StoreHandle):
    """A handle of a store at a local path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = os.fspath(root)

    def identity(self) -> tuple[int, int]:
        st = os.stat(self.root)
        return (st.st_dev, st.st_ino)


class RegionWriter(ABC):
    """Writes rows of one array whose storage the parent writer already allocated, from any
    process: it pickles as paths and numbers, so Dask tasks and worker processes each fill
    their own disjoint rows (``oocstore.write`` of a Dask array, ``workers=``).

    Regions start on a multiple of :meth:`Backend.chunk_rows` and end on one (or at the
    array's end), so no chunk file is shared by two writers. Nothing written here is
    declared until the parent commits it, after :meth:`sync` returned in every writer.
    """

    name: str
    """The physical array written."""

    @abstractmethod
    def write(self, start: int, values: np.ndarray) -> None:
        """Write rows ``values`` from row ``start`` (inside the allocated rows)."""

    @abstractmethod
    def sync(self) -> None:
        """Make every row written so far durable (before the parent commits them)."""

    def close(self) -> None:  # noqa: B027 -- optional: writers without handles need nothing
        """Release file handles (the writer may be used again: it reopens them)."""


class FileRegionWriter(RegionWriter):
    """A region writer of one file it ``pwrite``s into: opened once per process, on demand."""

    path: Path
    _fd: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None}  # a file descriptor does not cross processes

    def _open(self) -> int:
        if self._fd is None:
            self._fd = open_nofollow(self.path, os.O_WRONLY)
        return self._fd

    def sync(self) -> None:
        if self._fd is not None:
            fsync_fd(self._fd, self.path)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class Backend(ABC):
    """One storage format. An instance is a store being written; class methods read."""

    name: ClassVar[str]
    """Written to the manifest: ``npy``, ``zarr`` or ``hdf5``."""
    zero_copy: ClassVar[bool]
    """Does the reader get ``np.memmap`` views (True) or lazy arrays that copy (False)?"""
    suffixes: ClassVar[tuple[str, ...]]
    """Path suffixes that select this backend when none is named."""
    background_sync: ClassVar[bool] = False
    """May ``sync`` and ``write_manifest`` run in a thread while ``write`` goes on?"""
    grows_rows: ClassVar[bool] = False
    """Can a padded array's rows grow along trailing axes in place (:meth:`grow_rows`)? Else
    a ragged field is staged packed and laid out padded at close (one extra pass)."""

    options_class: ClassVar[type[BackendOptions]] = BackendOptions
    """The write options this backend takes."""
    local: ClassVar[bool] = True
    """Is the store at a local path (flock, fsync, free-space checks), not at a URL?"""

    def __init__(self, root: Path, options: BackendOptions | None = None) -> None:
        self.root = root
        given = options or self.options_class()
        if not isinstance(given, self.options_class):  # options of another backend
            given = self.options_class.pick(
                **{f.name: getattr(given, f.name) for f in fields(given)}
            )
        self.options = given

    # -- reading (class methods: no writer state) -------------------------------------------

    @classmethod
    @abstractmethod
    def holds_store(cls, root: Path) -> bool:
        """True when ``root`` looks like a store of this backend (no full validation)."""

    @classmethod
    @abstractmethod
    def open(cls, root: Path, storage_options: Mapping[str, Any] | None = None) -> StoreHandle:
        """Open the store at ``root`` for reading (CorruptStoreError comes from the handle's
        first read, not from here); ``storage_options`` are for stores at URLs."""

    @classmethod
    def supports_dtype(cls, dtype: np.dtype[Any]) -> bool:
        """Whether arrays of ``dtype`` can be stored (others raise UnsupportedDtypeError)."""
        return True

    @classmethod
    def lock_path(cls, root: Path) -> Path:
        """The file whose ``flock`` marks the single writer."""
        return root / ".lock"

    @classmethod
    def array_file(cls, root: Path, name: str) -> Path | None:
        """The one file holding physical array ``name``'s bytes, where there is one (a reader
        may map it privately); None where an array is many files or not a file."""
        return None

    @classmethod
    def unfinished_files(cls, root: Path) -> list[Path] | None:
        """The files a writer killed before its first commit left at ``root`` (no manifest).

        None unless ``root`` holds such a writer's lock and nothing it would not have written:
        only then may a new writer delete them. This default recognises nothing.
        """
        return None

    @property
    def location(self) -> str:
        """Where the store is, for messages: its path (or URL)."""
        return os.fspath(self.root)

    def exists(self) -> bool:
        """Is anything at the store's location (a store or not)?"""
        return self.root.exists() or self.root.is_symlink()

    def has_store(self) -> bool:
        """Is a committed store of this backend at the location?"""
        return type(self).holds_store(self.root)

    def lock(self) -> StoreLock | NoLock:
        """The single-writer lock of the store (see :meth:`lock_path`)."""
        return StoreLock(self.lock_path(self.root), self.root)

    def handle(self) -> StoreHandle:
        """A read handle of the store this instance writes (a resuming writer reads its
        last commit through it)."""
        return type(self).open(self.root)

    # -- writing -----------------------------------------------------------------------------

    @abstractmethod
    def create(self) -> None:
        """Create an empty store container at ``root`` (which does not exist or is empty)."""

    @abstractmethod
    def open_existing(self, manifest: Manifest) -> dict[str, int]:
        """Reopen a store for appending; return each array's allocated rows (capacity).

        Arrays on disk that the manifest does not name are leftovers of an interrupted
        writer and are removed.
        """

    @abstractmethod
    def create_array(
        self, name: str, dtype: np.dtype[Any], shape: tuple[int, ...], capacity: int
    ) -> None:
        """Create array ``name`` with rows of ``shape`` and room for ``capacity`` rows."""

    def create_padded(
        self,
        name: str,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        capacity: int,
        fill: Any,
        tile: tuple[int, ...],
    ) -> None:
        """Create the padded array of a ragged field: rows of ``shape`` padded with ``fill``,
        which :meth:`grow_rows` may widen later where the backend ``grows_rows`` (chunked
        in tiles of ``tile`` elements, :func:`oocstore.sizing.tile_shape`)."""
        self.create_array(name, dtype, shape, capacity)

    def grow_rows(self, name: str, shape: tuple[int, ...]) -> None:
        """Widen the rows of padded array ``name`` to ``shape`` (no axis shrinks), in place:
        rows already written read as before, padded with the fill value."""
        msg = f"the {self.name} backend cannot grow rows in place"
        raise NotImplementedError(msg)

    @abstractmethod
    def reserve(self, name: str, capacity: int) -> None:
        """Grow array ``name`` to hold at least ``capacity`` rows, with real allocation."""

    @abstractmethod
    def write(self, name: str, start: int, values: np.ndarray) -> None:
        """Write rows ``values`` into array ``name`` from row ``start``."""

    @abstractmethod
    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Read rows ``[start, stop)`` of array ``name`` (written rows only)."""

    @abstractmethod
    def delete_array(self, name: str) -> None:
        """Remove array ``name`` and its files."""

    def link_array(
        self, src: str, dst: str, dtype: np.dtype[Any], shape: tuple[int, ...], rows: int
    ) -> int:
        """Make array ``dst`` hold the bytes of ``src``'s rows, reinterpreted as ``rows`` rows
        of ``shape``; ``src`` stays intact (a commit may still name it). Return ``dst``'s capacity.

        This default copies in blocks; a backend that can share the bytes does so in O(1).
        """
        self.create_array(dst, dtype, shape, max(rows, 1))
        row = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        probe = self.read(src, 0, 0)
        src_row = int(np.prod(probe.shape[1:], dtype=np.int64)) * probe.dtype.itemsize
        src_rows = rows * row // src_row if src_row else 0
        step = max(BLOCK_BYTES // max(src_row, 1), 1)
        pos = 0
        for start in range(0, src_rows, step):
            block = np.ascontiguousarray(self.read(src, start, min(start + step, src_rows)))
            flat = block.reshape(-1).view(np.uint8).view(dtype).reshape(-1, *shape)
            self.write(dst, pos, flat)
            pos += len(flat)
        return max(rows, 1)

    def chunk_rows(self, name: str) -> int:
        """Rows per chunk (or shard) of array ``name`` along the sample axis."""
        return 1

    def write_unit_rows(self, name: str) -> int:
        """Rows a write should start at and span multiples of, so no chunk is rewritten.

        The writer stages small batches up to whole units; 1 means any run of rows can be
        written in place at its offset, so batches go straight through without a copy.
        """
        return self.chunk_rows(name)

    def region_writer(self, name: str, stop: int) -> RegionWriter:
        """A picklable writer of array ``name``'s rows from another process, with storage
        allocated for rows ``[0, stop)`` first (see :class:`RegionWriter`)."""
        msg = f"the {self.name} backend cannot write regions from other processes"
        raise NotImplementedError(msg)

    def rows_written(self, name: str, stop: int) -> None:  # noqa: B027 -- optional hook
        """Note that region writers filled rows ``[0, stop)`` of ``name`` (before a commit)."""

    @abstractmethod
    def sync(self, lengths: dict[str, int]) -> None:
        """Make rows ``[0, lengths[name])`` of every array durable, before the manifest."""

    @abstractmethod
    def write_manifest(self, manifest: Manifest) -> None:
        """Replace the manifest atomically and durably (this is the commit point)."""

    @abstractmethod
    def finalize(self, lengths: dict[str, int]) -> None:
        """Trim every array to exactly ``lengths[name]`` rows (before the final manifest)."""

    def destroy(self) -> None:
        """Remove a store that never got its first commit (the writer found no data)."""
        self.close()
        if self.root.is_dir() and not self.root.is_symlink():
            shutil.rmtree(self.root)
        elif self.root.exists():
            self.root.unlink()

    @abstractmethod
    def close(self) -> None:
        """Release files and handles; the store stays as the last manifest says."""
