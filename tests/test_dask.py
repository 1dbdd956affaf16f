"""Dask: stores read as dask arrays, dask arrays written by Dask's own workers."""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import oocstore
from oocstore.errors import BatchError, RaggedError

from .parallel_sources import fail_block

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

N = 1000


def data(n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """The arrays the tests write: a 2-D float field and an int field."""
    x = (np.arange(n * 7, dtype=np.float64).reshape(n, 7) * 0.5) % 101
    y = np.arange(n, dtype=np.int64) * 3
    return x, y


def as_dask(n: int = N, chunks: int = 130) -> tuple[Any, Any]:
    x, y = data(n)
    return da.from_array(x, chunks=(chunks, 7)), da.from_array(y, chunks=chunks)


def assert_store(store: oocstore.Store, n: int = N) -> None:
    x, y = data(n)
    assert len(store) == n
    np.testing.assert_array_equal(store["x"][:], x)
    np.testing.assert_array_equal(store["y"][:], y)
    assert store.verify() == []


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """One LocalCluster with two worker processes for the whole module."""
    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        # Start-up and shut-down chatter (ports, event loops) is not what these tests check.
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
        c = distributed.Client(cluster, set_as_default=False)
    try:
        yield c
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c.close()
            cluster.close()


# -- reading: store.to_dask() ------------------------------------------------------------------


def test_to_dask_round_trip_and_chunks(store_path: Path, backend: str) -> None:
    """Every backend reads back exactly; blocks follow the store's chunks (Zarr, chunked
    HDF5) or are whole-sample blocks of BLOCK_BYTES (memory-mapped fields)."""
    x, y = data()
    # No length: HDF5 stores chunked datasets; zarr gets 64-row chunks.
    store = oocstore.write(
        iter([(x[:500], y[:500]), (x[500:], y[500:])]), store_path, names=("x", "y"), chunks=64
    )
    arrays = store.to_dask()
    assert set(arrays) == {"x", "y"}
    np.testing.assert_array_equal(arrays["x"].compute(), x)
    np.testing.assert_array_equal(arrays["y"].compute(), y)
    assert float(arrays["x"].sum().compute()) == pytest.approx(float(x.sum()))
    single = store.to_dask("x")
    assert single.shape == x.shape
    assert single.dtype == x.dtype
    assert single.chunks[1] == (7,)
    expected_rows = store.chunk_rows("x")
    if backend in ("zarr", "hdf5"):
        assert expected_rows == 64
    else:
        assert expected_rows is None
        from oocstore.sinks.dask import BLOCK_BYTES

        expected_rows = BLOCK_BYTES // (7 * 8)
    assert all(c == expected_rows for c in single.chunks[0][:-1])
    assert sum(single.chunks[0]) == N
    assert store.to_dask(["y"]).keys() == {"y"}


def test_to_dask_npy_blocks_are_sized(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory-mapped fields are cut into blocks of whole samples of about BLOCK_BYTES."""
    import oocstore.sinks.dask as sink

    monkeypatch.setattr(sink, "BLOCK_BYTES", 100 * 7 * 8)
    x, y = data()
    store = oocstore.write((x, y), tmp_path / "s.ooc", names=("x", "y"))
    arr = store.to_dask("x")
    assert arr.chunks[0] == (100,) * 10
    np.testing.assert_array_equal(arr[250:731].compute(), x[250:731])


def test_to_dask_graph_pickles_as_paths(tmp_path: Path, client: Any) -> None:
    """The graph holds the store's path, not its data: it pickles small, and process
    schedulers and distributed workers read the files themselves."""
    x = np.random.default_rng(0).random((20_000, 16))
    store = oocstore.write(x, tmp_path / "s.zarr", names=("x",), chunks=1000)
    arr = store.to_dask("x")
    assert len(pickle.dumps(dict(arr.__dask_graph__()))) < 40_000  # the data is 2.5 MB
    assert arr.chunks[0] == (1000,) * 20
    with dask.config.set(scheduler="processes"):
        assert float(arr.sum().compute()) == pytest.approx(float(x.sum()))
    assert float(client.compute(arr.sum()).result()) == pytest.approx(float(x.sum()))
    np.testing.assert_array_equal(client.compute(arr[1234:5678]).result(), x[1234:5678])


def test_to_dask_ragged_padded_and_shapes(tmp_path: Path) -> None:
    """A ragged field gives its padded array, ``shapes=True`` its true shapes; a packed
    field is refused with an error naming the field and ragged='pad'."""
    samples = [np.full((2 + i % 3, 4), i, dtype=np.int16) for i in range(30)]
    store = oocstore.write(samples, tmp_path / "r.ooc", names=("img",), batched=False)
    padded = store.to_dask("img")
    assert padded.shape == (30, 4, 4)
    np.testing.assert_array_equal(padded.compute(), np.asarray(store["img"]))
    shapes = store.to_dask("img", shapes=True)
    np.testing.assert_array_equal(shapes.compute(), store.shapes("img"))
    packed = oocstore.write(
        samples, tmp_path / "p.ooc", names=("img",), batched=False, ragged="pack"
    )
    with pytest.raises(RaggedError, match=r"'img'.*packed|packed.*'img'|ragged='pad'"):
        packed.to_dask("img")
    dense = oocstore.write(np.zeros((5, 3)), tmp_path / "d.ooc", names=("x",))
    np.testing.assert_array_equal(dense.to_dask("x", shapes=True).compute(), [[3]] * 5)
    with pytest.raises(KeyError, match="nope"):
        dense.to_dask("nope")


# -- writing: oocstore.write(dask_array) -----------------------------------------------------


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_write_dask_local_schedulers(store_path: Path, backend: str, scheduler: str) -> None:
    """Threaded and process schedulers write exactly the input, with valid checksums."""
    x, y = as_dask()
    with dask.config.set(scheduler=scheduler):
        store = oocstore.write((x, y), store_path, names=("x", "y"), chunks=64)
    assert store.complete
    assert_store(store)


def test_write_dask_chunk_aligned_zarr(tmp_path: Path) -> None:
    """On Zarr each task writes whole chunk files: the result is a plain Zarr array with
    the store's chunks, equal to the input (zarr-python reads it)."""
    import zarr

    x, y = as_dask(chunks=77)  # chunks that do not line up with the store's 64
    path = tmp_path / "s.zarr"
    store = oocstore.write({"x": x, "y": y}, path, chunks=64)
    assert_store(store)
    meta = json.loads((path / "x" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"][0] == 64
    assert sorted(p.name for p in (path / "y").glob("c.*")) == sorted(
        f"c.{k}" for k in range(-(-N // 64))
    )
    group = zarr.open_group(path, mode="r")
    np.testing.assert_array_equal(group["x"][:], data()[0])


def test_write_dask_sharded_compressed_zarr(tmp_path: Path) -> None:
    """Encoded chunk files (zstd, shards) written by tasks decode to the input."""
    x, y = as_dask()
    store = oocstore.write(
        (x, y), tmp_path / "s.zarr", names=("x", "y"), chunks=32, shards=128, compressors="auto"
    )
    assert_store(store)


def test_write_dask_distributed(store_path: Path, client: Any) -> None:
    """A LocalCluster with two worker processes writes exactly the input."""
    x, y = as_dask()
    with dask.config.set(scheduler=client):
        store = oocstore.write((x, y), store_path, names=("x", "y"), chunks=64)
    assert_store(store)


def test_write_dask_single_array_and_numpy_mix(tmp_path: Path) -> None:
    """One Dask array is field "0"; NumPy arrays beside Dask ones are wrapped."""
    x, y = data()
    store = oocstore.write(da.from_array(x, chunks=100), tmp_path / "a.ooc")
    np.testing.assert_array_equal(store["0"][:], x)
    store = oocstore.write((da.from_array(x, chunks=100), y), tmp_path / "b.ooc", names="xy")
    assert_store(store)


def test_write_dask_task_failure_leaves_resumable_store(store_path: Path) -> None:
    """A task raising mid-way: the store opens incomplete with only rows that were written,
    and resume=True completes it to exactly the input."""
    x, y = as_dask(chunks=100)
    bad = x.map_blocks(fail_block, dtype=x.dtype)
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError, match="failed"):
        oocstore.write((bad, y), store_path, names=("x", "y"), chunks=64)
    partial = oocstore.open(store_path)
    assert not partial.complete
    assert len(partial) <= 500
    if len(partial):
        assert_store_prefix(partial, len(partial))
    store = oocstore.write((x, y), store_path, names=("x", "y"), resume=True)
    assert store.complete
    assert_store(store)


def test_write_dask_task_failure_threads_declares_prefix(tmp_path: Path) -> None:
    """With several threads, regions after the failed one may finish first: they are never
    declared; what is declared is written (checksums verify)."""
    x, y = as_dask(chunks=50)
    bad = x.map_blocks(fail_block, dtype=x.dtype)
    path = tmp_path / "s.ooc"
    with dask.config.set(scheduler="threads"), pytest.raises(RuntimeError, match="failed"):
        oocstore.write((bad, y), path, names=("x", "y"))
    partial = oocstore.open(path)
    assert len(partial) <= 500
    assert_store_prefix(partial, len(partial))
    assert_store(oocstore.write((x, y), path, names=("x", "y"), resume=True))


def assert_store_prefix(store: oocstore.Store, n: int) -> None:
    x, y = data()
    np.testing.assert_array_equal(store["x"][:], x[:n])
    np.testing.assert_array_equal(store["y"][:], y[:n])
    assert store.verify() == []


def test_write_dask_resume_inside_a_chunk(tmp_path: Path) -> None:
    """A store committed mid-chunk (written by a plain writer) is finished by Dask: the
    parent writes up to the chunk boundary, tasks the rest."""
    x, y = data()
    path = tmp_path / "s.zarr"
    with oocstore.Writer(path, names=("x", "y"), chunks=64) as w:
        w.append((x[:100], y[:100]))
        w.abort()
    assert len(oocstore.open(path)) == 100
    dx, dy = as_dask()
    assert_store(oocstore.write((dx, dy), path, names=("x", "y"), resume=True))


def test_write_dask_errors(tmp_path: Path) -> None:
    """Unknown chunk sizes and unequal lengths are refused before anything is written."""
    x, y = as_dask()
    unknown = x[x[:, 0] > 10]
    with pytest.raises(BatchError, match="compute_chunk_sizes"):
        oocstore.write(unknown, tmp_path / "u.ooc")
    with pytest.raises(BatchError, match="different numbers of samples"):
        oocstore.write((x, y[:10]), tmp_path / "l.ooc")
    with pytest.raises(ValueError, match="workers="):
        oocstore.write(x, tmp_path / "w.ooc", workers=2)
    assert not (tmp_path / "u.ooc").exists()
    assert not (tmp_path / "l.ooc").exists()


def test_options_a_dask_array_cannot_honour_are_refused(tmp_path: Path) -> None:
    x = da.zeros((10, 3), chunks=5)
    with pytest.raises(ValueError, match=r"length=, ragged= cannot be used when writing a Dask"):
        oocstore.write(x, tmp_path / "s.zarr", length=10, ragged="pack")
