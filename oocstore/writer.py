"""The writer: batches in, durable commits out, resumable after a crash.

Data flows batch -> fields (batches.py) -> schema check (schema.py) -> per-field layout (dense,
padded or packed; ragged.py) -> staged physical arrays -> backend. A commit flushes the stages,
makes the data durable (``backend.sync``) and only then replaces the manifest that declares it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import shutil
import sys
import time
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import sizing
from ._durable import free_bytes
from ._lock import StoreLock, refused_write
from ._url import is_url
from .backends import backend_class, backend_for_path, detect_backend
from .backends.base import Backend, BackendOptions, RegionWriter
from .batches import Batch, FieldValue, split_batch
from .checksum import ALGORITHM, MAX_SPANS, SpanHasher, coalesce, valid_span
from .errors import (
    CorruptStoreError,
    DiskFullError,
    EmptySourceError,
    OocstoreError,
    PaddingWarning,
    RaggedError,
    StoreExistsError,
    UnknownBackendError,
    WriterClosedError,
)
from .manifest import ArraySpec, FieldLayout, Manifest
from .progress import Progress
from .ragged import (
    check_packed,
    fits,
    max_shape_of,
    pack_block,
    pad_block,
    region,
    sample_shapes,
    unpack_block,
)
from .schema import Casting, FieldSpec, Schema
from .sizing import MemoryLike

if TYPE_CHECKING:
    pass

__all__ = ["PathLike", "RaggedMode", "ShapeLike", "Writer"]

log = logging.getLogger(__name__)

RaggedMode = Literal["pad", "pack", "error"]
PathLike = str | os.PathLike[str]
ShapeLike = Sequence[int]

_SHAPES_DTYPE = np.dtype("<i8")
_OFFSETS_DTYPE = np.dtype("<i8")
_INITIAL_BYTES = sizing.BLOCK_BYTES  # most of a first allocation when the length is unknown
_INITIAL_BATCHES = 4  # ... which is this many first batches' worth, if that is less
_PADDING_WAYS_OUT = (
    "To store samples without padding pass ragged='pack' (store.sample() and the packed "
    "array give each sample its true shape); to bring images to one size, resize them first "
    "(oocstore ingest --size WxH); max_shape= declares a padded shape up front"
)


class _StagedArray:
    """One physical array: a staging buffer in front of the backend, and its capacity."""

    def __init__(
        self,
        backend: Backend,
        name: str,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        *,
        rows: int,
        capacity: int,
        budget: int,
    ) -> None:
        self.backend = backend
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.row_nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.capacity = capacity
        self.budget = budget
        self.chunk_rows = max(backend.write_unit_rows(name), 1)
        self.stage_rows = sizing.stage_rows(self.row_nbytes, budget, self.chunk_rows)
        # Runs this long skip the stage: a copy would cost more than the extra syscall.
        self.direct_rows = min(
            self.stage_rows, max(self.chunk_rows, sizing.direct_write_rows(self.row_nbytes))
        )
        self.stage_start = rows  # first row held by the stage (rows before it are written)
        self.fill = 0  # rows in the stage
        self._buf: np.ndarray | None = None
        self.hasher = SpanHasher(rows)

    @property
    def rows(self) -> int:
        """Rows appended so far (written or staged)."""
        return self.stage_start + self.fill

    def spec(self) -> ArraySpec:
        """The manifest entry for the rows appended so far."""
        return ArraySpec(dtype=self.dtype, shape=self.shape, length=self.rows)

    def _ensure(self, rows: int) -> None:
        if rows > self.capacity:
            new = sizing.grow_capacity(self.capacity, rows, self.row_nbytes)
            log.debug("growing %r from %d to %d rows", self.name, self.capacity, new)
            try:
                self.backend.reserve(self.name, new)
            except OSError:
                if new == rows:
                    raise
                self.backend.reserve(self.name, rows)  # no room to grow ahead: just what fits
                new = rows
            self.capacity = new

    def _limit(self) -> int:
        # The stage ends on a chunk boundary, so chunks are written whole.
        return self.stage_rows - (self.stage_start % self.chunk_rows)

    def append(self, values: np.ndarray) -> None:
        """Append rows, writing large runs straight through and staging small ones."""
        n = len(values)
        if n == 0:
            return
        self._ensure(self.rows + n)
        self.hasher.update(values)  # in a helper thread while this thread writes
        try:
            self._append(values)
        finally:
            self.hasher.wait()  # the caller may reuse its batch once append returns

    def _append(self, values: np.ndarray) -> None:
        n = len(values)
        pos = 0
        while pos < n:
            left = n - pos
            if (
                self.fill == 0
                and self.stage_start % self.chunk_rows == 0
                and left >= self.direct_rows
            ):
                k = (left // self.chunk_rows) * self.chunk_rows
                self.backend.write(self.name, self.stage_start, values[pos : pos + k])
                self.stage_start += k
                pos += k
                continue
            if self._buf is None:
                self._buf = np.empty((self.stage_rows, *self.shape), dtype=self.dtype)
            take = min(self._limit() - self.fill, left)
            self._buf[self.fill : self.fill + take] = values[pos : pos + take]
            self.fill += take
            pos += take
            if self.fill == self._limit():
                self.backend.write(self.name, self.stage_start, self._buf[: self.fill])
                self.stage_start += self.fill
                self.fill = 0

    def flush(self) -> None:
        """Write the staged rows; keep them staged so their chunk is later written whole."""
        if self.fill and self._buf is not None:
            self.backend.write(self.name, self.stage_start, self._buf[: self.fill])

    def release_buffer(self) -> None:
        """Drop the staging buffer (after close)."""
        self._buf = None

    def widen(self, shape: tuple[int, ...]) -> None:
        """Continue with rows of ``shape`` (a padded field grew); the caller closed the span.

        Staged rows are on disk already (``flush``): the stage restarts empty, sized anew.
        A chunk written whole from the stage is then finished by reading its first rows back,
        once per growth: the rows of a ragged field grow a few times, not per batch.
        """
        self.stage_start += self.fill
        self.fill = 0
        self._buf = None
        self.shape = shape
        self.row_nbytes = int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize
        self.stage_rows = sizing.stage_rows(self.row_nbytes, self.budget, self.chunk_rows)
        if self.chunk_rows > 1 and self.stage_rows * self.row_nbytes > self.budget // 4:
            # A whole chunk of the wider rows no longer fits the budget: stage less, and let
            # the backend finish each chunk by reading its earlier rows back (slower, bounded).
            self.chunk_rows = 1
            self.stage_rows = sizing.stage_rows(self.row_nbytes, self.budget)
        self.direct_rows = min(
            self.stage_rows, max(self.chunk_rows, sizing.direct_write_rows(self.row_nbytes))
        )

    def skip_to(self, stop: int) -> None:
        """Continue at row ``stop``: rows up to it were written by region writers.

        The caller flushed the stage and took its checksum span first.
        """
        self.stage_start = stop
        self.fill = 0
        self.capacity = max(self.capacity, stop)
        self.hasher = SpanHasher(stop)


class _FieldWriter:
    """One logical field: chooses its layout and appends samples to its physical arrays."""

    def __init__(self, owner: Writer, spec: FieldSpec, layout: FieldLayout) -> None:
        self.owner = owner
        self.spec = spec
        self.layout = layout
        self.arrays: dict[str, _StagedArray] = {}
        self.values_rows = 0  # elements in the packed values array
        self.true_nbytes = 0  # bytes of the samples appended, without padding
        self._warned_padding = False

    # -- checks (no side effects: run for every field before any field is appended) ----------

    def check(self, value: FieldValue, batch_index: int) -> None:
        """Raise RaggedError if the ragged policy forbids this batch's shapes; for padded
        fields, warn when padding explodes and refuse a padded size the disk cannot hold."""
        if self.owner.ragged == "pad":
            self._check_padding(value, batch_index)
        if self.owner.ragged != "error":
            return
        expected = self.spec.shape
        shapes = [v.shape for v in value] if isinstance(value, list) else [value.shape[1:]]
        for s in shapes:
            if tuple(s) != expected:
                raise RaggedError(
                    "a sample's shape differs from the first batch's and ragged='error'",
                    field=self.spec.name,
                    batch_index=batch_index,
                    expected=expected,
                    actual=tuple(s),
                    hint="pass ragged='pad' or ragged='pack' to store samples of varying shape",
                )

    def _check_padding(self, value: FieldValue, batch_index: int) -> None:
        """Padding of a ``ragged='pad'`` field, projected before this batch is appended."""
        owner = self.owner
        if len(value) == 0 or (
            isinstance(value, np.ndarray) and value.shape[1:] == self.spec.shape
        ):
            return  # the common case: nothing grows
        shapes = sample_shapes(value)
        old = self.spec.shape
        new = max_shape_of(shapes, old)
        at_close = not owner.backend.grows_rows  # npy, HDF5: the padded file is made at close
        if new == old and not (at_close and self.layout.kind != "dense"):
            return
        itemsize = self.spec.dtype.itemsize
        row = math.prod(new) * itemsize
        rows = owner.length + len(value)
        final = max(rows, owner.length_expected or 0)
        padded = final * row
        if at_close and owner.url is None:
            free = free_bytes(owner.path if owner.path.exists() else owner.path.parent)
            if free is not None and padded > free:
                raise DiskFullError(
                    os.fspath(owner.path),
                    needed=padded,
                    free=free,
                    what=(
                        f"batch {batch_index}, field {self.spec.name!r}: padded to {new}, "
                        f"{final:,} samples take {sizing.format_bytes(padded)}"
                    ),
                    hint=f"Nothing of this batch was written. {_PADDING_WAYS_OUT}",
                )
        limit = owner.padding_warning
        if new == old or self._warned_padding or limit is None:
            return
        sizes = np.prod(shapes, axis=1, dtype=np.int64) if shapes.shape[1] else np.ones(1)
        true = self.true_nbytes + int(sizes.sum()) * itemsize
        ratio = rows * row / max(true, 1)
        if ratio <= limit:
            return
        self._warned_padding = True
        grew = int(np.argmax((shapes > np.asarray(old, dtype=np.int64)).any(axis=1)))
        when = f"at the declared length ({final:,} samples)" if final > rows else "so far"
        where = "on disk" if at_close else "read padded (on disk only the tiles samples touch)"
        warnings.warn(
            f"field {self.spec.name!r}: sample {owner.length + grew:,} (batch {batch_index}) has "
            f"shape {tuple(int(d) for d in shapes[grew])}, so every sample is padded from {old} "
            f"to {new}: {sizing.format_bytes(padded)} {where} {when} for "
            f"{sizing.format_bytes(true)} of values ({ratio:.0f}x; warned past "
            f"padding_warning={limit:g}x). {_PADDING_WAYS_OUT}",
            PaddingWarning,
            stacklevel=_caller_stacklevel(),
        )

    # -- appending ----------------------------------------------------------------------------

    def append(self, value: FieldValue) -> int:
        """Append one batch of this field; return the bytes appended."""
        nbytes = self._append(value)
        if isinstance(value, np.ndarray):
            self.true_nbytes += value.nbytes
        else:
            self.true_nbytes += sum(v.size for v in value) * self.spec.dtype.itemsize
        return nbytes

    def _append(self, value: FieldValue) -> int:
        if len(value) == 0:
            return 0  # an empty batch says nothing about shapes: no layout change
        kind = self.layout.kind
        uniform = isinstance(value, np.ndarray) and value.shape[1:] == self.spec.shape
        if kind == "dense":
            if uniform:
                assert isinstance(value, np.ndarray)
                self.arrays[self.spec.name].append(value)
                return value.nbytes
            kind = "padded" if self._dense_to_padded(value) else "packed"
            if kind == "packed":
                self._dense_to_packed()
        shapes = sample_shapes(value)
        if kind == "padded":
            if not fits(shapes, self.spec.shape) and self.owner.backend.grows_rows:
                self._widen(max_shape_of(shapes, self.spec.shape))
            if fits(shapes, self.spec.shape):
                block = pad_block(value, self.spec.shape, self.spec.dtype, self.layout.fill)
                self.arrays[self.spec.name].append(block)
                self.arrays[f"{self.spec.name}.shapes"].append(shapes)
                return block.nbytes
            self._padded_to_packed()
        return self._append_packed(value, shapes)

    def _append_packed(self, value: FieldValue, shapes: np.ndarray, *, new: bool = True) -> int:
        name = self.spec.name
        sizes = (
            np.prod(shapes, axis=1, dtype=np.int64)
            if shapes.shape[1]
            else np.ones(len(shapes), dtype=np.int64)
        )
        offsets = (
            self.values_rows + np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
            if len(sizes)
            else np.empty(0, dtype=np.int64)
        )
        flat = pack_block(value, self.spec.dtype)
        self.arrays[f"{name}.values"].append(flat)
        self.arrays[f"{name}.offsets"].append(offsets)
        if new:  # samples copied from a padded layout already have their shapes stored
            self.arrays[f"{name}.shapes"].append(shapes)
        self.values_rows += int(sizes.sum())
        new_max = max_shape_of(shapes, self.spec.shape)
        if new_max != self.spec.shape or not self.spec.ragged:
            self.spec = FieldSpec(self.spec.name, new_max, self.spec.dtype, ragged=True)
        return flat.nbytes

    # -- layout changes -------------------------------------------------------------------------

    def _new_array(
        self,
        name: str,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        capacity: int,
        *,
        padded: bool = False,
        growing: Sequence[int] = (),
    ) -> _StagedArray:
        owner = self.owner

        def create(capacity: int) -> None:
            if padded:
                tile = sizing.tile_shape(shape, dtype.itemsize, growing)
                owner.backend.create_padded(name, dtype, shape, capacity, self.layout.fill, tile)
            else:
                owner.backend.create_array(name, dtype, shape, capacity)

        owner.checksums.pop(name, None)  # a new array: spans of an old one of that name go
        try:
            create(capacity)
        except DiskFullError:
            if not owner._guessed_capacity:
                raise
            # The first guess at an unknown length did not fit: allocate as data comes.
            capacity = 0
            create(capacity)
        arr = _StagedArray(
            owner.backend, name, dtype, shape, rows=0, capacity=capacity, budget=owner.budget
        )
        self.arrays[name] = arr
        return arr

    def _packed_arrays(self, n: int, values: int, *, shapes: bool = True) -> None:
        name = self.spec.name
        cap = max(self.owner.expected_capacity(), n)
        self._new_array(f"{name}.offsets", _OFFSETS_DTYPE, (), cap)
        if shapes:
            self._new_array(f"{name}.shapes", _SHAPES_DTYPE, (self.spec.ndim,), cap)
        if f"{name}.values" not in self.arrays:
            self._new_array(f"{name}.values", self.spec.dtype, (), max(values, 1024))

    def _padded_arrays(
        self, shape: tuple[int, ...], capacity: int, growing: Sequence[int] = ()
    ) -> None:
        """Create the arrays of a padded field: rows of ``shape`` (the axes ``growing`` seen
        to vary) and their true shapes."""
        name = self.spec.name
        self.spec = FieldSpec(name, shape, self.spec.dtype, ragged=True)
        self.layout = FieldLayout(kind="padded", fill=self.layout.fill)
        self._new_array(name, self.spec.dtype, shape, capacity, padded=True, growing=growing)
        self._new_array(f"{name}.shapes", _SHAPES_DTYPE, (self.spec.ndim,), capacity)

    def _widen(self, shape: tuple[int, ...]) -> None:
        """Grow a padded field's rows in place to ``shape`` (``backend.grows_rows``)."""
        name = self.spec.name
        owner = self.owner
        arr = self.arrays[name]
        owner._close_span(arr)
        # Spans so far were hashed at the old shape: each says so, and verify() reads its
        # rows cut to it (growing only adds padding past it, so those bytes never change).
        for span in owner.checksums.get(name, []):
            if len(span) == 3:
                span.append(list(arr.shape))
        owner.backend.grow_rows(name, shape)
        arr.widen(shape)
        self.spec = FieldSpec(name, shape, self.spec.dtype, ragged=True)
        log.debug("field %r: rows grew to %s in place", name, shape)

    def _dense_to_padded(self, value: FieldValue) -> bool:
        """Turn a dense field padded, where rows can grow and nothing of it is committed yet.

        The dense rows are read back and rewritten as padded rows (a new array of the same
        name, tiled to grow), so the field keeps growing in place instead of being staged
        packed and laid out at close. Only before the first commit that declares rows of
        it: until then the array it replaces holds nothing a reader or a resume may need.
        False where that does not hold (the caller then stages the field packed).
        """
        owner = self.owner
        name = self.spec.name
        dense = self.arrays[name]
        if (
            not owner.backend.grows_rows
            or owner.ragged != "pad"
            or owner.committed
            or owner._pending is not None
            or dense.rows * dense.row_nbytes > owner.budget // 4
        ):
            return False
        dense.flush()
        rows = owner.backend.read(name, 0, dense.rows)
        del self.arrays[name]
        growing = _growing_axes(sample_shapes(value), self.spec.shape)
        self._padded_arrays(self.spec.shape, max(dense.capacity, dense.rows), growing)
        self.arrays[name].append(rows)
        shape_row = np.asarray(self.spec.shape, dtype=np.int64)
        shapes = np.broadcast_to(shape_row, (len(rows), len(shape_row)))
        self.arrays[f"{name}.shapes"].append(shapes)
        log.debug("field %r became ragged after %d samples: padded, growing", name, len(rows))
        return True

    def _dense_to_packed(self) -> None:
        """Reinterpret the dense rows written so far as the start of a packed field."""
        name = self.spec.name
        dense = self.arrays.pop(name)
        dense.flush()
        n = dense.rows
        owner = self.owner
        span = dense.hasher.take(n)
        if span is not None:
            owner.checksums.setdefault(name, []).append(span)
        per = math.prod(self.spec.shape)
        cap = owner.backend.link_array(name, f"{name}.values", self.spec.dtype, (), n * per)
        values = _StagedArray(
            owner.backend,
            f"{name}.values",
            self.spec.dtype,
            (),
            rows=n * per,
            capacity=cap,
            budget=owner.budget,
        )
        self.arrays[values.name] = values
        # The same bytes, so the same hashes: dense row spans become element spans.
        owner.checksums[values.name] = [
            [a * per, b * per, h] for a, b, h in owner.checksums.get(name, [])
        ]
        self._packed_arrays(n, n * per)
        step = max(2**20 // max(self.spec.ndim, 1), 1)
        shape_row = np.asarray(self.spec.shape, dtype=np.int64)
        for start in range(0, n, step):
            stop = min(start + step, n)
            self.arrays[f"{name}.offsets"].append(np.arange(start, stop, dtype=np.int64) * per)
            self.arrays[f"{name}.shapes"].append(
                np.broadcast_to(shape_row, (stop - start, self.spec.ndim))
            )
        self.values_rows = n * per
        self.layout = FieldLayout(kind="packed", fill=self.layout.fill)
        owner.obsolete.add(name)
        log.debug("field %r became ragged after %d samples: staged packed", name, n)

    def _padded_to_packed(self) -> None:
        """Copy padded samples into packed form (a sample outgrew the preset max shape)."""
        # The shapes array stays as it is: it already holds the true shapes of these samples.
        name = self.spec.name
        padded = self.arrays.pop(name)
        padded.flush()
        self.arrays[f"{name}.shapes"].flush()
        n = padded.rows
        backend = self.owner.backend
        self._new_array(f"{name}.values", self.spec.dtype, (), 1024)
        self._packed_arrays(n, 0, shapes=False)
        self.layout = FieldLayout(kind="packed", fill=self.layout.fill)
        step = max(self.owner.budget // 4 // max(padded.row_nbytes, 1), 1)
        for start in range(0, n, step):
            stop = min(start + step, n)
            block = backend.read(name, start, stop)
            shp = backend.read(f"{name}.shapes", start, stop)
            samples = [block[region(i, shp[i])] for i in range(stop - start)]
            self._append_packed(samples, shp, new=False)
        self.owner.obsolete.add(name)

    def finish(self) -> None:
        """Lay a packed field out padded (``ragged='pad'``): one streaming pass."""
        if self.layout.kind != "packed" or self.owner.ragged == "pack":
            return
        name = self.spec.name
        owner = self.owner
        backend = owner.backend
        for arr in self.arrays.values():
            arr.flush()
        bound = owner.max_shape.get(name)
        shape = self.spec.shape
        if bound is not None and len(bound) == len(shape):
            shape = tuple(max(a, b) for a, b in zip(bound, shape, strict=True))
        n = self.arrays[f"{name}.shapes"].rows
        if name in owner.obsolete:
            # The last commit still names the dense file this field started in: commit the
            # packed arrays first, so that file can go before the padded one takes its name.
            owner.commit()
        padded = self._new_array(name, self.spec.dtype, shape, n, padded=True)
        step = max(sizing.layout_rows(padded.row_nbytes, owner.budget), 1)
        # One buffer, refilled per block: fresh memory per block can be slow to touch.
        block = np.empty((min(step, n), *shape), dtype=self.spec.dtype)
        flusher = _EarlyFlush(owner, name)
        for start in range(0, n, step):
            stop = min(start + step, n)
            offsets = backend.read(f"{name}.offsets", start, stop)
            shapes = backend.read(f"{name}.shapes", start, stop)
            # A resumed writer reads committed rows back: refuse damaged ones.
            n_values = self.arrays[f"{name}.values"].rows
            check_packed(n_values, offsets, shapes, f"{owner.path}: field {name!r}", bound=shape)
            if (np.diff(offsets) < 0).any():
                where = f"{owner.path}: field {name!r}"
                raise CorruptStoreError(where, f"packed offsets of samples {start}.. go backwards")
            lo = int(offsets[0])
            last = int(offsets[-1]) + math.prod(int(d) for d in shapes[-1])
            values = backend.read(f"{name}.values", lo, last)
            out = block[: stop - start]
            out[...] = self.layout.fill
            for i, sample in enumerate(unpack_block(values, offsets, shapes, lo)):
                out[region(i, sample.shape)] = sample
            padded.append(out)
            flusher.written(padded.rows, out.nbytes)
        flusher.wait()
        self.spec = FieldSpec(name, shape, self.spec.dtype, ragged=True)
        self.layout = FieldLayout(kind="padded", fill=self.layout.fill)
        for old in (f"{name}.values", f"{name}.offsets"):
            self.arrays.pop(old)
            owner.obsolete.add(old)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside oocstore: a warning points at user code."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def _growing_axes(shapes: np.ndarray, shape: Sequence[int]) -> tuple[int, ...]:
    """The axes on which sample ``shapes`` differ from ``shape`` or from one another."""
    if not len(shapes):
        return ()
    seen = np.vstack([shapes, np.asarray(shape, dtype=np.int64)[None]])
    return tuple(int(i) for i in np.flatnonzero(seen.min(axis=0) != seen.max(axis=0)))


def _checked_spans(spans: dict[str, Any], manifest: Manifest, path: Path) -> dict[str, list[Any]]:
    """The checksum record of a store being resumed, refused if damaged."""
    out: dict[str, list[Any]] = {}
    for name, value in spans.items():
        spec = manifest.arrays.get(name)
        ok = spec is not None and isinstance(value, list)
        for span in value if ok else []:
            ok = ok and valid_span(span, spec.length, spec.shape)  # type: ignore[union-attr]
        if not ok:
            problem = f"the checksum record of array {name!r} is damaged: {value!r:.80}"
            raise CorruptStoreError(os.fspath(path), problem)
        out[name] = list(value)
    return out


class _EarlyFlush:
    """Make a not yet declared array's rows durable in the background while more are written.

    The padded layout at close is declared only once complete, but its bytes need not wait
    for that to reach the disk: syncing every ~64 MB overlaps the disk with the layout work,
    so the final commit waits only for the tail.
    """

    def __init__(self, owner: Writer, name: str) -> None:
        self.owner = owner
        self.name = name
        self.since = 0
        self.pending: Future[None] | None = None

    def written(self, rows: int, nbytes: int) -> None:
        """Count ``nbytes`` more; past the commit cadence, sync the first ``rows`` rows."""
        self.since += nbytes
        committer = self.owner._committer
        if committer is None or self.since < self.owner.commit_every_bytes:
            return
        self.wait()
        self.since = 0
        self.pending = committer.submit(self.owner.backend.sync, {self.name: rows})

    def wait(self) -> None:
        """Wait for the sync in flight (its error is the writer's)."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()


class _Abandoned:
    """Undo what a writer collected without ``close()`` holds: its lock, and a store it made.

    A store this writer created and never committed holds no data, so it is removed with
    its lock file; a committed store is left as its last commit says (resumable). Nothing
    happens in a forked child, whose writer object is the parent's.
    """

    def __init__(self, backend: Backend, lock: StoreLock | _NoLock, sibling: bool) -> None:
        self.backend = backend
        self.lock = lock
        self.sibling = sibling
        """Is the lock file beside the store (Zarr, HDF5), so it must go too?"""
        self.committed = False
        """Has a manifest been written (or did the store exist, for a resumed writer)?"""
        self.pid = os.getpid()

    def __call__(self) -> None:
        if os.getpid() != self.pid:
            return
        try:
            with contextlib.suppress(Exception):
                if self.committed:
                    self.backend.close()
                else:
                    self.backend.destroy()
        finally:
            self.lock.release(remove=self.sibling)


class _NoLock:
    """A store at a URL has no flock: nothing to take (see docs/dask.md)."""

    def acquire(self) -> None:
        """Nothing to lock."""

    def release(self, *, remove: bool = False) -> None:
        """Nothing to unlock."""


class Writer:
    """Write batches into a store incrementally; a context manager.

    Parameters
    ----------
    path
        Where the store goes. The backend follows the suffix (``.zarr``, ``.h5``/``.hdf5``,
        anything else is npy) unless ``backend=`` names one.
    names
        Field names for array or tuple batches (default ``"0"``, ``"1"``, ...).
    length
        Expected number of samples: files are preallocated for it (and grow if it is exceeded).
    backend
        ``"npy"``, ``"zarr"`` or ``"hdf5"``.
    batched
        True: each appended item is a batch (axis 0 = samples). False: each item is one sample.
    overwrite
        Replace an existing store at ``path``.
    resume
        Continue the store at ``path`` from its last commit (``skip`` then tells how many
        samples of the source to drop).
    memory
        Memory budget for buffers (bytes or ``"512MB"``); default: a share of what is free.
    progress
        Show a progress bar (default: when stderr is a terminal).
    ragged
        ``"pad"`` (default): samples of varying trailing shape are padded to the max shape and
        their true shapes kept (on Zarr the padded array grows in place; elsewhere it is laid
        out at close); ``"pack"``: stored end to end with offsets; ``"error"``: refuse.
    fill
        Pad value, or a dict of them per field.
    max_shape
        Per field (a dict), the padded shape to preallocate when it is known up front.
    padding_warning
        Warn (``PaddingWarning``, once per field) when padding a ragged field makes it more
        than this many times the size of its samples' values; None never warns.
    casting
        How far a later batch may be cast to the schema's dtype (NumPy casting rules).
    chunks, compressors, shards
        Chunked backends (Zarr, HDF5): rows per chunk (an int, or a dict per field), the
        compressors (Zarr's meaning: None is uncompressed), and rows per shard (Zarr; True
        picks ~128 MiB shards) for datasets that would otherwise make millions of chunk files.
    commit_bytes, commit_seconds
        Commit after this many bytes or seconds since the last commit.
    attrs
        JSON-serialisable user metadata kept in the manifest.
    storage_options
        For a store at an fsspec URL (``memory://``, ``s3://``...; always Zarr): passed to
        the fsspec filesystem. Such a store has no single-writer lock and no fsync; see
        ``docs/dask.md``.

    Raises
    ------
    StoreExistsError
        If a store exists at ``path`` and neither ``overwrite`` nor ``resume`` is set.
    StoreLockedError
        If another process is writing the store.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        names: Sequence[str] | None = None,
        length: int | None = None,
        backend: str | None = None,
        batched: bool = True,
        overwrite: bool = False,
        resume: bool = False,
        memory: MemoryLike = None,
        progress: bool | None = False,
        ragged: RaggedMode = "pad",
        fill: Any = 0,
        max_shape: Mapping[str, ShapeLike] | ShapeLike | None = None,
        padding_warning: float | None = 4.0,
        casting: Casting = "safe",
        chunks: Mapping[str, int] | int | None = None,
        compressors: Any = None,
        shards: Mapping[str, int] | int | bool | None = None,
        commit_bytes: int | None = None,
        commit_seconds: float = 30.0,
        attrs: Mapping[str, Any] | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if ragged not in ("pad", "pack", "error"):
            msg = f"ragged must be 'pad', 'pack' or 'error', not {ragged!r}"
            raise ValueError(msg)
        if casting not in ("no", "equiv", "safe", "same_kind", "unsafe"):
            msg = f"casting must be one of no, equiv, safe, same_kind, unsafe; not {casting!r}"
            raise ValueError(msg)
        if length is not None and (not isinstance(length, int | np.integer) or length < 0):
            msg = f"length must be a non-negative integer, not {length!r}"
            raise ValueError(msg)
        self.path = Path(path)
        self.names = list(names) if names is not None else None
        self.length_expected = int(length) if length is not None else None
        self.batched = batched
        self.ragged: RaggedMode = ragged
        self.fill = fill
        self.max_shape = _as_max_shapes(max_shape)
        if padding_warning is not None and not padding_warning > 0:
            msg = f"padding_warning must be a positive ratio or None, not {padding_warning!r}"
            raise ValueError(msg)
        self.padding_warning = padding_warning
        self.casting: Casting = casting
        self.budget = sizing.memory_budget(memory)
        self.commit_every_seconds = commit_seconds
        self.attrs = dict(attrs or {})
        self.obsolete: set[str] = set()  # arrays to delete once a manifest no longer names them
        self.n_batches_hint: int | None = None
        self.checksums: dict[str, list[list[Any]]] = {}  # array -> [[start, stop, hash], ...]
        self._pending: tuple[Future[None], int, set[str]] | None = None
        self._guessed_capacity = False
        self._progress_flag = progress
        self._progress: Progress | None = None
        self._fields: dict[str, _FieldWriter] = {}
        self._schema: Schema | None = None
        self._closed = False
        self._broken = False
        self._batch_index = 0
        self._since_commit = 0
        self._last_commit = time.monotonic()
        self.length = 0  # samples appended
        self.committed = 0  # samples in the last commit
        self.skip = 0  # samples of the source already stored (resume)
        self.bytes_written = 0

        options = BackendOptions(
            chunks=dict(chunks) if isinstance(chunks, Mapping) else chunks,
            compressors=compressors,
            extra={
                # HDF5 lays out arrays of exactly the declared length contiguous.
                "length": self.length_expected,
                **(
                    {"shards": dict(shards) if isinstance(shards, Mapping) else shards}
                    if shards is not None
                    else {}
                ),
            },
        )
        self.url: str | None = None
        self._lock: StoreLock | _NoLock
        if is_url(path):
            cls, exists, existing_backend = self._at_url(
                str(path), backend, options, storage_options
            )
        else:
            exists = self.path.exists() or self.path.is_symlink()
            existing_backend = _existing_store_backend(self.path) if exists else None
            if resume and existing_backend is not None:
                self.backend_name = existing_backend
                if backend is not None and backend != existing_backend:
                    msg = (
                        f"cannot resume {str(self.path)!r} as {backend!r}: "
                        f"it is a {existing_backend} store"
                    )
                    raise UnknownBackendError(msg)
            else:
                self.backend_name = backend_for_path(self.path, backend)
            cls = backend_class(self.backend_name)
            self.backend = cls(self.path, options)
            self._lock = StoreLock(cls.lock_path(self.path), self.path)
        self._committer = (
            ThreadPoolExecutor(1, thread_name_prefix="oocstore-commit")
            if cls.background_sync
            else None
        )
        self.commit_every_bytes = commit_bytes or sizing.commit_bytes(
            self.budget, background=cls.background_sync
        )

        # A writer dropped without close() is undone when it is collected (or at exit).
        sibling = isinstance(self._lock, StoreLock) and self._lock.path.parent != self.path
        self._abandoned = _Abandoned(self.backend, self._lock, sibling)
        if existing_backend is not None and resume:
            self._lock.acquire()
            try:
                self._reopen()
            except BaseException:
                self.backend.close()
                self._lock.release()
                raise
            self._abandoned.committed = True
            self._finalizer = weakref.finalize(self, self._abandoned)
            return
        if exists:
            self._clear_existing(existing_backend, overwrite)
        try:
            self.backend.create()
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            raise refused_write(err, Path(err.filename or self.path)) from None
        self._lock.acquire()  # refused: the store is another writer's, left as it is
        self._finalizer = weakref.finalize(self, self._abandoned)

    # -- set-up ----------------------------------------------------------------------------------

    def _at_url(
        self,
        url: str,
        backend: str | None,
        options: BackendOptions,
        storage_options: Mapping[str, Any] | None,
    ) -> tuple[type[Backend], bool, str | None]:
        """Set up a Zarr store at an fsspec URL: ``(backend class, exists, existing backend)``.

        There is no lock at a URL (see :mod:`oocstore.backends.zarr_fsspec`).
        """
        from .backends.zarr_fsspec import FsspecZarrBackend

        if backend not in (None, "zarr"):
            msg = f"a store at a URL ({url!r}) is a Zarr store; backend={backend!r} cannot be one"
            raise UnknownBackendError(msg)
        self.url = url
        self.backend_name = "zarr"
        options.extra["url"] = url
        options.extra["storage_options"] = dict(storage_options or {})
        remote = FsspecZarrBackend(self.path, options)
        self.backend = remote
        self._lock = _NoLock()
        exists = remote.exists()
        return FsspecZarrBackend, exists, "zarr" if exists and remote.holds_url_store() else None

    def _clear_existing(self, existing_backend: str | None, overwrite: bool) -> None:
        path = self.path
        if self.url is not None:
            if not overwrite or existing_backend is None:
                what = "a store" if existing_backend else "something that is not a store"
                msg = f"{what} already exists at {self.url!r}" + (
                    "; pass overwrite=True to replace it or resume=True to continue it"
                    if existing_backend
                    else ""
                )
                raise StoreExistsError(msg)
            self.backend.destroy()
            return
        if existing_backend is None and path.is_dir() and not path.is_symlink():
            leftovers = [p.name for p in path.iterdir() if p.name != ".lock"]
            if not leftovers:
                return  # an empty directory, or one a writer died in before its first commit
            cls = backend_class(self.backend_name)
            unfinished = cls.unfinished_files(path)
            if unfinished is not None:
                # A writer died between creating its arrays and its first commit: nothing was
                # committed, so its files go (under its lock, in case it is still alive).
                dead_lock = StoreLock(cls.lock_path(path), path)
                dead_lock.acquire()
                try:
                    for leftover in unfinished:
                        leftover.unlink(missing_ok=True)
                finally:
                    dead_lock.release()
                return
        if not overwrite:
            what = "a store" if existing_backend else "a file or directory"
            msg = f"{what} already exists at {str(path)!r}; pass overwrite=True to replace it" + (
                " or resume=True to continue it" if existing_backend else ""
            )
            raise StoreExistsError(msg)
        if existing_backend is None:
            msg = (
                f"{str(path)!r} exists and is not an oocstore store; refusing to delete it "
                "with overwrite=True. Remove it yourself or choose another path"
            )
            raise StoreExistsError(msg)
        # Take the old store's lock first: never delete a store another process is writing.
        old_lock = StoreLock(backend_class(existing_backend).lock_path(path), path)
        old_lock.acquire()
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        finally:
            old_lock.release()

    def _reopen(self) -> None:
        if self.url is not None:
            from .backends.zarr_fsspec import read_url_manifest

            manifest = read_url_manifest(self.url, self.backend.options.extra["storage_options"])
        else:
            manifest = backend_class(self.backend_name).read_manifest(self.path)
        capacities = self.backend.open_existing(manifest)
        self._schema = manifest.schema
        self.attrs = {**manifest.attrs, **self.attrs}
        self.length = self.committed = self.skip = manifest.length
        stored = manifest.extra.get("checksums", {})
        if isinstance(stored, dict) and isinstance(stored.get("spans"), dict):
            self.checksums = _checked_spans(stored["spans"], manifest, self.path)
        if self.names is None:
            self.names = list(manifest.schema.names)
        for spec in manifest.schema.fields:
            layout = manifest.layout(spec.name)
            fw = _FieldWriter(self, spec, layout)
            for aname in layout.arrays(spec.name):
                a = manifest.arrays[aname]
                fw.arrays[aname] = _StagedArray(
                    self.backend,
                    aname,
                    a.dtype,
                    a.shape,
                    rows=a.length,
                    capacity=capacities[aname],
                    budget=self.budget,
                )
            if layout.kind == "packed":
                fw.values_rows = manifest.arrays[f"{spec.name}.values"].length
                fw.true_nbytes = fw.values_rows * spec.dtype.itemsize
            else:  # padded rows count whole: padding is never over-reported after a resume
                fw.true_nbytes = manifest.length * spec.sample_nbytes
            self._fields[spec.name] = fw
        if manifest.complete:
            # Appending to a closed store: say so before any byte changes.
            manifest.complete = False
            self.backend.write_manifest(manifest)
        log.debug("resuming %s at %d samples", self.path, self.length)

    def expected_capacity(self) -> int:
        """Rows to allocate for per-sample arrays before the length is known exactly."""
        if self.length_expected is not None:
            return max(self.length_expected, self.length)
        return max(self.length, 1024)

    def _start(self, batch: Batch) -> None:
        """Create the store's arrays from the first batch."""
        schema = Schema.infer(batch, batch_index=self._batch_index)
        for spec in schema.fields:
            if spec.ragged and self.ragged == "error":
                value = batch.fields[spec.name]
                shapes = sorted({v.shape for v in value}) if isinstance(value, list) else []
                raise RaggedError(
                    "samples of the first batch differ in shape and ragged='error'",
                    field=spec.name,
                    batch_index=self._batch_index,
                    expected=shapes[0] if shapes else spec.shape,
                    actual=shapes[-1] if shapes else spec.shape,
                    hint="pass ragged='pad' or ragged='pack' to store samples of varying shape",
                )
        n = batch.size
        if self.url is None:
            for spec in schema.fields:  # before anything is allocated for this batch
                sizing.check_samples_fit(
                    self.path, spec.name, spec.sample_nbytes, n, batch_index=self._batch_index
                )
        if self.length_expected is not None:
            capacity = self.length_expected
        elif self.n_batches_hint is not None and n:
            capacity = self.n_batches_hint * n  # exact unless batches differ in size
            self.length_expected = capacity
        else:
            # A first guess only, a few batches' worth (growth is geometric from there), and
            # shrunk to nothing if the disk cannot hold it (_new_array).
            first = min(
                _INITIAL_BATCHES * n * schema.sample_nbytes, _INITIAL_BYTES, self.budget // 4
            )
            capacity = max(n, first // max(schema.sample_nbytes, 1), 1)
            self._guessed_capacity = True
        if not self._guessed_capacity and self.url is None:
            sizing.check_disk_space(self.path, capacity * schema.sample_nbytes)
        try:
            self._create_fields(schema, batch, capacity)
        except BaseException:
            for fw in self._fields.values():
                for name in list(fw.arrays):
                    with contextlib.suppress(OSError):
                        self.backend.delete_array(name)
            self._fields = {}
            raise
        self._schema = schema
        self.commit()  # an empty, valid store from the start

    def _create_fields(self, schema: Schema, batch: Batch, capacity: int) -> None:
        for spec in schema.fields:
            fill = self.fill.get(spec.name, 0) if isinstance(self.fill, Mapping) else self.fill
            bound = self.max_shape.get(spec.name)
            fw = _FieldWriter(self, spec, FieldLayout(kind="dense", fill=fill))
            self._fields[spec.name] = fw
            if bound is not None:
                if len(bound) != spec.ndim:
                    msg = (
                        f"max_shape for field {spec.name!r} has {len(bound)} axes but its "
                        f"samples have {spec.ndim} ({spec.shape})"
                    )
                    raise RaggedError(msg, field=spec.name)
                shape = tuple(max(a, b) for a, b in zip(bound, spec.shape, strict=True))
                fw._padded_arrays(shape, capacity)
            elif spec.ragged and self.ragged == "pad" and self.backend.grows_rows:
                growing = _growing_axes(sample_shapes(batch.fields[spec.name]), spec.shape)
                fw._padded_arrays(spec.shape, capacity, growing)  # grown in place as needed
            elif spec.ragged:
                fw.spec = FieldSpec(spec.name, spec.shape, spec.dtype, ragged=True)
                fw.layout = FieldLayout(kind="packed", fill=fill)
                value = batch.fields[spec.name]
                mean = sum(v.size for v in value) // max(len(value), 1)
                fw._packed_arrays(0, capacity * max(mean, 1))
            else:
                fw._new_array(spec.name, spec.dtype, spec.shape, capacity)

    # -- writing ---------------------------------------------------------------------------------

    @property
    def schema(self) -> Schema | None:
        """The schema so far (None before the first batch)."""
        if self._schema is None:
            return None
        return Schema(tuple(fw.spec for fw in self._fields.values()))

    def _check_open(self) -> None:
        if self._closed:
            msg = f"the writer of {str(self.path)!r} is closed"
            raise WriterClosedError(msg)
        if self._broken:
            msg = (
                f"an earlier write to {str(self.path)!r} failed; the store keeps its last "
                "commit: open a new Writer with resume=True to continue"
            )
            raise WriterClosedError(msg)

    def append(self, batch: Any) -> None:
        """Append one batch (or one sample, when ``batched=False``).

        Raises
        ------
        SchemaError
            If the batch does not match the schema (the batch is refused, the writer goes on).
        DiskFullError
            If the disk fills up (the store keeps its last commit; resume later).
        """
        self._check_open()
        if self._pending is not None and self._pending[0].done():
            self._wait_for_commit()  # surface a failed background commit at once
        index = self._batch_index
        b = split_batch(batch, names=self.names, batched=self.batched, batch_index=index)
        if self._schema is None:
            self._start(b)
        assert self._schema is not None
        values = self._schema.check(b, batch_index=index, casting=self.casting)
        self._batch_index += 1
        n = b.size
        if self.skip:
            if n <= self.skip:
                self.skip -= n
                return
            values = {k: v[self.skip :] for k, v in values.items()}
            n -= self.skip
            self.skip = 0
        for name, fw in self._fields.items():
            fw.check(values[name], index)
        nbytes = 0
        try:
            for name, fw in self._fields.items():
                nbytes += fw.append(values[name])
        except BaseException:
            self._broken = True
            raise
        self.length += n
        self.bytes_written += nbytes
        self._since_commit += nbytes
        if self._progress is not None:
            self._progress.update(n, nbytes)
        if self._since_commit >= self.commit_every_bytes or (
            time.monotonic() - self._last_commit >= self.commit_every_seconds
        ):
            self.commit(wait=False)

    # -- regions written by other processes (oocstore._parallel) ---------------------------

    def region_arrays(self) -> list[str]:
        """The physical arrays region writers fill (every array of every field)."""
        return [a.name for a in self._live_arrays()]

    def region_writers(self, stop: int) -> dict[str, RegionWriter]:
        """Picklable writers of rows ``[length, stop)`` for tasks in other processes.

        Everything appended so far is committed first, and every array gets storage for
        ``stop`` rows. The rows count only once :meth:`adopt_rows` declares them.

        Raises
        ------
        RaggedError
            If a field is not dense (regions of padded or packed fields are not supported).
        """
        self._check_open()
        for fw in self._fields.values():
            if fw.layout.kind != "dense":
                msg = f"field is stored {fw.layout.kind}: parallel writers fill dense fields only"
                raise RaggedError(
                    msg,
                    field=fw.spec.name,
                    hint="write this source without workers= (one process)",
                )
        self.commit()
        out = {}
        for a in self._live_arrays():
            out[a.name] = self.backend.region_writer(a.name, stop)
            a.capacity = max(a.capacity, stop)
        return out

    def adopt_rows(self, stop: int, spans: Mapping[str, Sequence[list[Any]]]) -> None:
        """Count rows ``[length, stop)`` that region writers made durable, with their
        checksum spans; the next commit declares them."""
        self._check_open()
        if stop < self.length:
            msg = f"rows up to {stop} adopted, but {self.length} are already appended"
            raise ValueError(msg)
        nbytes = 0
        for a in self._live_arrays():
            self._close_span(a)
            if a.rows != self.length:
                msg = f"array {a.name!r} holds {a.rows} rows, the store {self.length}"
                raise ValueError(msg)
            a.skip_to(stop)
            self._record_spans(a, [list(sp) for sp in spans.get(a.name, ())])
            self.backend.rows_written(a.name, stop)
            nbytes += (stop - self.length) * a.row_nbytes
        if self._progress is not None:
            self._progress.update(stop - self.length, nbytes)
        self.length = stop
        self.bytes_written += nbytes
        self._since_commit += nbytes

    def extend(self, batches: Iterable[Any]) -> None:
        """Append every batch of ``batches``."""
        for batch in batches:
            self.append(batch)

    def _close_span(self, a: _StagedArray) -> None:
        """Write ``a``'s staged rows and record the checksum span of its rows since the last."""
        a.flush()
        span = a.hasher.take(a.rows)
        if span is not None:
            self._record_spans(a, [span])

    def _record_spans(self, a: _StagedArray, spans: list[list[Any]]) -> None:
        """Add checksum spans of ``a``; past MAX_SPANS, neighbours merge (no rereading)."""
        mine = self.checksums.setdefault(a.name, [])
        mine.extend(spans)
        if len(mine) > MAX_SPANS:
            self.checksums[a.name] = coalesce(mine, a.dtype.itemsize, a.shape, MAX_SPANS)

    def _live_arrays(self) -> list[_StagedArray]:
        return [a for fw in self._fields.values() for a in fw.arrays.values()]

    def _snapshot(self, complete: bool = False) -> tuple[dict[str, int], Manifest, set[str]]:
        """Write staged rows and close the checksum spans; return what a commit declares.

        Returns the rows of each array, the manifest that declares them, and the obsolete
        arrays this manifest no longer names (deleted once it is durable).
        """
        assert self._schema is not None
        arrays = self._live_arrays()
        for a in arrays:
            self._close_span(a)
        lengths = {a.name: a.rows for a in arrays}
        live = set(lengths)
        checksums = {k: list(v) for k, v in self.checksums.items() if k in live}
        manifest = Manifest(
            backend=self.backend_name,
            schema=Schema(tuple(fw.spec for fw in self._fields.values())),
            length=self.length,
            complete=complete,
            layouts={name: fw.layout for name, fw in self._fields.items()},
            arrays={a.name: a.spec() for a in arrays},
            attrs=self.attrs,
            extra={"checksums": {"algorithm": ALGORITHM, "spans": checksums}},
        )
        return lengths, manifest, self.obsolete - live

    def _persist(self, lengths: dict[str, int], manifest: Manifest) -> None:
        """Data durable first, then the manifest that declares it (the commit point)."""
        self.backend.sync(lengths)
        self.backend.write_manifest(manifest)
        self._abandoned.committed = True

    def commit(self, *, wait: bool = True) -> None:
        """Make every appended sample durable, then declare it in the manifest.

        With ``wait=False`` (periodic commits) the fsyncs run in a background thread where
        the backend allows it, while appending goes on; at most one commit is in flight.
        """
        self._check_open()
        if self._schema is None:
            return
        self._wait_for_commit()
        try:
            lengths, manifest, drop = self._snapshot()
        except BaseException:
            self._broken = True
            raise
        self._since_commit = 0
        self._last_commit = time.monotonic()
        if not wait and self._committer is not None:
            future = self._committer.submit(self._persist, lengths, manifest)
            self._pending = (future, manifest.length, drop)
            return
        try:
            self._persist(lengths, manifest)
        except BaseException:
            self._broken = True
            raise
        self._committed_as(manifest.length, drop)

    def _wait_for_commit(self) -> None:
        """Wait for the commit in flight; its failure breaks the writer (and is raised)."""
        if self._pending is None:
            return
        future, length, drop = self._pending
        self._pending = None
        try:
            future.result()
        except BaseException:
            self._broken = True
            raise
        self._committed_as(length, drop)

    def _committed_as(self, length: int, drop: set[str]) -> None:
        self.committed = length
        for name in sorted(drop):
            self.backend.delete_array(name)
            self.checksums.pop(name, None)
        self.obsolete -= drop

    def close(self) -> None:
        """Commit, lay out ragged fields, trim files to the exact length, mark the store complete.

        Raises
        ------
        EmptySourceError
            If nothing was ever appended (there is no schema to make a store from).
        """
        if self._closed:
            return
        try:
            if self._broken:
                return
            if self._schema is None:
                self._remove_empty()
                msg = (
                    f"nothing was written to {str(self.path)!r}: the source yielded no batch, "
                    "so there is no schema to build a store from"
                )
                raise EmptySourceError(msg)
            try:
                self._wait_for_commit()
                for fw in self._fields.values():
                    fw.finish()
                lengths, manifest, drop = self._snapshot(complete=True)
                self.backend.sync(lengths)
                self.backend.finalize(lengths)
                self.backend.write_manifest(manifest)
                self._committed_as(manifest.length, drop)
            except BaseException:
                self._broken = True
                raise
        finally:
            self._release()

    def abort(self) -> None:
        """Commit what was appended and release the store, leaving it incomplete (resumable)."""
        if self._closed:
            return
        try:
            if not self._broken and self._schema is not None:
                self.commit()
            elif self._schema is None:
                self._remove_empty()
        finally:
            self._release()

    def _remove_empty(self) -> None:
        """Remove a store that never got its first commit (nothing in it is data)."""
        with contextlib.suppress(OSError):
            self.backend.destroy()

    def _release(self) -> None:
        self._closed = True
        self._finalizer.detach()
        if self._committer is not None:
            if self._pending is not None:
                # A commit still in flight after a failure: let it finish before closing files.
                with contextlib.suppress(BaseException):
                    self._pending[0].result()
                self._pending = None
            self._committer.shutdown(wait=True)
        if self._progress is not None:
            self._progress.close()
        self.backend.close()
        for fw in self._fields.values():
            for a in fw.arrays.values():
                a.release_buffer()
        # A lock file beside the store (zarr, hdf5) goes with the writer; one inside stays.
        self._lock.release(remove=self._abandoned.sibling)

    def __enter__(self) -> Writer:
        if self._progress_flag is not False and self._progress is None:
            self._progress = Progress(
                self._progress_flag, self.length_expected, self.path, self.path.name
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.abort()
        except OocstoreError:
            log.exception("could not commit %s after an error", self.path)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        where = f"{str(self.path)!r} {self.backend_name}"
        return f"<oocstore.Writer {where} {self.length} samples {state}>"


def _existing_store_backend(path: Path) -> str | None:
    try:
        return detect_backend(path)
    except (UnknownBackendError, CorruptStoreError):
        return None
    except OSError:
        return None


def _as_max_shapes(
    max_shape: Mapping[str, ShapeLike] | ShapeLike | None,
) -> dict[str, tuple[int, ...]]:
    if max_shape is None:
        return {}
    if isinstance(max_shape, Mapping):
        return {str(k): tuple(int(d) for d in v) for k, v in max_shape.items()}
    msg = "max_shape must be a dict mapping field names to shapes, e.g. {'images': (256, 256, 3)}"
    raise TypeError(msg)
