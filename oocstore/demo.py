"""The demo: a generated image-like dataset streamed from a generator into a store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .progress import format_bytes
from .reader import Store
from .writer import write

__all__ = ["demo_batches", "run_demo"]


def demo_batches(
    n: int, batch_size: int = 256, size: int = 64, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(images, labels)`` batches: ``n`` random ``size x size`` RGB images in all."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(batch_size, size, size, 3), dtype=np.uint8)
    for start in range(0, n, batch_size):
        k = min(batch_size, n - start)
        images = np.roll(base[:k], start % size, axis=1)  # a cheap, changing "image"
        labels = (np.arange(start, start + k) % 10).astype(np.int64)
        yield images, labels


def run_demo(path: str | Path = "demo.ooc", n: int = 20_000, backend: str | None = None) -> Store:
    """Write the demo dataset to ``path`` and print what was stored and how fast."""
    t0 = time.perf_counter()
    store = write(
        demo_batches(n),
        path,
        names=("images", "labels"),
        backend=backend,
        overwrite=True,
        progress=None,
    )
    seconds = time.perf_counter() - t0
    print(f"wrote {len(store):,} samples to {str(store.path)!r} ({store.backend} backend)")
    for spec in store.schema.fields:
        arr = store[spec.name]
        print(f"  {spec.name:<8} shape {tuple(arr.shape)!s:<22} dtype {spec.dtype}")
    nbytes = store.nbytes
    print(
        f"  {format_bytes(nbytes)} in {seconds:.2f} s = {nbytes / seconds / 1e9:.2f} GB/s "
        "(committed and fsync'd)"
    )
    images, labels = store["images"], store["labels"]
    print(
        f"  store['images'] is a read-only {type(images).__name__}; "
        f"mean label {float(np.mean(labels)):.2f}, first pixel {images[0, 0, 0].tolist()}"
    )
    return store
