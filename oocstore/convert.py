"""Streaming copies into a new store with bounded memory: a store to another path or backend,
and a packed ragged field to a padded one.

These write with the :class:`~oocstore.Writer` and take the arrays they copy from the caller
(``oocstore.convert`` and ``PackedArray.to_padded`` open the result).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .sizing import BLOCK_BYTES
from .writer import Writer

if TYPE_CHECKING:
    from .reader import PackedArray, Store

__all__ = ["copy_store", "pad_packed"]


def copy_store(
    store: Store,
    dst: str | os.PathLike[str],
    *,
    backend: str | None = None,
    chunks: Any = None,
    compressors: Any = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> None:
    """Write every field of ``store`` to a new store at ``dst``, layouts and attrs kept."""
    manifest = store.manifest
    packed = [f for f in store.fields if manifest.layout(f).kind == "packed"]
    padded = {f: store.schema[f].shape for f in store.fields if manifest.layout(f).kind == "padded"}
    fill = {f: manifest.layout(f).fill for f in store.fields}
    writer = Writer(
        dst,
        names=store.fields,
        length=len(store),
        backend=backend,
        overwrite=overwrite,
        progress=progress,
        ragged="pack" if packed else "pad",
        fill=fill,
        max_shape=padded,
        chunks=chunks,
        compressors=compressors,
        attrs=store.attrs,
    )
    step = max(BLOCK_BYTES // max(store.schema.sample_nbytes, 1), 1)
    with writer:
        for start in range(0, len(store), step):
            stop = min(start + step, len(store))
            writer.append(tuple(_block(store, f, start, stop) for f in store.fields))


def pad_packed(
    packed: PackedArray,
    path: str | os.PathLike[str],
    bound: Sequence[int],
    *,
    fill: Any = 0,
    name: str = "0",
    **write_options: Any,
) -> None:
    """Stream the samples of ``packed`` into a new store at ``path``, padded to ``bound``
    (field ``name``, true shapes kept), in one pass with bounded memory."""
    step = max(BLOCK_BYTES // max(math.prod(bound) * packed.dtype.itemsize, 1), 1)
    blocks = ({name: packed[i : i + step]} for i in range(0, len(packed), step))
    with Writer(
        path,
        length=len(packed),
        max_shape={name: tuple(bound)},
        fill=fill,
        **write_options,
    ) as writer:
        writer.extend(blocks)


def _block(store: Store, field: str, start: int, stop: int) -> Any:
    kind = store.manifest.layout(field).kind
    if kind == "dense":
        return np.asarray(store[field][start:stop])
    if kind == "packed":
        return store[field][start:stop]
    return [store.sample(field, i) for i in range(start, stop)]
