"""oocstore: stream batches of any size into memory-mapped arrays on disk, read them as NumPy.

>>> import oocstore
>>> store = oocstore.write(batches, "train.ooc")      # doctest: +SKIP
>>> X, y = store["0"], store["1"]                      # doctest: +SKIP
"""

from __future__ import annotations

from .api import convert, open, write
from .errors import (
    BackendUnavailableError,
    BatchError,
    CommitRecordTooLargeError,
    CorruptStoreError,
    DiskFullError,
    DtypeError,
    EmptySourceError,
    FieldNameError,
    FileTooLargeError,
    ImageDecodeError,
    ImageFolderNotFoundError,
    ImageModeError,
    IngestError,
    OocstoreError,
    PaddingWarning,
    RaggedError,
    SampleTooLargeError,
    SamplingError,
    SchemaError,
    StateDictError,
    StoreExistsError,
    StoreLockedError,
    StoreNotFoundError,
    StorePermissionError,
    UnknownBackendError,
    UnsupportedDtypeError,
    UnsupportedStorageError,
    WorkerFailedError,
    WriterClosedError,
)
from .ingest import ingest_images
from .reader import Damage, PackedArray, Store
from .schema import FieldSpec, Schema
from .sources._zip import zip_streams
from .writer import WriteOptions, Writer

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "BatchError",
    "CommitRecordTooLargeError",
    "CorruptStoreError",
    "Damage",
    "DiskFullError",
    "DtypeError",
    "EmptySourceError",
    "FileTooLargeError",
    "FieldNameError",
    "FieldSpec",
    "ImageDecodeError",
    "ImageFolderNotFoundError",
    "ImageModeError",
    "IngestError",
    "OocstoreError",
    "PaddingWarning",
    "PackedArray",
    "RaggedError",
    "SampleTooLargeError",
    "SamplingError",
    "Schema",
    "SchemaError",
    "StateDictError",
    "Store",
    "StoreExistsError",
    "StoreLockedError",
    "StoreNotFoundError",
    "StorePermissionError",
    "UnknownBackendError",
    "UnsupportedDtypeError",
    "UnsupportedStorageError",
    "WorkerFailedError",
    "WriteOptions",
    "Writer",
    "WriterClosedError",
    "__version__",
    "convert",
    "ingest_images",
    "open",
    "write",
    "zip_streams",
]
