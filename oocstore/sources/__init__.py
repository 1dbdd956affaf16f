"""Sources: turn whatever the user holds into a stream of batches and, if known, its length.

Framework adapters live in their own modules and are imported only when a source of theirs
is seen (by the modules of its type's classes), so ``import oocstore`` imports no framework:

* :mod:`.torch`: ``DataLoader``, ``Dataset``, ``IterableDataset``, ``TensorDataset``;
* :mod:`.tensorflow`: ``tf.data.Dataset``, ``tf.RaggedTensor`` (``tf.SparseTensor`` refused);
* :mod:`.keras`: ``keras.utils.PyDataset`` / ``Sequence`` (Keras 3, or tf_keras).

A list of framework tensors (torch, TensorFlow, JAX) holds one sample per entry and is
preallocated from its length; a list of NumPy arrays stays a list of batches.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from ..coerce import is_array_like
from ._stream import Stream, array_blocks, rows_of, sample_sequence

__all__ = ["Stream", "array_blocks", "as_stream", "sample_sequence"]


MAX_BUNDLE_FIELDS = 64
"""A tuple of more tensors than this is a sequence of samples, never a bundle of fields."""

# The adapter module for the top-level package a source's classes come from.
_ADAPTERS = {
    "torch": "torch",
    "tensorflow": "tensorflow",
    "keras": "keras",
    "tf_keras": "keras",
}
_TENSOR_ROOTS = frozenset({"torch", "tensorflow", "jax", "jaxlib"})


def _root(obj: Any) -> str:
    return type(obj).__module__.split(".", 1)[0]


def _framework_of(source: Any) -> str | None:
    """The adapter for ``source``, from the modules of its classes (subclasses included)."""
    for cls in type(source).__mro__:
        adapter = _ADAPTERS.get(cls.__module__.split(".", 1)[0])
        if adapter is not None:
            return adapter
    return None


def _is_tensor_sequence(source: Any) -> bool:
    """A list (or a long or uneven tuple) whose entries are all framework tensors: samples."""
    if not isinstance(source, list | tuple) or not source:
        return False
    if not all(_root(v) in _TENSOR_ROOTS and hasattr(v, "shape") for v in source):
        return False
    if isinstance(source, tuple):  # (X, y) is a bundle of fields, as a tuple of arrays is
        return len(source) > MAX_BUNDLE_FIELDS or not _is_array_bundle(source)
    return True


def _is_array_bundle(source: Any) -> bool:
    """An array, or a tuple/dict of arrays: the whole dataset given at once."""
    if is_array_like(source) and hasattr(source, "shape") and len(source.shape) >= 1:
        return True
    if (
        isinstance(source, tuple)
        and source
        and all(is_array_like(v) and hasattr(v, "shape") and len(v.shape) >= 1 for v in source)
    ):
        return len({rows_of(v) for v in source}) == 1
    if (
        isinstance(source, Mapping)
        and source
        and all(
            is_array_like(v) and hasattr(v, "shape") and len(v.shape) >= 1 for v in source.values()
        )
    ):
        return len({rows_of(v) for v in source.values()}) == 1
    return False


def as_stream(source: Any, *, batched: bool | None = None) -> Stream:
    """Wrap ``source`` as a :class:`Stream`, learning its length where the source tells.

    An array or a tuple/dict of equally long arrays is the whole dataset: it is sliced into
    blocks. A list of framework tensors holds one sample per entry. Framework objects
    (DataLoader, Dataset, tf.data, Keras PyDataset) go to their adapter, which knows whether
    they hold batches or samples (``batched=None``, the default); ``batched=False`` makes a
    ``tf.data`` dataset or a ``DataLoader(batch_size=None)`` be read one sample per element,
    ``batched=True`` makes every element a batch even where the pipeline does not say so.
    Anything else is iterated as batches unless ``batched=False``; ``len()`` gives the number
    of samples when ``batched=False`` and of batches otherwise.

    Raises
    ------
    TypeError
        If ``source`` cannot be iterated (or is a ``tf.SparseTensor``).
    ValueError
        If ``source`` never ends (an infinite ``tf.data`` dataset or Keras ``PyDataset``).
    """
    if _is_tensor_sequence(source):
        if _root(source[0]) == "torch":
            from .torch import tensor_samples

            return tensor_samples(source)
        return sample_sequence(source)
    adapter = _framework_of(source)
    if adapter is not None:
        module = importlib.import_module(f"{__name__}.{adapter}")
        stream: Stream | None = module.stream(source, batched)
        if stream is not None:
            return stream
    if batched is not False and _is_array_bundle(source):
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
        if batched is not False:
            n_batches = size
        else:
            length = size
    return Stream(
        batches=iter(source), batched=batched is not False, length=length, n_batches=n_batches
    )
