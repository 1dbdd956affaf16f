"""Write and read ``.npy`` headers padded to one page, so the data starts page-aligned.

The header is rewritten in place at every commit (it always fits the same page), which keeps
each field a valid ``.npy`` file that ``np.load(f, mmap_mode="r")`` opens without oocstore.
Reading never trusts the header: every failure is a :class:`CorruptStoreError`.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from .errors import CorruptStoreError

__all__ = ["DATA_OFFSET", "build_header", "parse_header"]

DATA_OFFSET = 4096
"""Bytes before the data: one page, so the data is page-aligned for memory mapping."""

MAGIC = b"\x93NUMPY"


def build_header(dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes:
    """A ``.npy`` header for a C-ordered array, padded with spaces to :data:`DATA_OFFSET`."""
    text = (
        f"{{'descr': {np.lib.format.dtype_to_descr(dtype)!r}, 'fortran_order': False, "
        f"'shape': {tuple(int(d) for d in shape)!r}, }}"
    )
    try:
        body = text.encode("latin1")
        prefix = MAGIC + bytes([1, 0])
        size_bytes = 2
    except UnicodeEncodeError:  # structured dtypes with non-latin1 names need format 3.0
        body = text.encode("utf8")
        prefix = MAGIC + bytes([3, 0])
        size_bytes = 4
    head_len = DATA_OFFSET - len(prefix) - size_bytes
    if len(body) + 1 > head_len:
        msg = f"the .npy header for dtype {dtype} does not fit in {DATA_OFFSET} bytes"
        raise ValueError(msg)
    body = body + b" " * (head_len - len(body) - 1) + b"\n"
    return prefix + head_len.to_bytes(size_bytes, "little") + body


def parse_header(head: bytes, path: str) -> tuple[np.dtype[Any], tuple[int, ...], int]:
    """Parse a ``.npy`` header: ``(dtype, shape, data_offset)``; CorruptStoreError if bad."""
    if len(head) < 10 or not head.startswith(MAGIC):
        raise CorruptStoreError(path, "not a .npy file (bad magic bytes)")
    major = head[6]
    if major not in (1, 2, 3):
        raise CorruptStoreError(path, f"unsupported .npy format version {major}")
    f = io.BytesIO(head)
    f.seek(8)
    try:
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except Exception as err:  # numpy raises ValueError, OverflowError, TypeError, SyntaxError...
        raise CorruptStoreError(path, f"unreadable .npy header ({err})") from None
    if fortran:
        raise CorruptStoreError(path, ".npy header says Fortran order; oocstore writes C order")
    if dtype.hasobject:
        raise CorruptStoreError(path, ".npy header declares an object dtype (never loaded)")
    if not all(type(d) is int and d >= 0 for d in shape):
        raise CorruptStoreError(path, f".npy header has a bad shape {shape!r}")
    return dtype, tuple(shape), f.tell()
