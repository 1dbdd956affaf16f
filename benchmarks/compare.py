"""Every way a user would turn a stream of batches into arrays on disk, side by side.

What it measures
----------------
Each contender writes the same generated workload, in a fresh subprocess, and is measured on:

* **throughput** (GB/s of sample bytes, median over ``--rounds``) of the write *plus an fsync of
  every file it produced*, so all contenders end durable like the raw limit; the ratio to the
  faster of the two raw writes, buffered (``raw``) and ``O_DIRECT`` (``raw-direct``) (``x raw``);
* **peak RSS** (MB) during the write: ``VmHWM`` after resetting it through
  ``/proc/self/clear_refs`` right before the timed part, so the child's imports and its pool of
  source batches are in the baseline (reported too) but nothing before them is;
* **open time** (ms) of the finished output for reading, and **random single-sample reads/s**
  (``--reads`` random indices, one sample copied out each, capped at ``READ_SECONDS``), both
  after ``sync`` and dropping the page cache (``cold``; ``warm`` when not root).

Workloads: ``images`` (~2 GB of 64x64x3 uint8 images with int64 labels, batches of 256),
``table`` (10 M rows x 16 float32, batches of 65536) and ``ragged`` (images of 32..64 pixels a
side, a quarter of the image bytes) for the peers that take ragged samples. The source is a pool
of ``POOL_BATCHES`` distinct batches generated before timing and cycled, so generating costs
nothing and the source does not grow with the size. Where a contender keeps what it is given
(list + concatenate), it keeps a copy, as it would of a real generator's fresh arrays.

Every run is prepared alike: the previous output is deleted, ``sync``, the page cache dropped
(as root), then in the child the pool and a batch-sized buffer are touched and a scratch file
(up to 2 GB) is written to the page cache and deleted -- this VM hands freed memory back to its
host, and memory touched again is many times slower for a while. Contenders alternate (the order
rotates per round). Slow peers run on a fraction of the data (``SCALE``), said in the table.

``--scaling`` writes 1x, 4x and 16x the image workload with oocstore npy (length unknown, its
usual use), each next to a raw write of the same size, and reports throughput and peak RSS per
size; sizes larger than half the free disk are skipped (16x = 32 GB is more than this machine's
RAM on purpose: memory must stay flat). ``--workloads ''`` runs only the scaling.

How to run
----------
::

    .venv/bin/python benchmarks/compare.py --quick                  # smoke: 0.2 GB, 1 round
    .venv/bin/python benchmarks/compare.py --only raw,oocstore-npy --workloads images
    .venv/bin/python benchmarks/compare.py --scaling \
        --out docs/benchmarks.md --plot docs/compare.png   # full, with the docs section

``--out`` replaces the section "Writing" of that markdown file (or appends it) with this run's
report, every workload's table included, and leaves its other sections alone. Peers install
with ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from _common import drop_caches, replace_section, vm_hwm_mb, vm_rss_mb, write_direct

Batch = tuple[Any, ...]  # one entry per field: an array, or a list of arrays (ragged)
Arrays = dict[str, Any]

SECTION_TITLE = "## Writing"
POOL_BATCHES = 16
SCRATCH_MAX = 2 * 10**9
READ_SECONDS = 5.0
FULL_GB = 2.0
QUICK_GB = 0.2
TABLE_ROWS_PER_GB = 5_000_000  # 10 M rows at the full 2 GB
RAGGED_FRACTION = 0.25
SCALING_FACTORS = (1, 4, 16)
# Slow peers write this fraction of the workload (throughput is per byte, so it stays comparable).
SCALE = {"hf-datasets": 0.125, "zarr-naive": 0.5}
PLAIN_NPY = ("np-concat", "np-prealloc", "open-memmap")  # np.load(mmap_mode="r") of np.save
SLOW = {"hf-datasets", "zarr-naive"}  # skipped by --quick


# -- workloads --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """A stream of batches: field names, per-sample shapes and dtypes, batch size, length."""

    name: str
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    batch_size: int
    length: int
    ragged: bool = False

    @property
    def sample_nbytes(self) -> float:
        """Bytes per sample (mean, for ragged images of sides uniform in 32..64)."""
        sizes = [
            math.prod(s) * np.dtype(d).itemsize
            for s, d in zip(self.shapes, self.dtypes, strict=True)
        ]
        if self.ragged:
            sizes[0] = 48 * 48 * 3  # mean side 48 (approximately: E[h*w] = 48^2 + var)
        return float(sum(sizes))

    @property
    def nbytes(self) -> float:
        return self.length * self.sample_nbytes


def workloads(gb: float) -> dict[str, Workload]:
    """The three workloads at ``gb`` gigabytes of images."""
    img = 64 * 64 * 3 + 8
    return {
        "images": Workload(
            "images", ("images", "labels"), ((64, 64, 3), ()), ("uint8", "int64"), 256,
            round(gb * 1e9 / img),
        ),
        "table": Workload(
            "table", ("x",), ((16,),), ("float32",), 65536, round(gb * TABLE_ROWS_PER_GB)
        ),
        "ragged": Workload(
            "ragged", ("images", "labels"), ((64, 64, 3), ()), ("uint8", "int64"), 256,
            round(gb * RAGGED_FRACTION * 1e9 / (48 * 48 * 3 + 8)), ragged=True,
        ),
    }  # fmt: skip


def make_pool(wl: Workload, seed: int = 0) -> list[Batch]:
    """``POOL_BATCHES`` distinct random batches (fewer if the workload is smaller)."""
    rng = np.random.default_rng(seed)
    n = min(POOL_BATCHES, math.ceil(wl.length / wl.batch_size))
    pool: list[Batch] = []
    for _ in range(n):
        fields: list[Any] = []
        for shape, dtype in zip(wl.shapes, wl.dtypes, strict=True):
            if wl.ragged and len(shape) == 3:
                sides = rng.integers(32, 65, size=(wl.batch_size, 2))
                fields.append([rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sides])
            elif np.dtype(dtype).kind == "f":
                fields.append(rng.random((wl.batch_size, *shape), dtype=np.dtype(dtype)))
            else:
                fields.append(rng.integers(0, 256, (wl.batch_size, *shape)).astype(dtype))
        pool.append(tuple(fields))
    return pool


def batches(wl: Workload, pool: Sequence[Batch]) -> Iterator[Batch]:
    """The workload's batches, cycled from the pool; the last one cut to the length."""
    for i, start in enumerate(range(0, wl.length, wl.batch_size)):
        n = min(wl.batch_size, wl.length - start)
        b = pool[i % len(pool)]
        yield b if n == wl.batch_size else tuple(f[:n] for f in b)


