"""Buffered ``pwrite`` + ``fdatasync`` against ``O_DIRECT`` from reused buffers: the measurement
behind ``oocstore/_direct.py``.

Each run is a fresh subprocess that writes 640 MB (4 MB batches cycled from a warm pool, the
``table`` workload of ``compare.py``) into a preallocated file, the way the npy backend does:

* ``buffered`` -- ``pwrite`` of every batch, ``fdatasync`` every 64 MB and at the end;
* ``direct`` -- batches copied into two 8 MiB aligned buffers, each written with ``O_DIRECT``
  by a helper thread while the other fills, one ``fdatasync`` at the end.

Before each run the page cache is dropped (as root) and a scratch file of the same size is
written and deleted, as ``compare.py`` does; the two modes alternate.

    python benchmarks/direct_io.py              # 5 pairs
    python benchmarks/direct_io.py --pairs 10
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _common import drop_caches

TOTAL = 640 * 2**20
BATCH = 4 * 2**20
BUFFER = 8 * 2**20
COMMIT = 64 * 2**20


def child(mode: str, path: Path) -> float:
    """Write TOTAL bytes to ``path`` in ``mode``; seconds taken."""
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 255, BATCH, dtype=np.uint8) for _ in range(16)]
    scratch = path.with_suffix(".scratch")
    with scratch.open("wb") as f:
        for i in range(TOTAL // BATCH):
            f.write(pool[i % 16].data)
    scratch.unlink()
    t0 = time.perf_counter()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if mode == "direct" else 0)
    fd = os.open(path, flags, 0o644)
    os.posix_fallocate(fd, 0, TOTAL)
    if mode == "buffered":
        for i in range(TOTAL // BATCH):
            os.pwrite(fd, pool[i % 16], i * BATCH)
            if (i + 1) * BATCH % COMMIT == 0:
                os.fdatasync(fd)
    else:
        bufs = [mmap.mmap(-1, BUFFER) for _ in range(2)]
        views = [np.frombuffer(b, np.uint8) for b in bufs]
        done = [threading.Event(), threading.Event()]
        for d in done:
            d.set()
        threads: list[threading.Thread] = []

        def flush(k: int, offset: int) -> None:
            os.pwrite(fd, bufs[k], offset)
            done[k].set()

        k, fill, offset = 0, 0, 0
        for i in range(TOTAL // BATCH):
            views[k][fill : fill + BATCH] = pool[i % 16]
            fill += BATCH
            if fill == BUFFER:
                done[k].clear()
                threads.append(threading.Thread(target=flush, args=(k, offset)))
                threads[-1].start()
                offset += BUFFER
                k, fill = 1 - k, 0
                done[k].wait()
        for t in threads:
            t.join()
    os.fdatasync(fd)
    os.close(fd)
    seconds = time.perf_counter() - t0
    path.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--child", choices=("buffered", "direct"), help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(child(args.child, Path(args.path)))
        return
    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="oocstore-direct-"))
    times: dict[str, list[float]] = {"buffered": [], "direct": []}
    try:
        for _ in range(args.pairs):
            for mode in times:
                drop_caches()
                cmd = [sys.executable, __file__, "--child", mode, "--path", str(root / "f")]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                times[mode].append(float(out))
                print(f"{mode:<9} {times[mode][-1]:.3f} s", flush=True)
    finally:
        for p in root.iterdir():
            p.unlink()
        root.rmdir()
    print()
    print("| mode | runs (s) | median (s) | GB/s |")
    print("|---|---|---:|---:|")
    for mode, ts in times.items():
        med = statistics.median(ts)
        runs = ", ".join(f"{t:.2f}" for t in ts)
        print(f"| {mode} | {runs} | {med:.3f} | {TOTAL / med / 1e9:.2f} |")


if __name__ == "__main__":
    main()
