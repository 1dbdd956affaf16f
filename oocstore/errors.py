"""The exception hierarchy: one base, each subclass also the built-in it refines.

This module imports nothing from oocstore, so every stage can raise these errors.
"""

from __future__ import annotations

import errno
from typing import Any

__all__ = [
    "BackendUnavailableError",
    "BatchError",
    "CommitRecordTooLargeError",
    "CorruptStoreError",
    "DiskFullError",
    "DtypeError",
    "EmptySourceError",
    "FileTooLargeError",
    "FieldNameError",
    "ImageDecodeError",
    "ImageFolderNotFoundError",
    "ImageModeError",
    "IngestError",
    "OocstoreError",
    "PaddingWarning",
    "RaggedError",
    "SampleTooLargeError",
    "SamplingError",
    "SchemaError",
    "StateDictError",
    "StoreExistsError",
    "StoreLockedError",
    "StoreNotFoundError",
    "StorePermissionError",
    "UnknownBackendError",
    "UnsupportedDtypeError",
    "UnsupportedStorageError",
    "WorkerFailedError",
    "WriterClosedError",
]


class OocstoreError(Exception):
    """Base of every error oocstore raises on purpose."""


class SchemaError(OocstoreError, ValueError):
    """A batch does not match the schema taken from the first batch.

    ``field``, ``batch_index``, ``expected`` and ``actual`` hold the parts of the message.
    """

    def __init__(
        self,
        what: str,
        *,
        field: str | None = None,
        batch_index: int | None = None,
        expected: Any = None,
        actual: Any = None,
        hint: str = "",
    ) -> None:
        self.field = field
        self.batch_index = batch_index
        self.expected = expected
        self.actual = actual
        where = []
        if batch_index is not None:
            where.append(f"batch {batch_index}")
        if field is not None:
            where.append(f"field {field!r}")
        msg = f"{', '.join(where)}: {what}" if where else what
        if expected is not None or actual is not None:
            msg += f": expected {expected}, got {actual}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


class DtypeError(SchemaError):
    """A batch's dtype differs from the schema and cannot be cast without loss."""


class SampleTooLargeError(SchemaError):
    """One sample of a field is larger than any file can hold (``expected`` is the limit)."""


class FileTooLargeError(OocstoreError, OSError):
    """A file of the store would outgrow the largest file its file system holds (EFBIG)."""


class PaddingWarning(UserWarning):
    """Padding a ragged field to its maximum shape makes the store many times its data."""


class UnsupportedDtypeError(SchemaError):
    """A dtype oocstore cannot store (object arrays, or one a backend cannot hold)."""


class RaggedError(SchemaError):
    """Samples' trailing shapes differ where the ragged policy forbids it."""


class BatchError(SchemaError):
    """A batch's structure is wrong: fields missing or extra, or fields of unequal length."""


class FieldNameError(OocstoreError, ValueError):
    """A field name that is not a safe file name (path separators, ``..``, odd characters)."""


class EmptySourceError(OocstoreError, ValueError):
    """The source yielded no batch, so there is no schema to build a store from."""


class StoreExistsError(OocstoreError, FileExistsError):
    """A store (or other file) already exists where a new store was asked for."""


class StoreNotFoundError(OocstoreError, FileNotFoundError):
    """No store at the path given to ``oocstore.open``."""


