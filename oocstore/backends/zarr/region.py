"""A picklable writer of one array's rows from another process (Dask tasks, workers=N)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..._durable import (
    fsync_dir,
    fsync_fd,
    open_nofollow,
    preallocate,
    pwrite_all,
)
from ..base import RegionWriter
from .codecs import _encode_unit
from .spec import _disk_errors, _Layout, _open_layout
from .view import _open_zarr


class ZarrRegionWriter(RegionWriter):
    """Whole chunk (or shard) files of one array, written from any process.

    The layout is read from the array's ``zarr.json`` where the writer runs. A region starts
    on a unit (chunk, or shard) boundary and ends on one or at the array's end, so every file
    written here belongs to this region alone: it is written whole, never read back.
    """

    def __init__(
        self, name: str, path: Path, dtype: np.dtype[Any], row_shape: tuple[int, ...], end: int
    ) -> None:
        self.name = name
        self.path = path
        self.dtype = dtype
        self.row_shape = row_shape
        self.end = end
        """The rows to be written in all: a region ending here may end inside a chunk."""
        self._layout: _Layout | None = None
        self._files: set[Path] = set()
        self._dirs: set[Path] = set()

    def __getstate__(self) -> dict[str, Any]:
        # Paths and numbers only: codec objects are rebuilt from zarr.json where it lands.
        return {
            "name": self.name,
            "path": self.path,
            "dtype": self.dtype,
            "rows": self.row_shape,
            "end": self.end,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        args = (state["name"], state["path"], state["dtype"], state["rows"], state["end"])
        self.__init__(*args)  # type: ignore[misc]

    def _lay(self) -> _Layout:
        if self._layout is None:
            self._layout = _open_layout(self.path, self.dtype, self.row_shape)
        return self._layout

    def write(self, start: int, values: np.ndarray) -> None:
        lay = self._lay()
        stop = start + len(values)
        if stop == start:
            return
        if stop > lay.capacity:
            msg = f"rows {start}..{stop} of {os.fspath(self.path)!r}: it has {lay.capacity} rows"
            raise IndexError(msg)
        data = np.ascontiguousarray(values, dtype=lay.store_dtype)
        if not lay.native or lay.tiled:
            arr = _open_zarr(self.path, read_only=False)  # its store fsyncs every key
            try:
                arr[start:stop] = data
            except Exception as err:
                msg = f"zarr could not write rows {start}.. of {os.fspath(self.path)!r}: {err}"
                raise OSError(errno.EIO, msg) from err
            return
        unit = lay.unit_rows
        if start % unit:
            msg = f"a region of {os.fspath(self.path)!r} starts at row {start}, inside a chunk"
            raise ValueError(msg)
        pos = start
        while pos < stop:
            u = pos // unit
            end = min(stop, (u + 1) * unit)
            if end - pos < unit and end not in (self.end, lay.capacity):
                msg = f"a region of {os.fspath(self.path)!r} ends at row {end}, inside a chunk"
                raise ValueError(msg)
            self._write_unit(lay, u, data[pos - start : end - start])
            pos = end

    def _write_unit(self, lay: _Layout, u: int, part: np.ndarray) -> None:
        path = lay.unit_path(u)
        if path.parent != lay.path:  # "/" chunk keys: c/<u>/0/0 directories
            with _disk_errors(path.parent):
                path.parent.mkdir(parents=True, exist_ok=True)
            d = path.parent
            while d != lay.path:
                self._dirs.add(d.parent)
                d = d.parent
        if lay.in_place:
            payload: bytes | memoryview = memoryview(part.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
            size = lay.chunk_rows * lay.row_nbytes  # zarr stores edge chunks whole
        else:
            block = part
            if len(part) < lay.unit_rows:
                block = np.zeros((lay.unit_rows, *lay.row_shape), dtype=lay.store_dtype)
                block[: len(part)] = part
            payload = _encode_unit(lay, block, len(part))
            size = len(payload)
        with _disk_errors(path):
            fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if size:
                preallocate(fd, 0, size, path)
            pwrite_all(fd, payload, 0, path)
        finally:
            os.close(fd)
        self._files.add(path)
        self._dirs.add(path.parent)

    def sync(self) -> None:
        files, self._files = self._files, set()
        dirs, self._dirs = self._dirs, set()
        for path in sorted(files):
            fd = open_nofollow(path, os.O_RDONLY)
            try:
                fsync_fd(fd, path)
            finally:
                os.close(fd)
        # Deepest first, so a new directory's own entries are durable before its name.
        for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            fsync_dir(d)
