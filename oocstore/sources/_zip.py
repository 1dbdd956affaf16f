"""Zip parallel batch streams (features from one generator, labels from another) into one.

Two streams that drift apart give a store whose rows pair the wrong features and labels, and
nothing downstream can tell. :class:`ZippedStreams` checks every batch: the streams must yield
the same number of samples per batch and end together.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..errors import BatchError

__all__ = ["ZippedStreams", "zip_streams"]


def _batch_size(value: Any, stream: str, index: int) -> int:
    shape = getattr(value, "shape", None)
    if shape is not None and len(shape) >= 1:
        return int(shape[0])
    if isinstance(value, list | tuple):
        return len(value)
    raise BatchError(
        "a zipped stream's batch needs a sample axis (axis 0)",
        field=stream,
        batch_index=index,
        expected="an array, a tensor or a list of samples",
        actual=f"{type(value).__name__} of shape {shape}" if shape is not None else type(value),
        hint="each stream yields the batches of one field; zip tuples or dicts yourself",
    )


class ZippedStreams:
    """Batches taken one from each stream, checked to hold the same number of samples.

    Iterating starts every input again, so zipped lists, DataLoaders or datasets can be
    iterated more than once (generators, once). ``len()`` is the number of batches when every
    input has one.
    """

    def __init__(self, iterables: Sequence[Iterable[Any]], names: Sequence[str] | None) -> None:
        if not iterables:
            msg = "zip_streams needs at least one stream"
            raise ValueError(msg)
        if names is not None and len(names) != len(iterables):
            msg = f"zip_streams got {len(iterables)} streams but {len(names)} names"
            raise ValueError(msg)
        self.iterables = tuple(iterables)
        self.names = tuple(str(n) for n in names) if names is not None else None
        self._labels = self.names or tuple(str(i) for i in range(len(iterables)))
        lengths = self._lengths()
        if lengths is not None and len(set(lengths.values())) > 1:
            raise BatchError(
                "the zipped streams have different numbers of batches",
                expected="the same len() for every stream",
                actual=lengths,
            )

    def _lengths(self) -> dict[str, int] | None:
        lengths = {}
        for label, it in zip(self._labels, self.iterables, strict=True):
            try:
                lengths[label] = len(it)  # type: ignore[arg-type]
            except TypeError:
                return None
        return lengths

    def __len__(self) -> int:
        lengths = self._lengths()
        if lengths is None:
            msg = "a zipped stream has no len()"
            raise TypeError(msg)
        return next(iter(lengths.values()))

    def __iter__(self) -> Iterator[Any]:
        iterators = [iter(it) for it in self.iterables]
        index = 0
        while True:
            parts: list[Any] = []
            ended: list[str] = []
            for label, it in zip(self._labels, iterators, strict=True):
                try:
                    parts.append(next(it))
                except StopIteration:
                    ended.append(label)
            if len(ended) == len(iterators):
                return
            if ended:
                going = [lb for lb in self._labels if lb not in ended]
                what = f"stream(s) {ended} ended after {index} batches while {going} went on"
                raise BatchError(
                    what,
                    batch_index=index,
                    expected="every stream to yield the same number of batches",
                    actual=f"{index} batches from {ended}, more from {going}",
                )
            sizes = {
                lb: _batch_size(p, lb, index) for lb, p in zip(self._labels, parts, strict=True)
            }
            if len(set(sizes.values())) > 1:
                raise BatchError(
                    "the zipped streams are out of step: their batches hold different "
                    "numbers of samples",
                    batch_index=index,
                    expected="the same number of samples from every stream",
                    actual=sizes,
                )
            index += 1
            yield dict(zip(self.names, parts, strict=True)) if self.names else tuple(parts)

    def __repr__(self) -> str:
        return f"<oocstore.ZippedStreams of {list(self._labels)}>"


def zip_streams(*iterables: Iterable[Any], names: Sequence[str] | None = None) -> ZippedStreams:
    """Zip parallel streams of batches into one stream of multi-field batches, kept aligned.

    Each stream yields the batches of one field (an array, a tensor, or a list of samples);
    batch ``i`` of the result holds batch ``i`` of every stream, as a tuple, or as a dict
    keyed by ``names``. ``oocstore.write(zip_streams(feats(), labels(), names=("x", "y")),
    path)`` stores fields ``x`` and ``y``.

    Parameters
    ----------
    *iterables
        The streams, one per field.
    names
        Field names, one per stream (default: the batches are tuples, fields ``"0"``, ``"1"``).

    Returns
    -------
    ZippedStreams
        An iterable of the zipped batches, with ``len()`` when every stream has one.

    Raises
    ------
    BatchError
        At construction, if the streams' ``len()`` differ; while iterating, at the first batch
        whose sizes differ between streams or where one stream ends before the others (the
        message names the batch index and the sizes).
    """
    return ZippedStreams(iterables, names)
