"""Write-behind with ``O_DIRECT``: long sequential writes go to the disk from two reused buffers.

Why: a conversion's bytes are written once and read later, so routing them through the page
cache buys little and costs twice. Every written page must first be allocated in the cache,
and on a VM whose host takes back free memory that allocation is slow and erratic; two
reused aligned buffers are not (``benchmarks/direct_io.py`` measures both, figures in
docs/benchmarks.md). And a store bigger than RAM no longer evicts everything else from the
page cache.

How: :class:`DirectWriter` copies sequential writes into an aligned buffer; a full buffer is
written by a helper thread with ``O_DIRECT`` while the caller fills the other one. Anything
that is not a long sequential run (small arrays, rewrites, the last partial page at a commit)
goes through the ordinary descriptor: the kernel keeps the two coherent (a direct write first
writes back and drops cached pages of its range). Where ``O_DIRECT`` is refused (ramfs, tmpfs
before Linux 6.6, some network filesystems), everything is written buffered.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ._durable import fsync_fd, pwrite_all

__all__ = ["ALIGN", "BUFFER_BYTES", "DIRECT_AFTER", "PROBE_BYTES", "DirectWriter"]

ALIGN = 4096
"""Offsets, lengths and buffer addresses of direct writes are multiples of this."""
BUFFER_BYTES = 8 * 2**20
"""Bytes per buffer (two per file written directly)."""
DIRECT_AFTER = 16 * 2**20
"""Sequential bytes written buffered before a file goes direct: small arrays never do."""
PROBE_BYTES = 16 * 2**20
"""Bytes of one timed slice of a long run; slices alternate direct and buffered."""
PROBE_SLICES = 4
"""Slices timed each way (alternating, so growth or a busy moment falls on both) before the
faster way is kept. A first direct slice, untimed, opens the descriptor, buffers and thread."""
REPROBE_BYTES = 4 * 2**30
"""Bytes written the chosen way before both are timed again (a shared disk's speed drifts)."""
BUFFERED_MARGIN = 0.8
"""Buffered writing is kept only if it took less than this share of direct's time: direct
also keeps the page cache for other uses, so a tie goes to it."""


def _as_bytes(data: np.ndarray | bytes | memoryview) -> memoryview:
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return memoryview(data).cast("B")  # type: ignore[arg-type]


class DirectWriter:
    """Positioned writes to one file; long sequential runs are written with ``O_DIRECT``.

    Thread-safe: :meth:`mark`, :meth:`wait` and :meth:`drain` may run in a commit thread while
    :meth:`pwrite` goes on in the writer's thread. Data passed to :meth:`pwrite` is copied
    (or written) before it returns, so the caller may reuse it.
    """

    def __init__(self, fd: int, path: Path, *, after: int | None = None) -> None:
        self.fd = fd
        self.path = path
        self.after = DIRECT_AFTER if after is None else after
        """Sequential bytes before writes go direct (a caller continuing a run elsewhere,
        such as the next chunk file of an array, passes what is left of it)."""
        self._lock = threading.Lock()
        self._dfd: int | None = None
        self._refused = False
        self._bufs: list[mmap.mmap] = []
        self._views: list[memoryview] = []
        self._busy: list[Future[None] | None] = [None, None]
        self._cur = 0
        self._start = 0  # file offset of the current buffer's first byte (aligned)
        self._fill = 0  # bytes in the current buffer
        self._next = -1  # where the next write continues a sequential run
        self._run = 0  # bytes in the current sequential run
        self._pool: ThreadPoolExecutor | None = None
        # Which way the disk rewards, timed on the run itself: None until both are timed.
        self.choice: str | None = None
        """``"direct"`` or ``"buffered"`` once both were timed on a long run; else None."""
        self._probe = ""  # "direct" or "buffered" while a slice of that way is timed
        self._probe_t0 = 0.0  # when the slice began
        self._probe_bytes = 0  # bytes of the slice so far
        self._seconds = {"direct": 0.0, "buffered": 0.0}  # timed slices, summed per way
        self._slices = 0
        self._chosen_bytes = 0  # written since the choice

    # -- writing --------------------------------------------------------------------------------

    def pwrite(self, data: np.ndarray | bytes | memoryview, offset: int) -> None:
        """Write ``data`` at ``offset`` (through the buffer when it continues a long run)."""
        view = _as_bytes(data)
        n = len(view)
        if n == 0:
            return
        with self._lock:
            buffered = self._fill and offset == self._start + self._fill
            if not buffered:
                self._end_buffer()
                for f in self._busy:  # no buffered write may overtake a queued direct one
                    if f is not None:
                        f.result()
                sequential = offset == self._next
                self._run = self._run + n if sequential else n
                self._next = offset + n
                if not sequential and self._probe:
                    self._probe = ""  # the run broke: time the next one afresh
                if self._run < self.after or not self._wants_direct() or not self._open_direct():
                    pwrite_all(self.fd, view, offset, self.path)
                    if self._run >= self.after:
                        self._count_buffered(n)
                    return
                head = -offset % ALIGN
                if head >= n:  # all of it before the next page: the run ends where it ends
                    pwrite_all(self.fd, view, offset, self.path)
                    return
                if head:  # up to the next aligned offset, buffered; the rest direct
                    pwrite_all(self.fd, view[:head], offset, self.path)
                    view, offset = view[head:], offset + head
                self._start, self._fill = offset, 0
            self._next = offset + len(view)
            self._run += n if buffered else 0
            pos = 0
            while pos < len(view):
                buf = self._views[self._cur]
                take = min(len(buf) - self._fill, len(view) - pos)
                buf[self._fill : self._fill + take] = view[pos : pos + take]
                self._fill += take
                pos += take
                if self._fill == len(buf):
                    self._submit(self._fill)
            self._count_direct(n)

    # -- choosing the way the disk rewards -----------------------------------------------------

    def _wants_direct(self) -> bool:
        """Should the next bytes of a long run go direct? Starts a timing where none runs."""
        if self.choice is not None:
            return self.choice == "direct"
        if not self._probe:
            self._seconds = {"direct": 0.0, "buffered": 0.0}
            self._slices = -1  # the first slice warms up
            self._start_slice("direct")
        return self._probe == "direct"

    def _start_slice(self, way: str) -> None:
        self._probe, self._probe_t0, self._probe_bytes = way, time.perf_counter(), 0

    def _count_direct(self, n: int) -> None:
        """Bytes of the run copied for direct writing; ends a direct slice when due."""
        if self._probe != "direct":
            self._count_chosen(n)
            return
        self._probe_bytes += n
        if self._probe_bytes >= PROBE_BYTES:
            self._end_buffer()  # every byte of the slice in the file
            for f in self._busy:
                if f is not None:
                    f.result()
            self._end_slice()

    def _count_buffered(self, n: int) -> None:
        """Bytes of a long run written buffered; ends a buffered slice when due."""
        if self._probe != "buffered":
            self._count_chosen(n)
            return
        self._probe_bytes += n
        if self._probe_bytes >= PROBE_BYTES:
            fsync_fd(self.fd, self.path)  # buffered bytes cost nothing until written back
            self._end_slice()

    def _end_slice(self) -> None:
        way = self._probe
        if self._slices >= 0:
            self._seconds[way] += time.perf_counter() - self._probe_t0
        self._slices += 1
        if self._slices < 2 * PROBE_SLICES:
            self._start_slice("buffered" if way == "direct" else "direct")
            return
        faster = self._seconds["buffered"] < BUFFERED_MARGIN * self._seconds["direct"]
        self.choice = "buffered" if faster else "direct"
        self._probe, self._chosen_bytes = "", 0

    def _count_chosen(self, n: int) -> None:
        if self.choice is None:
            return
        self._chosen_bytes += n
        if self._chosen_bytes >= REPROBE_BYTES:
            self.choice = None  # time both again on the bytes to come

    def _open_direct(self) -> bool:
        if self._dfd is not None:
            return True
        if self._refused or not hasattr(os, "O_DIRECT"):
            return False
        if not self._open_dfd():
            return False
        self._bufs = [mmap.mmap(-1, BUFFER_BYTES) for _ in range(2)]
        self._views = [memoryview(b) for b in self._bufs]
        # One thread, so one write in flight: two measured no faster (docs/benchmarks.md,
        # "Figures behind design choices").
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="oocstore-direct")
        return True

    def _open_dfd(self) -> bool:
        """Open ``path`` again with ``O_DIRECT``; False (and never again) where refused."""
        try:
            self._dfd = os.open(self.path, os.O_WRONLY | os.O_DIRECT | getattr(os, "O_CLOEXEC", 0))
        except OSError:  # EINVAL: this filesystem has no direct I/O
            self._refused = True
            return False
        return True

    def _submit(self, nbytes: int) -> None:
        """Write the current buffer's first ``nbytes`` (a multiple of ALIGN) in the thread,
        and continue in the other buffer once its previous write is done."""
        assert self._pool is not None
        assert self._dfd is not None
        k = self._cur
        self._busy[k] = self._pool.submit(
            pwrite_all, self._dfd, self._views[k][:nbytes], self._start, self.path
        )
        other = 1 - k
        pending, self._busy[other] = self._busy[other], None
        if pending is not None:
            pending.result()
        self._cur = other
        self._start += nbytes
        self._fill = 0

    def _flush_buffer(self) -> None:
        """Put the buffered bytes in the file: whole pages direct, the last partial page
        buffered (and kept, so the run goes on in the buffer)."""
        if not self._fill:
            return
        whole = self._fill - self._fill % ALIGN
        tail = bytes(self._views[self._cur][whole : self._fill])
        start = self._start
        if whole:
            self._submit(whole)
        if tail:
            pwrite_all(self.fd, tail, start + whole, self.path)
            self._views[self._cur][: len(tail)] = tail
            self._fill = len(tail)

    def _end_buffer(self) -> None:
        """Flush the buffer and leave buffered mode (the next write is not sequential)."""
        self._flush_buffer()
        self._fill = 0

    # -- making it visible and durable ----------------------------------------------------------

    def mark(self) -> list[Future[None]]:
        """Put every byte written so far in the file; what :meth:`wait` waits for."""
        with self._lock:
            self._flush_buffer()
            return [f for f in self._busy if f is not None]

    @staticmethod
    def wait(token: list[Future[None]]) -> None:
        """Wait until the writes before :meth:`mark` returned ``token`` are done (their
        failure is raised here). ``fdatasync`` the file afterwards to make them durable."""
        for f in token:
            f.result()

    def drain(self) -> None:
        """Every byte written so far is in the file (readable through any descriptor)."""
        self.wait(self.mark())

    def retarget(self, fd: int, path: Path) -> None:
        """Drain, then go on writing another file (the next chunk file of an array) with the
        same buffers and thread: fresh buffers per file cost page faults, and fresh memory
        can be slow to touch. The run goes on: it is the same stream of rows."""
        self.drain()
        refused = False
        with self._lock:
            if self._dfd is not None:
                os.close(self._dfd)
                self._dfd = None
            self.fd, self.path = fd, path
            self._fill = 0
            self._next = 0  # a new file: its first write continues the run from offset 0
            if self._pool is not None:  # it was direct: the new file is too
                refused = not self._open_dfd()
        if refused:  # close() takes the lock
            self.close()

    def close(self) -> None:
        """Drain and release the direct descriptor, buffers and thread (the caller keeps
        and closes ``fd``)."""
        try:
            self.drain()
        finally:
            with self._lock:
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
                    self._pool = None
                if self._dfd is not None:
                    os.close(self._dfd)
                    self._dfd = None
                self._views = []
                self._busy = [None, None]
                for b in self._bufs:
                    # A failed write's traceback may still hold a view of it: let the
                    # collector free it rather than hide that write's error.
                    with contextlib.suppress(BufferError):
                        b.close()
                self._bufs = []
                self._fill = 0
