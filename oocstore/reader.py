"""The reader: a store's committed prefix as read-only NumPy views (or lazy arrays).

Opening reads the small manifest and maps each file; it costs the same for 1 MB and 100 GB.
A :class:`Store` pickles as its path, so it crosses into worker processes without copying data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from .backends import open_store
from .backends.base import ArrayReader
from .checksum import Damage, verify_spans
from .errors import CorruptStoreError
from .manifest import Manifest
from .ragged import check_packed, fits, max_shape_of, region
from .schema import Schema

if TYPE_CHECKING:
    from collections.abc import Callable

    from .sinks import Batches, ShuffleLike
    from .sinks.torch import StoreDataset, StoreLoader

__all__ = ["Damage", "PackedArray", "Store", "open"]

_OPEN_ATTEMPTS = 8  # a commit that deletes files is rare (a layout change): a few suffice


class PackedArray(Sequence[np.ndarray]):
    """A ragged field stored end to end: ``[i]`` is an O(1) view of sample ``i``."""

    def __init__(
        self, values: ArrayReader, offsets: ArrayReader, shapes: ArrayReader, where: str = ""
    ) -> None:
        self._values = values
        self._offsets = np.asarray(offsets)
        self._shapes = np.asarray(shapes)
        n_values = int(values.shape[0]) if len(values.shape) else 0
        check_packed(n_values, self._offsets, self._shapes, where or "packed field")

    @property
    def offsets(self) -> np.ndarray:
        """Start of each sample in the flat values (in elements)."""
        return self._offsets

    @property
    def shapes(self) -> np.ndarray:
        """True shape of each sample, ``(n, ndim)``."""
        return self._shapes

    @property
    def values(self) -> ArrayReader:
        """All samples' values end to end."""
        return self._values

    @property
    def dtype(self) -> np.dtype[Any]:
        """The samples' dtype."""
        return self._values.dtype

    def __len__(self) -> int:
        return len(self._offsets)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            msg = f"sample {index} out of range for {n} samples"
            raise IndexError(msg)
        shape = tuple(int(d) for d in self._shapes[i])
        start = int(self._offsets[i])
        size = int(np.prod(shape, dtype=np.int64))
        return np.asarray(self._values[start : start + size]).reshape(shape)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def to_padded(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        max_shape: Sequence[int] | None = None,
        fill: Any = 0,
        name: str = "0",
        **write_options: Any,
    ) -> Any:
        """Pad every sample to ``max_shape`` (default: the largest shape).

        With ``path``, stream the padded samples into a new store there (field ``name``, true
        shapes kept) in one pass with bounded memory, and return it opened; without, return
        one in-memory array.
        """
        bound = self._max_shape() if max_shape is None else tuple(int(d) for d in max_shape)
        if len(bound) != self._shapes.shape[1] or not fits(self._shapes, bound):
            msg = f"max_shape {bound} is smaller than the largest sample {self._max_shape()}"
            raise ValueError(msg)
        if path is None:
            out = np.full((len(self), *bound), fill, dtype=self.dtype)
            for i, s in enumerate(self):
                out[region(i, s.shape)] = s
            return out
        from .convert import pad_packed  # writing: imported only when a store is made

        pad_packed(self, path, bound, fill=fill, name=name, **write_options)
        return Store(path)

    def _max_shape(self) -> tuple[int, ...]:
        return max_shape_of(self._shapes)

    def __repr__(self) -> str:
        return f"<PackedArray {len(self)} samples of {self.dtype}>"


