"""Zarr: ragged padded fields written padded from the first batch, their rows grown in place.

A ragged field on Zarr is padded from its first batch, chunked in tiles of the row
(``sizing.tile_shape``), and a larger sample widens the array by rewriting zarr.json only
(``ZarrBackend.grow_rows``): missing tiles read as the fill value. Checksum spans hashed before
a growth carry the row shape they were hashed at; a killed writer's growth past its last commit
is undone by the next writer (zarr.json shrunk back, tiles past the committed grid removed).
Every check compares against the samples as given, padded in memory.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import signal
import tempfile
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import crc32c
import numpy as np
import pytest
import zarr
from hypothesis import event, given, settings
from hypothesis import strategies as st

import oocstore
from oocstore.backends.zarr import ATTRIBUTE, ZarrBackend
from oocstore.checksum import coalesce, hash_rows, valid_span
from oocstore.sizing import TILE_BYTES, tile_shape

from .test_crash import forkserver

# These cases pad heavily on purpose; the warning itself is tested in test_limits.py.
pytestmark = pytest.mark.filterwarnings("ignore::oocstore.PaddingWarning")

Shape = tuple[int, ...]
Batch = tuple[list[np.ndarray], np.ndarray]

# -- samples and the in-memory answer ---------------------------------------------------------

DTYPES = {"u8": np.uint8, "f32": np.float32, "i16": np.int16}


def make_sample(kind: str, shape: Shape, seed: int) -> np.ndarray:
    """A sample of ``shape`` whose values depend on ``seed`` (no two samples alike)."""
    rng = np.random.default_rng(seed)
    if kind == "f32":
        return rng.standard_normal(shape).astype(np.float32)
    info = np.iinfo(DTYPES[kind])
    return rng.integers(info.min, int(info.max) + 1, shape).astype(DTYPES[kind])


def make_batches(kind: str, shapes: Sequence[Sequence[Shape]], seed: int = 0) -> list[Batch]:
    """Batches ``(samples, labels)``: one list of sample shapes per batch."""
    out, g = [], 0
    for batch in shapes:
        samples = [make_sample(kind, s, seed * 100_003 + g + i) for i, s in enumerate(batch)]
        out.append((samples, np.arange(g, g + len(batch), dtype=np.int64)))
        g += len(batch)
    return out


def samples_of(batches: Sequence[Batch]) -> list[np.ndarray]:
    return [s for samples, _ in batches for s in samples]


def max_shape(samples: Sequence[np.ndarray]) -> Shape:
    return tuple(int(d) for d in np.max([s.shape for s in samples], axis=0))


def padded(samples: Sequence[np.ndarray], shape: Shape, fill: Any) -> np.ndarray:
    """The samples padded with ``fill`` to ``shape``, stacked: what the padded array holds."""
    out = np.full((len(samples), *shape), fill, dtype=samples[0].dtype)
    for i, s in enumerate(samples):
        out[(i, *(slice(0, d) for d in s.shape))] = s
    return out


def same(a: Any, b: Any) -> bool:
    """Equal dtype, shape and values (NaN equal to NaN)."""
    a, b = np.asarray(a), np.asarray(b)
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    )


def same_fill(a: Any, b: Any) -> bool:
    return bool(a == b or (np.isnan(a) and np.isnan(b)))


def check_store(store: oocstore.Store, samples: Sequence[np.ndarray], fill: Any) -> None:
    """Field ``img`` holds exactly ``samples``, padded with ``fill``; labels in order."""
    n = len(samples)
    assert len(store) == n
    assert same(np.asarray(store["label"]), np.arange(n, dtype=np.int64))
    top = max_shape(samples)
    assert store.schema["img"].shape == top
    assert np.array_equal(store.shapes("img"), np.array([s.shape for s in samples]))
    for i, s in enumerate(samples):
        assert same(store.sample("img", i), s), f"sample {i} differs"
    want = padded(samples, top, fill)
    assert same(np.asarray(store["img"]), want)
    for i in {0, n - 1}:
        assert same(store["img"][i], want[i])
    assert store.verify() == []


# -- what is on disk --------------------------------------------------------------------------


def array_meta(path: Path, name: str = "img") -> dict[str, Any]:
    return json.loads((path / name / "zarr.json").read_text())


def tile_of(path: Path, name: str = "img") -> Shape:
    """The chunk extent past the sample axis, from the array's zarr.json."""
    chunk = array_meta(path, name)["chunk_grid"]["configuration"]["chunk_shape"]
    return tuple(chunk[1:])


def chunk_indices(path: Path, name: str = "img") -> list[Shape]:
    """The grid index of every chunk file of an array (sample-axis unit first)."""
    return [
        tuple(int(k) for k in entry.split(".")[1:])
        for entry in os.listdir(path / name)
        if re.fullmatch(r"c(\.[0-9]+)+", entry)
    ]


