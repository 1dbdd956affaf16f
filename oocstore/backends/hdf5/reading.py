"""Opening a store read-only: the newest valid commit record, then its rows mapped from their
extents (or read through h5py for a file without a record)."""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from ...errors import (
    CorruptStoreError,
)
from ...manifest import Manifest
from .._files import open_regular
from ..base import ArrayReader, LocalHandle
from .extents import _check_layouts
from .h5 import ATTRIBUTE, _stored_dtype
from .record import _load_manifest, _read_header, _read_record
from .view import ExtentArray, _DatasetArray, _empty, _run_pieces


@dataclass(frozen=True)
class _Opened:
    """What one read of the file learned beside the manifest: where it came from."""

    source: Literal["record", "attribute"]
    """The userblock's commit record, or the root attribute of a file without one."""
    file: tuple[int, int] = (0, 0)
    """Device and inode of the file the record was read from."""


class Hdf5Handle(LocalHandle):
    """An HDF5 store opened for reading: the newest valid commit record, then its rows
    mapped from their extents (or read through h5py for a file without a record)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._seen: dict[int, tuple[weakref.ref[Manifest], _Opened]] = {}

    def read_manifest(self) -> Manifest:
        manifest, opened = read_manifest(self.root)
        self._seen = {k: v for k, v in self._seen.items() if v[0]() is not None}
        self._seen[id(manifest)] = (weakref.ref(manifest), opened)
        return manifest

    def open_arrays(self, manifest: Manifest) -> dict[str, ArrayReader]:
        seen = self._seen.get(id(manifest))
        opened = seen[1] if seen is not None and seen[0]() is manifest else None
        if opened is None:  # a manifest read elsewhere: ask the file now at the path
            has_record = _has_record(self.root)
            opened = _Opened("record" if has_record else "attribute")
        if opened.source == "record":
            return _open_record_arrays(self.root, manifest, opened)
        return _open_dataset_arrays(self.root, manifest)

    def chunk_rows(self, manifest: Manifest, name: str, array: ArrayReader) -> int | None:
        info = manifest.extra.get("hdf5")
        entry = info.get("arrays", {}).get(name) if isinstance(info, dict) else None
        if isinstance(entry, dict) and entry.get("layout") == "chunked":
            rows = entry.get("chunk_rows")
            return int(rows) if isinstance(rows, int) and rows > 0 else None
        return super().chunk_rows(manifest, name, array)

    def array_file(self, name: str) -> Path | None:
        return self.root  # every array is a dataset of the one file


def _has_record(root: Path) -> bool:
    fd = open_regular(root)
    try:
        header = _read_header(fd, os.fspath(root))
        return header is not None and _read_record(fd, header[1]) is not None
    finally:
        os.close(fd)


def read_manifest(root: Path) -> tuple[Manifest, _Opened]:
    """The newest valid commit record's manifest, else the root attribute's (a file HDF5
    tools rewrote); CorruptStoreError when neither is there."""
    where = os.fspath(root)
    fd = open_regular(root)
    try:
        st = os.fstat(fd)
        header = _read_header(fd, where)
        record = _read_record(fd, header[1]) if header is not None else None
    finally:
        os.close(fd)
    if header is not None and record is not None:
        manifest = _load_manifest(record[1], where)
        _check_layouts(manifest, manifest.extra.get("hdf5"), st.st_size, header[0], where)
        return manifest, _Opened("record", (st.st_dev, st.st_ino))
    from_attribute = _read_attribute(root)
    if from_attribute is None:
        problem = (
            "both commit slots of the userblock fail their checksums"
            if header is not None
            else "no oocstore commit record"
        )
        raise CorruptStoreError(
            where, f"{problem} and no {ATTRIBUTE!r} attribute: no oocstore manifest"
        )
    return from_attribute, _Opened("attribute")


def _read_attribute(root: Path) -> Manifest | None:
    """The manifest attribute of a file read through HDF5 (None if it has none); extents it
    names are dropped: a tool that rewrote the file moved the rows."""
    where = os.fspath(root)
    try:
        with h5py.File(root, "r", locking=False) as f:
            if ATTRIBUTE not in f.attrs:
                return None
            text = f.attrs[ATTRIBUTE]
    except Exception as err:  # every HDF5 failure is a damaged file here
        raise CorruptStoreError(where, f"HDF5 cannot read the file ({err})") from None
    if isinstance(text, np.ndarray) and text.shape == ():
        text = text[()]
    if isinstance(text, np.bytes_ | bytes):
        text = bytes(text)
    if not isinstance(text, str | bytes):
        raise CorruptStoreError(where, f"attribute {ATTRIBUTE!r} is not text")
    manifest = _load_manifest(text, where)
    manifest.extra.pop("hdf5", None)
    return manifest


def _open_record_arrays(root: Path, manifest: Manifest, opened: _Opened) -> dict[str, ArrayReader]:
    where = os.fspath(root)
    fd = open_regular(root)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        header = _read_header(fd, where)
        if header is None:
            raise CorruptStoreError(where, "the commit record's header is gone")
        info = manifest.extra.get("hdf5")
        if opened.file != (st.st_dev, st.st_ino):
            # A writer finished by writing a compacted file and renaming it here since
            # the manifest was read: take the extents from the file now at this path.
            info = _extents_after_rewrite(fd, header[1], manifest, where)
        layouts = _check_layouts(manifest, info, st.st_size, header[0], where)
        out: dict[str, ArrayReader] = {}
        for name, spec in manifest.arrays.items():
            lay = layouts[name]
            if spec.length == 0 or spec.row_nbytes == 0:
                out[name] = _empty(spec)
                continue
            run = lay.runs[0]
            if run[1] >= spec.length:  # one extent holds every committed row
                try:
                    out[name] = np.memmap(
                        f,
                        dtype=spec.dtype,
                        mode="r",
                        offset=run[2],
                        shape=(spec.length, *spec.shape),
                    )
                except (OSError, ValueError, OverflowError) as err:
                    raise CorruptStoreError(where, f"cannot map {name!r} ({err})") from None
                continue
            pieces, maps = [], []
            for run in lay.runs:
                got, mm = _run_pieces(f, name, spec, run, where)
                if mm is None:
                    break
                pieces += got
                maps.append(mm)
            out[name] = ExtentArray((spec.length, *spec.shape), spec.dtype, pieces, maps)
    return out


def _extents_after_rewrite(fd: int, slot: int, manifest: Manifest, where: str) -> dict[str, Any]:
    record = _read_record(fd, slot)
    if record is not None:
        newer = _load_manifest(record[1], where)
        same = all(
            name in newer.arrays
            and newer.arrays[name].dtype == spec.dtype
            and newer.arrays[name].shape == spec.shape
            and newer.arrays[name].length >= spec.length
            for name, spec in manifest.arrays.items()
        )
        info = newer.extra.get("hdf5")
        if same and isinstance(info, dict):
            return info
    raise CorruptStoreError(
        where,
        "the store was rewritten while it was being opened (a writer finished it); open it again",
    )


def _open_dataset_arrays(root: Path, manifest: Manifest) -> dict[str, ArrayReader]:
    """Arrays of a file without a commit record, through HDF5's own metadata."""
    where = os.fspath(root)
    try:
        f = h5py.File(root, "r", locking=False)
    except Exception as err:  # every HDF5 failure is a damaged file here
        raise CorruptStoreError(where, f"HDF5 cannot open the file ({err})") from None
    out: dict[str, ArrayReader] = {}
    lazy = False
    try:
        size = os.stat(root).st_size
        for name, spec in manifest.arrays.items():
            try:
                dset = f.get(name)
                ok = isinstance(dset, h5py.Dataset)
                stored = _stored_dtype(dset) if ok else None
            except Exception as err:
                raise CorruptStoreError(where, f"HDF5 cannot read {name!r} ({err})") from None
            if not ok or stored != spec.dtype or dset.shape[1:] != spec.shape:
                raise CorruptStoreError(
                    where, f"dataset {name!r} is missing or differs from the manifest"
                )
            if dset.shape[0] < spec.length:
                raise CorruptStoreError(
                    where,
                    f"dataset {name!r} has {dset.shape[0]:,} rows, the manifest commits "
                    f"{spec.length:,}",
                )
            if spec.length == 0 or spec.row_nbytes == 0:
                out[name] = _empty(spec)
                continue
            offset = dset.id.get_offset() if dset.chunks is None and not dset.compression else None
            nbytes = spec.length * spec.row_nbytes
            if offset is not None and offset + nbytes <= size:
                with os.fdopen(open_regular(root), "rb") as fh:
                    out[name] = np.memmap(
                        fh,
                        dtype=spec.dtype,
                        mode="r",
                        offset=offset,
                        shape=(spec.length, *spec.shape),
                    )
            else:
                out[name] = _DatasetArray(dset, spec, where)
                lazy = True
    except BaseException:
        f.close()
        raise
    if not lazy:
        f.close()
    return out
