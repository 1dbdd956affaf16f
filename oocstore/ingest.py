"""Image folders in, one store out: decode in parallel, keep the order, skip or stop on bad files.

``ingest_images`` lists the images under a folder (sorted, so every run sees the same order),
decodes them with Pillow in worker processes, and streams them into a :class:`Writer` as fields
``images`` (uint8, ``(H, W, C)``), ``labels`` (int64, when labelled) and ``paths`` (the files'
relative paths). At most a few chunks of decoded images are in flight at any time, so memory
stays bounded however many images there are; the writer's commits make the run resumable.

Pillow is imported only here and only when images are decoded (the ``images`` extra).
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import logging
import math
import os
import re
import signal
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from . import sizing
from .errors import (
    BackendUnavailableError,
    EmptySourceError,
    ImageDecodeError,
    ImageFolderNotFoundError,
    ImageModeError,
    IngestError,
    OocstoreError,
)
from .progress import format_bytes
from .reader import Store
from .reader import open as open_store
from .writer import Writer

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = [
    "IMAGE_EXTENSIONS",
    "decode_image",
    "find_images",
    "ingest_images",
    "skipped_list_path",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
"""File name endings (compared case-insensitively) that ``find_images`` treats as images."""

OnError = Literal["skip", "fail"]
LabelsLike = str | os.PathLike[str] | None
SizeLike = int | tuple[int, int] | Sequence[int] | None

_FIELDS_LABELLED = ("images", "labels", "paths")
_FIELDS_UNLABELLED = ("images", "paths")
# Writer options that ingest_images sets itself; passing them in **writer_options is a mistake.
_OWN_OPTIONS = frozenset({"names", "length", "ragged", "resume", "progress", "attrs", "backend"})
_MAX_CHUNK = 64  # images per task: negligible per-task overhead, and batches big enough
# (for ~256 px images) that the writer sends them straight to the file, without staging
_FIRST_GUESS = 2**20  # decoded bytes per image assumed before the first result arrives
_SHARED_MEMORY = True  # decode into shared memory (False: pixels go back by pipe, pickled)

R = TypeVar("R")


# -- listing ------------------------------------------------------------------------------------


def find_images(src: str | os.PathLike[str]) -> list[str]:
    """Relative POSIX paths of every image under ``src``, sorted (the order ingest uses).

    Recursive; an image is a file whose name ends in one of :data:`IMAGE_EXTENSIONS` (any
    case). Hidden files and folders (names starting with ``.``, such as ``.ipynb_checkpoints``
    or macOS ``._x.jpg`` resource forks) are left out, and symbolic links to folders are not
    followed (no cycles). Sorting by path makes every run, and every resumed run, see the same
    order.
    """
    root = Path(src)
    found: list[str] = []

    def unreadable(err: OSError) -> None:
        log.warning("cannot list %s (its images are left out): %s", err.filename, err.strerror)

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            found.append((rel_dir / name).as_posix())
    found.sort()
    return found


def skipped_list_path(dst: str | os.PathLike[str]) -> Path:
    """Where the skipped images of the store at ``dst`` are listed: ``<dst>.skipped.txt``."""
    p = Path(dst)
    return p.with_name(p.name + ".skipped.txt")


@dataclass(frozen=True)
class _Plan:
    """What to ingest, in order: relative paths, their labels, and the class names."""

    paths: list[str]
    labels: np.ndarray | None
    classes: list[str] | None
    kind: Literal["folders", "csv", "none"]


def _plan_folders(root: Path) -> _Plan:
    paths = find_images(root)
    loose = [p for p in paths if "/" not in p]
    if loose:
        msg = (
            f"{len(loose)} image(s) lie directly in {str(root)!r} (first: {loose[0]!r}), not in a "
            "class folder; with labels='folders' every image must be in a subfolder named after "
            "its class (the ImageFolder layout). Move them, or pass labels=None (CLI: "
            "--labels none) or a CSV of path,label"
        )
        raise IngestError(msg)
    top = [p.split("/", 1)[0] for p in paths]
    classes = sorted(set(top))
    index = {c: i for i, c in enumerate(classes)}
    labels = np.fromiter((index[c] for c in top), dtype=np.int64, count=len(top))
    return _Plan(paths, labels, classes, "folders")


_INT = re.compile(r"[+-]?[0-9]+")


def _clean_relpath(raw: str, csv_path: Path, line: int) -> str:
    text = raw.strip().replace("\\", "/")
    p = PurePosixPath(text)
    if not text or p.is_absolute() or ".." in p.parts:
        msg = (
            f"{str(csv_path)!r} line {line}: {raw!r} is not a path relative to the image folder "
            "(absolute paths and '..' are not allowed)"
        )
        raise IngestError(msg)
    return p.as_posix()


def _plan_csv(csv_path: Path) -> _Plan:
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            rows = [(i, row) for i, row in enumerate(csv.reader(f), start=1)]
    except FileNotFoundError:
        msg = f"no labels CSV at {str(csv_path)!r} (labels= is 'folders', None, or a CSV path)"
        raise IngestError(msg) from None
    except UnicodeDecodeError as err:
        msg = f"{str(csv_path)!r} is not a UTF-8 CSV of path,label: {err}"
        raise IngestError(msg) from None
    rows = [(i, r) for i, r in rows if any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][1]] == ["path", "label"]:
        rows = rows[1:]  # the header
    by_path: dict[str, str] = {}
    for line, row in rows:
        if len(row) != 2:
            msg = f"{str(csv_path)!r} line {line}: expected 2 columns (path,label), got {len(row)}"
            raise IngestError(msg)
        rel = _clean_relpath(row[0], csv_path, line)
        if rel in by_path:
            msg = f"{str(csv_path)!r} line {line}: {rel!r} is listed twice"
            raise IngestError(msg)
        by_path[rel] = row[1].strip()
    paths = sorted(by_path)
    raw = [by_path[p] for p in paths]
    if all(_INT.fullmatch(v) for v in raw):
        return _Plan(paths, np.array([int(v) for v in raw], dtype=np.int64), None, "csv")
    classes = sorted(set(raw))
    index = {c: i for i, c in enumerate(classes)}
    labels = np.fromiter((index[v] for v in raw), dtype=np.int64, count=len(raw))
    return _Plan(paths, labels, classes, "csv")


def _plan(root: Path, labels: LabelsLike) -> _Plan:
    if labels is None or (isinstance(labels, str) and labels.lower() == "none"):
        return _Plan(find_images(root), None, None, "none")
    if isinstance(labels, str) and labels == "folders":
        return _plan_folders(root)
    return _plan_csv(Path(labels))


# -- decoding (runs in worker processes) -------------------------------------------------------


@dataclass(frozen=True)
class _Decode:
    """How to decode: sent with every task, so it is small and picklable."""

    root: str
    size: tuple[int, int] | None
    """Target ``(H, W)``, or None to keep each image's size."""
    mode: str
    """Pillow mode every image is converted to: ``RGB``, ``L``, ``LA`` or ``RGBA``."""


