"""The npy backend: a directory with one page-aligned ``.npy`` file per array and a JSON manifest.

Writes are positioned (``pwrite``), never through a writable memory map, into space reserved
with ``posix_fallocate``: a full disk is an ``OSError`` at the write, never a ``SIGBUS``.
Readers map the committed prefix read-only.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .._direct import DirectWriter
from .._durable import (
    fsync_dir,
    fsync_fd,
    open_nofollow,
    preallocate,
    pwrite_all,
)
from .._npyheader import DATA_OFFSET, build_header, parse_header
from ..errors import CorruptStoreError
from ..manifest import MAX_MANIFEST_BYTES, ArraySpec, Manifest
from .base import (
    ArrayReader,
    Backend,
    BackendOptions,
    FileRegionWriter,
    LocalHandle,
    RegionWriter,
    StoreHandle,
)
from .storage import LocalStorage

__all__ = ["MANIFEST_NAME", "NpyBackend", "NpyRegionWriter"]

MANIFEST_NAME = "oocstore.json"
_ARRAY_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*(\.(shapes|values|offsets))?\.npy")
_PARTIAL_MANIFEST = re.compile(r"\.oocstore\.json\.[0-9a-f]{32}\.partial")  # atomic_write_bytes


class _OpenArray:
    """Writer-side state of one array file."""

    def __init__(self, fd: int, path: Path, dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
        self.fd = fd
        self.path = path
        self.direct = DirectWriter(fd, path)
        self.dtype = dtype
        self.shape = shape
        self.row_nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.capacity = 0
        self.synced_length = -1


class NpyBackend(Backend):
    """Store arrays as ``.npy`` files in a directory; readers get ``np.memmap`` views."""

    name: ClassVar[str] = "npy"
    zero_copy: ClassVar[bool] = True
    suffixes: ClassVar[tuple[str, ...]] = ()
    # fdatasync and pwrite on separate files and ranges are safe to overlap.
    background_sync: ClassVar[bool] = True

    def __init__(self, root: Path, options: BackendOptions | None = None) -> None:
        super().__init__(root, options)
        self.storage = LocalStorage(root)
        self._arrays: dict[str, _OpenArray] = {}

    # -- reading -----------------------------------------------------------------------------

    @classmethod
    def holds_store(cls, root: Path) -> bool:
        return root.is_dir() and (root / MANIFEST_NAME).is_file()

    @classmethod
    def array_file(cls, root: Path, name: str) -> Path | None:
        return root / f"{name}.npy"

    @classmethod
    def open(cls, root: Path, storage_options: Mapping[str, Any] | None = None) -> StoreHandle:
        return NpyHandle(root)

    @classmethod
    def unfinished_files(cls, root: Path) -> list[Path] | None:
        if root.is_symlink() or not root.is_dir() or not cls.lock_path(root).is_file():
            return None
        if (root / MANIFEST_NAME).exists() or (root / MANIFEST_NAME).is_symlink():
            return None
        found = []
        with os.scandir(root) as entries:  # closed on the early returns too
            for entry in entries:
                if entry.name == cls.lock_path(root).name:
                    continue
                ours = _ARRAY_FILE.fullmatch(entry.name) or _PARTIAL_MANIFEST.fullmatch(entry.name)
                if not ours or not entry.is_file(follow_symlinks=False):
                    return None
                found.append(Path(entry.path))
        return found

    # -- writing -----------------------------------------------------------------------------

    def _file(self, name: str) -> Path:
        return self.root / f"{name}.npy"

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fsync_dir(self.root.parent)

    def open_existing(self, manifest: Manifest) -> dict[str, int]:
        for entry in os.scandir(self.root):
            if _ARRAY_FILE.fullmatch(entry.name) and entry.name[:-4] not in manifest.arrays:
                # Written by an interrupted writer after its last commit: not part of the store.
                Path(entry.path).unlink()
        capacities = {}
        for name, spec in manifest.arrays.items():
            path = self._file(name)
            try:
                fd = open_nofollow(path, os.O_RDWR)
            except FileNotFoundError:
                raise CorruptStoreError(os.fspath(path), "array file is missing") from None
            except OSError as err:  # ELOOP: a symlink planted in the store is never followed
                problem = f"cannot open the array file ({err.strerror})"
                raise CorruptStoreError(os.fspath(path), problem) from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise CorruptStoreError(os.fspath(path), "array file is not a regular file")
            arr = _OpenArray(fd, path, spec.dtype, spec.shape)
            self._arrays[name] = arr
            size = os.fstat(fd).st_size
            rows = (size - DATA_OFFSET) // arr.row_nbytes if arr.row_nbytes else 2**62
            if rows < spec.length:
                raise CorruptStoreError(
                    os.fspath(path),
                    f"file holds {max(rows, 0)} rows but the manifest commits {spec.length}",
                )
            arr.capacity = rows
            arr.synced_length = spec.length
            capacities[name] = rows
        return capacities

    def create_array(
        self, name: str, dtype: np.dtype[Any], shape: tuple[int, ...], capacity: int
    ) -> None:
        path = self._file(name)
        # Never truncate in place: a reader may map the old file, or it may share its bytes
        # with another array (link_array). A new inode leaves both intact.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fd = open_nofollow(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        arr = _OpenArray(fd, path, dtype, shape)
        self._arrays[name] = arr
        pwrite_all(fd, build_header(dtype, (0, *shape)), 0, path)
        self.reserve(name, capacity)

    def reserve(self, name: str, capacity: int) -> None:
        arr = self._arrays[name]
        if capacity <= arr.capacity:
            return
        start = DATA_OFFSET + arr.capacity * arr.row_nbytes
        end = DATA_OFFSET + capacity * arr.row_nbytes
        preallocate(arr.fd, start, end - start, arr.path)
        arr.capacity = capacity

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        arr = self._arrays[name]
        if start + len(values) > arr.capacity:
            self.reserve(name, start + len(values))
        data = np.ascontiguousarray(values)
        arr.direct.pwrite(data, DATA_OFFSET + start * arr.row_nbytes)

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        arr = self._arrays[name]
        arr.direct.drain()
        out = np.empty((stop - start, *arr.shape), dtype=arr.dtype)
        view = memoryview(out.reshape(-1).view(np.uint8)) if out.size else memoryview(b"")  # type: ignore[arg-type]
        done = 0
        offset = DATA_OFFSET + start * arr.row_nbytes
        while done < len(view):
            n = os.preadv(arr.fd, [view[done:]], offset + done)
            if n == 0:
                raise CorruptStoreError(os.fspath(arr.path), "file ends before its rows")
            done += n
        return out

    def link_array(
        self, src: str, dst: str, dtype: np.dtype[Any], shape: tuple[int, ...], rows: int
    ) -> int:
        # A hard link shares the bytes: the dense rows become the packed values at no cost,
        # and the committed manifest's file stays valid until a new manifest drops it.
        old = self._arrays[src]
        old.direct.drain()
        dst_path = self._file(dst)
        with contextlib.suppress(FileNotFoundError):
            dst_path.unlink()
        os.link(old.path, dst_path, follow_symlinks=False)
        fd = open_nofollow(dst_path, os.O_RDWR)
        arr = _OpenArray(fd, dst_path, dtype, shape)
        size = os.fstat(fd).st_size
        arr.capacity = (size - DATA_OFFSET) // arr.row_nbytes if arr.row_nbytes else rows
        self._arrays[dst] = arr
        fsync_dir(self.root)
        return arr.capacity

    def region_writer(self, name: str, stop: int) -> RegionWriter:
        self.reserve(name, stop)
        arr = self._arrays[name]
        arr.direct.drain()
        return NpyRegionWriter(name, arr.path, arr.row_nbytes, arr.capacity)

    def delete_array(self, name: str) -> None:
        arr = self._arrays.pop(name, None)
        if arr is not None:
            _close(arr)
        with contextlib.suppress(FileNotFoundError):
            self._file(name).unlink()

    def sync(self, lengths: dict[str, int]) -> None:
        for name, length in lengths.items():
            arr = self._arrays[name]
            if length == arr.synced_length:
                continue
            arr.direct.drain()  # rows still in its buffers or being written go to the file
            # The header names the committed rows, so np.load of a crashed store shows them.
            pwrite_all(arr.fd, build_header(arr.dtype, (length, *arr.shape)), 0, arr.path)
            fsync_fd(arr.fd, arr.path)
            arr.synced_length = length

    def write_manifest(self, manifest: Manifest) -> None:
        self.storage.write(MANIFEST_NAME, manifest.dumps())  # the commit point

    def finalize(self, lengths: dict[str, int]) -> None:
        for name, length in lengths.items():
            arr = self._arrays[name]
            # Only bytes past the committed rows go: readers mapping the prefix are safe.
            os.ftruncate(arr.fd, DATA_OFFSET + length * arr.row_nbytes)
            arr.capacity = length
            arr.synced_length = -1
        self.sync(lengths)

    def close(self) -> None:
        for arr in self._arrays.values():
            with contextlib.suppress(OSError):
                _close(arr)
        self._arrays.clear()


def _close(arr: _OpenArray) -> None:
    """Close an array's descriptors (what it wrote is in the file first)."""
    try:
        arr.direct.close()
    finally:
        os.close(arr.fd)


