"""One case per error: the specific exception, and a message that names what went wrong."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import oocstore
from oocstore.errors import OocstoreError


def write_store(path: Path, **kw) -> oocstore.Store:  # type: ignore[no-untyped-def]
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    return oocstore.write([(x, np.arange(10))], path, names=("x", "y"), **kw)


# -- input discipline ------------------------------------------------------------------------


def test_dtype_drift_is_refused_naming_field_and_batch(store_path: Path) -> None:
    with pytest.raises(oocstore.DtypeError, match=r"batch 1, field 'y'.*int64.*float64") as e:
        oocstore.write(
            [(np.zeros((2, 3)), np.arange(2)), (np.zeros((2, 3)), np.ones(2))],
            store_path,
            names=("x", "y"),
        )
    assert e.value.field == "y"
    assert e.value.batch_index == 1
    assert isinstance(e.value, ValueError)
    store = oocstore.open(store_path)
    assert len(store) == 2
    assert not store.complete


def test_safe_casts_are_applied(store_path: Path) -> None:
    store = oocstore.write(
        [np.zeros(3, np.float64), np.ones(2, np.float32), np.arange(2, dtype=np.int32)], store_path
    )
    assert store["0"].dtype == np.float64
    assert store["0"].tolist() == [0, 0, 0, 1, 1, 0, 1]


def test_float_to_int_never_silent(store_path: Path) -> None:
    bad = np.array([255.7, 300, -1, np.nan])
    with pytest.raises(oocstore.DtypeError, match="cast"):
        oocstore.write([np.zeros(2, np.uint8), bad], store_path)


def test_unsafe_cast_still_refuses_nan_and_out_of_range(store_path: Path) -> None:
    with pytest.raises(oocstore.DtypeError, match="NaN, infinite or out of range"):
        oocstore.write(
            [np.zeros(2, np.uint8), np.array([1.0, np.nan])], store_path, casting="unsafe"
        )


def test_same_kind_cast_checks_range(store_path: Path, tmp_path: Path) -> None:
    with pytest.raises(oocstore.DtypeError, match="out of range"):
        oocstore.write([np.zeros(2, np.int8), np.array([1, 300])], store_path, casting="same_kind")
    ok = oocstore.write(
        [np.zeros(2, np.int8), np.array([1, -100])], tmp_path / "ok.ooc", casting="same_kind"
    )
    assert ok["0"].tolist() == [0, 0, 1, -100]


def test_longer_strings_hint_names_a_wider_dtype_not_a_cast(tmp_path: Path) -> None:
    with pytest.raises(oocstore.DtypeError, match=r"batch 1, field '0'.*<U2.*<U8") as e:
        oocstore.write([np.array(["ab"]), np.array(["abcdefgh"])], tmp_path / "s.ooc")
    assert "casting=" not in str(e.value)
    assert "dtype='U8'" in str(e.value)


_NUMERIC_AND_TEXT = [
    *(np.dtype(c) for c in "?bBhHiIlLqQefdgFD"),
    *(np.dtype(f"U{n}") for n in (1, 2, 8)),
    *(np.dtype(f"S{n}") for n in (1, 2, 8)),
]


@settings(max_examples=80)
@given(
    expected=st.sampled_from(_NUMERIC_AND_TEXT),
    actual=st.sampled_from(_NUMERIC_AND_TEXT),
    casting=st.sampled_from(["no", "equiv", "safe", "same_kind"]),
)
def test_no_refusal_suggests_a_cast_that_loses_values(
    expected: np.dtype, actual: np.dtype, casting: str
) -> None:
    from oocstore.schema import conform_dtype

    values = np.zeros(2, dtype=actual)
    try:
        conform_dtype(values, expected, casting=casting, field="f", batch_index=3)  # type: ignore[arg-type]
    except oocstore.DtypeError as err:
        msg = str(err)
        assert "batch 3, field 'f'" in msg
        for weaker in ("same_kind", "unsafe"):
            assert f"casting='{weaker}'" not in msg
        if "casting='safe'" in msg:  # only offered where NumPy calls the cast safe
            assert np.can_cast(actual, expected, "safe")
        for suggested in re.findall(r"dtype='([^']+)'", msg):  # a dtype holding both
            target = np.dtype(suggested)
            assert np.can_cast(expected, target, "safe"), (expected, target)
            assert np.can_cast(actual, target, "safe"), (actual, target)


def test_byte_order_is_normalised(store_path: Path) -> None:
    store = oocstore.write([np.arange(3, dtype="<i4"), np.arange(3, dtype=">i4")], store_path)
    assert store["0"].dtype == np.dtype("<i4")
    assert store["0"].tolist() == [0, 1, 2, 0, 1, 2]


def test_missing_batch_axis_is_never_broadcast(store_path: Path) -> None:
    with pytest.raises(oocstore.RaggedError, match=r"batch 1, field '0'.*number of axes"):
        oocstore.write([np.zeros((4, 3)), np.zeros(3)], store_path)


def test_object_arrays_are_refused(store_path: Path) -> None:
    with pytest.raises(oocstore.UnsupportedDtypeError, match="object"):
        oocstore.write([np.array([1, "a", None], dtype=object)], store_path)
    with pytest.raises(oocstore.UnsupportedDtypeError, match="object"):
        oocstore.write([([1, "a", None],)], store_path)


def test_missing_and_extra_fields(store_path: Path) -> None:
    with pytest.raises(oocstore.BatchError, match=r"batch 1.*missing \['b'\], unexpected \['c'\]"):
        oocstore.write(
            [{"a": np.zeros(2), "b": np.zeros(2)}, {"a": np.zeros(2), "c": np.zeros(2)}], store_path
        )


def test_fields_of_unequal_length(store_path: Path) -> None:
    with pytest.raises(oocstore.BatchError, match="different numbers of samples"):
        oocstore.write([(np.zeros(3), np.zeros(4))], store_path)


def test_scalar_batch_needs_batched_false(store_path: Path) -> None:
    with pytest.raises(oocstore.BatchError, match="batched=False"):
        oocstore.write([1, 2, 3], store_path)


def test_names_must_fit_the_batch(store_path: Path) -> None:
    with pytest.raises(oocstore.BatchError, match="names= gives 3"):
        oocstore.write([(np.zeros(2), np.zeros(2))], store_path, names=("a", "b", "c"))


def test_ragged_error_mode(store_path: Path) -> None:
    with pytest.raises(oocstore.RaggedError, match=r"batch 1, field 'img'.*\(4, 4\).*\(5, 4\)"):
        oocstore.write(
            [np.zeros((2, 4, 4)), np.zeros((2, 5, 4))], store_path, names=("img",), ragged="error"
        )


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", "..", "x.npy", "", "a b"])
def test_unsafe_field_names(store_path: Path, name: str) -> None:
    with pytest.raises(oocstore.FieldNameError, match="is not allowed"):
        oocstore.write([{name: np.zeros(2)}], store_path)
    assert not (store_path.parent / "x.npy").exists()


def test_empty_stream(store_path: Path) -> None:
    with pytest.raises(oocstore.EmptySourceError, match="yielded no batch"):
        oocstore.write(iter([]), store_path)
    assert not store_path.exists()


# -- stores on disk ---------------------------------------------------------------------------


def test_existing_store_needs_overwrite(store_path: Path) -> None:
    write_store(store_path)
    with pytest.raises(oocstore.StoreExistsError, match=r"overwrite=True.*resume=True"):
        write_store(store_path)
    assert len(write_store(store_path, overwrite=True)) == 10


def test_overwrite_never_deletes_a_foreign_directory(tmp_path: Path) -> None:
    target = tmp_path / "photos"
    target.mkdir()
    (target / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(oocstore.StoreExistsError, match="not an oocstore store"):
        write_store(target, overwrite=True)
    assert (target / "holiday.jpg").read_bytes() == b"precious"


def test_unknown_backend(tmp_path: Path) -> None:
    with pytest.raises(oocstore.UnknownBackendError, match="choose one of"):
        write_store(tmp_path / "s", backend="parquet")


def test_open_missing_and_foreign(tmp_path: Path) -> None:
    with pytest.raises(oocstore.StoreNotFoundError):
        oocstore.open(tmp_path / "nope.ooc")
    (tmp_path / "dir").mkdir()
    with pytest.raises(oocstore.UnknownBackendError, match="not an oocstore store"):
        oocstore.open(tmp_path / "dir")


def test_writer_closed(store_path: Path) -> None:
    w = oocstore.Writer(store_path)
    w.append(np.zeros(2))
    w.close()
    with pytest.raises(oocstore.WriterClosedError, match="closed"):
        w.append(np.zeros(2))


# -- tampered npy stores ----------------------------------------------------------------------


def tamper_manifest(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads((path / "oocstore.json").read_text())
    change(doc)
    (path / "oocstore.json").write_text(json.dumps(doc))


def _set_shape(doc, shape):  # type: ignore[no-untyped-def]
    doc["fields"][0]["shape"] = shape
    doc["arrays"]["x"]["shape"] = shape


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.update(version=99), "newer than this oocstore"),
        (lambda d: d.update(format="other"), "not an oocstore manifest"),
        (lambda d: d.update(length=-1), "non-negative integer"),
        (lambda d: d.update(length=10**6), "rows but the store"),
        (lambda d: _set_shape(d, [-4]), "shape"),
        (lambda d: _set_shape(d, [2**40, 2**40]), "shape|absurd"),
        (
            lambda d: (
                d["arrays"]["x"].update(length=10**6)
                or d.update(length=10**6)
                or d["arrays"]["y"].update(length=10**6)
            ),
            "too short|manifest says",
        ),
        (lambda d: d["fields"][0].update(shape=[2]), r"field 'x' is float32\[2\].*rows of"),
        (lambda d: d["fields"][0].update(dtype="<f8"), r"field 'x' is float64\[4\].*rows of"),
        (lambda d: d["fields"][0].update(name="../../etc"), "not allowed"),
        (lambda d: d["fields"][0].update(dtype="|O"), "object"),
        (lambda d: d["fields"][0].update(dtype=[["a"]]), "not a valid dtype"),
        (lambda d: d.update(arrays={**d["arrays"], "ghost": d["arrays"]["x"]}), "no field"),
        (lambda d: d.update(backend="rar"), "unknown backend"),
    ],
)
def test_tampered_manifest(tmp_path: Path, change, match: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "s.ooc"
    write_store(path).close()
    tamper_manifest(path, change)
    with pytest.raises(oocstore.CorruptStoreError, match=match) as e:
        oocstore.open(path)
    assert isinstance(e.value, ValueError)
    assert "oocstore.json" in str(e.value) or ".npy" in str(e.value)


@pytest.mark.parametrize(
    "text",
    ["{", "[]", "null", "{" * 100_000 + "}" * 100_000, '{"format": NaN}', "\udcff"],
)
def test_garbage_manifest(tmp_path: Path, text: str) -> None:
    path = tmp_path / "s.ooc"
    write_store(path).close()
    (path / "oocstore.json").write_bytes(text.encode("utf8", "surrogateescape"))
    with pytest.raises(oocstore.CorruptStoreError):
        oocstore.open(path)


def test_truncated_field_file(tmp_path: Path) -> None:
    path = tmp_path / "s.ooc"
    write_store(path).close()
    os.truncate(path / "x.npy", 4096 + 10)
    with pytest.raises(oocstore.CorruptStoreError, match=r"too short.*truncated"):
        oocstore.open(path)


def test_tampered_npy_header(tmp_path: Path) -> None:
    path = tmp_path / "s.ooc"
    write_store(path).close()
    with open(path / "x.npy", "r+b") as f:
        f.seek(10)
        f.write(b"{'descr': '<f8', 'shape': (99999999999999999999,), }")
    with pytest.raises(oocstore.CorruptStoreError, match=r"x\.npy"):
        oocstore.open(path)


def test_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    path = tmp_path / "s.ooc"
    write_store(path).close()
    outside = tmp_path / "outside.npy"
    np.save(outside, np.zeros((10, 4), np.float32))
    (path / "x.npy").unlink()
    (path / "x.npy").symlink_to(outside)
    with pytest.raises(oocstore.CorruptStoreError, match="cannot open"):
        oocstore.open(path)


def test_every_error_is_an_oocstore_error() -> None:
    for name in oocstore.errors.__all__:
        cls = getattr(oocstore.errors, name)
        assert issubclass(cls, OocstoreError) or issubclass(cls, UserWarning), name


def _packed_store(path: Path) -> None:
    imgs = [np.full((i % 3 + 1, 2), i, np.uint8) for i in range(6)]
    oocstore.write([(imgs, np.arange(6))], path, names=("img", "y"), ragged="pack").close()


@pytest.mark.parametrize(
    ("array", "index", "value", "match"),
    [
        ("offsets", 2, 10**6, "sample 2 .*outside the .* stored values"),
        ("offsets", 0, -1, "sample 0 .*outside"),
        ("shapes", 4, 10**9, "sample 4 .*outside"),
        ("shapes", 1, -2, "sample 1 has a negative shape"),
    ],
)
def test_tampered_packed_offsets_and_shapes(
    tmp_path: Path, array: str, index: int, value: int, match: str
) -> None:
    """Offsets or shapes pointing outside the values are a CorruptStoreError naming the field,
    never a bare ValueError or IndexError from slicing."""
    path = tmp_path / "s.ooc"
    _packed_store(path)
    arr = np.load(path / f"img.{array}.npy", mmap_mode="r+")
    arr[index] = value
    arr.flush()
    del arr
    with oocstore.open(path) as store:
        assert store.layout("img") == "packed"
        with pytest.raises(oocstore.CorruptStoreError, match=rf"'img'.*{match}"):
            store["img"]
        with pytest.raises(oocstore.CorruptStoreError, match=match):
            store.sample("img", 0)
        assert store["y"].tolist() == list(range(6))  # the other fields still read


def test_tampered_padded_shape(tmp_path: Path) -> None:
    """A padded field's true shape larger than the padded shape is refused on reading it."""
    path = tmp_path / "s.ooc"
    imgs = [np.full((i % 3 + 1, 2), i, np.uint8) for i in range(6)]
    oocstore.write([(imgs,)], path, names=("img",)).close()
    shapes = np.load(path / "img.shapes.npy", mmap_mode="r+")
    shapes[3] = (7, 2)
    shapes.flush()
    del shapes
    with oocstore.open(path) as store:
        assert store.sample("img", 2).shape == (3, 2)
        with pytest.raises(oocstore.CorruptStoreError, match=r"sample 3 has shape \[7, 2\]"):
            store.sample("img", 3)
        assert [d.array for d in store.verify()] == ["img.shapes"]


