"""PyTorch sources: a ``DataLoader``, a map-style or iterable ``Dataset``, a ``TensorDataset``.

Imported only when :func:`oocstore.sources.as_stream` meets an object of a ``torch`` class, so
torch is already imported by then. Tensors are not touched here (no ``.item()``, no device
copies): :mod:`oocstore.coerce` copies each CUDA tensor to the host once, when it is written.

What each source gives
----------------------
``DataLoader``
    Batches. With the default collate function and one of torch's own samplers, the number of
    samples is exact: ``len(loader.sampler)`` (``len(dataset)`` for the default sequential
    sampler), less the final partial batch when ``drop_last``. Otherwise ``len(loader)`` is
    kept as a number of batches (the writer preallocates that many first-batch sizes and trims).
    ``DataLoader(batch_size=None)`` passes the dataset's items through unchanged: they are read
    as batches unless ``batched=False``.
``TensorDataset``
    Its tensors, sliced into blocks of rows (no per-sample indexing).
map-style ``Dataset``
    Samples ``dataset[0] ... dataset[len - 1]`` (exact length), fetched in blocks of indices
    (``__getitems__`` when the dataset has it) and grouped into batches.
``IterableDataset``
    Samples, grouped into batches; ``len()`` is used when it has one.

Nested dicts in an element are flattened into field names joined with ``_`` (a detection
target ``{"boxes": b, "labels": l}`` becomes fields ``"1_boxes"`` and ``"1_labels"``). A
tuple or list below the top level keeps the batch rule's meaning (one entry per sample), which
is what ``collate_fn=lambda b: tuple(zip(*b))`` produces for ragged samples.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.utils.data as tud

from ._stream import Stream, array_blocks
from ._structure import block_size, flatten, group_samples, grouped

__all__ = ["stream"]

# Samplers that yield exactly len(sampler) indices, each fetched as one sample.
_COUNTING_SAMPLERS = (
    tud.SequentialSampler,
    tud.RandomSampler,
    tud.SubsetRandomSampler,
    tud.WeightedRandomSampler,
)


def _len_or_none(obj: Any) -> int | None:
    try:
        return len(obj)
    except (TypeError, NotImplementedError):  # iterable datasets without __len__
        return None


def _flat_batch(batch: Any, index: int) -> Any:
    return flatten(batch, sequences=False, batch_index=index)


def loader_stream(loader: tud.DataLoader[Any], batched: bool | None) -> Stream:
    """Batches of a ``DataLoader`` and, where its sampler says, the exact number of samples."""
    batches = (_flat_batch(b, i) for i, b in enumerate(loader))
    if loader.batch_sampler is None:  # batch_size=None: items pass through as the dataset gives
        n = _len_or_none(loader)
        if batched is not False:
            return Stream(batches=batches, batched=True, n_batches=n)
        return Stream(batches=batches, batched=False, length=n)
    length = _exact_length(loader)
    n_batches = None if length is not None else _len_or_none(loader)
    return Stream(batches=batches, batched=True, length=length, n_batches=n_batches)


def _exact_length(loader: tud.DataLoader[Any]) -> int | None:
    """Samples the loader yields, when torch's own classes guarantee the count."""
    bs = loader.batch_sampler
    if (
        type(bs) is not tud.BatchSampler
        or isinstance(loader.dataset, tud.IterableDataset)
        or not isinstance(loader.sampler, _COUNTING_SAMPLERS)
        or loader.collate_fn is not tud.default_collate  # a custom collate may drop or add
    ):
        return None
    n = _len_or_none(loader.sampler)
    if n is None or bs.batch_size is None:
        return None
    return n - n % bs.batch_size if bs.drop_last else n


def dataset_stream(dataset: tud.Dataset[Any]) -> Stream:
    """Samples of a map-style dataset, read in blocks of indices and grouped into batches."""
    n = _len_or_none(dataset)
    if n is None:  # no __len__: index until IndexError, as Python's iter() does
        return Stream(
            batches=grouped(iter(dataset), prepare=_flat_sample),
            batched=True,
        )
    getitems = getattr(dataset, "__getitems__", None)

    def fetch(start: int, stop: int) -> list[Any]:
        if callable(getitems):
            return list(getitems(list(range(start, stop))))
        return [dataset[i] for i in range(start, stop)]

    def gen() -> Iterator[Any]:
        if n == 0:
            return
        first = _flat_sample(dataset[0], 0)
        step = block_size(first)
        samples = [first, *(_flat_sample(s, 1 + j) for j, s in enumerate(fetch(1, min(step, n))))]
        yield group_samples(samples)
        for start in range(step, n, step):
            block = fetch(start, min(start + step, n))
            prepared = [_flat_sample(s, start + j) for j, s in enumerate(block)]
            yield group_samples(prepared, first_index=start)

    return Stream(batches=gen(), batched=True, length=n)


def _flat_sample(sample: Any, index: int) -> Any:
    return flatten(sample, sequences=False, batch_index=index)


def tensor_samples(samples: Sequence[Any]) -> Stream:
    """A list of tensors, one sample each: blocks of equal shapes are stacked on their device.

    ``torch.stack`` then one host copy per block (for CUDA tensors: one transfer and one wait
    per block rather than per sample); a block whose shapes differ goes sample by sample to the
    ragged support. Shapes are metadata: checking them does not synchronise.
    """
    n = len(samples)

    def gen() -> Iterator[Any]:
        step = block_size(samples[0])
        for start in range(0, n, step):
            block = samples[start : start + step]
            first = block[0]
            if all(
                t.shape == first.shape and t.dtype == first.dtype and t.device == first.device
                for t in block
            ):
                yield (torch.stack(list(block)),)
            else:
                yield group_samples(block, first_index=start)

    return Stream(batches=gen(), batched=True, length=n)


def stream(source: Any, batched: bool | None) -> Stream | None:
    """The :class:`Stream` of a torch object, or None for one this module does not handle.

    A tensor (or a tuple of tensors) is not handled here: it is sliced like any array.
    """
    if isinstance(source, tud.DataLoader):
        return loader_stream(source, batched)
    if isinstance(source, tud.TensorDataset):
        tensors = tuple(source.tensors)
        if tensors and all(t.ndim >= 1 for t in tensors):
            return array_blocks(tensors)
    if isinstance(source, tud.IterableDataset):
        n = _len_or_none(source)
        return Stream(batches=grouped(iter(source), prepare=_flat_sample), batched=True, length=n)
    if isinstance(source, tud.Dataset):
        return dataset_stream(source)
    return None