def past_grid(path: Path, shape: Shape, name: str = "img") -> list[Shape]:
    """Chunk files lying past the tile grid of rows of ``shape``."""
    grid = [-(-d // t) for d, t in zip(shape, tile_of(path, name), strict=True)]
    files = chunk_indices(path, name)
    return [ix for ix in files if any(i >= g for i, g in zip(ix[1:], grid, strict=True))]


def manifest_doc(path: Path) -> dict[str, Any]:
    return json.loads((path / "zarr.json").read_text())


def rewrite_manifest(path: Path, change: Any) -> None:
    """Apply ``change`` to the store's manifest (the group's attribute) in place."""
    doc = manifest_doc(path)
    change(doc["attributes"][ATTRIBUTE])
    (path / "zarr.json").write_text(json.dumps(doc))


def spans_of(store: oocstore.Store, name: str = "img") -> list[list[Any]]:
    return store.manifest.extra["checksums"]["spans"][name]


# -- 1. round trip ----------------------------------------------------------------------------

# Storage settings: raw chunks written in place, zstd chunks rewritten whole, and sharded
# (small chunks and shards here: shards=True is checked once below, it is slow for a property).
STORAGE: dict[str, dict[str, Any]] = {
    "raw": {"compressors": None},
    "raw-chunks": {"compressors": None, "chunks": 3},  # rows of earlier chunks miss new tiles
    "zstd": {"compressors": "auto"},
    "sharded": {"compressors": "auto", "chunks": 2, "shards": 4},
    "raw-sharded": {"compressors": None, "chunks": 2, "shards": 4},
}


def fills(kind: str) -> st.SearchStrategy[Any]:
    if kind == "f32":
        return st.sampled_from([float("nan"), -1.0, 0.0])
    info = np.iinfo(DTYPES[kind])
    return st.integers(int(info.min), int(info.max))


@st.composite
def streams(draw: st.DrawFn, min_side: int = 1) -> tuple[str, list[list[Shape]], Any]:
    """A field kind, the sample shapes of each batch, and a fill.

    Images ``(h, w, 3)`` of uint8 or float32, or 1-D int16 samples; sides shrink toward
    ``min_side``, batches toward one sample. "growing" sorts the samples by size, so the rows
    grow at nearly every batch.
    """
    kind = draw(st.sampled_from(["u8", "f32", "i16"]))
    side = st.integers(min_side, 40)
    n_batches = draw(st.integers(2, 5))
    shapes: list[list[Shape]] = []
    for _ in range(n_batches):
        n = draw(st.integers(1, 4))
        if kind == "i16":
            shapes.append([(draw(side),) for _ in range(n)])
        else:
            shapes.append([(draw(side), draw(side), 3) for _ in range(n)])
    pattern = draw(st.sampled_from(["random", "growing"]))
    if pattern == "growing":
        flat = sorted((s for b in shapes for s in b), key=math.prod)
        sizes = [len(b) for b in shapes]
        shapes = [flat[sum(sizes[:k]) : sum(sizes[: k + 1])] for k in range(len(sizes))]
    fill = draw(fills(kind))
    growths = sum(
        max_shape_of(shapes[: k + 1]) != max_shape_of(shapes[:k]) for k in range(1, n_batches)
    )
    event(f"{kind}: {growths} growths")
    return kind, shapes, fill


def max_shape_of(shapes: Sequence[Sequence[Shape]]) -> Shape:
    return tuple(int(d) for d in np.max([s for b in shapes for s in b], axis=0))


# How a source is written: in one go by oocstore.write (a list, of known length, or a generator),
# or by a Writer committing after some batches, its checksum spans merged past 2 or 64 of them.
writes = st.one_of(
    st.sampled_from(["list", "generator"]),
    st.tuples(st.sets(st.integers(0, 4), min_size=1), st.sampled_from([2, 64])),
)


def roundtrip(storage: str, stream: tuple[str, list[list[Shape]], Any], how: Any) -> None:
    kind, shapes, fill = stream
    batches = make_batches(kind, shapes)
    samples = samples_of(batches)
    options = {"names": ("img", "label"), "fill": fill, **STORAGE[storage]}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.zarr"
        if how in ("list", "generator"):
            store = oocstore.write(batches if how == "list" else iter(batches), path, **options)
        else:
            commits, max_spans = how
            with (
                mock.patch("oocstore.writer.core.MAX_SPANS", max_spans),
                oocstore.Writer(path, **options) as w,
            ):
                for k, b in enumerate(batches):
                    w.append(b)
                    if k in commits:
                        w.commit()
            store = oocstore.open(path)
        assert store.complete
        check_store(store, samples, fill)
        if len({s.shape for s in samples}) > 1:
            assert store.layout("img") == "padded"
            assert same_fill(store.manifest.layout("img").fill, fill)
        store.close()


@settings(max_examples=40)
@given(storage=st.sampled_from(["raw", "raw-chunks"]), stream=streams(), how=writes)
def test_roundtrip_raw(storage: str, stream: tuple[str, list[list[Shape]], Any], how: Any) -> None:
    """Uncompressed chunks (written in place): every sample, the padded array, the true shapes
    and the checksums (spans hashed before a growth, merged or not)."""
    roundtrip(storage, stream, how)


# Compressed tiles are rewritten whole (two fsyncs each) whenever a chunk takes more rows:
# fewer examples, and sides from 8 up (a first batch of 1-pixel images makes ~1600 tiles).
@settings(max_examples=15)
@given(
    storage=st.sampled_from(["zstd", "sharded", "raw-sharded"]),
    stream=streams(min_side=8),
    how=writes,
)
def test_roundtrip_compressed_and_sharded(
    storage: str, stream: tuple[str, list[list[Shape]], Any], how: Any
) -> None:
    """Zstd chunks and sharded arrays (inner chunks of 2 rows, shards of 4) round trip too."""
    roundtrip(storage, stream, how)


@pytest.mark.parametrize("compressors", [None, "auto"])
@pytest.mark.parametrize(
    "shapes",
    [[[(0,), (0,)], [(3,)]], [[(2, 0, 3), (2, 0, 3)], [(2, 4, 3)]]],
    ids=["1d", "image"],
)
def test_rows_that_start_empty_then_grow(
    tmp_path: Path, compressors: Any, shapes: list[list[Shape]]
) -> None:
    """A field whose first samples have an empty axis (zero bytes per row), then grow: the
    dense rows so far are read back to be rewritten padded.

    (Not sharded here: the chunks sized for zero-byte rows make each tile's shard gigabytes.)
    """
    batches = make_batches("i16", shapes)
    store = oocstore.write(
        iter(batches), tmp_path / "s.zarr", names=("img", "label"), fill=3, compressors=compressors
    )
    check_store(store, samples_of(batches), 3)


# -- 2. plain zarr reads it ---------------------------------------------------------------------

GROWING = [[(6, 5, 3), (4, 8, 3)], [(20, 9, 3)], [(7, 30, 3), (2, 2, 3)], [(33, 36, 3)]]


# A generator (unknown length: chunks of many rows, raw ones written sparse) or a list (chunks
# no longer than the store).
@pytest.mark.parametrize("compressors", [None, "auto"])
@pytest.mark.parametrize(
    ("kind", "fill", "generator"),
    [("u8", 7, True), ("f32", float("nan"), False), ("f32", -1.0, False)],
)
def test_plain_zarr_reads_the_grown_array(
    tmp_path: Path, compressors: Any, kind: str, fill: Any, generator: bool
) -> None:
    path = tmp_path / "s.zarr"
    batches = make_batches(kind, GROWING)
    samples = samples_of(batches)
    oocstore.write(
        iter(batches) if generator else batches,
        path,
        names=("img", "label"),
        fill=fill,
        compressors=compressors,
    ).close()
    group = zarr.open_group(path, mode="r")
    arr = group["img"]
    top = max_shape(samples)
    assert arr.shape == (len(samples), *top)
    assert same(arr[:], padded(samples, top, fill))
    assert same_fill(arr.fill_value, fill)
    assert np.array_equal(group["img.shapes"][:], [s.shape for s in samples])
    # The chunks are tiles: smaller than the row on the axes that grew, whole on the other.
    assert arr.chunks[1] < top[0]
    assert arr.chunks[2] < top[1]
    assert arr.chunks[3] == 3
    assert tile_of(path) == tuple(arr.chunks[1:])


@pytest.mark.parametrize(
    ("kind", "first", "tile"),
    [
        ("u8", [(64, 50, 3), (40, 64, 3)], (16, 16, 3)),  # both axes varied: a quarter each
        ("u8", [(64, 50, 3), (40, 50, 3)], (16, 50, 3)),  # the width did not: whole
        ("u8", [(6, 5, 3), (4, 8, 3)], (16, 16, 3)),  # never under 16 on an axis that varied
        ("u8", [(200, 180, 3), (120, 256, 3)], (50, 64, 3)),
        ("f32", [(200, 180, 3), (120, 256, 3)], (50, 32, 3)),  # 37.5 KiB: halved
    ],
)
def test_tiles_are_a_quarter_of_the_axes_that_varied(
    tmp_path: Path, kind: str, first: list[Shape], tile: Shape
) -> None:
    path = tmp_path / "s.zarr"
    batches = make_batches(kind, [first, [(70, 300, 3)], [(3, 3, 3)]])
    store = oocstore.write(iter(batches), path, names=("img", "label"), fill=1)
    assert tile_of(path) == tile
    assert store["img"].chunks[1:] == tile
    check_store(store, samples_of(batches), 1)


# -- 3. the layout is native ----------------------------------------------------------------------


def spy(monkeypatch: pytest.MonkeyPatch, cls: type, method: str) -> list[tuple[Any, ...]]:
    """Record every call of ``cls.method`` (its arguments after self), then make it."""
    calls: list[tuple[Any, ...]] = []
    real = getattr(cls, method)

    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, wrapped)
    return calls


def growth_steps(shapes: Sequence[Sequence[Shape]]) -> list[Shape]:
    """The padded shape after each batch that widened it (not the first batch)."""
    steps = []
    for k in range(1, len(shapes)):
        now = max_shape_of(shapes[: k + 1])
        if now != max_shape_of(shapes[:k]):
            steps.append(now)
    return steps


@pytest.mark.parametrize("compressors", [None, "auto"])
def test_growth_is_in_place_never_packed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compressors: Any
) -> None:
    grows = spy(monkeypatch, ZarrBackend, "grow_rows")
    created = spy(monkeypatch, ZarrBackend, "create_padded")
    links = spy(monkeypatch, ZarrBackend, "link_array")
    path = tmp_path / "s.zarr"
    batches = make_batches("u8", GROWING)
    store = oocstore.write(
        iter(batches), path, names=("img", "label"), fill=9, compressors=compressors
    )
    check_store(store, samples_of(batches), 9)
    assert store.layout("img") == "padded"
    steps = growth_steps(GROWING)
    assert len(steps) == 3
    assert [(name, tuple(shape)) for name, shape in grows] == [("img", s) for s in steps]
    assert [c[0] for c in created] == ["img"]  # padded from the first batch, never re-laid
    assert links == []
    assert sorted(store.manifest.arrays) == ["img", "img.shapes", "label"]
    on_disk = sorted(p.name for p in path.iterdir() if p.is_dir())
    assert on_disk == ["img", "img.shapes", "label"]
    assert not any(p.name.endswith((".values", ".offsets")) for p in tmp_path.rglob("*"))


