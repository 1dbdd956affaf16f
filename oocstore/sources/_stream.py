"""A stream of batches, and the streams made from a whole array or a sequence of samples.

Shared by the source dispatch (``sources/__init__``) and the framework adapters, which import
it from here, never from the package that imports them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..sizing import BLOCK_BYTES  # rows of a whole array are copied in blocks of this size
from ._structure import block_size, group_samples

__all__ = ["Stream", "array_blocks", "rows_of", "sample_sequence"]


@dataclass
class Stream:
    """Batches from a source, with what is known of its length."""

    batches: Iterator[Any]
    """The batches (or samples, when ``batched`` is False)."""
    batched: bool
    """True when each item holds many samples along axis 0."""
    length: int | None = None
    """Exact number of samples, when the source says."""
    n_batches: int | None = None
    """Number of batches, when known but not the samples (e.g. ``len()`` of a loader)."""


def rows_of(value: Any) -> int:
    return int(value.shape[0]) if hasattr(value, "shape") else len(value)


def _row_nbytes(array: Any, rows: int) -> int:
    """Bytes of one row of a NumPy array or a tensor (torch, JAX: ``nbytes``; TF: dtype size)."""
    if isinstance(array, np.ndarray):
        return int(np.prod(array.shape[1:], dtype=np.int64) * array.dtype.itemsize)
    nbytes = getattr(array, "nbytes", None)
    if isinstance(nbytes, int | np.integer) and rows:
        return int(nbytes) // rows
    itemsize = getattr(getattr(array, "dtype", None), "size", None)  # tf.DType.size
    if isinstance(itemsize, int) and hasattr(array, "shape"):
        return int(np.prod([int(d) for d in array.shape[1:]], dtype=np.int64)) * itemsize
    return 64


def sample_sequence(samples: Sequence[Any]) -> Stream:
    """A sequence of samples (one tensor each), grouped into batches; its length is exact."""
    n = len(samples)

    def gen() -> Iterator[Any]:
        step = block_size(samples[0])
        for start in range(0, n, step):
            yield group_samples(samples[start : start + step], first_index=start)

    return Stream(batches=gen(), batched=True, length=n)


def array_blocks(source: Any, block_bytes: int = BLOCK_BYTES) -> Stream:
    """Slice an array (or a tuple/dict of arrays) into blocks of rows, copying none."""
    parts = (
        list(source.values())
        if isinstance(source, Mapping)
        else (list(source) if isinstance(source, tuple) else [source])
    )
    n = rows_of(parts[0])
    row_bytes = sum(_row_nbytes(p, n) for p in parts)
    step = max(block_bytes // max(row_bytes, 1), 1)

    def gen() -> Iterator[Any]:
        for start in range(0, n, step):
            if isinstance(source, Mapping):
                yield {k: v[start : start + step] for k, v in source.items()}
            elif isinstance(source, tuple):
                yield tuple(v[start : start + step] for v in source)
            else:
                yield source[start : start + step]

    return Stream(batches=gen(), batched=True, length=n)
