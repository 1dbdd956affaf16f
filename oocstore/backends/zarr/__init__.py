"""The Zarr v3 backend, along its seams: ``spec`` (what ``zarr.json`` says, sizing, layouts),
``codecs`` (chunk bytes in and out), ``view`` (readers), ``files`` (what belongs to a store:
leftovers, the attic), ``region`` (writers of other processes) and ``backend`` (the
:class:`ZarrBackend` that joins them)."""

from __future__ import annotations

from .backend import ZarrBackend
from .region import ZarrRegionWriter
from .spec import (
    ATTRIBUTE,
    CHUNK_BYTES,
    DEFAULT_COMPRESSORS,
    SHARD_BYTES,
    chunk_rows_for,
    shard_rows_for,
)
from .view import ZarrArray

__all__ = [
    "ATTRIBUTE",
    "CHUNK_BYTES",
    "DEFAULT_COMPRESSORS",
    "SHARD_BYTES",
    "ZarrArray",
    "ZarrBackend",
    "ZarrRegionWriter",
    "chunk_rows_for",
    "shard_rows_for",
]
