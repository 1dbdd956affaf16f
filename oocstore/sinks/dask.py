"""``store.to_dask()``: a store's fields as ``dask.array.Array`` objects, chunked as stored.

Chunks along axis 0 follow the store: a Zarr array's chunk rows, a chunked HDF5 dataset's
chunk rows, so a task reading one block touches one chunk; a memory-mapped field (npy, HDF5
contiguous) is cut into blocks of about :data:`BLOCK_BYTES` of whole samples. Other axes are
one chunk.

The graph holds paths and numbers, not data: each block is read through a small
:class:`_FieldSource` that opens the store by its path once per process (a cache keyed by the
path and the commit the graph was built from), so the threaded and process schedulers and
``dask.distributed`` workers all read the files directly.

Ragged fields stored padded give the padded array; ``shapes=True`` gives each sample's true
shape instead (``(n, ndim)`` integers, chunked like the field). Packed fields are not offered:
their samples have no common shape to chunk; write them with ``ragged="pad"``, or read
``store[field].values`` / ``.offsets`` / ``.shapes``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dask.array as _da
import numpy as np

from ..backends import store_identity
from ..errors import CorruptStoreError, RaggedError
from ..sizing import BLOCK_BYTES

if TYPE_CHECKING:
    from ..reader import Store

__all__ = ["BLOCK_BYTES", "block_rows", "to_dask"]

da: Any = _da  # Dask ships without type hints

# BLOCK_BYTES: bytes per block of a memory-mapped field (Dask's advice is blocks of ~100 MB,
# and a block is read in one go by one task).
_CACHE_SIZE = 8
_cache: OrderedDict[tuple[str, str, int, int], Store] = OrderedDict()
_cache_lock = threading.Lock()
# Release the stores before interpreter teardown, while their modules still work.
atexit.register(_cache.clear)


def _open_cached(
    opener: type[Store],
    path: str,
    commit: str,
    storage_options: dict[str, Any],
    *,
    fresh: bool = False,
) -> Store:
    """The store at ``path``, opened once per process for the commit ``commit`` names.

    ``opener`` is the class of the store the graph was made from (pickled by name, so the
    reader is imported by the task that opens it, not by this module). The key holds the
    inode at ``path`` too: a store overwritten there since is a new one.
    """
    key = (path, commit, *store_identity(path))
    with _cache_lock:
        store = None if fresh else _cache.get(key)
        if store is not None:
            _cache.move_to_end(key)
            return store
    store = opener(path, storage_options=storage_options)
    with _cache_lock:
        _cache[key] = store
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)  # closed when the last block read from it is gone
    return store


class _FieldSource:
    """What a block task holds: the store's path and one array's name; sliced like an array."""

    def __init__(
        self,
        opener: type[Store],
        path: str,
        commit: str,
        array: str,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        storage_options: dict[str, Any],
    ) -> None:
        self.opener = opener
        self.path = path
        self.storage_options = storage_options
        self.commit = commit
        self.array = array
        self.shape = shape
        self.dtype = dtype
        self.ndim = len(shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            store = _open_cached(self.opener, self.path, self.commit, self.storage_options)
            return self._read(store, key)
        except CorruptStoreError:
            # A cached view of files a writer has replaced since: open the store again.
            return self._read(
                _open_cached(self.opener, self.path, self.commit, self.storage_options, fresh=True),
                key,
            )

    def _read(self, store: Store, key: Any) -> np.ndarray:
        rows = key[0] if isinstance(key, tuple) else key
        rest = key[1:] if isinstance(key, tuple) else ()
        if rows.stop is not None and rows.stop > len(store):
            msg = (
                f"store {self.path!r} has {len(store)} samples, fewer than the {self.shape[0]} "
                "this Dask array was built from (was it overwritten?)"
            )
            raise IndexError(msg)
        arr = store.physical_array(self.array)
        out = np.asarray(arr[rows])
        return out[(slice(None), *rest)] if rest else out


def block_rows(store: Store, array: str) -> int:
    """Rows per Dask block of a physical array: its chunk rows if chunked, else ~64 MiB."""
    spec = store.manifest.arrays[array]
    chunks = store.chunk_rows(array)
    if chunks is not None:
        return max(chunks, 1)
    return int(max(BLOCK_BYTES // max(spec.row_nbytes, 1), 1))


def _commit_id(store: Store) -> str:
    doc = json.dumps(store.manifest.to_json(), sort_keys=True, default=str)
    return hashlib.sha1(doc.encode(), usedforsecurity=False).hexdigest()


def _array(store: Store, field: str, shapes: bool) -> Any:
    kind = store.layout(field)
    if kind == "packed":
        raise RaggedError(
            "the field is stored packed (values end to end): its samples have no common shape "
            "to cut into Dask chunks",
            field=field,
            hint="write it with ragged='pad' (padded array plus shapes), or read "
            f"store[{field!r}].values / .offsets / .shapes",
        )
    n = len(store)
    spec = store.schema[field]
    commit = _commit_id(store)
    path = store.location
    so = store.storage_options
    rows = block_rows(store, field)
    if shapes:
        if kind == "dense":
            const = np.asarray(spec.shape, dtype=np.int64)
            return da.broadcast_to(const, (n, spec.ndim), chunks=(rows, spec.ndim))
        name = f"{field}.shapes"
        shp = store.manifest.arrays[name]
        src = _FieldSource(type(store), path, commit, name, (n, *shp.shape), shp.dtype, so)
    else:
        src = _FieldSource(type(store), path, commit, field, (n, *spec.shape), spec.dtype, so)
    chunks = (rows, *src.shape[1:]) if src.shape[0] else (1, *src.shape[1:])
    return da.from_array(
        src,
        chunks=chunks,
        name=f"oocstore-{commit[:12]}-{src.array}",
        asarray=False,
        fancy=False,
        inline_array=False,
        meta=np.empty((0,) * src.ndim, dtype=src.dtype),
    )


def to_dask(store: Store, field: str | Sequence[str] | None = None, *, shapes: bool = False) -> Any:
    """One field as a ``dask.array.Array``, or a dict of them (all fields, or the names given).

    See :meth:`oocstore.Store.to_dask`.
    """
    if isinstance(field, str):
        store.resolve_fields([field])
        return _array(store, field, shapes)
    names = store.resolve_fields(field)
    return {f: _array(store, f, shapes) for f in names}
