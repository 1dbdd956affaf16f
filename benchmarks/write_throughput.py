"""Write throughput of oocstore's npy backend against the disk's limit and npy-append-array.

What it measures
----------------
The same ~2 GB of uint8 image batches (64x64x3 images, 256 per 3 MiB batch, generated once
up front and kept in memory, so generating them costs nothing) are written by each contender:

``raw write + fsync``
    ``f.write`` of every batch to one file, then ``os.fsync``: the disk's limit here.
``npy-append-array``
    ``NpyAppendArray.append`` of every batch. It neither commits nor fsyncs, so each run is
    timed twice: when ``close()`` returns (the data is only in the page cache) and after an
    ``os.fsync`` of its file (durable, comparable with the others).
``oocstore, length known`` / ``oocstore, length unknown``
    ``oocstore.write(generator, path, length=N)`` (preallocated) and without ``length``
    (files grow, then are trimmed). Both keep the default periodic commits (data
    fdatasync'd, then the manifest replaced atomically). The progress bar is off, so
    whether a terminal is attached does not change the figure.

Contenders alternate within each round (the order rotates from round to round) and the
median over the rounds is reported, with the ratio of throughputs to the raw write. Every
timed run is prepared alike: the previous output is deleted and ``sync`` run, the page cache
is dropped (``/proc/sys/vm/drop_caches``, when running as root), the script waits until other
processes leave the CPUs idle (up to ``--max-wait`` seconds), then memory is warmed -- the
source batches are re-touched, a buffer is allocated and a scratch file as large as the output
is written to the page cache and deleted -- because this VM hands freed memory back to its
host and memory touched again afterwards is many times slower for a while. A round during
which other processes used the CPUs is run again (up to ``--max-repeats`` times in all).

The peak RSS of oocstore writing 0.5 GB and 4 GB (length unknown and known) is measured in
fresh subprocesses (``--child-rss GB``) from ``ru_maxrss``, with nothing subtracted. Their
batches cycle through a small pool, so the source does not grow with the size, and they run
before the parent allocates its batches (Linux carries a parent's peak RSS into the
``ru_maxrss`` of a child it forks and execs).

How to run
----------
::

    .venv/bin/python benchmarks/write_throughput.py                # full: 2 GB, 7 rounds
    .venv/bin/python benchmarks/write_throughput.py --quick        # smoke: 256 MB, 1 round
    .venv/bin/python benchmarks/write_throughput.py --out docs/benchmarks.md

``--out`` rewrites the "Write throughput (npy backend)" section of that markdown file and
leaves its other sections alone. ``--dir`` chooses where the outputs go (default: the
temporary directory; it should be on the disk you care about).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import psutil
from _common import DROP_CACHES, drop_caches, write_direct
from npy_append_array import NpyAppendArray

import oocstore

IMAGE_SHAPE = (64, 64, 3)
BATCH_SIZE = 256
BATCH_NBYTES = BATCH_SIZE * math.prod(IMAGE_SHAPE)  # 3 MiB
FULL_GB = 2.0
QUICK_GB = 0.256
FULL_ROUNDS = 7
RSS_SIZES_GB = (0.5, 4.0)
RSS_TARGET_MB = 300
RATIO_TARGET = 0.95
POOL_BATCHES = 4  # distinct batches cycled by the RSS children
WARM_BUFFER_BYTES = 64 * 2**20
QUIET_CORES = 0.1  # a timed run starts once other processes use less CPU than this (cores)
QUIET_MB = 5.0  # ... and write less than this to the disk (MB per second)
NOISY_CORES = 0.25  # a round in which other processes used more CPU than this is repeated,
NOISY_MB = 100.0  # ... or wrote more than this to the disk during one of its runs
SECTION_TITLE = "## Write throughput (npy backend)"

RAW = "raw write + fsync"
RAW_DIRECT = "raw O_DIRECT write + fsync"
NAA = "npy-append-array"
OOC_KNOWN = "oocstore, length known"
OOC_UNKNOWN = "oocstore, length unknown"

WriteFn = Callable[[Sequence[np.ndarray], Path], None]


# -- data -------------------------------------------------------------------------------------


def n_batches_for(gigabytes: float) -> int:
    """Batches that make up ``gigabytes`` (decimal GB), at least one."""
    return max(round(gigabytes * 1e9 / BATCH_NBYTES), 1)


def make_batches(n_batches: int, seed: int = 0) -> list[np.ndarray]:
    """``n_batches`` distinct random uint8 image batches, generated once and kept in memory."""
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, size=(BATCH_SIZE, *IMAGE_SHAPE), dtype=np.uint8)
        for _ in range(n_batches)
    ]


def cycle(pool: Sequence[np.ndarray], n_batches: int) -> Iterator[np.ndarray]:
    """``n_batches`` batches taken round-robin from ``pool`` (no memory grows with n)."""
    for i in range(n_batches):
        yield pool[i % len(pool)]


# -- contenders -------------------------------------------------------------------------------


def fsync_path(path: Path) -> None:
    """Make one file's data durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_raw(batches: Sequence[np.ndarray], path: Path) -> None:
    """Sequential ``f.write`` of every batch (the runner then fsyncs): what the disk can do."""
    with path.open("wb") as f:
        for b in batches:
            f.write(b.data.cast("B"))


