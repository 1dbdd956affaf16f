"""Two checkouts of oocstore writing the same workload, alternating, beside the raw writes.

Each run is a fresh process whose ``PYTHONPATH`` selects a checkout (``--a`` and ``--b``: the
roots of two work trees, e.g. ``git worktree add ../before <commit>``), so a change is measured
against what it changed in paired runs on the same disk minutes apart. The workload is
``compare.py``'s images (64x64x3 uint8 and int64 labels, batches of 256) written with
``oocstore.write``; the raw writes are ``f.write`` + ``fsync`` and ``O_DIRECT``.

    python benchmarks/ab_write.py --a ../before --b . --gb 1 --rounds 6
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

import numpy as np
from _common import drop_caches, warm_page_cache, write_direct

SHAPE = (64, 64, 3)
BATCH = 256


def child(kind: str, out: Path, n: int, backend: str, known: bool) -> float:
    rng = np.random.default_rng(0)
    pool = [
        (rng.integers(0, 256, (BATCH, *SHAPE), dtype=np.uint8), np.arange(BATCH, dtype=np.int64))
        for _ in range(16)
    ]

    def batches():  # type: ignore[no-untyped-def]
        for i, start in enumerate(range(0, n, BATCH)):
            x, y = pool[i % len(pool)]
            k = min(BATCH, n - start)
            yield x[:k], y[:k]

    import oocstore

    t0 = time.perf_counter()
    if kind == "raw":
        with (out / "raw.bin").open("wb") as f:
            for x, y in batches():
                f.write(x.data)
                f.write(y.data)
            f.flush()
            os.fsync(f.fileno())
    elif kind == "raw-direct":
        write_direct((a for b in batches() for a in b), out / "raw.bin")
    else:
        suffix = {"npy": ".ooc", "zarr": ".zarr", "hdf5": ".h5"}[backend]
        oocstore.write(
            batches(), out / f"s{suffix}", names=("images", "labels"), length=n if known else None
        )
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", help="root of the first checkout (e.g. before)")
    p.add_argument("--b", help="root of the second checkout (e.g. after)")
    p.add_argument("--gb", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--backends", default="npy,hdf5,zarr")
    p.add_argument("--unknown", action="store_true", help="length not declared")
    p.add_argument("--dir", default=None)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--backend", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(child(args.child, Path(args.out), args.n, args.backend, not args.unknown))
        return
    if not args.a or not args.b:
        p.error("--a and --b name the two checkouts to compare")
    row = int(np.prod(SHAPE)) + 8
    n = int(args.gb * 1e9) // row
    nbytes = n * row
    roots = {"A": str(Path(args.a).resolve()), "B": str(Path(args.b).resolve())}
    runs = [("raw", "raw", "-"), ("raw-direct", "raw-direct", "-")]
    for backend in args.backends.split(","):
        runs += [(f"A {backend}", "ooc", backend), (f"B {backend}", "ooc", backend)]
    times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    base = Path(tempfile.mkdtemp(dir=args.dir, prefix="oocstore-ab-"))
    try:
        for r in range(args.rounds):
            order = runs[r % len(runs) :] + runs[: r % len(runs)]
            for name, kind, backend in order:
                out = base / "out"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                drop_caches()
                warm_page_cache(base, nbytes)
                env = dict(os.environ)
                tree = roots.get(name.split()[0])
                env["PYTHONPATH"] = tree if tree else roots["B"]
                cmd = [sys.executable, __file__, "--child", kind, "--out", str(out), "--n", str(n)]
                cmd += ["--backend", backend] + (["--unknown"] if args.unknown else [])
                res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
                times[name].append(float(res.stdout.strip().splitlines()[-1]))
                print(f"round {r + 1} {name:<12} {nbytes / times[name][-1] / 1e9:.2f} GB/s")
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    limit = min(statistics.median(times["raw"]), statistics.median(times["raw-direct"]))
    print()
    length = "unknown" if args.unknown else "declared"
    print(f"{nbytes / 1e9:.2f} GB of images, length {length}, {args.rounds} rounds, alternating")
    print(f"A = {roots['A']}, B = {roots['B']}")
    print("| run | GB/s (median) | runs (GB/s) | vs the faster raw |")
    print("|---|---:|---|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        rates = ", ".join(f"{nbytes / t / 1e9:.2f}" for t in ts)
        print(f"| {name} | {nbytes / med / 1e9:.2f} | {rates} | {limit / med:.2f}x |")


if __name__ == "__main__":
    main()
