"""``store.to_torch()``: a map-style ``torch.utils.data.Dataset`` over a store, zero-copy.

Zero copy without the read-only warning
---------------------------------------
A store's memory-mapped fields are read-only, and ``torch.from_numpy`` warns on a read-only
array because writing through the tensor would crash the process. Each field file is mapped
again here copy-on-write (``np.memmap(mode="c")``, ``MAP_PRIVATE``): the pages are the same
page-cache pages until someone writes, so ``dataset[i]`` is a view, costs no copy, and a tensor
written in place (an in-place augmentation) changes only the process's private page, never the
file -- but, as with a ``TensorDataset``, later reads of that sample in the same process see the
change (clone before augmenting in place). The file is opened by its path (``<store>/<array>.npy``
for npy, the file itself for HDF5) without following symlinks, and on Linux checked to be the
very file the store mapped. Fields that are not memory-mapped (Zarr, chunked HDF5), or whose
file cannot be mapped again, are read into fresh arrays.

Workers
-------
The dataset pickles as the store's path, its field names and ``transform``: DataLoader
workers (``fork`` or ``spawn``) map the files themselves on first use.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..ragged import region

if TYPE_CHECKING:
    from ..reader import Store

__all__ = ["StoreDataset"]

Reader = Callable[[int], np.ndarray]


def _mapped_file(address: int) -> tuple[int, int] | None:
    """``(device, inode)`` of the file mapped at ``address``, from ``/proc/self/maps``."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                lo, hi = (int(v, 16) for v in parts[0].split("-"))
                if lo <= address < hi:
                    major, minor = (int(v, 16) for v in parts[3].split(":"))
                    return os.makedev(major, minor), int(parts[4])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _private_map(array: Any, path: Path | None) -> np.ndarray | None:
    """A copy-on-write map of the file behind a read-only ``np.memmap``; None if there is none.

    ``path`` is where the store keeps the array's file (the memmap may not know its name).
    """
    if not isinstance(array, np.memmap) or array.size == 0 or not array.flags.c_contiguous:
        return None
    where = array.filename or path
    if where is None:
        return None
    try:
        fd = os.open(where, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None
        # On Linux, check it is the very file the store mapped, not one put there since.
        maps = Path("/proc/self/maps").exists()
        if maps and _mapped_file(array.ctypes.data) != (st.st_dev, st.st_ino):
            return None
        try:
            return np.memmap(f, dtype=array.dtype, mode="c", offset=array.offset, shape=array.shape)
        except (OSError, ValueError):  # the file shrank: read through the store instead
            return None


def _writable(value: Any) -> np.ndarray:
    arr = np.asarray(value)
    return arr if arr.flags.writeable else arr.copy()


def _dense_reader(array: Any, path: Path | None) -> Reader:
    mapped = _private_map(array, path)
    if mapped is not None:
        return lambda i: mapped[i, ...]  # "..." keeps a 0-d sample an array (a view)
    return lambda i: _writable(array[i])


class StoreDataset(Dataset[Any]):
    """Samples of a store as tuples of tensors, one per field (field order, or ``fields``).

    ``dataset[i]`` is ``(tensor_a, tensor_b, ...)``, or ``transform`` of that tuple. A ragged
    field gives each sample with its true shape (padding cut off), so batching those needs a
    ``collate_fn`` or a ``transform`` that makes shapes equal. ``len(dataset)`` is the store's
    committed length when the dataset was made.
    """

    def __init__(
        self,
        store: Store,
        fields: Sequence[str] | None = None,
        transform: Callable[[tuple[torch.Tensor, ...]], Any] | None = None,
    ) -> None:
        self.store = store
        self.fields = store.resolve_fields(fields)
        self.transform = transform
        self.length = len(store)
        self._readers: list[Reader] | None = None

    def _file(self, array_name: str) -> Path | None:
        """The file holding a physical array, by the backends' documented layouts."""
        if self.store.backend == "npy":
            return self.store.path / f"{array_name}.npy"
        if self.store.backend == "hdf5":
            return self.store.path
        return None

    def _reader(self, field: str) -> Reader:
        kind = self.store.layout(field)
        array = self.store[field]
        if kind == "dense":
            return _dense_reader(array, self._file(field))
        if kind == "padded":
            shapes = np.asarray(self.store.shapes(field)[: self.length])
            mapped = _private_map(array, self._file(field))
            if mapped is not None:
                return lambda i: mapped[region(i, shapes[i])]  # a view of the true region
            return lambda i: _writable(array[region(i, shapes[i])])
        # packed: values end to end, with offsets and shapes
        values = _private_map(array.values, self._file(f"{field}.values"))
        offsets, shapes = np.asarray(array.offsets), np.asarray(array.shapes)
        if values is None:
            return lambda i: _writable(array[i])

        def packed(i: int) -> np.ndarray:
            shape = tuple(int(d) for d in shapes[i])
            start = int(offsets[i])
            return values[start : start + int(np.prod(shape, dtype=np.int64))].reshape(shape)

        return packed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        i = int(index)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            msg = f"sample {index} out of range for {self.length} samples"
            raise IndexError(msg)
        readers = self._readers
        if readers is None:
            readers = self._readers = [self._reader(f) for f in self.fields]
        sample = tuple(torch.from_numpy(read(i)) for read in readers)
        return self.transform(sample) if self.transform is not None else sample

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_readers"] = None  # maps are made again in each process
        return state

    def __repr__(self) -> str:
        return (
            f"<oocstore.StoreDataset {self.length} samples of {list(self.fields)} "
            f"from {str(self.store.path)!r}>"
        )
