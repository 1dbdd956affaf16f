"""A full disk at many fill levels on every backend: DiskFullError, never a signal death.

A 20 MiB tmpfs is mounted (root only; skipped cleanly otherwise) and filled to a chosen level;
a writer process in a fresh interpreter then writes until the disk is full. It must catch
``oocstore.DiskFullError`` (an ``OSError`` with ``errno.ENOSPC``), read every committed sample
of the store on the still-full disk, and exit normally: no SIGBUS, no SIGSEGV, also not at
interpreter exit (its Writer, h5py and zarr objects are left for the interpreter to finalise,
or closed by ``abort()`` on the full disk). The store must then open with its last commit,
and once the filler is deleted a resumed writer must complete it to the whole source.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import oocstore

from .conftest import SUFFIX
from .stress import MODES, record
from .test_crash import SOURCE, Source, check_full, check_prefix

MiB = 2**20
SIZE = 20 * MiB  # the tmpfs

# The writer process: says "M <length> <complete>" after each manifest it wrote, "S <skip>"
# once it holds the store, "D" when close() returned, "FULL <errno> <type>" when the disk was
# full, then "R <length>" after reading every committed sample on the full disk.
CHILD = (
    SOURCE
    + """
import json, os, sys
from pathlib import Path
import oocstore
from oocstore.backends import backend_class, backend_for_path

cfg = json.loads(sys.argv[1])
path = cfg["path"]


def say(msg):
    os.write(1, (msg + "\\n").encode())


cls = backend_class(backend_for_path(Path(path)))
real_write_manifest = cls.write_manifest


def write_manifest(self, manifest):
    real_write_manifest(self, manifest)
    say(f"M {manifest.length} {int(manifest.complete)}")


cls.write_manifest = write_manifest
kind, known, n_batches = cfg["kind"], cfg["known"], cfg["n_batches"]
w = None
try:
    w = oocstore.Writer(
        path,
        names=NAMES[kind],
        length=length_hint(kind, known, n_batches),
        commit_bytes=cfg["commit_bytes"],
        commit_seconds=3600.0,
        resume=cfg["resume"],
        **cfg["options"],
    )
    say(f"S {w.skip}")
    for batch in batches(kind, n_batches):
        w.append(batch)
    w.close()
    say("D")
except oocstore.DiskFullError as err:
    assert isinstance(err, OSError), type(err).__mro__
    say(f"FULL {err.errno} {type(err).__name__}")
    if cfg["abort"] and w is not None:
        try:
            w.abort()  # commits again on the full disk: may be full again, never worse
        except oocstore.DiskFullError:
            pass
    try:
        store = oocstore.open(path)
    except (oocstore.StoreNotFoundError, oocstore.UnknownBackendError):
        say("R -1")  # full before the first commit: there is no store
    else:
        for name in store.fields:
            for i in range(len(store)):
                store.sample(name, i)  # reads every committed byte through the maps
        say(f"R {len(store)}")
"""
)

TIMEOUT = 300.0
LEVELS = {"fast": 1, "full": 24}


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A freshly mounted 20 MiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path_factory.mktemp("small-disk")
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={SIZE // MiB}m", "tmpfs", os.fspath(mnt)]
    if subprocess.run(cmd, capture_output=True, check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", os.fspath(mnt)], capture_output=True, check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_to(mnt: Path, free: int) -> Path:
    """Write a filler file that leaves about ``free`` bytes of the disk free."""
    filler = mnt / "filler"
    size = max(free_bytes(mnt) - free, 0)
    with filler.open("wb") as f:
        block = b"\1" * MiB
        while size > 0:
            f.write(block[: min(size, MiB)])
            size -= MiB
    return filler


def clean(mnt: Path) -> None:
    for entry in mnt.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def run_child(cfg: dict[str, Any]) -> tuple[int, list[str], str]:
    """Run the writer in a new interpreter: its exit status, its lines, its stderr."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    return proc.returncode, proc.stdout.splitlines(), proc.stderr


