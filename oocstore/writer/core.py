"""The writer: batches in, durable commits out, resumable after a crash.

Data flows batch -> fields (batches.py) -> schema check (schema.py) -> per-field layout (dense,
padded or packed; fields.py) -> staged physical arrays (staging.py) -> backend. A commit flushes
the stages, makes the data durable (``backend.sync``) and only then replaces the manifest that
declares it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Unpack

from .. import sizing
from .._lock import NoLock, StoreLock, refused_write
from ..backends import open_for_writing
from ..backends.base import Backend, RegionWriter
from ..batches import split_batch
from ..checksum import ALGORITHM, MAX_SPANS, coalesce
from ..errors import (
    EmptySourceError,
    OocstoreError,
    WriterClosedError,
)
from ..manifest import Manifest
from ..progress import Progress
from ..schema import Casting, Schema
from . import regions
from .fields import _FieldWriter
from .options import PathLike, RaggedMode, ShapeLike, WriteKwargs, WriteOptions
from .setup import as_max_shapes, clear_existing, reopen, start
from .setup import expected_capacity as _expected_capacity
from .staging import _StagedArray

__all__ = ["PathLike", "RaggedMode", "ShapeLike", "WriteOptions", "Writer"]

log = logging.getLogger("oocstore.writer")


class _Abandoned:
    """Undo what a writer collected without ``close()`` holds: its lock, and a store it made.

    A store this writer created and never committed holds no data, so it is removed with
    its lock file; a committed store is left as its last commit says (resumable). Nothing
    happens in a forked child, whose writer object is the parent's.
    """

    def __init__(self, backend: Backend, lock: StoreLock | NoLock, sibling: bool) -> None:
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


_WRITER_DEFAULTS = WriteOptions(batched=True, progress=False)


class Writer:
    """Write batches into a store incrementally; a context manager.

    Parameters
    ----------
    path
        Where the store goes (a path, or an fsspec URL of a Zarr store).
    options
        A [`WriteOptions`][oocstore.WriteOptions]; keywords given beside it replace its
        fields. Without one, a writer appends batches (``batched=True``) and shows no
        progress bar (``progress=False``).
    **changes
        Any field of [`WriteOptions`][oocstore.WriteOptions] (``names``, ``length``,
        ``backend``, ``resume``, ``ragged``, ``chunks``, ``storage_options``...), which
        documents each one.

    Raises
    ------
    StoreExistsError
        If a store exists at ``path`` and neither ``overwrite`` nor ``resume`` is set.
    StoreLockedError
        If another process is writing the store.
    TypeError
        If a keyword is not an option.
    """

    def __init__(
        self,
        path: PathLike,
        options: WriteOptions | None = None,
        /,
        **changes: Unpack[WriteKwargs],
    ) -> None:
        opts = (options if options is not None else _WRITER_DEFAULTS).with_(**changes)
        self.options = opts
        """The options this writer was made with."""
        self.path = Path(path)
        self.names = list(opts.names) if opts.names is not None else None
        self.length_expected = int(opts.length) if opts.length is not None else None
        self.batched = opts.batched is not False
        self.ragged: RaggedMode = opts.ragged
        self.fill = opts.fill
        self.max_shape = as_max_shapes(opts.max_shape)
        self.padding_warning = opts.padding_warning
        self.casting: Casting = opts.casting
        self.budget = sizing.memory_budget(opts.memory)
        self.commit_every_seconds = opts.commit_seconds
        self.attrs = dict(opts.attrs or {})
        self.obsolete: set[str] = set()  # arrays to delete once a manifest no longer names them
        self.n_batches_hint: int | None = None
        self.checksums: dict[str, list[list[Any]]] = {}  # array -> [[start, stop, hash], ...]
        self._pending: tuple[Future[None], int, set[str]] | None = None
        self._guessed_capacity = False
        self._progress_flag = opts.progress
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

        chunks, shards = opts.chunks, opts.shards
        self.backend, existing_backend = open_for_writing(
            path,
            opts.backend,
            resume=opts.resume,
            options={
                "chunks": dict(chunks) if isinstance(chunks, Mapping) else chunks,
                "compressors": opts.compressors,
                "length": self.length_expected,
                "shards": dict(shards) if isinstance(shards, Mapping) else shards,
            },
            storage_options=opts.storage_options,
        )
        cls = type(self.backend)
        self.backend_name = cls.name
        self.location = self.backend.location
        """Where the store is: its path, or its URL."""
        self._lock: StoreLock | NoLock = self.backend.lock()
        exists = existing_backend is not None or self.backend.exists()
        self._committer = (
            ThreadPoolExecutor(1, thread_name_prefix="oocstore-commit")
            if cls.background_sync
            else None
        )
        self.commit_every_bytes = opts.commit_bytes or sizing.commit_bytes(
            self.budget, background=cls.background_sync
        )

        # A writer dropped without close() is undone when it is collected (or at exit).
        sibling = isinstance(self._lock, StoreLock) and self._lock.path.parent != self.path
        self._abandoned = _Abandoned(self.backend, self._lock, sibling)
        if existing_backend is not None and opts.resume:
            self._lock.acquire()
            try:
                reopen(self)
            except BaseException:
                self.backend.close()
                self._lock.release()
                raise
            self._abandoned.committed = True
            self._finalizer = weakref.finalize(self, self._abandoned)
            return
        if exists:
            clear_existing(self, existing_backend, opts.overwrite)
        try:
            self.backend.create()
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            raise refused_write(err, Path(err.filename or self.path)) from None
        self._lock.acquire()  # refused: the store is another writer's, left as it is
        self._finalizer = weakref.finalize(self, self._abandoned)

    def expected_capacity(self) -> int:
        """Rows to allocate for per-sample arrays before the length is known exactly."""
        return _expected_capacity(self)

    # -- regions written by other processes (oocstore._parallel, sources.dask) ------------------

    def region_arrays(self) -> list[str]:
        """The physical arrays region writers fill (every array of every field)."""
        return regions.region_arrays(self)

    def region_writers(self, stop: int) -> dict[str, RegionWriter]:
        """Picklable writers of every array's rows, storage allocated for ``[0, stop)``."""
        return regions.region_writers(self, stop)

    def adopt_rows(self, stop: int, spans: Mapping[str, Sequence[list[Any]]]) -> None:
        """Take the rows ``[length, stop)`` that region writers filled (with their spans)."""
        regions.adopt_rows(self, stop, spans)

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
            start(self, b)
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
