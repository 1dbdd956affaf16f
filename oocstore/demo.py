"""The demo (``oocstore demo``, ``make demo``): the jobs people come for, measured on this machine.

1. :func:`run_demo` streams a generated image dataset from a generator into a store and puts
   its rate beside the disk's own, measured right after in the same directory
   (:func:`raw_write_seconds`).
2. :func:`photo_folder` generates a folder of photo-like JPEGs that the CLI then ingests with
   ``oocstore ingest`` (the same command a user runs).
3. :func:`report_shared_read` reads the ingested store from a second Python process and prints
   that process's memory: the store's pages are the page cache's, shared, not a private copy.

The CLI's ``demo`` command runs the three and ends with ``oocstore info`` of the result.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .api import write
from .progress import format_bytes
from .reader import Store
from .reader import open as open_store

__all__ = [
    "demo_batches",
    "run_demo",
    "warm_page_cache",
    "raw_write_seconds",
    "photos_store_path",
    "photo_folder",
    "make_photos",
    "read_everything",
    "report_shared_read",
]

_RAW_BLOCK = 4 * 2**20  # bytes per f.write of the raw write, as in benchmarks/write_throughput.py
_SIDE = 64  # pixels a side of the demo's generated images

# Photo-like JPEGs: crops of a few smooth canvases, one per class folder, each a gradient
# between two colours with a soft blob and sensor-like noise, so they compress like photos
# (~13 kB at 200-320 px and quality 85) rather than like noise or a flat colour.
PHOTO_CLASSES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "beach": ((225, 205, 160), (120, 180, 230)),
    "dusk": ((40, 30, 80), (250, 140, 60)),
    "forest": ((20, 60, 25), (95, 140, 60)),
    "meadow": ((90, 160, 60), (170, 210, 240)),
    "ocean": ((10, 50, 110), (60, 150, 200)),
    "snow": ((230, 235, 240), (150, 170, 200)),
}
PHOTO_SIDES = (200, 320)
"""Smallest and largest side of a generated JPEG, in pixels (each side drawn independently)."""
_CANVAS = 640
_QUALITY = 85


def demo_batches(
    n: int, batch_size: int = 256, size: int = 64, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(images, labels)`` batches: ``n`` random ``size x size`` RGB images in all."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(batch_size, size, size, 3), dtype=np.uint8)
    # A few shifted copies, made once and cycled: the timed write measures the store, not
    # the cost of making fresh pixels for every batch.
    variants = [np.roll(base, shift, axis=1) for shift in range(0, size, max(size // 8, 1))]
    for i, start in enumerate(range(0, n, batch_size)):
        k = min(batch_size, n - start)
        labels = (np.arange(start, start + k) % 10).astype(np.int64)
        yield variants[i % len(variants)][:k], labels


def _write_file(path: Path | str, nbytes: int, block: memoryview) -> None:
    with open(path, "wb") as f:
        for start in range(0, nbytes, len(block)):
            f.write(block[: min(len(block), nbytes - start)])


def warm_page_cache(directory: str | os.PathLike[str], nbytes: int) -> None:
    """Write ``nbytes`` to a scratch file in ``directory`` and delete it before writeback.

    Some virtual machines hand freed memory back to their host, and memory touched again is
    many times slower for a while; a first timed write would pay for that, a second would not
    (``benchmarks/_common.py`` warms the same way). Nothing reaches the disk: dirty pages of a
    deleted file are dropped.
    """
    fd, name = tempfile.mkstemp(prefix=".oocstore-demo-warm-", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        _write_file(name, nbytes, memoryview(bytes(_RAW_BLOCK)))
    finally:
        os.unlink(name)


def raw_write_seconds(directory: str | os.PathLike[str], nbytes: int) -> float:
    """Seconds to write ``nbytes`` to a new file in ``directory`` and fsync it: the disk's limit.

    Sequential ``f.write`` calls of 4 MiB from memory, then one ``os.fsync``, both timed (the
    raw contender of ``benchmarks/write_throughput.py``); the file is deleted afterwards.
    """
    block = np.random.default_rng(1).integers(0, 256, _RAW_BLOCK, dtype=np.uint8).data
    fd, name = tempfile.mkstemp(prefix=".oocstore-demo-raw-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            t0 = time.perf_counter()
            for start in range(0, nbytes, _RAW_BLOCK):
                f.write(block[: min(_RAW_BLOCK, nbytes - start)])
            f.flush()
            os.fsync(f.fileno())
            return time.perf_counter() - t0
    finally:
        os.unlink(name)


def _gbps(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e9:.2f} GB/s"


def run_demo(
    path: str | Path = "demo.ooc", n: int = 20_000, backend: str | None = None, rounds: int = 3
) -> Store:
    """Write the demo dataset to ``path``; print what was stored, how fast, and the disk's rate.

    The disk's rate is a raw write + fsync of the same number of bytes in the same directory.
    The two alternate for ``rounds`` rounds (the store is rewritten each time) and the medians
    are printed: on a shared or virtual disk one run of either can be off by 2x.
    """
    if rounds < 1:
        msg = f"rounds must be at least 1, not {rounds}"
        raise ValueError(msg)
    where = Path(path).resolve().parent
    warm_page_cache(where, n * (_SIDE * _SIDE * 3 + 8))
    ours: list[float] = []
    raw: list[float] = []
    for i in range(rounds):
        t0 = time.perf_counter()
        store = write(
            demo_batches(n, size=_SIDE),
            path,
            names=("images", "labels"),
            backend=backend,
            overwrite=True,
            progress=False,  # timed beside the raw write: a bar would cost it time
        )
        ours.append(time.perf_counter() - t0)
        raw.append(raw_write_seconds(where, store.nbytes))
        if i < rounds - 1:
            store.close()
    seconds, raw_seconds = statistics.median(ours), statistics.median(raw)
    nbytes = store.nbytes
    print(f"wrote {len(store):,} samples to {str(store.path)!r} ({store.backend} backend)")
    for spec in store.schema.fields:
        arr = store[spec.name]
        print(f"  {spec.name:<8} shape {tuple(arr.shape)!s:<22} dtype {spec.dtype}")
    print(
        f"  oocstore:   {format_bytes(nbytes)} in {seconds:.2f} s = {_gbps(nbytes, seconds)} "
        "(generated, written, committed, fsync'd)"
    )
    print(
        f"  raw write:  {format_bytes(nbytes)} in {raw_seconds:.2f} s = "
        f"{_gbps(nbytes, raw_seconds)} (f.write + fsync, same directory: the disk's limit)"
    )
    ratio = raw_seconds / seconds  # of throughputs: the same bytes each
    print(f"  oocstore / raw write: {ratio:.2f}x (medians of {rounds} alternating runs)")
    images, labels = store["images"], store["labels"]
    print(
        f"  store['images'] is a read-only {type(images).__name__}; "
        f"mean label {float(np.mean(labels)):.2f}, first pixel {images[0, 0, 0].tolist()}"
    )
    return store


# -- an image folder ----------------------------------------------------------------------------


def photos_store_path(path: str | os.PathLike[str]) -> Path:
    """Where the demo ingests its JPEGs: beside ``path`` (``demo.ooc`` -> ``demo-photos.ooc``)."""
    p = Path(path)
    return p.with_name(f"{p.stem}-photos{p.suffix}")


def _canvas(
    rng: np.random.Generator, low: tuple[int, int, int], high: tuple[int, int, int]
) -> np.ndarray:
    """A smooth ``_CANVAS``-pixel RGB picture: a gradient, a soft blob and a little noise."""
    y, x = np.mgrid[0:_CANVAS, 0:_CANVAS].astype(np.float32) / _CANVAS
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * x + np.sin(angle) * y
    t = (t - t.min()) / np.ptp(t)
    lo, hi = np.array(low, np.float32), np.array(high, np.float32)
    img = lo + (hi - lo) * t[..., None]
    cy, cx = rng.uniform(0.2, 0.8, size=2)
    blob = np.exp(-(((y - cy) ** 2 + (x - cx) ** 2) * 40))[..., None]
    img += (rng.uniform(0, 255, 3).astype(np.float32) - img) * 0.6 * blob
    img += rng.normal(0, 8, size=img.shape).astype(np.float32)
    out: np.ndarray = np.clip(img, 0, 255).astype(np.uint8)
    return out


def make_photos(folder: str | os.PathLike[str], count: int, seed: int = 0) -> int:
    """Write ``count`` photo-like JPEGs into class subfolders of ``folder``; their total bytes.

    Each is a crop of ``PHOTO_SIDES`` pixels a side (height and width drawn independently)
    from its class's canvas, flipped or not, saved at quality 85; the classes take turns.
    Pillow releases the GIL while it encodes and files are created in the kernel, so a few
    threads share the work.
    """
    from PIL import Image

    root = Path(folder)
    rng = np.random.default_rng(seed)
    canvases = [(name, _canvas(rng, lo, hi)) for name, (lo, hi) in PHOTO_CLASSES.items()]
    for name, _ in canvases:
        (root / name).mkdir(parents=True, exist_ok=True)
    lo, hi = PHOTO_SIDES
    sides = rng.integers(lo, hi + 1, size=(count, 2))
    corners = rng.integers(0, _CANVAS - hi + 1, size=(count, 2))
    flips = rng.random(count) < 0.5

    def save(i: int) -> int:
        name, canvas = canvases[i % len(canvases)]
        (h, w), (y, x) = sides[i], corners[i]
        crop = canvas[y : y + h, x : x + w]
        dest = root / name / f"{i:05d}.jpg"
        Image.fromarray(np.ascontiguousarray(crop[:, ::-1] if flips[i] else crop)).save(
            dest, quality=_QUALITY
        )
        return dest.stat().st_size

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return sum(pool.map(save, range(count)))


@contextlib.contextmanager
def photo_folder(directory: str | os.PathLike[str], count: int, seed: int = 0) -> Iterator[Path]:
    """A temporary folder of ``count`` generated JPEGs in ``directory``, deleted on exit.

    It is made on the same disk as the store it will be ingested into; prints what it made.
    """
    folder = Path(tempfile.mkdtemp(prefix=".oocstore-demo-photos-", dir=directory))
    try:
        t0 = time.perf_counter()
        nbytes = make_photos(folder, count, seed)
        lo, hi = PHOTO_SIDES
        print(
            f"generated {count:,} photo-like JPEGs ({lo}-{hi} px a side, "
            f"{format_bytes(nbytes / max(count, 1))} on average, {len(PHOTO_CLASSES)} class "
            f"folders) in {time.perf_counter() - t0:.1f} s, in a temporary folder"
        )
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- reading from a second process --------------------------------------------------------------


def _read_all(store: Store, batch_size: int = 1024) -> int:
    """Read every byte of every field (summed, so none is skipped); the bytes read."""
    total = 0
    for batch in store.iter_batches(batch_size):
        for part in batch:
            for a in part if isinstance(part, list) else [part]:
                flat = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
                flat.sum(dtype=np.uint64)
                total += flat.nbytes
    return total


def _store_mappings(store_dir: Path) -> dict[str, int] | None:
    """Resident, shared and private bytes of this process's mappings of files in ``store_dir``.

    From ``/proc/self/smaps`` (Linux; None elsewhere). A file page counts as shared when
    another process maps it too, as private when only this one does.
    """
    try:
        text = Path("/proc/self/smaps").read_text()
    except OSError:
        return None
    prefix = str(store_dir.resolve()) + os.sep
    sums = {"rss": 0, "shared": 0, "private": 0}
    keys = {
        "Rss:": "rss",
        "Shared_Clean:": "shared",
        "Shared_Dirty:": "shared",
        "Private_Clean:": "private",
        "Private_Dirty:": "private",
    }
    inside = False
    for line in text.splitlines():
        head, _, rest = line.partition(" ")
        if not head.endswith(":"):  # a mapping: "start-end perms offset dev inode [path]"
            fields = line.split(None, 5)
            inside = len(fields) == 6 and fields[5].startswith(prefix)
        elif inside and head in keys:
            sums[keys[head]] += int(rest.split()[0]) * 1024  # "<n> kB"
    return sums


def read_everything(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Open the store at ``path`` read-only, read all of it, and report this process's memory.

    The second process of the demo runs this. Returns the bytes read, the store's mapped
    pages (``None`` where ``/proc/self/smaps`` is missing), and this process's private memory
    in all (USS: what it alone holds, from psutil) before opening the store and after reading
    it.
    """
    import psutil

    me = psutil.Process()
    before = int(me.memory_full_info().uss)
    with open_store(path) as store:
        nbytes = _read_all(store)
        mapped = _store_mappings(Path(store.path))
        after = int(me.memory_full_info().uss)
    return {"pid": os.getpid(), "read": nbytes, "mapped": mapped, "uss": [before, after]}


