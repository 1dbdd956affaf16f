"""The HDF5 backend, along its seams: ``record`` (the userblock's commit record, bytes in and
out), ``extents`` (where committed rows lie), ``h5`` (HDF5's dtypes, errors and names),
``view`` (readers), ``files`` (the writer's view of the file), ``repair`` (resuming a file a kill
left apart from its record) and ``backend`` (the :class:`Hdf5Backend` that joins them)."""

from __future__ import annotations

from .backend import Hdf5Backend, Hdf5RegionWriter
from .h5 import ATTRIBUTE, DROPPED_GROUP
from .record import USERBLOCK_BYTES
from .view import ExtentArray

__all__ = [
    "ATTRIBUTE",
    "DROPPED_GROUP",
    "USERBLOCK_BYTES",
    "ExtentArray",
    "Hdf5Backend",
    "Hdf5RegionWriter",
]
