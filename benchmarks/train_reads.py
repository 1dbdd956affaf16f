"""Training reads from a store against the memory map itself.

What it measures
----------------
One warm npy store of ``--samples`` images (64x64x3 uint8, plus an int64 label: 0.5 GB at the
default 40,192) is read for one shuffled epoch of batches of ``--batch`` (256) by each
contender, best of ``--rounds`` epochs after one warm-up epoch:

``memmap gather (limit)``
    For each batch of a random permutation, ``images[sorted_rows]`` and ``labels[...]``: one
    NumPy fancy index per field on the ``np.memmap``. What the map can give.
``store.batches``
    ``store.batches(256, shuffle=True)`` (NumPy).
``store.loader, 0 workers``
    ``store.loader(256, shuffle=True, num_workers=0)``: torch tensors.
``DataLoader(store.to_torch())``
    torch's own ``DataLoader(batch_size=256, shuffle=True)`` over ``store.to_torch()``: batched
    reads (``__getitems__``), then torch's default collate stacks the samples again.
``TensorDataset in RAM``
    ``DataLoader(TensorDataset(images, labels), batch_size=256, shuffle=True)`` over tensors
    held in memory: the usual baseline.
``loader + 5 ms transform, 0 / 2 workers``
    ``store.loader(256, shuffle=True, transform=t, num_workers=n)`` where ``t`` burns ~5 ms of
    CPU per batch: workers must scale it.
``Hugging Face datasets``, ``Lance``
    If installed (not required): ``Dataset.with_format("torch")`` indexed with each batch's
    rows, from a dataset saved to disk and memory-mapped; Lance ``take`` of each batch.

Every contender reads each batch's pixels into its own memory (the sum of one byte per sample
is taken so nothing is left lazy). Targets (checked, printed): the loader at least 0.8x the
memmap gather, 3x the TensorDataset and 10x the faster of Hugging Face datasets and Lance;
with the transform, 2 workers at least 1.7x 0 workers.
Run it on a quiet machine: it times CPU-bound loops.

How to run
----------
::

    .venv/bin/python benchmarks/train_reads.py               # 0.5 GB, 3 rounds
    .venv/bin/python benchmarks/train_reads.py --smoke       # tiny, seconds: checks it runs
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import oocstore

TRANSFORM_SECONDS = 0.005


def burn(batch: tuple[Any, ...]) -> tuple[Any, ...]:
    """A transform costing ~5 ms of CPU per batch (module level: workers unpickle it)."""
    stop = time.process_time() + TRANSFORM_SECONDS
    while time.process_time() < stop:
        pass
    return batch


def consume(batches: Iterable[Any]) -> int:
    """Read every batch's first field into memory; the number of samples seen."""
    n = 0
    for batch in batches:
        first = batch[0] if isinstance(batch, tuple | list) else batch["image"]
        n += len(first)
        np.asarray(first).reshape(len(first), -1)[:, 0].sum()
    return n


def timed(run: Callable[[], int], rounds: int) -> tuple[float, int]:
    """Samples per second of the best of ``rounds`` epochs, after one warm-up epoch."""
    run()
    best = float("inf")
    n = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        n = run()
        best = min(best, time.perf_counter() - t0)
    return n / best, n


def build(path: Path, samples: int, side: int) -> oocstore.Store:
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, size=(256, side, side, 3), dtype=np.uint8)
    step = 1024

    def blocks() -> Iterable[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, samples, step):
            n = min(step, samples - start)
            images = np.roll(pool, start, axis=0)[np.arange(n) % len(pool)]
            yield images, np.arange(start, start + n, dtype=np.int64)

    return oocstore.write(blocks(), path, length=samples, names=("image", "label"))


def gather_epoch(store: oocstore.Store, batch: int, seed: list[int]) -> Callable[[], int]:
    images, labels = store["image"], store["label"]

    def run() -> int:
        seed[0] += 1
        order = np.random.default_rng(seed[0]).permutation(len(store))
        n = 0
        for start in range(0, len(order), batch):
            rows = np.sort(order[start : start + batch])
            x, y = images[rows], labels[rows]
            n += len(y)
            x.reshape(len(x), -1)[:, 0].sum()
        return n

    return run


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=40_192)
    p.add_argument("--side", type=int, default=64, help="image side (64: 64x64x3 uint8)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny and fast: checks the script runs")
    p.add_argument("--dir", help="where to build the store (default: a temporary directory)")
    args = p.parse_args(argv)
    if args.smoke:
        args.samples, args.side, args.batch, args.rounds = 1024, 16, 64, 1

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    root = Path(tempfile.mkdtemp(prefix="train-reads-", dir=args.dir))
    rows: list[tuple[str, float | None, str]] = []
    try:
        store = build(root / "train.ooc", args.samples, args.side)
        b, r = args.batch, args.rounds
        seed = [0]
        results: dict[str, float] = {}

        def add(name: str, run: Callable[[], int] | None, note: str = "") -> None:
            if run is None:
                rows.append((name, None, note))
                return
            rate, n = timed(run, r)
            if n != len(store):
                msg = f"{name} gave {n} samples per epoch, not {len(store)}"
                raise AssertionError(msg)
            results[name] = rate
            rows.append((name, rate, note))

        add("memmap gather (limit)", gather_epoch(store, b, seed), "sorted rows, fancy index")
        batches = store.batches(b, shuffle=True)
        add("store.batches", lambda: consume(batches), f"shuffle={batches.shuffle!r}")
        loader = store.loader(b, shuffle=True)
        add("store.loader, 0 workers", lambda: consume(loader), f"shuffle={loader.order.mode!r}")
        plain = DataLoader(store.to_torch(), batch_size=b, shuffle=True)
        add("DataLoader(store.to_torch())", lambda: consume(plain), "default collate")
        ram = TensorDataset(torch.tensor(store["image"][:]), torch.tensor(store["label"][:]))
        in_ram = DataLoader(ram, batch_size=b, shuffle=True)
        add("TensorDataset in RAM", lambda: consume(in_ram), "DataLoader(shuffle=True)")
        t0 = store.loader(b, shuffle=True, transform=burn)
        add("loader + 5 ms transform, 0 workers", lambda: consume(t0))
        t2 = store.loader(b, shuffle=True, transform=burn, num_workers=2, persistent_workers=True)
        add("loader + 5 ms transform, 2 workers", lambda: consume(t2), "persistent workers")
        add_peers(add, store, root, b)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    report(rows, results, args)
    return 0


