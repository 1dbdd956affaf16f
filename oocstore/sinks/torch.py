"""``store.to_torch()``: a map-style ``torch.utils.data.Dataset`` over a store, zero-copy.

Zero copy without the read-only warning
---------------------------------------
A store's memory-mapped fields are read-only, and ``torch.from_numpy`` warns on a read-only
array because writing through the tensor would crash the process. Each field file is mapped
again here copy-on-write (``np.memmap(mode="c")``, ``MAP_PRIVATE``): the pages are the same
page-cache pages until someone writes, so ``dataset[i]`` is a view, costs no copy, and a tensor
written in place (an in-place augmentation) changes only the process's private page, never the
file -- but, as with a ``TensorDataset``, later reads of that sample in the same process see the
change (clone before augmenting in place). The file is opened by its path (``<store>/<array>.npy``
for npy, the file itself for HDF5) without following symlinks, and on Linux checked to be the
very file the store mapped. Fields that are not memory-mapped (Zarr, chunked HDF5), or whose
file cannot be mapped again, are read into fresh arrays.

Batches
-------
``DataLoader``'s fetcher calls ``dataset.__getitems__(indices)`` when a dataset has one, then
``collate_fn`` on what it returns. Here ``__getitems__`` reads the whole batch with one gather
per field (the batch's sorted unique rows, then put back in the caller's order) into fresh
tensors -- in shared memory inside a worker, so the batch crosses to the main process without
another copy -- and returns a :class:`StoreBatch`: a sequence of per-sample tuples (views),
so torch's default collate still stacks it correctly, that also holds the stacked batch, which
:func:`collate` (the collate function of :func:`loader`) hands on as it is. A ragged field's
batch is padded to the batch's own largest true shape, and its mask follows the fields (its
samples, as a sequence, keep their true shapes); a per-sample ``transform`` falls back to
reading sample by sample.

Workers
-------
The dataset pickles as the store's path, its field names and transforms: DataLoader
workers (``fork`` or ``spawn``) map the files themselves on first use. The batch sampler runs
in the main process and gives each batch to one worker, and ``in_order`` delivery keeps the
sampler's order, so the order of batches does not depend on ``num_workers``. A
:func:`loader`'s workers gather into a small ring of reused shared-memory slots each, which the
main process copies out of before the slot is reused (:mod:`oocstore.sinks._slots`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from ..errors import SamplingError
from ..ragged import region
from . import _slots
from ._batches import BLOCK_BYTES, WINDOW, _take, sorted_unique
from ._maps import Reader, _dense_reader, _private_map, _writable
from ._order import EpochOrder, Resumable, ShuffleLike, block_rows_for

if TYPE_CHECKING:
    from ..reader import Store

__all__ = ["StoreBatch", "StoreBatchSampler", "StoreDataset", "StoreLoader", "collate", "loader"]


class StoreDataset(Dataset[Any]):
    """Samples of a store as tuples of tensors, one per field (field order, or ``fields``).

    ``dataset[i]`` is ``(tensor_a, tensor_b, ...)``, or ``transform`` of that tuple. A ragged
    field gives each sample with its true shape (padding cut off), so batching those needs a
    ``collate_fn`` or a ``transform`` that makes shapes equal. ``len(dataset)`` is the store's
    committed length when the dataset was made.

    ``dataset.__getitems__(indices)`` (what a ``DataLoader`` calls for each batch) reads the
    batch with one gather per field and gives a [`StoreBatch`][oocstore.sinks.torch.StoreBatch]
    holding ``(batch_a, batch_b, ...)`` (each with a batch axis), or ``batch_transform`` of it;
    ragged fields are padded to the batch's largest shape, their masks appended.
    """

    def __init__(
        self,
        store: Store,
        fields: Sequence[str] | None = None,
        transform: Callable[[tuple[torch.Tensor, ...]], Any] | None = None,
        batch_transform: Callable[[tuple[torch.Tensor, ...]], Any] | None = None,
    ) -> None:
        if transform is not None and batch_transform is not None:
            msg = (
                "give transform (applied to each sample) or batch_transform (applied to each "
                "batch), not both"
            )
            raise ValueError(msg)
        self.store = store
        self.fields = store.resolve_fields(fields)
        self.transform = transform
        self.batch_transform = batch_transform
        self.length = len(store)
        self._readers: list[Reader] | None = None
        self._sources: dict[str, _Source] | None = None
        self.slot_flags: torch.Tensor | None = None
        """Set by a loader with workers: batches then go through reused slots (``_slots``)."""
        self.batched = transform is None
        """Does ``__getitems__`` read whole batches (no per-sample ``transform``)?"""

    def _file(self, array_name: str) -> Path | None:
        """The file holding a physical array, where it is one file (the backend says)."""
        return self.store.array_file(array_name)

    def _reader(self, field: str) -> Reader:
        kind = self.store.layout(field)
        array = self.store[field]
        if kind == "dense":
            return _dense_reader(array, self._file(field))
        if kind == "padded":
            shapes = np.asarray(self.store.shapes(field)[: self.length])
            mapped = _private_map(array, self._file(field))
            if mapped is not None:
                return lambda i: mapped[region(i, shapes[i])]  # a view of the true region
            return lambda i: _writable(array[region(i, shapes[i])])
        # packed: values end to end, with offsets and shapes
        values = _private_map(array.values, self._file(f"{field}.values"))
        offsets, shapes = np.asarray(array.offsets), np.asarray(array.shapes)
        if values is None:
            return lambda i: _writable(array[i])

        def packed(i: int) -> np.ndarray:
            shape = tuple(int(d) for d in shapes[i])
            start = int(offsets[i])
            return values[start : start + int(np.prod(shape, dtype=np.int64))].reshape(shape)

        return packed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        i = int(index)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            msg = f"sample {index} out of range for {self.length} samples"
            raise IndexError(msg)
        readers = self._readers
        if readers is None:
            readers = self._readers = [self._reader(f) for f in self.fields]
        sample = tuple(torch.from_numpy(read(i)) for read in readers)
        return self.transform(sample) if self.transform is not None else sample

    def __getitems__(self, indices: Sequence[int]) -> Any:
        """Samples ``indices`` as one batch: one gather per field (see the module's notes)."""
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        if not self.batched:
            return [self[int(i)] for i in rows]
        bad = (rows < -self.length) | (rows >= self.length)
        if bad.any():
            msg = f"sample {int(rows[bad][0])} out of range for {self.length} samples"
            raise IndexError(msg)
        rows = np.where(rows < 0, rows + self.length, rows)
        sources = self._sources
        if sources is None:  # once per process: the arrays, shapes and dtypes
            sources = self._sources = {f: _Source(self.store, f, self.length) for f in self.fields}
        # One sort for all fields: the batch's sorted unique rows and where each goes.
        plan = None if sorted_unique(rows) else np.unique(rows, return_inverse=True)
        values: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        shapes: list[np.ndarray | None] = []
        ring = _slots.worker_slots(self.slot_flags)
        dense = [sources[f] for f in self.fields if sources[f].shapes is None]
        taken = ring.acquire(sum(s.nbytes(len(rows)) + 64 for s in dense)) if ring else None
        alloc = _slots.SlotAllocator(taken[1]) if taken else None
        for f in self.fields:
            src = sources[f]
            if src.shapes is None:
                values.append(_gather(src, rows, plan, alloc))
                shapes.append(None)
            else:
                value, mask, true = _gather_ragged(src, rows)
                values.append(value)
                masks.append(mask)
                shapes.append(true)
        batch: Any = (*values, *masks)
        if self.batch_transform is not None:
            batch = self.batch_transform(batch)
        if taken is not None:  # in the slot: the main process copies it out (see _slots)
            assert self.slot_flags is not None
            return StoreBatch(_slots.sent(batch, *taken, self.slot_flags), len(rows))
        if self.batch_transform is not None or not masks:
            return StoreBatch(batch, len(rows))

        def sample(i: int) -> tuple[torch.Tensor, ...]:  # true shapes, as dataset[i] gives
            return tuple(
                v[i] if t is None else v[region(i, t[i])]
                for v, t in zip(values, shapes, strict=True)
            )

        return StoreBatch(batch, len(rows), sample)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_readers"] = None  # maps are made again in each process
        state["_sources"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"<oocstore.StoreDataset {self.length} samples of {list(self.fields)} "
            f"from {str(self.store.path)!r}>"
        )


class _Source:
    """A field as ``__getitems__`` reads it: the array, its true shapes, its tensor dtype."""

    def __init__(self, store: Store, field: str, length: int) -> None:
        array = store[field]
        layout = store.manifest.layout(field)
        dtype = np.dtype(array.dtype)
        native = dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype
        self.array = np.asarray(array) if isinstance(array, np.ndarray) else array
        self.kind = layout.kind
        self.fill = layout.fill if layout.kind == "padded" else 0
        self.shapes = None if layout.kind == "dense" else np.asarray(store.shapes(field)[:length])
        """True shapes of a ragged field's samples; None for a dense field."""
        self.sample_shape = tuple(store.schema[field].shape)
        self.native = native
        """The dtype of the tensors given: the stored one in this machine's byte order."""
        self.torch_dtype = torch.from_numpy(np.empty(0, dtype=native)).dtype
        self.direct = isinstance(array, np.ndarray) and dtype == native
        """``np.take(..., out=)`` straight from the array (a memmap of native dtype)."""

    def nbytes(self, rows: int) -> int:
        """Bytes of ``rows`` samples of this (dense) field."""
        return int(rows * math.prod(self.sample_shape) * self.native.itemsize)


def _gather(
    src: _Source,
    rows: np.ndarray,
    plan: tuple[np.ndarray, np.ndarray] | None,
    alloc: _slots.SlotAllocator | None = None,
) -> torch.Tensor:
    """A dense field's rows as a fresh tensor: one gather of the sorted unique rows.

    ``plan`` is None when ``rows`` are sorted and unique already (the loader's batches are),
    else ``np.unique(rows, return_inverse=True)``: the gather is then put in ``rows``' order.
    In the main process the gather is NumPy's own array (its allocator reuses the memory the
    last batch freed; a fresh tensor to gather into is slower to touch); in a worker it is
    gathered into shared memory (a reused slot, ``alloc``, when the loader gave the worker
    slots), which crosses to the main process as a handle.
    """
    if len(rows) and get_worker_info() is None:
        got = (
            _take(src.array, rows)
            if plan is None
            else _take(src.array, plan[0])[plan[1].reshape(-1)]
        )
        if got.dtype != src.native or not got.flags.writeable or not got.flags.c_contiguous:
            got = np.ascontiguousarray(got, dtype=src.native)
            got = got if got.flags.writeable else got.copy()
        return torch.from_numpy(got.reshape(len(rows), *src.sample_shape))
    shape = (len(rows), *src.sample_shape)
    slot = alloc.tensor(shape, src.torch_dtype) if alloc is not None else None
    out = slot if slot is not None else _empty_tensor(shape, src.torch_dtype)
    if len(rows) == 0:
        return out
    target = out.numpy()
    if plan is None:
        if src.direct:
            np.take(src.array, rows, axis=0, out=target)
        else:
            target[...] = _take(src.array, rows)
        return out
    unique, inverse = plan
    np.take(_take(src.array, unique), inverse.reshape(-1), axis=0, out=target)
    return out


def _gather_ragged(src: _Source, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """A ragged field's rows padded to the batch's own largest shape, its mask, true shapes.

    Each sample's true region is copied (in increasing row order) into a batch filled with the
    field's fill value (0 for packed fields).
    """
    assert src.shapes is not None
    true = src.shapes[rows]
    bound = tuple(int(d) for d in true.max(axis=0)) if len(rows) else (0,) * true.shape[1]
    out = _empty_tensor((len(rows), *bound), src.torch_dtype)
    target = out.numpy()
    target[...] = src.fill
    for j in np.argsort(rows, kind="stable").tolist():
        at = region(j, true[j])
        if src.kind == "packed":
            target[at] = src.array[int(rows[j])]
        else:
            target[at] = src.array[region(int(rows[j]), true[j])]
    mask = np.ones((len(rows), *bound), dtype=bool)
    for axis, size in enumerate(bound):
        ticks = np.arange(size).reshape(
            (1,) * (axis + 1) + (size,) + (1,) * (len(bound) - 1 - axis)
        )
        mask &= ticks < true[:, axis].reshape((-1,) + (1,) * len(bound))
    return out, torch.from_numpy(mask), true


def _empty_tensor(shape: tuple[int, ...], kind: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker, in shared memory.

    A worker sends its batch to the main process through shared memory: a tensor that is
    there already is sent as a handle, not copied (torch's default collate does the same).
    """
    if get_worker_info() is not None:
        try:
            proto = torch.empty(0, dtype=kind)
            storage = proto._typed_storage()._new_shared(math.prod(shape))  # type: ignore[no-untyped-call]
            return proto.new(storage).resize_(shape)
        except (AttributeError, RuntimeError, TypeError):  # private API moved: copy instead
            pass
    return torch.empty(shape, dtype=kind)


def _item(value: Any, i: int) -> Any:
    """Sample ``i`` of a batch: tensors and arrays indexed, containers taken apart."""
    if isinstance(value, torch.Tensor | np.ndarray):
        return value[i]
    if isinstance(value, tuple | list):
        return type(value)(_item(v, i) for v in value)
    if isinstance(value, dict):
        return {k: _item(v, i) for k, v in value.items()}
    msg = (
        f"cannot take sample {i} of a batch of {type(value).__name__}: "
        "use store.loader(), or DataLoader(..., collate_fn=oocstore.sinks.torch.collate)"
    )
    raise TypeError(msg)


class StoreBatch(Sequence[Any]):
    """A batch read in one go, as ``StoreDataset.__getitems__`` returns it.

    ``batch`` is the batch itself (a tuple of tensors with a batch axis, or what
    ``batch_transform`` made of it); as a sequence it is the batch's samples, views taken on
    demand, so torch's default collate stacks it back into the same batch.
    [`collate`][oocstore.sinks.torch.collate] returns ``batch`` without that copy.
    """

    def __init__(self, batch: Any, size: int, sample: Callable[[int], Any] | None = None) -> None:
        self.batch = batch
        """The batch: a tuple of tensors (one per field), or ``batch_transform`` of it."""
        self.size = size
        self._sample = sample

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: Any) -> Any:
        if not isinstance(i, int) or not -self.size <= i < self.size:
            msg = f"sample {i!r} out of range for a batch of {self.size}"
            raise IndexError(msg)
        if self._sample is not None:
            return self._sample(i % self.size)
        return _item(self.batch, i % self.size)


def collate(data: Any) -> Any:
    """A ``collate_fn``: a [`StoreBatch`][oocstore.sinks.torch.StoreBatch] as read, else torch's.

    Module level, so worker processes unpickle it by name.
    """
    if isinstance(data, StoreBatch):
        return data.batch
    return default_collate(data)


class StoreBatchSampler(Sampler[list[int]]):
    """The batch sampler of [`StoreLoader`][oocstore.sinks.torch.StoreLoader].

    Iterating gives the index lists of ``epoch``'s batches from batch ``start`` on, as
    ``order`` (an ``EpochOrder``) fixes them; the loader sets both before each epoch.
    """

    def __init__(self, order: EpochOrder) -> None:
        self.order = order
        self.epoch = 0
        self.start = 0

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        for k in range(self.start, len(self.order)):
            yield self.order.batch_rows(epoch, k).tolist()


class StoreLoader(DataLoader[Any], Resumable):
    """A ``DataLoader`` over a store, as [`loader`][oocstore.sinks.torch.loader] makes it.

    Each ``iter()`` is a new epoch (or the rest of the one ``load_state_dict`` names);
    ``state_dict()`` is the next batch to give, counted as the training loop receives batches
    (not as workers prefetch them), with the settings that fix the order.
    """

    def __init__(self, dataset: StoreDataset, order: EpochOrder, **options: Any) -> None:
        options.setdefault("collate_fn", collate)
        super().__init__(dataset, batch_sampler=StoreBatchSampler(order), **options)
        self._slots = self.num_workers > 0 and self.collate_fn is collate
        self.order = order
        """Which rows each batch of each epoch holds."""
        self._next = (0, 0)
        self._at = (0, 0)

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` gives."""
        return self._next[0]

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` give epoch ``epoch`` from its start."""
        self._next = self._at = (int(epoch), 0)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]  # a generator, not torch's
        epoch, start = self._next
        self._next = (epoch + 1, 0)
        self._at = (epoch, start)
        sampler = self.batch_sampler
        assert isinstance(sampler, StoreBatchSampler)
        sampler.epoch, sampler.start = epoch, start
        dataset = self.dataset
        fresh = getattr(dataset, "slot_flags", None) is None or not self.persistent_workers
        if self._slots and isinstance(dataset, StoreDataset) and fresh:
            # New workers get new slots (persistent ones keep theirs): two iterators'
            # workers never share a slot.
            dataset.slot_flags = _slots.new_flags(self.num_workers)
        return self._counted(super().__iter__(), epoch, start)

    def _counted(self, batches: Iterator[Any], epoch: int, start: int) -> Iterator[Any]:
        k = start
        for batch in batches:
            k += 1
            self._at = (epoch, k)
            yield _slots.receive(batch)


def loader(
    store: Store,
    batch_size: int,
    *,
    shuffle: ShuffleLike = False,
    seed: int | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    fields: Sequence[str] | None = None,
    transform: Callable[[tuple[torch.Tensor, ...]], Any] | None = None,
    pin_memory: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    remainder: str = "pad",
    block_rows: int | None = None,
    window: int = WINDOW,
    buckets: int | Sequence[float] | None = None,
    bucket_field: str | None = None,
    **options: Any,
) -> StoreLoader:
    """A ``DataLoader`` that reads whole batches: one gather per field, no per-sample collate.

    Parameters
    ----------
    store
        The store to read.
    batch_size
        Samples per batch.
    shuffle
        ``False`` (in order), ``"block"`` (contiguous ~1 MiB runs in random order, shuffled
        within windows of 16: for stores bigger than the page cache), ``"sample"`` (a full
        permutation: for stores in the page cache) or ``True`` (``"sample"`` when the fields
        read fit in half the available memory, else ``"block"``).
    seed
        Seed of the order: epoch ``e`` with seed ``s`` is the same order on every run and
        machine. None draws one (a loaded state dict then brings its own).
    num_workers
        Worker processes reading and transforming batches (``DataLoader``'s).
    drop_last
        Drop this rank's last partial batch.
    fields
        The fields to give, in this order (default: all, in store order).
    transform
        Applied to each batch ``(batch_a, batch_b, ...)`` in the worker that read it.
        Module level (picklable) when workers are spawned.
    pin_memory
        ``DataLoader``'s ``pin_memory``.
    rank, world_size
        This process's share of each epoch: rank ``rank`` of ``world_size``. Default: from
        ``torch.distributed`` when it is initialised, else the whole epoch.
    remainder
        When the length is not a multiple of ``world_size``: ``"pad"`` repeats the epoch's
        first samples so every rank gets ``ceil(length / world_size)``; ``"drop"`` leaves out
        the epoch's last ``length % world_size`` so each sample goes to exactly one rank.
    block_rows, window
        Rows per block and blocks per window of ``shuffle="block"`` (default ~1 MiB, 16).
    buckets
        Group the samples of a ragged field by size: a count (boundaries at quantiles, so
        buckets hold about as many samples) or increasing boundaries of the number of
        elements of a sample's true shape (bucket ``i`` holds sizes in
        ``[boundaries[i-1], boundaries[i])``). Each batch then comes from one bucket (the
        epoch's order within each bucket; the batches shuffled unless ``shuffle=False``), so
        padding each batch to its own largest shape wastes little.
    bucket_field
        The ragged field whose sizes make the buckets (default: the only ragged field).
    **options
        Passed to ``DataLoader`` (``prefetch_factor``, ``persistent_workers``,
        ``multiprocessing_context``, ``collate_fn``...).

    Returns
    -------
    StoreLoader
        A ``DataLoader`` whose batches are tuples of tensors with a batch axis, one per field
        (or ``transform`` of them), with ``state_dict()`` and ``load_state_dict()``. A ragged
        (padded or packed) field gives its batch padded to the batch's own largest true shape,
        and its boolean mask (True on each sample's true region) follows the fields: fields
        ``("tokens", "label")`` give ``(tokens, label, tokens_mask)``.

    Raises
    ------
    SamplingError
        If ``batch_size`` is not positive, ``shuffle`` is unknown, ``rank`` is not in
        ``range(world_size)``, or ``buckets`` has no ragged field to group by.
    KeyError
        If a field is not in the store.
    """
    fields = store.resolve_fields(fields)
    dataset = StoreDataset(store, fields=fields, batch_transform=transform)
    row_bytes = sum(store.schema[f].sample_nbytes for f in fields)
    if block_rows is not None and block_rows < 1:
        msg = f"block_rows must be positive, not {block_rows!r}"
        raise ValueError(msg)
    keys = None
    if buckets is not None:
        field = _bucket_field(store, fields, bucket_field)
        keys = np.prod(np.asarray(store.shapes(field)[: len(store)]), axis=1)
    order = EpochOrder(
        len(store),
        batch_size,
        fields=fields,
        shuffle=shuffle,
        nbytes=row_bytes * len(store),
        seed=seed,
        block_rows=block_rows or block_rows_for(row_bytes, BLOCK_BYTES),
        window=window,
        rank=rank,
        world_size=world_size,
        remainder=remainder,
        drop_last=drop_last,
        bucket_keys=keys,
        buckets=buckets,
    )
    return StoreLoader(dataset, order, num_workers=num_workers, pin_memory=pin_memory, **options)


def _bucket_field(store: Store, fields: Sequence[str], given: str | None) -> str:
    """The ragged field whose sample sizes make the buckets."""
    if given is not None:
        store.resolve_fields([given])
        if store.layout(given) == "dense":
            raise SamplingError("bucket_field", given, "a ragged (padded or packed) field")
        return given
    ragged = [f for f in fields if store.layout(f) != "dense"]
    if len(ragged) != 1:
        expected = "given: several fields are ragged" if ragged else "a ragged field to group by"
        raise SamplingError("bucket_field", given, expected)
    return ragged[0]
