"""Indexable sources for the parallel-write tests: module level, so worker processes unpickle
them by importing this light module (no Dask, no pytest)."""

from __future__ import annotations

import os
import signal

import numpy as np


def sample(i: int) -> dict[str, np.ndarray]:
    """Sample ``i``: a float image-like field and an integer label, both from ``i`` alone."""
    x = ((i * 31 + np.arange(6 * 5)) % 97).astype(np.float32).reshape(6, 5)
    return {"x": x, "y": np.int64(i * 7)}


def expected(n: int) -> dict[str, np.ndarray]:
    """All of ``sample(0..n)`` stacked."""
    return {
        "x": np.stack([sample(i)["x"] for i in range(n)]) if n else np.empty((0, 6, 5), "f4"),
        "y": np.array([i * 7 for i in range(n)], dtype=np.int64),
    }


class Samples:
    """``len`` and ``[i]``: a map-style dataset of :func:`sample`."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return sample(i)


class _FaultAt(Samples):
    """Like :class:`Samples`, but reading sample ``at`` in a worker process goes wrong."""

    def __init__(self, n: int, at: int) -> None:
        super().__init__(n)
        self.at = at
        self.parent = os.getpid()

    def fault(self, i: int) -> None:
        """What reading sample ``i`` (= ``at``) does in a worker."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if i == self.at and os.getpid() != self.parent:
            self.fault(i)
        return super().__getitem__(i)


class KillAt(_FaultAt):
    """The worker process reading sample ``at`` is SIGKILLed."""

    def fault(self, i: int) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


class FailAt(_FaultAt):
    """Reading sample ``at`` raises (in a worker)."""

    def fault(self, i: int) -> None:
        msg = f"cannot read sample {i}"
        raise RuntimeError(msg)


class Ragged(Samples):
    """Sample 5 is wider than the others."""

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        s = super().__getitem__(i)
        if i == 5:
            s["x"] = np.zeros((6, 9), dtype=np.float32)
        return s


def fail_block(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:  # type: ignore[type-arg]
    """A ``map_blocks`` function that raises on the block holding row 500 of the input."""
    loc = block_info[0]["array-location"][0] if block_info else (0, 0)
    if loc[0] <= 500 < loc[1]:
        msg = f"block at rows {loc} failed"
        raise RuntimeError(msg)
    return block
