"""A commit of the HDF5 backend: the record's payload, checked against its slot, written to
the older slot (and the root attribute) and made durable."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING

from ..._durable import fsync_fd
from ...errors import CommitRecordTooLargeError, CorruptStoreError
from ...manifest import Manifest
from .extents import _LAYOUT_VERSION
from .files import _File
from .h5 import ATTRIBUTE, _writing
from .record import _SLOT, HEADER_BYTES, _slot_bytes, _slot_offset

if TYPE_CHECKING:
    from .backend import Hdf5Backend


def record_bytes(b: Hdf5Backend, f: _File, manifest: Manifest, *, extents: bool = True) -> bytes:
    """The manifest with this file's extents, as the commit record's JSON (``extents=False``:
    with none, to measure what they take)."""
    arrays = {}
    for name in manifest.arrays:
        arr = f.arrays.get(name)
        if arr is None:
            msg = f"the manifest names {name!r}, which this writer has not created"
            raise CorruptStoreError(os.fspath(f.path), msg)
        arrays[name] = arr.layout_json()
        if not extents:
            arrays[name]["extents"] = []
    extra = {k: v for k, v in manifest.extra.items() if k != "hdf5"}
    extra["hdf5"] = {"version": _LAYOUT_VERSION, "arrays": arrays}
    return replace(manifest, extra=extra).dumps()


def commit_file(b: Hdf5Backend, f: _File, manifest: Manifest, *, attribute: bool) -> None:
    """Write ``manifest`` as ``f``'s newest commit: the next slot, after the data."""
    publish(b, f, *prepare(b, f, manifest, attribute))


def prepare(b: Hdf5Backend, f: _File, manifest: Manifest, attribute: bool) -> tuple[bytes, bool]:
    """The record for ``manifest``, and whether the file needs an fdatasync before it."""
    payload = record_bytes(b, f, manifest)
    if len(payload) + _SLOT.size > f.slot:
        raise too_large(b, f, manifest, len(payload))
    if attribute:
        # The attribute mirrors the record for plain HDF5 readers; it is written only when
        # HDF5 metadata changes anyway (or at the end), to keep metadata writes rare.
        with _writing(f.path, "writing the manifest attribute"):
            text = payload.decode()
            if ATTRIBUTE in f.h5.attrs:
                f.h5.attrs.modify(ATTRIBUTE, text)
            else:
                f.h5.attrs[ATTRIBUTE] = text
            f.h5.flush()
        b._meta_dirty = False
    # sync() made the rows durable; what changed since (HDF5 metadata, grown or relocated
    # arrays) must be too before the record names it.
    flush = attribute or b._unsynced
    b._unsynced = False
    return payload, flush


def too_large(b: Hdf5Backend, f: _File, manifest: Manifest, size: int) -> CommitRecordTooLargeError:
    """The error for a record of ``size`` bytes that its slot cannot hold: the array with
    the most runs, and what chunk size or userblock would fit the record."""
    slot = f.slot - _SLOT.size
    arr = max((f.arrays[name] for name in manifest.arrays), key=lambda a: len(a.runs))
    userblock = 2 * HEADER_BYTES
    while (userblock - HEADER_BYTES) // 2 - _SLOT.size < size:
        userblock *= 2
    # Runs come from HDF5's index nodes between chunks: about one per so many chunks, so
    # chunks k times larger make about k times fewer (measured: 164 runs at 8 rows per
    # chunk, 43 at 32, for 4M rows of 16 bytes). Rounded up to a power of two: room to grow.
    share = size - len(record_bytes(b, f, manifest, extents=False))
    excess = size - slot
    min_rows = None
    if arr.layout == "chunked" and share > excess:
        need = -(-arr.chunk_rows * share // (share - excess))
        min_rows = 1 << (need - 1).bit_length()
    return CommitRecordTooLargeError(
        os.fspath(b.root),
        array=arr.name,
        runs=len(arr.runs),
        record_bytes=size,
        slot_bytes=slot,
        chunk_rows=arr.chunk_rows,
        min_chunk_rows=min_rows,
        min_userblock=userblock,
    )


def publish(b: Hdf5Backend, f: _File, payload: bytes, flush: bool) -> None:
    """The commit point: the next slot, durable, after the data it declares."""
    if flush:
        fsync_fd(f.fd, f.path)
    seq = b._seq + 1
    f.write_slot(_slot_bytes(seq, payload), _slot_offset(seq % 2, f.slot))
    b._seq = seq
