"""Where a store's bytes live: objects by key under a root, knowing no format.

A format backend names objects (``zarr.json``, ``x/zarr.json``, ``x/c.0.0``) and hands their
bytes to a :class:`Storage`. :class:`LocalStorage` is a directory: whole objects replace
atomically and durably (temp file, fsync, rename, directory fsync), and a writer that writes
into a file in place gets its path (``pwrite``, ``O_DIRECT``, fsync sets stay the backend's).
:class:`FsspecStorage` is a URL through fsspec: an object is written whole with one PUT, never
in place, and there is no fsync (durability is the filesystem's).
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from .._durable import atomic_write_bytes
from ..errors import BackendUnavailableError, CorruptStoreError
from ._files import read_bounded

__all__ = ["FsspecStorage", "LocalStorage", "Storage"]


class Storage(ABC):
    """Objects by ``/``-separated key under one root."""

    location: str
    """The root, for messages: a path or a URL."""
    durable: ClassVar[bool]
    """Does :meth:`write` return only once the object is on stable storage?"""
    in_place: ClassVar[bool]
    """Can an object be written into at an offset (:meth:`LocalStorage.path`)?"""

    def where(self, key: str) -> str:
        """The object ``key`` as a person reads it in a message."""
        return f"{self.location.rstrip('/')}/{key}"

    @abstractmethod
    def read(self, key: str, limit: int, what: str) -> bytes:
        """The bytes of object ``key`` (at most ``limit``); CorruptStoreError naming ``what``
        if it is missing, too large, or not a plain object."""

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Replace object ``key`` with ``data``, whole: a reader sees the old or the new."""

    @abstractmethod
    def exists(self, key: str = "") -> bool:
        """Is there an object (or a prefix of objects) at ``key`` ("" is the root)?"""

    @abstractmethod
    def children(self, key: str = "") -> list[str]:
        """The names directly under prefix ``key`` (objects and prefixes), unsorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove object ``key``, or everything under prefix ``key`` ("" is the root)."""


class LocalStorage(Storage):
    """A directory on a local file system."""

    durable: ClassVar[bool] = True
    in_place: ClassVar[bool] = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = os.fspath(root)

    def path(self, key: str) -> Path:
        """The file of object ``key`` (for writers that write into it in place)."""
        return self.root / key if key else self.root

    def where(self, key: str) -> str:
        return os.fspath(self.path(key))

    def read(self, key: str, limit: int, what: str) -> bytes:
        return read_bounded(self.path(key), limit, what)

    def write(self, key: str, data: bytes) -> None:
        atomic_write_bytes(self.path(key), data)

    def exists(self, key: str = "") -> bool:
        path = self.path(key)
        return path.exists() or path.is_symlink()

    def children(self, key: str = "") -> list[str]:
        try:
            with os.scandir(self.path(key)) as entries:
                return [e.name for e in entries]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def delete(self, key: str) -> None:
        import shutil

        path = self.path(key)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def fsspec_options(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``storage_options`` as fsspec takes them for ``url``."""
    opts = dict(storage_options or {})
    if url.startswith("file://"):
        opts.setdefault("auto_mkdir", True)  # fsspec's local filesystem makes no parents
    return opts


class FsspecStorage(Storage):
    """Objects at an fsspec URL (``memory://``, ``s3://``, ``file://``...)."""

    durable: ClassVar[bool] = False
    in_place: ClassVar[bool] = False

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        try:
            import fsspec
        except ImportError as err:
            msg = f"a store at a URL ({url!r}) needs fsspec: pip install 'oocstore[dask]'"
            raise BackendUnavailableError(msg) from err
        self.location = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        fs, root = fsspec.core.url_to_fs(url, **fsspec_options(url, self.storage_options))
        self.fs: Any = fs
        self.root = str(root).rstrip("/")

    def _key(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def read(self, key: str, limit: int, what: str) -> bytes:
        try:
            data = bytes(self.fs.cat_file(self._key(key)))
        except FileNotFoundError:
            raise CorruptStoreError(self.where(key), f"{what} is missing") from None
        if len(data) > limit:
            raise CorruptStoreError(self.where(key), f"{what} is {len(data):,} bytes, too large")
        return data

    def write(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self._key(key), data)

    def exists(self, key: str = "") -> bool:
        return bool(self.fs.exists(self._key(key)))

    def children(self, key: str = "") -> list[str]:
        try:
            entries = self.fs.ls(self._key(key), detail=False)
        except FileNotFoundError:
            return []
        return [str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries]

    def delete(self, key: str) -> None:
        path = self._key(key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def makedirs(self) -> None:
        """Make the root where the filesystem has directories (object stores have none)."""
        with contextlib.suppress(OSError):
            self.fs.makedirs(self.root, exist_ok=True)
