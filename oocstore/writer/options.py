"""What a writer accepts: the options of ``write()`` and ``Writer``, declared once.

:class:`WriteOptions` holds every option with its default, its meaning and its check;
``oocstore.write`` and ``Writer`` both take them as keywords (typed by :class:`WriteKwargs`)
or as one ``WriteOptions`` object, so no option is declared, defaulted or forwarded twice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, TypedDict

import numpy as np

from ..schema import Casting
from ..sizing import MemoryLike

__all__ = ["PathLike", "RaggedMode", "ShapeLike", "WriteKwargs", "WriteOptions"]

RaggedMode = Literal["pad", "pack", "error"]
"""How samples of varying trailing shape are stored: padded, packed end to end, or refused."""
PathLike = str | os.PathLike[str]
"""Where a store goes: a path (or, for Zarr, an fsspec URL)."""
ShapeLike = Sequence[int]
"""A per-sample shape, e.g. ``(256, 256, 3)``."""

_CASTINGS = ("no", "equiv", "safe", "same_kind", "unsafe")


@dataclass(frozen=True, kw_only=True)
class WriteOptions:
    """Every option of [`write`][oocstore.write] and [`Writer`][oocstore.Writer].

    Pass them as keywords (``oocstore.write(src, path, chunks=64)``) or as one object
    (``opts = WriteOptions(chunks=64); oocstore.write(src, path, opts)``); keywords given
    beside an object replace its fields. Values are checked when the object is made.
    """

    names: Sequence[str] | None = None
    """Field names for array or tuple batches (default ``"0"``, ``"1"``, ...)."""
    length: int | None = None
    """Expected number of samples: files are preallocated for it (and grow if it is
    exceeded). ``write`` takes it from the source when the source tells."""
    backend: str | None = None
    """``"npy"``, ``"zarr"`` or ``"hdf5"``; default: from the path's suffix (``.zarr``,
    ``.h5``/``.hdf5``, anything else is npy)."""
    batched: bool | None = None
    """True: each item is a batch (axis 0 = samples). False: each item is one sample. None:
    ``write`` lets the source decide (framework sources say which they hold, any other
    iterable holds batches); a ``Writer`` appends batches."""
    overwrite: bool = False
    """Replace an existing store at the path."""
    resume: bool = False
    """Continue the store at the path from its last commit (the samples it holds are skipped
    from the source)."""
    memory: MemoryLike = None
    """Memory budget for buffers (bytes or ``"512MB"``); default: a share of what is free."""
    progress: bool | None = None
    """Show a progress bar; None: when stderr is a terminal (``write``), never (``Writer``)."""
    ragged: RaggedMode = "pad"
    """``"pad"`` (default): samples of varying trailing shape are padded to the max shape and
    their true shapes kept (on Zarr the padded array grows in place; elsewhere it is laid out
    at close); ``"pack"``: stored end to end with offsets; ``"error"``: refuse."""
    fill: Any = 0
    """Pad value, or a dict of them per field."""
    max_shape: Mapping[str, ShapeLike] | ShapeLike | None = None
    """Per field (a dict), the padded shape to preallocate when it is known up front."""
    padding_warning: float | None = 4.0
    """Warn (``PaddingWarning``, once per field) when padding a ragged field makes it more
    than this many times the size of its samples' values; None never warns."""
    casting: Casting = "safe"
    """How far a later batch may be cast to the schema's dtype (NumPy casting rules)."""
    chunks: Mapping[str, int] | int | None = None
    """Chunked backends (Zarr, HDF5): rows per chunk, an int or a dict per field."""
    compressors: Any = None
    """Zarr's compressors (None: uncompressed; ``"auto"``: zarr's default zstd)."""
    shards: Mapping[str, int | bool] | int | bool | None = None
    """Zarr: rows per shard (True picks ~128 MiB shards), for datasets that would otherwise
    make millions of chunk files."""
    commit_bytes: int | None = None
    """Commit after this many bytes since the last commit (default: from the budget)."""
    commit_seconds: float = 30.0
    """Commit after this many seconds since the last commit."""
    attrs: Mapping[str, Any] | None = None
    """JSON-serialisable user metadata kept in the manifest."""
    storage_options: Mapping[str, Any] | None = None
    """For a store at an fsspec URL (``memory://``, ``s3://``...; always Zarr): passed to the
    fsspec filesystem. Such a store has no single-writer lock and no fsync (``docs/dask.md``)."""

    def __post_init__(self) -> None:
        if self.ragged not in ("pad", "pack", "error"):
            msg = f"ragged must be 'pad', 'pack' or 'error', not {self.ragged!r}"
            raise ValueError(msg)
        if self.casting not in _CASTINGS:
            msg = f"casting must be one of {', '.join(_CASTINGS)}; not {self.casting!r}"
            raise ValueError(msg)
        length = self.length
        if length is not None and (
            isinstance(length, bool) or not isinstance(length, int | np.integer) or length < 0
        ):
            msg = f"length must be a non-negative integer, not {length!r}"
            raise ValueError(msg)
        warn = self.padding_warning
        if warn is not None and not warn > 0:
            msg = f"padding_warning must be a positive ratio or None, not {warn!r}"
            raise ValueError(msg)

    def with_(self, **changes: Any) -> WriteOptions:
        """A copy with ``changes``; TypeError naming any keyword that is not an option."""
        unknown = sorted(set(changes) - _NAMES)
        if unknown:
            msg = (
                f"unknown write option{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}; the options are {', '.join(sorted(_NAMES))}"
            )
            raise TypeError(msg)
        return replace(self, **changes) if changes else self


_NAMES = frozenset(f.name for f in fields(WriteOptions))


class WriteKwargs(TypedDict, total=False):
    """The keywords of :class:`WriteOptions`, for type checkers (``**options`` of ``write``
    and ``Writer``); ``tests/test_write_options.py`` proves they match its fields."""

    names: Sequence[str] | None
    length: int | None
    backend: str | None
    batched: bool | None
    overwrite: bool
    resume: bool
    memory: MemoryLike
    progress: bool | None
    ragged: RaggedMode
    fill: Any
    max_shape: Mapping[str, ShapeLike] | ShapeLike | None
    padding_warning: float | None
    casting: Casting
    chunks: Mapping[str, int] | int | None
    compressors: Any
    shards: Mapping[str, int | bool] | int | bool | None
    commit_bytes: int | None
    commit_seconds: float
    attrs: Mapping[str, Any] | None
    storage_options: Mapping[str, Any] | None
