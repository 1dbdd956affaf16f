"""Telling fsspec URLs (``memory://x``, ``s3://bucket/x``) from local paths, importing nothing."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["is_url"]

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+://")


def is_url(path: Any) -> bool:
    """True for a string like ``memory://x`` or ``s3://bucket/x`` (a scheme of 2+ letters)."""
    return isinstance(path, str) and _URL.match(path) is not None
