"""Checksums of committed spans: the writer hashes rows as they are appended, ``verify`` rehashes.

CRC-32C, because its implementation releases the GIL: the writer hashes a large batch in a
helper thread while the main thread writes the same batch, so checksums cost next to no time
(xxh3 is a little faster on one core but holds the GIL; figures in docs/benchmarks.md).
"""

from __future__ import annotations

import atexit
import math
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import crc32c
import numpy as np

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .manifest import Manifest

__all__ = [
    "ALGORITHM",
    "Damage",
    "MAX_SPANS",
    "SpanHasher",
    "coalesce",
    "crc32c_combine",
    "hash_rows",
    "span_shape",
    "valid_span",
    "verify_spans",
]

ALGORITHM = "crc32c"
_BLOCK_BYTES = 32 * 2**20
_THREAD_BYTES = 1 * 2**20  # below this, hashing inline is cheaper than a thread hand-off
_pool: ThreadPoolExecutor | None = None
_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected
MAX_SPANS = 512
"""Spans kept per array: past this, neighbours merge (their CRCs combined, no rehashing), so
the manifest rewritten at every commit stays small however long the writer runs, and
``verify`` still names a damaged range of at most ~1/256 of the array."""


def _bytes_of(values: np.ndarray) -> np.ndarray:
    # A flat uint8 view: hashing sees the bytes as stored, whatever the dtype.
    return np.ascontiguousarray(values).reshape(-1).view(np.uint8)


def _hash_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(1, thread_name_prefix="oocstore-hash")
        atexit.register(_pool.shutdown, wait=False)
    return _pool


class SpanHasher:
    """A running CRC-32C of the rows appended to one array since its last commit."""

    def __init__(self, start: int) -> None:
        self.start = start
        self._crc = 0
        self._pending: Future[None] | None = None

    def _update(self, data: np.ndarray) -> None:
        self._crc = crc32c.crc32c(data.data, self._crc)

    def update(self, values: np.ndarray) -> None:
        """Hash ``values`` (the rows appended next); large ones in the helper thread.

        Call :meth:`wait` before ``values`` may change: the caller's batch is hashed as is.
        """
        self.wait()
        if values.size == 0:
            return
        data = _bytes_of(values)
        if data.nbytes >= _THREAD_BYTES:
            self._pending = _hash_pool().submit(self._update, data)
        else:
            self._update(data)

    def wait(self) -> None:
        """Wait until every update so far is hashed."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def take(self, stop: int) -> list[Any] | None:
        """The span ``[start, stop, hexdigest]`` so far, then start a new span at ``stop``."""
        self.wait()
        if stop <= self.start:
            return None
        span = [self.start, stop, f"{self._crc:08x}"]
        self.start = stop
        self._crc = 0
        return span


def hash_rows(array: Any, start: int, stop: int, shape: Sequence[int] | None = None) -> str:
    """Hash rows ``[start, stop)`` of an array-like, reading it in blocks of ~32 MB.

    With ``shape``, each row is cut to it first: a padded field whose rows grew after the
    span was hashed (the growth only added padding past ``shape``).
    """
    crc = 0
    row_nbytes = max(int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize, 1)
    step = max(_BLOCK_BYTES // row_nbytes, 1)
    cut = None if shape is None else (slice(None), *(slice(0, int(d)) for d in shape))
    for lo in range(start, stop, step):
        block = np.asarray(array[lo : min(lo + step, stop)])
        if cut is not None:
            block = block[cut]
        if block.size:
            crc = crc32c.crc32c(_bytes_of(block).data, crc)
    return f"{crc:08x}"


def span_shape(span: Sequence[Any], shape: Sequence[int]) -> tuple[int, ...]:
    """The row shape span ``span`` was hashed at: its fourth entry, else the array's ``shape``."""
    return tuple(span[3]) if len(span) > 3 else tuple(shape)


