"""TensorFlow sources: a ``tf.data.Dataset`` (batched or not) and a whole ``tf.RaggedTensor``.

Imported only when :func:`oocstore.sources.as_stream` meets an object of a ``tensorflow``
class, so TensorFlow is already imported by then.

Batched or not
--------------
A dataset's elements are batches when its pipeline says so, read from the outside in through
operations that keep elements as they are (``map``, ``prefetch``, ``shuffle``, ``cache``,
``take``, ``filter``, ``repeat``, options...):

1. a batch operation (``batch``, ``padded_batch``, ``ragged_batch``, ``rebatch``) means batches;
2. ``unbatch``, or reaching ``from_tensor_slices`` or ``range``, means samples;
3. otherwise (``from_generator``, ``interleave``, ``zip``...) the ``element_spec`` decides:
   batches when every component has a leading ``None`` dimension, samples if not.

``batched=False`` overrides this and reads every element as one sample; ``batched=True``
reads every element as a batch (say a generator dataset whose elements are batches of a fixed
size, which its ``element_spec`` cannot tell from samples). ``oocstore.write``'s default,
``batched=None``, follows the rule above.

Length
------
``cardinality()`` when it is known: the number of samples for a dataset of samples. For
batches, the batch operation's input cardinality gives the samples (less the final partial
batch with ``drop_remainder=True``), provided nothing between it and the outside changes the
number of batches; failing that, the number of batches is kept as a hint. An infinite
dataset (``repeat()``) is refused: it would fill the disk.

Values
------
Nested tuples, dicts and namedtuples are flattened into field names joined with ``_``
(``{"image": {"rgb": x, "depth": d}, "label": y}`` gives ``image_rgb``, ``image_depth``,
``label``); a flat ``(x, y)`` keeps its two fields so ``names=`` applies. A ``tf.RaggedTensor``
in a batch becomes a list of per-sample arrays, which oocstore's ragged support pads (or packs);
as one sample, it must be rectangular. String tensors become fixed-width bytes. A
``tf.SparseTensor`` is refused with the conversion to use instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from ..errors import RaggedError
from ._stream import Stream
from ._structure import flatten, grouped

__all__ = ["is_batched", "stream"]

_BATCH_OPS = frozenset(
    {"_BatchDataset", "_PaddedBatchDataset", "_ParallelBatchDataset", "_RebatchDataset"}
)
_UNBATCH_OPS = frozenset({"_UnbatchDataset"})
_SAMPLE_SOURCES = frozenset({"_TensorSliceDataset", "_RangeDataset"})
# Operations whose elements are their input's elements (or some of them), unchanged in kind.
_PASS_THROUGH = frozenset(
    {
        "_MapDataset",
        "_ParallelMapDataset",
        "_PrefetchDataset",
        "_CacheDataset",
        "_MemoryCacheDataset",
        "_ShuffleDataset",
        "_TakeDataset",
        "_SkipDataset",
        "_RepeatDataset",
        "_FilterDataset",
        "_OptionsDataset",
        "_AssertCardinalityDataset",
        "_ShardDataset",
        "_IgnoreErrorsDataset",
        "_RestructuredDataset",
        "_TakeWhileDataset",
        "_DenseToRaggedDataset",
        "_ModelDataset",
        "_MaxIntraOpParallelismDataset",
        "_PrivateThreadPoolDataset",
    }
)
_MAX_DEPTH = 256  # pipelines are far shorter; this only bounds a cycle in private attributes

SPARSE_HINT = (
    "oocstore stores dense or ragged arrays; convert first, e.g. "
    "ds.map(lambda x, y: (tf.sparse.to_dense(x), y))"
)


def _pipeline(ds: tf.data.Dataset) -> Iterator[tf.data.Dataset]:
    """The dataset and its inputs, outermost first, while each has a single input."""
    node: Any = ds
    for _ in range(_MAX_DEPTH):
        if node is None:
            return
        yield node
        node = getattr(node, "_input_dataset", None)


def _batch_op(ds: tf.data.Dataset) -> tuple[bool | None, tf.data.Dataset | None]:
    """Whether the pipeline says batched (True), samples (False) or nothing (None).

    Returns the batch operation found, if any, with its verdict.
    """
    for node in _pipeline(ds):
        name = type(node).__name__
        if name in _BATCH_OPS:
            return True, node
        if name in _UNBATCH_OPS or name in _SAMPLE_SOURCES:
            return False, None
        if name not in _PASS_THROUGH:
            return None, None
    return None, None


def _leaves(spec: Any) -> list[Any]:
    return list(tf.nest.flatten(spec))


def is_batched(ds: tf.data.Dataset) -> bool:
    """True when ``ds``'s elements are batches, by the rule in this module's docstring."""
    verdict, _ = _batch_op(ds)
    if verdict is not None:
        return verdict
    leaves = _leaves(ds.element_spec)
    return bool(leaves) and all(
        getattr(s, "shape", None) is not None
        and s.shape.rank is not None
        and s.shape.rank >= 1
        and s.shape[0] is None
        for s in leaves
    )


def _cardinality(ds: tf.data.Dataset) -> int:
    return int(ds.cardinality().numpy())


def _batched_length(ds: tf.data.Dataset, batches: int) -> int | None:
    """Samples in a batched dataset, from its batch operation's input, when that is exact."""
    _, op = _batch_op(ds)
    if op is None or type(op).__name__ == "_RebatchDataset" or batches < 0:
        return None
    if _cardinality(op) != batches:  # take/skip/filter/repeat changed the number of batches
        return None
    inner = getattr(op, "_input_dataset", None)
    size, drop = getattr(op, "_batch_size", None), getattr(op, "_drop_remainder", None)
    if inner is None or size is None or drop is None:
        return None
    n = _cardinality(inner)
    if n < 0:
        return None
    bs = int(np.asarray(size))
    return n - n % bs if bool(np.asarray(drop)) else n