def samples(wl: Workload, pool: Sequence[Batch], k: int) -> Iterator[Any]:
    """Field ``k`` of every sample, one at a time (for the per-sample APIs)."""
    for b in batches(wl, pool):
        yield from b[k]


def nbytes_of(wl: Workload, pool: Sequence[Batch]) -> int:
    """Exact sample bytes of the workload."""
    total = 0
    for b in batches(wl, pool):
        total += sum(sum(a.nbytes for a in f) if isinstance(f, list) else f.nbytes for f in b)
    return total


# -- contenders: writers ----------------------------------------------------------------------


def write_raw(wl: Workload, pool: Sequence[Batch], out: Path) -> None:
    """Sequential ``f.write`` of every batch's bytes into one file: the disk's limit."""
    with (out / "raw.bin").open("wb") as f:
        for b in batches(wl, pool):
            for field_ in b:
                for a in field_ if isinstance(field_, list) else [field_]:
                    f.write(a.data.cast("B"))


def write_raw_direct(wl: Workload, pool: Sequence[Batch], out: Path) -> None:
    """The same bytes with ``O_DIRECT`` from two reused buffers (``_common.write_direct``)."""
    pieces = (
        a
        for b in batches(wl, pool)
        for field_ in b
        for a in (field_ if isinstance(field_, list) else [field_])
    )
    write_direct(pieces, out / "raw.bin")


def write_np_concat(wl: Workload, pool: Sequence[Batch], out: Path) -> None:
    """Append a copy of every batch to a list, ``np.concatenate``, ``np.save``."""
    lists: list[list[np.ndarray]] = [[] for _ in wl.names]
    for b in batches(wl, pool):
        for lst, a in zip(lists, b, strict=True):
            lst.append(a.copy())  # a real source yields fresh arrays, which the list keeps
    for name, lst in zip(wl.names, lists, strict=True):
        whole = np.concatenate(lst)
        lst.clear()
        np.save(out / f"{name}.npy", whole)
        del whole


def write_np_prealloc(wl: Workload, pool: Sequence[Batch], out: Path) -> None:
    """``np.empty`` of the known length, filled batch by batch, then ``np.save``."""
    arrays = [np.empty((wl.length, *s), d) for s, d in zip(wl.shapes, wl.dtypes, strict=True)]
    start = 0
    for b in batches(wl, pool):
        for arr, a in zip(arrays, b, strict=True):
            arr[start : start + len(a)] = a
        start += len(b[0])
    for name, arr in zip(wl.names, arrays, strict=True):
        np.save(out / f"{name}.npy", arr)


def write_open_memmap(wl: Workload, pool: Sequence[Batch], out: Path) -> None:
    """``np.lib.format.open_memmap`` of the known length, filled by slices, flushed."""
    maps = [
        np.lib.format.open_memmap(out / f"{n}.npy", "w+", np.dtype(d), (wl.length, *s))
        for n, s, d in zip(wl.names, wl.shapes, wl.dtypes, strict=True)
    ]
    start = 0
    for b in batches(wl, pool):
        for m, a in zip(maps, b, strict=True):
            m[start : start + len(a)] = a
        start += len(b[0])
    for m in maps:
        m.flush()


