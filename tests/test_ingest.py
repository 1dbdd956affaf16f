"""ingest_images: a generated image folder in; a store equal to decoding with Pillow out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import oocstore
from oocstore.ingest import _Chunker, _Decode, _decode_chunk, _ordered_map, find_images

from .images import BAD, GOOD, good_paths, make_tree, pillow_decode


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared image folder (read-only for the tests)."""
    return make_tree(tmp_path_factory.mktemp("images") / "src")


def check_against_pillow(
    store: oocstore.Store,
    root: Path,
    paths: list[str],
    *,
    mode: str = "RGB",
    size: tuple[int, int] | None = None,
) -> None:
    assert [str(p) for p in store["paths"][:]] == paths
    for i, rel in enumerate(paths):
        expected = pillow_decode(root / rel, mode, size)
        got = store.sample("images", i)
        assert got.dtype == np.uint8
        assert got.shape == expected.shape, rel
        assert np.array_equal(got, expected), rel
        assert tuple(store.shapes("images")[i]) == expected.shape


def test_find_images_is_sorted_recursive_and_skips_hidden(tree: Path) -> None:
    assert find_images(tree) == sorted(GOOD + BAD)


def test_folders_without_size_pads_and_equals_pillow(tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.ooc"
    store = oocstore.ingest_images(tree, dst, workers=2)
    paths = good_paths()
    assert store.complete
    assert store.fields == ("images", "labels", "paths")
    assert len(store) == len(paths)
    assert store.layout("images") == "padded"
    assert store.schema["images"].shape == tuple(store.shapes("images").max(axis=0))
    check_against_pillow(store, tree, paths)
    assert store.attrs["classes"] == ["cat", "dog"]
    assert store["labels"].dtype == np.int64
    assert store["labels"][:].tolist() == [0 if p.startswith("cat/") else 1 for p in paths]
    # Padding is zeros outside each image's true region.
    images = np.asarray(store["images"])
    for i in range(len(store)):
        assert not images[i][~store.mask("images", i)].any()
    # The skip list: both bad files, with Pillow's reasons, and the summary in the attrs.
    assert store.attrs["skipped"] == 2
    assert store.attrs["skipped_list"] == "out.ooc.skipped.txt"
    lines = (tmp_path / "out.ooc.skipped.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == sorted(BAD)
    assert "truncated" in lines[0]
    assert "cannot identify image file" in lines[1]


def test_exif_orientation_is_applied(tree: Path, tmp_path: Path) -> None:
    store = oocstore.ingest_images(tree, tmp_path / "o.ooc", workers=0)
    i = [str(p) for p in store["paths"][:]].index("cat/e_exif6.jpg")
    with Image.open(tree / "cat/e_exif6.jpg") as im:
        w, h = im.size
    assert store.sample("images", i).shape == (w, h, 3)  # rotated by 90 degrees


def test_size_resizes_to_a_dense_field(tree: Path, tmp_path: Path) -> None:
    store = oocstore.ingest_images(tree, tmp_path / "s.ooc", size=(16, 20), workers=2)
    assert store.layout("images") == "dense"
    assert store["images"].shape == (len(GOOD), 16, 20, 3)
    check_against_pillow(store, tree, good_paths(), size=(16, 20))
    assert store.attrs["ingest"]["size"] == [16, 20]


def test_no_pad_packs(tree: Path, tmp_path: Path) -> None:
    store = oocstore.ingest_images(tree, tmp_path / "p.ooc", pad=False, workers=0)
    assert store.layout("images") == "packed"
    check_against_pillow(store, tree, good_paths())


def test_grayscale_is_h_w_1(tree: Path, tmp_path: Path) -> None:
    store = oocstore.ingest_images(tree, tmp_path / "g.ooc", mode="L", size=20, workers=0)
    assert store["images"].shape == (len(GOOD), 20, 20, 1)
    check_against_pillow(store, tree, good_paths(), mode="L", size=(20, 20))


def test_labels_none_has_no_labels_field(tree: Path, tmp_path: Path) -> None:
    store = oocstore.ingest_images(tree, tmp_path / "n.ooc", labels=None, workers=0)
    assert store.fields == ("images", "paths")
    assert "classes" not in store.attrs
    check_against_pillow(store, tree, good_paths())


def test_labels_csv_with_names_and_with_ints(tree: Path, tmp_path: Path) -> None:
    listed = ["dog/j.tif", "cat/a_rgb.jpg", "./dog/deep/i.jpeg", "cat/missing.jpg"]
    names = ["zebra", "ant", "zebra", "bee"]
    csv = tmp_path / "labels.csv"
    rows = "".join(f"{p},{n}\n" for p, n in zip(listed, names, strict=True))
    csv.write_text("path,label\n" + rows)
    store = oocstore.ingest_images(tree, tmp_path / "c.ooc", labels=csv, workers=0)
    order = ["cat/a_rgb.jpg", "dog/deep/i.jpeg", "dog/j.tif"]  # sorted; the missing one skipped
    check_against_pillow(store, tree, order)
    assert store.attrs["classes"] == ["ant", "bee", "zebra"]
    assert store["labels"][:].tolist() == [0, 2, 2]
    assert store.attrs["skipped"] == 1
    assert "cat/missing.jpg\tFileNotFoundError" in (tmp_path / "c.ooc.skipped.txt").read_text()

    csv.write_text("dog/j.tif,7\ncat/a_rgb.jpg,-1\n")
    store = oocstore.ingest_images(tree, tmp_path / "i.ooc", labels=csv, workers=0)
    assert store["labels"][:].tolist() == [-1, 7]
    assert "classes" not in store.attrs
    assert store.attrs["skipped"] == 0
    assert not (tmp_path / "i.ooc.skipped.txt").exists()


def test_bad_csv_is_a_clear_error(tree: Path, tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("cat/a_rgb.jpg,1,extra\n")
    with pytest.raises(oocstore.IngestError, match="line 1: expected 2 columns"):
        oocstore.ingest_images(tree, tmp_path / "x.ooc", labels=csv)
    csv.write_text("../outside.jpg,1\n")
    with pytest.raises(oocstore.IngestError, match="not a path relative"):
        oocstore.ingest_images(tree, tmp_path / "x.ooc", labels=csv)


def test_on_error_fail_names_the_file(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(oocstore.ImageDecodeError, match=r"(?i)0_truncated\.jpg.*truncated") as info:
        oocstore.ingest_images(tree, tmp_path / "f.ooc", on_error="fail", workers=0)
    assert info.value.path == "cat/0_truncated.jpg"
    assert isinstance(info.value, ValueError)


def test_mode_keep(tmp_path: Path) -> None:
    src = tmp_path / "src"
    rng = np.random.default_rng(1)
    (src / "a").mkdir(parents=True)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    rgb.save(src / "a/1.png")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(src / "a/2.png")  # follows RGB
    store = oocstore.ingest_images(src, tmp_path / "k.ooc", mode="keep", workers=0)
    assert store.attrs["ingest"]["image_mode"] == "RGB"
    check_against_pillow(store, src, ["a/1.png", "a/2.png"])

    Image.fromarray(rng.integers(0, 256, (12, 10, 4), dtype=np.uint8)).save(src / "a/3.png")
    with pytest.raises(oocstore.ImageModeError, match=r"'a/1.png' is RGB and 'a/3.png' is RGBA"):
        oocstore.ingest_images(src, tmp_path / "k2.ooc", mode="keep", workers=0)
    assert not (tmp_path / "k2.ooc").exists()  # refused before anything was written


def test_jpeg_draft_is_close_to_a_full_decode(tmp_path: Path) -> None:
    src = tmp_path / "src" / "c"
    src.mkdir(parents=True)
    y, x = np.mgrid[0:600, 0:800]
    big = np.dstack([(x * 255 // 800), (y * 255 // 600), ((x + y) % 256)]).astype(np.uint8)
    Image.fromarray(big).save(src / "big.jpg", quality=92)
    store = oocstore.ingest_images(tmp_path / "src", tmp_path / "d.ooc", size=(60, 80), workers=0)
    full = pillow_decode(src / "big.jpg", size=(60, 80)).astype(np.int16)
    got = store["images"][0].astype(np.int16)
    assert got.shape == full.shape
    assert np.abs(got - full).mean() < 2.0


def test_ordered_map_keeps_order_and_bounds_what_is_in_flight(tree: Path) -> None:
    job = _Decode(str(tree), (8, 8), "RGB")
    paths = find_images(tree) * 5
    one = 8 * 8 * 3
    chunker = _Chunker(budget=one * 4, in_flight=4, per_image=one)
    got = []
    for chunk, results, buffer in _ordered_map(_decode_chunk, job, paths, 2, chunker, one):
        assert len(chunk) <= 1  # the byte budget allows one image per task
        assert buffer is not None
        assert len(buffer) == one
        got.extend(chunk)
        for res in results:
            assert isinstance(res, str) or res[0] == 0  # at the start of its slot
    assert got == paths


def test_input_errors(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(oocstore.ImageFolderNotFoundError, match="does not exist"):
        oocstore.ingest_images(tmp_path / "nope", tmp_path / "x.ooc")
    (tmp_path / "empty").mkdir()
    with pytest.raises(oocstore.EmptySourceError, match="no images found"):
        oocstore.ingest_images(tmp_path / "empty", tmp_path / "x.ooc")
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("RGB", (4, 4)).save(loose / "top.png")
    with pytest.raises(oocstore.IngestError, match="not in a class folder"):
        oocstore.ingest_images(loose, tmp_path / "x.ooc")
    with pytest.raises(ValueError, match="size must be"):
        oocstore.ingest_images(tree, tmp_path / "x.ooc", size=(0, 3))
    with pytest.raises(ValueError, match="mode must be"):
        oocstore.ingest_images(tree, tmp_path / "x.ooc", mode="CMYK")
    with pytest.raises(TypeError, match="sets names itself"):
        oocstore.ingest_images(tree, tmp_path / "x.ooc", names=("a",))
    bad_only = tmp_path / "bad_only" / "c"
    bad_only.mkdir(parents=True)
    (bad_only / "x.jpg").write_bytes(b"junk")
    with pytest.raises(oocstore.EmptySourceError, match="none of the 1 images"):
        oocstore.ingest_images(bad_only.parent, tmp_path / "b.ooc", workers=0)
    assert not (tmp_path / "b.ooc").exists()


def test_existing_store_needs_overwrite_or_resume(tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "e.ooc"
    first = oocstore.ingest_images(tree, dst, size=16, workers=0)
    with pytest.raises(oocstore.StoreExistsError):
        oocstore.ingest_images(tree, dst, size=16, workers=0)
    with pytest.raises(oocstore.IngestError, match=r"size=None.*written with size=\[16, 16\]"):
        oocstore.ingest_images(tree, dst, resume=True, workers=0)
    assert oocstore.open(dst).complete  # the refused resume left the store as it was
    again = oocstore.ingest_images(tree, dst, size=16, workers=0, resume=True)
    assert np.array_equal(again["images"][:], first["images"][:])
    assert again.attrs == first.attrs
    redo = oocstore.ingest_images(tree, dst, size=16, workers=0, overwrite=True)
    assert np.array_equal(redo["images"][:], first["images"][:])


# -- resume after SIGKILL -------------------------------------------------------------------------

# The ingest process: decoding is slowed down so the test can kill it mid-run, and every batch
# is committed (commit_bytes=1), so the kill leaves a committed prefix to resume from.
KILLED = """
import sys, time, json
import oocstore, oocstore.ingest as ingest
original = ingest.decode_image
def slow(*args, **kwargs):
    time.sleep(0.03)
    return original(*args, **kwargs)
ingest.decode_image = slow
cfg = json.loads(sys.argv[1])
oocstore.ingest_images(cfg["src"], cfg["dst"], size=cfg["size"], workers=0, commit_bytes=1,
                       progress=False)
"""


@pytest.mark.crash
@pytest.mark.parametrize("size", [None, (12, 14)])
def test_resume_after_sigkill_equals_an_uninterrupted_run(
    tmp_path: Path, size: tuple[int, int] | None
) -> None:
    src = make_tree(tmp_path / "src", seed=3, extra=25)
    total = len(good_paths(extra=25))
    dst = tmp_path / "killed.ooc"
    cfg = json.dumps({"src": str(src), "dst": str(dst), "size": size})
    proc = subprocess.Popen([sys.executable, "-c", KILLED, cfg])
    try:
        deadline = time.monotonic() + 60
        committed = 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                committed = len(oocstore.open(dst))
            except oocstore.OocstoreError:
                committed = 0
            if committed >= 12:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the ingest finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed = oocstore.open(dst)
    assert not killed.complete
    assert committed <= len(killed) < total

    resumed = oocstore.ingest_images(src, dst, size=size, resume=True, workers=2)
    reference = oocstore.ingest_images(src, tmp_path / "ref.ooc", size=size, workers=2)
    assert resumed.complete
    assert resumed.fields == reference.fields
    assert len(resumed) == len(reference) == total
    for field in resumed.fields:
        assert np.array_equal(np.asarray(resumed[field]), np.asarray(reference[field])), field
    assert np.array_equal(resumed.shapes("images"), reference.shapes("images"))
    # The bad files were skipped before the kill; the resumed run lists them all the same.
    assert resumed.attrs["skipped"] == reference.attrs["skipped"] == 2
    assert (tmp_path / "killed.ooc.skipped.txt").read_text() == (
        tmp_path / "ref.ooc.skipped.txt"
    ).read_text()
    assert resumed.verify() == []


def test_warnings_in_pillow_do_not_escape(tree: Path, tmp_path: Path) -> None:
    # pytest turns warnings into errors here: the palette-with-transparency conversion
    # warns in Pillow, and ingest must neither fail nor skip that image because of it.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store = oocstore.ingest_images(tree, tmp_path / "w.ooc", workers=0)
    assert "cat/h_palette_alpha.png" in [str(p) for p in store["paths"][:]]


def test_the_examples_in_docs_images_md_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (Path(__file__).parents[1] / "docs" / "images.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__main__"}
    for block in blocks:
        exec(compile(block, "docs/images.md", "exec"), namespace)
    photos = namespace["Photos"]("photos.ooc")  # type: ignore[operator]
    image, label = photos[0]
    assert image.shape == (64, 64, 3)
    assert label == 0
    assert oocstore.open("photos.ooc").attrs["skipped"] == 1
