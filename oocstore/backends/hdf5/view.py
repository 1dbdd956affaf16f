"""Readers of committed rows: memory maps of runs, or rows through h5py."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np

from ...errors import (
    CorruptStoreError,
)
from ...manifest import ArraySpec
from .._lazy import LazyArray
from .extents import Run

# -- readers ----------------------------------------------------------------------------------


class ExtentArray(LazyArray):
    """Committed rows that lie in several runs of the file: each run mapped, rows copied out.

    A piece is ``(first row, blocks)``: ``blocks`` has shape ``(extents, rows, *row shape)``,
    equal extents at a constant stride viewed in one mapping of the file.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        pieces: Sequence[tuple[int, np.ndarray]],
        maps: Sequence[np.memmap] = (),
    ) -> None:
        super().__init__(shape, dtype)
        self._starts = [first for first, _ in pieces]
        self._blocks = [blocks for _, blocks in pieces]
        self._mmaps = list(maps)

    def _read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self._shape[1:]), dtype=self._dtype)
        k = max(bisect.bisect_right(self._starts, start) - 1, 0)
        pos = start
        while pos < stop:
            first, blocks = self._starts[k], self._blocks[k]
            rows = blocks.shape[1]
            end = min(stop, first + blocks.shape[0] * rows)
            lo, hi = pos - first, end - first
            i, j = lo // rows, -(-hi // rows)
            # One extent is a view; several are copied once into one C-ordered block.
            part = blocks[i:j].reshape(-1, *self._shape[1:])
            out[pos - start : end - start] = part[lo - i * rows : hi - i * rows]
            pos = end
            k += 1
        return out


def _run_pieces(
    f: Any, name: str, spec: ArraySpec, run: Run, where: str
) -> tuple[list[tuple[int, np.ndarray]], np.memmap | None]:
    """The committed rows of one run as ``ExtentArray`` pieces, in one mapping of the file."""
    first, rows, off, count, stride = run
    used = min(count * rows, spec.length - first)
    if used <= 0:
        return [], None
    row = spec.row_nbytes
    whole, tail = divmod(used, rows)
    last = (used - 1) // rows  # the last extent holding committed rows: the span ends in it
    span = last * stride + (used - last * rows) * row
    try:
        mm = np.memmap(f, dtype=np.uint8, mode="r", offset=off, shape=(span,))
    except (OSError, ValueError, OverflowError) as err:
        raise CorruptStoreError(where, f"cannot map {name!r} ({err})") from None
    inner = [row]  # strides of a row, then of its own axes (C order)
    for dim in spec.shape:
        inner.append(inner[-1] // dim)
    pieces = []
    if whole:
        shape = (whole, rows, *spec.shape)
        step = stride if whole > 1 else rows * row
        pieces.append((first, np.ndarray(shape, spec.dtype, mm, 0, (step, *inner))))
    if tail:
        shape = (1, tail, *spec.shape)
        at = whole * stride
        pieces.append((first + whole * rows, np.ndarray(shape, spec.dtype, mm, at, (0, *inner))))
    return pieces, mm


class _DatasetArray(LazyArray):
    """Rows of an h5py dataset, cut to the committed length (files without a commit record)."""

    def __init__(self, dset: h5py.Dataset, spec: ArraySpec, where: str) -> None:
        super().__init__((spec.length, *spec.shape), spec.dtype)
        self._dset = dset
        self._where = where

    def _read(self, start: int, stop: int) -> np.ndarray:
        try:
            out = np.asarray(self._dset[start:stop])
        except (OSError, RuntimeError, ValueError, KeyError) as err:
            raise CorruptStoreError(self._where, f"HDF5 cannot read rows: {err}") from None
        return np.ascontiguousarray(out.view(self._dtype) if out.dtype != self._dtype else out)


def _empty(spec: ArraySpec) -> np.ndarray:
    out = np.empty((spec.length, *spec.shape), dtype=spec.dtype)
    out.flags.writeable = False
    return out
