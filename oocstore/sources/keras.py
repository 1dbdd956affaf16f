"""Keras sources: a ``keras.utils.PyDataset`` (``Sequence`` in Keras 3 is the same class).

Imported only when :func:`oocstore.sources.as_stream` meets an object of a ``keras`` (or
``tf_keras``) class; nothing here imports Keras, the protocol is enough: ``len(ds)`` batches,
``ds[i]`` the batch ``i``. Batches are Keras structures -- ``x``, ``(x, y)`` or
``(x, y, sample_weight)``, where ``x`` may itself be a tuple, list or dict of inputs -- and
nested ones are flattened into field names joined with ``_`` (``((x1, x2), y)`` gives fields
``0_0``, ``0_1`` and ``1``); a flat ``(x, y)`` keeps two fields, so ``names=`` applies.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ._stream import Stream
from ._structure import flatten

__all__ = ["stream"]


def stream(source: Any, batched: bool | None) -> Stream | None:
    """The batches of a PyDataset/Sequence, ``len()`` of them; None for other Keras objects.

    Raises
    ------
    ValueError
        If the PyDataset is infinite (``num_batches`` is None).
    """
    if not hasattr(source, "__getitem__"):
        return None
    try:
        count = source.num_batches if hasattr(type(source), "num_batches") else len(source)
    except (NotImplementedError, TypeError):  # neither num_batches nor __len__
        return None
    if count is None:
        msg = (
            f"the {type(source).__name__} is infinite (num_batches is None), so writing it "
            "would never end; give it a length, or write a generator that stops"
        )
        raise ValueError(msg)
    n = int(count)

    def gen() -> Iterator[Any]:
        # Index explicitly: iter() on a PyDataset would go on past len() for some subclasses.
        for i in range(n):
            yield flatten(source[i], sequences=True, batch_index=i)

    if batched is not False:
        return Stream(batches=gen(), batched=True, n_batches=n)
    return Stream(batches=gen(), batched=False, length=n)