@pytest.mark.parametrize("backend", ["npy", "zarr", "hdf5"])
def test_planted_fifo_is_refused_without_blocking(tmp_path: Path, backend: str) -> None:
    """A FIFO in place of a store file is refused at once: opening one for reading would
    otherwise block until some process writes to it (a hang)."""
    suffix = {"npy": ".ooc", "zarr": ".zarr", "hdf5": ".h5"}[backend]
    path = tmp_path / f"s{suffix}"
    write_store(path).close()
    victim = {"npy": path / "x.npy", "zarr": path / "x" / "c.0.0", "hdf5": path}[backend]
    assert victim.is_file()
    victim.unlink()
    os.mkfifo(victim)

    def hung(signum: int, frame: object) -> None:
        pytest.fail("opening a store with a planted FIFO blocked")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        with (
            pytest.raises(
                (oocstore.CorruptStoreError, oocstore.UnknownBackendError),
                match=r"not a regular file|not an oocstore store",
            ),
            oocstore.open(path) as store,
        ):
            np.asarray(store["x"][:])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_planted_lock_symlink_is_refused(tmp_path: Path) -> None:
    """A symlink in place of the writer's lock file is never followed (nor truncated through)."""
    path = tmp_path / "s.ooc"
    write_store(path).close()
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"precious")
    (path / ".lock").unlink()
    (path / ".lock").symlink_to(outside)
    with pytest.raises(oocstore.CorruptStoreError, match=r"\.lock.*symlink"):
        oocstore.Writer(path, resume=True)
    assert outside.read_bytes() == b"precious"


