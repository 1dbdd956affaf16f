"""Ragged samples: pad to a maximum shape, pack end to end, and keep each sample's true shape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import CorruptStoreError

__all__ = [
    "check_packed",
    "region",
    "fits",
    "max_shape_of",
    "pad_block",
    "pack_block",
    "sample_shapes",
    "unpack_block",
]


def region(index: int, shape: Sequence[int] | np.ndarray) -> tuple[Any, ...]:
    """The index of sample ``index``'s true region in a padded array: ``(i, :h, :w, ...)``."""
    return (index, *(slice(0, int(d)) for d in shape))


def sample_shapes(value: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """The true shape of every sample in a batch, as an ``(n, ndim)`` int64 array."""
    if isinstance(value, np.ndarray):
        return np.broadcast_to(
            np.asarray(value.shape[1:], dtype=np.int64), (len(value), value.ndim - 1)
        ).copy()
    if not value:
        return np.empty((0, 0), dtype=np.int64)
    return np.asarray([v.shape for v in value], dtype=np.int64).reshape(len(value), -1)


def max_shape_of(shapes: np.ndarray, start: Sequence[int] = ()) -> tuple[int, ...]:
    """Elementwise maximum of ``shapes`` rows (and of ``start``, if given)."""
    ndim = shapes.shape[1] if shapes.ndim == 2 else len(start)
    out = np.zeros(ndim, dtype=np.int64)
    if start:
        out = np.maximum(out, np.asarray(start, dtype=np.int64))
    if len(shapes):
        out = np.maximum(out, shapes.max(axis=0))
    return tuple(int(d) for d in out)


def fits(shapes: np.ndarray, bound: Sequence[int]) -> bool:
    """True when every shape row is within ``bound`` on every axis."""
    return bool(len(shapes) == 0 or (shapes <= np.asarray(bound, dtype=np.int64)).all())


def pad_block(
    samples: Sequence[np.ndarray] | np.ndarray,
    shape: Sequence[int],
    dtype: np.dtype[Any],
    fill: Any,
) -> np.ndarray:
    """Lay samples into one ``(n, *shape)`` array, padding every sample with ``fill``."""
    n = len(samples)
    if isinstance(samples, np.ndarray) and samples.shape[1:] == tuple(shape):
        return samples
    out = np.full((n, *shape), fill, dtype=dtype)
    for i, s in enumerate(samples):
        out[region(i, s.shape)] = s
    return out


def pack_block(samples: Sequence[np.ndarray] | np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """All samples' values end to end, as one flat array."""
    if isinstance(samples, np.ndarray):
        return samples.reshape(-1)
    if not samples:
        return np.empty(0, dtype=dtype)
    return np.concatenate([np.asarray(s, dtype=dtype).reshape(-1) for s in samples])


def unpack_block(
    values: np.ndarray, offsets: np.ndarray, shapes: np.ndarray, base: int
) -> list[np.ndarray]:
    """Split flat ``values`` (starting at element ``base``) into samples by offsets and shapes."""
    out = []
    for off, shp in zip(offsets, shapes, strict=True):
        size = int(np.prod(shp, dtype=np.int64))
        start = int(off) - base
        out.append(values[start : start + size].reshape(tuple(int(d) for d in shp)))
    return out


def check_packed(
    n_values: int,
    offsets: np.ndarray,
    shapes: np.ndarray,
    where: str,
    *,
    bound: Sequence[int] | None = None,
    first: int = 0,
) -> None:
    """Refuse packed offsets and shapes that point outside the values (a damaged store).

    Every sample must lie inside the ``n_values`` stored values: integer offsets, and
    non-negative integer shapes (within ``bound`` when given) with ``offset + size <=
    n_values``; otherwise slicing sample ``i`` fails with a bare NumPy error or returns a
    short, wrong sample. ``first`` numbers the first sample in messages.
    """
    if offsets.ndim != 1 or offsets.dtype.kind not in "iu":
        problem = f"offsets must be one integer per sample, not {offsets.dtype}{offsets.shape}"
        raise CorruptStoreError(where, problem)
    if shapes.ndim != 2 or shapes.dtype.kind not in "iu" or len(shapes) != len(offsets):
        problem = (
            f"shapes must be {len(offsets)} rows of integers, not {shapes.dtype}{shapes.shape}"
        )
        raise CorruptStoreError(where, problem)
    if not len(offsets):
        return
    if shapes.size and int(shapes.min()) < 0:
        i = int(np.argmin(shapes.min(axis=1)))
        problem = f"sample {first + i} has a negative shape {shapes[i].tolist()}"
        raise CorruptStoreError(where, problem)
    if bound is not None:
        over = np.flatnonzero((shapes > np.asarray(bound, dtype=np.int64)).any(axis=1))
        if len(over):
            i = int(over[0])
            problem = (
                f"sample {first + i} has shape {shapes[i].tolist()}, larger than the field's "
                f"shape {tuple(bound)}"
            )
            raise CorruptStoreError(where, problem)
    # Products in float64 cannot overflow; anything above the values' length is corrupt anyway.
    sizes = np.prod(shapes.astype(np.float64), axis=1)
    starts = offsets.astype(np.float64)
    bad = np.flatnonzero((starts < 0) | (starts + sizes > n_values))
    if len(bad):
        i = int(bad[0])
        problem = (
            f"sample {first + i} (offset {int(offsets[i])}, shape {shapes[i].tolist()}) lies "
            f"outside the {n_values:,} stored values; {len(bad):,} samples are out of bounds"
        )
        raise CorruptStoreError(where, problem)
