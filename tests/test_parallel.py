"""``oocstore.write(source, path, workers=N)``: worker processes fill disjoint regions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import oocstore
from oocstore.errors import RaggedError, WorkerFailedError

from .parallel_sources import FailAt, KillAt, Ragged, Samples, expected

N = 700


def assert_equal(store: oocstore.Store, n: int) -> None:
    want = expected(n)
    assert len(store) == n
    np.testing.assert_array_equal(store["x"][:], want["x"])
    np.testing.assert_array_equal(store["y"][:], want["y"])
    assert store.verify() == []


def test_workers_equal_one_process(store_path: Path, backend: str) -> None:
    """workers=2 writes exactly what workers=1 writes, on every backend."""
    one = oocstore.write(Samples(N), store_path.with_name("one" + store_path.suffix), workers=1)
    two = oocstore.write(Samples(N), store_path, workers=2, chunks=64)
    assert two.complete
    assert two.fields == one.fields == ("x", "y")
    for f in one.fields:
        np.testing.assert_array_equal(two[f][:], one[f][:])
    assert_equal(two, N)


def test_killed_worker_leaves_resumable_store(tmp_path: Path) -> None:
    """A worker SIGKILLed mid-region: WorkerFailedError, the store declares only finished
    regions (checksums verify), and resume=True completes it."""
    path = tmp_path / "s.zarr"
    with pytest.raises(WorkerFailedError, match="resume=True"):
        oocstore.write(KillAt(N, at=450), path, workers=2, chunks=50)
    partial = oocstore.open(path)
    assert not partial.complete
    assert len(partial) <= 450
    assert_equal(partial, len(partial))
    assert_equal(oocstore.write(Samples(N), path, workers=2, resume=True), N)


def test_failing_getitem_is_raised_and_resumable(tmp_path: Path) -> None:
    """An exception in a worker's __getitem__ reaches the caller as itself."""
    path = tmp_path / "s.ooc"
    with pytest.raises(RuntimeError, match="cannot read sample 333"):
        oocstore.write(FailAt(N, at=333), path, workers=2)
    partial = oocstore.open(path)
    assert len(partial) <= 333
    assert_equal(partial, len(partial))
    assert_equal(oocstore.write(Samples(N), path, workers=2, resume=True), N)


def test_workers_refuse_what_they_cannot_do(tmp_path: Path) -> None:
    """Ragged samples, sources without [i], and sources that do not pickle get clear errors."""
    with pytest.raises(RaggedError, match="'x'"):
        oocstore.write(Ragged(40), tmp_path / "r.ooc", workers=2)
    with pytest.raises(TypeError, match="indexable"):
        oocstore.write(iter([1, 2]), tmp_path / "i.ooc", workers=2)
    with pytest.raises(TypeError, match="pickled"):
        oocstore.write([np.zeros(3), lambda: 0], tmp_path / "p.ooc", workers=2)
    with pytest.raises(ValueError, match="positive"):
        oocstore.write(Samples(3), tmp_path / "z.ooc", workers=0)


def test_many_regions_keep_checksum_spans_bounded(tmp_path: Path) -> None:
    """More regions than MAX_SPANS: spans are merged, and verify() still passes."""
    from oocstore.checksum import MAX_SPANS

    da = pytest.importorskip("dask.array")
    x = np.arange(3 * (MAX_SPANS + 100), dtype=np.int32)
    store = oocstore.write(da.from_array(x, chunks=3), tmp_path / "s.zarr", chunks=3)
    spans = store.manifest.extra["checksums"]["spans"]["0"]
    assert len(spans) <= MAX_SPANS
    np.testing.assert_array_equal(store["0"][:], x)
    assert store.verify() == []


@pytest.mark.parametrize(
    ("option", "value"),
    [("length", 10), ("batched", True), ("ragged", "pack"), ("fill", 7), ("max_shape", {})],
)
def test_options_parallel_writers_cannot_honour_are_refused(
    tmp_path: Path, option: str, value: object
) -> None:
    with pytest.raises(ValueError, match=rf"{option}= cannot be used when writing workers=2"):
        oocstore.write(Samples(10), tmp_path / "s.ooc", workers=2, **{option: value})
    assert not (tmp_path / "s.ooc").exists()
