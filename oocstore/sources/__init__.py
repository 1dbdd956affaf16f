"""Sources: turn whatever the user holds into a stream of batches and, if known, its length.

Framework adapters live in their own modules and are imported only when a source of theirs
is seen (by the module of its type), so ``import oocstore`` imports no framework.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..coerce import is_array_like

__all__ = ["Stream", "as_stream", "array_blocks"]

BLOCK_BYTES = 64 * 2**20
"""Rows of an in-memory or memory-mapped array are copied in blocks of about this size."""


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


def _rows(value: Any) -> int:
    return int(value.shape[0]) if hasattr(value, "shape") else len(value)


def _is_array_bundle(source: Any) -> bool:
    """An array, or a tuple/dict of arrays: the whole dataset given at once."""
    if is_array_like(source) and hasattr(source, "shape") and len(source.shape) >= 1:
        return True
    if (
        isinstance(source, tuple)
        and source
        and all(is_array_like(v) and hasattr(v, "shape") and len(v.shape) >= 1 for v in source)
    ):
        return len({_rows(v) for v in source}) == 1
    if (
        isinstance(source, Mapping)
        and source
        and all(
            is_array_like(v) and hasattr(v, "shape") and len(v.shape) >= 1 for v in source.values()
        )
    ):
        return len({_rows(v) for v in source.values()}) == 1
    return False


def array_blocks(source: Any, block_bytes: int = BLOCK_BYTES) -> Stream:
    """Slice an array (or a tuple/dict of arrays) into blocks of rows, copying none."""
    parts = (
        list(source.values())
        if isinstance(source, Mapping)
        else (list(source) if isinstance(source, tuple) else [source])
    )
    n = _rows(parts[0])
    row_bytes = sum(
        int(np.prod(p.shape[1:], dtype=np.int64)) * np.dtype(getattr(p, "dtype", "u1")).itemsize
        if isinstance(p, np.ndarray)
        else 64
        for p in parts
    )
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


def as_stream(source: Any, *, batched: bool = True) -> Stream:
    """Wrap ``source`` as a :class:`Stream`, learning its length where the source tells.

    An array or a tuple/dict of equally long arrays is the whole dataset: it is sliced into
    blocks. Anything else is iterated; ``len()`` gives the number of samples when
    ``batched=False`` and the number of batches otherwise.
    """
    if batched and _is_array_bundle(source):
        return array_blocks(source)
    if not isinstance(source, Iterable) and not hasattr(source, "__getitem__"):
        msg = (
            f"cannot read batches from a {type(source).__name__}: pass an iterable of batches "
            "(a generator, a list, a DataLoader...) or an array"
        )
        raise TypeError(msg)
    length: int | None = None
    n_batches: int | None = None
    try:
        size = len(source)
    except TypeError:
        size = None
    if size is not None:
        if batched:
            n_batches = size
        else:
            length = size
    return Stream(batches=iter(source), batched=batched, length=length, n_batches=n_batches)
