"""The Keras face of :class:`~oocstore.sinks.Batches`: the same batches, as a ``PyDataset``.

Imported by :func:`oocstore.sinks.batches` only when Keras is already imported.
"""

from __future__ import annotations

from typing import Any

import keras

from ._batches import Batches

__all__ = ["KerasBatches"]


class KerasBatches(Batches, keras.utils.PyDataset):  # type: ignore[misc]  # Keras is untyped
    """Store batches that ``keras.Model.fit`` accepts; see :class:`~oocstore.sinks.Batches`.

    Keras calls ``batches[i]`` for ``i`` in ``range(len(batches))`` (in a random order when
    ``fit(shuffle=True)``, its default) and ``on_epoch_end()`` after each epoch. With
    ``store.batches(shuffle=True)`` pass ``fit(shuffle=False)``: oocstore already shuffles, and
    keeping Keras's order keeps the reads contiguous.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        Batches.__init__(self, *args, **kwargs)
        keras.utils.PyDataset.__init__(self)  # workers=1: reads are sequential either way