# -- 4. checksum spans ------------------------------------------------------------------------


def write_committing(
    path: Path, shapes: Sequence[Sequence[Shape]], *, kind: str = "u8", fill: Any = 0, **kw: Any
) -> list[np.ndarray]:
    """Write one commit per batch; return the samples."""
    batches = make_batches(kind, shapes)
    with oocstore.Writer(path, names=("img", "label"), fill=fill, **kw) as w:
        for b in batches:
            w.append(b)
            w.commit()
    return samples_of(batches)


def row_shapes_when_written(shapes: Sequence[Sequence[Shape]]) -> list[Shape]:
    """The padded row shape each sample was written at (the running max up to its batch)."""
    out = []
    for k, batch in enumerate(shapes):
        out += [max_shape_of(shapes[: k + 1])] * len(batch)
    return out


def test_spans_before_a_growth_carry_their_row_shape(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    samples = write_committing(path, GROWING, compressors=None)
    store = oocstore.open(path)
    check_store(store, samples, 0)
    at = row_shapes_when_written(GROWING)
    top = max_shape(samples)
    spans = spans_of(store)
    assert [s[:2] for s in spans] == [[0, 2], [2, 3], [3, 5], [5, 6]]  # one per commit
    for span in spans:
        start, stop = span[:2]
        tag = tuple(span[3]) if len(span) > 3 else top
        assert {at[i] for i in range(start, stop)} == {tag}
        assert (len(span) > 3) == (tag != top)
        assert span[2] == hash_rows(store["img"], start, stop, tag)
    assert all(len(s) == 3 for s in spans_of(store, "img.shapes"))


@pytest.mark.parametrize("where", ["before-growth", "after-growth"])
def test_verify_finds_a_flipped_byte_in_either_span(tmp_path: Path, where: str) -> None:
    path = tmp_path / "s.zarr"
    shapes = [[(6, 5, 3), (4, 8, 3)], [(20, 30, 3)]]
    write_committing(path, shapes, compressors=None)
    with oocstore.open(path) as store:
        assert store.verify() == []
    # Uncompressed chunk files are the rows' bytes: tile (0, 0, 0) holds row 0's first pixels;
    # tile (1, 1, 0) exists only since the rows grew, and holds row 2's pixel (16, 16).
    tile = tile_of(path)
    if where == "before-growth":
        name, row, offset = "c.0.0.0.0", 0, 0
    else:
        name, row, offset = "c.0.1.1.0", 2, 2 * math.prod(tile)
    f = path / "img" / name
    raw = bytearray(f.read_bytes())
    raw[offset] ^= 0xFF
    f.write_bytes(bytes(raw))
    with oocstore.open(path) as damaged:
        problems = damaged.verify()
    assert [(p.field, p.array) for p in problems] == [("img", "img")]
    (hit,) = problems
    assert hit.start <= row < hit.stop
    assert (hit.start, hit.stop) == ((0, 2) if where == "before-growth" else (2, 3))


def test_coalesced_spans_never_mix_row_shapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 24 commits, the rows growing every 4th: spans merge within a growth, never across one.
    monkeypatch.setattr("oocstore.writer.core.MAX_SPANS", 2)
    path = tmp_path / "s.zarr"
    shapes: list[list[Shape]] = []
    for k in range(24):
        side = 3 + 4 * (k // 4)
        shapes.append([(side, side + 1, 3), (k % 3 + 1, 2, 3)])
    samples = write_committing(path, shapes, compressors=None, fill=5)
    store = oocstore.open(path)
    check_store(store, samples, 5)
    at = row_shapes_when_written(shapes)
    top = max_shape(samples)
    spans = spans_of(store)
    assert len(spans) < 24  # they did merge
    assert spans[0][0] == 0
    assert spans[-1][1] == len(samples)
    for a, b in itertools.pairwise(spans):
        assert a[1] == b[0]
    for span in spans:
        start, stop = span[:2]
        tag = tuple(span[3]) if len(span) > 3 else top
        assert {at[i] for i in range(start, stop)} == {tag}, f"span {span[:2]} mixes shapes"
    # Six shapes: adjacent spans differ in shape, so none is left to merge.
    assert len(spans) == len(set(at))


def test_coalesce_merges_only_spans_of_one_row_shape() -> None:
    rng = np.random.default_rng(5)
    itemsize, top = 2, (6, 4)
    tags = [(2, 4), (2, 4), (3, 4), None, None, None, (3, 4)]  # None: hashed at ``top``
    spans, rows, start = [], [], 0
    for k, tag in enumerate(tags):
        shape = top if tag is None else tag
        block = rng.integers(0, 2**15, (k % 3 + 1, *shape)).astype("<i2")
        span = [start, start + len(block), f"{crc32c.crc32c(block.tobytes()):08x}"]
        spans.append(span if tag is None else [*span, list(tag)])
        rows.append((block, tag))
        start += len(block)
    merged = coalesce([list(s) for s in spans], itemsize, top, limit=1)
    assert [s[3:] for s in merged] == [[[2, 4]], [[3, 4]], [], [[3, 4]]]
    assert [s[:2] for s in merged] == [
        [spans[0][0], spans[1][1]],
        [spans[2][0], spans[2][1]],
        [spans[3][0], spans[5][1]],
        [spans[6][0], spans[6][1]],
    ]
    for span, group in zip(merged, [[0, 1], [2], [3, 4, 5], [6]], strict=True):
        data = b"".join(rows[i][0].tobytes() for i in group)
        assert span[2] == f"{crc32c.crc32c(data):08x}"


BAD_TAGS: list[Any] = [
    [6, 8],  # one axis short
    [6, 8, 3, 1],  # one axis too many
    [40, 8, 3],  # bigger than the array's rows
    [6, 8, 4],
    [-1, 8, 3],
    ["6", 8, 3],  # not ints
    [6.0, 8, 3],
    [True, 8, 3],
    "6,8,3",
    None,
]


def test_valid_span_checks_the_row_shape() -> None:
    shape = (33, 36, 3)
    assert valid_span([0, 2, "00000000"], 5, shape)
    assert valid_span([0, 2, "00000000", [6, 8, 3]], 5, shape)
    assert valid_span([0, 2, "00000000", [33, 36, 3]], 5, shape)
    assert valid_span([0, 2, "00000000", [0, 0, 0]], 5, shape)
    for tag in BAD_TAGS:
        assert not valid_span([0, 2, "00000000", tag], 5, shape), tag
    assert not valid_span([0, 2, "00000000", [6, 8, 3], []], 5, shape)


@pytest.mark.parametrize("tag", BAD_TAGS, ids=repr)
def test_a_tampered_row_shape_is_a_bad_span(tmp_path: Path, tag: Any) -> None:
    path = tmp_path / "s.zarr"
    shapes = [[(6, 5, 3), (4, 8, 3)], [(20, 30, 3)]]
    samples = write_committing(path, shapes, compressors=None)

    def tamper(doc: dict[str, Any]) -> None:
        spans = doc["extra"]["checksums"]["spans"]["img"]
        assert spans[0][3] == [6, 8, 3]
        spans[0][3] = tag

    rewrite_manifest(path, tamper)
    with oocstore.open(path) as store:
        problems = store.verify()
        assert [(p.field, p.array) for p in problems] == [("img", "img")]
        assert "bad span" in problems[0].message
        for i, s in enumerate(samples):  # the data itself still reads
            assert same(store.sample("img", i), s)
    with pytest.raises(oocstore.CorruptStoreError, match="checksum record of array 'img'"):
        oocstore.Writer(path, resume=True)
    # Without its row shape the span is well formed again, and the refused writer let go of
    # the store: a writer resumes it. Rows 0..2, hashed at (6, 8, 3), now read whole: a mismatch.
    rewrite_manifest(path, lambda doc: doc["extra"]["checksums"]["spans"]["img"][0].pop())
    oocstore.Writer(path, resume=True).close()
    with oocstore.open(path) as store:
        assert [(p.start, p.stop) for p in store.verify()] == [(0, 2)]


# -- 5. a writer killed after growing -------------------------------------------------------------

# The child writer: appends CFG["batches"], commits after those in CFG["commit_after"], then
# SIGKILLs itself: "before-commit" right away (rows that grew are in tiles past the committed
# grid, zarr.json still at the commit), "in-commit" inside the next commit after its sync
# (zarr.json ahead of the manifest) and before its manifest. With CFG["die_on_drop"], it dies
# right after the n-th removal of that array (a dense field being replaced by a padded one).
CHILD = """
import os, signal, time

import oocstore
from oocstore.backends.zarr import ZarrBackend

cfg = CFG


def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


if cfg.get("die_on_drop"):
    name, nth = cfg["die_on_drop"]
    real_drop = ZarrBackend._drop
    drops = []

    def _drop(self, array):
        real_drop(self, array)
        drops.append(array)
        if drops.count(name) == nth:
            die()

    ZarrBackend._drop = _drop

w = oocstore.Writer(
    cfg["path"],
    names=("img", "label"),
    fill=cfg["fill"],
    compressors=cfg["compressors"],
    commit_bytes=2**40,
    commit_seconds=3600.0,
)
for k, batch in enumerate(cfg["batches"]):
    w.append(batch)
    if k in cfg["commit_after"]:
        w.commit()
if cfg["end"] == "in-commit":
    ZarrBackend.write_manifest = die
    w.commit()
die()
"""


def run_killed_writer(path: Path, batches: list[Batch], **cfg: Any) -> None:
    """Run the child writer in its own process; it must end SIGKILLed."""
    ctx = forkserver()
    config = {"path": str(path), "batches": batches, "fill": 0, "compressors": None, **cfg}
    proc = ctx.Process(target=exec, args=(CHILD, {"CFG": config}), name="oocstore-writer")
    proc.start()
    proc.join(120)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        pytest.fail("the writer process hung")
    assert proc.exitcode == -signal.SIGKILL, f"the writer process exited {proc.exitcode}"


COMMITTED = [[(6, 5, 3), (4, 8, 3)]]  # committed at rows of (6, 8, 3): a grid of one tile
DEAD = [[(20, 30, 3)], [(33, 36, 3), (1, 1, 3)]]  # grown twice, never committed
KILLS = ["before-commit", "in-commit"]


def kill_after_growth(path: Path, end: str, compressors: Any = None, fill: Any = 4) -> None:
    """A writer commits two samples, grows its rows twice, and is killed at ``end``."""
    batches = make_batches("u8", COMMITTED + DEAD)
    run_killed_writer(path, batches, fill=fill, compressors=compressors, commit_after=[0], end=end)
    # What the test is about: tiles of rows that grew after the commit exist on disk.
    assert past_grid(path, (6, 8, 3)), "the killed writer wrote no tile past the committed grid"
    ahead = array_meta(path)["shape"][1:]
    assert ahead == ([33, 36, 3] if end == "in-commit" else [6, 8, 3])


@pytest.mark.crash
@pytest.mark.parametrize("compressors", [None, "auto"])
@pytest.mark.parametrize("end", KILLS)
def test_killed_writer_leaves_its_commit_and_resumes(
    tmp_path: Path, end: str, compressors: Any
) -> None:
    path = tmp_path / "s.zarr"
    kill_after_growth(path, end, compressors)
    committed = samples_of(make_batches("u8", COMMITTED))
    with oocstore.open(path) as store:
        assert not store.complete
        assert store["img"].shape == (2, 6, 8, 3)
        check_store(store, committed, 4)
    # The same source again: the resumed writer skips the commit and grows as the dead one did.
    batches = make_batches("u8", [*COMMITTED, *DEAD, [(9, 40, 3)]])
    store = oocstore.write(
        iter(batches),
        path,
        names=("img", "label"),
        fill=4,
        compressors=compressors,
        resume=True,
    )
    assert store.complete
    check_store(store, samples_of(batches), 4)


@pytest.mark.crash
@pytest.mark.parametrize("end", KILLS)
def test_resume_removes_tiles_past_the_committed_grid(tmp_path: Path, end: str) -> None:
    path = tmp_path / "s.zarr"
    kill_after_growth(path, end)
    w = oocstore.Writer(path, resume=True, names=("img", "label"), fill=4)
    try:
        assert past_grid(path, (6, 8, 3)) == [], "tiles of a dead writer's rows are left"
    finally:
        w.abort()  # commits: zarr.json is back at the committed rows
    assert array_meta(path)["shape"][1:] == [6, 8, 3]
    with oocstore.open(path) as store:
        check_store(store, samples_of(make_batches("u8", COMMITTED)), 4)


@pytest.mark.crash
@pytest.mark.parametrize("compressors", [None, "auto"])
@pytest.mark.parametrize("end", KILLS)
def test_resume_with_other_samples_pads_them_with_fill(
    tmp_path: Path, end: str, compressors: Any
) -> None:
    """The resumed writer's samples differ from the dead one's (a shuffled or augmented
    source): their padding must be the fill, never the dead writer's pixels."""
    path = tmp_path / "s.zarr"
    kill_after_growth(path, end, compressors)
    batches = make_batches("u8", [*COMMITTED, [(3, 3, 3)], [(9, 12, 3), (10, 2, 3)]], seed=7)
    batches[0] = make_batches("u8", COMMITTED)[0]  # the committed samples are the same
    store = oocstore.write(
        iter(batches),
        path,
        names=("img", "label"),
        fill=4,
        compressors=compressors,
        resume=True,
    )
    check_store(store, samples_of(batches), 4)


# -- 6. a reader while the writer has grown -----------------------------------------------------


@pytest.mark.parametrize("compressors", [None, "auto"])
def test_reader_sees_the_committed_shape_while_the_writer_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compressors: Any
) -> None:
    path = tmp_path / "s.zarr"
    batches = make_batches("u8", [*COMMITTED, *DEAD, [(5, 5, 3)]])
    samples = samples_of(batches)
    w = oocstore.Writer(path, names=("img", "label"), fill=4, compressors=compressors)
    w.append(batches[0])
    w.commit()
    w.append(batches[1])
    w.append(batches[2])  # grown twice: the first growth's rows are in new tiles on disk
    assert past_grid(path, (6, 8, 3))
    with oocstore.open(path) as store:
        assert store["img"].shape == (2, 6, 8, 3)
        check_store(store, samples[:2], 4)
    # A commit whose sync wrote zarr.json (ahead) but whose manifest never landed.
    monkeypatch.setattr(ZarrBackend, "write_manifest", lambda self, manifest: None)
    w.commit()
    monkeypatch.undo()
    assert array_meta(path)["shape"][1:] == [33, 36, 3]
    with oocstore.open(path) as store:
        assert store["img"].shape == (2, 6, 8, 3)
        check_store(store, samples[:2], 4)
    w.commit()
    with oocstore.open(path) as store:
        assert store["img"].shape == (5, 33, 36, 3)
        check_store(store, samples[:5], 4)
    w.append(batches[3])
    w.close()
    with oocstore.open(path) as store:
        check_store(store, samples, 4)


# -- 7. dense, then ragged ----------------------------------------------------------------------

UNIFORM = [[(8, 8, 3)] * 3] * 3


@pytest.mark.parametrize("compressors", [None, "auto"])
def test_dense_then_ragged_before_any_commit_goes_padded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compressors: Any
) -> None:
    grows = spy(monkeypatch, ZarrBackend, "grow_rows")
    links = spy(monkeypatch, ZarrBackend, "link_array")
    path = tmp_path / "s.zarr"
    shapes = [*UNIFORM, [(5, 12, 3), (8, 8, 3)], [(30, 2, 3)]]
    batches = make_batches("u8", shapes)
    store = oocstore.write(
        iter(batches), path, names=("img", "label"), fill=2, compressors=compressors
    )
    check_store(store, samples_of(batches), 2)
    assert store.layout("img") == "padded"
    assert links == []
    assert [tuple(s) for _, s in grows] == [(8, 12, 3), (30, 12, 3)]
    assert sorted(store.manifest.arrays) == ["img", "img.shapes", "label"]
    # Tiled on the axes the first ragged batch varied: a quarter of (8, 8), but at least 16.
    assert tile_of(path) == (16, 16, 3)


