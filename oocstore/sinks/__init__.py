"""Sinks: a store back into training, with no loader written by hand.

* :meth:`oocstore.Store.batches` -> :class:`Batches`, NumPy batches for Keras ``fit`` or plain
  loops, shuffled by contiguous blocks or by sample, resumable (NumPy only);
* :meth:`oocstore.Store.to_torch` -> :class:`oocstore.sinks.torch.StoreDataset`, a map-style
  ``torch.utils.data.Dataset`` whose batches are read with one gather per field, and
  :meth:`oocstore.Store.loader` -> :class:`oocstore.sinks.torch.StoreLoader`, a ``DataLoader``
  over it with a resumable, shardable batch sampler (import torch);
* :meth:`oocstore.Store.to_tf` -> a ``tf.data.Dataset`` (imports TensorFlow).

Framework modules are imported only when their sink is asked for.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._batches import BLOCK_BYTES, WINDOW, Batches
from ._order import ShuffleLike

if TYPE_CHECKING:
    from ..reader import Store

__all__ = ["BLOCK_BYTES", "WINDOW", "Batches", "ShuffleLike", "batches"]


def batches(
    store: Store,
    batch_size: int,
    *,
    shuffle: ShuffleLike = False,
    seed: int | None = None,
    drop_last: bool = False,
    fields: Sequence[str] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    remainder: str = "pad",
) -> Batches:
    """A :class:`Batches` over ``store``; a Keras ``PyDataset`` too when Keras is imported.

    Keras ``fit`` accepts only its own types (arrays, ``tf.data``, ``PyDataset``, a torch
    ``DataLoader``, generators), so when Keras is already imported the object returned also
    derives from ``keras.utils.PyDataset``. Keras is never imported here.
    """
    cls: type[Batches] = Batches
    if "keras" in sys.modules:
        try:
            from .keras import KerasBatches
        except ImportError:  # a broken Keras install: plain batches still work
            pass
        else:
            cls = KerasBatches
    return cls(
        store,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        fields=fields,
        rank=rank,
        world_size=world_size,
        remainder=remainder,
    )
