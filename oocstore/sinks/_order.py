"""One epoch's order of samples for one rank: the plan ``batches()`` and ``loader()`` share.

An epoch's order is a function of ``(seed, epoch)`` and the settings alone -- never of global
random state, the number of workers or the machine -- so it is the same on every run, and a
position in it (``(epoch, batch)``) is all a resume needs.

Shuffle modes
-------------
``"block"``
    Contiguous runs of rows (~1 MiB over the fields read) in random order, taken ``window`` at
    a time and shuffled within the window (:class:`_Plan`): disk reads stay 1 MiB-sized, so
    this is the mode for stores bigger than the page cache.
``"sample"``
    A full permutation of the rows: the best mixing, but a batch's rows are spread over the
    whole store, one random read each unless the store is in the page cache.
``True``
    ``"sample"`` when the fields read fit in half the memory available now (psutil), else
    ``"block"``. The choice is recorded in ``state_dict()``.

Within a batch, rows come in increasing order (see :meth:`EpochOrder.batch_rows`).

Sharding
--------
With ``world_size`` ranks the epoch's (global) order is first cut to a multiple of
``world_size`` -- the last ``length % world_size`` positions dropped (``remainder="drop"``) or
the order padded by repeating its first positions (``remainder="pad"``, the default, as
``torch.utils.data.DistributedSampler`` does) -- and rank ``r`` takes positions ``r``,
``r + world_size``, ... Every rank gets the same number of samples, and without padding each
sample goes to exactly one rank.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from ..errors import SamplingError, StateDictError

__all__ = [
    "STATE_FORMAT",
    "EpochOrder",
    "Resumable",
    "ShuffleLike",
    "as_batch_size",
    "resolve_shard",
]

ShuffleLike = bool | Literal["block", "sample"]
"""``False`` (in order), ``True`` (chosen from memory), ``"block"`` or ``"sample"``."""

STATE_FORMAT = "oocstore.epoch/1"
"""The ``format`` entry of a state dict."""

# The fields fit in the page cache when they take at most this share of available memory:
# the model, the optimiser and the rest of the process need the rest.
_CACHE_SHARE = 0.5


def as_batch_size(batch_size: Any) -> int:
    """``batch_size`` as a positive int; TypeError or SamplingError naming the value."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        msg = f"batch_size must be a positive integer, not {batch_size!r}"
        raise TypeError(msg)
    if batch_size <= 0:
        raise SamplingError("batch_size", batch_size, "a positive integer")
    return int(batch_size)


def resolve_shuffle(shuffle: Any, nbytes: int) -> str:
    """``"none"``, ``"block"`` or ``"sample"`` for a ``shuffle=`` argument over ``nbytes``."""
    if shuffle is False or shuffle is None:
        return "none"
    if shuffle is True:
        import psutil

        available = psutil.virtual_memory().available
        return "sample" if nbytes <= available * _CACHE_SHARE else "block"
    if isinstance(shuffle, str) and shuffle in ("block", "sample"):
        return shuffle
    raise SamplingError("shuffle", shuffle, "True, False, 'block' or 'sample'")


def resolve_shard(rank: Any, world_size: Any) -> tuple[int, int]:
    """``(rank, world_size)``: as given, else from ``torch.distributed`` when initialised.

    ``torch.distributed`` is looked up only if already imported; nothing is imported here.
    """
    if rank is None and world_size is None:
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            return int(dist.get_rank()), int(dist.get_world_size())
        return 0, 1
    if world_size is None:
        raise SamplingError("world_size", world_size, "given with rank=")
    if isinstance(world_size, bool) or not isinstance(world_size, int | np.integer):
        raise SamplingError("world_size", world_size, "a positive integer")
    if world_size < 1:
        raise SamplingError("world_size", world_size, "a positive integer")
    if rank is None:
        raise SamplingError("rank", rank, f"given with world_size={world_size}")
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer):
        raise SamplingError("rank", rank, f"an integer in [0, {world_size})")
    if not 0 <= rank < world_size:
        raise SamplingError("rank", rank, f"in [0, world_size={world_size})")
    return int(rank), int(world_size)


