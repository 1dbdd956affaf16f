"""Opening a store read-only: the newest valid commit record, then its rows mapped from their
extents (or read through h5py for a file without a record)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ...errors import (
    CorruptStoreError,
)
from ...manifest import Manifest
from ..base import ArrayReader
from .extents import _LAYOUT_VERSION, _check_layouts
from .h5 import ATTRIBUTE, _open_read, _stored_dtype
from .record import _load_manifest, _read_header, _read_record
from .view import ExtentArray, _DatasetArray, _empty, _run_pieces


def read_manifest(root: Path) -> Manifest:
    where = os.fspath(root)
    fd = _open_read(root)
    try:
        st = os.fstat(fd)
        header = _read_header(fd, where)
        record = _read_record(fd, header[1]) if header is not None else None
    finally:
        os.close(fd)
    if header is not None and record is not None:
        seq, payload = record
        manifest = _load_manifest(payload, where)
        layouts = _check_layouts(manifest, manifest.extra.get("hdf5"), st.st_size, header[0], where)
        manifest.extra["hdf5"] = {
            "version": _LAYOUT_VERSION,
            "source": "record",
            "seq": seq,
            "file": [st.st_dev, st.st_ino],
            "arrays": {
                name: {
                    "layout": lay.layout,
                    "rows": lay.rows,
                    "chunk_rows": lay.chunk_rows,
                    "extents": lay.runs,
                }
                for name, lay in layouts.items()
            },
        }
        return manifest
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
    return from_attribute


def _read_attribute(root: Path) -> Manifest | None:
    """The manifest attribute of a file read through HDF5 (None if it has none)."""
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
    manifest.extra["hdf5"] = {"version": _LAYOUT_VERSION, "source": "attribute"}
    return manifest


def open_arrays(root: Path, manifest: Manifest) -> dict[str, ArrayReader]:
    info = manifest.extra.get("hdf5")
    if isinstance(info, dict) and info.get("source") == "record":
        return _open_record_arrays(root, manifest, info)
    return _open_dataset_arrays(root, manifest)


def _open_record_arrays(
    root: Path, manifest: Manifest, info: dict[str, Any]
) -> dict[str, ArrayReader]:
    where = os.fspath(root)
    fd = _open_read(root)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        header = _read_header(fd, where)
        if header is None:
            raise CorruptStoreError(where, "the commit record's header is gone")
        if info.get("file") != [st.st_dev, st.st_ino]:
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
                with os.fdopen(_open_read(root), "rb") as fh:
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
