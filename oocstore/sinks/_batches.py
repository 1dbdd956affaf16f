"""``store.batches``: NumPy batches for training loops, shuffled the way the disk can serve.

Why blocks
----------
A uniform shuffle of a store bigger than RAM reads one random sample at a time: one disk seek
per sample, and the page cache does not help. ``shuffle="block"`` instead, each epoch:

1. cuts the rows into blocks of about ``BLOCK_BYTES`` (1 MiB: big enough that a read of one
   costs about a seek's worth of transfer) and shuffles the order of the blocks;
2. takes the blocks ``window`` at a time (16 by default, so ~16 MiB), reads each block with
   one contiguous read, and shuffles the rows of the window uniformly;
3. cuts the shuffled windows, one after the other, into batches.

Every sample comes exactly once per epoch; each batch mixes rows from ``window`` random places
of the store, and a sample can land anywhere in the epoch's order. Disk reads stay 1 MiB-sized
and memory stays at one window. ``shuffle="sample"`` is a full permutation, for stores that fit
the page cache; ``shuffle=True`` picks one of the two from the memory available (see
:mod:`oocstore.sinks._order`). The order is a function of ``(seed, epoch)``, so iterating
starts a new, different epoch each time, the same seed replays the same epochs, and
``state_dict()`` / ``load_state_dict()`` resume an epoch mid-way.

Reads
-----
Shuffling decides which rows make each batch and the order of the batches; within a batch the
rows come in increasing order. Memory-mapped fields are read one batch at a time with one
gather of the batch's rows per field (numpy's fancy index on the map). Lazy fields (Zarr,
chunked HDF5) shuffled by blocks on one rank are read a window at a time, one contiguous slice
per block, so each chunk is decoded once per epoch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._order import (
    EpochOrder,
    Resumable,
    ShuffleLike,
    _is_packed,
    as_batch_size,
    block_rows_for,
)
from ._order import _Plan as _Plan  # re-exported: tests and older imports name it here

if TYPE_CHECKING:
    from ..reader import Store

__all__ = ["BLOCK_BYTES", "WINDOW", "Batches"]

BLOCK_BYTES = 2**20
"""Rows per contiguous read when shuffling: about this many bytes over all fields."""

WINDOW = 16
"""Blocks whose rows are shuffled together (the memory held while shuffling: one window)."""


class Batches(Resumable):
    """A re-iterable of NumPy batches over a store: a tuple of arrays per batch, in field order.

    ``len()`` is the number of batches; each ``iter()`` is a new epoch. Without shuffling the
    batches are read-only views of consecutive rows (no copy for memory-mapped fields); with
    shuffling they are fresh arrays. A packed ragged field gives a list of its samples. With
    Keras imported, [`Store.batches`][oocstore.Store.batches] returns the subclass that Keras
    accepts as a ``PyDataset``; ``batches[i]`` is batch ``i`` of the current epoch, the same
    batch iterating would give, and ``on_epoch_end()`` moves on to the next epoch.

    ``state_dict()`` is where iteration stands (the next batch to give, and the settings that
    fix the order); ``load_state_dict(state)`` makes the next ``iter()`` continue from there,
    giving exactly the rest of that epoch in the same order. ``rank``/``world_size`` give one
    rank's share of each epoch (see [`Store.loader`][oocstore.Store.loader]).
    """

    def __init__(
        self,
        store: Store,
        batch_size: int,
        *,
        shuffle: ShuffleLike = False,
        seed: int | None = None,
        drop_last: bool = False,
        fields: Sequence[str] | None = None,
        block_rows: int | None = None,
        window: int = WINDOW,
        rank: int | None = None,
        world_size: int | None = None,
        remainder: str = "pad",
    ) -> None:
        batch_size = as_batch_size(batch_size)
        if window < 1 or (block_rows is not None and block_rows < 1):
            msg = f"window and block_rows must be positive, not {window!r} and {block_rows!r}"
            raise ValueError(msg)
        self.store = store
        self.fields = store.resolve_fields(fields)
        self.length = len(store)
        """Samples covered (the store's committed length when this was made)."""
        row_bytes = sum(store.schema[f].sample_nbytes for f in self.fields)
        self.order = EpochOrder(
            self.length,
            batch_size,
            fields=self.fields,
            shuffle=shuffle,
            nbytes=row_bytes * self.length,
            seed=seed,
            block_rows=block_rows or block_rows_for(row_bytes, BLOCK_BYTES),
            window=window,
            rank=rank,
            world_size=world_size,
            remainder=remainder,
            drop_last=drop_last,
        )
        """Which rows each batch of each epoch holds."""
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.epoch = 0
        """The epoch ``batches[i]`` reads; ``on_epoch_end()`` advances it."""
        self._next = (0, 0)  # (epoch, batch) the next iter() starts at
        self._at = (0, 0)  # (epoch, batch) of the next batch to give
        self._lock = threading.Lock()

    @property
    def shuffle(self) -> str:
        """The shuffle in use: ``"none"``, ``"block"`` or ``"sample"``."""
        return self.order.mode

    @property
    def seed(self) -> int:
        """The seed of the order (drawn at random when none was given)."""
        return self.order.seed

    @property
    def block_rows(self) -> int:
        """Rows per contiguous block of ``shuffle="block"``."""
        return self.order.block_rows

    @property
    def window(self) -> int:
        """Blocks shuffled together by ``shuffle="block"``."""
        return self.order.window

    # -- sizes -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.order)

    @property
    def num_batches(self) -> int:
        """Batches per epoch (Keras reads this name)."""
        return len(self)

    def _arrays(self) -> list[Any]:
        return [self.store[f] for f in self.fields]

    # -- resuming ----------------------------------------------------------------------------

    def _resumed(self, epoch: int) -> None:
        self.epoch = epoch  # Keras indexing reads the epoch being resumed

    # -- iteration: a new epoch each time ----------------------------------------------------

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        epoch, start = self._next
        self._next = (epoch + 1, 0)
        self._at = (epoch, start)
        order = self.order
        arrays = self._arrays()
        if order.contiguous:
            return self._sequential(epoch, start, arrays)
        if (
            order.mode == "block"
            and order.world_size == 1
            and not all(isinstance(a, np.ndarray) for a in arrays)
        ):
            plan = order._epoch_order(epoch)
            return self._windows(epoch, start, plan, arrays)
        return self._gathered(epoch, start, arrays)

    def _gave(self, epoch: int, k: int) -> None:
        self._at = (epoch, k + 1)

    def _sequential(self, epoch: int, start: int, arrays: list[Any]) -> Iterator[tuple[Any, ...]]:
        for k in range(start, len(self)):
            lo = k * self.batch_size
            hi = min(lo + self.batch_size, self.order.samples)
            batch = tuple(_rows(a, lo, hi) for a in arrays)
            self._gave(epoch, k)
            yield batch

    def _gathered(self, epoch: int, start: int, arrays: list[Any]) -> Iterator[tuple[Any, ...]]:
        for k in range(start, len(self)):
            rows = self.order.batch_rows(epoch, k)
            batch = tuple(_gather(a, rows) for a in arrays)
            self._gave(epoch, k)
            yield batch

    def _windows(
        self, epoch: int, start: int, plan: _Plan, arrays: list[Any]
    ) -> Iterator[tuple[Any, ...]]:
        """Batches ``start...`` cut from whole windows, each block read with one slice."""
        pending: list[tuple[Any, ...]] = []  # pieces of the next batch, from earlier windows
        have = 0
        k = start
        position = start * self.batch_size
        w = plan.window_at(position) if k < len(self) else plan.n_windows
        pos = position - int(plan.starts[w]) if w < plan.n_windows else 0
        while k < len(self) and w < plan.n_windows:
            data = plan.read_window(arrays, w)
            size = int(plan.starts[w + 1] - plan.starts[w])
            while pos < size and k < len(self):
                take = min(self.batch_size - have, size - pos)
                pending.append(tuple(_cut(d, pos, pos + take) for d in data))
                have += take
                pos += take
                if have == self.batch_size:
                    batch = self._sorted(plan, k, _join(pending))
                    pending, have = [], 0
                    self._gave(epoch, k)
                    k += 1
                    yield batch
            w += 1
            pos = 0
        if pending and k < len(self):
            batch = self._sorted(plan, k, _join(pending))
            self._gave(epoch, k)
            yield batch

    def _sorted(self, plan: _Plan, k: int, batch: tuple[Any, ...]) -> tuple[Any, ...]:
        """Batch ``k`` with its rows in increasing order, as ``EpochOrder.batch_rows`` has them."""
        lo = k * self.batch_size
        rows = plan.rows(lo, min(lo + self.batch_size, self.order.samples))
        order = np.argsort(rows, kind="stable")
        return tuple([d[i] for i in order] if isinstance(d, list) else d[order] for d in batch)

    # -- random access, as Keras uses it -----------------------------------------------------

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        n = len(self)
        i = int(index) + (n if int(index) < 0 else 0)
        if not 0 <= i < n:
            msg = f"batch {index} out of range for {n} batches"
            raise IndexError(msg)
        arrays = self._arrays()
        if self.order.contiguous:
            start = i * self.batch_size
            stop = min(start + self.batch_size, self.length)
            return tuple(_rows(a, start, stop) for a in arrays)
        rows = self.order.batch_rows(self.epoch, i)
        return tuple(_gather(a, rows) for a in arrays)

    def on_epoch_end(self) -> None:
        """Move ``batches[i]`` on to the next epoch's order (Keras calls this)."""
        with self._lock:
            self.epoch += 1

    def on_epoch_begin(self) -> None:
        """Nothing to do: Keras calls this before each epoch."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        how = {
            "none": "in order",
            "block": f"shuffled in blocks of {self.block_rows} rows",
            "sample": "shuffled by sample",
        }[self.shuffle]
        shard = (
            f", rank {self.order.rank} of {self.order.world_size}"
            if self.order.world_size > 1
            else ""
        )
        return (
            f"<oocstore.Batches {len(self)} batches of {self.batch_size} from "
            f"{str(self.store.path)!r}, fields {list(self.fields)}, {how}{shard}>"
        )


def _rows(array: Any, start: int, stop: int) -> Any:
    if _is_packed(array):
        return array[start:stop]
    return np.asarray(array[start:stop])


def _cut(data: Any, start: int, stop: int) -> Any:
    return data[start:stop]


def _join(pieces: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    if len(pieces) == 1:
        return pieces[0]
    return tuple(
        [v for p in parts for v in p] if isinstance(parts[0], list) else np.concatenate(parts)
        for parts in zip(*pieces, strict=True)
    )


def sorted_unique(rows: np.ndarray) -> bool:
    """Are ``rows`` strictly increasing (one gather, no reordering needed)?"""
    return bool(rows.size < 2 or (rows[1:] > rows[:-1]).all())


def _gather(array: Any, rows: np.ndarray) -> Any:
    """Rows in the given order, read with one gather of the sorted unique rows.

    Increasing order is one pass over the touched pages (and what h5py's fancy index needs);
    the result is then put in the caller's order, repeats included.
    """
    if _is_packed(array):
        return [array[int(r)] for r in rows]
    if rows.size == 0:
        return np.empty((0, *array.shape[1:]), dtype=array.dtype)
    if sorted_unique(rows):
        return _take(array, rows)
    unique, inverse = np.unique(rows, return_inverse=True)
    return _take(array, unique)[inverse.reshape(-1)]


def _take(array: Any, rows: np.ndarray) -> np.ndarray:
    if isinstance(array, np.ndarray):
        return np.take(np.asarray(array), rows, axis=0)
    return np.asarray(array[rows])
