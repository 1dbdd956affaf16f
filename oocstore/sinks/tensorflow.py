"""``store.to_tf()``: a ``tf.data.Dataset`` over a store, with an exact spec and cardinality.

The elements come from :class:`~oocstore.sinks.Batches` through
``tf.data.Dataset.from_generator`` with an ``output_signature`` built from the store's schema,
so ``element_spec`` is exact before anything is read; ``assert_cardinality`` makes
``cardinality()`` exact too (Keras and ``tf.data`` then know the epoch's length). Each
iteration of the dataset calls the generator again: a new epoch, with a new shuffle order.
Batched, each element is read with one gather of the batch's sorted rows per field (as
``store.batches`` reads); unbatched, the store is read in blocks of about 1 MiB and
``unbatch``-ed, so TensorFlow does not pay a Python call per sample. The dataset ends with
``prefetch(AUTOTUNE)``, so the next batch is read while the model trains on this one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

from ._batches import BLOCK_BYTES, Batches
from ._order import ShuffleLike

if TYPE_CHECKING:
    from ..reader import Store

__all__ = ["to_tf"]


def _native(dtype: np.dtype[Any]) -> np.dtype[Any]:
    return dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype


def _tf_dtype(field: str, dtype: np.dtype[Any]) -> Any:
    try:
        return tf.as_dtype(_native(dtype))
    except TypeError as err:
        msg = (
            f"field {field!r} has dtype {dtype}, which TensorFlow has no type for; "
            "leave it out with fields=, or store it as a supported dtype"
        )
        raise TypeError(msg) from err


def to_tf(
    store: Store,
    batch_size: int | None = None,
    shuffle: ShuffleLike = False,
    *,
    seed: int | None = None,
    drop_last: bool = False,
    fields: Sequence[str] | None = None,
) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of tuples of tensors (one per field) over ``store``.

    Parameters
    ----------
    store
        The store to read.
    batch_size
        Samples per element; None gives one sample per element.
    shuffle
        ``"block"``, ``"sample"`` or ``True`` (chosen from memory): see
        [`Batches`][oocstore.sinks.Batches].
    seed
        Seed of the shuffle (epochs still differ from one another).
    drop_last
        Drop the final partial batch; the batch dimension is then static in ``element_spec``.
    fields
        The fields to give, in this order (default: all, in store order).

    Returns
    -------
    tf.data.Dataset
        Elements ``(field_a, field_b, ...)`` with shapes ``(batch, *sample_shape)`` (or
        ``sample_shape`` unbatched), the batch dimension ``None`` unless ``drop_last``.

    Raises
    ------
    TypeError
        If a field is stored packed (give it padded), or has a dtype TensorFlow lacks.
    """
    names = tuple(fields) if fields is not None else store.fields
    for f in names:
        if f not in store:
            msg = f"no field {f!r} in store {str(store.path)!r}; fields: {list(store.fields)}"
            raise KeyError(msg)
        if store.layout(f) == "packed":
            msg = (
                f"field {f!r} is stored packed, which has no fixed shape for tf.data; "
                f"write it with ragged='pad', or convert: store[{f!r}].to_padded(path)"
            )
            raise TypeError(msg)
    specs = [store.schema[f] for f in names]
    if batch_size is None:
        row_bytes = sum(s.sample_nbytes for s in specs)
        block = max(min(math.ceil(BLOCK_BYTES / max(row_bytes, 1)), max(len(store), 1)), 1)
        source = Batches(store, block, shuffle=shuffle, seed=seed, fields=names)
        lead: int | None = None
    else:
        source = Batches(
            store, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, fields=names
        )
        lead = batch_size if drop_last else None
    signature = tuple(
        tf.TensorSpec(shape=(lead, *s.shape), dtype=_tf_dtype(s.name, s.dtype)) for s in specs
    )
    dtypes = [_native(s.dtype) for s in specs]

    def generate() -> Iterator[tuple[np.ndarray, ...]]:
        for batch in source:
            yield tuple(np.asarray(v, dtype=d) for v, d in zip(batch, dtypes, strict=True))

    ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
    if batch_size is None:
        ds = ds.unbatch()
        count = source.length
    else:
        count = len(source)
    ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    return ds.prefetch(tf.data.AUTOTUNE)
