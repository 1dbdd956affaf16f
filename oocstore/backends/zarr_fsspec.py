"""Zarr stores at fsspec URLs (``memory://``, ``file://``, ``s3://`` when s3fs is installed...).

The same format as a local Zarr store (:mod:`oocstore.backends.zarr`): a Zarr v3 group, one
array per physical array with the same ``zarr.json`` documents, chunk keys ``c.<i>.0...``, and
the manifest in the group's ``"oocstore"`` attribute, written last: the group's ``zarr.json``
is the commit point. Chunks are written through zarr-python's ``FsspecStore``; oocstore's own
documents through :class:`~oocstore.backends.storage.FsspecStorage`.

What a URL does not give (see ``docs/dask.md``): no ``flock``, so no single-writer lock (two
writers of one URL corrupt it); no ``fsync`` (durability is the filesystem's: an object store's
PUT is durable once it returns, ``memory://`` never is); the manifest replaces the group's
``zarr.json`` with one PUT, which object stores make atomic but ``file://`` through fsspec does
not (a plain local path keeps the crash-safe backend).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .._lock import NoLock
from ..errors import (
    CorruptStoreError,
    StoreNotFoundError,
    UnsupportedStorageError,
)
from ..manifest import Manifest
from ._lazy import LazyArray
from .base import ArrayReader, Backend, BackendOptions, RegionWriter, StoreHandle
from .storage import FsspecStorage, fsspec_options
from .zarr.spec import (
    _MAX_ARRAY_META,
    _ZARR_JSON,
    GROUP_META_LIMIT,
    ZarrOptions,
    _array_doc,
    _check_dtype,
    _dumps,
    _Layout,
    _load_json,
    group_bytes,
    manifest_from_group,
)

__all__ = ["FsspecZarrBackend", "FsspecZarrRegionWriter", "UrlZarrHandle"]


def _zarr_store(url: str, storage_options: dict[str, Any] | None, *, read_only: bool) -> Any:
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(
        url, storage_options=fsspec_options(url, storage_options), read_only=read_only
    )


def _open_array(store: Any, name: str, *, read_only: bool) -> Any:
    import zarr
    from zarr.errors import UnstableSpecificationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnstableSpecificationWarning)
        return zarr.open_array(
            store, path=name, mode="r" if read_only else "r+", config={"write_empty_chunks": True}
        )


class _UrlArray(LazyArray):
    """Committed rows of one array at a URL, read through zarr-python."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None, name: str, spec: Any):
        super().__init__((spec.length, *spec.shape), spec.dtype)
        self._arr = _open_array(
            _zarr_store(url, storage_options, read_only=True), name, read_only=True
        )
        self.chunks = tuple(int(c) for c in self._arr.chunks)
        where = f"{url}/{name}"
        if self._arr.shape[0] < spec.length or tuple(self._arr.shape[1:]) != spec.shape:
            raise CorruptStoreError(
                where,
                f"array has shape {self._arr.shape}, the manifest commits {spec.length} "
                f"rows of {spec.shape}",
            )

    def _read(self, start: int, stop: int) -> np.ndarray:
        out = np.asarray(self._arr[start:stop])
        return out if out.dtype == self._dtype else out.astype(self._dtype)


