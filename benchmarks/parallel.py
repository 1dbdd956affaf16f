"""``oocstore.write(dataset, path, workers=N)``: speed-up over ``workers=1`` when reading a
sample costs CPU (decoding, augmenting).

What it measures
----------------
A map-style dataset whose ``__getitem__`` spends about ``--ms`` milliseconds of pure-Python
CPU per sample (a loop, holding the GIL as a decoder written in Python would) and returns a
64x64x3 uint8 image and an int64 label. It is written with ``workers=1`` (the ordinary writer,
one process) and with each ``--workers`` count (worker processes filling disjoint regions);
reported: seconds (median of ``--rounds``), samples/s and the speed-up over ``workers=1``. The
store is checked to hold the same bytes each time.

How to run
----------
::

    .venv/bin/python benchmarks/parallel.py --quick                 # smoke: 2,000 samples
    .venv/bin/python benchmarks/parallel.py --n 20000 --workers 1,2,4 --rounds 3

On a machine shared with other jobs the speed-up is bounded by the free cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


class CpuBoundImages:
    """``[i]`` burns ``ms`` milliseconds of CPU, then gives image ``i`` and its label."""

    def __init__(self, n: int, ms: float) -> None:
        self.n = n
        self.loops = max(int(ms * 20_000), 1)  # ~50 ns per iteration of the loop below

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.int64]:
        if not 0 <= i < self.n:
            raise IndexError(i)  # ends iteration for workers=1 (the sequence protocol)
        acc = i
        for k in range(self.loops):
            acc = (acc * 1_103_515_245 + k) & 0xFFFFFFFF
        img = ((np.arange(64 * 64 * 3, dtype=np.uint32) + acc) % 251).astype(np.uint8)
        return img.reshape(64, 64, 3), np.int64(i)


def run(n: int, ms: float, workers: int, path: Path) -> tuple[float, str]:
    import oocstore

    data = CpuBoundImages(n, ms)
    t = time.perf_counter()
    if workers == 1:
        store = oocstore.write(data, path, names=("image", "label"), batched=False, overwrite=True)
    else:
        store = oocstore.write(
            data, path, names=("image", "label"), workers=workers, overwrite=True
        )
    elapsed = time.perf_counter() - t
    # The same bytes whatever the worker count (checked by the caller).
    checksum = f"{len(store)}:{hash(np.asarray(store['image'][::97]).tobytes())}"
    return elapsed, checksum


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20_000, help="samples")
    p.add_argument("--ms", type=float, default=1.0, help="CPU milliseconds per sample")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="smoke run: 2,000 samples, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.rounds, args.ms = 2_000, 1, 0.2
    counts = sorted({1, *(int(w) for w in args.workers.split(","))})
    base = Path(tempfile.mkdtemp(prefix="oocstore-parallel-", dir=args.dir))
    times: dict[int, list[float]] = {w: [] for w in counts}
    checks = set()
    try:
        for r in range(args.rounds):
            for w in counts[:: 1 if r % 2 == 0 else -1]:
                elapsed, check = run(args.n, args.ms, w, base / "s.ooc")
                times[w].append(elapsed)
                checks.add(check)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if len(checks) != 1:
        print(f"stores differ between worker counts: {checks}", file=sys.stderr)
        return 1
    one = statistics.median(times[1])
    print("## Parallel writes: workers=N vs workers=1\n")
    print(
        f"{args.n:,} samples (64x64x3 uint8 + int64), ~{args.ms} ms CPU per sample, median "
        f"of {args.rounds}; {os.cpu_count()} cores.\n"
    )
    print("| workers | seconds | samples/s | speed-up |")
    print("|---:|---:|---:|---:|")
    for w in counts:
        t = statistics.median(times[w])
        print(f"| {w} | {t:.2f} | {args.n / t:,.0f} | {one / t:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
