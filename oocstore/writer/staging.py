"""Staged physical arrays: rows buffered to whole write units, then handed to the backend."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import sizing
from ..backends.base import Backend
from ..checksum import SpanHasher
from ..manifest import ArraySpec

if TYPE_CHECKING:
    from .core import Writer

log = logging.getLogger("oocstore.writer")


class _StagedArray:
    """One physical array: a staging buffer in front of the backend, and its capacity."""

    def __init__(
        self,
        backend: Backend,
        name: str,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        *,
        rows: int,
        capacity: int,
        budget: int,
    ) -> None:
        self.backend = backend
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.row_nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.capacity = capacity
        self.budget = budget
        self.chunk_rows = max(backend.write_unit_rows(name), 1)
        self.stage_rows = sizing.stage_rows(self.row_nbytes, budget, self.chunk_rows)
        # Runs this long skip the stage: a copy would cost more than the extra syscall.
        self.direct_rows = min(
            self.stage_rows, max(self.chunk_rows, sizing.direct_write_rows(self.row_nbytes))
        )
        self.stage_start = rows  # first row held by the stage (rows before it are written)
        self.fill = 0  # rows in the stage
        self._buf: np.ndarray | None = None
        self.hasher = SpanHasher(rows)

    @property
    def rows(self) -> int:
        """Rows appended so far (written or staged)."""
        return self.stage_start + self.fill

    def spec(self) -> ArraySpec:
        """The manifest entry for the rows appended so far."""
        return ArraySpec(dtype=self.dtype, shape=self.shape, length=self.rows)

    def _ensure(self, rows: int) -> None:
        if rows > self.capacity:
            new = sizing.grow_capacity(self.capacity, rows, self.row_nbytes)
            log.debug("growing %r from %d to %d rows", self.name, self.capacity, new)
            try:
                self.backend.reserve(self.name, new)
            except OSError:
                if new == rows:
                    raise
                self.backend.reserve(self.name, rows)  # no room to grow ahead: just what fits
                new = rows
            self.capacity = new

    def _limit(self) -> int:
        # The stage ends on a chunk boundary, so chunks are written whole.
        return self.stage_rows - (self.stage_start % self.chunk_rows)

    def append(self, values: np.ndarray) -> None:
        """Append rows, writing large runs straight through and staging small ones."""
        n = len(values)
        if n == 0:
            return
        self._ensure(self.rows + n)
        self.hasher.update(values)  # in a helper thread while this thread writes
        try:
            self._append(values)
        finally:
            self.hasher.wait()  # the caller may reuse its batch once append returns

    def _append(self, values: np.ndarray) -> None:
        n = len(values)
        pos = 0
        while pos < n:
            left = n - pos
            if (
                self.fill == 0
                and self.stage_start % self.chunk_rows == 0
                and left >= self.direct_rows
            ):
                k = (left // self.chunk_rows) * self.chunk_rows
                self.backend.write(self.name, self.stage_start, values[pos : pos + k])
                self.stage_start += k
                pos += k
                continue
            if self._buf is None:
                self._buf = np.empty((self.stage_rows, *self.shape), dtype=self.dtype)
            take = min(self._limit() - self.fill, left)
            self._buf[self.fill : self.fill + take] = values[pos : pos + take]
            self.fill += take
            pos += take
            if self.fill == self._limit():
                self.backend.write(self.name, self.stage_start, self._buf[: self.fill])
                self.stage_start += self.fill
                self.fill = 0

    def flush(self) -> None:
        """Write the staged rows; keep them staged so their chunk is later written whole."""
        if self.fill and self._buf is not None:
            self.backend.write(self.name, self.stage_start, self._buf[: self.fill])

    def release_buffer(self) -> None:
        """Drop the staging buffer (after close)."""
        self._buf = None

    def widen(self, shape: tuple[int, ...]) -> None:
        """Continue with rows of ``shape`` (a padded field grew); the caller closed the span.

        Staged rows are on disk already (``flush``): the stage restarts empty, sized anew.
        A chunk written whole from the stage is then finished by reading its first rows back,
        once per growth: the rows of a ragged field grow a few times, not per batch.
        """
        self.stage_start += self.fill
        self.fill = 0
        self._buf = None
        self.shape = shape
        self.row_nbytes = int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize
        self.stage_rows = sizing.stage_rows(self.row_nbytes, self.budget, self.chunk_rows)
        if self.chunk_rows > 1 and self.stage_rows * self.row_nbytes > self.budget // 4:
            # A whole chunk of the wider rows no longer fits the budget: stage less, and let
            # the backend finish each chunk by reading its earlier rows back (slower, bounded).
            self.chunk_rows = 1
            self.stage_rows = sizing.stage_rows(self.row_nbytes, self.budget)
        self.direct_rows = min(
            self.stage_rows, max(self.chunk_rows, sizing.direct_write_rows(self.row_nbytes))
        )

    def skip_to(self, stop: int) -> None:
        """Continue at row ``stop``: rows up to it were written by region writers.

        The caller flushed the stage and took its checksum span first.
        """
        self.stage_start = stop
        self.fill = 0
        self.capacity = max(self.capacity, stop)
        self.hasher = SpanHasher(stop)


class _EarlyFlush:
    """Make a not yet declared array's rows durable in the background while more are written.

    The padded layout at close is declared only once complete, but its bytes need not wait
    for that to reach the disk: syncing every ~64 MB overlaps the disk with the layout work,
    so the final commit waits only for the tail.
    """

    def __init__(self, owner: Writer, name: str) -> None:
        self.owner = owner
        self.name = name
        self.since = 0
        self.pending: Future[None] | None = None

    def written(self, rows: int, nbytes: int) -> None:
        """Count ``nbytes`` more; past the commit cadence, sync the first ``rows`` rows."""
        self.since += nbytes
        committer = self.owner._committer
        if committer is None or self.since < self.owner.commit_every_bytes:
            return
        self.wait()
        self.since = 0
        self.pending = committer.submit(self.owner.backend.sync, {self.name: rows})

    def wait(self) -> None:
        """Wait for the sync in flight (its error is the writer's)."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()
