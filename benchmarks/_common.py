"""What every benchmark here needs: a cold page cache, warmed memory, peak RSS.

This VM hands freed memory back to its host and memory touched again is ~20x slower for a
while, so before each timed part the benchmarks drop the page cache and then warm as much
memory (anonymous and page cache) as the part is about to use.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_caches() -> bool:
    """``sync`` and, as root, drop the page cache; whether it was dropped."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


def warm_memory(nbytes: int) -> None:
    """Touch ``nbytes`` of fresh anonymous memory (staging buffers will reuse it)."""
    buf = np.ones(max(nbytes, 1), dtype=np.uint8)
    buf[::4096] = 2
    del buf


def warm_page_cache(scratch_dir: Path, nbytes: int, block: int = 8 << 20) -> None:
    """Write ``nbytes`` of page cache into a scratch file and delete it before writeback."""
    buf = np.ones(block, dtype=np.uint8)
    scratch = scratch_dir / "scratch.tmp"
    try:
        with scratch.open("wb") as f:
            for _ in range(-(-nbytes // block)):
                f.write(buf.data)
    finally:
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()  # dirty pages of a deleted file are dropped, never written


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


def vm_hwm_mb() -> float:
    """This process's peak RSS (VmHWM) in MB."""
    return _status_mb("VmHWM:")


def vm_rss_mb() -> float:
    """This process's current RSS in MB."""
    return _status_mb("VmRSS:")


def replace_section(path: Path, title: str, section: str) -> None:
    """Replace the markdown section headed by the line ``title`` in ``path`` (or append it).

    A section runs to the next ``## `` heading; the rest of the file is left as it is. The
    heading must be a whole line, so ``## Writing`` does not match ``## Writing from ...``.
    """
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    heading = re.search(rf"^{re.escape(title)}[ \t]*$", text, re.MULTILINE)
    start = heading.start() if heading else -1
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(title))
        rest = "" if end < 0 else text[end:]
        text = text[:start] + section.rstrip("\n") + "\n" + rest
    path.write_text(text.rstrip("\n") + "\n")


def write_direct(pieces: Iterable[Any], path: Path, buffer_bytes: int = 8 * 2**20) -> int:
    """Write the bytes of ``pieces`` (arrays or buffers) to a new file at ``path`` with
    ``O_DIRECT``: copied into two reused aligned buffers, each written by a helper thread while
    the other fills. The disk's limit without the page cache; returns the bytes written."""
    import mmap
    from concurrent.futures import Future, ThreadPoolExecutor

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    bufs = [mmap.mmap(-1, buffer_bytes) for _ in range(2)]
    views = [memoryview(b) for b in bufs]
    pending: list[Future[int] | None] = [None, None]
    k = fill = offset = total = 0
    try:
        with ThreadPoolExecutor(1) as writer:
            for piece in pieces:
                data = memoryview(np.ascontiguousarray(piece)).cast("B")
                total += len(data)
                pos = 0
                while pos < len(data):
                    take = min(buffer_bytes - fill, len(data) - pos)
                    views[k][fill : fill + take] = data[pos : pos + take]
                    fill += take
                    pos += take
                    if fill == buffer_bytes:
                        pending[k] = writer.submit(os.pwrite, fd, views[k], offset)
                        offset += buffer_bytes
                        k, fill = 1 - k, 0
                        done, pending[k] = pending[k], None
                        if done is not None:
                            done.result()
            for f in pending:
                if f is not None:
                    f.result()
        if fill:  # the tail, padded to a page for O_DIRECT, then cut to the true length
            os.pwrite(fd, views[k][: -(-fill // 4096) * 4096], offset)
            os.ftruncate(fd, total)
        os.fsync(fd)
    finally:
        os.close(fd)
    return total
