"""``store.batches``: NumPy batches for training loops, shuffled by contiguous blocks.

Why blocks
----------
A uniform shuffle of a store bigger than RAM reads one random sample at a time: one disk seek
per sample, and the page cache does not help. Instead, each epoch:

1. cuts the rows into blocks of about ``BLOCK_BYTES`` (1 MiB: big enough that a read of one
   costs about a seek's worth of transfer) and shuffles the order of the blocks;
2. takes the blocks ``window`` at a time (16 by default, so ~16 MiB), reads each block with
   one contiguous read, and shuffles the rows of the window uniformly;
3. cuts the shuffled windows, one after the other, into batches.

Every sample comes exactly once per epoch; each batch mixes rows from ``window`` random places
of the store, and a sample can land anywhere in the epoch's order. Disk reads stay 1 MiB-sized
and memory stays at one window. The order is a function of ``(seed, epoch)``, so iterating
starts a new, different epoch each time, and the same seed replays the same epochs.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..reader import Store

__all__ = ["BLOCK_BYTES", "WINDOW", "Batches"]

BLOCK_BYTES = 2**20
"""Rows per contiguous read when shuffling: about this many bytes over all fields."""

WINDOW = 16
"""Blocks whose rows are shuffled together (the memory held while shuffling: one window)."""


class Batches:
    """A re-iterable of NumPy batches over a store: a tuple of arrays per batch, in field order.

    ``len()`` is the number of batches; each ``iter()`` is a new epoch. Without shuffling the
    batches are read-only views of consecutive rows (no copy for memory-mapped fields); with
    shuffling they are fresh arrays. A packed ragged field gives a list of its samples. With
    Keras imported, [`Store.batches`][oocstore.Store.batches] returns the subclass that Keras
    accepts as a ``PyDataset``; ``batches[i]`` is batch ``i`` of the current epoch, the same
    batch iterating would give, and ``on_epoch_end()`` moves on to the next epoch.
    """

    def __init__(
        self,
        store: Store,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
        fields: Sequence[str] | None = None,
        block_rows: int | None = None,
        window: int = WINDOW,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
            msg = f"batch_size must be a positive integer, not {batch_size!r}"
            raise TypeError(msg)
        if batch_size <= 0:
            msg = f"batch_size must be a positive integer, not {batch_size!r}"
            raise ValueError(msg)
        if window < 1 or (block_rows is not None and block_rows < 1):
            msg = f"window and block_rows must be positive, not {window!r} and {block_rows!r}"
            raise ValueError(msg)
        self.store = store
        self.fields = store.resolve_fields(fields)
        self.length = len(store)
        """Samples covered (the store's committed length when this was made)."""
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        # With no seed, draw one now: batches[i] and iteration then agree within an epoch.
        entropy = np.random.SeedSequence().entropy if seed is None else seed
        self.seed = int(entropy)  # type: ignore[arg-type]  # entropy is an int when drawn
        row_bytes = sum(store.schema[f].sample_nbytes for f in self.fields)
        auto = math.ceil(BLOCK_BYTES / max(row_bytes, 1))
        self.block_rows = int(block_rows) if block_rows is not None else max(auto, 1)
        self.window = int(window)
        self.epoch = 0
        """The epoch ``batches[i]`` reads; ``on_epoch_end()`` advances it."""
        self._next_iter_epoch = 0
        self._plans: dict[int, _Plan] = {}
        self._lock = threading.Lock()

    # -- sizes -------------------------------------------------------------------------------

    def __len__(self) -> int:
        if self.drop_last:
            return self.length // self.batch_size
        return -(-self.length // self.batch_size)

    @property
    def num_batches(self) -> int:
        """Batches per epoch (Keras reads this name)."""
        return len(self)

    def _arrays(self) -> list[Any]:
        return [self.store[f] for f in self.fields]

    # -- iteration: a new epoch each time ----------------------------------------------------

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        epoch = self._next_iter_epoch
        self._next_iter_epoch += 1
        if not self.shuffle:
            return self._sequential()
        return self._shuffled(self._plan(epoch))

    def _sequential(self) -> Iterator[tuple[Any, ...]]:
        arrays = self._arrays()
        for i in range(len(self)):
            start = i * self.batch_size
            stop = min(start + self.batch_size, self.length)
            yield tuple(_rows(a, start, stop) for a in arrays)

    def _shuffled(self, plan: _Plan) -> Iterator[tuple[Any, ...]]:
        arrays = self._arrays()
        pending: list[tuple[Any, ...]] = []  # pieces of the next batch, from earlier windows
        have = 0
        emitted = 0
        for w in range(plan.n_windows):
            data = plan.read_window(arrays, w)
            size = len(plan.window_rows(w))
            pos = 0
            while pos < size:
                take = min(self.batch_size - have, size - pos)
                pending.append(tuple(_cut(d, pos, pos + take) for d in data))
                have += take
                pos += take
                if have == self.batch_size:
                    yield _join(pending)
                    emitted += 1
                    pending, have = [], 0
                    if emitted == len(self):
                        return
        if pending and emitted < len(self):
            yield _join(pending)

    # -- random access, as Keras uses it -----------------------------------------------------

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        n = len(self)
        i = int(index) + (n if int(index) < 0 else 0)
        if not 0 <= i < n:
            msg = f"batch {index} out of range for {n} batches"
            raise IndexError(msg)
        start = i * self.batch_size
        stop = min(start + self.batch_size, self.length)
        arrays = self._arrays()
        if not self.shuffle:
            return tuple(_rows(a, start, stop) for a in arrays)
        rows = self._plan(self.epoch).rows(start, stop)
        return tuple(_gather(a, rows) for a in arrays)

    def on_epoch_end(self) -> None:
        """Move ``batches[i]`` on to the next epoch's order (Keras calls this)."""
        with self._lock:
            self._plans.pop(self.epoch, None)
            self.epoch += 1

    def on_epoch_begin(self) -> None:
        """Nothing to do: Keras calls this before each epoch."""

    def _plan(self, epoch: int) -> _Plan:
        with self._lock:
            plan = self._plans.get(epoch)
            if plan is None:
                plan = _Plan(self.length, self.block_rows, self.window, self.seed, epoch)
                if len(self._plans) >= 2:  # the iterating epoch and the indexed one
                    self._plans.pop(next(iter(self._plans)))
                self._plans[epoch] = plan
            return plan

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_plans"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        how = f"shuffled in blocks of {self.block_rows} rows" if self.shuffle else "in order"
        return (
            f"<oocstore.Batches {len(self)} batches of {self.batch_size} from "
            f"{str(self.store.path)!r}, fields {list(self.fields)}, {how}>"
        )


class _Plan:
    """One epoch's order: shuffled blocks, taken ``window`` at a time, rows shuffled within.

    ``window_rows(w)`` is window ``w``'s rows in the epoch's order; the epoch's order is the
    windows' orders one after the other. Only the windows asked for are computed.
    """

    def __init__(self, length: int, block_rows: int, window: int, seed: int, epoch: int) -> None:
        self.length = length
        self.block_rows = block_rows
        self.window = window
        self.seed = seed
        self.epoch = epoch
        n_blocks = -(-length // block_rows)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch, 0)))
        self.blocks = rng.permutation(n_blocks)
        self.n_windows = -(-n_blocks // window)
        sizes = np.minimum(self.blocks * block_rows + block_rows, length) - self.blocks * block_rows
        per_window = np.add.reduceat(sizes, np.arange(0, n_blocks, window)) if n_blocks else sizes
        self.starts = np.concatenate([[0], np.cumsum(per_window)]).astype(np.int64)
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()  # Keras may ask for batches from worker threads

    def _blocks_of(self, w: int) -> np.ndarray:
        return self.blocks[w * self.window : (w + 1) * self.window]

    def window_rows(self, w: int) -> np.ndarray:
        """Window ``w``'s rows, shuffled."""
        with self._lock:
            rows = self._cache.get(w)
            if rows is None:
                spans = [
                    np.arange(b * self.block_rows, min((b + 1) * self.block_rows, self.length))
                    for b in self._blocks_of(w)
                ]
                rng = np.random.default_rng(
                    np.random.SeedSequence(self.seed, spawn_key=(self.epoch, w + 1))
                )
                rows = rng.permutation(np.concatenate(spans))
                if len(self._cache) >= 4:  # the windows a batch spans, and the next one
                    self._cache.pop(next(iter(self._cache)))
                self._cache[w] = rows
            return rows

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows at positions ``[start, stop)`` of the epoch's order."""
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        parts = []
        w = first
        while w < self.n_windows and self.starts[w] < stop:
            lo = max(start, int(self.starts[w])) - int(self.starts[w])
            hi = min(stop, int(self.starts[w + 1])) - int(self.starts[w])
            parts.append(self.window_rows(w)[lo:hi])
            w += 1
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def read_window(self, arrays: Sequence[Any], w: int) -> list[Any]:
        """Window ``w``'s data for each array, in the window's shuffled order.

        Each block is read with one contiguous slice and scattered to its rows' places.
        """
        rows = self.window_rows(w)
        # rows[order] is sorted: the blocks' spans in increasing order, one after the other;
        # order[k] is where the k-th smallest row goes in the shuffled window.
        order = np.argsort(rows, kind="stable")
        spans = sorted(
            (int(b) * self.block_rows, min((int(b) + 1) * self.block_rows, self.length))
            for b in self._blocks_of(w)
        )
        out: list[Any] = []
        for a in arrays:
            if _is_packed(a):
                out.append([a[int(r)] for r in rows])
                continue
            data = np.empty((len(rows), *a.shape[1:]), dtype=a.dtype)
            at = 0
            for lo, hi in spans:
                data[order[at : at + hi - lo]] = a[lo:hi]
                at += hi - lo
            out.append(data)
        return out


def _is_packed(array: Any) -> bool:
    return (
        hasattr(array, "offsets") and hasattr(array, "values") and not isinstance(array, np.ndarray)
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


def _gather(array: Any, rows: np.ndarray) -> Any:
    """Rows in the given order, read in increasing order (one pass over the touched pages)."""
    if _is_packed(array):
        return [array[int(r)] for r in rows]
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
    out[order] = array[rows[order]]
    return out
