"""TensorFlow and Keras, against the real libraries: sources in, ``to_tf`` and Keras ``fit`` out.

Everything that needs TensorFlow is in this one module: importing it takes seconds.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no C++ banner per test run

import oocstore
from oocstore.sources import as_stream

tf = pytest.importorskip(
    "tensorflow", reason="TensorFlow is not installed (pip install tensorflow-cpu)"
)
keras = pytest.importorskip("keras", reason="Keras 3 is not installed (it comes with TensorFlow)")

X = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
Y = np.arange(5, dtype=np.int64)


def fields(store: oocstore.Store) -> dict[str, np.ndarray]:
    return {f: np.asarray(store[f][:]) for f in store.fields}


# -- tf.data in --------------------------------------------------------------------------------


def test_batched_dataset_with_short_final_batch(store_path: Path) -> None:
    ds = tf.data.Dataset.from_tensor_slices((X, Y)).batch(2)  # batches of 2, 2, 1
    stream = as_stream(ds)
    assert (stream.batched, stream.length) == (True, 5)
    store = oocstore.write(ds, store_path, names=("x", "y"))
    np.testing.assert_array_equal(store["x"][:], X)
    np.testing.assert_array_equal(store["y"][:], Y)
    assert store["x"].dtype == np.float32


def test_drop_remainder_length(tmp_path: Path) -> None:
    ds = tf.data.Dataset.from_tensor_slices((X, Y)).batch(2, drop_remainder=True)
    assert as_stream(ds).length == 4
    store = oocstore.write(ds, tmp_path / "s.ooc")
    np.testing.assert_array_equal(store["0"][:], X[:4])


@pytest.mark.parametrize(
    ("make", "batched", "length", "n_batches"),
    [
        (lambda d: d.batch(2).map(lambda x, y: (x * 2, y)).prefetch(2), True, 5, None),
        (lambda d: d.batch(2).take(2), True, None, 2),  # take changed the number of batches
        (lambda d: d.filter(lambda x, y: y > 1).batch(2), True, None, None),  # unknown
        (lambda d: d.batch(2).unbatch(), True, None, None),  # unbatch: samples again
        (lambda d: d.padded_batch(2), True, 5, None),
        (lambda d: d.shuffle(5).batch(3), True, 5, None),
        (lambda d: d, True, 5, None),
    ],
)
def test_length_and_batching_rule(
    make: Any, batched: bool, length: int | None, n_batches: int | None
) -> None:
    stream = as_stream(make(tf.data.Dataset.from_tensor_slices((X, Y))))
    assert (stream.batched, stream.length, stream.n_batches) == (batched, length, n_batches)


def test_unbatched_dataset_of_dicts(store_path: Path) -> None:
    ds = tf.data.Dataset.from_tensor_slices({"image": X, "label": Y})
    stream = as_stream(ds)
    assert stream.length == 5
    store = oocstore.write(ds, store_path)
    assert store.fields == ("image", "label")
    np.testing.assert_array_equal(store["image"][:], X)
    np.testing.assert_array_equal(store["label"][:], Y)


def test_nested_structures_flatten_to_joined_names(tmp_path: Path) -> None:
    ds = tf.data.Dataset.from_tensor_slices(({"a": X, "b": {"c": Y}}, Y * 10)).batch(2)
    store = oocstore.write(ds, tmp_path / "s.ooc")
    assert store.fields == ("0_a", "0_b_c", "1")
    np.testing.assert_array_equal(store["0_a"][:], X)
    np.testing.assert_array_equal(store["0_b_c"][:], Y)
    np.testing.assert_array_equal(store["1"][:], Y * 10)


def test_generator_dataset_with_none_batch_dimension(tmp_path: Path) -> None:
    def gen() -> Any:
        yield X[:3], Y[:3]
        yield X[3:], Y[3:]

    sig = (tf.TensorSpec((None, 3), tf.float32), tf.TensorSpec((None,), tf.int64))
    ds = tf.data.Dataset.from_generator(gen, output_signature=sig)
    store = oocstore.write(ds, tmp_path / "s.ooc")
    np.testing.assert_array_equal(store["0"][:], X)
    # batched=False overrides: every element (here a whole batch) is one sample
    rows = tf.data.Dataset.from_generator(
        lambda: iter([X[:2], X[2:4]]), output_signature=tf.TensorSpec((None, 3), tf.float32)
    )
    store = oocstore.write(rows, tmp_path / "t.ooc", batched=False)
    np.testing.assert_array_equal(store["0"][:], X[:4].reshape(2, 2, 3))


def test_batched_true_reads_fixed_size_batches_the_spec_cannot_tell(tmp_path: Path) -> None:
    """A generator of batches of a fixed size declares (2, 3): by the rule, samples of shape
    (2, 3); ``batched=True`` says each element is a batch of two rows."""
    fixed = tf.data.Dataset.from_generator(
        lambda: iter([X[:2], X[2:4]]), output_signature=tf.TensorSpec((2, 3), tf.float32)
    )
    auto = oocstore.write(fixed, tmp_path / "auto.ooc")
    assert auto["0"].shape == (2, 2, 3)
    rows = oocstore.write(fixed, tmp_path / "rows.ooc", batched=True)
    np.testing.assert_array_equal(rows["0"][:], X[:4])


def test_ragged_tensor_samples_come_back_unpadded(store_path: Path) -> None:
    rows = [[1, 2], [3], [4, 5, 6], [], [7]]
    rt = tf.ragged.constant(rows)
    ds = tf.data.Dataset.from_tensor_slices((rt, tf.range(5))).batch(2)
    store = oocstore.write(ds, store_path, names=("seq", "id"))
    assert [store.sample("seq", i).tolist() for i in range(5)] == rows
    np.testing.assert_array_equal(store["id"][:], np.arange(5))
    unbatched = oocstore.write(
        tf.data.Dataset.from_tensor_slices(rt), store_path.with_name("u" + store_path.name)
    )
    assert [unbatched.sample("0", i).tolist() for i in range(5)] == rows


def test_ragged_images_of_rank_two(tmp_path: Path) -> None:
    images = [np.full((h, w, 1), h * 10 + w, np.uint8) for h, w in [(2, 3), (4, 2), (1, 1)]]
    rt = tf.ragged.constant([im.tolist() for im in images], ragged_rank=2, dtype=tf.uint8)
    store = oocstore.write(tf.data.Dataset.from_tensor_slices(rt).batch(2), tmp_path / "s.ooc")
    for i, im in enumerate(images):
        np.testing.assert_array_equal(store.sample("0", i), im)


def test_whole_ragged_tensor_source(tmp_path: Path) -> None:
    rows = [[1.5], [2.5, 3.5], []]
    store = oocstore.write(tf.ragged.constant(rows), tmp_path / "s.ooc")
    assert [store.sample("0", i).tolist() for i in range(3)] == rows


def test_strings_become_bytes(tmp_path: Path) -> None:
    ds = tf.data.Dataset.from_tensor_slices((tf.constant([b"cat", b"dog", b"emu"]), Y[:3]))
    store = oocstore.write(ds.batch(2), tmp_path / "s.ooc")
    assert store["0"][:].tolist() == [b"cat", b"dog", b"emu"]


def test_sparse_tensors_are_refused(tmp_path: Path) -> None:
    ds = tf.data.Dataset.from_tensor_slices(tf.sparse.from_dense(np.eye(3, dtype=np.float32)))
    with pytest.raises(TypeError, match=r"SparseTensor.*tf\.sparse\.to_dense"):
        oocstore.write(ds, tmp_path / "s.ooc")
    assert not (tmp_path / "s.ooc").exists()


def test_infinite_dataset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"infinite.*take\(n\)"):
        oocstore.write(tf.data.Dataset.range(3).repeat(), tmp_path / "s.ooc")


# -- Keras in ----------------------------------------------------------------------------------


class Pairs(keras.utils.PyDataset):  # type: ignore[misc]
    """Batches of (x, y), and of (x, y, sample_weight) when asked, the last one short."""

    def __init__(self, n: int, batch_size: int, weights: bool = False) -> None:
        super().__init__()
        self.x = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
        self.y = np.arange(n) % 2
        self.n, self.bs, self.weights = n, batch_size, weights

    def __len__(self) -> int:
        return -(-self.n // self.bs)

    def __getitem__(self, i: int) -> tuple[np.ndarray, ...]:
        s = slice(i * self.bs, (i + 1) * self.bs)
        if self.weights:
            return self.x[s], self.y[s], np.ones(len(self.x[s]), np.float32)
        return self.x[s], self.y[s]


def test_keras_pydataset(store_path: Path) -> None:
    seq = Pairs(23, 5)
    stream = as_stream(seq)
    assert (stream.batched, stream.n_batches) == (True, 5)
    store = oocstore.write(seq, store_path, names=("x", "y"))
    np.testing.assert_array_equal(store["x"][:], seq.x)
    np.testing.assert_array_equal(store["y"][:], seq.y)
    store = oocstore.write(Pairs(23, 5, weights=True), store_path, overwrite=True)
    assert store.fields == ("0", "1", "2")
    np.testing.assert_array_equal(store["2"][:], np.ones(23, np.float32))


def test_keras_multi_input_batches_flatten(tmp_path: Path) -> None:
    class TwoInputs(keras.utils.PyDataset):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()

        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> Any:
            return ({"a": X[i * 3 : i * 3 + 3], "b": Y[i * 3 : i * 3 + 3]}, Y[i * 3 : i * 3 + 3])

    store = oocstore.write(TwoInputs(), tmp_path / "s.ooc")
    assert store.fields == ("0_a", "0_b", "1")
    np.testing.assert_array_equal(store["0_a"][:], X)


# -- back into training ------------------------------------------------------------------------


@pytest.fixture
def xy_store(store_path: Path) -> oocstore.Store:
    x = np.random.default_rng(0).standard_normal((103, 4)).astype(np.float32)
    y = (x.sum(axis=1) > 0).astype(np.int64)
    return oocstore.write((x, y), store_path, names=("x", "y"))


def test_to_tf_unbatched_spec_and_cardinality(xy_store: oocstore.Store) -> None:
    ds = xy_store.to_tf()
    assert ds.element_spec == (
        tf.TensorSpec((4,), tf.float32),
        tf.TensorSpec((), tf.int64),
    )
    assert int(ds.cardinality()) == 103
    got = list(ds.as_numpy_iterator())
    np.testing.assert_array_equal(np.stack([g[0] for g in got]), xy_store["x"][:])
    np.testing.assert_array_equal(np.array([g[1] for g in got]), xy_store["y"][:])


def test_to_tf_batched(xy_store: oocstore.Store) -> None:
    ds = xy_store.to_tf(batch_size=10)
    assert ds.element_spec == (
        tf.TensorSpec((None, 4), tf.float32),
        tf.TensorSpec((None,), tf.int64),
    )
    assert int(ds.cardinality()) == 11
    batches = list(ds.as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [10] * 10 + [3]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), xy_store["x"][:])
    dropped = xy_store.to_tf(batch_size=10, drop_last=True)
    assert dropped.element_spec[0] == tf.TensorSpec((10, 4), tf.float32)
    assert int(dropped.cardinality()) == 10


def test_to_tf_shuffle_every_sample_once_and_epochs_differ(xy_store: oocstore.Store) -> None:
    ds = xy_store.to_tf(batch_size=16, shuffle=True, fields=("y", "x"))
    x = xy_store["x"][:]
    epochs = []
    for _ in range(2):
        got = list(ds.as_numpy_iterator())
        rows = np.concatenate([b[1] for b in got])
        # every row exactly once: the multiset of rows equals the store's
        assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, x.tolist()))
        epochs.append(rows)
    assert not np.array_equal(epochs[0], epochs[1])


def test_keras_fit_on_store_batches(xy_store: oocstore.Store) -> None:
    batches = xy_store.batches(16, shuffle=True, seed=0)
    assert isinstance(batches, keras.utils.PyDataset)  # Keras is imported: fit accepts it
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    history = model.fit(batches, epochs=2, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2
    assert batches.epoch >= 2  # Keras called on_epoch_end: each epoch had its own order


def test_keras_indexed_batches_cover_every_sample(xy_store: oocstore.Store) -> None:
    batches = xy_store.batches(16, shuffle=True, seed=5)
    seen: Counter[int] = Counter()
    x = xy_store["x"][:]
    for i in np.random.default_rng(1).permutation(len(batches)):  # as fit(shuffle=True) asks
        xb, _ = batches[int(i)]
        for row in xb:
            seen[int(np.flatnonzero((x == row).all(axis=1))[0])] += 1
    assert seen == Counter(range(103))


def test_keras_fit_on_to_tf(xy_store: oocstore.Store) -> None:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    history = model.fit(xy_store.to_tf(32, shuffle=True), epochs=1, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 1