class StoreLockedError(OocstoreError, BlockingIOError):
    """Another writer holds the store's lock; ``pid`` names it when known."""

    def __init__(self, path: str, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        holder = f"process {pid}" if pid else "another process"
        super().__init__(
            errno.EAGAIN,
            f"store {path!r} is being written by {holder}; wait for it to finish, "
            "or stop it, then try again (only one writer may hold a store)",
        )


class StorePermissionError(OocstoreError, PermissionError):
    """The store, or its lock file, cannot be created or opened for writing here.

    ``path`` is the file or directory refused; ``reason`` says what the system answered.
    """

    def __init__(self, path: str, reason: str, *, hint: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(errno.EACCES, f"cannot write {path!r}: {reason}; {hint}", path)

    def __str__(self) -> str:
        return str(self.strerror)


class CorruptStoreError(OocstoreError, ValueError):
    """A store's metadata or files are damaged, tampered with or inconsistent.

    ``path`` names the file and the message says what was wrong with it.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"corrupt store file {path!r}: {problem}")


class CommitRecordTooLargeError(OocstoreError, ValueError):
    """An HDF5 store's commit record outgrew its userblock slot; earlier commits stay intact.

    The record lists where each array's rows lie in the file. HDF5 puts its chunk index
    between small chunks, so an array of small chunks lies in many runs. ``path``, ``array``
    (the array with the most runs), ``runs``, ``record_bytes``, ``slot_bytes``, ``chunk_rows``
    (its rows per chunk), ``min_chunk_rows`` (rows per chunk that would fit the record at this
    length, with room to spare; None when the extents are not what overflows) and
    ``min_userblock`` (the smallest userblock whose slot holds this record) hold the parts of
    the message.
    """

    def __init__(
        self,
        path: str,
        *,
        array: str,
        runs: int,
        record_bytes: int,
        slot_bytes: int,
        chunk_rows: int,
        min_chunk_rows: int | None,
        min_userblock: int,
    ) -> None:
        self.path = path
        self.array = array
        self.runs = runs
        self.record_bytes = record_bytes
        self.slot_bytes = slot_bytes
        self.chunk_rows = chunk_rows
        self.min_chunk_rows = min_chunk_rows
        self.min_userblock = min_userblock
        msg = (
            f"the HDF5 commit record of {path!r} would be {record_bytes:,} bytes, more than its "
            f"userblock slot holds ({slot_bytes:,})"
        )
        if min_chunk_rows is not None:
            msg += (
                f": array {array!r} lies in {runs:,} runs of extents (HDF5 puts its chunk index "
                f"between its {chunk_rows}-row chunks). Write with chunks={min_chunk_rows} or "
                "more, or leave chunks unset; or "
            )
        else:
            msg += ": the manifest itself (attrs, fields) takes the room; "
        msg += (
            f"create the store with a userblock of {min_userblock:,} bytes or more "
            "(the Hdf5Options.userblock option). Earlier commits stay intact"
        )
        super().__init__(msg)


class UnknownBackendError(OocstoreError, ValueError):
    """A backend name or path suffix oocstore does not know."""


class BackendUnavailableError(OocstoreError, ImportError):
    """A known backend whose library is not installed; the message says what to install."""


class DiskFullError(OocstoreError, OSError):
    """The disk filled up during a write; the store still holds its last commit."""

    def __init__(
        self,
        path: str,
        needed: int | None = None,
        free: int | None = None,
        *,
        what: str = "",
        hint: str = "",
    ) -> None:
        self.path = path
        self.needed = needed
        self.free = free
        msg = f"{what}: " if what else ""
        msg += f"no space left on the device holding {path!r}"
        if needed is not None and free is not None:
            msg += f": needed {needed:,} more bytes, {free:,} free"
        msg += "; the store keeps its last commit. "
        msg += hint or "Free some space and continue with resume=True"
        super().__init__(errno.ENOSPC, msg, path)

    def __str__(self) -> str:
        return str(self.strerror)


class WriterClosedError(OocstoreError, ValueError):
    """An operation on a Writer that is already closed."""


class UnsupportedStorageError(OocstoreError, ValueError):
    """The storage cannot do what was asked (e.g. other processes writing a memory:// store)."""


class WorkerFailedError(OocstoreError, RuntimeError):
    """A worker process died (killed, out of memory) before it finished its rows."""


class SamplingError(OocstoreError, ValueError):
    """A bad argument to a batch sampler or loader over a store.

    ``batch_size`` that is not positive, an unknown ``shuffle`` mode, or a ``rank`` outside
    ``range(world_size)``; ``argument`` and ``value`` name what was given.
    """

    def __init__(self, argument: str, value: Any, expected: str) -> None:
        self.argument = argument
        self.value = value
        super().__init__(f"{argument} must be {expected}, not {value!r}")


class StateDictError(OocstoreError, ValueError):
    """A ``state_dict`` given to ``load_state_dict`` does not belong to this loader or batches.

    ``key`` is the setting that differs; ``saved`` and ``current`` its two values.
    """

    def __init__(self, key: str, saved: Any, current: Any, hint: str = "") -> None:
        self.key = key
        self.saved = saved
        self.current = current
        msg = f"cannot resume: the state dict was saved with {key}={saved!r}, this has {current!r}"
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)


class IngestError(OocstoreError, ValueError):
    """An image folder cannot be ingested as asked (labels, options, or a resume that won't fit)."""


class ImageFolderNotFoundError(OocstoreError, FileNotFoundError):
    """The folder given to ``ingest_images`` does not exist or is not a directory."""


class ImageDecodeError(IngestError):
    """An image could not be read or decoded (with ``on_error="fail"``).

    ``path`` is the file's path relative to the image folder; ``reason`` says what Pillow found.
    """

    def __init__(self, path: str, reason: str, *, hint: str = "") -> None:
        self.path = path
        self.reason = reason
        msg = f"cannot decode image {path!r}: {reason}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


class ImageModeError(IngestError):
    """With ``mode="keep"``, images whose channels differ cannot share one ``images`` field.

    ``first``/``first_mode`` and ``other``/``other_mode`` name two files that disagree.
    """

    def __init__(self, first: str, first_mode: str, other: str, other_mode: str) -> None:
        self.first = first
        self.first_mode = first_mode
        self.other = other
        self.other_mode = other_mode
        super().__init__(
            f"mode='keep' needs every image to decode to the same channels, but {first!r} is "
            f"{first_mode} and {other!r} is {other_mode}; pass mode='RGB' or mode='L' to "
            "convert every image to one mode"
        )
