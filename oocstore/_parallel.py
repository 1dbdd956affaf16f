"""Parallel writes: tasks in other processes fill disjoint regions, the parent commits.

The parent creates the store at its full length (a :class:`~oocstore.writer.Writer` with
``length=``: files preallocated), commits what it appended itself, and hands out picklable
:class:`~oocstore.backends.base.RegionWriter` objects. Each task writes the rows of its own
region (a run of whole chunks), makes them durable and returns their CRC-32C spans. As regions
finish, in any order, the parent counts the longest run of finished regions after the
committed rows (:class:`RegionLedger`) and commits it: a task that fails or a worker that dies
leaves a store whose manifest declares only rows that were written, and ``resume=True``
writes the rest.

Used by :func:`oocstore.write` for Dask arrays (:mod:`oocstore.sources.dask`) and for
indexable sources with ``workers=N`` (:func:`write_indexable`, here).
"""

from __future__ import annotations

import copy
import math
import multiprocessing
import os
import pickle
from collections.abc import Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from typing import TYPE_CHECKING, Any

import crc32c
import numpy as np

from . import sizing
from .backends.base import RegionWriter
from .batches import split_batch
from .errors import EmptySourceError, RaggedError, WorkerFailedError
from .schema import Casting, Schema

if TYPE_CHECKING:
    from .writer import WriteOptions, Writer

__all__ = ["MAX_REGIONS", "Region", "RegionLedger", "alignment", "region_rows", "write_indexable"]

Spans = dict[str, list[Any]]
"""Per array, the ``[start, stop, crc32c hex]`` span of the rows a region wrote."""

MAX_REGIONS = 1024
"""At most this many regions per write: fewer, larger tasks for Dask's scheduler (each region's
checksum span is merged into at most ``checksum.MAX_SPANS`` per array by the writer)."""
REGION_BYTES = sizing.BLOCK_BYTES
"""Target bytes of one region over all fields, when nothing else decides."""


def alignment(writer: Writer) -> int:
    """Rows every region starts on: a common multiple of the arrays' chunk (or shard) rows,
    so every chunk file belongs to one region (not ``write_unit_rows``: a chunk that takes
    rows in place would still be created whole by each of two regions sharing it)."""
    rows = 1
    for name in writer.region_arrays():
        rows = math.lcm(rows, max(writer.backend.chunk_rows(name), 1))
    return rows


