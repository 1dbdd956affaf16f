"""``oocstore.write(dask_array, path)``: Dask's own workers write the store, region by region.

The parent creates the store at the arrays' full length (schema from their dtypes and
shapes, files preallocated) and commits it empty. Every array is rechunked along axis 0 to
regions of whole store chunks (so no chunk file is shared by two tasks) and whole samples;
one task per region writes its rows straight into the files through the backend's
:class:`~oocstore.backends.base.RegionWriter`, fsyncs them and returns their checksums. The
parent declares the run of finished regions after the committed rows as they come in
(:class:`oocstore._parallel.RegionLedger`) and closes the store when all are done.

A failing task (or a lost worker) leaves the store incomplete, declaring only regions that
were written; ``oocstore.write(darr, path, resume=True)`` writes the rest. Works on the
threaded and process schedulers and on ``dask.distributed``: the tasks carry paths and
numbers only, and import oocstore where they run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import dask as _dask
import dask.array as _da
import numpy as np
from dask.callbacks import Callback

from .._parallel import MAX_REGIONS, Region, RegionLedger, Spans, alignment, region_rows
from ..backends.base import RegionWriter
from ..errors import BatchError, SchemaError

if TYPE_CHECKING:
    from ..writer import WriteOptions

    pass

__all__ = ["is_dask_source", "write_dask"]

# Dask ships without type hints: its modules are Any here, as mypy strict would have them.
dask: Any = _dask
da: Any = _da


def is_dask_source(source: Any) -> bool:
    """True for a ``dask.array.Array``, or a tuple/list/dict holding at least one."""
    if isinstance(source, da.Array):
        return True
    if isinstance(source, Mapping):
        return any(isinstance(v, da.Array) for v in source.values())
    if isinstance(source, tuple | list):
        return any(isinstance(v, da.Array) for v in source)
    return False


def _as_arrays(source: Any) -> tuple[Any, dict[str, Any] | list[Any]]:
    """``(empty batch of the same structure, arrays)``: arrays by key or in order."""

    def conv(a: Any) -> Any:
        arr = a if isinstance(a, da.Array) else da.from_array(np.asarray(a))
        if arr.ndim == 0:
            msg = "a Dask array of a store field needs a sample axis (axis 0), not a scalar"
            raise BatchError(msg, actual=str(arr))
        return arr

    def empty(a: Any) -> np.ndarray:
        return np.empty((0, *a.shape[1:]), dtype=a.dtype)

    if isinstance(source, Mapping):
        arrays = {str(k): conv(v) for k, v in source.items()}
        return {k: empty(a) for k, a in arrays.items()}, arrays
    if isinstance(source, tuple | list):
        items = [conv(v) for v in source]
        return tuple(empty(a) for a in items), items
    arr = conv(source)
    return empty(arr), [arr]


def _check(arrays: dict[str, Any]) -> int:
    """The common length of ``arrays``; BatchError if lengths differ or are unknown."""
    lengths = {}
    for name, a in arrays.items():
        if any(math.isnan(c) for c in a.chunks[0]):
            msg = "the Dask array's chunk sizes along axis 0 are unknown (nan)"
            raise BatchError(
                msg,
                field=name,
                hint="call .compute_chunk_sizes() on it first (the store is sized up front)",
            )
        for axis, chunks in enumerate(a.chunks[1:], 1):
            if any(math.isnan(c) for c in chunks):
                msg = f"the Dask array's size along axis {axis} is unknown (nan)"
                raise BatchError(msg, field=name, hint="call .compute_chunk_sizes() on it first")
        lengths[name] = int(a.shape[0])
    if len(set(lengths.values())) > 1:
        raise BatchError(
            "fields hold different numbers of samples",
            expected="the same length on axis 0 for every Dask array",
            actual=lengths,
        )
    return next(iter(lengths.values()))


def _write_block(
    writers: dict[str, RegionWriter],
    start: int,
    names: list[str],
    dtypes: list[str],
    *blocks: np.ndarray,
) -> tuple[int, int, Spans]:
    """One Dask task: write rows ``start..`` of every field from its computed blocks."""
    values = {}
    n = len(blocks[0])
    for name, dtype, block in zip(names, dtypes, blocks, strict=True):
        arr = np.asarray(block)
        if len(arr) != n:
            msg = f"block of rows {start}.. has {len(arr)} rows of {name!r}, others {n}"
            raise BatchError(msg, field=name)
        if arr.dtype != np.dtype(dtype):
            # Dask's dtype is a promise its blocks may break (map_blocks without dtype=).
            if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
                raise SchemaError(
                    "a computed block's dtype differs from the Dask array's",
                    field=name,
                    batch_index=start,
                    expected=dtype,
                    actual=str(arr.dtype),
                )
            arr = arr.astype(dtype)
        values[name] = arr
    region = Region({k: writers[k] for k in names}, start)
    region.write(values)
    return start, start + n, region.finish()


def _client() -> Any:
    """The ``distributed.Client`` Dask would compute with now, or None (local schedulers)."""
    from dask.base import get_scheduler

    get = get_scheduler()  # type: ignore[no-untyped-call]
    owner = getattr(get, "__self__", None)
    if owner is not None and type(owner).__name__ == "Client":
        return owner
    return None


def _run(tasks: list[Any], finished: Callable[[tuple[int, int, Spans]], None]) -> None:
    """Compute ``tasks``, passing each result to ``finished`` as it comes (in this thread).

    Raises the first task's error once the tasks that could run have.
    """
    client = _client()
    if client is not None:
        from distributed import as_completed

        futures = client.compute(tasks)
        error: BaseException | None = None
        for fut in as_completed(futures, loop=client.loop):  # type: ignore[no-untyped-call]
            if fut.status == "finished":
                finished(fut.result())
            elif error is None:
                error = fut.exception()
                for other in futures:
                    if not other.done():
                        other.cancel()
        if error is not None:
            raise error
        return
    keys = {t.key for t in tasks}

    class _Collect(Callback):
        # Local schedulers call _posttask in the thread that called compute.
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker: Any) -> None:
            if key in keys:
                finished(result)

    with _Collect():  # type: ignore[no-untyped-call]
        dask.compute(*tasks)


def write_dask(source: Any, path: str | os.PathLike[str], options: WriteOptions) -> None:
    """Write a Dask array (or a tuple/dict of them, aligned on axis 0) with Dask's workers.

    See :func:`oocstore.write`; ``options`` are those it was given.
    """
    from ..writer import Writer

    names = options.names
    empty, given = _as_arrays(source)
    if isinstance(given, dict):
        labelled = given
    else:  # names only label the length check's message; the writer checks them
        named = names is not None and len(names) == len(given)
        labels = [str(names[k]) if named else str(k) for k in range(len(given))]  # type: ignore[index]
        labelled = dict(zip(labels, given, strict=True))
    n = _check(labelled)
    if n == 0:
        from ..errors import EmptySourceError

        msg = f"nothing was written to {os.fspath(path)!r}: the Dask arrays have no samples"
        raise EmptySourceError(msg)
    writer = Writer(path, options.with_(length=n, batched=True))
    with writer:
        writer.append(empty)  # the schema; every array preallocated for n rows
        writer.skip = 0
        assert writer.schema is not None
        fields = list(writer.schema.names)
        arrays = (
            {f: given[f] for f in fields}
            if isinstance(given, dict)
            else dict(zip(fields, given, strict=True))
        )
        if writer.length > n:
            msg = (
                f"the store at {os.fspath(path)!r} holds {writer.length} samples, more than the "
                f"{n} of the Dask arrays"
            )
            raise ValueError(msg)
        align = alignment(writer)
        head = min(-(-writer.length // align) * align, n)
        if head > writer.length:  # a resumed store that stopped inside a chunk: finish it here
            computed = dask.compute(*(a[writer.length : head] for a in arrays.values()))
            writer.append(dict(zip(fields, computed, strict=True)))
        if head < n:
            row = sum(s.sample_nbytes for s in writer.schema.fields)
            typical = max(int(np.median(a.chunks[0])) for a in arrays.values())
            step = region_rows(align, n - head, row)
            # Near the arrays' own chunking, so rechunking moves little data.
            step = min(step, max(-(-typical // align), 1) * align)
            step = max(step, -(-(n - head) // MAX_REGIONS // align) * align)
            writers = writer.region_writers(n)
            parts = [
                a[head:].rechunk({0: step, **dict.fromkeys(range(1, a.ndim), -1)})
                for a in arrays.values()
            ]
            blocks = [np.asarray(p.to_delayed(), dtype=object).reshape(-1) for p in parts]
            dtypes = [str(np.dtype(a.dtype)) for a in arrays.values()]
            write_block = dask.delayed(_write_block, pure=False)
            tasks = [
                write_block(writers, head + k * step, fields, dtypes, *(b[k] for b in blocks))
                for k in range(len(blocks[0]))
            ]
            ledger = RegionLedger(writer)
            _run(tasks, lambda r: ledger.finished(*r))
