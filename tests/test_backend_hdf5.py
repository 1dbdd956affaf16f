"""HDF5-only checks: open formats (h5py, h5dump), layouts, the commit record, kills and readers.

The shared suites (round trips, ragged, crash, concurrency) run on HDF5 through ``BACKENDS``;
this file checks what only the HDF5 backend promises: a store is a plain HDF5 file, contiguous
datasets are memory-mapped, committed rows survive torn HDF5 metadata and torn commit slots,
a writer killed at random instants leaves a store that opens and resumes, and a reader in
another process follows a writer.
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

import oocstore
import oocstore.writer.setup
from oocstore.backends.hdf5 import ATTRIBUTE, DROPPED_GROUP, Hdf5Backend
from oocstore.backends.hdf5 import allocate as hdf5_allocate
from oocstore.backends.hdf5 import extents as hdf5_extents
from oocstore.backends.hdf5 import files as hdf5_files
from oocstore.backends.hdf5 import record as hdf5_record
from oocstore.backends.hdf5 import view as hdf5_view
from oocstore.manifest import ArraySpec

H5DUMP = shutil.which("h5dump")
H5LS = shutil.which("h5ls")


def same(a: Any, b: Any) -> bool:
    """Equal dtype, shape and bytes (NaN and NaT equal themselves)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def fields() -> dict[str, np.ndarray]:
    """One field per kind of dtype the backend stores, 12 samples each."""
    n = 12
    return {
        "img": np.arange(n * 3 * 4, dtype=np.uint8).reshape(n, 3, 4),
        "f32": np.linspace(-1, 1, n * 2, dtype=np.float32).reshape(n, 2),
        "big": np.arange(n, dtype=">i4"),
        "flag": np.arange(n) % 3 == 0,
        "z": (np.arange(n) + 1j * np.arange(n)).astype(np.complex64),
        "when": np.arange(n).astype("datetime64[s]"),
        "word": np.array([f"w{i}" for i in range(n)], dtype="U3"),
        "raw": np.array([b"ab%d" % i for i in range(n)], dtype="S4"),
        "rec": np.array([(i, i / 2) for i in range(n)], dtype=[("a", "<i2"), ("b", "<f8")]),
    }


def write_fields(path: Path, *, length: int | None = None) -> dict[str, np.ndarray]:
    data = fields()
    batches = [{k: v[i : i + 5] for k, v in data.items()} for i in range(0, 12, 5)]
    oocstore.write(batches, path, length=length).close()
    return data


@pytest.mark.parametrize("known", [True, False])
def test_plain_h5py_reads_every_field(tmp_path: Path, known: bool) -> None:
    path = tmp_path / "s.h5"
    data = write_fields(path, length=12 if known else None)
    with h5py.File(path, "r") as f:
        assert sorted(f.keys()) == sorted(data)
        for name, values in data.items():
            assert same(f[name][()], values), name
        doc = json.loads(f.attrs[ATTRIBUTE])
    assert doc["format"] == "oocstore"
    assert doc["length"] == 12
    assert doc["complete"] is True
    store = oocstore.open(path)
    for name, values in data.items():
        assert same(store[name][:], values), name


@pytest.mark.skipif(
    H5DUMP is None or H5LS is None,
    reason="h5dump/h5ls not installed (make test installs hdf5-tools when run as root with apt)",
)
@pytest.mark.parametrize("length", [None, 6], ids=["grown-chunked", "known-contiguous"])
def test_h5dump_and_h5ls_read_the_store(tmp_path: Path, length: int | None) -> None:
    path = tmp_path / "s.h5"
    x = np.arange(24, dtype=np.int32).reshape(6, 4)
    batches = [(x[:4], np.arange(4)), (x[4:], np.arange(4, 6))]
    oocstore.write(iter(batches), path, names=("x", "y"), length=length)
    listing = subprocess.run([H5LS, str(path)], capture_output=True, text=True, check=True)
    assert "x" in listing.stdout
    assert "{6, 4}" in listing.stdout.replace("/Inf", "")
    dump = subprocess.run(
        [H5DUMP, "-d", "/x", "-w", "0", str(path)], capture_output=True, text=True, check=True
    )
    rows = [line for line in dump.stdout.splitlines() if line.strip().startswith("(")]
    values = [int(v) for line in rows for v in line.split(":", 1)[1].replace(",", " ").split()]
    assert values == x.ravel().tolist()
    header = subprocess.run(
        [H5DUMP, "-A", "-H", str(path)], capture_output=True, text=True, check=True
    )
    assert f'ATTRIBUTE "{ATTRIBUTE}"' in header.stdout


