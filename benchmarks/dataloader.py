"""A PyTorch DataLoader into NumPy: ``oocstore.write(loader)`` against the list recipe.

What it measures
----------------
One ``DataLoader`` (batch size 256, ``num_workers=0``) over ~1 GB of float32 image tensors
(3x64x64, 48 KiB each, plus an int64 label) is turned into NumPy arrays by each contender:

``list + np.concatenate``
    The common recipe: ``xs.append(x.cpu().numpy())`` for every batch, then
    ``np.concatenate(xs)`` (and the same for the labels). Needs the dataset twice in RAM.
``oocstore.write``
    ``oocstore.write(loader, path, names=("x", "y"))``: streamed to an npy store, length
    preallocated from the loader, committed (fdatasync'd) as usual; the result is read-only
    ``np.memmap`` arrays.

The dataset makes its tensors on the fly from a small pool (as a loader that decodes files
would), so the source itself takes no memory and both contenders pay the same for it.

Each timed run is a fresh subprocess. Before its timed part it warms memory -- allocates and
touches as much as the recipe will need, then frees it -- because this VM hands freed memory
back to its host and memory touched again afterwards is ~20x slower for a while. It then resets
its peak RSS (``/proc/self/clear_refs``), runs the conversion, and reports the time and the
peak RSS of the timed part (``VmHWM``; the baseline of the interpreter, torch and the loader is
included, nothing is subtracted). Contenders alternate within each round (the order rotates)
and medians over the rounds are reported. The store is deleted and ``sync`` run between runs.

Targets: oocstore no slower than the recipe, and its peak RSS below half of the recipe's.

How to run
----------
::

    .venv/bin/python benchmarks/dataloader.py                       # ~1 GB, 3 rounds
    .venv/bin/python benchmarks/dataloader.py --gb 0.25 --rounds 1  # smoke
    .venv/bin/python benchmarks/dataloader.py --out docs/benchmarks.md

``--out`` replaces (or appends) only the "Writing from a PyTorch DataLoader" section of that
file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import replace_section

SECTION_TITLE = "## Writing from a PyTorch DataLoader"
SAMPLE_SHAPE = (3, 64, 64)
BATCH_SIZE = 256
POOL = 64  # distinct sample tensors the dataset cycles through
LABELS = {
    "loader": "loader alone (the floor)",
    "recipe": "list + np.concatenate",
    "oocstore": "oocstore.write",
}


# -- the child: one timed conversion ----------------------------------------------------------


def _status_kb(key: str) -> int | None:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) if match else None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def child(which: str, gb: float, out: Path) -> dict[str, Any]:
    """Run one contender once and return its measurements."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Dataset

    import oocstore

    sample_nbytes = math.prod(SAMPLE_SHAPE) * 4
    n = int(gb * 1e9) // sample_nbytes
    pool = [torch.full(SAMPLE_SHAPE, float(i)) for i in range(POOL)]

    class Images(Dataset[tuple[torch.Tensor, int]]):
        """Tensors made on the fly (from a small pool), as a loader decoding files would."""

        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return pool[i % POOL], i

    loader = DataLoader(Images(), batch_size=BATCH_SIZE, num_workers=0)
    syscalls = _time_syscalls() if which == "oocstore" else {}
    # Warm: touch what the recipe will hold (list + result) and a batch, then free it.
    warm = np.ones(2 * n * sample_nbytes + 64 * 2**20, dtype=np.uint8)
    del warm
    next(iter(loader))  # torch's first-batch set-up, outside the timed part
    rss_before = _status_kb("VmRSS")
    exact_peak = _reset_peak()

    t0 = time.perf_counter()
    if which == "loader":  # what iterating costs by itself: the floor for both
        seen = 0
        for x, y in loader:
            x.cpu().numpy(), y.cpu().numpy()
            seen += len(x)
    elif which == "recipe":
        xs, ys = [], []
        for x, y in loader:
            xs.append(x.cpu().numpy())
            ys.append(y.cpu().numpy())
        X, Y = np.concatenate(xs), np.concatenate(ys)
        del xs, ys
    else:
        store = oocstore.write(loader, out / "s.ooc", names=("x", "y"), progress=False)
        X, Y = store["x"], store["y"]
    seconds = time.perf_counter() - t0
    peak_kb = _status_kb("VmHWM") if exact_peak else None
    if peak_kb is None:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    if which == "loader":
        ok = seen == n
    else:
        ok = (
            X.shape == (n, *SAMPLE_SHAPE)
            and Y.shape == (n,)
            and all(
                float(X[i, 0, 0, 0]) == float(i % POOL) and int(Y[i]) == i
                for i in (0, n // 2, n - 1)
            )
        )
    return {
        "which": which,
        "seconds": seconds,
        "peak_mb": peak_kb / 1024,
        "baseline_mb": (rss_before or 0) / 1024,
        "exact_peak": exact_peak,
        "ok": bool(ok),
        "gb": n * sample_nbytes / 1e9,
        "syscalls": syscalls,
    }


def _time_syscalls() -> dict[str, float]:
    """Wrap the ``os`` calls that write and make durable, to report where oocstore's time goes."""
    spent: dict[str, float] = {}
    for name in ("pwrite", "fdatasync", "fsync", "posix_fallocate"):
        call = getattr(os, name, None)
        if call is None:
            continue

        def timed(*args: Any, _call: Any = call, _name: str = name) -> Any:
            t = time.perf_counter()
            try:
                return _call(*args)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - t

        setattr(os, name, timed)
    return spent


# -- the parent: rounds of fresh subprocesses, then the table ----------------------------------


def run_child(which: str, gb: float, workdir: Path) -> dict[str, Any]:
    out = workdir / f"run-{which}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    subprocess.run(["sync"], check=False)
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", which, "--gb", str(gb), "--dir", str(out)],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        shutil.rmtree(out, ignore_errors=True)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if not result["ok"]:
        msg = f"{which}: the arrays it produced are wrong"
        raise RuntimeError(msg)
    return result


def table(results: dict[str, list[dict[str, Any]]], rounds: int, where: Path) -> str:
    """The markdown section: setup, per-contender medians, ratios and targets."""
    med = {
        k: {m: statistics.median(r[m] for r in v) for m in ("seconds", "peak_mb")}
        for k, v in results.items()
    }
    base = statistics.median(r["baseline_mb"] for v in results.values() for r in v)
    recipe, ooc, floor = med["recipe"], med["oocstore"], med["loader"]
    time_ratio = ooc["seconds"] / recipe["seconds"]
    per_round = [
        o["seconds"] / r["seconds"]
        for o, r in zip(results["oocstore"], results["recipe"], strict=True)
    ]
    rss_ratio = ooc["peak_mb"] / recipe["peak_mb"]
    exact = all(r["exact_peak"] for v in results.values() for r in v)
    calls = {
        name: statistics.median(r["syscalls"].get(name, 0.0) for r in results["oocstore"])
        for name in ("pwrite", "fdatasync", "fsync", "posix_fallocate")
    }
    durable = calls["fdatasync"] + calls["fsync"] + calls["posix_fallocate"]
    data_gb = results["recipe"][0]["gb"]
    lines = [
        SECTION_TITLE,
        "",
        f"`benchmarks/dataloader.py`, {datetime.now(UTC):%Y-%m-%d}: a `DataLoader` "
        f"(batch {BATCH_SIZE}, `num_workers=0`) over {data_gb:.2f} GB of float32 "
        f"{'x'.join(map(str, SAMPLE_SHAPE))} tensors + int64 labels, turned into NumPy arrays. "
        f"Median of {rounds} round(s); every run a fresh subprocess, contenders alternated, "
        "memory warmed before each timed part. Peak RSS is the timed part's high-water mark "
        f"({'VmHWM after a reset' if exact else 'ru_maxrss, warm-up included'}), with the "
        f"~{base:.0f} MB baseline of Python, torch and the loader included.",
        "",
        "| contender | time (s) | GB/s | peak RSS (MB) |",
        "|---|---:|---:|---:|",
    ]
    for key, label in LABELS.items():
        m = med[key]
        lines.append(
            f"| {label} | {m['seconds']:.2f} | {data_gb / m['seconds']:.2f} | {m['peak_mb']:.0f} |"
        )
    lines += [
        "",
        f"oocstore / recipe: time **{time_ratio:.2f}x** (target <= 1.00: "
        f"{'met' if time_ratio <= 1.0 else 'not met'}), peak RSS **{rss_ratio:.2f}x** "
        f"(target < 0.50: {'met' if rss_ratio < 0.5 else 'not met'}). Time ratio round by "
        f"round: {', '.join(f'{x:.2f}' for x in per_round)} (this VM's disk and memory are "
        "noisy). Above the loader alone: "
        f"the recipe adds {recipe['seconds'] - floor['seconds']:.2f} s, oocstore "
        f"{ooc['seconds'] - floor['seconds']:.2f} s. oocstore spent {calls['pwrite']:.2f} s in "
        f"`pwrite` (the recipe's `np.concatenate` copy, in effect) and {durable:.2f} s in the "
        "calls that make the store durable (`fdatasync`/`fsync`, `posix_fallocate`; periodic "
        "commits run them in a background thread, so they partly overlap the loading), which "
        "the recipe does not do.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        f", torch {_torch_version()}; stores written to `{where}`.",
        "",
    ]
    return "\n".join(lines)


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--gb", type=float, default=1.0, help="data size in GB (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both contenders")
    parser.add_argument("--dir", type=Path, default=None, help="where stores are written")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to update")
    parser.add_argument("--child", choices=tuple(LABELS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(child(args.child, args.gb, args.dir)))
        return

    workdir = Path(tempfile.mkdtemp(prefix="ooc-bench-", dir=args.dir))
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in LABELS}
    try:
        for r in range(args.rounds):
            order = list(LABELS)[r % 3 :] + list(LABELS)[: r % 3]  # rotate the order
            for which in order:
                res = run_child(which, args.gb, workdir)
                results[which].append(res)
                print(
                    f"round {r + 1}: {which:9s} {res['seconds']:6.2f} s, "
                    f"peak RSS {res['peak_mb']:6.0f} MB",
                    file=sys.stderr,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    section = table(results, args.rounds, workdir.parent)
    print(section)
    if args.out is not None:
        replace_section(args.out, SECTION_TITLE, section)


if __name__ == "__main__":
    main()
