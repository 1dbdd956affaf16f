"""The writer, along its seams: ``core`` (the :class:`Writer`: appending, commits, closing),
``setup`` (where it starts), ``fields`` (each field's layout), ``staging`` (rows on their way to
the backend), ``regions`` (rows written by other processes) and ``options`` (what it accepts,
declared once)."""

from __future__ import annotations

from .core import Writer
from .options import PathLike, RaggedMode, ShapeLike, WriteKwargs, WriteOptions

__all__ = [
    "PathLike",
    "RaggedMode",
    "ShapeLike",
    "WriteKwargs",
    "WriteOptions",
    "Writer",
]