def write_npy_append_array(wl: Workload, pool: Sequence[Batch], out: Path) -> None:
    """``NpyAppendArray.append`` of every batch, one file per field."""
    from npy_append_array import NpyAppendArray

    files = [NpyAppendArray(os.fspath(out / f"{n}.npy")) for n in wl.names]
    for b in batches(wl, pool):
        for f, a in zip(files, b, strict=True):
            f.append(a)
    for f in files:
        f.close()


def write_h5_naive(wl: Workload, pool: Sequence[Batch], out: Path) -> None:
    """h5py resizable datasets (default chunks), ``resize`` + write per batch."""
    import h5py

    with h5py.File(out / "data.h5", "w") as f:
        dsets = [
            f.create_dataset(n, shape=(0, *s), dtype=d, maxshape=(None, *s))
            for n, s, d in zip(wl.names, wl.shapes, wl.dtypes, strict=True)
        ]
        start = 0
        for b in batches(wl, pool):
            stop = start + len(b[0])
            for ds, a in zip(dsets, b, strict=True):
                ds.resize(stop, axis=0)
                ds[start:stop] = a
            start = stop


def write_h5_contiguous(wl: Workload, pool: Sequence[Batch], out: Path) -> None:
    """h5py contiguous datasets of the known length, written by slices."""
    import h5py

    with h5py.File(out / "data.h5", "w") as f:
        dsets = [
            f.create_dataset(n, shape=(wl.length, *s), dtype=d)
            for n, s, d in zip(wl.names, wl.shapes, wl.dtypes, strict=True)
        ]
        start = 0
        for b in batches(wl, pool):
            for ds, a in zip(dsets, b, strict=True):
                ds[start : start + len(a)] = a
            start += len(b[0])


def write_zarr_naive(wl: Workload, pool: Sequence[Batch], out: Path) -> None:
    """zarr 3 arrays with default chunks and compressor, created from batch 0, then ``append``.

    Created empty, zarr would guess one sample per chunk here; created with the first batch's
    shape it guesses chunks of (128, 32, 32, 3) images, the more generous naive choice.
    """
    import zarr

    group = zarr.open_group(out / "data.zarr", mode="w")
    arrays: list[Any] = []
    for b in batches(wl, pool):
        if not arrays:
            for n, a in zip(wl.names, b, strict=True):
                arr = group.create_array(n, shape=a.shape, dtype=a.dtype)
                arr[:] = a
                arrays.append(arr)
            continue
        for arr, a in zip(arrays, b, strict=True):
            arr.append(a)


def write_mmap_ninja(wl: Workload, pool: Sequence[Batch], out: Path) -> None:
    """mmap_ninja ``from_generator`` per field (its API takes samples; flushes per batch)."""
    from mmap_ninja import numpy as mn
    from mmap_ninja.ragged import RaggedMmap

    for k, name in enumerate(wl.names):
        gen = samples(wl, pool, k)
        if wl.ragged and k == 0:
            RaggedMmap.from_generator(out / name, gen, batch_size=wl.batch_size)
        else:
            mn.from_generator(out / name, gen, batch_size=wl.batch_size)


def write_hf_datasets(wl: Workload, pool: Sequence[Batch], out: Path) -> None:
    """Hugging Face ``Dataset.from_generator`` of per-sample dicts, fixed-shape features."""
    import datasets

    features = datasets.Features(
        {
            n: datasets.Array3D(s, d) if len(s) == 3 else hf_value(s, d)
            for n, s, d in zip(wl.names, wl.shapes, wl.dtypes, strict=True)
        }
    )

    def gen() -> Iterator[dict[str, Any]]:
        for b in batches(wl, pool):
            for i in range(len(b[0])):
                yield {n: a[i] for n, a in zip(wl.names, b, strict=True)}

    datasets.disable_progress_bars()
    datasets.Dataset.from_generator(gen, features=features, cache_dir=os.fspath(out / "cache"))


def hf_value(shape: tuple[int, ...], dtype: str) -> Any:
    """A scalar ``Value`` or a fixed-length ``List`` feature."""
    import datasets

    if not shape:
        return datasets.Value(dtype)
    return datasets.List(datasets.Value(dtype), length=shape[0])


def oocstore_writer(backend: str, *, known: bool, ragged: str = "pad") -> WriteFn:
    """``oocstore.write`` with one backend, length given or not; defaults otherwise."""

    def write(wl: Workload, pool: Sequence[Batch], out: Path) -> None:
        import oocstore

        suffix = {"npy": ".ooc", "zarr": ".zarr", "hdf5": ".h5"}[backend]
        oocstore.write(
            batches(wl, pool),
            out / f"data{suffix}",
            length=wl.length if known else None,
            names=wl.names,
            backend=backend,
            ragged=ragged,  # type: ignore[arg-type]
            progress=False,
        )

    return write


# -- contenders: readers ----------------------------------------------------------------------


def open_npy(out: Path) -> Any:
    """``np.load(mmap_mode="r")`` of the first field: a plain memmapped ``.npy``."""
    return np.load(sorted(out.glob("*.npy"))[0], mmap_mode="r")


