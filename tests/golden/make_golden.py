"""Write the frozen golden stores of the current format version (tests/test_golden.py).

Run from the repository root, only when a new format version is introduced (stores of
earlier versions stay as they are: they must keep opening)::

    python -m tests.golden.make_golden

Per backend: ``complete`` (written to the end with ``oocstore.write``) and ``incomplete`` (the
first batches, then ``Writer.abort()``: resumable). Each holds a dense float32 field, an int64
label field, a ragged field laid out padded (``max_shape``) and one stored packed; the data
come from :func:`batches`, which tests/test_golden.py regenerates to compare against.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import oocstore
from oocstore.manifest import VERSION

__all__ = [
    "ATTRS",
    "BACKENDS",
    "BATCH_SIZES",
    "GOLDEN",
    "INCOMPLETE_BATCHES",
    "N",
    "OPTIONS",
    "batches",
    "samples",
    "store_path",
]

GOLDEN = Path(__file__).resolve().parent
BATCH_SIZES = (5, 4, 3)
N = sum(BATCH_SIZES)
INCOMPLETE_BATCHES = 2
"""Batches the incomplete store commits before ``abort()``."""
# A suffix of its own: .gitignore ignores *.ooc, and open() finds the backend from the files.
BACKENDS = {"npy": "npy-store", "zarr": "zarr", "hdf5": "h5"}
ATTRS = {"golden": True, "classes": ["a", "b"]}
IMG_MAX = (4, 5)
OPTIONS: dict[str, Any] = {
    "ragged": "pack",  # tokens: values + offsets; img is padded to its declared max_shape
    "max_shape": {"img": IMG_MAX},
    "fill": {"img": 255},
    "chunks": 4,  # several small chunks (Zarr, HDF5); npy ignores it
    "attrs": ATTRS,
    "progress": False,
}


def samples() -> dict[str, Any]:
    """Every sample of every field: arrays for the dense fields, lists for the ragged ones."""
    i = np.arange(N)
    x = (np.arange(N * 3, dtype=np.float32).reshape(N, 3) - 7) * np.float32(0.375)
    label = (i * 7 % 5 - 2).astype(np.int64) * 10**12  # needs 64 bits
    img = [
        ((np.arange(h * w) * 13 + k) % 251).astype(np.uint8).reshape(h, w)
        for k, (h, w) in enumerate(zip(i % 4 + 1, (i * 3) % 5 + 1, strict=True))
    ]
    tokens = [np.arange(k % 5 + 1, dtype=np.int32) * 1000 - k for k in range(N)]
    return {"x": x, "label": label, "img": img, "tokens": tokens}


def batches(start: int = 0, count: int | None = None) -> Iterator[dict[str, Any]]:
    """The batches the stores were written from (``count`` of them from batch ``start``)."""
    s = samples()
    edges = np.cumsum((0, *BATCH_SIZES))
    stop = len(BATCH_SIZES) if count is None else start + count
    for lo, hi in zip(edges[start:stop], edges[start + 1 : stop + 1], strict=True):
        yield {k: v[lo:hi] for k, v in s.items()}


def store_path(backend: str, kind: str, version: int = VERSION) -> Path:
    """Where the golden ``kind`` (``complete``/``incomplete``) store of ``backend`` lives."""
    return GOLDEN / str(version) / backend / f"{kind}.{BACKENDS[backend]}"


def main() -> None:
    for backend in BACKENDS:
        for kind in ("complete", "incomplete"):
            path = store_path(backend, kind)
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            path.parent.mkdir(parents=True, exist_ok=True)
        oocstore.write(batches(), store_path(backend, "complete"), backend=backend, **OPTIONS)
        w = oocstore.Writer(store_path(backend, "incomplete"), backend=backend, **OPTIONS)
        w.extend(batches(0, INCOMPLETE_BATCHES))
        w.abort()


if __name__ == "__main__":
    main()
