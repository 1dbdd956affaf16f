"""``oocstore.zip_streams``: parallel streams zipped into batches, checked to stay aligned."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import oocstore
from oocstore.sources import as_stream

SIZES = (16, 16, 16, 5)


def features(sizes: tuple[int, ...] = SIZES) -> Iterator[np.ndarray]:
    start = 0
    for n in sizes:
        yield np.arange(start * 3, (start + n) * 3, dtype=np.float32).reshape(n, 3)
        start += n


def labels(sizes: tuple[int, ...] = SIZES) -> Iterator[np.ndarray]:
    start = 0
    for n in sizes:
        yield np.arange(start, start + n)
        start += n


def test_two_generators_into_one_store(store_path: Path) -> None:
    store = oocstore.write(oocstore.zip_streams(features(), labels(), names=("x", "y")), store_path)
    assert store.fields == ("x", "y")
    np.testing.assert_array_equal(store["x"][:], np.concatenate(list(features())))
    np.testing.assert_array_equal(store["y"][:], np.arange(sum(SIZES)))


def test_tuples_without_names_and_write_names(tmp_path: Path) -> None:
    store = oocstore.write(
        oocstore.zip_streams(features(), labels()), tmp_path / "s.ooc", names=("a", "b")
    )
    np.testing.assert_array_equal(store["b"][:], np.arange(sum(SIZES)))


def test_size_mismatch_names_the_batch_and_sizes(tmp_path: Path) -> None:
    zipped = oocstore.zip_streams(features(), labels((16, 16, 15, 6)), names=("x", "y"))
    with pytest.raises(oocstore.BatchError, match=r"batch 2: .*out of step.*'x': 16, 'y': 15"):
        oocstore.write(zipped, tmp_path / "s.ooc")
    store = oocstore.open(tmp_path / "s.ooc")  # what came before the bad batch is kept
    assert len(store) == 32


def test_a_stream_ending_early_is_an_error() -> None:
    zipped = oocstore.zip_streams(features(), labels(SIZES[:2]), names=("x", "y"))
    with pytest.raises(oocstore.BatchError, match=r"batch 2: .*\['y'\] ended after 2 batches"):
        list(zipped)


def test_lengths_are_checked_up_front_and_give_a_hint() -> None:
    with pytest.raises(oocstore.BatchError, match="different numbers of batches"):
        oocstore.zip_streams(list(features()), list(labels())[:3])
    zipped = oocstore.zip_streams(list(features()), list(labels()))
    assert len(zipped) == 4
    assert as_stream(zipped).n_batches == 4
    assert len(list(zipped)) == len(list(zipped)) == 4  # lists: iterable again
    with pytest.raises(TypeError, match="no len"):
        len(oocstore.zip_streams(features(), labels()))


def test_lists_of_samples_and_scalars() -> None:
    zipped = oocstore.zip_streams([[np.zeros(2), np.zeros(3)]], [np.array([1, 2])])
    assert len(list(zipped)) == 1
    with pytest.raises(oocstore.BatchError, match="needs a sample axis"):
        list(oocstore.zip_streams([np.float32(1)], [np.array([1])]))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one"):
        oocstore.zip_streams()
    with pytest.raises(ValueError, match="2 streams but 1 names"):
        oocstore.zip_streams(features(), labels(), names=("x",))