def test_resume_refuses_damaged_packed_rows(tmp_path: Path) -> None:
    """A resumed writer that lays a packed field out padded reads committed rows back: damaged
    offsets are a CorruptStoreError, never a bare reshape error or a 576 PiB allocation."""
    path = tmp_path / "s.ooc"
    imgs = [np.full((i % 3 + 1, 2), i, np.uint8) for i in range(6)]
    w = oocstore.Writer(path, names=("img",))
    w.append((imgs,))
    w.abort()
    arr = np.load(path / "img.offsets.npy", mmap_mode="r+")
    arr[-1] = 2**60
    arr.flush()
    del arr
    w = oocstore.Writer(path, resume=True)
    with pytest.raises(oocstore.CorruptStoreError, match=r"'img'.*sample 5 .*outside"):
        w.close()
    w.abort()


def test_resume_refuses_a_symlinked_array_file(tmp_path: Path) -> None:
    path = tmp_path / "s.ooc"
    write_store(path).close()
    outside = tmp_path / "outside.npy"
    (path / "x.npy").rename(outside)
    (path / "x.npy").symlink_to(outside)
    before = outside.read_bytes()
    with pytest.raises(oocstore.CorruptStoreError, match=r"x\.npy.*cannot open"):
        oocstore.Writer(path, resume=True)
    assert outside.read_bytes() == before
