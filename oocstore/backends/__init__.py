"""The backend registry: a name maps to ``module:Class`` and is imported on first use."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._url import is_url
from ..errors import (
    BackendUnavailableError,
    CorruptStoreError,
    StoreNotFoundError,
    UnknownBackendError,
)

if TYPE_CHECKING:
    from .base import Backend, StoreHandle

__all__ = [
    "BACKENDS",
    "backend_class",
    "backend_for_path",
    "detect_backend",
    "open_store",
    "store_identity",
]

BACKENDS: dict[str, dict[str, Any]] = {
    "npy": {
        "class": "oocstore.backends.npy:NpyBackend",
        "err": "numpy is a core dependency",
        "suffixes": (),
    },
    "zarr": {
        "class": "oocstore.backends.zarr:ZarrBackend",
        "err": "install zarr>=3.1 (pip install 'zarr>=3.1') to use the Zarr backend",
        "suffixes": (".zarr",),
    },
    "hdf5": {
        "class": "oocstore.backends.hdf5:Hdf5Backend",
        "err": "install h5py (pip install h5py) to use the HDF5 backend",
        "suffixes": (".h5", ".hdf5", ".hdf"),
    },
}
"""Each backend's class (imported on first use), why it may be missing, and its suffixes:
the class's own ``suffixes``, known here without importing it, so a ``.h5`` path without h5py
is refused rather than written as npy (``backend_class`` checks that the two agree)."""
_SUFFIXES = {sfx: name for name, entry in BACKENDS.items() for sfx in entry["suffixes"]}


def backend_class(name: str) -> type[Backend]:
    """Import and return the backend class called ``name``.

    Raises
    ------
    UnknownBackendError
        If no backend has that name.
    BackendUnavailableError
        If the backend's library is not installed.
    """
    entry = BACKENDS.get(name)
    if entry is None:
        msg = f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}"
        raise UnknownBackendError(msg)
    module_name, cls_name = entry["class"].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        msg = f"backend {name!r} is unavailable: {entry['err']}"
        raise BackendUnavailableError(msg) from err
    cls: type[Backend] = getattr(module, cls_name)
    if tuple(cls.suffixes) != entry["suffixes"]:
        msg = f"backend {name!r}: registry suffixes {entry['suffixes']}, class {cls.suffixes}"
        raise RuntimeError(msg)
    return cls


def backend_for_path(path: Path, backend: str | None = None) -> str:
    """The backend a new store at ``path`` uses: ``backend`` if given, else by suffix."""
    if backend is not None:
        if backend not in BACKENDS:
            msg = f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}"
            raise UnknownBackendError(msg)
        return backend
    return _SUFFIXES.get(path.suffix.lower(), "npy")


def detect_backend(path: Path) -> str:
    """The backend of the existing store at ``path``, from what is on disk.

    Raises
    ------
    StoreNotFoundError
        If nothing is at ``path``.
    UnknownBackendError
        If something is there but no backend recognises it as a store.
    """
    if not path.exists() and not path.is_symlink():
        msg = f"no store at {str(path)!r}"
        raise StoreNotFoundError(msg)
    for name in ("npy", "zarr", "hdf5"):
        try:
            cls = backend_class(name)
        except BackendUnavailableError:
            continue
        if cls.holds_store(path):
            return name
    msg = (
        f"{str(path)!r} is not an oocstore store (no oocstore manifest found); "
        "if a writer was killed before its first commit, write the store again"
    )
    raise UnknownBackendError(msg)


def open_store(
    location: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> StoreHandle:
    """A read handle of the existing store at ``location`` (a path, or an fsspec URL of a
    Zarr store), its backend detected from what is there.

    Raises
    ------
    StoreNotFoundError
        If nothing is at ``location``.
    UnknownBackendError
        If something is there but no backend recognises it as a store.
    """
    if is_url(location):
        from .zarr_fsspec import FsspecZarrBackend

        return FsspecZarrBackend.open(str(location), storage_options)
    path = Path(location)
    return backend_class(detect_backend(path)).open(path, storage_options)


def store_identity(location: str | os.PathLike[str]) -> tuple[int, int]:
    """What tells the store at ``location`` from another made there later: the device and
    inode of a local path, ``(0, 0)`` for a URL (whose objects have none)."""
    if is_url(location):
        return (0, 0)
    st = os.stat(location)
    return (st.st_dev, st.st_ino)


def open_for_writing(
    location: str | os.PathLike[str],
    backend: str | None,
    *,
    resume: bool,
    options: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[Backend, str | None]:
    """The backend that writes a store at ``location`` (the existing store's when resuming
    one, else ``backend`` or the one the suffix names; a URL is always Zarr), and the
    backend of the store already there (None when nothing there is a store).

    ``options`` are every backend option the writer was given (each backend keeps its own).

    Raises
    ------
    UnknownBackendError
        If ``backend`` names no backend, or not the one of the store being resumed.
    """
    if is_url(location):
        from .zarr_fsspec import FsspecZarrBackend

        if backend not in (None, "zarr"):
            msg = (
                f"a store at a URL ({location!r}) is a Zarr store; "
                f"backend={backend!r} cannot be one"
            )
            raise UnknownBackendError(msg)
        opts = FsspecZarrBackend.options_class.pick(**options)
        remote = FsspecZarrBackend(str(location), opts, storage_options)
        return remote, (remote.name if remote.exists() and remote.has_store() else None)
    path = Path(location)
    name = backend_for_path(path, backend)
    existing: str | None = None
    if path.exists() or path.is_symlink():
        try:
            existing = detect_backend(path)
        except (UnknownBackendError, CorruptStoreError, OSError):
            existing = None
    if resume and existing is not None:
        if backend is not None and backend != existing:
            msg = f"cannot resume {str(path)!r} as {backend!r}: it is a {existing} store"
            raise UnknownBackendError(msg)
        name = existing
    cls = backend_class(name)
    return cls(path, cls.options_class.pick(**options)), existing