Pixels = int | bytes | np.ndarray
"""Where a decoded image's pixels are: an offset into the task's shared-memory slot (from a
worker), the bytes themselves (from a worker, when they did not fit the slot), or the array
(decoded in this process)."""
Decoded = tuple[Pixels, tuple[int, int, int], int] | str
"""A decoded image as ``(pixels, (H, W, C), file bytes)``, or the reason it could not be read."""
SlotRef = tuple[str, int] | None
"""A task's shared-memory slot: ``(name, size in bytes)``, or None to send pixels by pipe."""

_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = frozenset({5, 6, 7, 8})  # orientations that rotate by 90 degrees


def _draft(img: PILImage.Image, size: tuple[int, int]) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the result stays >= 2x the target.

    Decoding a 4000 px JPEG whole to make a 224 px sample wastes most of the time. Keeping at
    least twice the target size before the (antialiased) resize keeps the result within a
    level or two of a full decode; images less than 4x the target are decoded whole.
    """
    h, w = size
    if img.getexif().get(_EXIF_ORIENTATION, 1) in _SWAPS_AXES:
        h, w = w, h  # the file is stored rotated: the target's axes are swapped in it
    img.draft(img.mode, (2 * w, 2 * h))


def decode_image(
    path: str | os.PathLike[str], size: tuple[int, int] | None, mode: str
) -> np.ndarray:
    """Decode one image the way ``ingest_images`` does: an ``(H, W, C)`` uint8 array.

    Steps: open; for JPEGs with a target ``size``, draft mode (see ``_draft``); ``load()`` the
    whole image (so a truncated file raises); ``ImageOps.exif_transpose``; ``convert(mode)``;
    ``resize((W, H))`` with Pillow's bicubic filter when ``size`` is given. Pillow's warnings
    are silenced: every problem that matters raises.

    Raises
    ------
    Exception
        Whatever Pillow raises for a file it cannot read (``OSError``, ``SyntaxError``,
        ``ValueError``, ``DecompressionBombError``...).
    """
    from PIL import Image, ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as img:
            if size is not None and img.format == "JPEG":
                _draft(img, size)
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            out = img if img.mode == mode else img.convert(mode)
            if size is not None and out.size != (size[1], size[0]):
                out = out.resize((size[1], size[0]), Image.Resampling.BICUBIC)
            arr = np.asarray(out)
    return arr.reshape(arr.shape[0], arr.shape[1], -1)


_ATTACHED: dict[str, Any] = {}  # in a worker: slot name -> SharedMemory, attached once


def _slot_array(slot: tuple[str, int]) -> np.ndarray:
    """The worker's view of a shared-memory slot (attached on first use, kept until exit)."""
    shm = _ATTACHED.get(slot[0])
    if shm is None:
        from multiprocessing import shared_memory

        shm = _ATTACHED[slot[0]] = shared_memory.SharedMemory(name=slot[0])
    return np.ndarray((slot[1],), dtype=np.uint8, buffer=shm.buf)


