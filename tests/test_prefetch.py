"""``oocstore.write`` pulls the source in a thread while it writes: bounded, exact, and a
source's exception still belongs to the batch it failed to make."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import oocstore
from oocstore.sources._prefetch import MAX_AHEAD, prefetch

from .conftest import SUFFIX


class SourceBroke(RuntimeError):
    pass


def _batches(n: int, rows: int = 64) -> list[np.ndarray]:
    return [np.full((rows, 8), i, dtype=np.float32) for i in range(n)]


def test_the_source_runs_in_another_thread_ahead_of_the_writer(tmp_path: Path) -> None:
    made: list[int] = []
    threads: set[int] = set()

    def source() -> Iterator[np.ndarray]:
        for i, b in enumerate(_batches(30)):
            threads.add(threading.get_ident())
            made.append(i)
            yield b

    store = oocstore.write(source(), tmp_path / "s.ooc")
    assert threading.get_ident() not in threads  # the writer's thread never ran the source
    assert made == list(range(30))
    assert np.array_equal(store["0"][::64, 0], np.arange(30, dtype=np.float32))


def test_the_queue_is_bounded_in_batches_and_bytes() -> None:
    made = 0
    ahead_seen: list[int] = []

    def source() -> Iterator[np.ndarray]:
        nonlocal made
        for b in _batches(40):
            made += 1
            yield b

    it = prefetch(source(), max_bytes=10**12)
    for taken, _ in enumerate(it, start=1):
        time.sleep(0.002)  # a slow consumer: the thread fills the queue meanwhile
        ahead_seen.append(made - taken)
    assert max(ahead_seen) <= MAX_AHEAD + 1  # the queue, plus the batch being made
    assert max(ahead_seen) >= 2  # it did pull ahead
    small = prefetch(iter(_batches(40)), max_bytes=1)  # under a byte: one batch at a time
    assert sum(1 for _ in small) == 40


@settings(max_examples=20)
@given(n=st.integers(0, 12), fail_at=st.integers(0, 14))
def test_a_source_error_comes_after_every_batch_before_it(n: int, fail_at: int) -> None:
    def source() -> Iterator[int]:
        for i in range(n):
            if i == fail_at:
                msg = f"batch {i}"
                raise SourceBroke(msg)
            yield i

    got: list[int] = []
    it = prefetch(source(), max_bytes=10**9, ahead=3)

    def drain() -> None:
        got.extend(it)  # extend keeps what came before the error

    if fail_at < n:
        with pytest.raises(SourceBroke, match=f"batch {fail_at}"):
            drain()
        assert got == list(range(fail_at))
    else:
        assert list(it) == list(range(n))
    assert list(it) == []  # a finished or failed iterator stays finished


def test_a_failing_source_keeps_its_commits_and_resumes_exactly(
    tmp_path: Path, backend: str
) -> None:
    path = tmp_path / f"s{SUFFIX[backend]}"
    data = _batches(20)

    def failing() -> Iterator[np.ndarray]:
        for i, b in enumerate(data):
            if i == 13:
                raise SourceBroke("the decoder gave up at batch 13")
            yield b

    with pytest.raises(SourceBroke, match="batch 13") as err:
        oocstore.write(failing(), path, commit_bytes=1)  # every batch committed
    assert "failing" in "".join(str(f.name) for f in err.traceback)  # the source's frame
    store = oocstore.open(path)
    assert len(store) == 13 * 64
    assert not store.complete
    done = oocstore.write(iter(data), path, resume=True)
    assert done.complete
    assert np.array_equal(done["0"], np.concatenate(data))


def test_a_writer_error_stops_the_prefetch_thread(tmp_path: Path) -> None:
    def source() -> Iterator[np.ndarray]:
        yield np.zeros((4, 2), np.float32)
        yield np.zeros((4, 2), np.int64).astype("U3")  # dtype drift: the writer refuses it
        while True:
            yield np.zeros((4, 2), np.float32)

    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(oocstore.DtypeError, match="batch 1"):
        oocstore.write(source(), tmp_path / "s.ooc")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        live = [t for t in threading.enumerate() if t.ident not in before]
        if not any(t.name == "oocstore-prefetch" for t in live):
            break
        time.sleep(0.01)
    assert not any(t.name == "oocstore-prefetch" for t in threading.enumerate())
