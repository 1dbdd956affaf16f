"""Where an array's committed rows lie in the file: extents, runs of them, and their checks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...errors import (
    CorruptStoreError,
)
from ...manifest import ArraySpec, Manifest

MAX_EXTENTS = 16_384  # each is one mapping for readers; real stores have a few dozen
_LAYOUT_VERSION = 1


# -- extents ----------------------------------------------------------------------------------
#
# An *extent* is ``[first row, rows, file offset]``: rows that lie end to end in the file. A *run*
# is ``[first row, rows, file offset, count, stride]``: ``count`` extents of ``rows`` rows each,
# the k-th at row ``first + k * rows`` and file offset ``offset + k * stride``. HDF5 does not
# place small chunks end to end: it puts its chunk index's B-tree nodes between them (measured,
# HDF5 2.0.0, 128-byte chunks: 57 chunks, a 2,624-byte node, 57 chunks..., 9,198 extents for
# 4M rows of 16 bytes, a 558 KB record); as runs, the same rows take 164 entries.
# The record lists runs, a run of one extent written as the extent itself (what records
# written before runs hold); the writer and readers keep runs and never expand them.

Run = list[int]
"""``[first row, rows, file offset, count, stride]``."""


def _append_extent(runs: list[Run], first: int, rows: int, offset: int, row_nbytes: int) -> None:
    """Append an extent to ``runs``: one more of the last run's when it continues that run."""
    if runs:
        f, r, o, n, s = runs[-1]
        if r == rows and f + n * r == first:
            if n == 1 and offset - o >= r * row_nbytes:
                runs[-1][3:] = [2, offset - o]
                return
            if n > 1 and offset - (o + (n - 1) * s) == s:
                runs[-1][3] = n + 1
                return
    runs.append([first, rows, offset, 1, 0])


def _encode_runs(extents: Sequence[Sequence[int]], row_nbytes: int) -> list[Run]:
    """Runs holding ``extents`` (in row order) exactly: decoding gives them back."""
    runs: list[Run] = []
    for first, rows, offset in extents:
        _append_extent(runs, first, rows, offset, row_nbytes)
    return runs


def _decode_runs(runs: Sequence[Run]) -> Iterator[tuple[int, int, int]]:
    """The extents of ``runs``, one by one (tests and small arrays; readers never expand)."""
    for f, r, o, n, s in runs:
        for k in range(n):
            yield f + k * r, r, o + k * s


def _runs_json(runs: Sequence[Run]) -> list[list[int]]:
    """Runs as the record lists them: a run of one extent as ``[first, rows, offset]``."""
    return [run[:3] if run[3] == 1 else list(run) for run in runs]


def _first_row(run: Run) -> int:
    return run[0]


def _cut_runs(runs: Sequence[Run], stop: int) -> list[Run]:
    """``runs`` without the rows from ``stop`` on."""
    out: list[Run] = []
    for f, r, o, n, s in runs:
        if f >= stop:
            break
        whole, rest = divmod(min(n * r, stop - f), r)
        if whole:
            out.append([f, r, o, whole, s if whole > 1 else 0])
        if rest:
            out.append([f + whole * r, rest, o + whole * s, 1, 0])
    return out


def _runs_end(runs: Sequence[Run]) -> int:
    """The row after the last one ``runs`` cover."""
    return runs[-1][0] + runs[-1][1] * runs[-1][3] if runs else 0


@dataclass
class _Layout:
    """Where one array's rows are: validated ``extra["hdf5"]["arrays"][name]``."""

    layout: str  # "contiguous", "chunked" or "empty" (rows of zero bytes)
    rows: int  # rows with storage (the dataset's length in HDF5)
    chunk_rows: int = 0
    runs: list[Run] = field(default_factory=list)  # in row order


def _int(value: Any, what: str, where: str, low: int = 0, high: int = 2**62) -> int:
    if type(value) is not int or not low <= value <= high:
        raise CorruptStoreError(where, f"{what} must be an integer in [{low}, {high}]")
    return value


