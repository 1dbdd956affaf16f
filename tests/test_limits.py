"""Samples and padding that cannot fit are refused before anything is allocated; padding that
explodes is said once; tiny stores stay tiny."""

from __future__ import annotations

import math
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import oocstore
from oocstore.sizing import MAX_SAMPLE_BYTES

from .conftest import SUFFIX

MiB = 2**20


# -- a sample no disk or file can hold ------------------------------------------------------


def test_a_4_tib_sample_is_disk_full_before_any_allocation(tmp_path: Path, backend: str) -> None:
    path = tmp_path / f"s{SUFFIX[backend]}"
    huge = np.broadcast_to(np.float32(0), (1, 1 << 20, 1 << 20))  # 4 TiB, no RAM
    with pytest.raises(oocstore.DiskFullError, match=r"field 'x'.*4,398,046,511,104 bytes") as e:
        oocstore.write([{"x": huge}], path)
    assert isinstance(e.value, OSError)
    assert e.value.needed == 4 * 2**40
    assert e.value.free is not None
    assert f"{e.value.free:,} free" in str(e.value)
    assert os.listdir(tmp_path) == []  # the writer removed the store it had started


def test_a_sample_larger_than_any_file_is_a_value_error(tmp_path: Path, backend: str) -> None:
    path = tmp_path / f"s{SUFFIX[backend]}"
    side = 1 << 25  # (2**25)**2 float32 = 2**52 bytes per sample
    huge = np.broadcast_to(np.float32(0), (1, side, side))
    with pytest.raises(oocstore.SampleTooLargeError, match=r"batch 0, field 'img'") as e:
        oocstore.write([{"img": huge}], path)
    assert isinstance(e.value, ValueError)
    assert e.value.field == "img"
    assert f"{MAX_SAMPLE_BYTES:,}" in str(e.value)
    assert os.listdir(tmp_path) == []


# -- padding that explodes ------------------------------------------------------------------


def _outlier_stream() -> Iterator[np.ndarray]:
    yield from (np.full((8, 8, 1), i, dtype=np.uint8) for i in range(100))
    yield np.ones((200, 200, 1), dtype=np.uint8)  # padded 101 x 40,000 for 46,400 bytes


def test_exploding_padding_warns_once_naming_the_sample(tmp_path: Path, backend: str) -> None:
    path = tmp_path / f"s{SUFFIX[backend]}"
    with pytest.warns(oocstore.PaddingWarning) as caught:
        store = oocstore.write(
            [*_outlier_stream(), np.zeros((210, 10, 1), np.uint8)], path, batched=False
        )
    assert len(caught) == 1  # once, although a later sample grows the max again
    msg = str(caught[0].message)
    assert "sample 100 (batch 100)" in msg
    assert "(200, 200, 1)" in msg
    assert "(8, 8, 1)" in msg
    assert "87x" in msg  # 101 x 40,000 / 46,400
    assert "ragged='pack'" in msg
    assert "--size" in msg
    assert caught[0].filename == __file__  # points at the caller, not at oocstore
    assert np.array_equal(store.sample("0", 7), np.full((8, 8, 1), 7, np.uint8))


def test_padding_warning_is_configurable(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oocstore.write(_outlier_stream(), tmp_path / "a.ooc", batched=False, padding_warning=None)
        oocstore.write(_outlier_stream(), tmp_path / "b.ooc", batched=False, padding_warning=500)
        oocstore.write(_outlier_stream(), tmp_path / "c.ooc", batched=False, ragged="pack")
    with pytest.warns(oocstore.PaddingWarning, match="warned past padding_warning=2x"):
        oocstore.write(
            [np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((5, 5))],  # 75 / 27 values
            tmp_path / "d.ooc",
            batched=False,
            padding_warning=2,
        )
    with pytest.raises(ValueError, match="padding_warning"):
        oocstore.Writer(tmp_path / "e.ooc", padding_warning=0)


@settings(max_examples=25)
@given(
    sides=st.lists(st.integers(1, 24), min_size=1, max_size=12),
    limit=st.sampled_from([1.5, 2.0, 4.0]),
)
def test_warning_iff_padding_passes_the_ratio(
    tmp_path_factory: pytest.TempPathFactory, sides: list[int], limit: float
) -> None:
    """A model of the rule: at each sample that grows the max, padded/values > limit warns."""
    expected, values, top = False, 0, sides[0]
    for i, side in enumerate(sides):
        values += side * side
        if side > top:
            top = side
            expected = expected or (i + 1) * top * top / values > limit
    path = tmp_path_factory.mktemp("pad") / "s.ooc"
    samples = [np.ones((s, s), np.uint8) for s in sides]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        oocstore.write(samples, path, batched=False, padding_warning=limit)
    got = [w for w in caught if issubclass(w.category, oocstore.PaddingWarning)]
    assert len(got) == int(expected)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A freshly mounted 48 MiB tmpfs (root only; skipped cleanly otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", os.fspath(mnt)]
    if subprocess.run(cmd, capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", os.fspath(mnt)], check=False)


@pytest.mark.parametrize("backend_name", ["npy", "hdf5"])  # laid out padded at close
def test_padding_past_the_free_disk_is_refused_keeping_commits(
    small_disk: Path, backend_name: str
) -> None:
    path = small_disk / f"s{SUFFIX[backend_name]}"
    small = [np.full((32, 32, 3), i % 200, dtype=np.uint8) for i in range(200)]
    w = oocstore.Writer(path, batched=False)
    for img in small:
        w.append(img)
    w.append(np.zeros((30, 40, 3), np.uint8))  # ragged from here: staged packed
    w.commit()
    big = np.ones((1500, 1500, 3), dtype=np.uint8)  # padded: 201 x 6.75 MB > 48 MiB
    with pytest.raises(oocstore.DiskFullError, match=r"batch 201, field '0': padded to") as e:
        w.append(big)
    assert e.value.needed == 202 * big.nbytes
    assert "ragged='pack'" in str(e.value)
    w.close()  # the refused sample is not in the store; everything before it is
    store = oocstore.open(path)
    assert len(store) == 201
    assert store.complete
    assert np.array_equal(store.sample("0", 150), small[150])
    assert store.sample("0", 200).shape == (30, 40, 3)


# -- tiny stores ------------------------------------------------------------------------------


def _disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def test_a_tiny_store_of_unknown_length_stays_tiny(tmp_path: Path, backend: str) -> None:
    path = tmp_path / f"s{SUFFIX[backend]}"
    w = oocstore.Writer(path, names=("x", "y"))
    for _ in range(3):
        w.append((np.ones((4, 4), np.float32), np.arange(4)))
    w.commit()
    assert _disk_bytes(path) < 1 * MiB  # a killed tiny writer keeps little space
    w.close()
    assert _disk_bytes(path) < 1 * MiB


def test_unknown_length_growth_starts_at_a_few_batches(tmp_path: Path) -> None:
    path = tmp_path / "s.ooc"
    w = oocstore.Writer(path, names=("x",), memory="64MB")
    batch = np.ones((256, 1024), np.float32)  # 1 MiB a batch
    w.append((batch,))
    w.commit()
    first = _disk_bytes(path)
    assert 1 * MiB <= first <= 4 * MiB + 64 * 1024  # four batches, not 64 MiB
    for _ in range(40):
        w.append((batch,))
    w.close()
    assert math.isclose(_disk_bytes(path), 41 * MiB, rel_tol=0.01)
    assert oocstore.open(path)["x"].shape == (41 * 256, 1024)