def region_rows(align: int, remaining: int, row_nbytes: int, *, parts: int = 1) -> int:
    """Rows per region: about :data:`REGION_BYTES`, at least ``parts`` regions when there is
    room, at most :data:`MAX_REGIONS`, always a multiple of ``align``."""
    rows = max(REGION_BYTES // max(row_nbytes, 1), 1)
    rows = min(rows, max(-(-remaining // max(parts, 1)), 1))
    rows = max(rows, -(-remaining // MAX_REGIONS))
    return max(-(-rows // align), 1) * align


class Region:
    """One task's rows: written in blocks from ``start`` on, hashed, synced at the end."""

    def __init__(self, writers: Mapping[str, RegionWriter], start: int) -> None:
        # A copy each: tasks in threads of one process share the objects the graph holds.
        self.writers = {k: copy.copy(w) for k, w in writers.items()}
        self.start = start
        self.pos = start
        self._crc = dict.fromkeys(writers, 0)

    def write(self, values: Mapping[str, np.ndarray]) -> None:
        """Write the next rows of every array (each the same number of rows)."""
        n = None
        for name, v in values.items():
            data = np.ascontiguousarray(v)
            self.writers[name].write(self.pos, data)
            if data.nbytes:
                self._crc[name] = crc32c.crc32c(
                    data.reshape(-1).view(np.uint8).data, self._crc[name]
                )
            n = len(data)
        self.pos += n or 0

    def finish(self) -> Spans:
        """Make the rows durable and return their checksum spans."""
        try:
            for w in self.writers.values():
                w.sync()
        finally:
            for w in self.writers.values():
                w.close()
        if self.pos == self.start:
            return {}
        return {name: [[self.start, self.pos, f"{c:08x}"]] for name, c in self._crc.items()}


class RegionLedger:
    """Regions finish in any order; the rows the writer may declare are the run of finished
    regions after its committed rows. Committed as they grow, at the writer's cadence."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self._done: dict[int, tuple[int, Spans]] = {}

    def finished(self, start: int, stop: int, spans: Spans) -> None:
        """Region ``[start, stop)`` is durable with ``spans``."""
        self._done[start] = (stop, spans)
        w = self.writer
        while w.length in self._done:
            end, sp = self._done.pop(w.length)
            w.adopt_rows(end, sp)
        if w._since_commit >= w.commit_every_bytes:
            w.commit()

    @property
    def pending(self) -> int:
        """Regions finished but not yet declarable (a region before them is missing)."""
        return len(self._done)


# -- workers=N: an indexable source filled by worker processes ---------------------------------

_SOURCE: Any = None


def _init_source(pickled: bytes) -> None:
    global _SOURCE
    _SOURCE = pickle.loads(pickled)  # the parent's own source object, pickled by the parent


def _fill_region(
    writers: dict[str, RegionWriter],
    schema: Schema,
    names: list[str] | None,
    casting: Casting,
    start: int,
    stop: int,
    block_rows: int,
) -> tuple[int, int, Spans]:
    """Read samples ``[start, stop)`` of the worker's source and write them as one region."""
    source = _SOURCE
    region = Region(writers, start)
    rows = min(block_rows, stop - start)
    bufs = {s.name: np.empty((rows, *s.shape), dtype=s.dtype) for s in schema.fields}
    k = 0
    for i in range(start, stop):
        batch = split_batch(source[i], names=names, batched=False, batch_index=i)
        values = schema.check(batch, batch_index=i, casting=casting)
        for spec in schema.fields:
            v = values[spec.name]
            if isinstance(v, list) or v.shape[1:] != spec.shape:
                got = v[0].shape if isinstance(v, list) else v.shape[1:]
                raise RaggedError(
                    "a sample's shape differs from sample 0's; parallel writers need samples "
                    "of one shape",
                    field=spec.name,
                    batch_index=i,
                    expected=spec.shape,
                    actual=tuple(got),
                    hint="write this source without workers= (ragged='pad' pads it)",
                )
            bufs[spec.name][k] = v[0]
        k += 1
        if k == rows:
            region.write(bufs)
            k = 0
    if k:
        region.write({name: b[:k] for name, b in bufs.items()})
    return start, stop, region.finish()


def _context() -> Any:
    # Never fork: the parent may hold threads (commit, hashing, a DataLoader's) and locks.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def write_indexable(
    source: Any, path: str | os.PathLike[str], options: WriteOptions, *, workers: int
) -> None:
    """Write ``source[0] ... source[len(source) - 1]`` (one sample each) with ``workers``
    processes filling disjoint regions; see :func:`oocstore.write`."""
    from .writer import Writer

    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        msg = f"workers must be a positive number of processes, not {workers!r}"
        raise ValueError(msg)
    if isinstance(source, Mapping | tuple) or not (
        hasattr(source, "__len__") and hasattr(source, "__getitem__")
    ):
        msg = (
            f"workers= needs an indexable source (len() and [i] giving one sample, such as a "
            f"map-style Dataset or a list of samples), not {type(source).__name__}"
        )
        raise TypeError(msg)
    n = len(source)
    if n == 0:
        msg = f"nothing was written to {os.fspath(path)!r}: the source has no samples"
        raise EmptySourceError(msg)
    try:
        pickled = pickle.dumps(source)
    except Exception as err:
        msg = (
            f"workers= sends the source to each worker process, but {type(source).__name__} "
            f"cannot be pickled ({err}); define it at module level, or pass workers=1"
        )
        raise TypeError(msg) from err
    first = split_batch(source[0], names=options.names, batched=False, batch_index=0)
    empty = {k: np.asarray(v)[:0] for k, v in first.fields.items()}
    writer = Writer(path, options.with_(names=list(first.fields), length=n, batched=True))
    casting = options.casting
    with writer:
        writer.append(empty)  # the schema, and every array preallocated for n rows
        writer.skip = 0
        if writer.length > n:
            msg = f"the store at {os.fspath(path)!r} holds {writer.length} samples, the source {n}"
            raise ValueError(msg)
        assert writer.schema is not None
        schema = writer.schema
        align = alignment(writer)
        head = min(-(-writer.length // align) * align, n)
        if head > writer.length:  # a resumed store that stopped inside a chunk: finish it here
            writer.append(_stack(source, schema, list(first.fields), writer.length, head, casting))
        if head < n:
            row = sum(s.sample_nbytes for s in schema.fields)
            step = region_rows(align, n - head, row, parts=4 * workers)
            block = max(sizing.stage_rows(row, writer.budget // max(workers, 1), align), align)
            block = min(block, step)
            writers = writer.region_writers(n)
            ledger = RegionLedger(writer)
            starts = list(range(head, n, step))
            error: BaseException | None = None
            with ProcessPoolExecutor(
                workers, mp_context=_context(), initializer=_init_source, initargs=(pickled,)
            ) as pool:
                futures: list[Future[tuple[int, int, Spans]]] = [
                    pool.submit(
                        _fill_region,
                        writers,
                        schema,
                        list(first.fields),
                        casting,
                        a,
                        min(a + step, n),
                        block,
                    )
                    for a in starts
                ]
                todo = set(futures)
                while todo:
                    done, todo = wait(todo, return_when=FIRST_EXCEPTION)
                    for f in sorted(done, key=futures.index):
                        failed = f.exception()
                        if failed is None:
                            ledger.finished(*f.result())
                        elif error is None:
                            error = failed
                    if error is not None:
                        for f in todo:
                            f.cancel()
                        # Regions already running finish (their rows may still be declared).
                        for f in sorted(todo, key=futures.index):
                            if not f.cancelled() and f.exception() is None:
                                ledger.finished(*f.result())
                        todo = set()
            if error is not None:
                from concurrent.futures.process import BrokenProcessPool

                if isinstance(error, BrokenProcessPool):
                    msg = (
                        f"a worker process writing {os.fspath(path)!r} died ({error}); the store "
                        f"keeps the {writer.length} samples written before it: write again with "
                        "resume=True to finish it"
                    )
                    raise WorkerFailedError(msg) from error
                raise error


def _stack(
    source: Any, schema: Schema, names: list[str], start: int, stop: int, casting: Casting
) -> dict[str, Any]:
    """Samples ``[start, stop)`` of ``source`` as one batch (read in the parent)."""
    out = {s.name: np.empty((stop - start, *s.shape), dtype=s.dtype) for s in schema.fields}
    for i in range(start, stop):
        batch = split_batch(source[i], names=names, batched=False, batch_index=i)
        for name, v in schema.check(batch, batch_index=i, casting=casting).items():
            out[name][i - start] = v if isinstance(v, list) else v[0]
    return out
