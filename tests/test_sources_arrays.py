"""Whole arrays as sources: JAX arrays, and a NumPy memmap larger than the copy blocks."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import oocstore
from oocstore.sources import as_stream


@pytest.mark.slow
def test_memmap_source_is_copied_in_bounded_blocks(tmp_path: Path) -> None:
    rows, width = 200 * 2**20 // 1024, 256  # 200 MiB of float32
    src = np.lib.format.open_memmap(
        tmp_path / "src.npy", mode="w+", dtype=np.float32, shape=(rows, width)
    )
    for start in range(0, rows, 16384):
        src[start : start + 16384] = np.arange(start, min(start + 16384, rows))[:, None]
    src.flush()
    del src
    source = np.load(tmp_path / "src.npy", mmap_mode="r")
    assert as_stream(source).length == rows
    tracemalloc.start()  # NumPy reports its allocations to tracemalloc; mapped pages are not
    try:
        store = oocstore.write(source, tmp_path / "s.ooc")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(store) == rows
    assert store["0"][rows - 1, 0] == rows - 1
    assert np.array_equal(store["0"][::4099], source[::4099])
    # Bounded by the writer's staging, not by the 200 MiB source: blocks of the source are
    # views of the map, written straight to disk (measured: under 1 MiB).
    assert peak < 200 * 2**20 // 4, f"peak {peak / 2**20:.0f} MiB"


jax = pytest.importorskip("jax", reason="JAX is not installed (pip install jax)")
jnp = pytest.importorskip("jax.numpy", reason="JAX is not installed (pip install jax)")


def test_jax_array_source(tmp_path: Path) -> None:
    x = jnp.arange(60, dtype=jnp.float32).reshape(20, 3)
    store = oocstore.write(x, tmp_path / "s.ooc")
    np.testing.assert_array_equal(store["0"][:], np.asarray(x))


def test_generator_of_jax_batches(tmp_path: Path) -> None:
    key = jax.random.PRNGKey(0)
    batches = []
    for i in range(3):
        key, sub = jax.random.split(key)
        batches.append((jax.random.normal(sub, (8, 2)), jnp.full((8,), i)))
    store = oocstore.write(iter(batches), tmp_path / "s.ooc", names=("x", "y"))
    np.testing.assert_array_equal(
        store["x"][:], np.concatenate([np.asarray(b[0]) for b in batches])
    )
    np.testing.assert_array_equal(store["y"][:], np.repeat(np.arange(3), 8))


def test_list_of_jax_arrays_one_sample_each(tmp_path: Path) -> None:
    samples = [jnp.full((2, 2), i, dtype=jnp.int32) for i in range(30)]
    assert as_stream(samples).length == 30
    store = oocstore.write(samples, tmp_path / "s.ooc")
    np.testing.assert_array_equal(store["0"][:], np.stack([np.asarray(s) for s in samples]))
