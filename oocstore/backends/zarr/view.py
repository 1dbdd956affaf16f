"""Readers of committed rows: chunk files read by offset, and the lazy arrays that slice to
NumPy."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import stat
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..._durable import (
    atomic_write_bytes,
    open_nofollow,
)
from ...errors import CorruptStoreError
from ...manifest import Manifest
from .._files import pread_into
from .._lazy import LazyArray
from ..base import ArrayReader, LocalHandle
from ..storage import LocalStorage
from .codecs import _MAX_U64, _Crc32c, _decode
from .spec import (
    _READ_FLAGS,
    _ZARR_JSON,
    GROUP_META_LIMIT,
    _disk_errors,
    _fills,
    _Layout,
    _open_layout,
    manifest_from_group,
)

# -- reading ------------------------------------------------------------------------------------


class _UnitReader:
    """Reads rows of one array from its chunk (or shard) files as its layout says."""

    def __init__(self, layout: _Layout, dir_fd: int | None = None) -> None:
        self.layout = layout
        self.dir_fd = dir_fd
        """Chunk files are opened relative to this directory, when given (see ZarrArray)."""
        self._cache: tuple[tuple[int, int], np.ndarray] | None = None
        self._zarr: Any = None

    def forget(self) -> None:
        """Drop the decoded chunk kept for the next read (the writer changed the array)."""
        self._cache = None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` in the layout's store dtype."""
        lay = self.layout
        out = np.empty((stop - start, *lay.row_shape), dtype=lay.store_dtype)
        if out.size == 0:
            return out  # rows of no bytes: nothing to read (a zstd frame of 0 bytes would fail)
        if not lay.native:
            return self._read_zarr(start, stop)
        if lay.tiled:
            self._read_tiled(start, stop, out)
            return out
        unit = lay.unit_rows
        pos = start
        while pos < stop:
            u = pos // unit
            us = u * unit
            end = min(stop, us + unit)
            self._read_unit(u, pos - us, end - us, out[pos - start : end - start])
            pos = end
        return out

    def _read_tiled(self, start: int, stop: int, out: np.ndarray) -> None:
        """Assemble rows from the chunk files of every tile of their grid."""
        lay = self.layout
        unit = lay.unit_rows
        for tile in lay.tiles():
            where, crop = lay.tile_region(tile)
            pos = start
            while pos < stop:
                u = pos // unit
                us = u * unit
                end = min(stop, us + unit)
                cells = self.read_cells(u, tile, pos - us, end - us)
                out[(slice(pos - start, end - start), *where)] = cells[(slice(None), *crop)]
                pos = end

    def read_cells(self, u: int, tile: tuple[int, ...] | None, a: int, b: int) -> np.ndarray:
        """Rows ``[a, b)`` of unit ``u``'s chunk file at ``tile``, as stored (whole tiles)."""
        out = np.empty((b - a, *self.layout.cell_shape), dtype=self.layout.store_dtype)
        self._read_unit(u, a, b, out, tile)
        return out

    def _read_unit(
        self, u: int, a: int, b: int, out: np.ndarray, tile: tuple[int, ...] | None = None
    ) -> None:
        lay = self.layout
        key = lay.unit_key(u, tile)
        where = f"{lay.path}{os.sep}{key}"
        try:
            if self.dir_fd is None:
                fd = open_nofollow(lay.path / key, os.O_RDONLY)
            else:
                fd = os.open(key, _READ_FLAGS, dir_fd=self.dir_fd)
        except FileNotFoundError:
            if self.dir_fd is not None and os.fstat(self.dir_fd).st_nlink == 0:
                problem = (
                    "the writer removed this array after the store was opened (a ragged "
                    "field changed its layout); open the store again to read it"
                )
            elif lay.tiled:
                # A tile no sample reached when these rows were written: all padding. (A
                # tile lost later is caught by verify(): its rows' checksums fail.)
                out[...] = lay.fill
                return
            else:
                problem = f"chunk file of committed rows {u * lay.unit_rows + a}.. is missing"
            raise CorruptStoreError(where, problem) from None
        except OSError as err:  # ELOOP: a symlink planted in the store is never followed
            problem = f"cannot open the chunk file ({err.strerror}); is it a symlink?"
            raise CorruptStoreError(where, problem) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise CorruptStoreError(where, "chunk file is not a regular file")
            if lay.shard_rows is None:
                if not lay.codecs:
                    pread_into(fd, out, a * lay.cell_nbytes, where)
                    return
                chunk = self._decoded((u, tile, 0), lambda: _read_all(fd), where)
                out[...] = chunk[a:b]
                return
            self._read_shard(fd, (u, tile), a, b, out, where)
        finally:
            os.close(fd)

    def _read_shard(
        self, fd: int, u: tuple[Any, ...], a: int, b: int, out: np.ndarray, where: str
    ) -> None:
        lay = self.layout
        cr = lay.chunk_rows
        n_inner = lay.unit_rows // cr
        index_nbytes = 16 * n_inner + 4 * sum(isinstance(c, _Crc32c) for c in lay.index_codecs)
        size = os.fstat(fd).st_size
        if size < index_nbytes:
            raise CorruptStoreError(where, "shard file is shorter than its index")
        raw = os.pread(fd, index_nbytes, 0 if lay.index_at_start else size - index_nbytes)
        try:
            index = np.frombuffer(_decode(lay.index_codecs, raw), dtype="<u8").reshape(-1, 2)
        except ValueError as err:
            raise CorruptStoreError(where, f"shard index is damaged ({err})") from None
        pos = a
        while pos < b:
            k = pos // cr
            ks = k * cr
            end = min(b, ks + cr)
            off, nb = (int(v) for v in index[k])
            if off == _MAX_U64 or off + nb > size:
                raise CorruptStoreError(where, f"inner chunk {k} of committed rows is missing")
            dst = out[pos - a : end - a]
            if not lay.codecs:
                pread_into(fd, dst, off + (pos - ks) * lay.cell_nbytes, where)
            else:
                chunk = self._decoded((*u, k), functools.partial(os.pread, fd, nb, off), where)
                dst[...] = chunk[pos - ks : end - ks]
            pos = end

    def _decoded(self, key: tuple[Any, ...], raw: Callable[[], bytes], where: str) -> np.ndarray:
        # One decoded chunk is kept: reading sample after sample decodes each chunk once.
        # Its committed rows never change, so the cache cannot go stale for them.
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        lay = self.layout
        try:
            data = np.frombuffer(_decode(lay.codecs, raw()), dtype=np.uint8)
        except Exception as err:  # numcodecs raises RuntimeError, ValueError...
            raise CorruptStoreError(where, f"cannot decode chunk ({err})") from None
        nbytes = lay.chunk_rows * lay.cell_nbytes
        if data.size != nbytes:
            raise CorruptStoreError(
                where, f"chunk decodes to {data.size:,} bytes, expected {nbytes:,}"
            )
        chunk = data.view(lay.store_dtype).reshape(lay.chunk_rows, *lay.cell_shape)
        self._cache = (key, chunk)
        return chunk

    def _read_zarr(self, start: int, stop: int) -> np.ndarray:
        where = os.fspath(self.layout.path)
        try:
            if self._zarr is None:
                _refuse_symlinks(self.layout.path)  # zarr-python's LocalStore follows them
                self._zarr = _open_zarr(self.layout.path, read_only=True)
            out = np.asarray(self._zarr[start:stop])
        except CorruptStoreError:
            raise
        except Exception as err:  # zarr-python fails on damaged metadata with many types
            problem = f"zarr cannot read rows {start}..{stop} ({type(err).__name__}: {err})"
            raise CorruptStoreError(where, problem[:500]) from None
        want = (stop - start, *self.layout.row_shape)
        if out.ndim == len(want) and all(o >= w for o, w in zip(out.shape, want, strict=True)):
            out = out[tuple(slice(0, w) for w in want)]  # zarr.json runs ahead of the commit
        if out.shape != want:
            problem = f"zarr read rows {start}..{stop} as shape {out.shape}, not {want}"
            raise CorruptStoreError(where, problem)
        return out.astype(self.layout.store_dtype, copy=False)


