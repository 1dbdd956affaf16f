"""A read-only lazy array: NumPy indexing over rows that a backend reads on demand.

Chunked backends (Zarr, chunked HDF5) cannot hand out ``np.memmap`` views, so their fields are
lazy arrays: ``shape``, ``dtype``, ``len``, ``__getitem__`` returning NumPy and ``__array__``.
Only the rows an index touches are read. A subclass implements :meth:`LazyArray._read` (a run
of rows); everything else, NumPy's indexing rules included, is here.
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..sizing import BLOCK_BYTES

__all__ = ["LazyArray"]

# A strided slice reads the whole span and subsamples it while the span stays below this many
# bytes (one read beats many); past it, the rows are read one run at a time.
_SPAN_BYTES = BLOCK_BYTES


class LazyArray(ABC):
    """Rows ``[0, len)`` of an array on disk that slice to NumPy; never shows more rows."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        self._shape = tuple(int(d) for d in shape)
        self._dtype = np.dtype(dtype)

    # -- what a subclass provides ----------------------------------------------------------------

    @abstractmethod
    def _read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` (``0 <= start <= stop <= len``) as a new C-ordered array."""

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows at the sorted, unique indices ``rows``; reads each consecutive run once."""
        if len(rows) == 0:
            return self._read(0, 0)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        starts = np.concatenate(([0], breaks))
        stops = np.concatenate((breaks, [len(rows)]))
        if len(starts) == 1:
            return self._read(int(rows[0]), int(rows[-1]) + 1)
        out = np.empty((len(rows), *self._shape[1:]), dtype=self._dtype)
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
            out[a:b] = self._read(int(rows[a]), int(rows[b - 1]) + 1)
        return out

    # -- array protocol --------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        """``(committed rows, *per-row shape)``."""
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        """The exact dtype of the rows."""
        return self._dtype

    @property
    def ndim(self) -> int:
        """Number of axes (the row axis included)."""
        return len(self._shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self._shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes the whole array takes once read."""
        return self.size * self._dtype.itemsize

    def __len__(self) -> int:
        return self._shape[0]

    def __iter__(self) -> Iterator[Any]:
        # Read a few MB at a time rather than one row per call.
        row = max(self.nbytes // max(len(self), 1), 1)
        step = max((8 * 2**20) // row, 1)
        for start in range(0, len(self), step):
            yield from self._read(start, min(start + step, len(self)))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            msg = (
                f"{type(self).__name__} reads from disk: it cannot give an array without "
                "copying (use np.asarray(a) or a[...] instead of copy=False)"
            )
            raise ValueError(msg)
        out = self._read(0, len(self))
        return out if dtype is None else out.astype(dtype, copy=False)

    def tolist(self) -> Any:
        """All rows as nested Python lists (as ``np.ndarray.tolist``)."""
        return np.asarray(self).tolist()

    def __getitem__(self, key: Any) -> Any:
        key = _expand(key if isinstance(key, tuple) else (key,), self.ndim)
        lead = 0
        while lead < len(key) and key[lead] is None:
            lead += 1
        if lead:  # new axes in front: index the rest, then add them
            return np.asarray(self[key[lead:]])[(None,) * lead]
        if not key:
            key = (slice(None),)
        first, rest = key[0], key[1:]
        n = len(self)
        if isinstance(first, int | np.integer) and not isinstance(first, bool | np.bool_):
            i = operator.index(first)
            if not -n <= i < n:
                msg = f"index {i} is out of bounds for axis 0 with size {n}"
                raise IndexError(msg)
            i %= n
            return self._read(i, i + 1)[(0, *rest)]
        if isinstance(first, slice):
            return self._slice(first, rest)
        idx = np.asarray(first)
        if idx.dtype == np.bool_:
            if idx.ndim != 1:  # a mask over several axes: NumPy's rules on the whole array
                return np.asarray(self)[key]
            if len(idx) != n:
                msg = f"boolean index has {len(idx)} entries but axis 0 has {n}"
                raise IndexError(msg)
            idx = np.flatnonzero(idx)
        if idx.dtype.kind not in "iu":
            msg = (
                "only integers, slices, ellipsis, None and integer or boolean arrays are "
                f"valid indices (got {type(first).__name__})"
            )
            raise IndexError(msg)
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            msg = f"index out of bounds for axis 0 with size {n}"
            raise IndexError(msg)
        idx = np.where(idx < 0, idx + n, idx)
        rows, inverse = np.unique(idx, return_inverse=True)
        block = self._read_rows(rows)
        return block[(inverse.reshape(idx.shape), *rest)]

    def _slice(self, s: slice, rest: tuple[Any, ...]) -> np.ndarray:
        start, stop, step = s.indices(len(self))
        rng = range(start, stop, step)
        if len(rng) == 0:
            return self._read(0, 0)[(slice(0, 0), *rest)]
        lo, hi = min(rng[0], rng[-1]), max(rng[0], rng[-1]) + 1
        row_nbytes = self.nbytes // max(len(self), 1)
        if abs(step) == 1 or (hi - lo) * row_nbytes <= _SPAN_BYTES:
            block = self._read(lo, hi)
            local = slice(rng[0] - lo, None if rng.stop - lo < 0 else rng.stop - lo, step)
            return block[(local, *rest)]
        rows = np.arange(rng[0], rng.stop, step, dtype=np.int64)
        order = slice(None, None, -1) if step < 0 else slice(None)
        block = self._read_rows(rows[order])[order]
        return block[(slice(None), *rest)]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} shape={self.shape} dtype={self.dtype}>"


def _expand(key: tuple[Any, ...], ndim: int) -> tuple[Any, ...]:
    """Replace an Ellipsis by the full slices it stands for."""
    ells = [i for i, k in enumerate(key) if k is Ellipsis]
    if not ells:
        return key
    if len(ells) > 1:
        msg = "an index can only have a single ellipsis ('...')"
        raise IndexError(msg)
    used = sum(
        (np.asarray(k).ndim if isinstance(k, np.ndarray) and k.dtype == np.bool_ else 1)
        for k in key
        if k is not None and k is not Ellipsis
    )
    i = ells[0]
    return (*key[:i], *(slice(None),) * max(ndim - used, 0), *key[i + 1 :])