class NpyRegionWriter(FileRegionWriter):
    """Rows of one preallocated ``.npy`` file, written with ``pwrite`` at their offsets."""

    def __init__(self, name: str, path: Path, row_nbytes: int, capacity: int) -> None:
        self.name = name
        self.path = path
        self.row_nbytes = row_nbytes
        self.capacity = capacity
        self._fd = None

    def write(self, start: int, values: np.ndarray) -> None:
        if start < 0 or start + len(values) > self.capacity:
            msg = (
                f"rows {start}..{start + len(values)} of {os.fspath(self.path)!r} lie outside "
                f"its {self.capacity} allocated rows"
            )
            raise IndexError(msg)
        data = np.ascontiguousarray(values)
        if data.nbytes:
            pwrite_all(self._open(), data, DATA_OFFSET + start * self.row_nbytes, self.path)


def _map_array(root: Path, name: str, spec: ArraySpec, complete: bool) -> np.ndarray:
    """Map the committed rows of one array file read-only, after checking the file."""
    path = root / f"{name}.npy"
    where = os.fspath(path)
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        raise CorruptStoreError(where, "file is missing") from None
    except OSError as err:  # ELOOP: a symlink planted in the store
        raise CorruptStoreError(where, f"cannot open ({err.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CorruptStoreError(where, "not a regular file")
        head = os.pread(f.fileno(), DATA_OFFSET, 0)
        if complete:
            dtype, shape, offset = parse_header(head, where)
            if offset != DATA_OFFSET or dtype != spec.dtype or shape != (spec.length, *spec.shape):
                raise CorruptStoreError(
                    where,
                    f".npy header says {dtype} {shape} at offset {offset}; the manifest says "
                    f"{spec.dtype} {(spec.length, *spec.shape)} at offset {DATA_OFFSET}",
                )
        elif not head.startswith(b"\x93NUMPY"):
            raise CorruptStoreError(where, "not a .npy file (bad magic bytes)")
        shape = (spec.length, *spec.shape)
        nbytes = spec.length * spec.row_nbytes
        if st.st_size < DATA_OFFSET + nbytes:
            raise CorruptStoreError(
                where,
                f"file is {st.st_size:,} bytes, too short for the {spec.length:,} committed rows "
                f"of {spec.dtype} {spec.shape} ({DATA_OFFSET + nbytes:,} bytes); "
                "was it truncated?",
            )
        if nbytes == 0:
            # mmap of length 0 would map the whole file; an empty array needs no mapping.
            out = np.empty(shape, dtype=spec.dtype)
            out.flags.writeable = False
            return out
        return np.memmap(f, dtype=spec.dtype, mode="r", offset=DATA_OFFSET, shape=shape)


class NpyHandle(LocalHandle):
    """A directory of ``.npy`` files opened for reading: the manifest, then memory maps."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.storage = LocalStorage(root)

    def read_manifest(self) -> Manifest:
        path = self.root / MANIFEST_NAME
        data = self.storage.read(MANIFEST_NAME, MAX_MANIFEST_BYTES, "manifest")
        try:
            manifest = Manifest.loads(data, os.fspath(path))
        except UnicodeDecodeError:
            raise CorruptStoreError(os.fspath(path), "manifest is not UTF-8 text") from None
        if manifest.backend != NpyBackend.name:
            raise CorruptStoreError(
                os.fspath(path), f"manifest says backend {manifest.backend!r}, files are npy"
            )
        return manifest

    def open_arrays(self, manifest: Manifest) -> dict[str, ArrayReader]:
        return {
            name: _map_array(self.root, name, spec, manifest.complete)
            for name, spec in manifest.arrays.items()
        }

    def array_file(self, name: str) -> Path | None:
        return NpyBackend.array_file(self.root, name)