@pytest.mark.parametrize("why", ["committed", "over-budget"])
def test_dense_then_ragged_after_a_commit_goes_packed_then_padded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    links = spy(monkeypatch, ZarrBackend, "link_array")
    path = tmp_path / "s.zarr"
    if why == "committed":
        shapes = [*UNIFORM, [(5, 12, 3), (8, 8, 3)], [(30, 2, 3)], [(3, 3, 3)]]
        memory = None
    else:  # the dense rows (4.9 MB) are more than a quarter of the budget: not read back
        shapes = [[(64, 64, 3)] * 400, [(70, 10, 3)], [(3, 80, 3)]]
        memory = "16MB"
    batches = make_batches("u8", shapes)
    samples = samples_of(batches)
    w = oocstore.Writer(
        path,
        names=("img", "label"),
        fill=6,
        memory=memory,
        compressors=None,
        commit_bytes=2**40,
        commit_seconds=3600.0,
    )
    w.append(batches[0])
    if why == "committed":
        w.commit()
    for b in batches[1:-1]:
        w.append(b)
    w.commit()
    with oocstore.open(path) as store:
        assert store.layout("img") == "packed"
        n = len(store)
        assert n == len(samples) - len(batches[-1][0])
        for i in range(n):
            assert same(store.sample("img", i), samples[i])
    assert [c[:2] for c in links] == [("img", "img.values")]
    w.append(batches[-1])
    w.close()
    with oocstore.open(path) as store:
        assert store.layout("img") == "padded"
        check_store(store, samples, 6)
        assert sorted(store.manifest.arrays) == ["img", "img.shapes", "label"]
    assert sorted(p.name for p in path.iterdir() if p.is_dir()) == ["img", "img.shapes", "label"]


