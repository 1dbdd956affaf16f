"""Copy a store to another path or backend in one streaming pass with bounded memory."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .reader import PackedArray, Store
from .reader import open as open_store
from .writer import Writer

__all__ = ["convert"]

_BLOCK_BYTES = 64 * 2**20


def convert(
    src: str | os.PathLike[str] | Store,
    dst: str | os.PathLike[str],
    *,
    backend: str | None = None,
    chunks: Any = None,
    compressors: Any = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Store:
    """Copy the store ``src`` to ``dst`` (the backend follows ``dst``'s suffix or ``backend=``).

    Fields keep their names, dtypes, ragged layouts (padded fields stay padded with the same
    fill, packed stay packed), true shapes and the store's attrs. Reads and writes go in
    blocks of about 64 MB, so memory stays bounded whatever the store's size.

    Returns
    -------
    Store
        The new store, opened read-only.
    """
    store = src if isinstance(src, Store) else open_store(src)
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
    step = max(_BLOCK_BYTES // max(store.schema.sample_nbytes, 1), 1)
    with writer:
        for start in range(0, len(store), step):
            stop = min(start + step, len(store))
            writer.append(tuple(_block(store, f, start, stop) for f in store.fields))
    return open_store(dst)


def _block(store: Store, field: str, start: int, stop: int) -> Any:
    kind = store.manifest.layout(field).kind
    if kind == "dense":
        return np.asarray(store[field][start:stop])
    if kind == "packed":
        packed: PackedArray = store[field]
        return packed[start:stop]
    return [store.sample(field, i) for i in range(start, stop)]
