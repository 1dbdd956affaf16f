"""Ragged samples: padded or packed, true shapes kept, every sample exactly as given."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oocstore

from .conftest import SUFFIX
from .strategies import ragged_shapes

# These cases pad heavily on purpose; the warning itself is tested in test_limits.py.
pytestmark = pytest.mark.filterwarnings("ignore::oocstore.PaddingWarning")

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def make_samples(shapes: list[tuple[int, ...]], dtype: str = "int16") -> list[np.ndarray]:
    return [
        np.arange(int(np.prod(s)), dtype=dtype).reshape(s) + 7 * i for i, s in enumerate(shapes)
    ]


def batches(samples: list[np.ndarray], size: int):  # type: ignore[no-untyped-def]
    for i in range(0, len(samples), size):
        yield samples[i : i + size], np.arange(i, min(i + size, len(samples)))


def check_store(store: oocstore.Store, samples: list[np.ndarray], fill: int) -> None:
    assert len(store) == len(samples)
    assert store["y"].tolist() == list(range(len(samples)))
    shapes = store.shapes("x")
    for i, s in enumerate(samples):
        got = store.sample("x", i)
        assert got.shape == s.shape
        assert np.array_equal(got, s)
        assert tuple(shapes[i]) == s.shape
    if store.layout("x") == "padded":
        padded = np.asarray(store["x"])
        for i in range(len(samples)):
            mask = store.mask("x", i)
            assert np.array_equal(padded[i][mask].reshape(samples[i].shape), samples[i])
            assert (padded[i][~mask] == fill).all()


@FIXTURE_OK
@given(
    shapes=st.integers(1, 25).flatmap(lambda n: ragged_shapes(n)),
    size=st.integers(1, 6),
    mode=st.sampled_from(["pad", "pack"]),
    fill=st.sampled_from([0, -1, 9]),
)
def test_ragged_roundtrip(backend: str, shapes, size: int, mode: str, fill: int) -> None:  # type: ignore[no-untyped-def]
    samples = make_samples(shapes)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"s{SUFFIX[backend]}"
        store = oocstore.write(
            batches(samples, size), path, names=("x", "y"), ragged=mode, fill=fill
        )
        assert store.complete
        check_store(store, samples, fill)
        if len(set(shapes)) > 1:
            assert store.schema["x"].ragged
            assert store.layout("x") == ("padded" if mode == "pad" else "packed")
            assert store.schema["x"].shape == tuple(np.max(shapes, axis=0))
        if mode == "pack" and len(set(shapes)) > 1:
            packed = store["x"]
            assert isinstance(packed, oocstore.PackedArray)
            assert len(packed) == len(samples)
            assert all(np.array_equal(a, b) for a, b in zip(packed, samples, strict=True))
            assert np.array_equal(
                packed.to_padded(fill=fill)[0][tuple(slice(0, d) for d in shapes[0])], samples[0]
            )
        store.close()


def test_uniform_then_ragged_keeps_the_early_samples(store_path: Path) -> None:
    samples = make_samples([(4, 4)] * 30 + [(5, 2), (1, 7)] + [(4, 4)] * 5)
    store = oocstore.write(batches(samples, 8), store_path, names=("x", "y"), fill=-3)
    check_store(store, samples, -3)
    assert store["x"].shape == (37, 5, 7)


def test_max_shape_preallocates_padded(store_path: Path) -> None:
    samples = make_samples([(2, 3), (4, 1), (3, 3)])
    store = oocstore.write(
        batches(samples, 2), store_path, names=("x", "y"), max_shape={"x": (6, 6)}
    )
    assert store["x"].shape == (3, 6, 6)
    check_store(store, samples, 0)


def test_max_shape_exceeded_still_stores_every_sample(store_path: Path) -> None:
    samples = make_samples([(2, 3), (4, 1), (9, 3), (1, 1)])
    store = oocstore.write(
        batches(samples, 1), store_path, names=("x", "y"), max_shape={"x": (4, 4)}
    )
    check_store(store, samples, 0)
    assert store["x"].shape == (4, 9, 4)


def test_ragged_number_of_axes_must_not_change(store_path: Path) -> None:
    with pytest.raises(oocstore.RaggedError, match="number of axes"):
        oocstore.write([([np.zeros((2, 2)), np.zeros((2, 2, 1))], [0, 1])], store_path)


def test_list_of_samples_versus_list_of_fields(store_path: Path) -> None:
    # The top level is fields; a list *inside* a field holds one entry per sample.
    imgs = [np.zeros((2, 3)), np.ones((3, 2))]
    store = oocstore.write([(imgs, [0, 1])], store_path, names=("img", "label"))
    assert store.fields == ("img", "label")
    assert len(store) == 2
    assert np.array_equal(store.sample("img", 1), np.ones((3, 2)))


def test_unbatched_ragged_samples(store_path: Path) -> None:
    samples = make_samples([(3,), (1,), (5,), (0,)])
    store = oocstore.write(
        ((s, i) for i, s in enumerate(samples)), store_path, batched=False, names=("x", "y")
    )
    check_store(store, samples, 0)


def test_ragged_resume_after_interruption(store_path: Path) -> None:
    rng = np.random.default_rng(3)
    shapes = [tuple(int(v) for v in rng.integers(1, 6, 2)) for _ in range(60)]
    samples = make_samples(shapes)

    def interrupted() -> None:
        with oocstore.Writer(store_path, names=("x", "y")) as w:
            for b in batches(samples[:33], 4):
                w.append(b)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    partial = oocstore.open(store_path)
    assert len(partial) == 33
    assert not partial.complete
    assert np.array_equal(partial.sample("x", 32), samples[32])
    store = oocstore.write(batches(samples, 4), store_path, names=("x", "y"), resume=True)
    check_store(store, samples, 0)


def test_resume_of_complete_padded_store_with_bigger_sample(store_path: Path) -> None:
    samples = make_samples([(2, 2), (3, 1), (1, 3), (6, 6), (2, 2)])
    oocstore.write(batches(samples[:3], 2), store_path, names=("x", "y")).close()
    store = oocstore.write(batches(samples, 2), store_path, names=("x", "y"), resume=True)
    check_store(store, samples, 0)


def test_packed_to_padded_store_in_one_pass(tmp_path: Path) -> None:
    samples = make_samples([(2, 3), (4, 1), (3, 3), (1, 1)])
    packed = oocstore.write(
        batches(samples, 3), tmp_path / "p.ooc", names=("x", "y"), ragged="pack"
    )["x"]
    padded = packed.to_padded(tmp_path / "padded.ooc", fill=-1, name="x")
    assert padded["x"].shape == (4, 4, 3)
    assert padded.layout("x") == "padded"
    for i, s in enumerate(samples):
        assert np.array_equal(padded.sample("x", i), s)
    assert (padded["x"][1][:, 1:] == -1).all()
    in_memory = packed.to_padded(max_shape=(5, 5))
    assert in_memory.shape == (4, 5, 5)
    with pytest.raises(ValueError, match="smaller than the largest sample"):
        packed.to_padded(max_shape=(2, 2))