# -- 8. an array that vanished before its first rows --------------------------------------------


@pytest.mark.crash
@pytest.mark.parametrize("left", ["nothing", "empty-dir"])
def test_a_vanished_empty_array_opens_empty_and_is_recreated(tmp_path: Path, left: str) -> None:
    """Killed while replacing the dense array by a padded one, before any rows were committed:
    right after removing the old directory, or (``empty-dir``) after creating the new one."""
    path = tmp_path / "s.zarr"
    shapes = [[(8, 8, 3)] * 2, [(5, 12, 3)], [(20, 3, 3)]]
    batches = make_batches("u8", shapes)
    run_killed_writer(path, batches, commit_after=[], end="", die_on_drop=("img", 2))
    assert not (path / "img").exists()
    if left == "empty-dir":
        (path / "img").mkdir()
    with oocstore.open(path) as store:
        assert len(store) == 0
        assert store.layout("img") == "dense"
        assert np.asarray(store["img"]).shape == (0, 8, 8, 3)
        assert store.verify() == []
    store = oocstore.write(iter(batches), path, names=("img", "label"), resume=True)
    check_store(store, samples_of(batches), 0)
    assert store.layout("img") == "padded"


# -- 9. tile shapes -----------------------------------------------------------------------------


def test_tile_shape_examples() -> None:
    assert tile_shape((256, 256, 3), 1, (0, 1)) == (64, 64, 3)
    assert tile_shape((8, 6, 3), 1) == (8, 6, 3)  # nothing varies and it is small: the row
    assert tile_shape((40, 40, 3), 4, (0, 1)) == (16, 16, 3)  # a quarter, but at least 16
    assert tile_shape((12,), 2, (0,)) == (16,)  # never below 16 on an axis that varied
    assert tile_shape((0, 5), 1, (0,)) == (16, 5)
    assert tile_shape((0, 5), 1) == (1, 5)  # an empty axis that did not vary: a 1-wide tile
    assert tile_shape((), 8) == ()
    # Nothing varies but the row is 3 MiB: the largest axis halved until 32 KiB at most.
    assert tile_shape((512, 512, 3), 4) == (32, 64, 3)
    assert tile_shape((16, 16, 16, 16), 8) == (16, 16, 16, 16)  # every axis <= 16: as is


