"""Stores back into training: ``store.to_torch()`` and ``store.batches()``.

``store.to_tf()`` and Keras ``fit`` are tested in test_sources_tf.py, with the rest of
TensorFlow (importing it takes seconds).
"""

from __future__ import annotations

import pickle
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import oocstore
from oocstore.sinks._batches import Batches, _Plan

N = 103


@pytest.fixture
def xy_store(store_path: Path) -> oocstore.Store:
    x = np.arange(N * 6, dtype=np.float32).reshape(N, 2, 3)
    y = np.arange(N, dtype=np.int64)
    return oocstore.write((x, y), store_path, names=("x", "y"))


# -- store.batches ------------------------------------------------------------------------------


def test_batches_in_order(xy_store: oocstore.Store) -> None:
    batches = xy_store.batches(10)
    assert len(batches) == 11
    got = list(batches)
    assert [len(b[1]) for b in got] == [10] * 10 + [3]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), xy_store["x"][:])
    assert len(xy_store.batches(10, drop_last=True)) == 10
    assert [len(b[1]) for b in xy_store.batches(10, drop_last=True)] == [10] * 10


@pytest.mark.parametrize("block_rows", [None, 1, 7, 50])
def test_shuffled_epochs_hold_every_sample_once(
    xy_store: oocstore.Store, block_rows: int | None
) -> None:
    batches = Batches(xy_store, 8, shuffle="block", seed=1, block_rows=block_rows, window=3)
    orders = []
    for _ in range(3):
        got = list(batches)
        assert len(got) == len(batches) == 13
        ids = np.concatenate([b[1] for b in got])
        assert Counter(ids.tolist()) == Counter(range(N))  # every sample exactly once
        np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), xy_store["x"][ids])
        orders.append(ids)
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[1], orders[2])


def test_shuffle_is_reproducible_by_seed(xy_store: oocstore.Store) -> None:
    def epochs(seed: int | None) -> list[list[int]]:
        b = xy_store.batches(16, shuffle=True, seed=seed)
        return [np.concatenate([y for _, y in b]).tolist() for _ in range(2)]

    assert epochs(7) == epochs(7)
    assert epochs(7) != epochs(8)
    assert epochs(None) != epochs(None)


def test_shuffle_drop_last(xy_store: oocstore.Store) -> None:
    batches = xy_store.batches(10, shuffle=True, seed=0, drop_last=True)
    got = list(batches)
    assert [len(y) for _, y in got] == [10] * 10
    assert len(set(np.concatenate([y for _, y in got]).tolist())) == 100