class Store:
    """A read-only store: field name -> array of its committed samples.

    ``store[name]`` is an ``np.memmap`` (npy; HDF5 contiguous) or a lazy array that slices to
    NumPy; a field stored packed is a [`PackedArray`][oocstore.PackedArray]. ``len(store)`` is
    the number of committed samples; iterating a store gives its field names, as a dict does.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
    ) -> None:
        self._handle = open_store(path, storage_options)
        self.location = self._handle.location
        """Where the store is: its path, or the URL it was opened from."""
        self.path = Path(path)
        self.url = self._handle.url
        """The fsspec URL of a store opened from one (``self.path`` is then meaningless)."""
        self.storage_options = dict(storage_options or {})
        self._manifest: Manifest
        self._opened: dict[str, ArrayReader] | None
        self._packed: dict[str, PackedArray] = {}
        self._manifest, self._opened = self._open_arrays(self._read_manifest())

    @property
    def backend(self) -> str:
        """The backend's name (``npy``, ``zarr`` or ``hdf5``), as the manifest says."""
        return self._manifest.backend

    @property
    def _arrays(self) -> dict[str, ArrayReader]:
        """The open arrays; a closed store opens its manifest's arrays again on first use."""
        opened = self._opened
        if opened is None:
            self._manifest, opened = self._open_arrays(self._manifest)
            self._opened = opened
        return opened

    def _read_manifest(self) -> Manifest:
        return self._handle.read_manifest()

    def _open_manifest_arrays(self, manifest: Manifest) -> dict[str, ArrayReader]:
        return self._handle.open_arrays(manifest)

    def _open_arrays(self, manifest: Manifest) -> tuple[Manifest, dict[str, ArrayReader]]:
        """Open ``manifest``'s arrays; if a writer commits meanwhile, open the newer commit.

        A commit may delete an array the previous manifest named (a field changing layout),
        so a missing or changed file under a manifest that has since been replaced is no
        corruption: the newer manifest is opened instead.
        """
        for _ in range(_OPEN_ATTEMPTS - 1):
            try:
                return manifest, self._open_manifest_arrays(manifest)
            except CorruptStoreError:
                latest = self._read_manifest()
                if latest.to_json() == manifest.to_json():
                    raise
                manifest = latest
        return manifest, self._open_manifest_arrays(manifest)

    # -- metadata ----------------------------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        """The manifest this view was opened with."""
        return self._manifest

    @property
    def schema(self) -> Schema:
        """Fields with per-sample shape (padded shape for ragged fields) and dtype."""
        return self._manifest.schema

    @property
    def fields(self) -> tuple[str, ...]:
        """Field names in order."""
        return self._manifest.schema.names

    @property
    def complete(self) -> bool:
        """True when the writer closed the store normally."""
        return self._manifest.complete

    @property
    def attrs(self) -> dict[str, Any]:
        """User metadata written with the store."""
        return dict(self._manifest.attrs)

    @property
    def nbytes(self) -> int:
        """Bytes of committed data over all physical arrays."""
        return sum(a.length * a.row_nbytes for a in self._manifest.arrays.values())

    def __len__(self) -> int:
        return self._manifest.length

    def layout(self, field: str) -> str:
        """``dense``, ``padded`` or ``packed``."""
        self._check_field(field)
        return self._manifest.layout(field).kind

    # -- data --------------------------------------------------------------------------------

    def resolve_fields(self, fields: Sequence[str] | None = None) -> tuple[str, ...]:
        """``fields`` as a tuple (all fields when None); KeyError naming any unknown one."""
        names = tuple(fields) if fields is not None else self.fields
        for f in names:
            self._check_field(f)
        return names

    def _check_field(self, field: str) -> None:
        if field not in self._manifest.schema:
            msg = f"no field {field!r} in store {str(self.path)!r}; fields: {list(self.fields)}"
            raise KeyError(msg)

    def __getitem__(self, field: str) -> Any:
        self._check_field(field)
        kind = self._manifest.layout(field).kind
        if kind == "packed":
            packed = self._packed.get(field)
            if packed is None:  # validated once per view: O(samples)
                packed = PackedArray(
                    self._arrays[f"{field}.values"],
                    self._arrays[f"{field}.offsets"],
                    self._arrays[f"{field}.shapes"],
                    where=f"{self.location}: packed field {field!r}",
                )
                self._packed[field] = packed
            return packed
        return self._arrays[field]

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def __contains__(self, field: object) -> bool:
        return field in self._manifest.schema

    def keys(self) -> tuple[str, ...]:
        """Field names in order (as ``dict.keys``)."""
        return self.fields

    def values(self) -> tuple[Any, ...]:
        """The fields' arrays in order."""
        return self.arrays()

    def items(self) -> tuple[tuple[str, Any], ...]:
        """``(name, array)`` pairs in order."""
        return tuple((f, self[f]) for f in self.fields)

    def arrays(self) -> tuple[Any, ...]:
        """The fields' arrays as a tuple, in field order: ``X, y = store.arrays()``."""
        return tuple(self[f] for f in self.fields)

    def shapes(self, field: str) -> np.ndarray:
        """True per-sample shapes of a field, ``(len(store), ndim)`` integers."""
        self._check_field(field)
        if self._manifest.layout(field).kind == "dense":
            spec = self.schema[field]
            return np.broadcast_to(np.asarray(spec.shape, dtype=np.int64), (len(self), spec.ndim))
        return np.asarray(self._arrays[f"{field}.shapes"])

    def physical_array(self, name: str) -> ArrayReader:
        """One physical array by name (``x``, ``x.shapes``, ``x.values``...), committed rows."""
        if name not in self._arrays:
            msg = f"no array {name!r} in store {str(self.path)!r}; arrays: {list(self._arrays)}"
            raise KeyError(msg)
        return self._arrays[name]

    def chunk_rows(self, name: str) -> int | None:
        """Rows per chunk of physical array ``name`` on disk; None when it is not chunked."""
        return self._handle.chunk_rows(self._manifest, name, self.physical_array(name))

    def array_file(self, name: str) -> Path | None:
        """The one local file holding physical array ``name``'s bytes (npy: its ``.npy``;
        HDF5: the store's file); None for arrays of many files or a store at a URL."""
        self.physical_array(name)  # KeyError naming the arrays there are
        return self._handle.array_file(name)

    def sample(self, field: str, index: int) -> np.ndarray:
        """Sample ``index`` of ``field`` with its true shape (padding cut off)."""
        self._check_field(field)
        n = len(self)
        i = int(index) + (n if int(index) < 0 else 0)
        if not 0 <= i < n:
            msg = f"sample {index} out of range for {n} samples of field {field!r}"
            raise IndexError(msg)
        kind = self._manifest.layout(field).kind
        if kind == "packed":
            return self[field][i]  # type: ignore[no-any-return]
        arr = self._arrays[field]
        if kind == "dense":
            return np.asarray(arr[i])
        shape = np.asarray(self._arrays[f"{field}.shapes"][i])
        bound = self.schema[field].shape
        if shape.shape != (len(bound),) or not ((shape >= 0) & (shape <= bound)).all():
            where = f"{self.location}: padded field {field!r}"
            problem = f"sample {i} has shape {shape.tolist()}, outside the padded shape {bound}"
            raise CorruptStoreError(where, problem)
        return np.asarray(arr[region(i, shape)])

    def mask(self, field: str, index: int | slice) -> np.ndarray:
        """Boolean mask of the valid (unpadded) region of sample(s) ``index`` in the padded array.

        For an int the mask has the padded per-sample shape; for a slice it has a sample axis.
        """
        self._check_field(field)
        spec = self.schema[field]
        sel = np.atleast_2d(self.shapes(field)[index])
        grids = np.ones((len(sel), *spec.shape), dtype=bool)
        for axis, size in enumerate(spec.shape):
            ar = np.arange(size).reshape(
                (1,) + (1,) * axis + (size,) + (1,) * (spec.ndim - axis - 1)
            )
            lim = sel[:, axis].reshape((-1,) + (1,) * spec.ndim)
            grids &= ar < lim
        return grids[0] if isinstance(index, int | np.integer) else grids

    def iter_batches(
        self, batch_size: int, *, fields: Sequence[str] | None = None
    ) -> Iterator[tuple[Any, ...]]:
        """Yield consecutive batches as tuples of NumPy arrays (one per field, in order).

        A packed field gives a list of its samples instead.
        """
        if not isinstance(batch_size, int | np.integer) or batch_size <= 0:
            msg = f"batch_size must be a positive integer, not {batch_size!r}"
            raise ValueError(msg)
        arrays = [self[f] for f in self.resolve_fields(fields)]
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            yield tuple(
                a[start:stop] if isinstance(a, PackedArray) else np.asarray(a[start:stop])
                for a in arrays
            )

    def verify(self) -> list[Damage]:
        """Rehash every committed span and compare with the writer's checksums.

        Returns the damaged spans (empty when the store is intact). Rows committed before a
        checksum existed for them (none, for stores this version writes) are not checked.
        """
        return verify_spans(self._manifest, self._arrays)

    # -- into training (oocstore/sinks/: frameworks imported only when asked for) ------------

    def to_torch(
        self,
        fields: Sequence[str] | None = None,
        transform: Callable[[tuple[Any, ...]], Any] | None = None,
        batch_transform: Callable[[tuple[Any, ...]], Any] | None = None,
    ) -> StoreDataset:
        """A map-style ``torch.utils.data.Dataset``: ``[i]`` is a tuple of tensors, one per field.

        Memory-mapped fields give zero-copy tensors (copy-on-write maps: writing to one never
        reaches the file); a ``DataLoader`` batch is read with one gather per field
        (``__getitems__``); the dataset pickles small, so DataLoader workers open the store
        themselves. ``transform`` applies to each sample, ``batch_transform`` to each batch.
        See [`StoreDataset`][oocstore.sinks.torch.StoreDataset] and
        [`Store.loader`][oocstore.Store.loader].
        """
        from .sinks.torch import StoreDataset

        return StoreDataset(
            self, fields=fields, transform=transform, batch_transform=batch_transform
        )

    def loader(
        self,
        batch_size: int,
        *,
        shuffle: ShuffleLike = False,
        seed: int | None = None,
        num_workers: int = 0,
        drop_last: bool = False,
        fields: Sequence[str] | None = None,
        transform: Callable[[tuple[Any, ...]], Any] | None = None,
        pin_memory: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        remainder: str = "pad",
        buckets: int | Sequence[float] | None = None,
        bucket_field: str | None = None,
        **options: Any,
    ) -> StoreLoader:
        """A ``torch.utils.data.DataLoader`` reading whole batches, resumable and shardable.

        One gather per field per batch, no per-sample collate; ``transform`` applies to each
        batch in the worker that read it; ``state_dict()``/``load_state_dict()`` resume an
        epoch exactly; ``rank``/``world_size`` (default: from ``torch.distributed`` when
        initialised) shard it; ``buckets`` group a ragged field's samples by size. Other
        ``options`` go to ``DataLoader``. See [`loader`][oocstore.sinks.torch.loader]
        (imports torch).
        """
        from .sinks.torch import loader

        return loader(
            self,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            num_workers=num_workers,
            drop_last=drop_last,
            fields=fields,
            transform=transform,
            pin_memory=pin_memory,
            rank=rank,
            world_size=world_size,
            remainder=remainder,
            buckets=buckets,
            bucket_field=bucket_field,
            **options,
        )

    def to_tf(
        self,
        batch_size: int | None = None,
        shuffle: ShuffleLike = False,
        *,
        seed: int | None = None,
        drop_last: bool = False,
        fields: Sequence[str] | None = None,
    ) -> Any:
        """A ``tf.data.Dataset`` of field tuples with exact ``element_spec`` and ``cardinality``.

        See [`oocstore.sinks.tensorflow.to_tf`][oocstore.sinks.tensorflow.to_tf].
        """
        from .sinks.tensorflow import to_tf

        return to_tf(self, batch_size, shuffle, seed=seed, drop_last=drop_last, fields=fields)

    def to_dask(self, field: str | Sequence[str] | None = None, *, shapes: bool = False) -> Any:
        """Fields as ``dask.array.Array`` objects chunked as stored (imports Dask).

        ``field``: one name gives one array; a list or tuple of names, or None (every field),
        gives a dict. Chunks follow the store's chunks on Zarr and chunked HDF5, and are
        blocks of ~64 MiB of whole samples on memory-mapped fields; the graph holds the
        store's path, so any Dask scheduler reads the files directly. A ragged field gives
        its padded array, or with ``shapes=True`` each sample's true shape; a packed field
        raises RaggedError. See :mod:`oocstore.sinks.dask`.
        """
        from .sinks.dask import to_dask

        return to_dask(self, field, shapes=shapes)

    def batches(
        self,
        batch_size: int,
        shuffle: ShuffleLike = False,
        seed: int | None = None,
        drop_last: bool = False,
        fields: Sequence[str] | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        remainder: str = "pad",
    ) -> Batches:
        """A re-iterable of NumPy batch tuples (``len()`` batches; each ``iter()`` an epoch).

        ``shuffle="block"`` reads contiguous blocks, shuffled in windows, so it never turns
        into one random read per sample; ``"sample"`` is a full permutation; ``True`` picks
        by whether the fields fit in memory. ``state_dict()``/``load_state_dict()`` resume an
        epoch; ``rank``/``world_size`` shard it. With Keras imported the result is a
        ``keras.utils.PyDataset`` that ``Model.fit`` accepts. See
        [`Batches`][oocstore.sinks.Batches].
        """
        from .sinks import batches

        return batches(
            self,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            fields=fields,
            rank=rank,
            world_size=world_size,
            remainder=remainder,
        )

    # -- life cycle --------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Re-read the manifest to see newer commits; return True if the store changed.

        The committed length never goes down: a manifest that says less is ignored.
        """
        manifest = self._read_manifest()
        if manifest.length < self._manifest.length:
            return False
        if manifest.to_json() == self._manifest.to_json():
            return False
        self._manifest, self._opened = self._open_arrays(manifest)
        self._packed = {}
        return True

    def close(self) -> None:
        """Drop this store's references to its mappings and file handles.

        Nothing is unmapped under an array the caller still holds: a mapping (and the file
        handle of a lazy array) lives as long as the last array that uses it, so views, slices,
        datasets and batch iterators taken before ``close()`` stay valid. Using the store
        itself afterwards opens its arrays again. On Linux and macOS the files can be deleted
        or replaced at any time; on Windows, drop every array taken from the store first.
        """
        self._opened = None
        self._packed = {}

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_reopen, (self.location, self.storage_options))

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        fields = ", ".join(
            f"{s.name}: {s.dtype}{list(s.shape)}{' ragged' if s.ragged else ''}"
            for s in self.schema.fields
        )
        where = f"{self.location!r} {self.backend}"
        return f"<oocstore.Store {where} {len(self)} samples {state} ({fields})>"


def _reopen(location: str, storage_options: dict[str, Any]) -> Store:
    return Store(location, storage_options=storage_options)


def open(
    path: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> Store:
    """Open the store at ``path`` read-only; the backend is detected from what is on disk.

    ``path`` may be an fsspec URL (``memory://...``, ``s3://...``) of a Zarr store;
    ``storage_options`` then go to its filesystem.

    Raises
    ------
    StoreNotFoundError
        If nothing is at ``path``.
    UnknownBackendError
        If ``path`` holds no oocstore store.
    CorruptStoreError
        If the manifest or a file is damaged, tampered with or inconsistent.
    """
    return Store(path, storage_options=storage_options)
