"""One logical field: its layout (dense, padded or packed), layout changes and padding checks."""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import sizing
from .._durable import free_bytes
from ..batches import FieldValue
from ..errors import (
    CorruptStoreError,
    DiskFullError,
    PaddingWarning,
    RaggedError,
)
from ..manifest import FieldLayout
from ..ragged import (
    check_packed,
    fits,
    max_shape_of,
    pack_block,
    pad_block,
    region,
    sample_shapes,
    unpack_block,
)
from ..schema import FieldSpec
from .staging import _EarlyFlush, _StagedArray

if TYPE_CHECKING:
    from .core import Writer

log = logging.getLogger("oocstore.writer")

_SHAPES_DTYPE = np.dtype("<i8")
_OFFSETS_DTYPE = np.dtype("<i8")
_PADDING_WAYS_OUT = (
    "To store samples without padding pass ragged='pack' (store.sample() and the packed "
    "array give each sample its true shape); to bring images to one size, resize them first "
    "(oocstore ingest --size WxH); max_shape= declares a padded shape up front"
)


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
        if at_close and owner.backend.local:
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
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
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
