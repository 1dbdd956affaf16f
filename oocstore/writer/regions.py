"""Rows written by other processes (``workers=N``, Dask) into a writer's store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..backends.base import RegionWriter
from ..errors import (
    RaggedError,
)

if TYPE_CHECKING:
    from .core import Writer


def region_arrays(w: Writer) -> list[str]:
    """The physical arrays region writers fill (every array of every field)."""
    return [a.name for a in w._live_arrays()]


def region_writers(w: Writer, stop: int) -> dict[str, RegionWriter]:
    """Picklable writers of rows ``[length, stop)`` for tasks in other processes.

    Everything appended so far is committed first, and every array gets storage for
    ``stop`` rows. The rows count only once :meth:`adopt_rows` declares them.

    Raises
    ------
    RaggedError
        If a field is not dense (regions of padded or packed fields are not supported).
    """
    w._check_open()
    for fw in w._fields.values():
        if fw.layout.kind != "dense":
            msg = f"field is stored {fw.layout.kind}: parallel writers fill dense fields only"
            raise RaggedError(
                msg,
                field=fw.spec.name,
                hint="write this source without workers= (one process)",
            )
    w.commit()
    out = {}
    for a in w._live_arrays():
        out[a.name] = w.backend.region_writer(a.name, stop)
        a.capacity = max(a.capacity, stop)
    return out


def adopt_rows(w: Writer, stop: int, spans: Mapping[str, Sequence[list[Any]]]) -> None:
    """Count rows ``[length, stop)`` that region writers made durable, with their
    checksum spans; the next commit declares them."""
    w._check_open()
    if stop < w.length:
        msg = f"rows up to {stop} adopted, but {w.length} are already appended"
        raise ValueError(msg)
    nbytes = 0
    for a in w._live_arrays():
        w._close_span(a)
        if a.rows != w.length:
            msg = f"array {a.name!r} holds {a.rows} rows, the store {w.length}"
            raise ValueError(msg)
        a.skip_to(stop)
        w._record_spans(a, [list(sp) for sp in spans.get(a.name, ())])
        w.backend.rows_written(a.name, stop)
        nbytes += (stop - w.length) * a.row_nbytes
    if w._progress is not None:
        w._progress.update(stop - w.length, nbytes)
    w.length = stop
    w.bytes_written += nbytes
    w._since_commit += nbytes
