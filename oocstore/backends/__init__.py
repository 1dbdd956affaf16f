"""The backend registry: a name maps to ``module:Class`` and is imported on first use."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BackendUnavailableError, StoreNotFoundError, UnknownBackendError

if TYPE_CHECKING:
    from .base import Backend

__all__ = ["BACKENDS", "backend_class", "backend_for_path", "detect_backend"]

BACKENDS: dict[str, dict[str, str]] = {
    "npy": {"class": "oocstore.backends.npy:NpyBackend", "err": "numpy is a core dependency"},
    "zarr": {
        "class": "oocstore.backends.zarr:ZarrBackend",
        "err": "install zarr>=3.1 (pip install 'zarr>=3.1') to use the Zarr backend",
    },
    "hdf5": {
        "class": "oocstore.backends.hdf5:Hdf5Backend",
        "err": "install h5py (pip install h5py) to use the HDF5 backend",
    },
}
_SUFFIXES = {".zarr": "zarr", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5"}


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