def levels(mode: str, backend: str) -> list[tuple[Source, int, bool]]:
    """(source, free bytes to leave, abort after the error) per fill level."""
    rng = random.Random(f"disk-full-{backend}")
    dense = [Source("dense", k, 450, 256 * 2**10) for k in ("none", "short", "exact")]
    ragged = [Source("ragged", k, 450, 64 * 2**10) for k in ("none", "exact")]
    out = []
    n = LEVELS[mode]
    for i in range(n):
        src = ragged[i // 4 % 2] if i % 4 == 3 else dense[i % 3]
        data = src.total * (64 * 4 + 8) if src.kind == "dense" else src.total * 400
        # From nearly nothing free to a little more than the data: every phase of writing
        # (create, reserve, grow, commit, the layout pass and trim of close) meets the wall.
        frac = (i + rng.random()) / n if mode == "full" else 0.5
        out.append((src, int(frac * 1.1 * data), i % 2 == 1))
    return out


def signal_name(code: int) -> str:
    return signal.Signals(-code).name if code < 0 else f"exit {code}"


@pytest.mark.parametrize("mode", MODES)
def test_full_disk_at_many_fill_levels(small_disk: Path, backend: str, mode: str) -> None:
    """At each fill level: DiskFullError in the child, a clean exit, the last commit on reopen,
    and a resume that completes the store once space is freed."""
    counts = {
        "levels": 0,
        "disk_full_raised": 0,
        "completed_without_error": 0,
        "signal_deaths": 0,
        "other_failures": 0,
        "lost_commits": 0,
        "failed_opens": 0,
        "resumed_to_completion": 0,
    }
    problems: list[str] = []
    for i, (src, free, abort) in enumerate(levels(mode, backend)):
        clean(small_disk)
        path = small_disk / f"s{SUFFIX[backend]}"
        filler = fill_to(small_disk, free)
        where = f"level {i} ({src.kind}-{src.known}, {free / MiB:.2f} MiB free)"
        cfg = {
            "path": os.fspath(path),
            "kind": src.kind,
            "known": src.known,
            "n_batches": src.n_batches,
            "commit_bytes": src.commit_bytes,
            "resume": False,
            "abort": abort,
            # Zarr preallocates whole chunk files (~8 MiB by default, one per array for a small
            # store): a ragged store of 4 MB would need more than the 20 MiB disk to finish.
            "options": {"chunks": 2048} if backend == "zarr" else {},
        }
        code, lines, err = run_child(cfg)
        counts["levels"] += 1
        if code < 0:
            counts["signal_deaths"] += 1
            problems.append(f"{where}: writer died of {signal_name(code)}\n{err[-2000:]}")
            continue
        if code != 0:
            counts["other_failures"] += 1
            problems.append(f"{where}: writer failed ({signal_name(code)})\n{err[-3000:]}")
            continue
        full = [line for line in lines if line.startswith("FULL")]
        if full:
            counts["disk_full_raised"] += 1
            assert full[0] == "FULL 28 DiskFullError", full
        else:
            assert "D" in lines, lines[-5:]
            counts["completed_without_error"] += 1
        committed = max((int(x.split()[1]) for x in lines if x.startswith("M ")), default=-1)
        want = src.expected()
        try:
            store = oocstore.open(path)
        except (oocstore.StoreNotFoundError, oocstore.UnknownBackendError) as e:
            if committed >= 0:
                counts["failed_opens"] += 1
                problems.append(f"{where}: a store with a commit of {committed} is gone: {e}")
                continue
        except oocstore.OocstoreError as e:
            counts["failed_opens"] += 1
            problems.append(f"{where}: the store does not open: {e!r}")
            continue
        else:
            with store:
                try:
                    n = check_prefix(store, src, want)
                    assert n >= committed, f"a commit of {committed} was lost: {n} remain"
                except AssertionError as e:
                    counts["lost_commits"] += 1
                    problems.append(f"{where}: {e}")
                    continue
        filler.unlink()  # free the space, then resume to the end
        code, lines, err = run_child({**cfg, "resume": True})
        if code != 0 or "D" not in lines:
            counts["other_failures"] += 1
            problems.append(
                f"{where}: resume failed ({signal_name(code)}): {lines[-3:]}\n{err[-3000:]}"
            )
            continue
        with oocstore.open(path) as store:
            check_full(store, src, want)
        counts["resumed_to_completion"] += 1
    record(mode, "disk_full", backend, counts)
    assert not problems, "\n\n".join(problems)
    if mode == "full":
        assert counts["disk_full_raised"] >= 20, counts
    else:
        assert counts["disk_full_raised"] >= 1, counts