def _to_numpy(value: Any) -> np.ndarray:
    arr = np.asarray(value.numpy())
    if arr.dtype == object:  # tf.string: bytes objects -> fixed-width bytes
        arr = arr.astype(np.bytes_)
    return arr


def _rectangular(value: Any, *, batch_index: int) -> np.ndarray:
    """One sample given as a RaggedTensor, which must have no ragged rows."""
    dense = value.to_tensor()
    if int(tf.size(dense)) != int(tf.size(value.flat_values)):
        raise RaggedError(
            "a sample given as a tf.RaggedTensor has rows of different lengths",
            batch_index=batch_index,
            expected="a rectangular sample (every row of an axis the same length)",
            actual=f"rows of lengths {value.row_lengths().numpy().tolist()}",
            hint="oocstore keeps samples rectangular; pad the rows (value.to_tensor()) first",
        )
    return _to_numpy(dense)


def _ragged_rows(value: Any, *, batch_index: int) -> list[np.ndarray]:
    """A batched RaggedTensor as a list of per-sample arrays."""
    if value.ragged_rank == 1:  # one split of one flat array: no per-row TensorFlow call
        values = _to_numpy(value.values)
        splits = value.row_splits.numpy()
        return [values[splits[i] : splits[i + 1]] for i in range(len(splits) - 1)]
    return [_rectangular(row, batch_index=batch_index) for row in value]


def _converter(batched: bool, batch_index: int) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, tf.SparseTensor):
            msg = f"cannot store a tf.SparseTensor (element {batch_index}): {SPARSE_HINT}"
            raise TypeError(msg)
        if isinstance(value, tf.RaggedTensor):
            if batched:
                return _ragged_rows(value, batch_index=batch_index)
            return _rectangular(value, batch_index=batch_index)
        if hasattr(value, "numpy"):
            return _to_numpy(value)
        return value

    return convert


def _element(element: Any, index: int, batched: bool) -> Any:
    out = flatten(element, sequences=True, convert=_converter(batched, index), batch_index=index)
    # A lone RaggedTensor became a list of samples: that is one field, not a list of fields.
    return (out,) if isinstance(out, list) and not isinstance(element, list) else out


def dataset_stream(ds: tf.data.Dataset, batched: bool | None) -> Stream:
    """Elements of a ``tf.data.Dataset`` as batches, with its length where it is known.

    Raises
    ------
    TypeError
        If the elements hold a ``tf.SparseTensor``.
    ValueError
        If the dataset is infinite.
    """
    if any(isinstance(s, tf.SparseTensorSpec) for s in _leaves(ds.element_spec)):
        msg = f"cannot store a tf.data dataset of tf.SparseTensor values: {SPARSE_HINT}"
        raise TypeError(msg)
    card = _cardinality(ds)
    if card == int(tf.data.INFINITE_CARDINALITY):
        msg = (
            "the tf.data dataset is infinite (its cardinality is INFINITE, e.g. after "
            "repeat()), so writing it would never end; take(n) the elements to store"
        )
        raise ValueError(msg)
    known = card if card >= 0 else None
    if batched is True or (batched is None and is_batched(ds)):
        batches = (_element(e, i, True) for i, e in enumerate(ds))
        length = _batched_length(ds, card)
        n_batches = known if length is None else None
        return Stream(batches=batches, batched=True, length=length, n_batches=n_batches)
    samples = grouped(iter(ds), prepare=lambda e, i: _element(e, i, False))
    return Stream(batches=samples, batched=True, length=known)


def stream(source: Any, batched: bool | None) -> Stream | None:
    """The :class:`Stream` of a TensorFlow object, or None for a plain tensor.

    Raises
    ------
    TypeError
        For a ``tf.SparseTensor``, or a dataset of them.
    ValueError
        For an infinite dataset.
    """
    if isinstance(source, tf.data.Dataset):
        return dataset_stream(source, batched)
    if isinstance(source, tf.SparseTensor):
        msg = f"cannot store a tf.SparseTensor: {SPARSE_HINT}"
        raise TypeError(msg)
    if isinstance(source, tf.RaggedTensor):
        n = int(source.nrows())
        rows = _ragged_rows(source, batch_index=0)
        step = 4096
        batches = ((rows[i : i + step],) for i in range(0, n, step))
        return Stream(batches=batches, batched=True, length=n)
    return None