def test_indexed_batches_are_the_iterated_ones(xy_store: oocstore.Store) -> None:
    batches = Batches(xy_store, 8, shuffle=True, seed=3, block_rows=5, window=2)
    indexed = [batches[i] for i in range(len(batches))]  # epoch 0, as Keras asks for it
    iterated = list(batches)  # epoch 0 too
    for a, b in zip(indexed, iterated, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    batches.on_epoch_end()
    assert not np.array_equal(batches[0][1], indexed[0][1])
    with pytest.raises(IndexError, match="out of range"):
        batches[len(batches)]


def test_shuffle_mixes_rows_from_many_blocks() -> None:
    plan = _Plan(length=10_000, block_rows=100, window=8, seed=0, epoch=0)
    rows = plan.rows(0, 64)  # the first batch of the epoch
    assert len({int(r) // 100 for r in rows}) >= 6  # drawn from most of the window's 8 blocks
    assert sorted(np.concatenate([plan.window_rows(w) for w in range(13)]).tolist()) == list(
        range(10_000)
    )


class RecordingArray:
    """An array that records how it is read."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.shape, self.dtype = data.shape, data.dtype
        self.reads: list[Any] = []

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: Any) -> np.ndarray:
        self.reads.append(key)
        return self.data[key]


def test_shuffle_reads_whole_blocks_contiguously() -> None:
    data = np.arange(1000)
    arr = RecordingArray(data)
    plan = _Plan(length=1000, block_rows=64, window=4, seed=2, epoch=0)
    out = np.concatenate([plan.read_window([arr], w)[0] for w in range(plan.n_windows)])
    assert all(isinstance(k, slice) and k.step is None for k in arr.reads)
    assert len(arr.reads) == 16  # one read per block: ceil(1000 / 64)
    assert sorted(out.tolist()) == list(range(1000))
    np.testing.assert_array_equal(out, np.concatenate([plan.window_rows(w) for w in range(4)]))


def test_batches_of_a_packed_field(tmp_path: Path) -> None:
    samples = [np.arange(n, dtype=np.int32) for n in (3, 1, 4, 1, 5, 9, 2)]
    store = oocstore.write(
        [([*samples], np.arange(7))], tmp_path / "s.ooc", ragged="pack", names=("seq", "id")
    )
    for shuffle in (False, True):
        got = list(store.batches(3, shuffle=shuffle, seed=0))
        for seqs, ids in got:
            assert isinstance(seqs, list)
            for s, i in zip(seqs, ids, strict=True):
                np.testing.assert_array_equal(s, samples[i])
        assert sorted(np.concatenate([i for _, i in got]).tolist()) == list(range(7))


def test_batches_errors(xy_store: oocstore.Store) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        xy_store.batches(0)
    with pytest.raises(KeyError, match="no field 'z'"):
        xy_store.batches(4, fields=("z",))


def test_batches_pickle_small_and_keep_going(xy_store: oocstore.Store) -> None:
    batches = xy_store.batches(10, shuffle=True, seed=4, fields=("y",))
    data = pickle.dumps(batches)
    assert len(data) < 2000
    again = pickle.loads(data)
    a = np.concatenate([y for (y,) in batches])
    b = np.concatenate([y for (y,) in again])
    np.testing.assert_array_equal(a, b)  # same seed, same epoch: the same order


# -- store.to_torch -----------------------------------------------------------------------------

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")


def double(sample: tuple[Any, ...]) -> tuple[Any, ...]:
    """A transform: module level, so spawned DataLoader workers can unpickle it."""
    x, y = sample
    return x * 2, y


def check_loader(store: oocstore.Store, **kwargs: Any) -> None:
    loader = torch.utils.data.DataLoader(store.to_torch(), batch_size=8, num_workers=2, **kwargs)
    xs, ys = zip(*loader, strict=True)
    np.testing.assert_array_equal(torch.cat(xs).numpy(), store["x"][:])
    np.testing.assert_array_equal(torch.cat(ys).numpy(), store["y"][:])


def start_method() -> str:
    """fork (Linux's default, fast) unless an earlier test left JAX or TensorFlow threads
    running, which fork() must not copy: then spawn."""
    return "spawn" if {"jax", "tensorflow"} & set(sys.modules) else "fork"


def test_to_torch_through_dataloader_workers(xy_store: oocstore.Store) -> None:
    ds = xy_store.to_torch()
    data = pickle.dumps(ds)
    assert len(data) < 1000  # the store pickles as its path
    again = pickle.loads(data)
    np.testing.assert_array_equal(again[7][0].numpy(), xy_store["x"][7])
    check_loader(xy_store, multiprocessing_context=start_method())


@pytest.mark.slow
def test_to_torch_spawned_workers_unpickle_the_dataset(tmp_path: Path) -> None:
    x = np.arange(N * 6, dtype=np.float32).reshape(N, 2, 3)
    store = oocstore.write((x, np.arange(N)), tmp_path / "s.ooc", names=("x", "y"))
    check_loader(store, multiprocessing_context="spawn")  # each worker imports torch: slow


def test_to_torch_transform_and_fields(xy_store: oocstore.Store) -> None:
    ds = xy_store.to_torch(transform=double)
    x, y = ds[5]
    np.testing.assert_array_equal(x.numpy(), xy_store["x"][5] * 2)
    assert int(y) == 5
    (only,) = xy_store.to_torch(fields=("y",))[-1]
    assert int(only) == N - 1
    with pytest.raises(IndexError):
        ds[N]


def mapping_of(address: int) -> tuple[str, str] | None:
    """Sharing flag ("p" private, "s" shared) and file of the memory mapping holding address."""
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            lo, hi = (int(v, 16) for v in parts[0].split("-"))
            if lo <= address < hi:
                return parts[1][3], parts[5].strip() if len(parts) > 5 else ""
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc/self/maps")
def test_to_torch_is_zero_copy_and_never_writes_the_file(tmp_path: Path) -> None:
    x = np.arange(40, dtype=np.float64).reshape(10, 4)
    store = oocstore.write(x, tmp_path / "s.ooc")
    ds = store.to_torch()
    (t,) = ds[3]  # no "not writable" warning: pytest turns warnings into errors
    # Zero copy: the tensor's memory is a private (copy-on-write) mapping of the field's file.
    assert mapping_of(t.data_ptr()) == ("p", str(tmp_path / "s.ooc" / "0.npy"))
    t += 100  # in place, as an augmentation might
    again = oocstore.open(tmp_path / "s.ooc")
    np.testing.assert_array_equal(again["0"][3], x[3])  # the file is unchanged
    np.testing.assert_array_equal(np.load(tmp_path / "s.ooc" / "0.npy", mmap_mode="r"), x)


def test_to_torch_ragged_samples_have_true_shapes(tmp_path: Path) -> None:
    images = [np.full((h, 3), h, np.uint8) for h in (2, 5, 1)]
    store = oocstore.write([([*images], np.arange(3))], tmp_path / "s.ooc", names=("img", "i"))
    ds = store.to_torch()
    for i, im in enumerate(images):
        np.testing.assert_array_equal(ds[i][0].numpy(), im)
    packed = oocstore.write(
        [([*images], np.arange(3))], tmp_path / "p.ooc", names=("img", "i"), ragged="pack"
    ).to_torch()
    for i, im in enumerate(images):
        np.testing.assert_array_equal(packed[i][0].numpy(), im)