_CHILD = (
    "import json, sys; from oocstore.demo import read_everything; "
    "print(json.dumps(read_everything(sys.argv[1])))"
)


def report_shared_read(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the store at ``path`` here and in a second Python process; print its memory.

    This process reads every page first and keeps them mapped, as a training script's main
    process would beside its data-loading workers; then a fresh ``python`` (the same
    interpreter and oocstore) opens the store read-only, reads all of it and reports. Returns
    that report (see :func:`read_everything`).
    """
    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with open_store(path) as store:
        _read_all(store)
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, os.fspath(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            msg = f"the second process reading {str(path)!r} failed:\n{done.stderr.strip()}"
            raise RuntimeError(msg)
        got: dict[str, Any] = json.loads(done.stdout)
        print(
            f"a second process (python, pid {got['pid']}) opened {str(store.path)!r} read-only "
            f"and read all {format_bytes(got['read'])}:"
        )
        mapped = got["mapped"]
        if mapped is None:
            print("  (its per-file page counts need Linux's /proc/self/smaps)")
        elif mapped["rss"] == 0:
            print(f"  the {store.backend} backend reads copies, not memory-mapped pages")
        else:
            print(
                f"  its pages of the store: {format_bytes(mapped['rss'])} resident, "
                f"{format_bytes(mapped['shared'])} shared with this process, "
                f"{format_bytes(mapped['private'])} private"
            )
        before, after = got["uss"]
        print(
            f"  its private memory: {format_bytes(before)} before opening the store, "
            f"{format_bytes(after)} after reading it all"
        )
    return got