def _decode_chunk(job: _Decode, paths: list[str], slot: SlotRef = None) -> list[Decoded]:
    """Decode ``paths`` (relative to ``job.root``) in order; a failure becomes its reason.

    With a ``slot``, pixels are laid end to end into that shared memory and only their
    offsets go back through the pipe: pickling megabytes of pixels through the pool's pipe
    costs a third of what decoding them does (docs/benchmarks.md, image ingestion).
    """
    buf = _slot_array(slot) if slot is not None else None
    used = 0
    out: list[Decoded] = []
    for rel in paths:
        full = os.path.join(job.root, rel)
        try:
            arr = decode_image(full, job.size, job.mode)
            nbytes = os.path.getsize(full)
        except Exception as err:  # any failure of one file is that file's problem
            out.append(f"{type(err).__name__}: {err}")
            continue
        h, w, c = arr.shape
        if buf is None:
            out.append((arr, (h, w, c), nbytes))
        elif used + arr.nbytes <= len(buf):
            buf[used : used + arr.nbytes] = arr.reshape(-1)
            out.append((used, (h, w, c), nbytes))
            used += arr.nbytes
        else:  # bigger than the estimate the slot was sized for: send it by pipe
            out.append((arr.tobytes(), (h, w, c), nbytes))
    return out


def _natural_mode(img: PILImage.Image) -> str:
    """The uint8 mode an image decodes to without losing channels (``P`` decides later)."""
    m = img.mode
    if m in ("1", "L", "I", "F") or m.startswith("I;"):
        return "L"
    if m in ("LA", "La"):
        return "LA"
    if m == "P":
        return "P+" if "transparency" in img.info else "P"
    if m in ("PA", "RGBA", "RGBa"):
        return "RGBA"
    return "RGB"


def _probe_chunk(job: _Decode, paths: list[str], slot: SlotRef = None) -> list[str | None]:
    """Each file's natural mode from its header only (None when the header is unreadable)."""
    from PIL import Image

    out: list[str | None] = []
    for rel in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(os.path.join(job.root, rel)) as img:
                    out.append(_natural_mode(img))
        except Exception:  # the decode pass reports it
            out.append(None)
    return out


def _init_worker() -> None:
    """Set a worker up: ignore Ctrl-C, and exit as soon as the ingesting process is gone."""
    import multiprocessing
    import threading
    from multiprocessing.connection import wait

    # Ctrl-C reaches the whole process group: let the parent alone handle it (it commits).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return

    def watch(sentinel: int) -> None:
        # ProcessPoolExecutor's workers wait forever for work when their parent is killed
        # (SIGKILL, OOM): they hold their own queue's write end. Go with the parent.
        wait([sentinel])
        os._exit(1)

    threading.Thread(target=watch, args=(parent.sentinel,), daemon=True).start()


def _mp_context() -> Any:
    """forkserver where it exists: never fork a parent that may be running threads."""
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


