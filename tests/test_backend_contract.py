"""The backend contract (tests/backend_contract.py) for each backend: fixtures and raw hooks.

Each raw hook reads the files with the format's own plain library, so what a test checks
reached the disk without the backend's reader.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import h5py
import numpy as np
import pytest
import zarr

from oocstore.backends import backend_class
from oocstore.backends.base import Backend, BackendOptions, StoreHandle
from oocstore.backends.zarr.spec import ZarrOptions

from .backend_contract import BackendTests


class LocalRoots:
    """Fresh roots under ``tmp_path``, each alone in its own directory."""

    suffix: ClassVar[str] = ""

    @pytest.fixture
    def fresh_root(self, tmp_path: Path) -> Callable[[], Path]:
        def fresh() -> Path:
            parent = tmp_path / uuid.uuid4().hex[:8]
            parent.mkdir()
            return parent / f"store{self.suffix}"

        return fresh


class TestNpyBackend(LocalRoots, BackendTests):
    suffix = ".npy-store"
    known_failures: ClassVar[dict[str, pytest.MarkDecorator]] = {
        "test_link_array_raw_src": pytest.mark.xfail(
            strict=True,
            raises=AssertionError,
            reason="link_array hard-links src's .npy file, so dst's sync rewrites the header "
            "they share: np.load of src then shows dst's shape and length, not the commit's",
        ),
    }

    @pytest.fixture
    def backend_name(self) -> str:
        return "npy"

    def _length(self, root: Path, name: str) -> int:
        doc = json.loads((root / "oocstore.json").read_text())
        return int(doc["arrays"][name]["length"])

    def raw_rows(self, root: Path, name: str) -> np.ndarray:
        return np.load(root / f"{name}.npy", mmap_mode="r")[: self._length(root, name)]

    def raw_capacity(self, root: Path, name: str) -> int:
        with open(root / f"{name}.npy", "rb") as f:
            fmt = np.lib.format
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
            offset = f.tell()
            size = f.seek(0, 2)
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        return (size - offset) // row

    def raw_names(self, root: Path) -> set[str]:
        return {p.name.removesuffix(".npy") for p in root.glob("*.npy")}


def _zarr_length(doc: bytes, name: str) -> int:
    return int(json.loads(doc)["attributes"]["oocstore"]["arrays"][name]["length"])


class TestZarrBackend(LocalRoots, BackendTests):
    suffix = ".zarr"
    known_failures: ClassVar[dict[str, pytest.MarkDecorator]] = {}
    chunks: ClassVar[int | None] = 4  # several chunks per array: boundaries get written

    @pytest.fixture
    def backend_name(self) -> str:
        return "zarr"

    def options(self, root: Path) -> BackendOptions:
        return BackendOptions(chunks=self.chunks)

    def raw_rows(self, root: Path, name: str) -> np.ndarray:
        n = _zarr_length((root / "zarr.json").read_bytes(), name)
        return np.asarray(zarr.open_array(root / name, mode="r")[:n])

    def raw_capacity(self, root: Path, name: str) -> int:
        return int(zarr.open_array(root / name, mode="r").shape[0])

    def raw_names(self, root: Path) -> set[str]:
        return set(zarr.open_group(root, mode="r").array_keys())


class TestHdf5Backend(LocalRoots, BackendTests):
    suffix = ".h5"

    @pytest.fixture
    def backend_name(self) -> str:
        return "hdf5"

    def raw_rows(self, root: Path, name: str) -> np.ndarray:
        # The committed length lives in oocstore's commit record (the userblock), which
        # h5py does not read; the rows themselves are read by h5py.
        n = backend_class("hdf5").open(root).read_manifest().arrays[name].length
        with h5py.File(root, "r") as f:
            return np.asarray(f[name][:n])

    def raw_capacity(self, root: Path, name: str) -> int:
        with h5py.File(root, "r") as f:
            return int(f[name].shape[0])

    def raw_names(self, root: Path) -> set[str]:
        names: set[str] = set()
        with h5py.File(root, "r") as f:
            f.visititems(lambda k, v: names.add(k) if isinstance(v, h5py.Dataset) else None)
        return names


class TestZarrEncodedBackend(TestZarrBackend):
    """Zarr with zstd chunks inside shards: rows are encoded and written as whole files
    (``write_unit_rows`` > 1), so writes inside a unit read the rest of it back."""

    known_failures: ClassVar[dict[str, pytest.MarkDecorator]] = {
        **TestZarrBackend.known_failures,
    }

    def options(self, root: Path) -> BackendOptions:
        return ZarrOptions(chunks=4, compressors="auto", shards=8)


try:
    import fsspec
except ImportError:  # the dask extra
    fsspec = None


@pytest.mark.skipif(fsspec is None, reason="fsspec is not installed (pip install 'oocstore[dask]')")
class TestFsspecZarrBackend(BackendTests):
    """Zarr over fsspec ``memory://``: the contract's reads go through the URL readers
    (``FsspecZarrBackend.open(url)``), as ``oocstore.open`` of a URL does."""

    @pytest.fixture
    def backend_name(self) -> str:
        return "zarr"

    @pytest.fixture
    def backend_cls(self) -> type[Backend]:
        from oocstore.backends.zarr_fsspec import FsspecZarrBackend

        return FsspecZarrBackend

    @pytest.fixture
    def fresh_root(self) -> Iterator[Callable[[], Path]]:
        top = f"/oocstore-contract/{uuid.uuid4().hex}"

        def fresh() -> Path:
            return Path(f"{top}/{uuid.uuid4().hex[:8]}/store.zarr")

        yield fresh
        fs = fsspec.filesystem("memory")
        if fs.exists(top):
            fs.rm(top, recursive=True)

    @staticmethod
    def url(root: Path) -> str:
        return f"memory:/{root}"

    def options(self, root: Path) -> BackendOptions:
        return ZarrOptions(chunks=4)

    def new_backend(self, backend_cls: type[Backend], root: Path) -> Backend:
        from oocstore.backends.zarr_fsspec import FsspecZarrBackend

        return FsspecZarrBackend(self.url(root), self.options(root), {})

    def handle(self, backend_cls: type[Backend], root: Path) -> StoreHandle:
        return backend_cls.open(self.url(root))  # type: ignore[arg-type]

    def files_left(self, root: Path) -> list[str]:
        fs = fsspec.filesystem("memory")
        return sorted(fs.find(str(root))) if fs.exists(str(root)) else []

    def raw_rows(self, root: Path, name: str) -> np.ndarray:
        fs = fsspec.filesystem("memory")
        n = _zarr_length(fs.cat_file(f"{root}/zarr.json"), name)
        return np.asarray(zarr.open_array(f"{self.url(root)}/{name}", mode="r")[:n])

    def raw_capacity(self, root: Path, name: str) -> int:
        return int(zarr.open_array(f"{self.url(root)}/{name}", mode="r").shape[0])

    def raw_names(self, root: Path) -> set[str]:
        return set(zarr.open_group(self.url(root), mode="r").array_keys())
