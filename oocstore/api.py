"""The public entry points, above both sides: ``write``, ``open``, ``convert``, ``ingest_images``.

This is the only module that imports both the writer and the reader: each entry point writes
(or reads) with the stage below it and hands back an opened :class:`~oocstore.Store`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any, Unpack

from .convert import copy_store
from .reader import (
    Store,
    open,
)
from .sources import as_stream
from .sources._prefetch import prefetch
from .writer import PathLike, WriteKwargs, WriteOptions, Writer

__all__ = ["convert", "open", "write"]


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
    store = src if isinstance(src, Store) else open(src)
    copy_store(
        store,
        dst,
        backend=backend,
        chunks=chunks,
        compressors=compressors,
        overwrite=overwrite,
        progress=progress,
    )
    return open(dst)


def write(
    source: Any,
    path: PathLike,
    options: WriteOptions | None = None,
    /,
    *,
    workers: int | None = None,
    **changes: Unpack[WriteKwargs],
) -> Store:
    """Stream every batch of ``source`` into a store at ``path`` and open it.

    ``source`` is any iterable of batches (a generator, a list, a DataLoader...), or an array
    (or a tuple/dict of arrays) that is sliced into batches. The length is taken from
    ``length=`` or from the source when it tells; otherwise files grow as needed.

    A ``dask.array.Array`` (or a tuple/dict of them, aligned on axis 0) is written by Dask's
    own workers, each task filling its own chunk-aligned rows (see ``docs/dask.md``).

    Parameters
    ----------
    source
        Batches: an iterable (generator, list, ``DataLoader``, ``tf.data.Dataset``, Keras
        ``PyDataset``...), or a whole array, ``np.memmap`` or tuple/dict of arrays, copied in
        blocks of about 64 MB.
    path
        Where the store goes; the backend follows the suffix (``.zarr``, ``.h5``/``.hdf5``,
        anything else is npy) unless ``backend=`` names one. An fsspec URL
        (``memory://``, ``s3://``...) makes a Zarr store there.
    options
        A [`WriteOptions`][oocstore.WriteOptions]; keywords given beside it replace its
        fields.
    workers
        With ``workers=N`` (N > 1), an indexable source (``len()`` and ``source[i]`` giving
        one sample: a map-style Dataset, a list of samples) is read by N worker processes,
        each filling its own rows; the source must pickle. ``workers=1`` writes the same
        source in this process.
    **changes
        Any field of [`WriteOptions`][oocstore.WriteOptions]: ``names``, ``length``,
        ``batched``, ``backend``, ``overwrite``, ``resume``, ``memory``, ``progress``,
        ``ragged``, ``fill``, ``max_shape``, ``padding_warning``, ``casting``, ``chunks``,
        ``compressors``, ``shards``, ``commit_bytes``, ``commit_seconds``, ``attrs``,
        ``storage_options`` (each documented there).

    Returns
    -------
    Store
        The finished store, opened read-only.

    Raises
    ------
    EmptySourceError
        If the source yields nothing.
    SchemaError
        If a batch does not match the first (the store keeps what came before it, incomplete).
    StoreExistsError
        If a store exists at ``path`` and neither ``overwrite`` nor ``resume`` is set.
    TypeError
        If a keyword is not an option.
    """
    opts = (options if options is not None else WriteOptions()).with_(**changes)
    storage_options = opts.storage_options
    # Options the region writers (Dask, workers=N) do not take: refused, never ignored.
    unused = {
        "length": opts.length is not None,
        "batched": opts.batched is not None,
        "ragged": opts.ragged != "pad",
        "fill": not (isinstance(opts.fill, (int, float)) and opts.fill == 0),
        "max_shape": opts.max_shape is not None,
        "padding_warning": opts.padding_warning != 4.0,
    }
    if "dask" in sys.modules:  # a Dask array can only exist once dask is imported
        from .sources.dask import is_dask_source  # dask is imported: cheap

        if is_dask_source(source):
            if workers is not None:
                msg = "workers= is for indexable sources; Dask's scheduler runs a Dask array"
                raise ValueError(msg)
            _refuse_options(unused, "a Dask array (its chunks give the length and shapes)")
            from .sources.dask import write_dask

            write_dask(source, path, opts)
            return open(path, storage_options=storage_options)
    if workers is not None and workers != 1:
        _refuse_options(unused, f"workers={workers} (len(source) gives the length)")
        from ._parallel import write_indexable  # process pools: imported when asked for

        write_indexable(source, path, opts, workers=workers)
        return open(path, storage_options=storage_options)
    stream = as_stream(source, batched=False if workers == 1 else opts.batched)
    # workers=1 means an indexable source of samples, whatever N is
    length = opts.length if opts.length is not None else stream.length
    writer = Writer(path, opts.with_(length=length, batched=stream.batched))
    writer.n_batches_hint = stream.n_batches if opts.length is None else None
    # The source makes its next batches while the writer writes this one (a bounded queue).
    batches = prefetch(stream.batches, max_bytes=writer.budget // 8)
    try:
        with writer:
            writer.extend(batches)
    finally:
        batches.close()
    return open(path, storage_options=storage_options)


def _refuse_options(given: Mapping[str, bool], what: str) -> None:
    """Raise ValueError naming the options that ``what`` cannot honour, if any was given."""
    names = [name for name, on in given.items() if on]
    if names:
        msg = (
            f"{', '.join(f'{n}=' for n in names)} cannot be used when writing {what}: "
            "parallel writers fill dense fields of the source's own shape"
        )
        raise ValueError(msg)
