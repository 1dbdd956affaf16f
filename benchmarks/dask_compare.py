"""oocstore and Dask's own Zarr I/O on the same Dask array, with the same workers.

What it measures
----------------
* **write**: ``dask.array.to_zarr`` of a generated array (a deterministic function of the block
  position, so generating costs the same in both) versus ``oocstore.write`` of the same Dask
  array into a Zarr store; the same scheduler and number of workers; both end with an ``fsync``
  of every file written (``sync``), as oocstore's commit does. Reported: seconds, GB/s, and the
  time ratio oocstore / to_zarr (target: 1.0 or less);
* **read**: ``store.to_dask().sum()`` versus ``dask.array.from_zarr(...).sum()`` of the very
  files just written (the same chunks), after dropping the page cache when root (``cold``,
  else ``warm``). Reported: seconds and GB/s, and the ratio.

The median of ``--rounds`` is reported; the contenders alternate within a round.

How to run
----------
::

    .venv/bin/python benchmarks/dask_compare.py --quick           # smoke: 64 MB, 1 round
    .venv/bin/python benchmarks/dask_compare.py --gb 4 --workers 2 --scheduler processes

``--scheduler`` is ``threads``, ``processes`` or ``distributed`` (a LocalCluster of
``--workers`` processes, one thread each).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from _common import drop_caches

ROW = 1024  # float32 per sample: 4 KiB rows
CHUNK_ROWS = 2048  # 8 MiB chunks on both sides (oocstore's default chunk size)


def generate(block: np.ndarray, block_info: dict[Any, Any] | None = None) -> np.ndarray:
    """A block that depends only on its position: the same bytes for every contender."""
    start = block_info[None]["array-location"][0][0] if block_info else 0
    rows = np.arange(start, start + block.shape[0], dtype=np.float32)[:, None]
    return rows * 0.001 + np.arange(block.shape[1], dtype=np.float32)


def source(nbytes: int) -> Any:
    import dask.array as da

    n = max(nbytes // (ROW * 4) // CHUNK_ROWS, 1) * CHUNK_ROWS
    empty = da.empty((n, ROW), dtype=np.float32, chunks=(CHUNK_ROWS, ROW))
    return empty.map_blocks(generate, dtype=np.float32)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (what a durable write ends with)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def cache_state_after_drop() -> str:
    """Drop the page cache where we may; "cold" if it was dropped, else "warm"."""
    return "cold" if drop_caches() else "warm"


@contextlib.contextmanager
def scheduler(kind: str, workers: int) -> Iterator[None]:
    import dask

    if kind != "distributed":
        with dask.config.set(scheduler=kind, num_workers=workers):
            yield
        return
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster, set_as_default=False)
    try:
        with dask.config.set(scheduler=client):
            yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client.close()
            cluster.close()


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def write_to_zarr(arr: Any, path: Path) -> None:
    import dask.array as da

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's notes on unstable codecs are not measured
        da.to_zarr(arr, str(path), component="x", overwrite=True)
    fsync_tree(path)


def write_oocstore(arr: Any, path: Path) -> None:
    import oocstore

    oocstore.write({"x": arr}, path, chunks=CHUNK_ROWS, overwrite=True)


def read_from_zarr(path: Path) -> float:
    import dask.array as da

    return float(da.from_zarr(str(path), component="x").sum().compute())


def read_oocstore(path: Path) -> float:
    import oocstore

    return float(oocstore.open(path).to_dask("x").sum().compute())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gb", type=float, default=2.0, help="size of the array (GB)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--scheduler", choices=("threads", "processes", "distributed"), default="threads"
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", type=Path, default=None, help="where the stores go (a temp dir)")
    p.add_argument("--quick", action="store_true", help="smoke run: 64 MB, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.gb, args.rounds = 0.064, 1
    base = Path(tempfile.mkdtemp(prefix="oocstore-dask-", dir=args.dir))
    arr = source(int(args.gb * 1e9))
    nbytes = arr.nbytes
    times: dict[str, list[float]] = {k: [] for k in ("to_zarr", "oocstore", "from_zarr", "to_dask")}
    cache = "warm"
    try:
        with scheduler(args.scheduler, args.workers):
            for r in range(args.rounds):
                order = [
                    ("to_zarr", write_to_zarr, base / "d.zarr"),
                    ("oocstore", write_oocstore, base / "o.zarr"),
                ]
                for name, fn, path in order[:: 1 if r % 2 == 0 else -1]:
                    drop_caches()
                    times[name].append(timed(lambda fn=fn, path=path: fn(arr, path)))
                expected = read_oocstore(base / "o.zarr")
                if not np.isclose(read_from_zarr(base / "d.zarr"), expected, rtol=1e-5):
                    print("the two stores differ", file=sys.stderr)
                    return 1
                reads = [
                    ("from_zarr", read_from_zarr, base / "d.zarr"),
                    ("to_dask", read_oocstore, base / "o.zarr"),
                ]
                for name, fn, path in reads[:: 1 if r % 2 == 0 else -1]:
                    cache = cache_state_after_drop()
                    times[name].append(timed(lambda fn=fn, path=path: fn(path)))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    gb = nbytes / 1e9
    print("## Dask: oocstore vs dask.array.to_zarr / from_zarr\n")
    print(
        f"{gb:.2f} GB float32 ({nbytes // (ROW * 4):,} rows of {ROW}), chunks of "
        f"{CHUNK_ROWS} rows, scheduler {args.scheduler}, {args.workers} workers, "
        f"median of {args.rounds}; reads {cache}.\n"
    )
    print("| step | Dask + zarr (s) | oocstore (s) | Dask GB/s | oocstore GB/s | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for step, theirs, ours in (
        ("write", "to_zarr", "oocstore"),
        ("read .sum()", "from_zarr", "to_dask"),
    ):
        print(
            f"| {step} | {med[theirs]:.3f} | {med[ours]:.3f} | {gb / med[theirs]:.2f} | "
            f"{gb / med[ours]:.2f} | {med[ours] / med[theirs]:.2f}x |"
        )
    print(f"\nmachine: {os.cpu_count()} cores; git {_git()}")
    return 0


def _git() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).parent,
        )
    except OSError:
        return "?"
    return out.stdout.strip() or "?"


if __name__ == "__main__":
    sys.exit(main())