def write_raw_direct(batches: Sequence[np.ndarray], path: Path) -> None:
    """The same bytes with ``O_DIRECT`` from two reused buffers: the disk's direct limit."""
    write_direct(batches, path)


def write_npy_append_array(batches: Sequence[np.ndarray], path: Path) -> None:
    """Append every batch with npy-append-array (no commits, no fsync)."""
    with NpyAppendArray(os.fspath(path), delete_if_exists=True) as arr:
        for b in batches:
            arr.append(b)


def write_oocstore_known(batches: Sequence[np.ndarray], path: Path) -> None:
    """``oocstore.write`` with ``length=``: files are preallocated once."""
    n = sum(len(b) for b in batches)
    oocstore.write(iter(batches), path, length=n, progress=False).close()


def write_oocstore_unknown(batches: Sequence[np.ndarray], path: Path) -> None:
    """``oocstore.write`` of a bare generator: files grow, then are trimmed on close."""
    oocstore.write((b for b in batches), path, progress=False).close()


@dataclass(frozen=True)
class Contender:
    """One way of writing the batches."""

    name: str
    write: WriteFn
    durable: bool
    """Is the data durable when ``write`` returns? If not, the runner fsyncs the file."""
    suffix: str


CONTENDERS = (
    Contender(RAW, write_raw, durable=False, suffix=".bin"),
    Contender(RAW_DIRECT, write_raw_direct, durable=True, suffix=".bin"),
    Contender(NAA, write_npy_append_array, durable=False, suffix=".npy"),
    Contender(OOC_KNOWN, write_oocstore_known, durable=True, suffix=".ooc"),
    Contender(OOC_UNKNOWN, write_oocstore_unknown, durable=True, suffix=".ooc"),
)


# -- preparing the machine --------------------------------------------------------------------


def remove(path: Path) -> None:
    """Delete a file or directory tree, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _others_cpu_seconds() -> float:
    """CPU seconds used so far by tasks other than this process and the kernel's threads."""
    hz = os.sysconf("SC_CLK_TCK")
    try:
        user, nice, system = (int(v) for v in Path("/proc/stat").read_text().split()[1:4])
    except (OSError, ValueError):
        return 0.0
    # Kernel threads (pid 2 and its children) do this benchmark's writeback; not "others".
    kthreads = 0.0
    for p in psutil.process_iter(["pid", "ppid", "cpu_times"]):
        t = p.info["cpu_times"]
        if t is not None and (p.info["pid"] == 2 or p.info["ppid"] == 2):
            kthreads += t.user + t.system
    own = os.times()
    return (user + nice + system) / hz - kthreads - (own.user + own.system)


def _others_written_bytes(device: tuple[int, int]) -> int:
    """Bytes written to ``device`` so far, less those this process dirtied (``/proc``)."""
    try:
        disk = next(
            int(f[9]) * 512
            for f in (x.split() for x in Path("/proc/diskstats").read_text().splitlines())
            if (int(f[0]), int(f[1])) == device
        )
        own = next(
            int(x.split()[1])
            for x in Path("/proc/self/io").read_text().splitlines()
            if x.startswith("write_bytes:")
        )
    except (OSError, StopIteration, ValueError, IndexError):
        return 0
    return disk - own