def open_h5(out: Path) -> Any:
    """The first dataset of ``data.h5`` through h5py (file kept open by the dataset)."""
    import h5py

    f = h5py.File(out / "data.h5", "r")
    return f[sorted(f.keys())[0]]


def open_zarr(out: Path) -> Any:
    """The first array of the group through ``zarr.open_group``."""
    import zarr

    group = zarr.open_group(out / "data.zarr", mode="r")
    return group[sorted(group.array_keys())[0]]


def open_mmap_ninja(out: Path) -> Any:
    """The first field's ninja memmap (a ``RaggedMmap`` for ragged images)."""
    from mmap_ninja import numpy as mn
    from mmap_ninja.ragged import RaggedMmap

    first = sorted(p for p in out.iterdir() if p.is_dir())[0]
    if (first / "starts").exists() or (first / "starts.ninja").exists():
        return RaggedMmap(first)
    return mn.open_existing(first)


def open_hf(out: Path) -> Any:
    """The Arrow files written under the cache dir, as a numpy-formatted ``Dataset``."""
    import datasets

    files = sorted((out / "cache").rglob("*.arrow"))
    ds = datasets.concatenate_datasets([datasets.Dataset.from_file(os.fspath(p)) for p in files])
    return _Column(ds.with_format("numpy"), ds.column_names[0])


@dataclass
class _Column:
    """``[i]`` of one column of a row-indexed ``datasets.Dataset``."""

    ds: Any
    name: str

    def __getitem__(self, i: int) -> Any:
        return self.ds[i][self.name]


def oocstore_opener(*, ragged: bool = False) -> OpenFn:
    """``oocstore.open`` of the store in ``out``; its first field (``sample`` when ragged)."""

    def open_(out: Path) -> Any:
        import oocstore

        store = oocstore.open(next(out.iterdir()))
        name = store.schema.fields[0].name
        if ragged:
            return _Sample(store, name)
        return store[name]

    return open_


@dataclass
class _Sample:
    """``[i]`` as ``store.sample(field, i)``: a ragged sample without its padding."""

    store: Any
    name: str

    def __getitem__(self, i: int) -> Any:
        return self.store.sample(self.name, i)


WriteFn = Callable[[Workload, Sequence[Batch], Path], None]
OpenFn = Callable[[Path], Any]


@dataclass(frozen=True)
class Contender:
    """One approach: how it writes, how its output is opened, which workloads it takes."""

    label: str
    write: WriteFn
    open: OpenFn | None
    workloads: tuple[str, ...] = ("images", "table")
    holds_data_in_ram: bool = False


CONTENDERS: dict[str, Contender] = {
    "raw": Contender("raw f.write + fsync (limit)", write_raw, None, ("images", "table", "ragged")),
    "raw-direct": Contender(
        "raw O_DIRECT write + fsync (limit)", write_raw_direct, None, ("images", "table", "ragged")
    ),
    "np-concat": Contender("list + np.concatenate + np.save", write_np_concat, open_npy,
                           holds_data_in_ram=True),
    "np-prealloc": Contender("np.empty + fill + np.save", write_np_prealloc, open_npy,
                             holds_data_in_ram=True),
    "open-memmap": Contender("np.lib.format.open_memmap + flush", write_open_memmap, open_npy),
    "npy-append-array": Contender("npy-append-array", write_npy_append_array, open_npy),
    "h5-naive": Contender("h5py resizable, resize per batch", write_h5_naive, open_h5),
    "h5-contiguous": Contender("h5py contiguous, preallocated", write_h5_contiguous, open_h5),
    "zarr-naive": Contender("zarr default chunks, append per batch", write_zarr_naive, open_zarr),
    "mmap-ninja": Contender("mmap_ninja from_generator", write_mmap_ninja, open_mmap_ninja,
                            ("images", "table", "ragged")),
    "hf-datasets": Contender("datasets.Dataset.from_generator", write_hf_datasets, open_hf),
    "oocstore-npy": Contender("oocstore npy, length known", oocstore_writer("npy", known=True),
                              oocstore_opener()),
    "oocstore-npy-unknown": Contender("oocstore npy, length unknown",
                                      oocstore_writer("npy", known=False), oocstore_opener()),
    "oocstore-zarr": Contender("oocstore zarr (uncompressed), length known",
                               oocstore_writer("zarr", known=True), oocstore_opener()),
    "oocstore-hdf5": Contender("oocstore hdf5, length known", oocstore_writer("hdf5", known=True),
                               oocstore_opener()),
    "oocstore-npy-ragged-pad": Contender("oocstore npy, ragged pad",
                                         oocstore_writer("npy", known=False),
                                         oocstore_opener(ragged=True), ("ragged",)),
    "oocstore-npy-ragged-pack": Contender("oocstore npy, ragged pack",
                                          oocstore_writer("npy", known=False, ragged="pack"),
                                          oocstore_opener(ragged=True), ("ragged",)),
}  # fmt: skip


# -- the child: one timed run -----------------------------------------------------------------


