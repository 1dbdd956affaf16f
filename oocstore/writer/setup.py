"""Where a writer starts: a new store, or an existing one to replace or resume."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import sizing
from .._lock import StoreLock
from ..backends import backend_class
from ..batches import Batch
from ..checksum import valid_span
from ..errors import (
    CorruptStoreError,
    RaggedError,
    StoreExistsError,
)
from ..manifest import FieldLayout, Manifest
from ..ragged import (
    sample_shapes,
)
from ..schema import FieldSpec, Schema
from .fields import _FieldWriter, _growing_axes
from .options import ShapeLike
from .staging import _StagedArray

if TYPE_CHECKING:
    from .core import Writer


log = logging.getLogger("oocstore.writer")

_INITIAL_BYTES = sizing.BLOCK_BYTES  # most of a first allocation when the length is unknown
_INITIAL_BATCHES = 4  # ... which is this many first batches' worth, if that is less


def clear_existing(w: Writer, existing_backend: str | None, overwrite: bool) -> None:
    path = w.path
    if not w.backend.local:
        if not overwrite or existing_backend is None:
            what = "a store" if existing_backend else "something that is not a store"
            msg = f"{what} already exists at {w.location!r}" + (
                "; pass overwrite=True to replace it or resume=True to continue it"
                if existing_backend
                else ""
            )
            raise StoreExistsError(msg)
        w.backend.destroy()
        return
    if existing_backend is None and path.is_dir() and not path.is_symlink():
        leftovers = [p.name for p in path.iterdir() if p.name != ".lock"]
        if not leftovers:
            return  # an empty directory, or one a writer died in before its first commit
        cls = backend_class(w.backend_name)
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


def reopen(w: Writer) -> None:
    manifest = w.backend.handle().read_manifest()
    capacities = w.backend.open_existing(manifest)
    w._schema = manifest.schema
    w.attrs = {**manifest.attrs, **w.attrs}
    w.length = w.committed = w.skip = manifest.length
    stored = manifest.extra.get("checksums", {})
    if isinstance(stored, dict) and isinstance(stored.get("spans"), dict):
        w.checksums = _checked_spans(stored["spans"], manifest, w.path)
    if w.names is None:
        w.names = list(manifest.schema.names)
    for spec in manifest.schema.fields:
        layout = manifest.layout(spec.name)
        fw = _FieldWriter(w, spec, layout)
        for aname in layout.arrays(spec.name):
            a = manifest.arrays[aname]
            fw.arrays[aname] = _StagedArray(
                w.backend,
                aname,
                a.dtype,
                a.shape,
                rows=a.length,
                capacity=capacities[aname],
                budget=w.budget,
            )
        if layout.kind == "packed":
            fw.values_rows = manifest.arrays[f"{spec.name}.values"].length
            fw.true_nbytes = fw.values_rows * spec.dtype.itemsize
        else:  # padded rows count whole: padding is never over-reported after a resume
            fw.true_nbytes = manifest.length * spec.sample_nbytes
        w._fields[spec.name] = fw
    if manifest.complete:
        # Appending to a closed store: say so before any byte changes.
        manifest.complete = False
        w.backend.write_manifest(manifest)
    log.debug("resuming %s at %d samples", w.path, w.length)


def expected_capacity(w: Writer) -> int:
    """Rows to allocate for per-sample arrays before the length is known exactly."""
    if w.length_expected is not None:
        return max(w.length_expected, w.length)
    return max(w.length, 1024)


def start(w: Writer, batch: Batch) -> None:
    """Create the store's arrays from the first batch."""
    schema = Schema.infer(batch, batch_index=w._batch_index)
    for spec in schema.fields:
        if spec.ragged and w.ragged == "error":
            value = batch.fields[spec.name]
            shapes = sorted({v.shape for v in value}) if isinstance(value, list) else []
            raise RaggedError(
                "samples of the first batch differ in shape and ragged='error'",
                field=spec.name,
                batch_index=w._batch_index,
                expected=shapes[0] if shapes else spec.shape,
                actual=shapes[-1] if shapes else spec.shape,
                hint="pass ragged='pad' or ragged='pack' to store samples of varying shape",
            )
    n = batch.size
    if w.backend.local:
        for spec in schema.fields:  # before anything is allocated for this batch
            sizing.check_samples_fit(
                w.path, spec.name, spec.sample_nbytes, n, batch_index=w._batch_index
            )
    if w.length_expected is not None:
        capacity = w.length_expected
    elif w.n_batches_hint is not None and n:
        capacity = w.n_batches_hint * n  # exact unless batches differ in size
        w.length_expected = capacity
    else:
        # A first guess only, a few batches' worth (growth is geometric from there), and
        # shrunk to nothing if the disk cannot hold it (_new_array).
        first = min(_INITIAL_BATCHES * n * schema.sample_nbytes, _INITIAL_BYTES, w.budget // 4)
        capacity = max(n, first // max(schema.sample_nbytes, 1), 1)
        w._guessed_capacity = True
    if not w._guessed_capacity and w.backend.local:
        sizing.check_disk_space(w.path, capacity * schema.sample_nbytes)
    try:
        create_fields(w, schema, batch, capacity)
    except BaseException:
        for fw in w._fields.values():
            for name in list(fw.arrays):
                with contextlib.suppress(OSError):
                    w.backend.delete_array(name)
        w._fields = {}
        raise
    w._schema = schema
    w.commit()  # an empty, valid store from the start


def create_fields(w: Writer, schema: Schema, batch: Batch, capacity: int) -> None:
    for spec in schema.fields:
        fill = w.fill.get(spec.name, 0) if isinstance(w.fill, Mapping) else w.fill
        bound = w.max_shape.get(spec.name)
        fw = _FieldWriter(w, spec, FieldLayout(kind="dense", fill=fill))
        w._fields[spec.name] = fw
        if bound is not None:
            if len(bound) != spec.ndim:
                msg = (
                    f"max_shape for field {spec.name!r} has {len(bound)} axes but its "
                    f"samples have {spec.ndim} ({spec.shape})"
                )
                raise RaggedError(msg, field=spec.name)
            shape = tuple(max(a, b) for a, b in zip(bound, spec.shape, strict=True))
            fw._padded_arrays(shape, capacity)
        elif spec.ragged and w.ragged == "pad" and w.backend.grows_rows:
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


def as_max_shapes(
    max_shape: Mapping[str, ShapeLike] | ShapeLike | None,
) -> dict[str, tuple[int, ...]]:
    if max_shape is None:
        return {}
    if isinstance(max_shape, Mapping):
        return {str(k): tuple(int(d) for d in v) for k, v in max_shape.items()}
    msg = "max_shape must be a dict mapping field names to shapes, e.g. {'images': (256, 256, 3)}"
    raise TypeError(msg)