@dataclass(frozen=True)
class Load:
    """What other processes did during an interval."""

    cores: float
    """CPU they used (kernel threads not counted)."""
    written_mb: float
    """MB they wrote to the benchmark's disk (journal and metadata writes count too)."""


class LoadMeter:
    """Measures what other processes do, from one reading to the next."""

    def __init__(self, workdir: Path) -> None:
        st = os.stat(workdir)
        self._device = (os.major(st.st_dev), os.minor(st.st_dev))
        self._last = self._read()

    def _read(self) -> tuple[float, float, int]:
        return time.monotonic(), _others_cpu_seconds(), _others_written_bytes(self._device)

    def read(self) -> Load:
        """Other processes' load since the last reading."""
        now = self._read()
        (t0, cpu0, io0), self._last = self._last, now
        wall = max(now[0] - t0, 1e-9)
        return Load(cores=max(now[1] - cpu0, 0.0) / wall, written_mb=max(now[2] - io0, 0) / 1e6)


def wait_for_quiet(workdir: Path, max_wait: float) -> Load:
    """Wait (up to ``max_wait`` s) until other processes leave the CPUs and the disk idle."""
    meter = LoadMeter(workdir)
    deadline = time.monotonic() + max_wait
    waited = False
    while True:
        time.sleep(1.0)
        load = meter.read()
        quiet = load.cores < QUIET_CORES and load.written_mb < QUIET_MB
        if quiet or time.monotonic() >= deadline:
            if waited:
                print(f"  go: {describe(load)}", file=sys.stderr)
            return load
        if not waited:
            print(f"  waiting: {describe(load)}", file=sys.stderr)
        waited = True


def describe(load: Load) -> str:
    """``"others used 0.12 cores and wrote 3 MB"``."""
    return f"others used {load.cores:.2f} cores and wrote {load.written_mb:.0f} MB"