class _Chunker:
    """Images per task, from a running estimate of decoded bytes per image and a byte budget."""

    def __init__(self, budget: int, in_flight: int, per_image: int | None) -> None:
        self.per_task = max(budget // max(in_flight, 1), 1)
        self.per_image = per_image
        self._seen = 0
        self._bytes = 0

    def next_len(self) -> int:
        """How many images the next task gets."""
        guess = self.per_image or _FIRST_GUESS
        return int(min(max(self.per_task // max(guess, 1), 1), _MAX_CHUNK))

    def observe(self, nbytes: int) -> None:
        """Count one decoded image of ``nbytes`` bytes."""
        self._seen += 1
        self._bytes += nbytes
        self.per_image = max(self._bytes // self._seen, 1)


class _Slots:
    """Shared-memory buffers that workers decode into, one per task in flight.

    Each is reserved up front (``posix_fallocate``), so a full ``/dev/shm`` is an ``OSError``
    here rather than a ``SIGBUS`` in a worker later.
    """

    def __init__(self, count: int, nbytes: int) -> None:
        from multiprocessing import shared_memory

        self.nbytes = nbytes
        self._shm: list[Any] = []
        try:
            for _ in range(count):
                shm = shared_memory.SharedMemory(create=True, size=nbytes)
                self._shm.append(shm)
                fd = getattr(shm, "_fd", -1)
                if fd >= 0 and hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, nbytes)
        except BaseException:
            self.close()
            raise
        self.free: deque[int] = deque(range(count))

    def ref(self, i: int) -> tuple[str, int]:
        """What a worker needs to find slot ``i``."""
        return self._shm[i].name, self.nbytes

    def buffer(self, i: int) -> Any:
        """Slot ``i``'s memory in this process."""
        return self._shm[i].buf

    def close(self) -> None:
        """Unmap and remove every slot (views still held keep their mapping until dropped)."""
        for shm in self._shm:
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()
            with contextlib.suppress(BufferError):
                shm.close()
        self._shm = []


def _ordered_map(
    fn: Callable[[_Decode, list[str], SlotRef], list[R]],
    job: _Decode,
    items: Sequence[str],
    workers: int,
    chunker: _Chunker,
    slot_bytes: int | None = None,
) -> Generator[tuple[list[str], list[R], Any], None, None]:
    """Yield ``(chunk, fn(job, chunk, slot), slot buffer)`` for consecutive chunks, in order.

    At most ``2 * workers`` chunks are queued or decoded at once, so results never pile up
    when the consumer (the writer) is slower than the decoders. With ``slot_bytes``, each
    task gets a shared-memory slot of that size to decode into (the third item, or None); the
    consumer must be done with it when it asks for the next chunk. ``workers=0`` decodes here.
    """
    n = len(items)
    if workers == 0:
        pos = 0
        while pos < n:
            chunk = list(items[pos : pos + chunker.next_len()])
            pos += len(chunk)
            yield chunk, fn(job, chunk, None), None
        return
    slots: _Slots | None = None
    if slot_bytes and _SHARED_MEMORY:
        try:
            slots = _Slots(2 * workers + 1, slot_bytes)
        except OSError as err:
            log.warning("no shared memory for decoding (%s): sending pixels by pipe", err)
    executor = ProcessPoolExecutor(
        max_workers=workers, mp_context=_mp_context(), initializer=_init_worker
    )
    pending: deque[tuple[list[str], Future[list[R]], int | None]] = deque()
    held: int | None = None  # the slot of the chunk the consumer has
    try:
        pos = 0
        while pos < n or pending:
            if held is not None and slots is not None:
                slots.free.append(held)
                held = None
            while pos < n and len(pending) < 2 * workers:
                # Smaller tasks near the end keep every worker busy to the last image.
                k = min(chunker.next_len(), -(-(n - pos) // (4 * workers)))
                chunk = list(items[pos : pos + k])
                pos += len(chunk)
                slot = slots.free.popleft() if slots is not None else None
                ref = slots.ref(slot) if slots is not None and slot is not None else None
                pending.append((chunk, executor.submit(fn, job, chunk, ref), slot))
            chunk, future, held = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool as err:
                msg = (
                    f"a worker process died while decoding images from {chunk[0]!r} on "
                    "(out of memory? try fewer workers); the store keeps its last commit: "
                    "run again with resume=True to continue"
                )
                raise IngestError(msg) from err
            buffer = slots.buffer(held) if slots is not None and held is not None else None
            yield chunk, result, buffer
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        if slots is not None:
            slots.close()


def _images_of(
    results: list[tuple[Pixels, tuple[int, int, int], int]], buffer: Any
) -> np.ndarray | list[np.ndarray]:
    """The decoded images of one chunk as arrays (views of the slot where they are in one).

    Images of one shape laid end to end in the slot are returned as one ``(n, H, W, C)``
    view, which the writer copies straight to the store.
    """
    if not results:
        return []
    shape = results[0][1]
    size = math.prod(shape)
    first = results[0][0]
    if (
        buffer is not None
        and isinstance(first, int)
        and all(
            isinstance(px, int) and px == first + i * size and shp == shape
            for i, (px, shp, _) in enumerate(results)
        )
    ):
        return np.ndarray((len(results), *shape), dtype=np.uint8, buffer=buffer, offset=first)
    out = []
    for px, shp, _ in results:
        if isinstance(px, int):
            out.append(np.ndarray(shp, dtype=np.uint8, buffer=buffer, offset=px))
        elif isinstance(px, bytes):
            out.append(np.frombuffer(px, dtype=np.uint8).reshape(shp))
        else:
            out.append(px)
    return out


# -- the run --------------------------------------------------------------------------------------


def _as_size(size: SizeLike) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int | np.integer) and not isinstance(size, bool):
        dims: tuple[int, ...] = (int(size), int(size))
    else:
        try:
            dims = tuple(int(d) for d in size)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            dims = ()
    if len(dims) != 2 or min(dims) <= 0:
        msg = f"size must be (height, width) in pixels, both positive, not {size!r}"
        raise ValueError(msg)
    return dims[0], dims[1]


def _as_mode(mode: str) -> str:
    table = {"rgb": "RGB", "l": "L", "keep": "keep"}
    key = mode.lower() if isinstance(mode, str) else ""
    if key not in table:
        msg = f"mode must be 'RGB', 'L' or 'keep', not {mode!r}"
        raise ValueError(msg)
    return table[key]


def _as_workers(workers: int | None) -> int:
    if workers is None:
        try:
            return max(len(os.sched_getaffinity(0)), 1)
        except AttributeError:  # macOS, Windows
            return max(os.cpu_count() or 1, 1)
    if not isinstance(workers, int | np.integer) or isinstance(workers, bool) or workers < 0:
        msg = f"workers must be a non-negative integer (0: decode in this process), not {workers!r}"
        raise ValueError(msg)
    return int(workers)


def _resolve_keep(job: _Decode, paths: list[str], workers: int, budget: int) -> str:
    """The one mode every image can decode to with mode='keep'; ImageModeError if none."""
    first: dict[str, str] = {}  # natural mode -> first file with it
    chunker = _Chunker(budget, 2 * max(workers, 1), per_image=1)
    for chunk, modes, _ in _ordered_map(_probe_chunk, job, paths, workers, chunker):
        for rel, m in zip(chunk, modes, strict=True):
            if m is not None and m not in first:
                first[m] = rel
    palette = {m: first.pop(m) for m in ("P", "P+") if m in first}
    if len(first) > 1:
        (m1, f1), (m2, f2) = sorted(first.items(), key=lambda kv: paths.index(kv[1]))[:2]
        raise ImageModeError(f1, m1, f2, m2)
    if first:
        mode, example = next(iter(first.items()))
        if palette and mode in ("L", "LA"):
            p_file = next(iter(palette.values()))
            raise ImageModeError(example, mode, p_file, "P (a colour palette)")
        return mode
    return "RGBA" if "P+" in palette else "RGB"


def _resume_point(store: Store, plan: _Plan, committed: int) -> tuple[int, list[int]]:
    """Where the interrupted run stopped: the next file's index, and the files it skipped.

    The stored ``paths`` say exactly which files are in the store; every listed file before
    the last stored one that is not stored was skipped by the earlier run.
    """
    if committed == 0:
        return 0, []
    stored = [str(p) for p in np.asarray(store["paths"][:committed])]
    index = {rel: i for i, rel in enumerate(plan.paths)}
    positions = []
    for rel in stored:
        i = index.get(rel)
        if i is None:
            msg = (
                f"cannot resume {str(store.path)!r}: it holds {rel!r}, which is no longer among "
                "the images to ingest (the folder or CSV changed since the interrupted run); "
                "ingest again with overwrite=True"
            )
            raise IngestError(msg)
        positions.append(i)
    if any(b <= a for a, b in itertools.pairwise(positions)):
        msg = (
            f"cannot resume {str(store.path)!r}: its images are not in the sorted order of the "
            "files now listed; ingest again with overwrite=True"
        )
        raise IngestError(msg)
    pos = positions[-1] + 1
    kept = set(positions)
    return pos, [i for i in range(pos) if i not in kept]


def _check_resumable(dst: Path, settings: dict[str, Any], classes: list[str] | None) -> None:
    """Refuse to resume a store written with other settings (its samples would not match)."""
    try:
        store = open_store(dst)
    except OocstoreError:
        return  # nothing committed yet (or no store): the writer starts afresh
    with store:
        old = store.attrs.get("ingest")
        if not isinstance(old, dict) or set(store.fields) - {"images", "labels", "paths"}:
            msg = (
                f"cannot resume {str(dst)!r}: it was not written by ingest_images; "
                "choose another path or pass overwrite=True"
            )
            raise IngestError(msg)
        for key in ("size", "mode", "image_mode", "pad", "labels"):
            if old.get(key) != settings[key]:
                msg = (
                    f"cannot resume {str(dst)!r} with {key}={settings[key]!r}: it was written "
                    f"with {key}={old.get(key)!r}; resume with the same options, or pass "
                    "overwrite=True to start again"
                )
                raise IngestError(msg)
        if store.attrs.get("classes") != classes:
            msg = (
                f"cannot resume {str(dst)!r}: the classes changed since the interrupted run "
                f"({store.attrs.get('classes')!r:.80} then, {classes!r:.80} now), so label "
                "numbers would not match; pass overwrite=True to start again"
            )
            raise IngestError(msg)


class _Bar:
    """A tqdm bar over images: images/s, input MB/s, ETA, and how many were skipped."""

    def __init__(self, enabled: bool | None, total: int, initial: int, desc: str) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._bar: Any = None
        self._bytes = 0
        self._skipped = 0
        self._t0 = time.monotonic()
        self._last = 0.0
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                unit=" img",
                desc=desc,
                dynamic_ncols=True,
                file=sys.stderr,
                smoothing=0.1,
            )

    def update(self, images: int, nbytes: int, skipped: int) -> None:
        if self._bar is None:
            return
        self._bytes += nbytes
        self._skipped += skipped
        self._bar.update(images)
        now = time.monotonic()
        if now - self._last > 0.5:
            self._last = now
            rate = self._bytes / max(now - self._t0, 1e-9)
            extra = f", {self._skipped} skipped" if self._skipped else ""
            self._bar.set_postfix_str(f"{format_bytes(rate)}/s read{extra}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _write_skip_list(path: Path, entries: list[tuple[str, str]]) -> None:
    """Write ``path<TAB>reason`` lines atomically (temp file, then rename)."""
    tmp = path.with_name(path.name + ".partial")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.writelines(f"{rel}\t{reason}\n" for rel, reason in entries)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def ingest_images(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    backend: str | None = None,
    size: SizeLike = None,
    pad: bool = True,
    mode: str = "RGB",
    workers: int | None = None,
    labels: LabelsLike = "folders",
    on_error: OnError = "skip",
    resume: bool = False,
    progress: bool | None = None,
    **writer_options: Any,
) -> Store:
    """Decode every image under ``src`` into one store at ``dst``: images, labels and paths.

    A folder of images bigger than RAM once decoded becomes one store that analysis code opens
    at once. Files are listed recursively and sorted by relative path (see
    ``oocstore.ingest.find_images``), decoded with Pillow in ``workers`` processes while the
    order is kept, and streamed to the store with bounded memory.

    Fields:

    * ``images`` -- uint8, ``(H, W, C)`` per sample: C is 3 for ``RGB``, 1 for ``L`` (always
      three axes, so grayscale is ``(H, W, 1)``; ``images[..., 0]`` drops the axis). Without
      ``size``, images of different sizes are padded to the largest (``pad=True``; fill 0) or
      packed end to end (``pad=False``), and each image's true shape is kept:
      ``store.sample("images", i)`` is image ``i`` unpadded, ``store.shapes("images")`` all
      true shapes.
    * ``labels`` -- int64 class index per image (not present with ``labels=None``).
    * ``paths`` -- each image's path relative to ``src`` (fixed-width unicode).

    Parameters
    ----------
    src
        The image folder.
    dst
        The store to write (the backend follows the suffix, or ``backend=``).
    backend
        ``"npy"``, ``"zarr"`` or ``"hdf5"``; default: from ``dst``'s suffix.
    size
        ``(H, W)`` (or one int for a square): resize every image to exactly that size,
        bicubic and antialiased. Big JPEGs are decoded at 1/2, 1/4 or 1/8 scale first when
        that still leaves at least twice the target size (JPEG draft mode), which is much
        faster and within a level or two of a full decode.
    pad
        Without ``size``: pad images to the largest shape (True) or pack them (False).
    mode
        ``"RGB"`` (default; alpha is dropped, palettes expanded), ``"L"`` (grayscale), or
        ``"keep"``: every image keeps its channels (``L``, ``LA``, ``RGB`` or ``RGBA``), which
        must then be the same for all images (palette images follow the others).
    workers
        Decoding processes (default: the CPUs this process may use; 0 decodes in this
        process). Workers start with ``forkserver`` (``spawn`` where that is missing), so a
        script that calls this needs the usual ``if __name__ == "__main__":`` guard.
    labels
        ``"folders"`` (default): the first folder level under ``src`` is the class, as in
        torchvision's ImageFolder; class names are sorted and kept in
        ``store.attrs["classes"]``, ``labels`` holds their indices. A path to a CSV of
        ``path,label`` rows (paths relative to ``src``; an optional ``path,label`` header):
        exactly the listed files are ingested; integer labels are kept, other labels become
        indices into the sorted ``store.attrs["classes"]``. ``None`` (or ``"none"``): no
        ``labels`` field.
    on_error
        ``"skip"`` (default): an unreadable or truncated image is left out and listed in
        ``<dst>.skipped.txt`` (``path<TAB>reason`` per line); ``store.attrs["skipped"]``
        counts them. ``"fail"``: stop at the first one with
        [`ImageDecodeError`][oocstore.errors.ImageDecodeError] (the store keeps what was
        committed before it).
    resume
        Continue an interrupted run: the files are listed again, the store's ``paths`` say
        which are already in it, and decoding starts after the last one (the earlier run's
        skipped files are listed again). The options must be those of the first run.
    progress
        Show a bar with images/s, MB/s read and ETA (default: when stderr is a terminal).
    **writer_options
        Passed to [`Writer`][oocstore.Writer]: ``overwrite``, ``memory``, ``commit_bytes``,
        ``commit_seconds``, ``chunks``, ``compressors``, ``fill``.

    Returns
    -------
    Store
        The finished store, opened read-only. ``store.attrs`` holds ``classes`` (when labels
        are class names), ``skipped`` (count), ``skipped_list`` (the list's file name, next to
        the store, or None) and ``ingest`` (the options used).

    Raises
    ------
    ImageFolderNotFoundError
        If ``src`` is not a folder.
    BackendUnavailableError
        If Pillow is not installed (``pip install 'oocstore[images]'``).
    EmptySourceError
        If no image is found, or none could be decoded.
    ImageDecodeError
        With ``on_error="fail"``, for the first image that cannot be decoded.
    ImageModeError
        With ``mode="keep"``, if images differ in channels.
    IngestError
        If labels cannot be assigned (an image outside any class folder, a bad CSV), or a
        resumed store was written with other options or from other files.
    StoreExistsError
        If ``dst`` exists and neither ``overwrite=True`` nor ``resume=True`` is given.
    """
    root = Path(src)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        msg = f"image folder {str(root)!r} {what}"
        raise ImageFolderNotFoundError(msg)
    bad = sorted(_OWN_OPTIONS & set(writer_options))
    if bad:
        msg = f"ingest_images sets {', '.join(bad)} itself; use its own parameters instead"
        raise TypeError(msg)
    try:
        import PIL.Image  # noqa: F401 - only to fail here, not in every worker
    except ImportError:
        msg = "ingest_images decodes images with Pillow: pip install 'oocstore[images]'"
        raise BackendUnavailableError(msg) from None
    target = _as_size(size)
    mode_name = _as_mode(mode)
    n_workers = _as_workers(workers)
    if on_error not in ("skip", "fail"):
        msg = f"on_error must be 'skip' or 'fail', not {on_error!r}"
        raise ValueError(msg)
    dst_path = Path(dst)
    budget = sizing.memory_budget(writer_options.get("memory"))
    in_flight_bytes = max(budget // 4, 8 * 2**20)

    plan = _plan(root, labels)
    if not plan.paths:
        msg = (
            f"no images found under {str(root)!r} (looked for "
            f"{', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))}, any case)"
        )
        if plan.kind == "csv":
            msg = f"the labels CSV {str(labels)!r} lists no images"
        raise EmptySourceError(msg)

    image_mode = mode_name
    if mode_name == "keep":
        probe = _Decode(str(root), target, "RGB")
        image_mode = _resolve_keep(probe, plan.paths, n_workers, in_flight_bytes)
    job = _Decode(str(root), target, image_mode)
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[image_mode]

    settings: dict[str, Any] = {
        "size": list(target) if target is not None else None,
        "mode": mode_name,
        "image_mode": image_mode,
        "pad": bool(pad) if target is None else None,
        "labels": plan.kind,
    }
    if resume:
        _check_resumable(dst_path, settings, plan.classes)
    attrs: dict[str, Any] = {
        "ingest": {**settings, "source": os.path.abspath(root)},
        "skipped": 0,
        "skipped_list": None,
    }
    if plan.classes is not None:
        attrs["classes"] = plan.classes
    names = _FIELDS_LABELLED if plan.labels is not None else _FIELDS_UNLABELLED
    writer = Writer(
        dst_path,
        names=names,
        # With a fixed size the store's final size is known: preallocate it (skipped images
        # are trimmed at close). Ragged images grow the files as they come.
        length=len(plan.paths) if target is not None else None,
        backend=backend,
        resume=resume,
        progress=False,
        ragged="pad" if pad else "pack",
        attrs=attrs,
        **writer_options,
    )
    t0 = time.monotonic()
    with writer:
        start, skipped = _resume(writer, plan, job, dst_path, on_error)
        per_image = target[0] * target[1] * channels if target is not None else None
        chunker = _Chunker(in_flight_bytes, 2 * max(n_workers, 1), per_image)
        bar = _Bar(progress, len(plan.paths), start, dst_path.name)
        try:
            skipped += _decode_into(writer, plan, job, start, n_workers, chunker, on_error, bar)
        finally:
            bar.close()
        if writer.length == 0:
            writer.abort()
            msg = (
                f"none of the {len(plan.paths)} images under {str(root)!r} could be decoded "
                f"(first: {skipped[0][0]!r}: {skipped[0][1]})"
            )
            raise EmptySourceError(msg)
        skip_path = skipped_list_path(dst_path)
        if skipped:
            _write_skip_list(skip_path, skipped)
        writer.attrs["skipped"] = len(skipped)
        writer.attrs["skipped_list"] = skip_path.name if skipped else None
    log.info(
        "ingested %d images into %s in %.1f s; %d skipped%s",
        writer.length,
        dst_path,
        time.monotonic() - t0,
        len(skipped),
        f" (listed in {skip_path})" if skipped else "",
    )
    return open_store(dst_path)


def _resume(
    writer: Writer, plan: _Plan, job: _Decode, dst: Path, on_error: OnError
) -> tuple[int, list[tuple[str, str]]]:
    """Where to start in ``plan.paths``, and the files skipped before it (by an earlier run).

    A fresh run starts at 0 and removes a skip list left by an earlier store at ``dst``.
    """
    if not writer.skip:
        skipped_list_path(dst).unlink(missing_ok=True)
        return 0, []
    with open_store(dst) as old:
        start, skipped_idx = _resume_point(old, plan, writer.skip)
    writer.skip = 0  # the source we append starts after the stored files
    skipped = [(plan.paths[i], _reason_again(plan.paths[i], job)) for i in skipped_idx]
    if on_error == "fail" and skipped:
        hint = "The interrupted run skipped it: fix it and ingest again with overwrite=True"
        raise ImageDecodeError(*skipped[0], hint=hint)
    return start, skipped


def _decode_into(
    writer: Writer,
    plan: _Plan,
    job: _Decode,
    start: int,
    workers: int,
    chunker: _Chunker,
    on_error: OnError,
    bar: _Bar,
) -> list[tuple[str, str]]:
    """Decode ``plan.paths[start:]`` and append them to ``writer``; return the files skipped."""
    dtype = writer.schema["paths"].dtype if writer.schema is not None else None
    longest = max(len(p) for p in plan.paths)
    if dtype is None:
        dtype = np.dtype(f"<U{max(longest, 1)}")  # one width for every batch: computed up front
    elif dtype.itemsize // 4 < longest:
        msg = (
            f"cannot resume {str(writer.path)!r}: new files have longer paths than its 'paths' "
            f"field holds ({dtype}); ingest again with overwrite=True"
        )
        raise IngestError(msg)
    # A slot holds one task's pixels: a full chunk when the size is known.
    per_image = chunker.per_image
    slot_bytes = min(chunker.per_task, _MAX_CHUNK * (per_image or chunker.per_task))
    skipped: list[tuple[str, str]] = []
    offset = start
    decoded = _ordered_map(_decode_chunk, job, plan.paths[start:], workers, chunker, slot_bytes)
    # closing(): on any error, stop the workers and free the shared memory right away.
    with contextlib.closing(decoded):
        for chunk, results, buffer in decoded:
            good: list[tuple[Pixels, tuple[int, int, int], int]] = []
            keep: list[int] = []
            for j, (rel, res) in enumerate(zip(chunk, results, strict=True)):
                if isinstance(res, str):
                    if on_error == "fail":
                        hint = (
                            "Fix or remove the file and run again with resume=True, "
                            "or pass on_error='skip' to leave such files out"
                        )
                        raise ImageDecodeError(rel, res, hint=hint)
                    skipped.append((rel, res))
                    continue
                good.append(res)
                chunker.observe(math.prod(res[1]))
                keep.append(offset + j)
            offset += len(chunk)
            bar.update(len(chunk), sum(r[2] for r in good), len(chunk) - len(good))
            if not good:
                continue
            batch: dict[str, Any] = {
                "images": _images_of(good, buffer),
                "paths": np.array([plan.paths[i] for i in keep], dtype=dtype),
            }
            if plan.labels is not None:
                batch["labels"] = plan.labels[keep]
            writer.append(batch)
            del batch, good  # views of the slot: the next task may decode into it
    return skipped


def _reason_again(rel: str, job: _Decode) -> str:
    """Why a file the interrupted run skipped cannot be decoded (decoding it again to see)."""
    (res,) = _decode_chunk(job, [rel], None)
    if isinstance(res, str):
        return res
    return "skipped by the interrupted run (it decodes now: ingest again to include it)"