def valid_span(span: Any, length: int, shape: Sequence[int]) -> bool:
    """Is ``span`` a well-formed ``[start, stop, crc]`` (or ``[start, stop, crc, row shape]``,
    hashed before a padded field's rows grew) of an array of ``length`` rows of ``shape``?"""
    if not (
        isinstance(span, list)
        and len(span) in (3, 4)
        and all(type(v) is int for v in span[:2])
        and 0 <= span[0] < span[1] <= length
        and isinstance(span[2], str)
    ):
        return False
    if len(span) == 3:
        return True
    rows = span[3]
    return (
        isinstance(rows, list)
        and len(rows) == len(shape)
        and all(type(d) is int and 0 <= d <= m for d, m in zip(rows, shape, strict=True))
    )


def _gf2_times(mat: list[int], vec: int) -> int:
    out = 0
    i = 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32C of ``a + b`` from ``crc(a)``, ``crc(b)`` and ``len(b)`` in bytes.

    zlib's ``crc32_combine`` with the Castagnoli polynomial: appending ``len2`` zero bytes to
    ``a`` is a linear map on its CRC, applied by squaring a 32x32 GF(2) matrix (O(log len2)).
    """
    if len2 <= 0:
        return crc1
    odd = [_POLY] + [1 << n for n in range(31)]  # one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:
        even = _gf2_square(odd)
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def coalesce(
    spans: list[Any], itemsize: int, shape: Sequence[int], limit: int = MAX_SPANS
) -> list[Any]:
    """Merge neighbouring spans pairwise while there are more than ``limit`` of them.

    Two spans merge only when one ends where the next starts and both were hashed at the
    same row shape (of ``itemsize``-byte items; ``shape`` unless the span says otherwise);
    the merged CRC is combined from theirs, so nothing is read again. Each merge halves the
    count, so over a long run every span takes part in O(log n) merges.
    """
    while len(spans) > limit:
        merged: list[Any] = []
        i = 0
        while i < len(spans):
            a = spans[i]
            b = spans[i + 1] if i + 1 < len(spans) else None
            if b is not None and a[1] == b[0] and a[3:] == b[3:]:
                row_nbytes = math.prod(span_shape(b, shape)) * itemsize
                crc = crc32c_combine(int(a[2], 16), int(b[2], 16), (b[1] - b[0]) * row_nbytes)
                merged.append([a[0], b[1], f"{crc:08x}", *a[3:]])
                i += 2
            else:
                merged.append(a)
                i += 1
        if len(merged) == len(spans):
            break  # nothing adjacent left to merge
        spans = merged
    return spans


@dataclass(frozen=True)
class Damage:
    """A committed span whose bytes no longer match the checksum the writer recorded."""

    field: str
    """The field the damaged array belongs to."""
    array: str
    """The physical array (file) that is damaged, e.g. ``images`` or ``img.shapes``."""
    start: int
    """First damaged row (of the span whose checksum failed)."""
    stop: int
    """One past the last row of that span."""
    message: str
    """What was found."""

    def __str__(self) -> str:
        return f"field {self.field!r} ({self.array}) rows {self.start}-{self.stop}: {self.message}"


def verify_spans(manifest: Manifest, arrays: Mapping[str, Any]) -> list[Damage]:
    """Rehash every span ``manifest`` records over ``arrays`` (its committed rows); the
    damaged ones, or one entry saying why nothing could be checked."""
    length = manifest.length
    record = manifest.extra.get("checksums")
    if not isinstance(record, dict) or not isinstance(record.get("spans"), dict):
        return [Damage("*", "*", 0, length, "the store records no checksums")]
    if record.get("algorithm") != ALGORITHM:
        msg = f"unknown checksum algorithm {record.get('algorithm')!r:.40}"
        return [Damage("*", "*", 0, length, msg)]
    problems = []
    for name, spec in manifest.arrays.items():
        field = name.split(".", 1)[0]
        spans = record["spans"].get(name, [])
        for span in spans if isinstance(spans, list) else [None]:
            if span is None or not valid_span(span, spec.length, spec.shape):
                problems.append(Damage(field, name, 0, spec.length, f"bad span {span!r:.60}"))
                continue
            start, stop, expected = span[:3]
            shape = span[3] if len(span) > 3 else None
            actual = hash_rows(arrays[name], start, stop, shape)
            if actual != expected:
                msg = f"checksum {actual} != recorded {expected}"
                problems.append(Damage(field, name, start, stop, msg))
    return problems
