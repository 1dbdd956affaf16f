"""HDF5 itself: dtypes HDF5 stores for NumPy's, error translation, and the file's fixed names."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ...errors import (
    DiskFullError,
    UnsupportedDtypeError,
)

ATTRIBUTE = "oocstore"
"""Root attribute holding the manifest as JSON text (a mirror of the commit record)."""
DROPPED_GROUP = ".oocstore-dropped"
"""Where arrays a newer commit dropped wait until ``close()`` compacts the file."""
LIBVER = ("earliest", "v110")
"""File format bounds: what HDF5 1.10 tools (Debian's h5dump 1.10.8) read."""
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_NOSPACE = (errno.ENOSPC, errno.EDQUOT)


# -- dtypes -----------------------------------------------------------------------------------


def _h5_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype to create an HDF5 dataset with: NumPy's own where HDF5 has the same bytes,
    else h5py's opaque type tagged with the NumPy dtype (datetime64, timedelta64, ``U``).

    Raises UnsupportedDtypeError when neither holds the bytes exactly.
    """
    dtype = np.dtype(dtype)
    if dtype.itemsize == 0 or dtype.hasobject:
        raise UnsupportedDtypeError(
            "the HDF5 backend cannot store this dtype",
            expected="a numeric, bool, complex, fixed-width string, datetime or structured dtype",
            actual=str(dtype),
        )
    try:
        tid = h5py.h5t.py_create(dtype, logical=True)
        if tid.dtype == dtype and tid.get_size() == dtype.itemsize:
            return dtype
    except (TypeError, ValueError):
        pass
    try:
        opaque = h5py.opaque_dtype(dtype)
        tid = h5py.h5t.py_create(opaque, logical=True)
    except (TypeError, ValueError) as err:
        raise UnsupportedDtypeError(
            "the HDF5 backend has no exact type for this dtype",
            actual=str(dtype),
            hint=f"({err}); use the npy or zarr backend",
        ) from None
    if tid.get_size() != dtype.itemsize:
        raise UnsupportedDtypeError(
            "the HDF5 backend has no exact type for this dtype", actual=str(dtype)
        )
    out: np.dtype[Any] = np.dtype(opaque)
    return out


def _stored_dtype(dset: h5py.Dataset) -> np.dtype[Any]:
    """The NumPy dtype of a dataset's bytes (h5py maps an opaque NUMPY tag back)."""
    dt = np.dtype(dset.dtype)
    base = h5py.check_opaque_dtype(dt)
    return np.dtype(base) if isinstance(base, np.dtype) else dt


# -- errors -----------------------------------------------------------------------------------


def _is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in _NOSPACE:
        return True
    text = str(err)
    return "No space left" in text or "errno = 28" in text or "Disk quota" in text


@contextlib.contextmanager
def _writing(path: Path, doing: str) -> Iterator[None]:
    """Translate h5py failures while writing: a full disk is DiskFullError, others OSError."""
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError) as err:
        if _is_disk_full(err):
            raise DiskFullError(os.fspath(path)) from err
        if isinstance(err, OSError) and type(err) is not OSError:
            raise  # an OSError subclass oocstore raised itself
        msg = f"HDF5 failed while {doing} in {str(path)!r}: {err}"
        raise OSError(errno.EIO, msg, os.fspath(path)) from err
