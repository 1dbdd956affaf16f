"""Frozen stores of each format version (tests/golden/<version>/<backend>/) keep opening.

Each is compared, field by field and byte for byte, with data regenerated here from the
recipe that wrote it (tests/golden/make_golden.py), never with data read from the stores;
the plain libraries (np.load, zarr, h5py) must read the same values; the incomplete store
resumes (a copy of it) to the complete data. The stores are never written to.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zarr

import oocstore
from oocstore.manifest import VERSION

from .golden.make_golden import (
    ATTRS,
    BACKENDS,
    BATCH_SIZES,
    GOLDEN,
    INCOMPLETE_BATCHES,
    OPTIONS,
    N,
    batches,
    samples,
    store_path,
)

VERSIONS = sorted(int(p.name) for p in GOLDEN.iterdir() if p.name.isdigit())
CASES = [(v, b) for v in VERSIONS for b in BACKENDS]
FILL = OPTIONS["fill"]["img"]
IMG_MAX = OPTIONS["max_shape"]["img"]


def physical(n: int = N) -> dict[str, np.ndarray]:
    """The physical arrays of the first ``n`` samples, as the recipe lays them out."""
    s = samples()
    img = np.full((n, *IMG_MAX), FILL, dtype=np.uint8)
    for i, a in enumerate(s["img"][:n]):
        img[i, : a.shape[0], : a.shape[1]] = a
    tokens = s["tokens"][:n]
    sizes = np.array([len(t) for t in tokens], dtype=np.int64)
    return {
        "x": s["x"][:n],
        "label": s["label"][:n],
        "img": img,
        "img.shapes": np.array([a.shape for a in s["img"][:n]], dtype=np.int64),
        "tokens.values": np.concatenate(tokens),
        "tokens.offsets": np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64),
        "tokens.shapes": sizes.reshape(-1, 1),
    }


def plain(backend: str, path: Path, name: str, rows: int) -> np.ndarray:
    """Physical array ``name``'s first ``rows`` rows, read by the format's own library."""
    if backend == "npy":
        return np.asarray(np.load(path / f"{name}.npy", mmap_mode="r")[:rows])
    if backend == "zarr":
        return np.asarray(zarr.open_group(path, mode="r")[name][:rows])
    with h5py.File(path, "r") as f:
        return np.asarray(f[name][:rows])


def check_store(store: oocstore.Store, n: int, *, complete: bool) -> None:
    """``store`` holds exactly the recipe's first ``n`` samples."""
    s = samples()
    assert len(store) == n
    assert store.complete is complete
    assert store.fields == ("x", "label", "img", "tokens")
    assert [store.layout(f) for f in store.fields] == ["dense", "dense", "padded", "packed"]
    assert store.attrs == ATTRS
    for name in ("x", "label"):
        got = np.asarray(store[name][:])
        assert got.dtype == s[name].dtype
        np.testing.assert_array_equal(got, s[name][:n])
    phys = physical(n)
    np.testing.assert_array_equal(np.asarray(store["img"][:]), phys["img"])
    np.testing.assert_array_equal(store.shapes("img"), phys["img.shapes"])
    assert len(store["tokens"]) == n
    for i in range(n):
        for name in s:
            got = store.sample(name, i)
            assert got.dtype == s[name][i].dtype
            np.testing.assert_array_equal(got, s[name][i])
        np.testing.assert_array_equal(store["tokens"][i], s["tokens"][i])
    assert store.verify() == []


def test_current_version_has_golden_stores() -> None:
    """A new format version needs its own golden stores (python -m tests.golden.make_golden)."""
    assert VERSION in VERSIONS
    for backend in BACKENDS:
        for kind in ("complete", "incomplete"):
            assert store_path(backend, kind).exists()


@pytest.mark.parametrize(("version", "backend"), CASES)
def test_complete_store_opens(version: int, backend: str) -> None:
    path = store_path(backend, "complete", version)
    with oocstore.open(path) as store:  # the backend found from the files, not the suffix
        assert store.backend == backend
        assert store.manifest.schema.names == ("x", "label", "img", "tokens")
        check_store(store, N, complete=True)
        lengths = {k: v.length for k, v in store.manifest.arrays.items()}
    expected = physical()
    assert set(lengths) == set(expected)
    for name, values in expected.items():
        assert lengths[name] == len(values)
        got = plain(backend, path, name, lengths[name])
        assert got.dtype == values.dtype
        np.testing.assert_array_equal(got, values)


@pytest.mark.parametrize(("version", "backend"), CASES)
def test_incomplete_store_opens_and_resumes(version: int, backend: str, tmp_path: Path) -> None:
    path = store_path(backend, "incomplete", version)
    n = sum(BATCH_SIZES[:INCOMPLETE_BATCHES])
    with oocstore.open(path) as store:
        assert store.backend == backend
        check_store(store, n, complete=False)
        lengths = {k: v.length for k, v in store.manifest.arrays.items()}
    for name, values in physical(n).items():
        np.testing.assert_array_equal(plain(backend, path, name, lengths[name]), values)
    copy = tmp_path / path.name
    if path.is_dir():
        shutil.copytree(path, copy)
    else:
        shutil.copy2(path, copy)
    options: dict[str, Any] = {k: v for k, v in OPTIONS.items() if k != "attrs"}
    store = oocstore.write(batches(), copy, backend=backend, resume=True, **options)
    with store:
        check_store(store, N, complete=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_manifest_names_its_version(version: int) -> None:
    """The JSON manifests (npy, Zarr) say the version their directory is named by."""
    npy = json.loads((store_path("npy", "complete", version) / "oocstore.json").read_text())
    group = json.loads((store_path("zarr", "complete", version) / "zarr.json").read_text())
    assert npy["version"] == version
    assert group["attributes"]["oocstore"]["version"] == version
