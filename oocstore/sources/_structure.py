"""Shared by the framework adapters: flatten nested elements, and group samples into batches.

Frameworks hand out nested structures (``(image, {"boxes": b, "labels": l})``, a Keras
``((x1, x2), y)``) while a batch's top level is its fields. These helpers bridge the two without
importing any framework.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..coerce import is_array_like
from ..errors import BatchError

__all__ = [
    "SAMPLE_BLOCK_BYTES",
    "block_size",
    "flatten",
    "group_samples",
    "grouped",
    "sample_nbytes",
]

SAMPLE_BLOCK_BYTES = 4 * 2**20
"""Samples are grouped into batches of about this many bytes before they reach the writer."""

MAX_SAMPLE_BLOCK = 4096
"""At most this many samples per group: the per-sample Python work stays cache-sized."""

SEPARATOR = "_"
"""Joins the keys of a nested element into one field name: ``{"a": {"b": x}}`` -> ``"a_b"``."""


def _is_sequence(value: Any) -> bool:
    return isinstance(value, tuple | list) and not is_array_like(value)


def _children(value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        return [(str(k), v) for k, v in value.items()]
    names = getattr(value, "_fields", None)  # a namedtuple names its positions
    keys = [str(n) for n in names] if names is not None else [str(i) for i in range(len(value))]
    return list(zip(keys, value, strict=True))


def flatten(
    element: Any,
    *,
    sequences: bool,
    convert: Callable[[Any], Any] | None = None,
    batch_index: int = 0,
) -> Any:
    """Turn a nested element into one level of fields, converting each leaf with ``convert``.

    A flat element (an array, or a tuple/list/dict of non-containers) keeps its shape, so
    ``names=`` still applies to a plain ``(x, y)``. A nested one becomes a dict whose keys join
    the path with ``_``: ``(img, {"boxes": b})`` -> ``{"0": img, "1_boxes": b}``. Dicts below the
    top level are always containers; tuples and lists are containers only with ``sequences``
    (tf.data and Keras structures), since in a batch a list below the top level otherwise holds
    one entry per sample.

    Raises
    ------
    BatchError
        If two paths give the same field name, or a nested container is empty.
    """
    conv = convert if convert is not None else _identity

    def is_container(value: Any) -> bool:
        return isinstance(value, Mapping) or (sequences and _is_sequence(value))

    if not (isinstance(element, Mapping) or _is_sequence(element)):
        return conv(element)
    children = _children(element)
    if not any(is_container(v) for _, v in children):
        if isinstance(element, Mapping):
            return {k: conv(v) for k, v in children}
        values = [conv(v) for _, v in children]
        if hasattr(element, "_fields"):
            return type(element)(*values)
        return tuple(values) if isinstance(element, tuple) else values

    out: dict[str, Any] = {}

    def walk(name: str, value: Any) -> None:
        if is_container(value):
            inner = _children(value)
            if not inner:
                raise BatchError(
                    "an empty container holds no field",
                    field=name,
                    batch_index=batch_index,
                    hint="remove it from the element, or give it a value",
                )
            for key, v in inner:
                walk(f"{name}{SEPARATOR}{key}", v)
            return
        if name in out:
            raise BatchError(
                "two parts of a nested element flatten to the same field name",
                field=name,
                batch_index=batch_index,
                hint=f"rename a key so that joining the path with {SEPARATOR!r} is unique",
            )
        out[name] = conv(value)

    for key, value in children:
        walk(key, value)
    return out


def _identity(value: Any) -> Any:
    return value


def sample_nbytes(sample: Any) -> int:
    """Rough bytes of one sample (a value or a flat container of values), for block sizing."""
    values: Iterable[Any]
    if isinstance(sample, Mapping):
        values = sample.values()
    elif _is_sequence(sample):
        values = sample
    else:
        values = [sample]
    total = 0
    for v in values:
        nbytes = getattr(v, "nbytes", None)
        total += int(nbytes) if isinstance(nbytes, int | np.integer) else 64
    return max(total, 1)


def block_size(first_sample: Any, block_bytes: int = SAMPLE_BLOCK_BYTES) -> int:
    """Samples per group so that a group holds about ``block_bytes``."""
    return int(min(max(block_bytes // sample_nbytes(first_sample), 1), MAX_SAMPLE_BLOCK))


def group_samples(samples: Sequence[Any], *, first_index: int = 0) -> Any:
    """Transpose samples into one batch that holds, per field, a list with one entry per sample.

    That is the batch rule's own form for samples (a list inside a field), so samples of
    different shapes go through the ragged support and equal shapes are stacked. A sample
    that is a tuple/list gives a tuple, a dict gives a dict, a value gives a 1-tuple.

    Raises
    ------
    BatchError
        If a sample's structure differs from the first sample's.
    """
    first = samples[0]
    if isinstance(first, Mapping):
        keys = list(first)
        for j, s in enumerate(samples):
            if not isinstance(s, Mapping) or list(s) != keys:
                _mismatch(first_index + j, first, s)
        return {k: [s[k] for s in samples] for k in keys}
    if _is_sequence(first):
        for j, s in enumerate(samples):
            if not _is_sequence(s) or len(s) != len(first):
                _mismatch(first_index + j, first, s)
        columns = [list(c) for c in zip(*samples, strict=True)]
        if hasattr(first, "_fields"):
            return type(first)(*columns)
        return tuple(columns)
    for j, s in enumerate(samples):
        if isinstance(s, Mapping) or _is_sequence(s):
            _mismatch(first_index + j, first, s)
    return (list(samples),)


def _describe(sample: Any) -> str:
    if isinstance(sample, Mapping):
        return f"a dict with keys {[str(k) for k in sample]}"
    if _is_sequence(sample):
        return f"{len(sample)} values"
    return f"one {type(sample).__name__}"


def _mismatch(index: int, first: Any, sample: Any) -> None:
    what = f"sample {index} is structured differently from the first sample"
    raise BatchError(
        what,
        expected=_describe(first),
        actual=_describe(sample),
        hint="every sample must have the same fields",
    )


def grouped(
    samples: Iterator[Any],
    *,
    prepare: Callable[[Any, int], Any] | None = None,
    first_block: int | None = None,
) -> Iterator[Any]:
    """Group an iterator of samples into batches (see :func:`group_samples`).

    ``prepare(sample, index)`` flattens or converts each sample first; the group size is
    taken from the first sample unless ``first_block`` is given.
    """
    prep = prepare if prepare is not None else (lambda s, i: s)
    index = 0
    block: list[Any] = []
    size = first_block
    for raw in samples:
        sample = prep(raw, index)
        if size is None:
            size = block_size(sample)
        block.append(sample)
        index += 1
        if len(block) >= size:
            yield group_samples(block, first_index=index - len(block))
            block = []
    if block:
        yield group_samples(block, first_index=index - len(block))
