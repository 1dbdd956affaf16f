"""The names of what a writer accepts: the input unions its options take."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

__all__ = ["PathLike", "RaggedMode", "ShapeLike"]

RaggedMode = Literal["pad", "pack", "error"]
"""How samples of varying trailing shape are stored: padded, packed end to end, or refused."""
PathLike = str | os.PathLike[str]
"""Where a store goes: a path (or, for Zarr, an fsspec URL)."""
ShapeLike = Sequence[int]
"""A per-sample shape, e.g. ``(256, 256, 3)``."""
