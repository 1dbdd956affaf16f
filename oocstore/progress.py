"""Progress display: samples/s, bytes written and free disk, with or without a known length."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from ._durable import free_bytes

__all__ = ["Progress", "format_bytes"]


def format_bytes(n: float) -> str:
    """``1234567`` -> ``'1.2 MB'``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


class Progress:
    """A tqdm bar over samples; shows bytes written and free disk as it goes."""

    def __init__(self, enabled: bool | None, total: int | None, path: Path, desc: str) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._bar: Any = None
        self._path = path
        self._bytes = 0
        self._last = 0.0
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total,
                unit=" samples",
                unit_scale=True,
                desc=desc,
                dynamic_ncols=True,
                file=sys.stderr,
            )

    def update(self, samples: int, nbytes: int) -> None:
        """Count ``samples`` more samples and ``nbytes`` more bytes."""
        if self._bar is None:
            return
        self._bytes += nbytes
        self._bar.update(samples)
        now = time.monotonic()
        if now - self._last > 0.5:
            self._last = now
            free = free_bytes(self._path if self._path.exists() else self._path.parent)
            self._bar.set_postfix_str(
                f"{format_bytes(self._bytes)} written, "
                f"{format_bytes(free) if free is not None else '?'} free",
                refresh=False,
            )

    def close(self) -> None:
        """Finish the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
