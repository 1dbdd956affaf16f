"""Ragged padding benchmark: per-sample cost must not grow with N, and padding costs < 2x.

Writes N images of random sizes between 32 and 256 pixels a side (uint8, 3 channels), with the
largest shape arriving late in the stream, through ``oocstore.write`` (ragged="pad": on npy
and HDF5 staged packed and laid out padded at close; on Zarr padded from the first batch, its
trailing axes grown in place). Reports

* the per-sample time at 4N divided by the per-sample time at N (target <= 1.3), and
* the ragged conversion's time divided by the time of writing a non-ragged dataset of the same
  padded size, N images of 256x256x3 (target <= 2.0), and
* the disk space each store takes (Zarr's edge tiles are stored whole).

Contenders alternate, memory is warmed before each timed part, the page cache is dropped
between runs where we may (root), and the median of the rounds is reported.

    python benchmarks/ragged.py            # N = 2000 (and 8000), 3 rounds
    python benchmarks/ragged.py --quick    # N = 300, 1 round
    python benchmarks/ragged.py --backend zarr
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from _common import drop_caches, warm_memory, warm_page_cache

import oocstore

SIDE_MIN, SIDE_MAX = 32, 256
BATCH = 64


def ragged_shapes(n: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """Random sides in [32, 256); the full 256x256 arrives only in the last 2% of the stream."""
    rng = np.random.default_rng(seed)
    sides = rng.integers(SIDE_MIN, SIDE_MAX, size=(n, 2))
    late = n - max(n // 50, 1)
    sides[late:] = rng.integers(SIDE_MIN, SIDE_MAX + 1, size=(n - late, 2))
    sides[-1] = SIDE_MAX
    return [(int(h), int(w), 3) for h, w in sides]


def ragged_batches(shapes: list[tuple[int, int, int]], base: np.ndarray) -> Iterator[tuple]:
    """Batches of (list of images, labels); images are views of one random base image."""
    for i in range(0, len(shapes), BATCH):
        part = shapes[i : i + BATCH]
        yield [base[:h, :w] for h, w, _ in part], np.arange(i, i + len(part))


def dense_batches(n: int, base: np.ndarray) -> Iterator[tuple]:
    """Batches of full 256x256x3 images: the padded size of the ragged dataset."""
    block = np.ascontiguousarray(np.broadcast_to(base, (BATCH, *base.shape)))
    for i in range(0, n, BATCH):
        k = min(BATCH, n - i)
        yield block[:k], np.arange(i, i + k)


def disk_bytes(path: Path) -> int:
    """Bytes of disk a store takes (allocated blocks: holes in sparse files do not count)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_blocks * 512 for p in files)


def timed(fn: Callable[[], object], root: Path, cache_bytes: int) -> float:
    """Time ``fn`` from a cold page cache, with memory and ``cache_bytes`` of page cache warm."""
    drop_caches()
    warm_memory(256 * 2**20)
    warm_page_cache(root, cache_bytes)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="images in the small run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: N=300, one round")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--backend", choices=("npy", "zarr", "hdf5"), default="npy")
    args = parser.parse_args()
    suffix = {"npy": ".ooc", "zarr": ".zarr", "hdf5": ".h5"}[args.backend]
    n = 300 if args.quick else args.n
    rounds = 1 if args.quick else args.rounds
    base = np.random.default_rng(1).integers(0, 256, (SIDE_MAX, SIDE_MAX, 3), dtype=np.uint8)
    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="oocstore-ragged-"))
    padded_bytes = SIDE_MAX * SIDE_MAX * 3
    results: dict[str, list[float]] = {}
    disk: dict[str, int] = {}
    try:
        for r in range(rounds):
            for label, count, ragged in (
                ("ragged N", n, True),
                ("dense N", n, False),
                ("ragged 4N", 4 * n, True),
                ("dense 4N", 4 * n, False),
            ):
                path = root / f"{label.replace(' ', '_')}_{r}{suffix}"
                shapes = ragged_shapes(count)
                source = ragged_batches(shapes, base) if ragged else dense_batches(count, base)

                def run(source=source, path=path) -> object:  # type: ignore[no-untyped-def]
                    return oocstore.write(source, path, names=("img", "label"), progress=False)

                # Both contenders get page cache warmed for what the ragged run writes: its
                # packed staging (~1/3 of the padded bytes) and the padded array.
                seconds = timed(run, root, int(1.4 * count * padded_bytes))
                store = oocstore.open(path)
                assert len(store) == count
                assert store["img"].shape[1:] == (SIDE_MAX, SIDE_MAX, 3)
                store.close()
                disk[label] = disk_bytes(path)
                shutil.rmtree(path)
                results.setdefault(label, []).append(seconds)
                print(f"round {r} {label:<10} {count:>6} images {seconds:7.2f} s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    per_n = med["ragged N"] / n
    per_4n = med["ragged 4N"] / (4 * n)
    rows = [
        ("ragged N", n, med["ragged N"]),
        ("dense N (same padded size)", n, med["dense N"]),
        ("ragged 4N", 4 * n, med["ragged 4N"]),
        ("dense 4N (same padded size)", 4 * n, med["dense 4N"]),
    ]
    print()
    print(f"backend: {args.backend}")
    print("| run | images | padded GB | disk GB | seconds (median) | ms / image |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, count, sec in rows:
        key = label.split(" (")[0]
        print(
            f"| {label} | {count} | {count * padded_bytes / 1e9:.2f} | "
            f"{disk[key] / 1e9:.2f} | {sec:.2f} | {1000 * sec / count:.2f} |"
        )
    print()
    growth = per_4n / per_n
    print(
        f"per-sample time 4N / N: {growth:.2f} (target <= 1.3) "
        f"{'MET' if growth <= 1.3 else 'MISSED'}"
    )
    for size in ("N", "4N"):
        ratio = med[f"ragged {size}"] / med[f"dense {size}"]
        print(
            f"ragged / dense of the same padded size at {size}: {ratio:.2f} (target <= 2.0) "
            f"{'MET' if ratio <= 2.0 else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
