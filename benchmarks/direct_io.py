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
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _common import drop_caches

TOTAL = 640 * 2**20
BATCH = 4 * 2**20
BUFFER = 8 * 2**20
COMMIT = 64 * 2**20


def parse_mode(mode: str) -> tuple[int, int]:
    """``direct:8M:1`` -> (buffer bytes, writes in flight)."""
    _, size, depth = mode.split(":")
    return int(size.rstrip("M")) * 2**20, int(depth)


def child(mode: str, path: Path, total: int) -> float:
    """Write ``total`` bytes to ``path`` in ``mode``; seconds taken."""
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 255, BATCH, dtype=np.uint8) for _ in range(16)]
    scratch = path.with_suffix(".scratch")
    with scratch.open("wb") as f:
        for i in range(total // BATCH):
            f.write(pool[i % 16].data)
    scratch.unlink()
    t0 = time.perf_counter()
    direct = mode.startswith("direct")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0)
    fd = os.open(path, flags, 0o644)
    os.posix_fallocate(fd, 0, total)
    if not direct:
        for i in range(total // BATCH):
            os.pwrite(fd, pool[i % 16], i * BATCH)
            if (i + 1) * BATCH % COMMIT == 0:
                os.fdatasync(fd)
    else:
        size, depth = parse_mode(mode)
        # depth writes in flight from depth + 1 buffers: one fills while the others are written
        bufs = [mmap.mmap(-1, size) for _ in range(depth + 1)]
        views = [np.frombuffer(b, np.uint8) for b in bufs]
        writers = ThreadPoolExecutor(depth)
        busy: list[Future[int] | None] = [None] * len(bufs)
        k, fill, offset = 0, 0, 0
        for i in range(total // BATCH):
            pos = 0
            while pos < BATCH:
                take = min(size - fill, BATCH - pos)
                views[k][fill : fill + take] = pool[i % 16][pos : pos + take]
                fill += take
                pos += take
                if fill == size:
                    busy[k] = writers.submit(os.pwrite, fd, bufs[k], offset)
                    offset += size
                    k, fill = (k + 1) % len(bufs), 0
                    pending, busy[k] = busy[k], None
                    if pending is not None:
                        pending.result()
        for f in busy:
            if f is not None:
                f.result()
        writers.shutdown()
    os.fdatasync(fd)
    os.close(fd)
    seconds = time.perf_counter() - t0
    path.unlink()
    return seconds


DEFAULT_MODES = (
    "buffered",
    "direct:8M:1",
    "direct:8M:2",
    "direct:8M:4",
    "direct:32M:1",
    "direct:32M:2",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="rounds (every mode once a round)")
    parser.add_argument("--mb", type=int, default=TOTAL // 2**20, help="MiB written per run")
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES))
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    total = args.mb * 2**20
    if args.child:
        print(child(args.child, Path(args.path), total))
        return
    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="oocstore-direct-"))
    times: dict[str, list[float]] = {m: [] for m in args.modes}
    try:
        for r in range(args.pairs):
            order = args.modes[r % len(args.modes) :] + args.modes[: r % len(args.modes)]
            for mode in order:
                drop_caches()
                cmd = [sys.executable, __file__, "--child", mode, "--path", str(root / "f")]
                cmd += ["--mb", str(args.mb)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                times[mode].append(float(out))
                print(f"{mode:<13} {times[mode][-1]:.3f} s", flush=True)
    finally:
        for p in root.iterdir():
            p.unlink()
        root.rmdir()
    print()
    best = min(statistics.median(ts) for ts in times.values())
    print(f"{args.mb} MiB a run, {args.pairs} rounds, order rotated each round")
    print("| mode | runs (s) | median (s) | GB/s | vs fastest |")
    print("|---|---|---:|---:|---:|")
    for mode, ts in times.items():
        med = statistics.median(ts)
        runs = ", ".join(f"{t:.2f}" for t in ts)
        print(f"| {mode} | {runs} | {med:.3f} | {total / med / 1e9:.2f} | {best / med:.2f}x |")


if __name__ == "__main__":
    main()