def _refuse_symlinks(path: Path) -> None:
    """CorruptStoreError if anything in array directory ``path`` is a symlink."""
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            if os.path.islink(os.path.join(dirpath, name)):
                where = os.path.join(dirpath, name)
                raise CorruptStoreError(where, "a symlink in the store is never followed")


def _in_use(path: Path) -> bool:
    """Does a reader's view hold array directory ``path`` (a shared flock on it)?"""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # no locks on this filesystem: nothing tells, delete as before
    finally:
        os.close(fd)  # also drops the lock
    return False


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0)


def _open_zarr(path: Path, *, read_only: bool) -> Any:
    """One array through zarr-python, for layouts this module does not encode itself."""
    import zarr
    from zarr.errors import UnstableSpecificationWarning
    from zarr.storage import LocalStore

    store: Any = LocalStore(path, read_only=True) if read_only else _durable_local_store(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnstableSpecificationWarning)
        return zarr.open_array(
            store, mode="r" if read_only else "r+", config={"write_empty_chunks": True}
        )


@functools.cache
def _durable_store_class() -> type:
    from zarr.storage import LocalStore

    class DurableLocalStore(LocalStore):
        """zarr's LocalStore, but every key is written with fsync before its rename."""

        async def set(self, key: str, value: Any) -> None:
            self._check_writable()
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            with _disk_errors(path):
                atomic_write_bytes(path, value.to_bytes())

    return DurableLocalStore