def warm(pool: Sequence[Batch], wl: Workload, scratch_dir: Path, scratch_bytes: int) -> None:
    """Touch the pool, a batch-sized buffer, and page-cache pages (scratch file, deleted)."""
    for b in pool:
        for f in b:
            for a in f if isinstance(f, list) else [f]:
                a.sum()
    buf = np.ones(max(int(wl.batch_size * wl.sample_nbytes), 1 << 20), dtype=np.uint8)
    scratch = scratch_dir / "scratch.tmp"
    with scratch.open("wb") as f:
        for _ in range(scratch_bytes // len(buf)):
            f.write(buf.data)
    scratch.unlink()  # dirty pages of a deleted file are dropped, never written


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root``: all contenders end durable."""
    for path in [*root.rglob("*"), root]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def random_reads(arr: Any, length: int, n: int) -> tuple[float, int]:
    """Samples/s copying out ``n`` random samples (stops after ``READ_SECONDS``)."""
    idx = np.random.default_rng(1).integers(0, length, n)
    done = 0
    t0 = time.perf_counter()
    for i in idx:
        np.array(arr[int(i)], copy=True)
        done += 1
        if done % 256 == 0 and time.perf_counter() - t0 > READ_SECONDS:
            break
    return done / (time.perf_counter() - t0), done


def child(args: argparse.Namespace) -> None:
    """Run one contender once and print its measurements as one JSON line."""
    contender = CONTENDERS[args.child]
    wl = workloads(args.gb)[args.workload]
    wl = Workload(**{**wl.__dict__, "length": max(round(wl.length * args.scale), 1)})
    out = Path(args.dir) / "out"
    out.mkdir()
    if args.child == "hf-datasets":
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        os.environ["HF_HOME"] = os.fspath(Path(args.dir) / "hf-home")
    for mod in module_names(args.child):
        __import__(mod)  # imports are not part of the timed write
    pool = make_pool(wl)
    nbytes = nbytes_of(wl, pool)
    warm(pool, wl, Path(args.dir), min(nbytes, SCRATCH_MAX) if args.scratch else 0)
    baseline = vm_rss_mb()
    Path("/proc/self/clear_refs").write_text("5\n")  # VmHWM := VmRSS
    t0 = time.perf_counter()
    contender.write(wl, pool, out)
    fsync_tree(out)
    seconds = time.perf_counter() - t0
    result: dict[str, Any] = {
        "seconds": seconds,
        "gbps": nbytes / seconds / 1e9,
        "nbytes": nbytes,
        "length": wl.length,
        "baseline_mb": baseline,
        "peak_mb": vm_hwm_mb(),
        "disk_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
    }
    del pool
    if contender.open is not None and args.reads:
        result["cold"] = (not args.no_drop) and drop_caches()
        t0 = time.perf_counter()
        arr = contender.open(out)
        result["open_ms"] = (time.perf_counter() - t0) * 1e3
        result["reads_per_s"], result["reads"] = random_reads(arr, wl.length, args.reads)
    print("RESULT " + json.dumps(result), flush=True)


def module_names(name: str) -> tuple[str, ...]:
    """Modules a contender imports, loaded before timing."""
    if name.startswith("oocstore"):
        backend = name.split("-")[1]
        extra = {"zarr": ("zarr",), "hdf5": ("h5py",)}.get(backend, ())
        return ("oocstore", *extra)
    return {
        "npy-append-array": ("npy_append_array",),
        "h5-naive": ("h5py",),
        "h5-contiguous": ("h5py",),
        "zarr-naive": ("zarr",),
        "mmap-ninja": ("mmap_ninja.numpy", "mmap_ninja.ragged"),
        "hf-datasets": ("datasets",),
    }.get(name, ())


# -- the parent: rounds, medians, tables ------------------------------------------------------


@dataclass
class Runs:
    """All runs of one contender on one workload."""

    name: str
    scale: float
    results: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def median(self, key: str) -> float:
        vals = [r[key] for r in self.results if key in r]
        return statistics.median(vals) if vals else float("nan")


def run_child(name: str, wl: str, gb: float, scale: float, args: argparse.Namespace) -> dict:
    """One fresh subprocess running one contender; its JSON result (or ``{"error": ...}``)."""
    work = Path(tempfile.mkdtemp(prefix=f"compare-{name}-", dir=args.dir))
    try:
        if not args.no_drop:
            drop_caches()
        cmd = [sys.executable, __file__, "--child", name, "--workload", wl, "--gb", str(gb)]
        cmd += ["--scale", str(scale), "--dir", os.fspath(work), "--reads", str(args.reads)]
        cmd += ["--no-drop"] * args.no_drop + ["--no-scratch"] * (not args.scratch)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                return dict(json.loads(line[7:]))
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_workload(wl: str, names: Sequence[str], args: argparse.Namespace) -> dict[str, Runs]:
    """Every contender on one workload, alternated, ``args.rounds`` times."""
    runs = {n: Runs(n, SCALE.get(n, 1.0)) for n in names}
    for r in range(args.rounds):
        order = list(names[r % len(names) :]) + list(names[: r % len(names)])
        for name in order:
            res = run_child(name, wl, args.gb, runs[name].scale, args)
            if "error" in res:
                runs[name].error = res["error"]
                print(f"  {wl} round {r + 1} {name}: FAILED {res['error']}", file=sys.stderr)
                continue
            runs[name].results.append(res)
            print(f"  {wl} round {r + 1} {name}: {res['gbps']:.2f} GB/s", file=sys.stderr)
    return runs


def fmt(x: float, spec: str) -> str:
    """``x`` formatted, or an en dash for a missing value."""
    return "-" if math.isnan(x) else format(x, spec)


def _best_raw(rates: dict[str, float]) -> float:
    """The faster of the raw buffered and raw direct writes: ``x raw`` is relative to it."""
    known = [r for r in rates.values() if not math.isnan(r)]
    return max(known) if known else float("nan")


def workload_table(wl: Workload, runs: dict[str, Runs]) -> str:
    """The markdown table of one workload's medians."""
    raw = _best_raw({n: runs[n].median("gbps") for n in ("raw", "raw-direct") if n in runs})
    head = (
        "| approach | data | GB/s (min-max) | x raw | peak RSS MB (baseline) | on disk GB "
        "| open ms | random reads/s |\n|---|---|---:|---:|---:|---:|---:|---:|"
    )
    rows = [head]
    for name, r in runs.items():
        label = CONTENDERS[name].label
        if not r.results:
            rows.append(f"| {label} | failed: {r.error} | | | | | | |")
            continue
        data = f"{r.results[0]['nbytes'] / 1e9:.2f} GB" + (
            f" ({r.scale:g}x, scaled down)" if r.scale != 1 else ""
        )
        gbps = r.median("gbps")
        spread = [x["gbps"] for x in r.results]
        gbps_text = f"{gbps:.2f}" + (
            f" ({min(spread):.2f}-{max(spread):.2f})" if len(spread) > 1 else ""
        )
        cold = r.results[0].get("cold")
        reads = fmt(r.median("reads_per_s"), ",.0f")
        if reads != "-":
            reads += " cold" if cold else " warm"
        rows.append(
            f"| {label} | {data} | {gbps_text} | {fmt(gbps / raw, '.2f')} "
            f"| {r.median('peak_mb'):,.0f} ({r.median('baseline_mb'):,.0f}) "
            f"| {r.median('disk_bytes') / 1e9:.2f} | {fmt(r.median('open_ms'), ',.1f')} "
            f"| {reads} |"
        )
    return f"### {wl.name}: {wl_description(wl)}\n\n" + "\n".join(rows)


def wl_description(wl: Workload) -> str:
    """One line saying what the workload is."""
    fields = ", ".join(
        f"{n} {'ragged 32..64 x 32..64 x 3' if wl.ragged and len(s) == 3 else s} {d}"
        for n, s, d in zip(wl.names, wl.shapes, wl.dtypes, strict=True)
    )
    return f"{wl.length:,} samples ({fields}), batches of {wl.batch_size}"


# -- targets ----------------------------------------------------------------------------------


def check(lines: list[str], ok: bool | None, text: str) -> None:
    """Append a PASS/FAIL (or n/a when a contender is missing) line."""
    tag = "n/a " if ok is None else ("PASS" if ok else "FAIL")
    lines.append(f"- {tag} {text}")


def target_lines(wl: str, runs: dict[str, Runs]) -> list[str]:
    """PASS/FAIL lines for one workload's targets."""

    def m(name: str, key: str = "gbps") -> float:
        return runs[name].median(key) if name in runs else float("nan")

    lines: list[str] = []
    raw = _best_raw({n: m(n) for n in ("raw", "raw-direct")})
    for name, goal in (("oocstore-npy", 0.95), ("oocstore-hdf5", 0.95), ("oocstore-zarr", 0.8)):
        ratio = m(name) / raw
        if math.isnan(ratio):
            continue
        check(lines, ratio >= goal,
              f"{wl}: {name} {fmt(ratio, '.2f')}x raw write (target >= {goal}x)")  # fmt: skip
    families = {
        "oocstore-npy": ("np-concat", "np-prealloc", "open-memmap", "npy-append-array",
                         "mmap-ninja"),
        "oocstore-hdf5": ("h5-naive", "h5-contiguous"),
        "oocstore-zarr": ("zarr-naive",),
    }  # fmt: skip
    for ours, peers in families.items():
        present = [p for p in peers if not math.isnan(m(p))]
        if math.isnan(m(ours)) or not present:
            continue
        best = max(present, key=m)
        check(lines, m(ours) >= m(best),
              f"{wl}: {ours} {m(ours):.2f} GB/s vs fastest peer {best} {m(best):.2f} GB/s "
              f"({m(ours) / m(best):.2f}x)")  # fmt: skip
    in_ram = [n for n in runs if CONTENDERS[n].holds_data_in_ram and runs[n].results]
    ours_rss = {n: m(n, "peak_mb") for n in runs if n.startswith("oocstore") and runs[n].results}
    if in_ram and ours_rss:
        worst, least = (
            max(ours_rss, key=ours_rss.__getitem__),
            min(in_ram, key=lambda n: m(n, "peak_mb")),
        )
        check(lines, ours_rss[worst] < m(least, "peak_mb"),
              f"{wl}: highest oocstore peak RSS ({worst}, {ours_rss[worst]:,.0f} MB) < lowest "
              f"in-RAM approach ({least}, {m(least, 'peak_mb'):,.0f} MB)")  # fmt: skip
    plain_runs = [r for n in PLAIN_NPY if n in runs for r in runs[n].results]
    plain_reads = [r["reads_per_s"] for r in plain_runs if "reads_per_s" in r]
    plain = statistics.median(plain_reads) if plain_reads else math.nan  # none with --reads 0
    for name in ("oocstore-npy", "oocstore-hdf5"):
        ratio = m(name, "reads_per_s") / plain
        if not math.isnan(ratio):
            check(lines, ratio >= 0.8, f"{wl}: {name} random reads {ratio:.2f}x a plain "
                  "memmapped .npy (target >= 0.8x)")  # fmt: skip
    ratio = m("oocstore-zarr", "reads_per_s") / m("zarr-naive", "reads_per_s")
    if not math.isnan(ratio):
        check(lines, ratio >= 10, f"{wl}: oocstore-zarr random reads {ratio:.1f}x plain zarr "
              "(target >= 10x)")  # fmt: skip
    return lines


# -- scaling ----------------------------------------------------------------------------------


def run_scaling(args: argparse.Namespace) -> tuple[str, list[str], list[tuple[int, dict]]]:
    """oocstore npy (length unknown) and the raw write at 1x, 4x, 16x the image workload."""
    free = shutil.disk_usage(args.dir or tempfile.gettempdir()).free
    rows = [
        "| size | data GB | oocstore GB/s | raw GB/s | x raw | peak RSS MB (baseline) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    done: list[tuple[int, dict]] = []
    for factor in SCALING_FACTORS:
        gb = args.gb * factor
        if gb * 1e9 > free / 2:
            rows.append(f"| {factor}x | {gb:.0f} | skipped: more than half the free disk | | | |")
            continue
        raw = run_child("raw", "images", gb, 1.0, args_no_reads(args))
        res = run_child("oocstore-npy-unknown", "images", gb, 1.0, args_no_reads(args))
        if "error" in res or "error" in raw:
            rows.append(f"| {factor}x | {gb:.1f} | failed: {res.get('error', raw.get('error'))} |")
            continue
        res["raw_gbps"] = raw["gbps"]
        done.append((factor, res))
        print(
            f"  scaling {factor}x: {res['gbps']:.2f} GB/s, raw {raw['gbps']:.2f}", file=sys.stderr
        )
        rows.append(
            f"| {factor}x | {res['nbytes'] / 1e9:.1f} | {res['gbps']:.2f} | {raw['gbps']:.2f} "
            f"| {res['gbps'] / raw['gbps']:.2f} "
            f"| {res['peak_mb']:,.0f} ({res['baseline_mb']:,.0f}) |"
        )
    lines: list[str] = []
    if len(done) >= 2:
        (f0, r0), (f1, r1) = done[0], done[-1]
        growth = r1["peak_mb"] / r0["peak_mb"]
        check(lines, growth < 1.2,
              f"scaling: peak RSS at {f1}x {r1['peak_mb']:,.0f} MB vs {f0}x "
              f"{r0['peak_mb']:,.0f} MB ({growth:.2f}x, target < 1.2x)")  # fmt: skip
    return "\n".join(rows), lines, done


def args_no_reads(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of ``args`` with random reads off."""
    return argparse.Namespace(**{**vars(args), "reads": 0})


# -- report -----------------------------------------------------------------------------------


def versions() -> str:
    """Versions of the libraries compared."""
    parts = []
    for pkg in ("oocstore", "numpy", "zarr", "h5py", "npy-append-array", "mmap-ninja", "datasets"):
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            parts.append(f"{pkg} not installed")
    return ", ".join(parts)


def machine(directory: str) -> str:
    """Cores, RAM, filesystem, kernel, load and date."""
    import psutil

    path = Path(directory).resolve()
    parts = [p for p in psutil.disk_partitions(all=True) if path.is_relative_to(p.mountpoint)]
    fs = max(parts, key=lambda p: len(p.mountpoint)) if parts else None
    fs_text = f"{fs.fstype} on {fs.device} ({fs.mountpoint})" if fs else "unknown"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
        f"{fs_text}, {shutil.disk_usage(path).free / 1e9:.0f} GB free; Linux "
        f"{platform.release()}, Python {platform.python_version()}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average at the end {load}"
    )


def plot(results: dict[str, dict[str, Runs]], path: Path) -> None:
    """Throughput and peak RSS per approach, one row of panels per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [w for w in results if results[w]]
    fig, axes = plt.subplots(len(names), 2, figsize=(12, 3.2 + 0.35 * 16 * len(names) / 2),
                             squeeze=False)  # fmt: skip
    for row, wl in zip(axes, names, strict=True):
        runs = [r for r in results[wl].values() if r.results]
        labels = [CONTENDERS[r.name].label for r in runs]
        colors = ["tab:green" if r.name.startswith("oocstore") else "tab:gray" for r in runs]
        colors = ["tab:red" if r.name == "raw" else c for r, c in zip(runs, colors, strict=True)]
        for ax, key, title in ((row[0], "gbps", "write GB/s (incl. fsync)"),
                               (row[1], "peak_mb", "peak RSS MB")):  # fmt: skip
            ax.barh(labels, [r.median(key) for r in runs], color=colors)
            ax.set_title(f"{wl}: {title}")
            ax.invert_yaxis()
            ax.bar_label(ax.containers[0], fmt="%.2f" if key == "gbps" else "%.0f", fontsize=8)
            if key == "peak_mb":
                ax.set_yticklabels([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def report(args: argparse.Namespace, results: dict[str, dict[str, Runs]], load0: str,
           scaling: tuple[str, list[str], list] | None) -> str:  # fmt: skip
    """The markdown section: machine, how to rerun, tables, targets, plot."""
    wls = workloads(args.gb)
    parts = [
        SECTION_TITLE,
        "",
        f"Machine: {machine(args.dir or tempfile.gettempdir())} (load before the run: {load0}).",
        "",
        f"Versions: {versions()}.",
        "",
        f"Run: `{' '.join(['.venv/bin/python', 'benchmarks/compare.py', *sys.argv[1:]])}` "
        f"({args.rounds} round(s), medians; every write ends with an fsync of all its files; "
        "peak RSS is VmHWM reset right before the timed write, the baseline is the child's "
        "RSS then (imports and a pool of 16 source batches); reads are random single samples "
        "copied out after dropping the page cache).",
    ]
    targets: list[str] = []
    for wl, runs in results.items():
        if runs:
            parts += ["", workload_table(wls[wl], runs)]
            targets += target_lines(wl, runs)
    if scaling:
        parts += ["", "### Scaling: oocstore npy, length unknown, image workload", "", scaling[0]]
        targets += scaling[1]
    if targets:
        parts += ["", "### Targets", "", *targets]
    if args.plot:
        parts += ["", f"![throughput and peak RSS per approach]({Path(args.plot).name})"]
    return "\n".join(parts) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--child`` and below are for the subprocesses)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="0.2 GB, 1 round, no slow peers")
    p.add_argument("--gb", type=float, help=f"image workload size (default {FULL_GB})")
    p.add_argument("--rounds", type=int, help="rounds per contender (default 3)")
    p.add_argument("--only", help="comma-separated contenders: " + ",".join(CONTENDERS))
    p.add_argument("--workloads", default="images,table,ragged")
    p.add_argument("--reads", type=int, default=20_000, help="random reads per run (0: none)")
    p.add_argument("--scaling", action="store_true", help="also 1x/4x/16x with oocstore npy")
    p.add_argument("--out", help="markdown file whose section to replace")
    p.add_argument("--plot", help="PNG to write (matplotlib)")
    p.add_argument("--json", help="file for every run's raw measurements")
    p.add_argument("--dir", help="where outputs go (default: the temp dir)")
    p.add_argument("--no-drop", action="store_true", help="never drop the page cache")
    p.add_argument("--no-scratch", dest="scratch", action="store_false",
                   help="skip the page-cache warm-up file")  # fmt: skip
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--workload", help=argparse.SUPPRESS)
    p.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.gb = args.gb or (QUICK_GB if args.quick else FULL_GB)
    args.rounds = args.rounds or (1 if args.quick else 3)
    return args


def selected(args: argparse.Namespace, wl: str) -> list[str]:
    """Contenders to run on workload ``wl``."""
    names = args.only.split(",") if args.only else list(CONTENDERS)
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        sys.exit(f"unknown contenders {sorted(unknown)}; choose from {','.join(CONTENDERS)}")
    if args.quick and not args.only:
        names = [n for n in names if n not in SLOW]
    return [n for n in names if wl in CONTENDERS[n].workloads]


def main(argv: Sequence[str] | None = None) -> None:
    """Run the comparison (or, with ``--child``, one measurement) and print the tables."""
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    load0 = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    results: dict[str, dict[str, Runs]] = {}
    for wl in [w for w in args.workloads.split(",") if w]:
        names = selected(args, wl)
        results[wl] = run_workload(wl, names, args) if names else {}
    scaling = run_scaling(args) if args.scaling else None
    if args.json:
        raw = {w: {n: r.results for n, r in runs.items()} for w, runs in results.items()}
        raw["scaling"] = {f"{f}x": res for f, res in scaling[2]} if scaling else {}
        Path(args.json).write_text(json.dumps(raw, indent=1))
    if args.plot:
        plot(results, Path(args.plot))
    section = report(args, results, load0, scaling)
    print(section)
    if args.out:
        replace_section(Path(args.out), SECTION_TITLE, section)


if __name__ == "__main__":
    main()