def warm(batches: Sequence[np.ndarray], scratch: Path, nbytes: int) -> None:
    """Touch the memory the timed run is about to use, so the VM has it mapped already."""
    for b in batches:  # one byte per page of the source
        int(b.reshape(-1)[::4096].sum())
    buf = np.ones(WARM_BUFFER_BYTES, dtype=np.uint8)  # what staging buffers will reuse
    del buf
    # Page cache as large as the output: written, then deleted before any writeback.
    with scratch.open("wb") as f:
        for b in cycle(batches, -(-nbytes // BATCH_NBYTES)):
            f.write(b.data.cast("B"))
    scratch.unlink()


# -- one timed run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """One run: seconds until ``write`` returned and until the data was durable."""

    returned: float
    durable: float
    others: Load
    """What other processes did during the run."""

    @property
    def disturbed(self) -> bool:
        """Did other processes use the CPUs or the disk enough to matter?"""
        return self.others.cores > NOISY_CORES or self.others.written_mb > NOISY_MB


def timed_run(
    contender: Contender,
    batches: Sequence[np.ndarray],
    workdir: Path,
    *,
    drop: bool,
    max_wait: float,
) -> Timing:
    """Prepare the machine the same way, then time one contender writing every batch."""
    out = workdir / f"out{contender.suffix}"
    remove(out)
    if drop:
        drop_caches()  # not root: dirty pages are written back, that is all
    else:
        os.sync()
    wait_for_quiet(workdir, max_wait)
    warm(batches, workdir / "scratch.bin", sum(b.nbytes for b in batches))
    meter = LoadMeter(workdir)
    t0 = time.perf_counter()
    contender.write(batches, out)
    t1 = time.perf_counter()
    if not contender.durable:
        fsync_path(out)
    t2 = time.perf_counter()
    others = meter.read()
    remove(out)
    return Timing(returned=t1 - t0, durable=t2 - t0, others=others)


# -- peak RSS in a fresh process --------------------------------------------------------------


def vm_hwm_kib() -> int | None:
    """This process's own peak RSS (``VmHWM`` of its address space), in KiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def child_rss(gigabytes: float, *, known: bool, workdir: Path) -> None:
    """Write ``gigabytes`` with oocstore in this (fresh) process; print its peak RSS as JSON."""
    n = n_batches_for(gigabytes)
    pool = make_batches(POOL_BATCHES, seed=1)
    out = workdir / f"rss-{os.getpid()}.ooc"
    t0 = time.perf_counter()
    store = oocstore.write(
        cycle(pool, n), out, length=n * BATCH_SIZE if known else None, progress=False
    )
    seconds = time.perf_counter() - t0
    samples = len(store["0"])
    store.close()
    remove(out)
    maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    hwm_kib = vm_hwm_kib()
    result = {
        "known": known,
        "samples": samples,
        "bytes": n * BATCH_NBYTES,
        "seconds": seconds,
        "maxrss_mb": maxrss_kib * 1024 / 1e6,
        "vmhwm_mb": hwm_kib * 1024 / 1e6 if hwm_kib is not None else math.nan,
    }
    print(json.dumps(result))


def measure_rss(gigabytes: float, *, known: bool, workdir: Path) -> dict[str, float]:
    """Run :func:`child_rss` in a fresh interpreter and return what it printed."""
    cmd = [sys.executable, __file__, "--child-rss", str(gigabytes), "--dir", os.fspath(workdir)]
    if known:
        cmd.append("--child-known")
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"  peak RSS writing {gigabytes} GB ({'known' if known else 'unknown'} length): "
        f"{result['maxrss_mb']:.0f} MB",
        file=sys.stderr,
    )
    return result


# -- the whole benchmark ----------------------------------------------------------------------


@dataclass
class Results:
    """Timings per contender, in round order, and the RSS measurements."""

    nbytes: int
    rounds: int
    dropped: bool
    timings: dict[str, list[Timing]] = field(default_factory=dict)
    repeated: int = 0
    """Rounds run again because other processes used the CPUs meanwhile."""
    cadence: str = ""
    """oocstore's periodic commits, as a Writer made with the defaults has them."""
    rss: list[dict[str, float]] = field(default_factory=list)
    revision: str = ""
    """The oocstore measured (read when the run started)."""
    source_changed: bool = False
    """Did oocstore's source files change while the benchmark ran?"""

    def durable(self, name: str) -> list[float]:
        """Seconds until durable, per round."""
        return [t.durable for t in self.timings[name]]

    def median(self, name: str) -> float:
        """Median seconds until durable."""
        return statistics.median(self.durable(name))

    def vs_raw(self, name: str) -> float:
        """Throughput relative to the faster raw write, buffered or direct (medians)."""
        return min(self.median(RAW), self.median(RAW_DIRECT)) / self.median(name)

    def vs_raw_paired(self, name: str) -> float:
        """Median over rounds of the same round's throughput ratio to the raw write."""
        pairs = zip(self.durable(RAW), self.durable(name), strict=True)
        return statistics.median(r / x for r, x in pairs)


def run_round(
    r: int, batches: Sequence[np.ndarray], workdir: Path, *, drop: bool, max_wait: float
) -> dict[str, Timing]:
    """Run every contender once, in an order rotated by the round number."""
    k = r % len(CONTENDERS)
    nbytes = sum(b.nbytes for b in batches)
    out = {}
    for c in CONTENDERS[k:] + CONTENDERS[:k]:
        t = timed_run(c, batches, workdir, drop=drop, max_wait=max_wait)
        out[c.name] = t
        print(
            f"  round {r + 1}  {c.name:<26} {t.durable:6.2f} s  "
            f"{nbytes / t.durable / 1e9:5.2f} GB/s  ({describe(t.others)})",
            file=sys.stderr,
        )
    return out


def run_rounds(
    batches: Sequence[np.ndarray],
    workdir: Path,
    rounds: int,
    *,
    drop: bool,
    max_wait: float,
    max_repeats: int,
) -> Results:
    """Alternate the contenders for ``rounds`` rounds; repeat rounds other processes disturbed.

    A round in which other processes used more than ``NOISY_CORES`` or wrote more than
    ``NOISY_MB`` during a run is run again, at most ``max_repeats`` times in all; after that,
    disturbed rounds are kept and counted in the report.
    """
    res = Results(nbytes=sum(b.nbytes for b in batches), rounds=rounds, dropped=drop)
    res.timings = {c.name: [] for c in CONTENDERS}
    r = 0
    while r < rounds:
        got = run_round(r, batches, workdir, drop=drop, max_wait=max_wait)
        if any(t.disturbed for t in got.values()) and res.repeated < max_repeats:
            res.repeated += 1
            print(f"  round {r + 1} was disturbed: again", file=sys.stderr)
            continue
        for name, t in got.items():
            res.timings[name].append(t)
        r += 1
    return res


def _row(name: str, seconds: list[float], res: Results, note: str) -> str:
    med = statistics.median(seconds)
    spread = f"{min(seconds):.2f} to {max(seconds):.2f}" if len(seconds) > 1 else "-"
    return (
        f"| {name} | {med:.2f} | {spread} | {res.nbytes / med / 1e9:.2f} | "
        f"{min(res.median(RAW), res.median(RAW_DIRECT)) / med:.2f}x | {note} |"
    )


def commit_cadence(workdir: Path) -> str:
    """The periodic commit cadence ``oocstore.write`` uses here by default, as a Writer says."""
    path = workdir / "cadence.ooc"
    writer = oocstore.Writer(path)
    try:
        nbytes = getattr(writer, "commit_every_bytes", None)
        seconds = getattr(writer, "commit_every_seconds", None)
    finally:
        writer.abort()
        remove(path)
    if nbytes is None:
        return "at the default cadence"
    return f"every {nbytes / 2**20:.0f} MiB" + (f" or {seconds:g} s" if seconds else "")


def table(res: Results) -> str:
    """The markdown table of median times, throughput and ratio to the raw write."""
    naa = res.timings[NAA]
    every = f"committed {res.cadence}"
    rows = [
        "| contender | median s | min to max s | GB/s | vs the faster raw | durable at the end? |",
        "|---|---:|---:|---:|---:|---|",
        _row(RAW, res.durable(RAW), res, "yes (one fsync at the end)"),
        _row(RAW_DIRECT, res.durable(RAW_DIRECT), res, "yes (O_DIRECT, one fsync)"),
        _row("raw write, no fsync", [t.returned for t in res.timings[RAW]], res, "no: page cache"),
        _row(f"{NAA} + fsync", [t.durable for t in naa], res, "yes (fsync added here)"),
        _row(f"{NAA}, no fsync", [t.returned for t in naa], res, "no: page cache"),
        _row(OOC_KNOWN, res.durable(OOC_KNOWN), res, f"yes, {every}"),
        _row(OOC_UNKNOWN, res.durable(OOC_UNKNOWN), res, f"yes, {every}"),
    ]
    return "\n".join(rows)


def rss_table(rss: list[dict[str, float]]) -> str:
    """The markdown table of peak RSS per size."""
    rows = [
        "| oocstore writes | length | peak RSS, ru_maxrss (MB) | VmHWM (MB) | time (s) |",
        "|---|---|---:|---:|---:|",
    ]
    rows += [
        f"| {r['bytes'] / 1e9:.1f} GB | {'known' if r['known'] else 'unknown'} | "
        f"{r['maxrss_mb']:.0f} | {r['vmhwm_mb']:.0f} | {r['seconds']:.1f} |"
        for r in rss
    ]
    return "\n".join(rows)


def _met(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def verdict(res: Results) -> list[str]:
    """One line per target: met or missed, with the figure."""
    lines = []
    naa = statistics.median(t.durable for t in res.timings[NAA])
    naa_cache = statistics.median(t.returned for t in res.timings[NAA])
    for name in (OOC_KNOWN, OOC_UNKNOWN):
        ratio, ooc = res.vs_raw(name), res.median(name)
        lines.append(
            f"- {name}: {ratio:.2f}x the faster raw write's throughput (median of per-round ratios "
            f"{res.vs_raw_paired(name):.2f}x; target >= {RATIO_TARGET}: "
            f"{_met(ratio >= RATIO_TARGET)}); {naa / ooc:.2f}x npy-append-array + fsync "
            f"(target >= 1: {_met(ooc <= naa)}), or {naa_cache / ooc:.2f}x npy-append-array "
            "timed without its fsync"
        )
    lines += [
        f"- peak RSS writing {r['bytes'] / 1e9:.1f} GB ({'known' if r['known'] else 'unknown'}"
        f" length): {r['maxrss_mb']:.0f} MB (target < {RSS_TARGET_MB} MB: "
        f"{_met(r['maxrss_mb'] < RSS_TARGET_MB)})"
        for r in res.rss
    ]
    return lines


# -- report -----------------------------------------------------------------------------------


def filesystem_of(path: Path) -> str:
    """``"ext4 on /dev/vda mounted at / (rw,...)"`` for the mount holding ``path``."""
    where = os.fspath(path.resolve())
    mounts = [
        p
        for p in psutil.disk_partitions(all=True)
        if where == p.mountpoint or where.startswith(p.mountpoint.rstrip("/") + "/")
    ]
    if not mounts:
        return "unknown"
    best = max(mounts, key=lambda p: len(p.mountpoint))
    return f"{best.fstype} on {best.device} mounted at {best.mountpoint} ({best.opts})"


def cpu_model() -> str:
    """The CPU's model name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def dist_version(dist: str) -> str:
    """The installed version of a distribution, or ``"?"``."""
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def _git(where: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", os.fspath(where), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def oocstore_revision() -> str:
    """The oocstore imported here: its git commit, and whether its files differ from it."""
    where = Path(oocstore.__file__).resolve().parent
    try:
        rev = _git(where, "rev-parse", "--short", "HEAD")
        modified = _git(where, "status", "--porcelain", "--", ".")
    except (OSError, subprocess.CalledProcessError):
        return f"from {where}, not a git checkout"
    return f"git {rev}" + (", with uncommitted changes in oocstore/" if modified else "")


def source_digest() -> str:
    """A digest of oocstore's source files, to notice them changing during a run."""
    h = hashlib.sha256()
    for path in sorted(Path(oocstore.__file__).resolve().parent.rglob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()


def machine(workdir: Path, res: Results) -> list[str]:
    """Lines describing where and on what the benchmark ran."""
    runs = [t for ts in res.timings.values() for t in ts]
    cores = [t.others.cores for t in runs]
    written = [t.others.written_mb for t in runs]
    return [
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- CPU: {os.cpu_count()} cores ({cpu_model()})",
        f"- other load during the timed runs: other processes used "
        f"{statistics.median(cores):.2f} cores (median; at most {max(cores):.2f}; kernel "
        f"threads not counted) and wrote {statistics.median(written):.0f} MB to the disk "
        f"(median; at most {max(written):.0f}); {sum(t.disturbed for t in runs)} of "
        f"{len(runs)} kept runs were disturbed (> {NOISY_CORES} cores or > {NOISY_MB:.0f} MB)",
        f"- RAM: {psutil.virtual_memory().total / 2**30:.1f} GiB",
        f"- filesystem: {filesystem_of(workdir)}",
        f"- OS: {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, numpy {np.__version__}, "
        f"npy-append-array {dist_version('npy-append-array')}, oocstore "
        f"{oocstore.__version__} ({res.revision})"
        + (
            "; **its source files changed during the run**, so the figures may mix versions"
            if res.source_changed
            else ""
        ),
    ]


def method(res: Results) -> str:
    """One paragraph on how the figures were taken."""
    dropped = ", the page cache dropped (`echo 3 > /proc/sys/vm/drop_caches`)"
    rounds = f"{res.rounds} round{'s' if res.rounds != 1 else ''}"
    return (
        f"{res.nbytes / 1e9:.2f} GB of uint8 images ({'x'.join(map(str, IMAGE_SHAPE))}, "
        f"{BATCH_SIZE} per {BATCH_NBYTES / 2**20:.0f} MiB batch), generated once and kept in "
        f"memory, written by each contender. {rounds}, the contenders alternating (order "
        "rotated each round); the median over rounds is shown. Before each timed run the "
        f"previous output was deleted, `sync` run{dropped if res.dropped else ''}, the script "
        "waited for other processes to leave the CPUs idle, and memory was warmed (source "
        "re-touched, a scratch file as large as the output written and deleted). "
        f"{res.repeated} round{'s were' if res.repeated != 1 else ' was'} run again because "
        "other processes used the CPUs or the disk meanwhile (see Machine). Times run "
        "until the data is durable; npy-append-array never fsyncs, so its runs are shown both "
        "stopped at `close()` and after an added `fsync`. `vs raw` is throughput relative to "
        "the raw write."
    )


def report(res: Results, command: str, workdir: Path) -> str:
    """The markdown section: method, tables, targets, machine and command."""
    parts = [
        SECTION_TITLE,
        "",
        method(res),
        "",
        table(res),
        "",
        "Peak RSS of `oocstore.write` in a fresh process (`ru_maxrss` at the end, nothing "
        f"subtracted; its batches cycle through a pool of {POOL_BATCHES}, "
        f"{POOL_BATCHES * BATCH_NBYTES / 2**20:.0f} MiB; MB = 10^6 bytes):",
        "",
        rss_table(res.rss) if res.rss else "(not measured)",
        "",
        "Targets:",
        "",
        *verdict(res),
        "",
        "Machine:",
        "",
        *machine(workdir, res),
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
    ]
    return "\n".join(parts)


DOC_HEADER = """# Benchmarks

Each section is written by a script in `benchmarks/`; rerun the command it shows to refresh
it. Sections are independent: add new ones under their own `##` heading.

"""


def replace_section(doc: str, section: str) -> str:
    """Put ``section`` in place of the section with the same title, or append it."""
    lines = doc.splitlines(keepends=True)
    start = next((i for i, x in enumerate(lines) if x.rstrip() == SECTION_TITLE), None)
    if start is None:
        return doc.rstrip("\n") + "\n\n" + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + tail if tail else "")


def write_out(path: Path, section: str) -> None:
    """Rewrite this benchmark's section of ``path``, creating the file if needed."""
    doc = path.read_text() if path.exists() else DOC_HEADER
    path.write_text(replace_section(doc, section))


# -- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 256 MB, one round")
    p.add_argument("--gb", type=float, help=f"GB to write (default {FULL_GB})")
    p.add_argument("--rounds", type=int, help=f"rounds of all contenders ({FULL_ROUNDS})")
    p.add_argument("--out", type=Path, help="markdown file whose section to rewrite")
    p.add_argument("--dir", type=Path, help="where outputs go (default: the temp directory)")
    p.add_argument("--max-wait", type=float, default=300.0, help="s to wait for idle CPUs per run")
    p.add_argument(
        "--max-repeats", type=int, default=20, help="disturbed rounds to run again, in all"
    )
    p.add_argument("--no-drop-caches", action="store_true", help="only sync between runs")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--child-rss", type=float, metavar="GB", help=argparse.SUPPRESS)
    p.add_argument("--child-known", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark (or one RSS child) and print the markdown section."""
    args = parse_args(argv)
    base = args.dir or Path(tempfile.gettempdir())
    if args.child_rss is not None:
        child_rss(args.child_rss, known=args.child_known, workdir=base)
        return
    gb = args.gb or (QUICK_GB if args.quick else FULL_GB)
    rounds = args.rounds or (1 if args.quick else FULL_ROUNDS)
    drop = not args.no_drop_caches and os.access(DROP_CACHES, os.W_OK)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` cleans up
    revision, digest = oocstore_revision(), source_digest()
    workdir = Path(tempfile.mkdtemp(prefix="oocstore-bench-", dir=base))
    try:
        # Before the parent holds its batches: see the module docstring.
        rss = []
        if not args.no_rss:
            sizes = (QUICK_GB,) if args.quick else RSS_SIZES_GB
            rss = [measure_rss(s, known=k, workdir=workdir) for s in sizes for k in (False, True)]
        batches = make_batches(n_batches_for(gb))
        print(f"writing {gb:.2f} GB x {len(CONTENDERS)} contenders x {rounds}", file=sys.stderr)
        res = run_rounds(
            batches,
            workdir,
            rounds,
            drop=drop,
            max_wait=args.max_wait,
            max_repeats=args.max_repeats,
        )
        res.rss = rss
        res.cadence = commit_cadence(workdir)
        res.revision = revision
        res.source_changed = source_digest() != digest
        if res.source_changed:
            print("warning: oocstore's source files changed during the run", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    given = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python", os.path.relpath(__file__), *given])
    section = report(res, command, base)
    print(section)
    if args.out is not None:
        write_out(args.out, section)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
