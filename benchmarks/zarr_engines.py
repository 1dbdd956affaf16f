"""Which engine should write oocstore's Zarr chunks? The same image workload, durable on disk,
written by each contender in a fresh process, alternating, beside the disk's own limit.

Contenders (every one writes uncompressed Zarr v3 of a preallocated shape, chunks of ~32 MiB
of whole samples, staged rows written chunk-aligned, and waits until the data is durable):

* ``raw`` -- ``f.write`` of every batch, then ``fsync``: the disk's buffered limit;
* ``raw-direct`` -- ``O_DIRECT`` writes from two reused 8 MiB buffers: the disk's direct limit;
* ``oocstore`` -- ``oocstore.write(..., "x.zarr", length=N)`` (its own chunk writer);
* ``zarr-python`` -- ``zarr.create_array`` on a ``LocalStore``, ``arr[a:b] = rows`` of whole
  chunks, then every chunk file and directory fsync'd;
* ``tensorstore`` -- TensorStore's ``zarr3`` driver on its ``file`` kvstore (which fsyncs its
  writes by default), ``arr[a:b].write(rows)`` of whole chunks, up to eight writes in flight
  (and eight file I/O threads).

    python benchmarks/zarr_engines.py                  # 2 GB, 5 rounds
    python benchmarks/zarr_engines.py --gb 0.05 --rounds 1   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import drop_caches, warm_page_cache, write_direct

SHAPE = (64, 64, 3)
BATCH = 256
CHUNK_BYTES = 32 * 2**20
CONTENDERS = ("raw", "raw-direct", "oocstore", "zarr-python", "tensorstore")


def batches(n: int) -> list[np.ndarray]:
    """A pool of 16 distinct batches, cycled (made before timing)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (BATCH, *SHAPE), dtype=np.uint8) for _ in range(16)]


def stream(pool: list[np.ndarray], n: int):  # type: ignore[no-untyped-def]
    for i, start in enumerate(range(0, n, BATCH)):
        yield pool[i % len(pool)][: min(BATCH, n - start)]


def fsync_tree(root: Path) -> None:
    """fsync every file, then every directory, below ``root`` (what a durable commit needs)."""
    dirs = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        dirs += [Path(dirpath) / d for d in dirnames]
    for d in dirs:
        fd = os.open(d, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def staged(pool: list[np.ndarray], n: int, chunk: int):  # type: ignore[no-untyped-def]
    """``(start, rows)`` of whole chunks (the last one short), staged from the batches."""
    buf = np.empty((chunk, *SHAPE), dtype=np.uint8)
    fill, start = 0, 0
    for b in stream(pool, n):
        pos = 0
        while pos < len(b):
            take = min(chunk - fill, len(b) - pos)
            buf[fill : fill + take] = b[pos : pos + take]
            fill += take
            pos += take
            if fill == chunk:
                yield start, buf
                start += chunk
                fill = 0
    if fill:
        yield start, buf[:fill]


def child(name: str, root: Path, n: int) -> float:
    pool = batches(n)
    row = int(np.prod(SHAPE))
    chunk = max(CHUNK_BYTES // row, 1)
    path = root / "out"
    # Libraries are imported before the clock starts: only writing is timed.
    import tensorstore as ts
    import zarr
    from zarr.storage import LocalStore

    import oocstore

    t0 = time.perf_counter()
    if name == "raw":
        with open(path, "wb") as f:
            for b in stream(pool, n):
                f.write(b.data)
            f.flush()
            os.fsync(f.fileno())
    elif name == "raw-direct":
        write_direct((b for b in stream(pool, n)), path)
    elif name == "oocstore":
        oocstore.write(stream(pool, n), root / "out.zarr", length=n, names=("images",))
    elif name == "zarr-python":
        arr = zarr.create_array(
            store=LocalStore(root / "out.zarr"),
            name="images",
            shape=(n, *SHAPE),
            chunks=(chunk, *SHAPE),
            dtype="uint8",
            compressors=None,
            fill_value=0,
        )
        for start, rows in staged(pool, n, chunk):
            arr[start : start + len(rows)] = rows
        fsync_tree(root / "out.zarr")
    elif name == "tensorstore":
        arr = ts.open(
            {
                "driver": "zarr3",
                "kvstore": {"driver": "file", "path": str(root / "out.zarr" / "images")},
                "metadata": {
                    "shape": [n, *SHAPE],
                    "chunk_grid": {
                        "name": "regular",
                        "configuration": {"chunk_shape": [chunk, *SHAPE]},
                    },
                    "data_type": "uint8",
                    "codecs": [{"name": "bytes"}],
                    "fill_value": 0,
                },
                "create": True,
                "delete_existing": True,
                "context": {"file_io_concurrency": {"limit": 8}},
            }
        ).result()
        # Writes in flight while the next chunk is staged (each gets its own copy of the rows),
        # at most eight: TensorStore encodes and writes them on its own threads.
        inflight: list[Any] = []
        for start, rows in staged(pool, n, chunk):
            inflight.append(arr[start : start + len(rows)].write(rows.copy()))
            if len(inflight) >= 8:
                inflight.pop(0).result()
        for f in inflight:
            f.result()
        fsync_tree(root / "out.zarr")  # the file kvstore syncs its writes; directories too
    else:
        msg = f"unknown contender {name!r}"
        raise SystemExit(msg)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--only", nargs="+", default=list(CONTENDERS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(child(args.child, Path(args.root), args.n))
        return
    row = int(np.prod(SHAPE))
    n = int(args.gb * 1e9) // row
    nbytes = n * row
    base = Path(tempfile.mkdtemp(dir=args.dir, prefix="oocstore-zarr-engines-"))
    times: dict[str, list[float]] = {c: [] for c in args.only}
    try:
        for r in range(args.rounds):
            order = args.only[r % len(args.only) :] + args.only[: r % len(args.only)]
            for name in order:
                root = base / name
                shutil.rmtree(root, ignore_errors=True)
                root.mkdir()
                drop_caches()
                warm_page_cache(base, nbytes)
                cmd = [sys.executable, __file__, "--child", name, "--root", str(root)]
                out = subprocess.run(
                    [*cmd, "--n", str(n)], capture_output=True, text=True, check=True
                ).stdout
                times[name].append(float(out.strip().splitlines()[-1]))
                print(
                    f"round {r + 1} {name:<12} {nbytes / times[name][-1] / 1e9:.2f} GB/s",
                    flush=True,
                )
                shutil.rmtree(root, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    limit = min(statistics.median(times[c]) for c in ("raw", "raw-direct") if c in times)
    print()
    print(
        f"{nbytes / 1e9:.2f} GB of {SHAPE} uint8 images, batches of {BATCH}, "
        f"{args.rounds} rounds in a fresh process each, order rotated every round; medians"
    )
    print("| contender | GB/s (median) | runs (GB/s) | vs the faster raw write |")
    print("|---|---:|---|---:|")
    for name, ts_ in times.items():
        med = statistics.median(ts_)
        runs = ", ".join(f"{nbytes / t / 1e9:.2f}" for t in ts_)
        print(f"| {name} | {nbytes / med / 1e9:.2f} | {runs} | {limit / med:.2f}x |")


if __name__ == "__main__":
    main()
