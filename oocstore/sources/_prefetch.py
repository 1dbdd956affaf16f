"""Pull a source's batches in a thread while the writer writes the ones before them.

A source that works per batch (decoding, augmenting, a model's forward pass) then overlaps
the disk instead of waiting for it. Batches wait in a queue bounded in count and in bytes; an
exception of the source is raised where the batch it failed to make would have been, after
every batch it made before, so the writer's batch index still names it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["MAX_AHEAD", "prefetch"]

MAX_AHEAD = 4
"""Batches pulled ahead at most (whatever their size): enough to ride out a slow one."""


def _nbytes(batch: Any) -> int:
    """Bytes of a batch's arrays (tuples, lists and dicts looked into), 0 where unknown."""
    if isinstance(batch, dict):
        return sum(_nbytes(v) for v in batch.values())
    if isinstance(batch, tuple | list):
        return sum(_nbytes(v) for v in batch)
    n = getattr(batch, "nbytes", 0)
    return int(n) if isinstance(n, int) else 0


class _Failure:
    """What the source raised instead of its next batch (its traceback goes with it)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


class _Prefetcher(Iterator[Any]):
    def __init__(self, batches: Iterable[Any], max_bytes: int, ahead: int) -> None:
        self._source = iter(batches)
        self._max_bytes = max(int(max_bytes), 1)
        self._ahead = max(int(ahead), 1)
        self._queue: deque[tuple[Any, int]] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._done = False
        self._thread = threading.Thread(target=self._pull, name="oocstore-prefetch", daemon=True)
        self._thread.start()

    def _pull(self) -> None:
        while True:
            with self._cond:
                # Room for one more: fewer than `ahead` waiting and under the byte bound (a
                # batch larger than the bound still goes, alone).
                self._cond.wait_for(
                    lambda: (
                        self._stopped
                        or not self._queue
                        or (len(self._queue) < self._ahead and self._bytes < self._max_bytes)
                    )
                )
                if self._stopped:
                    return
            try:
                item: Any = next(self._source)
            except StopIteration:
                item = _END
            except BaseException as err:
                item = _Failure(err)
            size = _nbytes(item) if item is not _END and not isinstance(item, _Failure) else 0
            with self._cond:
                self._queue.append((item, size))
                self._bytes += size
                self._cond.notify_all()
            if item is _END or isinstance(item, _Failure):
                return

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        with self._cond:
            self._cond.wait_for(lambda: bool(self._queue))
            item, size = self._queue.popleft()
            self._bytes -= size
            self._cond.notify_all()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.error
        return item

    def close(self) -> None:
        """Stop pulling (the batch being made, if any, is made and dropped)."""
        with self._cond:
            self._stopped = True
            self._done = True
            self._queue.clear()
            self._bytes = 0
            self._cond.notify_all()

    def __del__(self) -> None:
        self.close()


def prefetch(batches: Iterable[Any], max_bytes: int, ahead: int = MAX_AHEAD) -> _Prefetcher:
    """Iterate ``batches`` with a thread pulling up to ``ahead`` of them (and about
    ``max_bytes`` of their arrays) before they are asked for. ``close()`` stops the thread."""
    return _Prefetcher(batches, max_bytes, ahead)