def halvings(base: int, tile: int) -> int | None:
    """How many ceil-halvings take ``base`` to ``tile`` (None: none do)."""
    k, v = 0, base
    while v > tile:
        v, k = -(-v // 2), k + 1
    return k if v == tile else None


@given(
    shape=st.lists(st.integers(0, 3000), min_size=1, max_size=4).map(tuple),
    itemsize=st.sampled_from([1, 2, 4, 8, 16]),
    data=st.data(),
)
def test_tile_shape_bounds(shape: Shape, itemsize: int, data: st.DataObject) -> None:
    growing = data.draw(st.sets(st.integers(0, len(shape) - 1)).map(sorted))
    tile = tile_shape(shape, itemsize, growing)
    assert len(tile) == len(shape)
    assert all(type(t) is int and t >= 1 for t in tile)
    nbytes = math.prod(tile) * itemsize
    assert nbytes <= TILE_BYTES or max(tile) <= 16
    shrunk = False
    for axis, (d, t) in enumerate(zip(shape, tile, strict=True)):
        d = max(d, 1)
        base = max(-(-d // 4), 16) if axis in growing else d
        k = halvings(base, t)
        assert k is not None, f"axis {axis}: {t} is not {base} halved"
        assert -(-base // t) <= 2**k  # the grid of one base extent: 2**k tiles at most
        assert -(-d // t) * t >= d > (-(-d // t) - 1) * t  # covers d, no tile wholly past it
        shrunk |= t < base
    if shrunk:  # halved only while too big: the last halving left more than half the limit
        assert nbytes > TILE_BYTES // 2


# -- 10. convert -------------------------------------------------------------------------------


@pytest.mark.parametrize("other", [".ooc", ".h5"])
def test_convert_to_npy_and_hdf5_and_back(tmp_path: Path, other: str) -> None:
    batches = make_batches("f32", GROWING)
    samples = samples_of(batches)
    src = oocstore.write(
        iter(batches), tmp_path / "s.zarr", names=("img", "label"), fill=float("nan")
    )
    there = oocstore.convert(src, tmp_path / f"t{other}")
    assert there.layout("img") == "padded"
    check_store(there, samples, float("nan"))
    back = oocstore.convert(there, tmp_path / "back.zarr")
    assert back.layout("img") == "padded"
    assert same_fill(back.manifest.layout("img").fill, float("nan"))
    check_store(back, samples, float("nan"))
    assert same(np.asarray(back["img"]), np.asarray(src["img"]))
    for s in (src, there, back):
        s.close()


# -- memory -----------------------------------------------------------------------------------


def peak_bytes_of(run: Any) -> int:
    """The largest memory Python and NumPy held at once while ``run()`` ran (tracemalloc)."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def small_then_large(n: int, side: int) -> Iterator[Batch]:
    """Two small images, then ``n`` of ``side`` x ``side``: a generator (length unknown)."""
    yield from make_batches("u8", [[(3, 4, 3), (5, 2, 3)], *[[(side, side - 3, 3)]] * n])


# Chunks of a 60-byte tile hold 34952 rows (zstd), shards 2.2 million: a stage of whole chunks
# or shards of rows grown to 128x125x3 or 20x17x3 is gigabytes. A shard of tiles is ~128 MiB by
# design, hence the bound: the budget is 64 MiB, at most 1 GiB may be held at once.
@pytest.mark.parametrize(
    ("storage", "side"),
    [({"compressors": "auto"}, 128), ({"compressors": "auto", "shards": True}, 20)],
    ids=["zstd-128", "sharded-20"],
)
def test_growth_keeps_the_writer_within_its_memory_budget(
    tmp_path: Path, storage: dict[str, Any], side: int
) -> None:
    """Small first images make small tiles, so chunks (and shards) of many rows. Once the rows
    grow, the writer must not stage a whole chunk or shard of the grown rows."""
    path = tmp_path / "s.zarr"

    def run() -> None:
        oocstore.write(
            small_then_large(3, side), path, names=("img", "label"), memory="64MB", **storage
        ).close()

    peak = peak_bytes_of(run)
    assert peak <= 2**30, f"the writer held {peak / 2**20:,.0f} MiB at once (budget 64 MiB)"
    with oocstore.open(path) as store:
        check_store(store, samples_of(list(small_then_large(3, side))), 0)
