"""The Zarr v3 backend: a group with one array per field and the manifest in its attributes.

On disk a store is a plain Zarr v3 group (``zarr.open(path)`` reads it): array ``x`` holds field
``x``, ragged fields add ``x.shapes`` (or ``x.values``/``x.offsets``/``x.shapes`` when packed),
and the group's attribute ``"oocstore"`` holds the full manifest, the one record of how many rows
are committed. Zarr's own array shape runs ahead of it while a writer grows the arrays.

Why chunk files are written here and not through zarr-python: zarr 3.1's write path reached
about 0.1x the disk's sequential speed on small images (per-chunk overhead of its async
pipeline, and a read-modify-write for every batch that is not chunk-aligned). The writer hands
this backend whole, chunk-aligned runs of rows, which are encoded as the array's own metadata
says (the ``bytes`` codec, then ``zstd``/``blosc``/``gzip``/``crc32c``, optionally inside the
``sharding_indexed`` codec) and written with ``pwrite``. Arrays whose codecs this module does
not know are read and written through zarr-python instead (correct, slower). The tests check
every layout against zarr-python itself.

Chunk keys are flat (``x/c.0.0.0.0``: the default encoding with the ``.`` separator), so a
commit fsyncs one directory per array. Each chunk file gets its blocks (``posix_fallocate``)
before it is written: a full disk fails there, and writing into allocated blocks is faster.

Crash safety: chunk files written since the last commit, and the directories that gained
entries, are fsynced by :meth:`ZarrBackend.sync` (which may run in the writer's commit thread);
a chunk file that already holds committed rows is only replaced whole (its old version and the
new one fsynced, then a rename) or, when stored uncompressed, rewritten in place with the same
bytes for its committed rows. ``zarr.json`` documents (zarr-python's ``LocalStore`` renames but
never fsyncs them) are written through :class:`~oocstore.backends.storage.LocalStorage`, which
replaces each atomically and durably; the group's ``zarr.json`` is the commit point.

Readers get :class:`ZarrArray` views of the committed rows. Each holds its array's directory
open with a shared ``flock``: when the writer drops an array a view still reads (a ragged field
changing layout), it moves the directory into a hidden attic beside the store instead of
deleting it, and later writer steps delete what no view holds. The writer's lock file sits
beside the store too: zarr-python warns about anything in a group that is not a Zarr node.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..._durable import (
    fsync_dir,
    fsync_fd,
    open_nofollow,
)
from ...errors import CorruptStoreError, UnsupportedDtypeError
from ...manifest import Manifest
from ..base import Backend, BackendOptions, RegionWriter, StoreHandle
from ..storage import LocalStorage
from . import files, rows
from .region import ZarrRegionWriter
from .spec import (
    _ARRAY_DIR,
    _TMP_PREFIX,
    _ZARR_JSON,
    ZarrOptions,
    _array_doc,
    _check_dtype,
    _data_type_json,
    _disk_errors,
    _dumps,
    _fills,
    _Layout,
    _open_layout,
    group_bytes,
)
from .state import _WriteState
from .view import ZarrHandle, _in_use, _UnitReader, _vanished_empty


class ZarrBackend(Backend):
    """Store arrays as a Zarr v3 group; readers get lazy :class:`ZarrArray` views.

    Options: :class:`ZarrOptions`.
    """

    name: ClassVar[str] = "zarr"
    zero_copy: ClassVar[bool] = False
    suffixes: ClassVar[tuple[str, ...]] = (".zarr",)
    background_sync: ClassVar[bool] = True
    grows_rows: ClassVar[bool] = True
    options_class: ClassVar[type[BackendOptions]] = ZarrOptions
    options: ZarrOptions

    def __init__(self, root: Path, options: BackendOptions | None = None) -> None:
        super().__init__(root, options)
        self.storage = LocalStorage(root)
        self._arrays: dict[str, _WriteState] = {}
        self._mutex = threading.Lock()  # guards the sets below and zarr.json shapes
        self._pending: set[Path] = set()  # chunk files written since the last sync
        self._dirty_dirs: set[Path] = set()  # directories with entries new since then

    @classmethod
    def supports_dtype(cls, dtype: np.dtype[Any]) -> bool:
        """Whether arrays of ``dtype`` can be stored (others raise UnsupportedDtypeError)."""
        try:
            _data_type_json(np.dtype(dtype).str)
        except UnsupportedDtypeError:
            return False
        return True

    # -- reading -----------------------------------------------------------------------------

    @classmethod
    def holds_store(cls, root: Path) -> bool:
        return files.holds_store(root)

    @classmethod
    def open(cls, root: Path, storage_options: Mapping[str, Any] | None = None) -> StoreHandle:
        return ZarrHandle(root)

    @classmethod
    def lock_path(cls, root: Path) -> Path:
        """A hidden file beside the store: zarr-python warns about any entry in a group's
        directory that is not a Zarr node (``g.members()`` would warn about ``.lock``)."""
        return root.with_name(f".{root.name}.lock")

    @classmethod
    def unfinished_files(cls, root: Path) -> list[Path] | None:
        return files.unfinished_files(root, cls.lock_path(root))

    # -- writing: arrays ---------------------------------------------------------------------

    def create(self) -> None:
        # Only the directory: the group's zarr.json is the commit point, written by the first
        # commit, so a directory without it is not (yet) a store.
        with _disk_errors(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
        self._sweep_attic()
        # Array directories a writer killed before its first commit left, emptied by the
        # writer (unfinished_files): zarr-python would warn about them as unknown objects.
        for entry in os.scandir(self.root):
            if _ARRAY_DIR.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.rmdir(entry.path)  # only if empty
        fsync_dir(self.root.parent)

    def open_existing(self, manifest: Manifest) -> dict[str, int]:
        self._sweep_attic()
        for entry in os.scandir(self.root):
            if entry.name.startswith(_TMP_PREFIX) or entry.name.endswith(".partial"):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            elif (
                _ARRAY_DIR.fullmatch(entry.name)
                and entry.is_dir(follow_symlinks=False)
                and entry.name not in manifest.arrays
            ):
                # Created by an interrupted writer after its last commit: not part of the store.
                self._drop(entry.name)
        capacities = {}
        fills = _fills(manifest)
        for name, spec in manifest.arrays.items():
            if _vanished_empty(self.root / name, spec.length):
                self.create_array(name, spec.dtype, spec.shape, 0)
                capacities[name] = 0
                continue
            layout = _open_layout(self.root / name, spec.dtype, spec.shape, fills.get(name, 0))
            if layout.capacity < spec.length:
                raise CorruptStoreError(
                    os.fspath(layout.path / _ZARR_JSON),
                    f"array has {layout.capacity:,} rows but the manifest commits {spec.length:,}",
                )
            for entry in os.scandir(layout.path):
                if entry.name.startswith(_TMP_PREFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
            st = _WriteState(layout, _UnitReader(layout), written=spec.length)
            if name in fills or list(layout.doc["shape"][1:]) != list(spec.shape):
                self._shrink_rows(st)
            self._arrays[name] = st
            capacities[name] = layout.capacity
        return capacities

    def _shrink_rows(self, st: _WriteState) -> None:
        """Back to the committed row shape, after a writer grew a padded field and was killed.

        Its chunk files past the committed grid hold only rows never committed; they go, so
        growing again starts from padding, never from a dead writer's samples. (zarr.json
        may not show the growth: it is written at the next sync, and the kill can come first.)
        """
        lay = st.layout
        grid = lay.grid()
        for path, index in list(lay.chunk_files()):
            if any(i >= g for i, g in zip(index[1:], grid, strict=False)):
                os.unlink(path)
                self._touched(dirs=(Path(path).parent,))
        if list(lay.doc["shape"][1:]) != list(lay.row_shape):
            with self._mutex:
                lay.doc["shape"][1:] = list(lay.row_shape)
                st.meta_dirty = True

    def _compressors(self) -> Any:
        return self.options.compressor_codecs()

    def create_array(
        self, name: str, dtype: np.dtype[Any], shape: tuple[int, ...], capacity: int
    ) -> None:
        self._create(name, dtype, shape, capacity)

    def create_padded(
        self,
        name: str,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        capacity: int,
        fill: Any,
        tile: tuple[int, ...],
    ) -> None:
        # Chunks are tiles of the trailing axes, so rows can grow without rewriting a byte:
        # new tiles are new chunk files, and an edge tile wastes less than a tile per axis.
        self._create(name, dtype, shape, capacity, tile=tile, fill=fill)

    def _create(
        self,
        name: str,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        capacity: int,
        *,
        tile: tuple[int, ...] | None = None,
        fill: Any = None,
    ) -> None:
        _check_dtype(dtype)
        path = self.root / name
        self._drop(name)
        cell = tuple(shape) if tile is None else tile
        nbytes = int(np.prod(cell, dtype=np.int64)) * dtype.itemsize
        if tile is not None and (self._compressors() is not None or self.options.shards_for(name)):
            # Chunks (or shards) written whole are staged whole, a row's every tile at once:
            # sized on the row, so staging one stays near the target (and never on a tile
            # larger than the row, so a few tiny first rows do not make a huge first chunk).
            nbytes = max(nbytes, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        elif tile is not None:
            # Written in place: the rows not written yet take no disk, so a chunk need not be
            # cut to a capacity that, for a ragged stream, is only a guess from the first rows.
            capacity = 0
        chunk, shard = self.options.chunking(name, nbytes, capacity)
        doc = _array_doc(
            dtype, (capacity, *shape), chunk, shard, self._compressors(), tile=tile, fill=fill
        )
        with _disk_errors(path):
            path.mkdir()
            self.storage.write(f"{name}/{_ZARR_JSON}", _dumps(doc))
        self._touched(dirs=(self.root,))
        layout = _Layout.parse(path, doc, dtype, os.fspath(path / _ZARR_JSON))
        if fill is not None:
            layout.fill = fill
        self._arrays[name] = _WriteState(layout, _UnitReader(layout), dirs={path})

    def grow_rows(self, name: str, shape: tuple[int, ...]) -> None:
        st = self._arrays[name]
        lay = st.layout
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(lay.row_shape) or any(
            a < b for a, b in zip(shape, lay.row_shape, strict=True)
        ):
            msg = f"rows of {name!r} can only grow, not go from {lay.row_shape} to {shape}"
            raise ValueError(msg)
        # Rows already written keep their tiles; the new tiles are missing files, which
        # read as the fill value: their padding. zarr.json follows at the next sync.
        with self._mutex:
            lay.doc["shape"][1:] = list(shape)
            lay.row_shape = shape
            st.meta_dirty = True
        st.zarr_array = None
        st.reader.forget()

    def _drop(self, name: str) -> None:
        st = self._arrays.pop(name, None)
        if st is not None:
            st.close_chunk()
        path = self.root / name
        if path.is_dir() and not path.is_symlink():
            if _in_use(path):
                # A reader's view of an older commit still reads it: move it aside, whole.
                attic = files.attic_path(self.root)
                with _disk_errors(attic):
                    attic.mkdir(exist_ok=True)
                    os.rename(path, attic / f"{name}.{uuid.uuid4().hex}")
            else:
                shutil.rmtree(path)
            self._touched(dirs=(self.root,))
        elif path.exists() or path.is_symlink():
            path.unlink()

    @classmethod
    def attic_path(cls, root: Path) -> Path:
        return files.attic_path(root)

    def _sweep_attic(self) -> None:
        files.sweep_attic(self.root)

    def delete_array(self, name: str) -> None:
        self._drop(name)

    def chunk_rows(self, name: str) -> int:
        # A shard when sharded (one file), else a chunk.
        return self._arrays[name].layout.unit_rows

    def write_unit_rows(self, name: str) -> int:
        # Uncompressed chunks take rows at their offsets (_write_in_place): no staging copy
        # to whole chunks; encoded ones are written whole, never read back and rewritten.
        lay = self._arrays[name].layout
        return 1 if lay.in_place else lay.unit_rows

    def reserve(self, name: str, capacity: int) -> None:
        # Growth is a change of the shape in zarr.json, written at the next sync; chunk files
        # get their blocks when written, so a full disk fails there (pwrite), never later.
        st = self._arrays[name]
        if capacity > st.layout.capacity:
            with self._mutex:
                st.layout.doc["shape"][0] = int(capacity)
                st.meta_dirty = True
            st.zarr_array = None

    def region_writer(self, name: str, stop: int) -> RegionWriter:
        st = self._arrays[name]
        st.close_chunk()
        self.reserve(name, stop)
        self._flush_meta(st)  # region writers read the array's zarr.json for its layout
        lay = st.layout
        return ZarrRegionWriter(name, lay.path, lay.dtype, lay.row_shape, stop)

    def rows_written(self, name: str, stop: int) -> None:
        st = self._arrays[name]
        st.written = max(st.written, stop)
        st.reader.forget()

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        st = self._arrays[name]
        st.drain_chunk()
        if not st.layout.native:
            self._flush_meta(st)
        out = st.reader.read(start, stop)
        return out if out.dtype == st.layout.dtype else out.astype(st.layout.dtype)

    # -- writing: rows -----------------------------------------------------------------------

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        st = self._arrays[name]
        lay = st.layout
        n = len(values)
        if n == 0:
            return
        stop = start + n
        if stop > lay.capacity:
            self.reserve(name, stop)
        if lay.row_nbytes == 0:
            # Rows of no bytes need no chunk files (zarr reads none): and a padded field that
            # starts empty must not leave chunks sized for empty rows when it grows.
            st.written = max(st.written, stop)
            return
        data = np.ascontiguousarray(values, dtype=lay.store_dtype)
        st.reader.forget()  # its decoded chunk may be one this write changes
        if not lay.native:
            rows.write_zarr(self, st, start, data)
        elif lay.tiled:
            for tile in lay.tiles():
                where, crop = lay.tile_region(tile)
                part = data[(slice(None), *where)]
                if part.shape[1:] == lay.tile_shape:
                    cells = np.ascontiguousarray(part)
                else:  # an edge tile: zarr stores it whole, padding past the row's end
                    cells = np.full((n, *lay.tile_shape), lay.fill, dtype=lay.store_dtype)
                    cells[(slice(None), *crop)] = part
                rows.write_rows(self, st, start, cells, tile)
        else:
            rows.write_rows(self, st, start, data, None)
        # Writing into an encoded unit read its other rows back through the reader, which
        # cached the unit as it was before this write: forget it again.
        st.reader.forget()
        st.written = max(st.written, stop)

    def _touched(self, files: tuple[Path, ...] = (), dirs: tuple[Path, ...] = ()) -> None:
        """Note files to fsync and directories with new entries, for the next sync."""
        with self._mutex:
            self._pending.update(files)
            self._dirty_dirs.update(dirs)

    # -- commits -------------------------------------------------------------------------------

    def _flush_meta(self, st: _WriteState) -> None:
        with self._mutex:
            if not st.meta_dirty:
                return
            data = _dumps(st.layout.doc)
            st.meta_dirty = False
        key = f"{st.layout.path.name}/{_ZARR_JSON}"
        try:
            with _disk_errors(self.storage.path(key)):
                self.storage.write(key, data)
        except BaseException:
            st.meta_dirty = True
            raise

    def sync(self, lengths: dict[str, int]) -> None:
        # May run in the writer's commit thread while write() goes on (background_sync): the
        # files and directories noted so far are taken at once; later ones wait for the next
        # sync. Every row in ``lengths`` was written, and noted, before this call.
        for name in lengths:
            st = self._arrays[name]
            st.drain_chunk()
            self._flush_meta(st)
        with self._mutex:
            files, self._pending = self._pending, set()
            dirs, self._dirty_dirs = self._dirty_dirs, set()
        try:
            for path in sorted(files):
                try:
                    fd = open_nofollow(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue  # removed since (its array was dropped)
                try:
                    fsync_fd(fd, path)
                finally:
                    os.close(fd)
            # Deepest first, so a new directory's own entries are durable before its name.
            for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(FileNotFoundError):
                    fsync_dir(d)
        except BaseException:
            self._touched(tuple(files), tuple(dirs))  # still to do, should the writer go on
            raise

    def write_manifest(self, manifest: Manifest) -> None:
        with _disk_errors(self.root / _ZARR_JSON):
            self.storage.write(_ZARR_JSON, group_bytes(manifest))  # the commit point

    def finalize(self, lengths: dict[str, int]) -> None:
        for name, length in lengths.items():
            st = self._arrays[name]
            st.close_chunk()
            lay = st.layout
            with self._mutex:
                lay.doc["shape"][0] = int(length)
                st.meta_dirty = True
            st.zarr_array = None
            st.written = min(st.written, length)
            # Chunk files wholly past the end (a crashed writer's, or an over-allocation's).
            units = -(-length // lay.unit_rows)
            where = lay.path if lay.separator == "." else lay.path / "c"
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(where):
                    u = lay.unit_of(entry.name)
                    if u is not None and u >= units:
                        if entry.is_dir(follow_symlinks=False):
                            shutil.rmtree(entry.path)
                        else:
                            os.unlink(entry.path)
                        self._touched(dirs=(where,))
        self.sync(lengths)

    def close(self) -> None:
        for st in self._arrays.values():
            with contextlib.suppress(OSError):
                st.close_chunk()
        with contextlib.suppress(OSError):
            self._sweep_attic()
        self._arrays.clear()
        with self._mutex:
            self._pending.clear()
            self._dirty_dirs.clear()