class EpochOrder:
    """Which rows each batch of each epoch holds, for one rank.

    ``batch_rows(epoch, k)`` is batch ``k``'s rows, in the epoch's order; ``len()`` is batches
    per epoch. The settings that fix the order are kept, so ``state(epoch, batch)`` can be
    checked against them by ``resume``.
    """

    def __init__(
        self,
        length: int,
        batch_size: int,
        *,
        fields: Sequence[str],
        shuffle: ShuffleLike = False,
        nbytes: int = 0,
        seed: int | None = None,
        block_rows: int = 1,
        window: int = 16,
        rank: int | None = None,
        world_size: int | None = None,
        remainder: str = "pad",
        drop_last: bool = False,
        bucket_keys: np.ndarray | None = None,
        buckets: int | Sequence[float] | None = None,
    ) -> None:
        self.length = int(length)
        self.batch_size = as_batch_size(batch_size)
        self.fields = tuple(fields)
        self.auto_shuffle = shuffle is True
        self.mode = resolve_shuffle(shuffle, nbytes)
        self.seed_given = seed is not None
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
            raise SamplingError("seed", seed, "an integer or None")
        if seed is not None and seed < 0:
            raise SamplingError("seed", seed, "a non-negative integer or None")
        # With no seed, draw one now: every epoch (and batches[i]) then agrees with iteration.
        entropy = np.random.SeedSequence().entropy if seed is None else seed
        self.seed = int(entropy)  # type: ignore[arg-type]  # entropy is an int when drawn
        if window < 1 or block_rows < 1:
            msg = f"window and block_rows must be positive, not {window!r} and {block_rows!r}"
            raise ValueError(msg)
        self.block_rows = int(block_rows)
        self.window = int(window)
        self.rank, self.world_size = resolve_shard(rank, world_size)
        if remainder not in ("pad", "drop"):
            raise SamplingError("remainder", remainder, "'pad' or 'drop'")
        self.remainder = remainder
        self.drop_last = bool(drop_last)
        n, w = self.length, self.world_size
        if n == 0:
            total = 0
        elif remainder == "drop":
            total = n // w * w
        else:
            total = -(-n // w) * w
        share, b = total // w, self.batch_size
        self.num_batches = share // b if self.drop_last else -(-share // b)
        self.samples = self.num_batches * b if self.drop_last else share
        """Samples this rank gets per epoch (after ``drop_last``)."""
        self.boundaries: list[float] | None = None
        """Bucket boundaries of the samples' keys (None: no buckets)."""
        self._bucket_of: np.ndarray | None = None
        if buckets is not None:
            self._set_buckets(bucket_keys, buckets)
        self._cache: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def _set_buckets(self, keys: np.ndarray | None, buckets: int | Sequence[float]) -> None:
        """Group each epoch's batches by bucket of ``keys`` (one per sample)."""
        if keys is None or len(keys) != self.length:
            msg = "buckets need one key per sample (bucket_keys)"
            raise ValueError(msg)
        keys = np.asarray(keys, dtype=np.float64)
        if isinstance(buckets, int | np.integer) and not isinstance(buckets, bool):
            if buckets < 1:
                raise SamplingError("buckets", buckets, "a positive count or a list of boundaries")
            # Quantiles: buckets of about equal counts.
            qs = np.quantile(keys, np.linspace(0, 1, int(buckets) + 1)[1:-1]) if len(keys) else []
            bounds = sorted({float(q) for q in qs})
        elif isinstance(buckets, Sequence) and not isinstance(buckets, str):
            bounds = [float(v) for v in buckets]
            if any(b >= a for a, b in zip(bounds[1:], bounds, strict=False)):
                raise SamplingError("buckets", buckets, "increasing boundaries")
        else:
            raise SamplingError("buckets", buckets, "a positive count or a list of boundaries")
        self.boundaries = bounds
        # Bucket i holds keys in [bounds[i-1], bounds[i]): key < bounds[0] is bucket 0.
        self._bucket_of = np.searchsorted(np.asarray(bounds), keys, side="right")
        w, big = self.world_size, self.batch_size * self.world_size
        counts = np.bincount(self._bucket_of, minlength=len(bounds) + 1)
        num_batches = samples = 0
        for c in counts.tolist():
            c = -(-c // w) * w if self.remainder == "pad" else c // w * w
            full, rest = divmod(c, big)
            kept = full * big + (0 if self.drop_last else rest)
            num_batches += full + (1 if rest and not self.drop_last else 0)
            samples += kept // w
        self.num_batches = num_batches
        self.samples = samples

    def _bucket_batches(self, epoch: int) -> list[np.ndarray]:
        """The epoch's global batches (``batch_size * world_size`` rows), bucket by bucket.

        Each bucket takes its samples in the epoch's order, is padded (by repeating its first
        samples) or cut to a multiple of ``world_size``, and is cut into global batches; the
        batches are then shuffled (unless ``shuffle=False``). Rank ``r`` takes ``[r::world]``
        of each, so every rank has as many batches, and of the same sizes.
        """
        assert self._bucket_of is not None
        order = self._span(epoch, 0, self.length)
        which = self._bucket_of[order]
        w, big = self.world_size, self.batch_size * self.world_size
        out: list[np.ndarray] = []
        for bucket in range(len(self.boundaries or []) + 1):
            members = order[which == bucket]
            if not len(members):
                continue
            if self.remainder == "pad":
                need = -len(members) % w
                members = np.concatenate([members, np.resize(members, need)])
            else:
                members = members[: len(members) // w * w]
            for start in range(0, len(members), big):
                chunk = members[start : start + big]
                if len(chunk) == big or (len(chunk) and not self.drop_last):
                    out.append(chunk)
        if self.mode != "none":
            seq = np.random.SeedSequence(self.seed, spawn_key=(epoch, 2))
            perm = np.random.default_rng(seq).permutation(len(out))
            out = [out[i] for i in perm]
        return out

    def __len__(self) -> int:
        return self.num_batches

    @property
    def contiguous(self) -> bool:
        """Batches are consecutive rows (no shuffle, one rank): slices can be views."""
        return self.mode == "none" and self.world_size == 1

    # -- the order ---------------------------------------------------------------------------

    def _epoch_order(self, epoch: int) -> Any:
        """The epoch's plan (block), permutation (sample) or None (in order), cached."""
        if self.mode == "none":
            return None
        with self._lock:
            order = self._cache.get(epoch)
            if order is None:
                if self.mode == "block":
                    order = _Plan(self.length, self.block_rows, self.window, self.seed, epoch)
                else:
                    seq = np.random.SeedSequence(self.seed, spawn_key=(epoch, 1))
                    order = np.random.default_rng(seq).permutation(self.length)
                if len(self._cache) >= 2:  # the iterating epoch and the indexed one
                    self._cache.pop(next(iter(self._cache)))
                self._cache[epoch] = order
            return order

    def _span(self, epoch: int, start: int, stop: int) -> np.ndarray:
        """Positions ``[start, stop)`` of the global order, ``0 <= start <= stop <= length``."""
        order = self._epoch_order(epoch)
        if order is None:
            return np.arange(start, stop, dtype=np.int64)
        if isinstance(order, _Plan):
            return order.rows(start, stop).astype(np.int64, copy=False)
        return np.asarray(order[start:stop], dtype=np.int64)

    def global_rows(self, epoch: int, start: int, stop: int) -> np.ndarray:
        """Positions ``[start, stop)`` of the global order, repeating it past its end (pad)."""
        parts = []
        n = self.length
        while start < stop:
            base = start % n
            take = min(stop - start, n - base)
            parts.append(self._span(epoch, base, base + take))
            start += take
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def batch_rows(self, epoch: int, k: int) -> np.ndarray:
        """Rows of this rank's batch ``k`` of ``epoch``, in increasing order.

        Shuffling decides which rows make each batch and the order of the batches; within a
        batch the rows are sorted, so each field is read with one gather in increasing order
        and nothing has to be put back in another order afterwards (a batch's loss does not
        depend on the order of its samples).
        """
        return np.sort(self._batch_rows(epoch, k))

    def _batch_rows(self, epoch: int, k: int) -> np.ndarray:
        if not 0 <= k < self.num_batches:
            msg = f"batch {k} out of range for {self.num_batches} batches"
            raise IndexError(msg)
        if self._bucket_of is not None:
            with self._lock:
                batches = self._cache.get(("buckets", epoch))
            if batches is None:
                batches = self._bucket_batches(epoch)
                with self._lock:
                    if len(self._cache) >= 4:
                        self._cache.pop(next(iter(self._cache)))
                    self._cache[("buckets", epoch)] = batches
            return np.asarray(batches[k][self.rank :: self.world_size], dtype=np.int64)
        lo = k * self.batch_size
        hi = min(lo + self.batch_size, self.samples)
        w = self.world_size
        if w == 1:
            return self.global_rows(epoch, lo, hi)
        return self.global_rows(epoch, lo * w, hi * w)[self.rank :: w]

    def epoch_rows(self, epoch: int) -> np.ndarray:
        """All of this rank's rows of ``epoch``, batch after batch."""
        parts = [self.batch_rows(epoch, k) for k in range(self.num_batches)]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    # -- resuming ----------------------------------------------------------------------------

    def state(self, epoch: int, batch: int) -> dict[str, Any]:
        """A state dict: the position ``(epoch, batch)`` and the settings that fix the order."""
        if batch >= self.num_batches:  # the epoch is done: the next one starts at its start
            epoch, batch = epoch + 1, 0
        return {
            "format": STATE_FORMAT,
            "epoch": int(epoch),
            "batch": int(batch),
            "length": self.length,
            "fields": list(self.fields),
            "seed": self.seed,
            "shuffle": self.mode,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "world_size": self.world_size,
            "remainder": self.remainder,
            "block_rows": self.block_rows,
            "window": self.window,
            "buckets": self.boundaries,
        }

    def resume(self, state: Any) -> tuple[int, int]:
        """Check a state dict against this order and return its ``(epoch, batch)``.

        A seed drawn at random (``seed=None``) and a shuffle mode chosen from memory
        (``shuffle=True``) take the saved values, so an epoch resumes in the same order.
        Raises StateDictError when the state belongs to another store or settings.
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise StateDictError("format", got, STATE_FORMAT, "not an oocstore state dict")
        other = "a state dict from another store (or another version of it)"
        for key, current in (("length", self.length), ("fields", list(self.fields))):
            if state.get(key) != current:
                raise StateDictError(key, state.get(key), current, other)
        if state.get("seed") != self.seed:
            if self.seed_given:
                raise StateDictError(
                    "seed", state.get("seed"), self.seed, "pass the saved seed (or seed=None)"
                )
            self._set("seed", state.get("seed"))
        if state.get("shuffle") != self.mode:
            if not self.auto_shuffle:
                raise StateDictError("shuffle", state.get("shuffle"), self.mode)
            self._set("mode", state.get("shuffle"))
        for key in ("batch_size", "drop_last", "world_size", "remainder"):
            if state.get(key) != getattr(self, key):
                raise StateDictError(key, state.get(key), getattr(self, key))
        if state.get("buckets") != self.boundaries:
            raise StateDictError("buckets", state.get("buckets"), self.boundaries)
        if self.mode == "block":
            for key in ("block_rows", "window"):
                if state.get(key) != getattr(self, key):
                    raise StateDictError(key, state.get(key), getattr(self, key))
        epoch, batch = state.get("epoch"), state.get("batch")
        if not (isinstance(epoch, int) and isinstance(batch, int) and epoch >= 0):
            raise StateDictError("epoch and batch", (epoch, batch), "non-negative integers")
        if not 0 <= batch <= self.num_batches:
            raise StateDictError("batch", batch, f"at most {self.num_batches} batches")
        return epoch, batch

    def _set(self, attr: str, value: Any) -> None:
        if attr == "seed" and not (isinstance(value, int) and value >= 0):
            raise StateDictError("seed", value, "a non-negative integer")
        if attr == "mode" and value not in ("none", "block", "sample"):
            raise StateDictError("shuffle", value, "'none', 'block' or 'sample'")
        with self._lock:
            setattr(self, attr, value)
            self._cache.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_cache"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def block_rows_for(row_bytes: int, block_bytes: int) -> int:
    """Rows per block of about ``block_bytes``."""
    return max(math.ceil(block_bytes / max(row_bytes, 1)), 1)


class Resumable:
    """``state_dict``/``load_state_dict`` of an iterable of epochs over an :class:`EpochOrder`:
    its position is ``(epoch, next batch)``, where the last batch given left off."""

    order: EpochOrder
    _next: tuple[int, int]  # (epoch, batch) the next iter() starts at
    _at: tuple[int, int]  # (epoch, batch) of the next batch to give

    def state_dict(self) -> dict[str, Any]:
        """Where iteration stands: the next batch to give and the settings of the order."""
        return self.order.state(*self._at)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next ``iter()`` give the rest of the saved epoch, in the same order.

        Raises
        ------
        StateDictError
            If ``state`` comes from another store (length, fields) or other settings (seed,
            batch_size, shuffle, world_size...).
        """
        epoch, batch = self.order.resume(state)
        self._next = self._at = (epoch, batch)
        self._resumed(epoch)

    def _resumed(self, epoch: int) -> None:
        """After :meth:`load_state_dict`: what else follows the epoch (nothing by default)."""


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

    def window_at(self, position: int) -> int:
        """The window holding position ``position`` of the epoch's order."""
        return int(np.searchsorted(self.starts, position, side="right")) - 1

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows at positions ``[start, stop)`` of the epoch's order."""
        w = self.window_at(start)
        parts = []
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