def _check_layouts(
    manifest: Manifest, info: Any, size: int, userblock: int, where: str
) -> dict[str, _Layout]:
    """Validate the record's extents against the manifest and the file's size."""
    if not isinstance(info, dict) or not isinstance(info.get("arrays"), dict):
        raise CorruptStoreError(where, "the commit record has no array extents")
    raw = info["arrays"]
    out: dict[str, _Layout] = {}
    for name, spec in manifest.arrays.items():
        entry = raw.get(name)
        if not isinstance(entry, dict):
            raise CorruptStoreError(where, f"the commit record has no extents for {name!r}")
        kind = entry.get("layout")
        if kind not in ("contiguous", "chunked", "empty"):
            raise CorruptStoreError(where, f"array {name!r}: bad layout {kind!r:.40}")
        rows = _int(entry.get("rows"), f"rows of {name!r}", where)
        chunk_rows = _int(entry.get("chunk_rows", 0), f"chunk rows of {name!r}", where)
        if kind == "chunked" and chunk_rows < 1:
            raise CorruptStoreError(where, f"array {name!r}: chunked without chunk rows")
        extents = entry.get("extents")
        if not isinstance(extents, list) or len(extents) > MAX_EXTENTS:
            raise CorruptStoreError(where, f"array {name!r}: bad extents")
        if kind == "empty" and spec.row_nbytes:
            msg = f"array {name!r}: rows of {spec.row_nbytes} bytes marked empty"
            raise CorruptStoreError(where, msg)
        lay = _Layout(kind, rows, chunk_rows)
        # Rows with storage: a chunked array's last chunk may reach past ``rows``, no further.
        unit = max(chunk_rows, 1)
        stored = -(-max(rows, spec.length) // unit) * unit
        pos = 0
        for ext in extents:
            lay.runs.append(_check_run(ext, name, spec, pos, stored, size, userblock, where))
            pos = _runs_end(lay.runs)
        if spec.row_nbytes and pos < spec.length:
            raise CorruptStoreError(
                where,
                f"array {name!r}: extents hold {pos} rows, the manifest commits {spec.length}",
            )
        out[name] = lay
    return out


def _check_run(
    ext: Any,
    name: str,
    spec: ArraySpec,
    pos: int,
    stored: int,
    size: int,
    userblock: int,
    where: str,
) -> Run:
    """One validated run of the record: an extent ``[first, rows, offset]`` or a run
    ``[first, rows, offset, count, stride]`` starting at row ``pos``, its committed rows
    inside the file. Nothing is expanded: a tampered ``count`` costs no memory."""
    if not isinstance(ext, list) or len(ext) not in (3, 5):
        raise CorruptStoreError(where, f"array {name!r}: bad extent {ext!r:.60}")
    first = _int(ext[0], "an extent's first row", where)
    n = _int(ext[1], "an extent's rows", where, 1)
    off = _int(ext[2], "an extent's offset", where, userblock)
    count, stride = 1, 0
    if len(ext) == 5:
        count = _int(ext[3], "a run's count of extents", where, 1)
        stride = _int(ext[4], "a run's stride", where)
        if count > 1 and stride < n * spec.row_nbytes:
            raise CorruptStoreError(
                where,
                f"array {name!r}: a run's extents of {n * spec.row_nbytes:,} bytes overlap "
                f"(stride {stride:,})",
            )
    if first != pos:
        problem = "leave a gap" if first > pos else "overlap"
        raise CorruptStoreError(where, f"array {name!r}: extents {problem} at row {pos}")
    end = first + count * n
    if end > stored:
        raise CorruptStoreError(
            where,
            f"array {name!r}: extents reach row {end:,}, past the {stored:,} rows it has "
            "storage for",
        )
    used = min(end, spec.length) - first
    if used > 0:
        k = (used - 1) // n  # the last extent holding committed rows
        last = off + k * stride + (used - k * n) * spec.row_nbytes
        if last > size:
            raise CorruptStoreError(
                where,
                f"array {name!r}: rows {first}..{first + used} lie past the end of the "
                f"file ({size:,} bytes); was it truncated?",
            )
    return [first, n, off, count, stride if count > 1 else 0]