def test_known_length_is_contiguous_and_memory_mapped(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    x = np.random.default_rng(0).random((100, 8), dtype=np.float64)
    oocstore.write([x[:40], x[40:]], path, length=100, names=("x",))
    with h5py.File(path, "r") as f:
        dset = f["x"]
        assert dset.chunks is None  # contiguous
        offset = dset.id.get_offset()
    assert offset % 64 == 0  # aligned for any dtype
    view = oocstore.open(path)["x"]
    assert isinstance(view, np.memmap)
    assert view.offset == offset
    assert not view.flags.writeable
    assert same(view, x)


def test_unknown_length_is_chunked_resizable_and_trimmed(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    x = np.arange(3000 * 50, dtype=np.float32).reshape(3000, 50)
    oocstore.write((x[i : i + 128] for i in range(0, 3000, 128)), path, names=("x",))
    with h5py.File(path, "r") as f:
        dset = f["x"]
        assert dset.shape == x.shape  # trimmed to the exact length on close
        assert dset.maxshape == (None, 50)
        assert dset.chunks is not None
        assert dset.chunks[1:] == (50,)
        assert 2**16 <= dset.chunks[0] * 200 <= 8 * 2**20  # whole samples, 64 KiB to 8 MiB
        assert dset.compression is None
    store = oocstore.open(path)
    assert same(store["x"][:], x)
    assert same(store["x"][[5, 2999, 0]], x[[5, 2999, 0]])


def test_chunks_option_sets_rows_per_chunk(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    oocstore.write((np.ones((10, 300)) for _ in range(5)), path, names=("x",), chunks=7)
    with h5py.File(path, "r") as f:
        assert f["x"].chunks == (7, 300)


def test_compression_is_refused_with_advice(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"uncompressed.*h5repack"):
        oocstore.Writer(tmp_path / "s.h5", compressors="gzip")


def test_only_committed_rows_are_shown(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    w = oocstore.Writer(path, names=("x",), commit_seconds=3600.0)
    try:
        w.append(np.arange(10.0).reshape(10, 1))
        w.commit()
        w.append(np.arange(10.0, 17.0).reshape(7, 1))  # appended, not committed
        store = oocstore.open(path)
        assert len(store) == 10
        assert store["x"].shape == (10, 1)
        assert same(store["x"][:], np.arange(10.0).reshape(10, 1))
        with pytest.raises(IndexError):
            store["x"][10]
    finally:
        w.close()
    assert len(oocstore.open(path)) == 17


def test_store_is_one_file_with_a_hidden_lock_beside_it_while_written(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with oocstore.Writer(path) as w:
        w.append(np.zeros((3, 2)))
        assert path.is_file()
        assert Hdf5Backend.lock_path(path) == tmp_path / ".s.h5.lock"
        assert sorted(p.name for p in tmp_path.iterdir()) == [".s.h5.lock", "s.h5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


def test_outgrowing_or_missing_the_declared_length(tmp_path: Path) -> None:
    x = np.arange(300 * 4, dtype=np.int16).reshape(300, 4)
    for n, declared in ((300, 100), (60, 100)):
        path = tmp_path / f"s{n}.h5"
        store = oocstore.write(
            (x[i : min(i + 32, n)] for i in range(0, n, 32)), path, length=declared
        )
        assert same(store["0"][:], x[:n])
        assert isinstance(store["0"], np.memmap)  # close() rewrote it contiguous
        with h5py.File(path, "r") as f:
            assert f["0"].shape == (n, 4)
            assert f["0"].chunks is None
            assert DROPPED_GROUP not in f


def test_field_turning_ragged_is_compacted_on_close(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    images = [np.full((4, 4), i, np.uint8) for i in range(20)] + [np.full((6, 2), 20, np.uint8)]
    w = oocstore.Writer(path, names=("img", "label"), commit_seconds=3600.0)
    w.append((images[:20], np.arange(20)))
    w.commit()
    early = oocstore.open(path)  # maps the dense dataset that the ragged layout replaces
    w.append((images[20:], np.array([20])))
    w.close()
    assert same(early["img"][:], np.stack(images[:20]))  # the old file stays valid for it
    store = oocstore.open(path)
    assert store.layout("img") == "padded"
    for i, image in enumerate(images):
        assert same(store.sample("img", i), image)
    with h5py.File(path, "r") as f:
        assert sorted(f.keys()) == ["img", "img.shapes", "label"]
        assert f["img"].shape == (21, 6, 4)


def test_torn_hdf5_metadata_opens_from_the_record_and_resume_rebuilds(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    x = np.arange(500 * 6, dtype=np.float32).reshape(500, 6)
    w = oocstore.Writer(path, names=("x",), commit_seconds=3600.0)
    w.append(x[:300])
    w.abort()  # commits and leaves the store incomplete, as a killed writer would
    with path.open("r+b") as f:  # wreck the HDF5 superblock: HDF5 cannot open the file
        f.seek(hdf5_record.USERBLOCK_BYTES)
        f.write(b"\0" * 96)
    with pytest.raises(OSError):
        h5py.File(path, "r")
    store = oocstore.open(path)
    assert same(store["x"][:], x[:300])
    again = oocstore.write([x[:250], x[250:]], path, names=("x",), resume=True)
    assert same(again["x"][:], x)
    with h5py.File(path, "r") as f:
        assert same(f["x"][()], x)


def _newest_seq(path: Path) -> int:
    """The sequence number of the newest commit slot that passes its checksum."""
    fd = os.open(path, os.O_RDONLY)
    try:
        header = hdf5_record._read_header(fd, str(path))
        assert header is not None
        record = hdf5_record._read_record(fd, header[1])
        assert record is not None
        return record[0]
    finally:
        os.close(fd)


def test_torn_commit_slot_falls_back_to_the_commit_before(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    w = oocstore.Writer(path, names=("x",), commit_seconds=3600.0)
    w.append(np.ones((5, 2)))
    w.commit()
    w.append(np.ones((4, 2)))
    w.commit()
    try:
        assert len(oocstore.open(path)) == 9
        seq = _newest_seq(path)
        slot = (hdf5_record.USERBLOCK_BYTES - hdf5_record.HEADER_BYTES) // 2
        with path.open("r+b") as f:  # flip a byte of the newest slot, as a torn write would
            f.seek(hdf5_record.HEADER_BYTES + (seq % 2) * slot + 64)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
        store = oocstore.open(path)
        assert len(store) == 5  # the commit before the torn one
        assert _newest_seq(path) == seq - 1
        assert same(store["x"][:], np.ones((5, 2)))
    finally:
        w.close()
    assert len(oocstore.open(path)) == 9


def test_file_without_userblock_opens_through_the_attribute(tmp_path: Path) -> None:
    """A file rewritten by HDF5 tools (h5repack drops the userblock) is still a store."""
    path = tmp_path / "s.h5"
    data = write_fields(path)
    copy = tmp_path / "copy.h5"
    with h5py.File(path, "r") as src, h5py.File(copy, "w") as dst:
        for name in src:
            src.copy(name, dst)
        dst.attrs[ATTRIBUTE] = src.attrs[ATTRIBUTE]
    store = oocstore.open(copy)
    for name, values in data.items():
        assert same(store[name][:], values), name
    longer = {k: np.concatenate([v, v[:3]]) for k, v in data.items()}
    again = oocstore.write([longer], copy, resume=True)  # resuming gives it a commit record
    assert len(again) == 15
    with copy.open("rb") as f:
        assert f.read(16) == hdf5_record._MAGIC


def test_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    assert not Hdf5Backend.holds_store(path)
    with pytest.raises(oocstore.UnknownBackendError):
        oocstore.open(path)


def test_tampered_extents_are_a_corrupt_store(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    oocstore.write([np.ones((5, 2))], path)
    handle = Hdf5Backend.open(path)
    manifest = handle.read_manifest()
    manifest.extra["hdf5"]["arrays"]["0"]["extents"][0][2] = os.path.getsize(path) - 8
    with pytest.raises(oocstore.CorruptStoreError, match="past the end of the file"):
        handle.open_arrays(manifest)


# -- small chunks: extents as runs -----------------------------------------------------------------


def record_of(path: Path) -> tuple[int, bytes]:
    """The newest commit record of an HDF5 store: ``(sequence number, JSON)``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        header = hdf5_record._read_header(fd, os.fspath(path))
        assert header is not None
        record = hdf5_record._read_record(fd, header[1])
        assert record is not None
        return record
    finally:
        os.close(fd)


def reseal(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as the store's newest commit record, with a valid checksum."""
    seq = record_of(path)[0] + 1
    text = json.dumps(doc, indent=1).encode()
    fd = os.open(path, os.O_RDWR)
    try:
        header = hdf5_record._read_header(fd, os.fspath(path))
        assert header is not None
        os.pwrite(
            fd, hdf5_record._slot_bytes(seq, text), hdf5_record._slot_offset(seq % 2, header[1])
        )
    finally:
        os.close(fd)


def extents_of(path: Path, name: str) -> list[list[int]]:
    return json.loads(record_of(path)[1])["extra"]["hdf5"]["arrays"][name]["extents"]


def test_small_chunks_of_unknown_length_commit_and_reopen(tmp_path: Path) -> None:
    """chunks=8 on 16-byte rows: HDF5 puts a B-tree node after every 57 chunks, so the first
    allocation (64 MiB ahead) lies in 9,198 extents, a 558 KB record for a 510 KiB slot; as
    runs it takes 164 entries, 14 KB."""
    path = tmp_path / "s.h5"
    x = np.random.default_rng(1).random((5000, 4), dtype=np.float32)
    w = oocstore.Writer(path, names=("x",), chunks=8, commit_seconds=3600.0)
    try:
        for i in range(0, 5000, 1000):
            w.append((x[i : i + 1000],))
            w.commit()
            with oocstore.open(path) as store:
                assert same(store["x"][:], x[: i + 1000])
        assert len(record_of(path)[1]) < 32 * 2**10
        runs = [e for e in extents_of(path, "x") if len(e) == 5]
        assert runs
        assert all(count > 1 for _, _, _, count, _ in runs)
    finally:
        w.close()
    with oocstore.open(path) as store:
        assert same(store["x"][:], x)
        assert same(store["x"][[4999, 0, 457, 456, 455]], x[[4999, 0, 457, 456, 455]])
        assert same(store["x"][3::7], x[3::7])
        assert store.verify() == []
    with h5py.File(path, "r") as f:
        assert f["x"].chunks == (8, 4)
        assert same(f["x"][()], x)


def test_resume_after_sigkill_with_small_chunks(tmp_path: Path) -> None:
    """A writer of chunks=8 on 16- and 8-byte rows SIGKILLed after its third commit: the store
    opens with its commits and resume completes it. Sizes are scaled down (4 MiB first
    allocation, 64 KiB userblock) to keep it fast; listed one by one, its extents would
    overflow that slot at the first commit."""
    path = tmp_path / "s.h5"
    n_batches = 160
    cfg = {"path": os.fspath(path), "n": n_batches, "known": False, "resume": False}
    cfg.update(commit=2**12, pause=0.002, width=4, chunks=8, userblock=2**16, initial=2**22)
    committed, finished = run_writer(cfg, 0.02, commits=3)
    assert committed >= 0
    assert not finished
    x_all, y_all = expected_rows(total_rows(n_batches), width=4)
    with oocstore.open(path) as store:
        n = len(store)
        assert n >= committed
        assert same(store["x"][:], x_all[:n])
        assert same(store["y"][:], y_all[:n])
    cfg["resume"] = True
    run_writer(cfg, None)
    with oocstore.open(path) as done:
        assert done.complete
        assert same(done["x"][:], x_all)
        assert same(done["y"][:], y_all)
        assert done.verify() == []


@st.composite
def extent_lists(draw: st.DrawFn) -> tuple[list[list[int]], int]:
    """Extents in row order that never overlap in the file, placed as HDF5 places small
    chunks (repeating sizes and gaps, so runs form), sometimes out of file order."""
    row = draw(st.sampled_from([1, 16, 24]))
    n = draw(st.integers(0, 40))
    sizes = draw(st.lists(st.sampled_from([1, 2, 8, 8, 8]), min_size=n, max_size=n))
    gaps = draw(st.lists(st.sampled_from([0, 0, 64, 2624, 2624]), min_size=n, max_size=n))
    slots, at = [], 1 << 20  # (offset, rows) in file order
    for rows, gap in zip(sizes, gaps, strict=True):
        slots.append((at, rows))
        at += rows * row + gap
    order = list(range(n))
    if draw(st.booleans()):
        order = list(draw(st.permutations(order)))
    event("out of file order" if order != sorted(order) else "in file order")
    out, first = [], 0
    for k in order:  # the i-th extent in row order takes file slot order[i]
        off, rows = slots[k]
        out.append([first, rows, off])
        first += rows
    return out, row


def merged(extents: list[list[int]], row: int) -> list[list[int]]:
    """What the writer keeps of chunks appended one by one: adjacent ones merged."""
    out: list[list[int]] = []
    for first, rows, off in extents:
        if out and out[-1][0] + out[-1][1] == first and out[-1][2] + out[-1][1] * row == off:
            out[-1][1] += rows
        else:
            out.append([first, rows, off])
    return out


@given(extent_lists())
def test_extents_encode_to_runs_and_back(case: tuple[list[list[int]], int]) -> None:
    extents, row = case
    runs = hdf5_extents._encode_runs(extents, row)
    event(f"{len(runs)} runs" if len(runs) < 3 else "3+ runs")
    assert [list(e) for e in hdf5_extents._decode_runs(runs)] == extents
    # The writer appends chunks one at a time and merges adjacent ones into one extent.
    arr = hdf5_files._Array("x", np.dtype("u1"), (row,), "chunked", 1)
    for first, rows, off in extents:
        arr.add_extent(first, rows, off)
    want = merged(extents, row)
    assert [list(e) for e in hdf5_extents._decode_runs(arr.runs)] == want
    assert arr.covered == sum(rows for _, rows, _ in extents)
    assert list(arr.pieces(0, arr.covered)) == [(f, f + r, o) for f, r, o in want]
    if arr.covered > 2:  # a row range inside, cut at both ends
        lo, hi = 1, arr.covered - 1
        cut = [(max(f, lo), min(f + r, hi), o + (max(f, lo) - f) * row) for f, r, o in want]
        assert list(arr.pieces(lo, hi)) == [p for p in cut if p[0] < p[1]]
    # The record's form validates back to the same runs.
    manifest: Any = SimpleNamespace(arrays={"x": ArraySpec(np.dtype("u1"), (row,), arr.covered)})
    info = {"arrays": {"x": {**arr.layout_json(), "rows": arr.covered}}}
    lays = hdf5_extents._check_layouts(manifest, info, 1 << 40, 4096, "t")
    assert lays["x"].runs == arr.runs


def small_chunked_store(path: Path, x: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """An incomplete store of ``x[:2000]`` in 8-row chunks of 16-byte rows, runs in its record
    (a 4 MiB first allocation instead of 64 MiB, to stay fast)."""
    monkeypatch.setattr(oocstore.writer.setup, "_INITIAL_BYTES", 2**22)
    monkeypatch.setattr(oocstore.writer.setup, "_INITIAL_BATCHES", 2**30)
    w = oocstore.Writer(path, names=("x",), chunks=8, commit_seconds=3600.0)
    w.append((x[:1000],))
    w.commit()
    w.append((x[1000:2000],))
    w.abort()  # commits and leaves the store incomplete, as a killed writer would


def test_records_of_plain_extents_still_open_verify_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records written before runs list every extent as ``[first row, rows, offset]``."""
    path = tmp_path / "s.h5"
    x = np.random.default_rng(2).random((3000, 4), dtype=np.float32)
    small_chunked_store(path, x, monkeypatch)
    doc = json.loads(record_of(path)[1])
    entry = doc["extra"]["hdf5"]["arrays"]["x"]
    assert any(len(e) == 5 for e in entry["extents"])
    entry["extents"] = [
        [f + k * r, r, o + k * s]
        for e in entry["extents"]
        for f, r, o, n, s in [(*e, 1, 0)[:5]]
        for k in range(n)
    ]
    assert len(entry["extents"]) > 100
    reseal(path, doc)
    with oocstore.open(path) as store:
        assert same(store["x"][:], x[:2000])
        assert store.verify() == []
    with oocstore.Writer(path, names=("x",), resume=True) as w:
        assert w.skip == 2000
        w.append((x,))
    with oocstore.open(path) as store:
        assert same(store["x"][:], x)
        assert store.verify() == []


def test_tampered_runs_are_a_corrupt_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.h5"
    x = np.random.default_rng(3).random((3000, 4), dtype=np.float32)
    small_chunked_store(path, x, monkeypatch)
    doc = json.loads(record_of(path)[1])
    extents = doc["extra"]["hdf5"]["arrays"]["x"]["extents"]
    j = next(i for i, e in enumerate(extents) if len(e) == 5 and e[0] + 2 * e[1] < 2000)
    run = extents[j]
    changes = {
        "count huge": ([j, 3], 2**60, "extents reach row"),
        "count zero": ([j, 3], 0, "count of extents must be an integer"),
        "stride negative": ([j, 4], -run[4], "stride must be an integer"),
        "extents overlapping in the file": ([j, 4], run[1] * 16 - 1, "overlap \\(stride"),
        "committed rows past the file": ([j, 4], 2**40, "past the end of the file"),
        "runs overlapping": ([j + 1, 0], extents[j + 1][0] - 8, "extents overlap at row"),
        "runs apart": ([j + 1, 0], extents[j + 1][0] + 8, "extents leave a gap at row"),
        "bad entry": ([j], [1, 2, 3, 4], "bad extent"),
    }
    for what, (where, value, match) in changes.items():
        case = tmp_path / f"{what}.h5"
        shutil.copyfile(path, case)
        bad = json.loads(json.dumps(doc))
        parent = bad["extra"]["hdf5"]["arrays"]["x"]["extents"]
        for k in where[:-1]:
            parent = parent[k]
        parent[where[-1]] = value
        reseal(case, bad)
        with pytest.raises(oocstore.CorruptStoreError, match=match):
            oocstore.open(case)
        if what == "count huge":
            with pytest.raises(oocstore.CorruptStoreError, match=match):
                oocstore.Writer(case, names=("x",), resume=True)


def test_record_outgrowing_its_slot_names_the_array_and_what_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs that outgrow the slot (here 2-row chunks, a 32 KiB userblock, small growth steps)
    fail the commit with CommitRecordTooLargeError; the store keeps its last commit, and the
    chunk size it names fits."""
    monkeypatch.setattr(hdf5_record, "USERBLOCK_BYTES", 2**15)
    monkeypatch.setattr(hdf5_allocate, "MIN_GROWTH_BYTES", 2**20)
    monkeypatch.setattr(oocstore.writer.setup, "_INITIAL_BYTES", 2**20)
    monkeypatch.setattr(oocstore.writer.setup, "_INITIAL_BATCHES", 2**30)
    x = np.arange(20_000 * 4, dtype=np.float32).reshape(20_000, 4)

    def write(path: Path, chunks: int) -> int:
        committed = 0
        with oocstore.Writer(path, names=("x",), chunks=chunks, commit_seconds=3600.0) as w:
            for _ in range(8):
                w.append((x,))
                w.commit()
                committed = w.committed
        return committed

    path = tmp_path / "s.h5"
    with pytest.raises(oocstore.CommitRecordTooLargeError) as info:
        write(path, chunks=2)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.array == "x"
    assert err.slot_bytes == (2**15 - hdf5_record.HEADER_BYTES) // 2 - 32
    assert err.record_bytes > err.slot_bytes
    assert err.min_chunk_rows is not None
    assert err.min_chunk_rows > 2
    assert err.min_userblock > 2**15
    text = str(err)
    for part in ("'x'", f"{err.record_bytes:,}", f"{err.slot_bytes:,}", f"{err.min_userblock:,}"):
        assert part in text
    assert f"chunks={err.min_chunk_rows} or more" in text
    with oocstore.open(path) as store:  # its last commit
        n = len(store)
        assert 0 < n < 8 * len(x)
        assert n % len(x) == 0
        assert same(store["x"][:], np.concatenate([x] * (n // len(x))))
    assert write(tmp_path / "fits.h5", chunks=err.min_chunk_rows) == 8 * len(x)


# -- processes ----------------------------------------------------------------------------------

WRITER = r"""
import os, sys, json, numpy as np, oocstore
import oocstore.writer.setup
from oocstore.backends import hdf5
from oocstore.backends.hdf5 import Hdf5Backend
cfg = json.loads(sys.argv[1])
width = cfg.get("width", 256)
hdf5.record.USERBLOCK_BYTES = cfg.get("userblock", hdf5.record.USERBLOCK_BYTES)
if "initial" in cfg:  # a first allocation of exactly this many bytes
    oocstore.writer.setup._INITIAL_BYTES = cfg["initial"]
    oocstore.writer.setup._INITIAL_BATCHES = 2**30
real = Hdf5Backend.write_manifest
def report(self, manifest):
    real(self, manifest)
    os.write(1, f"M {manifest.length}\n".encode())
Hdf5Backend.write_manifest = report

def batches(n_batches):
    start = 0
    for i in range(n_batches):
        n = 1 + (i * 37) % 53
        g = np.arange(start, start + n)
        yield (g[:, None] * 3 + np.arange(width)).astype(np.float32), g
        start += n
        if cfg["pause"]:
            import time; time.sleep(cfg["pause"])

length = sum(1 + (i * 37) % 53 for i in range(cfg["n"])) if cfg["known"] else None
w = oocstore.Writer(cfg["path"], names=("x", "y"), length=length, resume=cfg["resume"],
                    commit_bytes=cfg["commit"], commit_seconds=3600.0, chunks=cfg.get("chunks"))
os.write(1, b"S\n")
w.extend(batches(cfg["n"]))
w.close()
os.write(1, b"D\n")
"""


def expected_rows(n: int, width: int = 256) -> tuple[np.ndarray, np.ndarray]:
    g = np.arange(n)
    return (g[:, None] * 3 + np.arange(width)).astype(np.float32), g


def total_rows(n_batches: int) -> int:
    return sum(1 + (i * 37) % 53 for i in range(n_batches))


def run_writer(cfg: dict[str, Any], kill_after: float | None, commits: int = 0) -> tuple[int, bool]:
    """Run a writer process; SIGKILL it ``kill_after`` seconds after it holds the store (and
    reported ``commits`` commits)."""
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, json.dumps(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        return _follow(proc, kill_after, commits)


def _follow(
    proc: subprocess.Popen[bytes], kill_after: float | None, commits: int = 0
) -> tuple[int, bool]:
    assert proc.stdout is not None
    assert proc.stderr is not None
    out = b""
    kill_at: float | None = None
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.005)
        if ready:
            out += os.read(proc.stdout.fileno(), 65536)
        started = b"S\n" in out and out.count(b"M ") >= commits
        if kill_at is None and started and kill_after is not None:
            kill_at = time.monotonic() + kill_after
        if kill_at is not None and time.monotonic() >= kill_at:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    out += proc.stdout.read()
    err = proc.stderr.read()
    lines = out.decode().split()
    commits = [int(lines[i + 1]) for i, tok in enumerate(lines) if tok == "M"]
    if kill_after is None:
        assert proc.returncode == 0, err.decode()
    return (max(commits) if commits else -1), "D" in lines


@pytest.mark.crash
def test_random_sigkills_then_open_and_resume(tmp_path: Path) -> None:
    """Kill writers at random instants: the store opens with exactly its last commit (at
    least the last one reported), never a row beyond, and resume completes it."""
    rng = random.Random(4)
    n_batches = 160
    total = total_rows(n_batches)
    x_all, y_all = expected_rows(total)
    outcomes = []
    for trial in range(8):
        path = tmp_path / f"t{trial}.h5"
        cfg = {
            "path": os.fspath(path),
            "n": n_batches,
            "known": trial % 2 == 0,
            "resume": False,
            "commit": 2**18,
            "pause": 0.0,
        }
        committed, finished = run_writer(cfg, rng.uniform(0.0, 0.35))
        outcomes.append((committed, finished))
        if not path.exists():
            assert committed < 0  # killed before its first commit: no store at all
            continue
        store = oocstore.open(path)
        n = len(store)
        assert n >= committed
        assert same(store["x"][:], x_all[:n])
        assert same(store["y"][:], y_all[:n])
        cfg["resume"] = True
        run_writer(cfg, None)
        done = oocstore.open(path)
        assert done.complete
        assert same(done["x"][:], x_all)
        assert same(done["y"][:], y_all)
    assert any(0 <= c < total for c, f in outcomes if not f)  # some kills landed mid-write


READER = r"""
import sys, time, numpy as np, oocstore
path, total = sys.argv[1], int(sys.argv[2])
seen = []
deadline = time.monotonic() + 60
store = None
while time.monotonic() < deadline:
    try:
        store = store or oocstore.open(path)
    except (oocstore.UnknownBackendError, oocstore.StoreNotFoundError):
        time.sleep(0.005)
        continue
    store.refresh()
    n = len(store)
    assert not seen or n >= seen[-1], (n, seen[-1])
    g = np.arange(n)
    x = np.asarray(store["x"][:])
    assert (x == (g[:, None] * 3 + np.arange(256)).astype(np.float32)).all()
    assert (np.asarray(store["y"][:]) == g).all()
    if not seen or n != seen[-1]:
        seen.append(n)
    if store.complete:
        break
    time.sleep(0.002)
assert store is not None and store.complete and len(store) == total, seen
print(len(seen))
"""


@pytest.mark.parametrize("known", [True, False])
def test_reader_process_follows_a_writer(tmp_path: Path, known: bool) -> None:
    path = tmp_path / "s.h5"
    n_batches = 120
    total = total_rows(n_batches)
    cfg = {
        "path": os.fspath(path),
        "n": n_batches,
        "known": known,
        "resume": False,
        "commit": 2**17,
        "pause": 0.003,
    }
    with subprocess.Popen(
        [sys.executable, "-c", READER, os.fspath(path), str(total)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as reader:
        run_writer(cfg, None)
        out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    assert int(out) >= 3  # it saw several commits, not only the end


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_is_disk_full_error_and_resumable(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        filler = mnt / "filler"
        filler.write_bytes(b"\1" * 6 * 2**20)
        path = mnt / "s.h5"
        code = WRITER.replace("w.extend(", "try:\n    w.extend(").replace(
            "w.close()\n",
            "    w.close()\nexcept oocstore.DiskFullError as e:\n    print('FULL', e.errno)\n",
        )
        cfg = {"path": os.fspath(path), "n": 2000, "known": False, "resume": False}
        cfg.update(commit=2**20, pause=0.0)
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(cfg)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr  # an exception: no signal, no crash at exit
        assert "FULL 28" in proc.stdout
        store = oocstore.open(path)
        n = len(store)
        x_all, y_all = expected_rows(n)
        assert n > 0
        assert same(store["x"][:], x_all)
        store.close()
        filler.unlink()  # free space, then resume a little further
        more = next(b for b in range(2000) if total_rows(b) >= n + 2000)
        cfg.update(resume=True, n=more)
        run_writer(cfg, None)
        done = oocstore.open(path)
        x_all, y_all = expected_rows(total_rows(more))
        assert done.complete
        assert same(done["x"][:], x_all)
        assert same(done["y"][:], y_all)
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_resume_rebuilds_a_file_whose_manifest_attribute_is_damaged(tmp_path: Path) -> None:
    """HDF5 metadata that opens but cannot be read back (a damaged global heap, where the
    manifest attribute's text lives) is rebuilt from the commit record on resume, not a bare
    OSError at the first commit."""
    path = tmp_path / "s.h5"
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    w = oocstore.Writer(path, names=("x",), length=20)
    w.append((x[:12],))
    w.abort()
    data = bytearray(path.read_bytes())
    at = data.find(b"GCOL", hdf5_record.USERBLOCK_BYTES)
    assert at > 0, "no HDF5 global heap in the file"
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    with oocstore.Writer(path, names=("x",), resume=True) as w:
        assert w.skip == 12
        w.append((x,))
    with oocstore.open(path) as store:
        assert store.complete
        assert np.array_equal(store["x"], x)
        assert store.verify() == []


def test_resume_survives_metadata_that_hangs_libhdf5(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """One flipped bit in this file's attribute heap makes libhdf5 loop forever on reading the
    root attributes (found by the mutation suite). Resume reads the metadata in a child
    process first, so it rebuilds the file from its commit record instead of hanging."""
    from oocstore.backends.hdf5 import repair

    monkeypatch.setattr(repair, "PROBE_SECONDS", 3.0)
    n = 24
    imgs = [np.full((i % 3 + 2, i % 4 + 1), i, np.uint8) for i in range(n)]
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3) / 7
    y = np.arange(n, dtype=np.int64) * 1_000_003
    path = tmp_path / "packed.h5"
    w = oocstore.Writer(
        path, names=("x", "img", "y"), ragged="pack", length=n, attrs={"k": [1, "v"]}, chunks=8
    )
    w.append((x[:10], imgs[:10], y[:10]))
    w.commit()
    w.append((x[10:], imgs[10:], y[10:]))
    w.abort()
    raw = bytearray(path.read_bytes())
    raw[1066377 % len(raw)] ^= 1
    path.write_bytes(bytes(raw))
    with oocstore.Writer(path, resume=True):
        pass
    with oocstore.open(path) as store:
        assert len(store) == n
        np.testing.assert_array_equal(store["x"][:], x)
        assert [store.sample("img", i).tolist() for i in range(n)] == [a.tolist() for a in imgs]
        assert store.verify() == []


@given(
    rows=st.integers(1, 9),
    count=st.integers(1, 5),
    gap=st.integers(0, 40),
    cut=st.integers(0, 8),
)
def test_a_run_ending_at_the_end_of_the_file_maps(
    tmp_path_factory: pytest.TempPathFactory, rows: int, count: int, gap: int, cut: int
) -> None:
    """A run's mapping ends with its last committed row, not a stride past it: a trimmed file
    whose last bytes are that row still opens (make stress found the overshoot)."""
    row = 8
    stride = rows * row + gap
    length = max(count * rows - cut, 1)
    k = (length - 1) // rows
    size = k * stride + (length - k * rows) * row  # the file ends with the last committed row
    path = tmp_path_factory.mktemp("run") / "f.bin"
    data = np.arange(size, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    spec = ArraySpec(np.dtype("u8"), (), length)
    with path.open("rb") as f:
        pieces, mm = hdf5_view._run_pieces(f, "x", spec, [0, rows, 0, count, stride], "t")
    assert mm is not None
    got = np.concatenate([p.reshape(-1) for _, p in pieces])[:length]
    want = [
        data[(i // rows) * stride + (i % rows) * row :][:row].view("u8")[0] for i in range(length)
    ]
    assert got.tolist() == want