def add_peers(add: Callable[..., None], store: oocstore.Store, root: Path, batch: int) -> None:
    """Hugging Face datasets and Lance, when installed."""
    if importlib.util.find_spec("datasets") is None:
        add("Hugging Face datasets", None, "not installed")
    else:
        import datasets

        datasets.disable_progress_bars()
        n = len(store)
        flat = store["image"][:].reshape(n, -1)
        ds = datasets.Dataset.from_dict({"image": list(flat), "label": store["label"][:]})
        ds.save_to_disk(str(root / "hf"))
        hf = datasets.load_from_disk(str(root / "hf")).with_format("torch")
        seed = [100]

        def run() -> int:
            seed[0] += 1
            order = np.random.default_rng(seed[0]).permutation(n)
            return consume(hf[np.sort(order[i : i + batch]).tolist()] for i in range(0, n, batch))

        add("Hugging Face datasets", run, 'with_format("torch"), batch rows')
    if importlib.util.find_spec("lance") is None:
        add("Lance", None, "not installed (pip install pylance)")
    else:
        add("Lance", lance_epoch(store, root, batch), "take of each batch's sorted rows")


def lance_epoch(store: oocstore.Store, root: Path, batch: int) -> Callable[[], int]:
    """Lance: the same samples as a Lance dataset (images as fixed-size lists of bytes), read
    with ``take`` of each batch's sorted rows and turned into NumPy arrays."""
    import lance
    import pyarrow as pa

    n = len(store)
    flat = np.ascontiguousarray(store["image"][:]).reshape(n, -1)
    images = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    table = pa.table({"image": images, "label": pa.array(store["label"][:])})
    ds = lance.write_dataset(table, str(root / "train.lance"))
    seed = [200]

    def batches() -> Iterable[tuple[np.ndarray, np.ndarray]]:
        seed[0] += 1
        order = np.random.default_rng(seed[0]).permutation(n)
        for start in range(0, n, batch):
            got = ds.take(np.sort(order[start : start + batch]), columns=["image", "label"])
            col = got.column("image").combine_chunks()
            x = col.values.to_numpy(zero_copy_only=False).reshape(len(col), -1)
            yield x, got.column("label").to_numpy()

    return lambda: consume(batches())


def report(rows: list[tuple[str, float | None, str]], results: dict[str, float], args: Any) -> None:
    gather = results["memmap gather (limit)"]
    ram = results["TensorDataset in RAM"]
    size = "smoke (timings meaningless)" if args.smoke else f"{args.samples:,} samples"
    print(f"## Training reads: {size}, {args.side}x{args.side}x3 uint8, batch {args.batch}\n")
    print("| contender | samples/s | vs memmap gather | vs TensorDataset | note |")
    print("|---|---:|---:|---:|---|")
    for name, rate, note in rows:
        if rate is None:
            print(f"| {name} | - | - | - | {note} |")
        else:
            print(f"| {name} | {rate:,.0f} | {rate / gather:.2f}x | {rate / ram:.2f}x | {note} |")
    loader = results["store.loader, 0 workers"]
    scale = (
        results["loader + 5 ms transform, 2 workers"]
        / results["loader + 5 ms transform, 0 workers"]
    )
    targets = [
        ("store.loader / memmap gather", loader / gather, 0.8),
        ("store.loader / TensorDataset", loader / ram, 3.0),
        ("5 ms transform: 2 workers / 0 workers", scale, 1.7),
    ]
    peers = {k: results[k] for k in ("Hugging Face datasets", "Lance") if k in results}
    if peers:
        best = max(peers, key=peers.__getitem__)
        targets.append((f"store.loader / the faster peer ({best})", loader / peers[best], 10.0))
    print("\n## Targets\n")
    for what, value, target in targets:
        verdict = "met" if value >= target else "MISSED"
        print(f"- {what}: {value:.2f}x (target >= {target}x): {verdict}")


if __name__ == "__main__":
    sys.exit(main())
