"""Every size decision in one place: memory budget, staging buffers, growth, commit cadence.

Sizes follow the memory that is really available: psutil's view of the machine, capped by the
container's cgroup limit (which psutil does not see), and by the user's ``memory=`` budget.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import psutil

from .errors import DiskFullError, SampleTooLargeError

__all__ = [
    "MemoryLike",
    "available_memory",
    "cgroup_memory_limit",
    "auto_batch_size",
    "check_disk_space",
    "commit_bytes",
    "grow_capacity",
    "memory_budget",
    "parse_bytes",
    "stage_rows",
    "tile_shape",
]

log = logging.getLogger(__name__)

MemoryLike = int | float | str | None
"""A memory size: bytes, or a string like ``"512MB"`` or ``"2GiB"``; None picks one."""

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*")

SAFE_FRACTION = 0.5
"""Never plan to use more than this fraction of the memory that is available."""
DEFAULT_FRACTION = 0.125
"""Without ``memory=``, use this fraction of what is available (capped by DEFAULT_CAP)."""
DEFAULT_CAP = 512 * 2**20
MIN_BUDGET = 16 * 2**20


def parse_bytes(size: int | float | str) -> int:
    """Parse ``1024``, ``"512MB"``, ``"2GiB"`` or ``"1.5 GB"`` into bytes.

    Raises
    ------
    ValueError
        If the size is negative, not a number, or has an unknown unit.
    """
    if isinstance(size, bool):
        msg = f"a size must be a number of bytes or a string like '512MB', not {size!r}"
        raise ValueError(msg)
    if isinstance(size, int | float):
        value = float(size)
        unit = ""
    else:
        m = _SIZE.fullmatch(str(size))
        if m is None or m.group(2).lower() not in _UNITS:
            msg = f"cannot read size {size!r}: use bytes or a number with kB, MB, GB, MiB, GiB..."
            raise ValueError(msg)
        value, unit = float(m.group(1)), m.group(2).lower()
    if not math.isfinite(value) or value < 0:
        msg = f"a size must be a non-negative number, got {size!r}"
        raise ValueError(msg)
    return int(value * _UNITS[unit])


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text in ("", "max"):
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    # cgroup v1 reports "no limit" as a huge number near 2**63.
    return value if 0 < value < 2**60 else None


def cgroup_memory_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Memory the container may still use (limit minus usage, cgroup v2 or v1); None: no limit."""
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),  # v2
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),  # v1
    ):
        limit = _read_int(root / limit_file)
        if limit is not None:
            usage = _read_int(root / usage_file) or 0
            return max(limit - usage, 0)
    return None


def available_memory() -> int:
    """Bytes of memory available now: the machine's, capped by the container's limit."""
    avail = int(psutil.virtual_memory().available)
    limit = cgroup_memory_limit()
    if limit is not None and limit < avail:
        log.debug("cgroup limit %d caps available memory %d", limit, avail)
        avail = limit
    return avail


def memory_budget(memory: MemoryLike = None) -> int:
    """The bytes oocstore may use for buffers: ``memory=`` if given, never past a safe share."""
    avail = available_memory()
    ceiling = max(int(avail * SAFE_FRACTION), MIN_BUDGET)
    if memory is None:
        budget = min(int(avail * DEFAULT_FRACTION), DEFAULT_CAP)
    else:
        budget = parse_bytes(memory)
        if budget > ceiling:
            log.debug(
                "memory=%d is more than half of available %d; using %d", budget, avail, ceiling
            )
            budget = ceiling
    budget = max(budget, MIN_BUDGET)
    log.debug("memory budget %d bytes (available %d)", budget, avail)
    return budget


