"""Write then open equals np.concatenate of the batches, for every backend."""

from __future__ import annotations

import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oocstore

from .conftest import SUFFIX
from .strategies import arrays_for, batch_sizes, dtypes, sample_shapes

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bytes (so NaN and NaT compare equal to themselves)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def supported(backend: str, dtype: np.dtype) -> bool:
    """Whether ``backend`` stores ``dtype`` (others must refuse it with a clear error)."""
    if backend == "npy":
        return True
    try:
        mod = oocstore.backends.backend_class(backend)
    except oocstore.BackendUnavailableError:
        return False
    check = getattr(mod, "supports_dtype", None)
    return bool(check(dtype)) if check is not None else True


@st.composite
def datasets(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Two fields (any dtype and shape, and int labels) and how they are cut into batches."""
    n = draw(st.integers(0, 40))
    dtype = draw(dtypes())
    shape = draw(sample_shapes())
    x = draw(arrays_for(dtype, (n, *shape)))
    y = np.arange(n, dtype=np.int64) * 3
    sizes = draw(batch_sizes(n))
    return x, y, sizes


def batches_of(x: np.ndarray, y: np.ndarray, sizes: list[int], form: str):  # type: ignore[no-untyped-def]
    start = 0
    for k in sizes:
        xs, ys = x[start : start + k], y[start : start + k]
        start += k
        if form == "tuple":
            yield xs, ys
        elif form == "dict":
            yield {"x": xs, "y": ys}
        else:
            yield xs


@FIXTURE_OK
@given(data=datasets(), known=st.booleans(), form=st.sampled_from(["tuple", "dict", "array"]))
def test_roundtrip_equals_concatenate(backend: str, data, known: bool, form: str) -> None:  # type: ignore[no-untyped-def]
    x, y, sizes = data
    if not supported(backend, x.dtype):
        return
    names = ("x", "y") if form == "tuple" else ("x",) if form == "array" else None
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"s{SUFFIX[backend]}"
        store = oocstore.write(
            batches_of(x, y, sizes, form),
            path,
            names=names,
            length=len(x) if known else None,
            progress=False,
        )
        assert store.complete
        assert len(store) == len(x)
        assert store.fields == (("x",) if form == "array" else ("x", "y"))
        assert store.schema["x"].dtype == x.dtype
        assert store.schema["x"].shape == x.shape[1:]
        assert same(store["x"][:], x)
        if form != "array":
            assert same(store["y"][:], y)
        batches = list(store.iter_batches(7))
        if len(x):
            assert same(np.concatenate([b[0] for b in batches]).astype(x.dtype), x)
        store.close()


def test_unknown_length_grows_and_trims(store_path: Path) -> None:
    rng = np.random.default_rng(1)
    chunks = [rng.random((int(k), 3), dtype=np.float32) for k in rng.integers(1, 5000, 60)]
    store = oocstore.write(iter(chunks), store_path, names=("x",), progress=False)
    assert same(store["x"][:], np.concatenate(chunks))


def test_length_hint_smaller_than_data_still_grows(store_path: Path) -> None:
    x = np.arange(1000, dtype=np.int32).reshape(500, 2)
    store = oocstore.write((x[i : i + 100] for i in range(0, 500, 100)), store_path, length=10)
    assert same(store["0"][:], x)


def test_length_hint_larger_than_data_is_trimmed(store_path: Path) -> None:
    x = np.arange(1000, dtype=np.int32).reshape(500, 2)
    store = oocstore.write((x[i : i + 100] for i in range(0, 500, 100)), store_path, length=9999)
    assert len(store) == 500
    assert same(store["0"][:], x)


def test_unbatched_samples(store_path: Path) -> None:
    samples = [(np.full((2, 2), i, dtype=np.uint8), i, float(i) / 2) for i in range(10)]
    store = oocstore.write(samples, store_path, batched=False, names=("img", "label", "w"))
    assert len(store) == 10
    assert store["img"].shape == (10, 2, 2)
    assert store["label"].tolist() == list(range(10))
    assert store["w"].dtype == np.float64


def test_whole_arrays_as_source_are_copied_in_blocks(store_path: Path) -> None:
    x = np.arange(300_000, dtype=np.float64).reshape(100_000, 3)
    y = np.arange(100_000)
    store = oocstore.write((x, y), store_path, names=("x", "y"))
    assert same(store["x"][:], x)
    assert same(store["y"][:], y)


def test_memmap_source(tmp_path: Path, store_path: Path) -> None:
    src = np.lib.format.open_memmap(tmp_path / "src.npy", mode="w+", dtype="<f4", shape=(5000, 8))
    src[:] = np.arange(40_000, dtype="<f4").reshape(5000, 8)
    src.flush()
    ro = np.load(tmp_path / "src.npy", mmap_mode="r")
    store = oocstore.write(ro, store_path)
    assert same(store["0"][:], np.asarray(ro))


def test_writer_incremental_and_reprs(store_path: Path) -> None:
    with oocstore.Writer(store_path, names=("x", "y")) as w:
        for i in range(5):
            w.append((np.full((3, 4), i, dtype=np.int16), np.arange(3) + 3 * i))
        w.commit()
        assert "samples" in repr(w)
        w.extend([(np.zeros((1, 4), np.int16), np.array([99]))])
    store = oocstore.open(store_path)
    assert len(store) == 16
    assert store["y"][-1] == 99
    assert "16 samples complete" in repr(store)
    assert store.arrays()[0].shape == (16, 4)
    assert list(store) == ["x", "y"]
    assert dict(store.items()).keys() == {"x", "y"}


def test_zero_size_samples_and_scalars(store_path: Path) -> None:
    x = np.zeros((7, 0, 3), dtype=np.float32)
    store = oocstore.write([(x, np.arange(7))], store_path)
    assert store["0"].shape == (7, 0, 3)
    assert store["1"].tolist() == list(range(7))


def test_open_store_pickles_as_path(store_path: Path) -> None:
    store = oocstore.write([np.zeros((1000, 100), np.float64)], store_path)
    blob = pickle.dumps(store)
    assert len(blob) < 1000
    again = pickle.loads(blob)
    assert same(again["0"][:], store["0"][:])


def test_closed_npy_store_is_plain_npy(tmp_path: Path) -> None:
    x = np.arange(24, dtype=">i4").reshape(6, 2, 2)
    path = tmp_path / "s.ooc"
    oocstore.write([x[:4], x[4:]], path, names=("x",)).close()
    loaded = np.load(path / "x.npy", mmap_mode="r")
    assert same(loaded, x)
    assert same(np.load(path / "x.npy"), x)


def test_incomplete_npy_store_headers_name_the_committed_rows(tmp_path: Path) -> None:
    path = tmp_path / "s.ooc"
    w = oocstore.Writer(path, names=("x",))
    w.append(np.ones((10, 3), np.float32))
    w.commit()
    w.append(np.ones((5, 3), np.float32))
    assert np.load(path / "x.npy", mmap_mode="r").shape == (10, 3)
    assert len(oocstore.open(path)) == 10
    w.close()


def test_store_close_releases_files(store_path: Path) -> None:
    oocstore.write([np.zeros((10, 4))], store_path)
    with oocstore.open(store_path) as store:
        _ = store["0"][3]
    assert store.keys() == ("0",)
    oocstore.write([np.ones((3, 4))], store_path, overwrite=True)
    assert np.asarray(oocstore.open(store_path)["0"]).sum() == 12


def test_iter_batches_checks_its_argument(store_path: Path) -> None:
    store = oocstore.write([np.zeros((10, 4))], store_path)
    with pytest.raises(ValueError, match="batch_size"):
        next(store.iter_batches(0))


def test_refresh_sees_new_commits(store_path: Path) -> None:
    w = oocstore.Writer(store_path, names=("x",))
    w.append(np.zeros((4, 2)))
    w.commit()
    reader = oocstore.open(store_path)
    assert len(reader) == 4
    w.append(np.ones((6, 2)))
    w.commit()
    assert reader.refresh()
    assert len(reader) == 10
    assert not reader.refresh()
    w.close()
    assert reader.refresh()
    assert reader.complete


def interrupted_write(path: Path, batches: list[np.ndarray], **kw) -> None:  # type: ignore[no-untyped-def]
    """Append ``batches`` inside a ``with Writer`` block that then raises RuntimeError."""
    with oocstore.Writer(path, **kw) as w:
        w.extend(batches)
        raise RuntimeError("boom")


def test_exception_inside_with_commits_and_leaves_incomplete(store_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        interrupted_write(store_path, [np.arange(10)])
    store = oocstore.open(store_path)
    assert len(store) == 10
    assert not store.complete


def test_resume_continues_and_skips_stored_samples(store_path: Path) -> None:
    x = np.arange(100, dtype=np.int64)
    with pytest.raises(RuntimeError, match="boom"):
        interrupted_write(store_path, [x[:40]], names=("x",))
    store = oocstore.write(
        (x[i : i + 30] for i in range(0, 100, 30)), store_path, names=("x",), resume=True
    )
    assert store.complete
    assert same(store["x"][:], x)


def test_resume_of_complete_store_appends_only_new_samples(store_path: Path) -> None:
    x = np.arange(50, dtype=np.int64)
    oocstore.write([x[:20]], store_path)
    store = oocstore.write([x[:35], x[35:]], store_path, resume=True)
    assert same(store["0"][:], x)


def test_progress_shows_rate_bytes_and_free_disk(store_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    def slow_batches():  # type: ignore[no-untyped-def]
        for _ in range(4):
            time.sleep(0.3)
            yield np.zeros((1000, 100), np.uint8)

    oocstore.write(slow_batches(), store_path, progress=True)
    err = capsys.readouterr().err
    assert "samples" in err
    assert "written" in err
    assert "free" in err


def test_verify_finds_a_flipped_byte(tmp_path: Path) -> None:
    path = tmp_path / "s.ooc"
    x = np.arange(4000, dtype=np.int32).reshape(1000, 4)
    with oocstore.Writer(path, names=("x",), commit_bytes=4096) as w:
        for i in range(0, 1000, 100):
            w.append(x[i : i + 100])
    store = oocstore.open(path)
    assert store.verify() == []
    store.close()
    with open(path / "x.npy", "r+b") as f:
        f.seek(4096 + 16 * 555 + 3)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x40]))
    damage = oocstore.open(path).verify()
    assert len(damage) == 1
    assert damage[0].field == "x"
    assert damage[0].start <= 555 < damage[0].stop
    assert "rows" in str(damage[0])


def test_verify_ragged_and_resumed_stores(tmp_path: Path) -> None:
    path = tmp_path / "s.ooc"
    samples = [np.full((i % 5 + 1, 2), i, np.int16) for i in range(50)]
    with pytest.raises(RuntimeError, match="boom"):
        interrupted_write(path, [(samples[:20],)], names=("x",))
    oocstore.write(
        ([samples[i : i + 10]] for i in range(0, 50, 10)), path, names=("x",), resume=True
    )
    store = oocstore.open(path)
    assert store.layout("x") == "padded"
    assert store.verify() == []


@pytest.mark.parametrize("layout", ["pad", "pack", "dense"])
def test_convert_keeps_fields_layouts_and_attrs(tmp_path: Path, layout: str) -> None:
    if layout == "dense":
        samples = [np.full((3, 2), i, np.int16) for i in range(30)]
    else:
        samples = [np.full((i % 4 + 1, 2), i, np.int16) for i in range(30)]
    src = oocstore.write(
        ([samples[i : i + 7], np.arange(i, min(i + 7, 30))] for i in range(0, 30, 7)),
        tmp_path / "a.ooc",
        names=("x", "y"),
        ragged="pack" if layout == "pack" else "pad",
        fill=-1,
        attrs={"classes": ["a", "b"]},
    )
    dst = oocstore.convert(src, tmp_path / "b.ooc")
    assert dst.fields == src.fields
    assert dst.attrs == {"classes": ["a", "b"]}
    assert dst.layout("x") == src.layout("x")
    for i in range(30):
        assert same(dst.sample("x", i), samples[i])
    assert same(dst["y"][:], src["y"][:])
    if layout == "pad":
        assert same(np.asarray(dst["x"]), np.asarray(src["x"]))
    assert dst.verify() == []