def _durable_local_store(path: Path) -> Any:
    return _durable_store_class()(path)


class ZarrArray(LazyArray):
    """A field of a Zarr store: committed rows only, read on demand, sliced to NumPy.

    Zarr's own array shape may be larger while a writer grows the store; this array never
    shows rows past the manifest's committed length. Uncompressed chunks are read with
    ``pread`` of just the rows asked for; compressed chunks are decoded whole (the last one is
    kept, so reading sample after sample decodes each chunk once).
    """

    def __init__(self, layout: _Layout, length: int) -> None:
        super().__init__((length, *layout.row_shape), layout.dtype)
        # Chunks are opened relative to the array's directory as it was at open: should the
        # writer replace the array (same name, new directory), this view fails loudly rather
        # than read another array's chunks as its own.
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_NOFOLLOW
        try:
            dir_fd = os.open(layout.path, flags | getattr(os, "O_CLOEXEC", 0))
        except OSError as err:
            raise CorruptStoreError(
                os.fspath(layout.path), f"cannot open the array directory ({err.strerror})"
            ) from None
        # A shared lock tells the writer this directory is in use: it then moves the array
        # aside instead of deleting it, and this view keeps reading it (as an np.memmap keeps
        # an unlinked .npy file). Released when the view is collected.
        with contextlib.suppress(OSError):
            fcntl.flock(dir_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        self._reader = _UnitReader(layout, dir_fd)

    def close(self) -> None:
        """Release the directory handle (reads then fail); called when the view is collected."""
        fd, self._reader.dir_fd = self._reader.dir_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        # Not contextlib.suppress: at interpreter exit this module's globals may be gone.
        try:  # noqa: SIM105
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict[str, Any]:
        # A directory handle does not cross processes: the copy reopens the directory.
        return {"layout": self._reader.layout, "shape": self.shape}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["layout"], state["shape"][0])  # type: ignore[misc]

    @property
    def path(self) -> Path:
        """The Zarr array's directory (``zarr.open_array(path)`` opens it)."""
        return self._reader.layout.path

    @property
    def chunks(self) -> tuple[int, ...]:
        """Rows per chunk along axis 0, then the chunk's extent on each trailing axis (the
        whole row unless a ragged field grew it; as ``zarr.Array.chunks``)."""
        lay = self._reader.layout
        return (lay.chunk_rows, *lay.cell_shape)

    def _read(self, start: int, stop: int) -> np.ndarray:
        out = self._reader.read(start, stop)
        return out if out.dtype == self.dtype else out.astype(self.dtype)


class ZarrHandle(LocalHandle):
    """A local Zarr store opened for reading: the group's manifest, then lazy arrays."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.storage = LocalStorage(root)

    def read_manifest(self) -> Manifest:
        data = self.storage.read(_ZARR_JSON, GROUP_META_LIMIT, "group metadata")
        return manifest_from_group(data, self.storage.where(_ZARR_JSON))

    def open_arrays(self, manifest: Manifest) -> dict[str, ArrayReader]:
        out: dict[str, ArrayReader] = {}
        fills = _fills(manifest)
        for name, spec in manifest.arrays.items():
            if _vanished_empty(self.root / name, spec.length):
                out[name] = np.empty((0, *spec.shape), dtype=spec.dtype)
                continue
            layout = _open_layout(self.root / name, spec.dtype, spec.shape, fills.get(name, 0))
            if layout.capacity < spec.length:
                raise CorruptStoreError(
                    os.fspath(layout.path / _ZARR_JSON),
                    f"array has {layout.capacity:,} rows but the manifest commits "
                    f"{spec.length:,}; was it truncated?",
                )
            out[name] = ZarrArray(layout, spec.length)
        return out


def _vanished_empty(path: Path, length: int) -> bool:
    """Is array ``path`` one with no committed rows whose metadata is gone?

    A writer replacing an array before its first rows were committed (a dense field turning
    padded) and killed between removing the old one and writing the new one's metadata
    leaves that. Nothing committed is lost, so it reads as empty and a writer recreates it.
    """
    return length == 0 and not (path / _ZARR_JSON).exists() and not path.is_symlink()
