"""Zarr stores at fsspec URLs: memory:// and file:// (the filesystems available offline)."""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import oocstore
from oocstore.errors import (
    StoreExistsError,
    StoreNotFoundError,
    UnknownBackendError,
    UnsupportedStorageError,
)

from .parallel_sources import Samples

fsspec = pytest.importorskip("fsspec")

X = (np.arange(1000 * 6, dtype=np.float32).reshape(1000, 6) * 0.25) % 17
Y = np.arange(1000, dtype=np.int64) * 5


@pytest.fixture
def memory_url() -> Iterator[str]:
    """A fresh memory:// URL, cleared afterwards (the memory filesystem is process-global)."""
    url = f"memory://oocstore-tests/{uuid.uuid4().hex}/s.zarr"
    yield url
    fs = fsspec.filesystem("memory")
    root = url.removeprefix("memory://").rsplit("/", 1)[0]
    if fs.exists(root):
        fs.rm(root, recursive=True)


def check(store: oocstore.Store, n: int = len(X)) -> None:
    np.testing.assert_array_equal(store["x"][:], X[:n])
    np.testing.assert_array_equal(store["y"][:], Y[:n])
    assert store.verify() == []


def test_memory_round_trip_and_resume(memory_url: str) -> None:
    """Write, commit part, resume, read back; the store pickles as its URL."""
    with oocstore.Writer(memory_url, names=("x", "y"), chunks=64) as w:
        w.append((X[:300], Y[:300]))
        w.abort()
    partial = oocstore.open(memory_url)
    assert len(partial) == 300
    assert not partial.complete
    store = oocstore.write(
        iter([(X[:500], Y[:500]), (X[500:], Y[500:])]), memory_url, names=("x", "y"), resume=True
    )
    assert store.complete
    check(store)
    assert store.url == memory_url
    again = pickle.loads(pickle.dumps(store))
    check(again)
    assert store.to_dask("x").chunks[0][0] == 64
    np.testing.assert_array_equal(store.to_dask("x").compute(), X)


def test_file_url_same_format_as_local(tmp_path: Path) -> None:
    """A store written at a file:// URL is the same Zarr store as one written at its path:
    plain zarr and oocstore's local reader open it."""
    import zarr

    path = tmp_path / "s.zarr"
    store = oocstore.write((X, Y), f"file://{path}", names=("x", "y"), chunks=100)
    check(store)
    local = oocstore.open(path)
    assert local.url is None
    check(local)
    np.testing.assert_array_equal(zarr.open_group(path, mode="r")["x"][:], X)
    assert sorted(p.name for p in (path / "y").glob("c.*")) == [f"c.{k}" for k in range(10)]


def test_dask_write_to_file_url_with_processes(tmp_path: Path) -> None:
    """Dask tasks in other processes write chunk files through fsspec (shared storage)."""
    dask = pytest.importorskip("dask")
    da = pytest.importorskip("dask.array")
    url = f"file://{tmp_path / 's.zarr'}"
    with dask.config.set(scheduler="processes"):
        store = oocstore.write(
            (da.from_array(X, chunks=130), da.from_array(Y, chunks=130)),
            url,
            names=("x", "y"),
            chunks=64,
        )
        check(store)
        assert float(store.to_dask("x").sum().compute()) == pytest.approx(float(X.sum()))


def test_url_errors(memory_url: str) -> None:
    """Existing stores are not replaced silently; a URL is always Zarr; absent is absent."""
    oocstore.write((X[:10], Y[:10]), memory_url, names=("x", "y"))
    with pytest.raises(StoreExistsError, match="overwrite=True"):
        oocstore.write((X[:10], Y[:10]), memory_url, names=("x", "y"))
    check(oocstore.write((X, Y), memory_url, names=("x", "y"), overwrite=True))
    with pytest.raises(UnknownBackendError, match="Zarr"):
        oocstore.Writer(memory_url + "2", backend="npy")
    with pytest.raises(StoreNotFoundError, match="no store"):
        oocstore.open(memory_url + "-missing")


def test_dask_write_to_memory_url(memory_url: str) -> None:
    """Threads share the process's memory filesystem and write it; other processes cannot,
    and say so instead of declaring rows that never reached the store."""
    dask = pytest.importorskip("dask")
    da = pytest.importorskip("dask.array")
    arrays = (da.from_array(X, chunks=100), da.from_array(Y, chunks=100))
    with dask.config.set(scheduler="threads"):
        check(oocstore.write(arrays, memory_url, names=("x", "y"), chunks=64))
    with pytest.raises(UnsupportedStorageError, match="memory"):
        oocstore.write(Samples(50), memory_url + "2", workers=2)
    assert len(oocstore.open(memory_url + "2")) == 0
