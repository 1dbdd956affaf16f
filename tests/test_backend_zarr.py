"""Zarr-only checks: plain zarr-python reads what oocstore writes, chunking, codecs, sharding,
the committed length over zarr's larger shape, resume, and the lazy array's NumPy indexing.

The backend-independent behaviour runs for zarr through the ``backend`` fixture (conftest).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec
from zarr.errors import UnstableSpecificationWarning

import oocstore
from oocstore.backends.base import BackendOptions
from oocstore.backends.zarr import (
    ATTRIBUTE,
    ZarrArray,
    ZarrBackend,
    chunk_rows_for,
)
from oocstore.backends.zarr.spec import ZarrOptions
from oocstore.manifest import ArraySpec, Manifest
from oocstore.schema import FieldSpec, Schema

# Fixed-width bytes and str have no Zarr v3 spec yet; zarr-python reads them but warns.
unstable_ok = pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")


def same(a: Any, b: Any) -> bool:
    """Equal shape and values (byte order aside; NaN equal to NaN)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def batches(x: np.ndarray, y: np.ndarray, size: int):  # type: ignore[no-untyped-def]
    for i in range(0, len(x), size):
        yield x[i : i + size], y[i : i + size]


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size=(n, 6, 5, 3), dtype=np.uint8)


# -- open formats ----------------------------------------------------------------------------


@unstable_ok
@pytest.mark.parametrize(
    "dtype",
    [
        *("u1", "<i2", ">i4", "<u8", "<f2", ">f4", "<f8", "?", "<c8", ">c16", "<M8[ns]", ">m8[s]"),
        *("S5", "<U3", ">U3"),
    ],
)
def test_plain_zarr_reads_every_dtype(tmp_path: Path, dtype: str) -> None:
    dt = np.dtype(dtype)
    n = 23
    if dt.kind in "SU":
        x = np.array([f"s{i}"[:3] for i in range(n * 2)], dtype=dt).reshape(n, 2)
    elif dt.kind in "Mm":
        x = np.arange(n * 2).astype(dt).reshape(n, 2)
    else:
        x = (np.arange(n * 2) % 7).astype(dt).reshape(n, 2)
    y = np.arange(n, dtype=np.int64)
    path = tmp_path / "s.zarr"
    store = oocstore.write(batches(x, y, 5), path, names=("x", "y"), chunks=4)
    assert store["x"].dtype == dt  # oocstore keeps the exact dtype, byte order included
    assert same(store["x"][:], x)
    group = zarr.open_group(path, mode="r")
    assert sorted(group.array_keys()) == ["x", "y"]
    assert same(group["x"][:], x)
    assert same(group["y"][:], y)
    assert same(zarr.open_array(path / "x", mode="r")[:], x)