class UrlZarrHandle(StoreHandle):
    """A Zarr store at an fsspec URL opened for reading: the group's manifest, then arrays
    read through zarr-python."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.storage = FsspecStorage(url, storage_options)
        self.location = self.storage.location
        self.url: str = self.location
        self.storage_options = self.storage.storage_options

    def read_manifest(self) -> Manifest:
        if not self.storage.exists(_ZARR_JSON):
            msg = f"no store at {self.url!r}: it has no {_ZARR_JSON}"
            raise StoreNotFoundError(msg)
        data = self.storage.read(_ZARR_JSON, GROUP_META_LIMIT, "group metadata")
        return manifest_from_group(data, self.storage.where(_ZARR_JSON))

    def open_arrays(self, manifest: Manifest) -> dict[str, ArrayReader]:
        return {
            name: _UrlArray(self.url, self.storage_options, name, spec)
            for name, spec in manifest.arrays.items()
        }


class FsspecZarrBackend(Backend):
    """The Zarr backend for an fsspec URL (``BackendOptions.extra["url"]``)."""

    name: ClassVar[str] = "zarr"
    zero_copy: ClassVar[bool] = False
    suffixes: ClassVar[tuple[str, ...]] = ()
    background_sync: ClassVar[bool] = False

    options_class: ClassVar[type[BackendOptions]] = ZarrOptions
    options: ZarrOptions
    local: ClassVar[bool] = False

    def __init__(
        self,
        url: str,
        options: BackendOptions | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(Path(url), options)
        self.storage = FsspecStorage(url, storage_options)
        self.url = self.storage.location
        self.storage_options: dict[str, Any] = self.storage.storage_options
        self._store: Any = None
        self._docs: dict[str, dict[str, Any]] = {}
        self._arrays: dict[str, Any] = {}

    # -- reading -------------------------------------------------------------------------------

    @classmethod
    def holds_store(cls, root: Path) -> bool:
        return False  # a local path is never a URL store

    @classmethod
    def open(
        cls, root: Path | str, storage_options: Mapping[str, Any] | None = None
    ) -> StoreHandle:
        """Open the store at URL ``root`` for reading."""
        return UrlZarrHandle(str(root), storage_options)

    @property
    def location(self) -> str:
        return self.url

    def exists(self) -> bool:
        """Is there anything at the URL?"""
        return self.storage.exists()

    def has_store(self) -> bool:
        """Is an oocstore store at the URL (a group with the manifest)?"""
        try:
            self.handle().read_manifest()
        except (OSError, CorruptStoreError):
            return False
        return True

    def lock(self) -> NoLock:
        """None to take: a URL has no ``flock`` (two writers of one URL corrupt it)."""
        return NoLock()

    def handle(self) -> StoreHandle:
        return UrlZarrHandle(self.url, self.storage_options)

    # -- writing -------------------------------------------------------------------------------

    def _zstore(self) -> Any:
        if self._store is None:
            self._store = _zarr_store(self.url, self.storage_options, read_only=False)
        return self._store

    def create(self) -> None:
        self.storage.makedirs()

    def open_existing(self, manifest: Manifest) -> dict[str, int]:
        for name in self.storage.children():
            if name != _ZARR_JSON and name not in manifest.arrays:
                self.storage.delete(name)  # an interrupted writer's array
        capacities = {}
        for name, spec in manifest.arrays.items():
            key = f"{name}/{_ZARR_JSON}"
            where = self.storage.where(key)
            doc = _load_json(self.storage.read(key, _MAX_ARRAY_META, "metadata"), where, "metadata")
            layout = _Layout.parse(Path(name), doc, spec.dtype, where)
            if layout.capacity < spec.length:
                raise CorruptStoreError(
                    where, f"array has {layout.capacity} rows, the manifest commits {spec.length}"
                )
            self._docs[name] = doc
            capacities[name] = layout.capacity
        return capacities

    def _compressors(self) -> Any:
        return self.options.compressor_codecs()

    def create_array(
        self, name: str, dtype: np.dtype[Any], shape: tuple[int, ...], capacity: int
    ) -> None:
        _check_dtype(dtype)
        self.delete_array(name)
        row_nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        chunk, shard = self.options.chunking(name, row_nbytes, capacity)
        doc = _array_doc(dtype, (capacity, *shape), chunk, shard, self._compressors())
        self._docs[name] = doc
        self.storage.write(f"{name}/{_ZARR_JSON}", _dumps(doc))

    def _array(self, name: str) -> Any:
        arr = self._arrays.get(name)
        if arr is None:
            arr = self._arrays[name] = _open_array(self._zstore(), name, read_only=False)
        return arr

    def reserve(self, name: str, capacity: int) -> None:
        doc = self._docs[name]
        if capacity > int(doc["shape"][0]):
            doc["shape"][0] = int(capacity)
            self.storage.write(f"{name}/{_ZARR_JSON}", _dumps(doc))
            self._arrays.pop(name, None)

    def chunk_rows(self, name: str) -> int:
        grid = self._docs[name]["chunk_grid"]["configuration"]["chunk_shape"]
        codecs = self._docs[name].get("codecs") or []
        for c in codecs:
            if isinstance(c, dict) and c.get("name") == "sharding_indexed":
                return int(grid[0])  # the outer grid is the shard
        return int(grid[0])

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        if start + len(values) > int(self._docs[name]["shape"][0]):
            self.reserve(name, start + len(values))
        self._array(name)[start : start + len(values)] = values

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._array(name)[start:stop])

    def delete_array(self, name: str) -> None:
        self._arrays.pop(name, None)
        self._docs.pop(name, None)
        self.storage.delete(name)

    def region_writer(self, name: str, stop: int) -> RegionWriter:
        self.reserve(name, stop)
        return FsspecZarrRegionWriter(name, self.url, self.storage_options)

    def sync(self, lengths: dict[str, int]) -> None:
        # Nothing to flush: a filesystem behind fsspec has no fsync; a PUT is done when it
        # returns (object stores), or never durable (memory://).
        return

    def write_manifest(self, manifest: Manifest) -> None:
        self.storage.write(_ZARR_JSON, group_bytes(manifest))  # the commit point

    def finalize(self, lengths: dict[str, int]) -> None:
        for name, length in lengths.items():
            doc = self._docs[name]
            unit = self.chunk_rows(name)
            units = -(-length // unit)
            doc["shape"][0] = int(length)
            self.storage.write(f"{name}/{_ZARR_JSON}", _dumps(doc))
            self._arrays.pop(name, None)
            for key in self.storage.children(name):
                parts = key.split(".")
                if (
                    parts[0] == "c"
                    and len(parts) > 1
                    and parts[1].isdigit()
                    and int(parts[1]) >= units
                ):
                    self.storage.delete(f"{name}/{key}")

    def destroy(self) -> None:
        self.close()
        self.storage.delete("")

    def close(self) -> None:
        self._arrays.clear()


class FsspecZarrRegionWriter(RegionWriter):
    """Rows of one array at a URL, written through zarr-python (whole chunks: regions are
    chunk-aligned, so no chunk is read back or shared)."""

    def __init__(self, name: str, url: str, storage_options: dict[str, Any] | None) -> None:
        self.name = name
        self.url = url
        self.storage_options = storage_options
        self.pid = os.getpid()
        self._arr: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arr": None}

    def write(self, start: int, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        if self.url.startswith("memory://") and os.getpid() != self.pid:
            # Each process has its own memory filesystem: these rows would never reach the
            # store, and the parent would declare rows nobody wrote.
            msg = (
                f"{self.url!r} lives in the memory of the process that created it; other "
                "processes cannot write it: use the threaded scheduler, or a shared filesystem"
            )
            raise UnsupportedStorageError(msg)
        if self._arr is None:
            store = _zarr_store(self.url, self.storage_options, read_only=False)
            self._arr = _open_array(store, self.name, read_only=False)
        self._arr[start : start + len(values)] = values

    def sync(self) -> None:
        return  # see FsspecZarrBackend.sync

    def close(self) -> None:
        self._arr = None
