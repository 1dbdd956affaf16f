"""Ragged samples: pad to a maximum shape, pack end to end, and keep each sample's true shape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
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