def test_manifest_is_the_groups_attribute(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    oocstore.write(batches(images(10), np.arange(10), 3), path, names=("img", "label"))
    group = zarr.open_group(path, mode="r")
    doc = group.attrs[ATTRIBUTE]
    assert doc["format"] == "oocstore"
    assert doc["backend"] == "zarr"
    assert doc["length"] == 10
    assert doc["complete"] is True
    assert set(doc["arrays"]) == {"img", "label"}
    # Listing members sees only the fields: the writer's lock lives beside the store.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sorted(name for name, _ in group.members()) == ["img", "label"]


def test_store_without_manifest_is_not_an_oocstore_store(tmp_path: Path) -> None:
    path = tmp_path / "plain.zarr"
    zarr.create_array(path / "x", shape=(3,), dtype="u1")
    zarr.open_group(path, mode="a")
    with pytest.raises(oocstore.UnknownBackendError, match="not an oocstore store"):
        oocstore.open(path)


def test_tampered_group_metadata_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    oocstore.write([np.zeros((4, 2))], path)
    doc = json.loads((path / "zarr.json").read_text())
    doc["attributes"][ATTRIBUTE]["arrays"]["0"]["length"] = 5
    (path / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(oocstore.CorruptStoreError, match=r"zarr\.json"):
        oocstore.open(path)
    (path / "zarr.json").write_text('{"oocstore": [' * 100)
    with pytest.raises(oocstore.CorruptStoreError, match=r"zarr\.json"):
        oocstore.open(path)


def test_array_shorter_than_the_commit_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    oocstore.write([np.zeros((40, 2))], path)
    meta = path / "0" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"][0] = 39
    meta.write_text(json.dumps(doc))
    with pytest.raises(oocstore.CorruptStoreError, match="39 rows but the manifest commits 40"):
        oocstore.open(path)


def test_missing_chunk_file_is_corrupt_not_zeros(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    store = oocstore.write([np.ones((40, 2))], path, chunks=8)
    (path / "0" / "c.2.0").unlink()
    assert same(store["0"][:16], np.ones((16, 2)))
    with pytest.raises(oocstore.CorruptStoreError, match=r"c\.2\.0.*missing"):
        store["0"][20]


def test_structured_dtype_is_refused_naming_backend_and_dtype(tmp_path: Path) -> None:
    x = np.zeros(4, dtype=[("a", "<i4"), ("b", "<f8")])
    with pytest.raises(oocstore.UnsupportedDtypeError, match=r"zarr backend.*\('a', '<i4'\)"):
        oocstore.write([x], tmp_path / "s.zarr")
    assert not ZarrBackend.supports_dtype(x.dtype)
    assert ZarrBackend.supports_dtype(np.dtype("U3"))


# -- chunks, codecs, shards -----------------------------------------------------------------


def test_default_chunks_are_whole_samples_of_tens_of_megabytes(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    x = np.zeros((3000, 64, 64, 3), dtype=np.uint8)
    oocstore.write((x, np.arange(3000)), path, names=("img", "label"))
    img = zarr.open_array(path / "img", mode="r")
    rows = chunk_rows_for(64 * 64 * 3)
    assert img.chunks == (rows, 64, 64, 3)
    assert 2**20 <= rows * 64 * 64 * 3 <= 32 * 2**20
    # capped at the known length: a short array gets no oversized chunk
    assert zarr.open_array(path / "label", mode="r").chunks == (min(chunk_rows_for(8), 3000),)
    assert oocstore.open(path)["img"].chunks == (rows, 64, 64, 3)


def test_chunks_option_per_array(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    x, y = images(50), np.arange(50)
    oocstore.write(batches(x, y, 7), path, names=("img", "label"), chunks={"img": 6})
    assert zarr.open_array(path / "img", mode="r").chunks == (6, 6, 5, 3)
    # the default, at most the first allocation (the length is unknown here)
    assert 50 <= zarr.open_array(path / "label", mode="r").chunks[0] <= chunk_rows_for(8)
    oocstore.write(batches(x, y, 7), path, names=("img", "label"), chunks=9, overwrite=True)
    assert zarr.open_array(path / "img", mode="r").chunks == (9, 6, 5, 3)
    assert zarr.open_array(path / "label", mode="r").chunks == (9,)
    files = sorted(p.name for p in (path / "img").iterdir() if p.name != "zarr.json")
    assert files == [f"c.{i}.0.0.0" for i in sorted(range(6), key=str)]


@pytest.mark.parametrize("chunks", [0, -3, 2.5, "big"])
def test_bad_chunks_are_refused(tmp_path: Path, chunks: Any) -> None:
    with pytest.raises(ValueError, match="chunks must be a positive number of rows"):
        oocstore.write([np.zeros((4, 2))], tmp_path / "s.zarr", chunks=chunks)


@pytest.mark.parametrize(
    ("compressors", "name"),
    [
        (None, None),
        (ZstdCodec(level=3), "zstd"),
        (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), "blosc"),
        (GzipCodec(level=1), "gzip"),
        ("auto", "zstd"),
    ],
)
def test_compressors_pass_through(tmp_path: Path, compressors: Any, name: str | None) -> None:
    path = tmp_path / "s.zarr"
    x = np.repeat(np.arange(200, dtype="<f4"), 16).reshape(200, 16)  # compressible
    y = np.arange(200)
    store = oocstore.write(
        batches(x, y, 13), path, names=("x", "y"), chunks=16, compressors=compressors
    )
    codecs = json.loads((path / "x" / "zarr.json").read_text())["codecs"]
    assert [c["name"] for c in codecs] == ["bytes"] + ([name] if name else [])
    if name == "zstd" and compressors != "auto":
        assert codecs[1]["configuration"]["level"] == 3
    assert same(store["x"][:], x)
    assert same(store["x"][[3, 150, 7]], x[[3, 150, 7]])
    assert same(zarr.open_array(path / "x", mode="r")[:], x)
    chunk = (path / "x" / "c.0.0").stat().st_size
    assert (chunk < 16 * 16 * 4) == (name is not None)


@pytest.mark.filterwarnings("ignore::zarr.errors.ZarrUserWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_codec_not_known_here_goes_through_zarr(tmp_path: Path) -> None:
    from zarr.codecs.numcodecs import BZ2

    path = tmp_path / "s.zarr"
    x, y = images(40), np.arange(40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        codec = BZ2(level=1)
    with oocstore.Writer(path, names=("img", "label"), chunks=6, compressors=codec) as w:
        for b in batches(x, y, 7):
            w.append(b)
        w.commit()
    store = oocstore.open(path)
    assert not store["img"]._reader.layout.native  # read and written by zarr-python
    assert same(store["img"][:], x)
    assert same(store["img"][[39, 0]], x[[39, 0]])
    assert same(zarr.open_array(path / "img", mode="r")[:], x)


def drive(path: Path, options: BackendOptions, arrays: dict[str, np.ndarray], step: int) -> None:
    """Write ``arrays`` through the backend as the writer does: whole units, a partial unit at
    each commit (rewritten whole later), a commit after every ``step`` rows, then close."""
    b = ZarrBackend(path, options)
    b.create()
    n = len(next(iter(arrays.values())))
    schema = Schema(tuple(FieldSpec(k, v.shape[1:], v.dtype) for k, v in arrays.items()))
    for k, v in arrays.items():
        b.create_array(k, v.dtype, v.shape[1:], 4)

    def manifest(length: int, complete: bool = False) -> Manifest:
        specs = {k: ArraySpec(v.dtype, v.shape[1:], length) for k, v in arrays.items()}
        return Manifest("zarr", schema, length, complete, arrays=specs)

    prev = 0
    for stop in [*range(step, n, step), n]:
        for k, v in arrays.items():
            start = prev // b.chunk_rows(k) * b.chunk_rows(k)  # the partial unit again, whole
            b.write(k, start, v[start:stop])
        b.sync(dict.fromkeys(arrays, stop))
        b.write_manifest(manifest(stop))
        prev = stop
    b.finalize(dict.fromkeys(arrays, n))
    b.write_manifest(manifest(n, complete=True))
    b.close()


@pytest.mark.parametrize("compressors", [None, ZstdCodec(level=1)])
@pytest.mark.parametrize("shards", [True, 12])
def test_sharded_arrays_read_by_zarr(tmp_path: Path, compressors: Any, shards: Any) -> None:
    path = tmp_path / "s.zarr"
    x = images(101)
    options = ZarrOptions(chunks=4, compressors=compressors, shards=shards)
    drive(path, options, {"img": x}, step=9)
    meta = json.loads((path / "img" / "zarr.json").read_text())
    assert meta["codecs"][0]["name"] == "sharding_indexed"
    assert meta["codecs"][0]["configuration"]["chunk_shape"] == [4, 6, 5, 3]
    shard = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    assert shard % 4 == 0
    if shards == 12:
        assert shard == 12
    files = [p for p in (path / "img").iterdir() if p.name.startswith("c.")]
    assert len(files) == -(-101 // shard)
    assert same(zarr.open_array(path / "img", mode="r")[:], x)
    store = oocstore.open(path)
    assert same(store["img"][:], x)
    assert same(store["img"][[100, 0, 50, 51]], x[[100, 0, 50, 51]])


@pytest.mark.parametrize("compressors", [None, ZstdCodec(level=1), GzipCodec(level=1)])
def test_partial_chunks_at_commits_are_rewritten_whole(tmp_path: Path, compressors: Any) -> None:
    path = tmp_path / "s.zarr"
    x = np.arange(57 * 3, dtype="<i8").reshape(57, 3)
    drive(path, BackendOptions(chunks=10, compressors=compressors), {"x": x}, step=7)
    assert same(zarr.open_array(path / "x", mode="r")[:], x)
    assert same(oocstore.open(path)["x"][:], x)
    assert sorted(p.name for p in (path / "x").iterdir()) == sorted(
        ["zarr.json", *(f"c.{i}.0" for i in range(6))]
    )


# -- commits, growth, resume ------------------------------------------------------------------


def test_committed_length_hides_rows_zarr_already_has(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    x = np.arange(300 * 4, dtype=np.float32).reshape(300, 4)
    w = oocstore.Writer(path, names=("x",), chunks=16)
    w.append(x[:50])
    w.commit()
    old = oocstore.open(path)
    w.append(x[50:])
    w.commit()
    assert zarr.open_array(path / "x", mode="r").shape[0] > 50  # zarr's shape ran ahead
    view = old["x"]
    assert len(old) == 50
    assert view.shape == (50, 4)
    assert len(view) == 50
    assert same(np.asarray(view), x[:50])
    assert same(view[-1], x[49])
    assert same(view[40:999], x[40:50])
    assert same(view[[-1, 0]], x[[49, 0]])
    with pytest.raises(IndexError):
        view[50]
    with pytest.raises(IndexError):
        view[[0, 50]]
    assert len(oocstore.open(path)) == 300
    w.close()
    assert zarr.open_array(path / "x", mode="r").shape == (300, 4)  # trimmed at close


@pytest.mark.parametrize("compressors", [None, ZstdCodec(level=1)])
def test_resume_continues_inside_a_chunk(tmp_path: Path, compressors: Any) -> None:
    path = tmp_path / "s.zarr"
    x, y = images(100), np.arange(100)
    w = oocstore.Writer(path, names=("img", "label"), chunks=8, compressors=compressors)
    w.append((x[:43], y[:43]))
    w.commit()
    w.append((x[43:60], y[43:60]))  # written but never committed: a crash loses it
    w.abort = lambda: None  # type: ignore[method-assign]
    w._release()
    assert len(oocstore.open(path)) == 43
    with oocstore.Writer(path, resume=True, compressors=compressors) as w2:
        assert w2.skip == 43
        w2.append((x, y))
    store = oocstore.open(path)
    assert store.complete
    assert same(store["img"][:], x)
    assert same(zarr.open_array(path / "img", mode="r")[:], x)
    assert same(zarr.open_array(path / "label", mode="r")[:], y)


def test_disk_full_is_disk_full_error_and_keeps_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.zarr"
    w = oocstore.Writer(path, names=("x",), chunks=4)
    w.append(np.ones((10, 3)))
    w.commit()
    real = os.pwrite

    def full(fd: int, data: Any, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    w.append(np.ones((20, 3)))  # staged: the disk is touched at the commit
    with pytest.raises(oocstore.DiskFullError, match="no space left"):
        w.commit()
    monkeypatch.setattr(os, "pwrite", real)
    w.abort()
    store = oocstore.open(path)
    assert len(store) == 10
    assert same(store["x"][:], np.ones((10, 3)))


def test_ragged_fields_read_by_zarr(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    samples = [np.full((1 + i % 4, 2 + i % 3), i, dtype=np.int16) for i in range(30)]
    store = oocstore.write(
        ([samples[i : i + 4]] for i in range(0, 30, 4)), path, names=("img",), ragged="pad"
    )
    for i, s in enumerate(samples):
        assert same(store.sample("img", i), s)
    group = zarr.open_group(path, mode="r")
    padded, shapes = group["img"][:], group["img.shapes"][:]
    for i, s in enumerate(samples):
        assert tuple(shapes[i]) == s.shape
        assert same(padded[i][: s.shape[0], : s.shape[1]], s)


# -- the lazy array ----------------------------------------------------------------------------


KEYS: list[Any] = [
    0,
    -1,
    np.int64(5),
    slice(None),
    slice(3, 17),
    slice(None, None, 4),
    slice(None, None, -1),
    slice(30, 2, -3),
    slice(-5, None),
    slice(5, 5),
    [3, 1, 3],
    np.array([[0, 2], [39, 1]]),
    np.arange(40) % 3 == 0,
    (5, 2),
    (slice(2, 9), 1, slice(None, None, -1)),
    (Ellipsis, 0),
    (1, Ellipsis, slice(1, 3)),
    (None, 3),
    (slice(None), None, 0),
    ([1, 2], [0, 2]),
    (slice(0, 40, 7), [2, 0]),
    np.ones((40, 4, 3), dtype=bool),
    (),
    Ellipsis,
]


@pytest.fixture(scope="module")
def lazy(tmp_path_factory: pytest.TempPathFactory) -> tuple[ZarrArray, np.ndarray]:
    x = np.arange(40 * 4 * 3, dtype=np.int32).reshape(40, 4, 3)
    path = tmp_path_factory.mktemp("lazy") / "s.zarr"
    store = oocstore.write([x], path, chunks=6)
    view = store["0"]
    assert isinstance(view, ZarrArray)
    return view, x


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_lazy_indexing_is_numpys(lazy: tuple[ZarrArray, np.ndarray], key: Any) -> None:
    view, x = lazy
    got, want = view[key], x[key]
    assert isinstance(got, np.ndarray | np.generic)
    assert np.shape(got) == np.shape(want)
    assert same(got, want)


@pytest.mark.parametrize("key", [40, -41, [0, 40], np.zeros(39, dtype=bool), 1.5, "a"])
def test_lazy_indexing_errors_are_numpys(lazy: tuple[ZarrArray, np.ndarray], key: Any) -> None:
    view, _ = lazy
    with pytest.raises(IndexError):
        view[key]


def test_lazy_array_protocol(lazy: tuple[ZarrArray, np.ndarray]) -> None:
    view, x = lazy
    assert (view.shape, view.dtype, view.ndim, len(view)) == (x.shape, x.dtype, 3, 40)
    assert view.size == x.size
    assert view.nbytes == x.nbytes
    assert same(np.asarray(view), x)
    assert np.asarray(view, dtype=np.float64).dtype == np.float64
    assert same(np.stack(list(view)), x)
    assert view.tolist() == x.tolist()
    with pytest.raises(ValueError, match="copy"):
        np.asarray(view, copy=False)
    copy = pickle.loads(pickle.dumps(view))
    assert same(copy[7], x[7])


def test_store_pickles_and_reads_in_a_new_process_view(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    x = images(30)
    store = oocstore.write([x], path, chunks=7, compressors=ZstdCodec(level=1))
    again = pickle.loads(pickle.dumps(store))
    assert same(again["0"][11:29], x[11:29])


def test_a_replaced_array_is_never_read_as_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    old = oocstore.write([np.zeros((64, 8), dtype=np.uint8)], path, chunks=8)
    view = old["0"]
    assert same(view[3], np.zeros(8))
    oocstore.write([np.ones((64, 8), dtype=np.uint8)], path, chunks=8, overwrite=True)
    with pytest.raises(oocstore.CorruptStoreError, match="open the store again"):
        view[3]
    assert same(oocstore.open(path)["0"][3], np.ones(8))


@unstable_ok
def test_store_written_by_oocstore_is_a_normal_zarr_for_dask_style_reads(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    x, y = images(25), np.arange(25)
    oocstore.write(batches(x, y, 4), path, names=("img", "label"), chunks=5)
    arr = zarr.open(path / "img", mode="r")
    assert arr.nchunks_initialized == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnstableSpecificationWarning)
        assert same(arr[3:22:2, 1], x[3:22:2, 1])


def test_a_view_of_an_older_commit_survives_a_layout_change(tmp_path: Path) -> None:
    """The writer drops the dense array when the field turns ragged; a view still reading it
    keeps it (moved beside the store), as an np.memmap keeps an unlinked .npy file."""
    path = tmp_path / "s.zarr"
    attic = ZarrBackend.attic_path(path)
    dense = np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4)
    w = oocstore.Writer(path, names=("img",))
    w.append(dense)
    w.commit()
    old = oocstore.open(path)
    assert old.layout("img") == "dense"
    w.append([[np.ones((2, 3), dtype=np.uint8), np.ones((6, 1), dtype=np.uint8)]])
    w.commit()
    w.close()
    assert attic.is_dir()  # the dense array, still in use
    assert same(old["img"][:], dense)  # read through the view's directory handle
    new = oocstore.open(path)
    assert new.layout("img") == "padded"
    assert same(new.sample("img", 6), np.ones((6, 1)))
    assert sorted(zarr.open_group(path, mode="r").array_keys()) == ["img", "img.shapes"]
    old.close()
    oocstore.Writer(path, resume=True).close()  # any later writer sweeps what is unused
    assert not attic.exists()
