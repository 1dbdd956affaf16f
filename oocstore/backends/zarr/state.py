"""The writer's state of one array: its layout, its reader, the rows written, and the chunk
file kept open for in-place writes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..._direct import DIRECT_AFTER, DirectWriter
from .spec import _Layout
from .view import _UnitReader

# -- writing ------------------------------------------------------------------------------------


@dataclass
class _WriteState:
    """Writer-side state of one array."""

    layout: _Layout
    reader: _UnitReader
    written: int = 0
    """Rows written so far (committed rows after a resume)."""
    meta_dirty: bool = False
    """The in-memory ``zarr.json`` (its shape) differs from the file."""
    dirs: set[Path] = field(default_factory=set)
    """Directories known to exist."""
    zarr_array: Any = None
    chunk: _OpenChunk | None = None
    """The uncompressed chunk file being filled in place, kept open while rows go into it."""
    run: int = 0
    """Bytes written in place so far: a run that goes on from one chunk file to the next."""

    def close_chunk(self) -> None:
        """Put the open chunk file's rows in the file and close it."""
        chunk, self.chunk = self.chunk, None
        if chunk is not None:
            try:
                chunk.writer.close()
            finally:
                os.close(chunk.fd)

    def next_chunk(self, path: Path, fd: int) -> None:
        """Go on with chunk file ``path`` (open as ``fd``): the same writer, retargeted."""
        old = self.chunk
        if old is None:
            after = max(DIRECT_AFTER - self.run, 0)
            self.chunk = _OpenChunk(path, fd, DirectWriter(fd, path, after=after))
            return
        # self.chunk keeps the same writer meanwhile: a sync in the commit thread drains it,
        # and retarget() has put the old file's rows in it before it moves on.
        try:
            old.writer.retarget(fd, path)
        finally:
            os.close(old.fd)
        self.chunk = _OpenChunk(path, fd, old.writer)

    def drain_chunk(self) -> None:
        """Every row written into the open chunk file is in the file (before reading or
        syncing it; may run in the commit thread)."""
        chunk = self.chunk
        if chunk is not None:
            chunk.writer.drain()


@dataclass
class _OpenChunk:
    path: Path
    fd: int
    writer: DirectWriter
