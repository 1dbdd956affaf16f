"""The writer, along its seams: ``core`` (the :class:`Writer`: appending, commits, closing),
``setup`` (where it starts), ``fields`` (each field's layout), ``staging`` (rows on their way to
the backend) and ``regions`` (rows written by other processes)."""

from __future__ import annotations

from .core import Writer
from .options import PathLike, RaggedMode, ShapeLike

__all__ = ["PathLike", "RaggedMode", "ShapeLike", "Writer"]