def stage_rows(sample_nbytes: int, budget: int, chunk_rows: int = 1) -> int:
    """Samples per staging buffer: a few MB for coalescing writes, whole chunks, within budget.

    Staging only coalesces small batches (large batches go straight to the backend), so a
    modest buffer suffices; it is a multiple of ``chunk_rows`` so chunks are written whole.
    """
    target = min(8 * 2**20, max(budget // 8, 2**20))
    rows = max(target // max(sample_nbytes, 1), 1)
    rows = max(rows // chunk_rows, 1) * chunk_rows
    return int(rows)


def direct_write_rows(row_nbytes: int) -> int:
    """Rows from which a run is written straight through instead of staged: about 1 MiB.

    Staging exists to coalesce small batches into few large writes; copying a batch that is
    already large costs time and saves nothing (docs/benchmarks.md has the figures).
    """
    return int(max((1 * 2**20) // max(row_nbytes, 1), 1))


def layout_rows(row_nbytes: int, budget: int) -> int:
    """Samples per block when laying a packed field out padded: ~32 MB, within budget."""
    return int(max(min(32 * 2**20, budget // 8) // max(row_nbytes, 1), 1))


def auto_batch_size(sample_nbytes: int, budget: int, *, at_most: int = 65_536) -> int:
    """A batch size for reading: a batch takes about an eighth of the budget, 1..at_most."""
    size = max(budget // 8 // max(sample_nbytes, 1), 1)
    size = min(size, at_most)
    log.debug("auto batch size %d for %d-byte samples within %d bytes", size, sample_nbytes, budget)
    return int(size)


BLOCK_BYTES = 64 * 2**20
"""Bytes per block when a whole array or store is streamed (copies, layout passes, sources
sliced from one big array): large enough that per-block costs vanish, small enough for RAM."""

MAX_SAMPLE_BYTES = 2**48
"""Largest sample a store may declare: a manifest that declares more is refused as tampered."""


def format_bytes(n: float) -> str:
    """``n`` bytes for a person: ``7.4 MB``, ``1.36 GB``, ``4.40 TB`` (powers of 1000)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(n)} bytes"


def _max_file_bytes(probe: Path) -> int | None:
    try:
        bits = os.pathconf(probe, "PC_FILESIZEBITS")
    except (OSError, ValueError):
        return None
    return 2 ** (bits - 1) - 1 if 0 < bits <= 64 else None


def check_samples_fit(
    path: Path, field: str, sample_nbytes: int, rows: int, *, batch_index: int
) -> None:
    """Refuse, before anything is allocated, samples of ``field`` that cannot be stored here.

    Raises
    ------
    SampleTooLargeError
        If one sample is larger than any store file can be (whatever the free space).
    DiskFullError
        If the ``rows`` samples of the batch need more than the disk's free space.
    """
    probe = path if path.exists() else path.parent
    limit = min(MAX_SAMPLE_BYTES, _max_file_bytes(probe) or MAX_SAMPLE_BYTES)
    if sample_nbytes > limit:
        what = (
            f"one sample is {format_bytes(sample_nbytes)} ({sample_nbytes:,} bytes), more than "
            "a store file can hold"
        )
        raise SampleTooLargeError(
            what,
            field=field,
            batch_index=batch_index,
            expected=f"at most {limit:,} bytes",
            actual=f"{sample_nbytes:,} bytes",
            hint="store such data as several fields or samples (e.g. tiles of it)",
        )
    try:
        free = psutil.disk_usage(str(probe)).free
    except OSError:
        return
    needed = sample_nbytes * rows
    if needed > free:
        each = "" if rows == 1 else " each"
        what = (
            f"batch {batch_index}, field {field!r}: {rows:,} sample{'s' if rows > 1 else ''} of "
            f"{format_bytes(sample_nbytes)} ({sample_nbytes:,} bytes{each}), "
            f"{format_bytes(free)} free"
        )
        raise DiskFullError(
            str(path),
            needed=needed,
            free=free,
            what=what,
            hint="Nothing of this batch was written. Free space, or write the store elsewhere",
        )


def check_disk_space(path: Path, needed: int) -> None:
    """Fail at once, naming the bytes needed and free, when a write of known size cannot fit.

    Raises
    ------
    DiskFullError
        If the filesystem holding ``path`` has less than ``needed`` bytes free.
    """
    probe = path if path.exists() else path.parent
    try:
        free = psutil.disk_usage(str(probe)).free
    except OSError:
        return
    log.debug("%d bytes needed, %d free at %s", needed, free, probe)
    if needed > free:
        raise DiskFullError(str(path), needed=needed, free=free)


def commit_bytes(budget: int, *, background: bool = False) -> int:
    """Bytes written between periodic commits.

    A commit that blocks the writer should be rare (256 MB - 1 GB, so fsync costs little per
    byte). A commit made in the background should be frequent (64 MB): the disk then writes
    while the source produces, and closing waits only for the last few MB instead of for
    everything still in the page cache.
    """
    if background:
        return int(min(64 * 2**20, max(budget // 4, 8 * 2**20)))
    return int(min(max(budget, 256 * 2**20), 1 * 2**30))


def grow_capacity(capacity: int, needed: int, row_nbytes: int) -> int:
    """New capacity in rows when ``needed`` rows do not fit: geometric, capped per step.

    Growing by half keeps appends amortised O(1); capping one step at 4 GiB keeps a nearly
    full disk from failing on space the data would never use.
    """
    grown = max(needed, int(capacity * 1.5), 1024)
    if row_nbytes:
        cap_rows = max((4 * 2**30) // row_nbytes, 1)
        grown = min(grown, max(needed, capacity + cap_rows))
    return int(grown)


TILE_BYTES = 32 * 2**10
"""Largest tile (the chunk extent past the sample axis) of a padded field whose rows may grow."""


def tile_shape(shape: Sequence[int], itemsize: int, growing: Sequence[int] = ()) -> tuple[int, ...]:
    """Chunk extent along each trailing axis of a padded field whose rows may grow (Zarr).

    Zarr's chunk grid is fixed when the array is created, and an edge chunk is stored whole.
    Chunks that each cover a *tile* of the row let the row grow by whole new chunk files;
    the cost is the part of the edge tiles past the row's end, less than a tile per axis.
    So the axes seen to vary (``growing``) get tiles of a quarter of their size, and never
    below 16 (tiny first samples must not make thousands of tiles per row later): when the
    rows outgrow the first batch by a little, that part is ~1/4 of it, not a whole row's.
    Then the largest axis is halved (rounding up, so tiles still cover ``shape`` exactly)
    until a tile is at most :data:`TILE_BYTES`. 256x256x3 uint8 images of varying height
    and width get 64x64x3 tiles.
    """
    tile = [max(int(d), 1) for d in shape]
    for i in growing:
        tile[i] = max(-(-tile[i] // 4), 16)
    while tile and math.prod(tile) * itemsize > TILE_BYTES:
        i = max(range(len(tile)), key=tile.__getitem__)
        if tile[i] <= 16:
            break
        tile[i] = -(-tile[i] // 2)
    return tuple(tile)
