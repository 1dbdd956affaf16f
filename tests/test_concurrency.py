"""Several processes at one store: readers while a writer commits, the single-writer lock, and
a Store crossing into a process pool.

Contract 5: a store being written can be opened by readers in other processes, which see the
committed prefix. Contract 6: a Store pickles as a path, so it crosses into workers without
copying data. Every other process runs ``sys.executable -c`` (or a "spawn" pool), so nothing
is inherited from pytest.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import operator
import os
import pickle
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import oocstore
from oocstore.backends import backend_class, backend_for_path

# The source as code: writer, reader and test build the very same samples from it.
SOURCE = """
import numpy as np

NAMES = {"dense": ("x", "y"), "ragged": ("img", "label")}
X_WIDTH = 64
UNIFORM = 200  # the first images share one shape: the field starts dense, then turns ragged


def batch_sizes(kind, n_batches):
    if kind == "dense":
        return [1 + (i * 37) % 89 for i in range(n_batches)]
    return [1 + (i * 13) % 29 for i in range(n_batches)]


def dense_rows(start, stop):
    g = np.arange(start, stop, dtype=np.int64)
    return (g[:, None] * X_WIDTH + np.arange(X_WIDTH)).astype(np.float32), g


def image(g):
    if g < UNIFORM:
        h, w = 8, 8
    else:
        h, w = 3 + (g * 7919) % 14, 3 + (g * 104729 // 7) % 11
    return ((g + np.arange(h * w * 3)) % 251).astype(np.uint8).reshape(h, w, 3)


def batches(kind, n_batches):
    start = 0
    for n in batch_sizes(kind, n_batches):
        if kind == "dense":
            yield dense_rows(start, start + n)
        else:
            yield [image(g) for g in range(start, start + n)], np.arange(start, start + n)
        start += n
"""

PRELUDE = (
    SOURCE
    + """
import json, os, sys, time
import oocstore

cfg = json.loads(sys.argv[1])
kind = cfg["kind"]


def say(msg):
    os.write(1, (msg + "\\n").encode())
"""
)

# Writes the source with frequent commits, a little slowly; after `pause_after` batches it
# waits until the file `go` exists (the reader creates it once it has seen a partial store),
# so reader and writer overlap however the machine schedules them.
WRITER = (
    PRELUDE
    + """
with oocstore.Writer(
    cfg["path"],
    names=NAMES[kind],
    length=cfg["length"],
    commit_bytes=cfg["commit_bytes"],
    commit_seconds=3600.0,
    resume=cfg.get("resume", False),
) as w:
    for i, batch in enumerate(batches(kind, cfg["n_batches"])):
        w.append(batch)
        if i == cfg["pause_after"]:
            deadline = time.monotonic() + 60
            while not os.path.exists(cfg["go"]) and time.monotonic() < deadline:
                time.sleep(0.005)
        time.sleep(0.002)
say("D")
"""
)

# Polls the store (fresh opens and refresh()) until it is complete; checks every sample it
# sees against the source, that the committed length never goes down, and that the views of
# earlier opens stay valid. Prints a JSON summary; any exception fails it.
# Lazy (not zero-copy) backends read files when sliced, so a view of an older commit cannot
# read an array the writer deleted since (a field changing layout); such a read is retried
# through a fresh view when, and only when, the manifest changed meanwhile.
READER = (
    PRELUDE
    + """
import numpy as np
from oocstore.backends import backend_class

total = cfg["total"]
if kind == "dense":
    X, Y = dense_rows(0, total)
else:
    IMGS = [image(g) for g in range(total)]


def verify(store, start, stop):
    if kind == "dense":
        assert store["x"].shape == (len(store), X_WIDTH)
        assert np.array_equal(store["x"][start:stop], X[start:stop]), "x differs"
        assert np.array_equal(store["y"][start:stop], Y[start:stop]), "y differs"
        return
    assert np.array_equal(store["label"][start:stop], np.arange(start, stop)), "label differs"
    shapes = store.shapes("img")
    assert len(shapes) == len(store)
    for i in range(start, stop):
        assert tuple(shapes[i]) == IMGS[i].shape, f"shape of image {i} differs"
        assert np.array_equal(store.sample("img", i), IMGS[i]), f"image {i} differs"


def stale(store):
    # A view of an older commit, of a backend that reads its files lazily.
    latest = backend_class(store.backend).open(store.path).read_manifest()
    lazy = not backend_class(store.backend).zero_copy
    return lazy and latest.to_json() != store.manifest.to_json()


say("R")
deadline = time.monotonic() + cfg["timeout"]
follower = None  # opened once, then only refresh()ed
kept = []  # (store, length): fresh opens, never refreshed; checked again at the end
seen = []  # distinct committed lengths, in order
checked = 0  # samples verified so far
polls = stale_reads = 0
partial = False
while True:
    assert time.monotonic() < deadline, f"the store never became complete; saw {seen[-5:]}"
    polls += 1
    fresh = follower is None or polls % 3 == 0
    try:
        if fresh:
            current = oocstore.open(cfg["path"])
        else:
            follower.refresh()
            current = follower
    except (oocstore.StoreNotFoundError, oocstore.UnknownBackendError):
        # No commit yet (a store that once opened must never vanish).
        assert follower is None, "the store disappeared after it had opened"
        time.sleep(0.001)
        continue
    if follower is None:
        follower = current
    n = len(current)
    if seen:
        assert n >= seen[-1], f"committed length went down from {seen[-1]} to {n}"
    if not seen or n != seen[-1]:
        seen.append(n)
        if fresh and current is not follower and len(kept) < 8:
            kept.append((current, n))
    try:
        verify(current, checked, n)
        verify(current, 0, min(n, 5))  # the oldest samples, through this view too
    except oocstore.CorruptStoreError:
        if not stale(current):
            raise
        stale_reads += 1
        continue
    checked = n
    if 0 < n < total and not current.complete and not partial:
        partial = True
        open(cfg["go"], "w").close()
    if current.complete:
        assert n == total, f"complete store has {n} samples, the source {total}"
        break
    time.sleep(0.001)
if backend_class(follower.backend).zero_copy:
    # Memory maps outlive the files: views of earlier commits stay readable.
    for old, n in kept:
        assert len(old) == n, "a store that was not refreshed changed its length"
        verify(old, 0, n)
follower.refresh()
verify(follower, 0, total)
verify(oocstore.open(cfg["path"]), 0, total)
say(json.dumps({"polls": polls, "seen": seen, "partial": partial, "stale": stale_reads}))
"""
)

TIMEOUT = 120.0  # generous: a loaded 2-core machine may be slow, but never this slow


SRC: dict[str, Any] = {}
exec(SOURCE, SRC)  # the same definitions the child processes run


def total(kind: str, n_batches: int) -> int:
    return int(sum(SRC["batch_sizes"](kind, n_batches)))


def start(
    script: str, cfg: dict[str, Any], err: Path, *, stdin: int | None = None
) -> subprocess.Popen[bytes]:
    """Run ``script`` with ``cfg`` in a new interpreter; its stderr goes to ``err``."""
    with err.open("wb") as f:
        return subprocess.Popen(
            [sys.executable, "-c", script, json.dumps(cfg)],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=f,
        )


def read_line(proc: subprocess.Popen[bytes], timeout: float = TIMEOUT) -> str:
    """The next line the process prints ('' at end of output); fails the test on timeout."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            proc.kill()
            pytest.fail("a child process printed nothing in time")
        chunk = os.read(fd, 1)
        if not chunk:
            break
        line += chunk
    return line.decode().strip()


def finish(proc: subprocess.Popen[bytes], err: Path) -> None:
    try:
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0, (
        f"child failed (exit {proc.returncode}):\n{err.read_text()[-4000:]}"
    )


@pytest.mark.parametrize(
    ("kind", "length", "commit_bytes"),
    [
        ("dense", 64, 16 * 2**10),  # declared far too short: the files grow several times
        ("ragged", None, 8 * 2**10),  # unknown length; dense -> packed -> padded on close
    ],
    ids=["dense-grows", "ragged"],
)
def test_reader_follows_a_writer(
    store_path: Path, kind: str, length: int | None, commit_bytes: int
) -> None:
    """A reader process polls a store while a writer process appends, grows, commits and
    closes: it never crashes, never sees the committed length go down, and every sample it
    sees equals the source."""
    n_batches = 100
    cfg = {
        "path": os.fspath(store_path),
        "kind": kind,
        "length": length,
        "commit_bytes": commit_bytes,
        "n_batches": n_batches,
        "total": total(kind, n_batches),
        "pause_after": n_batches // 3,
        "go": os.fspath(store_path.with_name("go")),
        "timeout": TIMEOUT,
    }
    reader_err = store_path.with_name("reader.err")
    writer_err = store_path.with_name("writer.err")
    reader = start(READER, cfg, reader_err)
    try:
        assert read_line(reader) == "R"
        writer = start(WRITER, cfg, writer_err)
        try:
            assert read_line(writer) == "D"
        finally:
            finish(writer, writer_err)
        summary = json.loads(read_line(reader) or "{}")
    finally:
        finish(reader, reader_err)
    assert summary["partial"], "the reader never saw a partial store"
    assert summary["seen"][-1] == cfg["total"]
    assert len(summary["seen"]) >= 2
    with oocstore.open(store_path) as store:
        assert store.complete
        assert len(store) == cfg["total"]


@pytest.mark.crash
@pytest.mark.parametrize("kind", ["dense", pytest.param("ragged", marks=pytest.mark.stress)])
def test_several_readers_while_a_writer_is_killed(store_path: Path, kind: str) -> None:
    """Three reader processes poll a store while its writer grows it and is SIGKILLed mid-way,
    then while a resumed writer completes it: none crashes, none sees the committed length go
    down or a sample that differs from the source, and all see the complete store."""
    n_batches = 100
    go = store_path.with_name("go")
    cfg = {
        "path": os.fspath(store_path),
        "kind": kind,
        "length": None,  # unknown: the files grow while readers map them
        "commit_bytes": 16 * 2**10 if kind == "dense" else 8 * 2**10,
        "n_batches": n_batches,
        "total": total(kind, n_batches),
        "pause_after": n_batches // 3,
        "go": os.fspath(go),
        "timeout": TIMEOUT,
    }
    errs = [store_path.with_name(f"reader{i}.err") for i in range(3)]
    readers = [start(READER, cfg, err) for err in errs]
    try:
        for reader in readers:
            assert read_line(reader) == "R"
        writer_err = store_path.with_name("writer.err")
        writer = start(WRITER, cfg, writer_err)
        try:
            deadline = time.monotonic() + TIMEOUT
            while not go.exists():  # a reader saw a partial store: the writer goes on
                assert time.monotonic() < deadline, "no reader saw a partial store"
                assert writer.poll() is None, writer_err.read_text()[-2000:]
                time.sleep(0.002)
            time.sleep(0.03)  # mid-way through the rest of the source
            writer.kill()
            writer.wait(timeout=TIMEOUT)
            assert writer.returncode == -signal.SIGKILL, "the writer finished before the kill"
        finally:
            reap(writer)
        with oocstore.open(store_path) as store:
            killed_at = len(store)
        assert 0 < killed_at < cfg["total"]
        resumed = start(WRITER, {**cfg, "resume": True, "pause_after": -1}, writer_err)
        try:
            assert read_line(resumed) == "D"
        finally:
            finish(resumed, writer_err)
        summaries = [json.loads(read_line(reader) or "{}") for reader in readers]
    finally:
        for reader, err in zip(readers, errs, strict=True):
            finish(reader, err)
    for summary in summaries:
        assert summary["seen"][-1] == cfg["total"]
        assert summary["seen"] == sorted(summary["seen"])


def test_open_races_a_commit_that_deletes_files(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that read the manifest just before a commit deleted or changed a file it names
    (a field turning ragged; the packed arrays dropped on close; a resumed writer extending a
    complete store) opens the newer commit instead of calling the store corrupt, both in
    open() and in refresh()."""
    handle_cls = type(backend_class(backend_for_path(store_path)).open(store_path))
    read_manifest = handle_cls.read_manifest
    after_read: list[Any] = []

    def read_then_write(self: Any) -> Any:
        manifest = read_manifest(self)
        while after_read:  # the writer moves on between the reader's two steps
            after_read.pop(0)()
        return manifest

    monkeypatch.setattr(handle_cls, "read_manifest", read_then_write)
    images = [np.full((4, 4), i, dtype=np.uint8) for i in range(10)]
    images += [np.full((5, 3), 10, dtype=np.uint8), np.full((2, 6), 11, dtype=np.uint8)]
    w = oocstore.Writer(store_path, names=("img", "label"), commit_seconds=3600.0)
    try:
        w.append((images[:6], np.arange(6)))
        w.commit()
        follower = oocstore.open(store_path)
        w.append((images[6:10], np.arange(6, 10)))
        w.commit()

        def turn_ragged() -> None:
            w.append((images[10:], np.arange(10, 12)))
            w.commit()

        after_read.append(turn_ragged)
        assert follower.refresh()
        assert len(follower) >= 10
        assert oocstore.open(store_path).layout("img") == "packed"
        after_read.append(w.close)
        store = oocstore.open(store_path)
    finally:
        w.abort()
    for view in (store, follower):
        view.refresh()
        assert view.complete
        assert len(view) == len(images)
        for i, image in enumerate(images):
            assert np.array_equal(view.sample("img", i), image)

    # A resumed writer extends the complete store: its first commit rewrites the files'
    # headers, which no longer match the complete manifest the reader has just read.
    images += [np.full((5, 3), 12 + i, dtype=np.uint8) for i in range(3)]
    resumed: list[oocstore.Writer] = []

    def extend() -> None:
        w = oocstore.Writer(store_path, names=("img", "label"), resume=True)
        resumed.append(w)
        w.append((images, np.arange(len(images))))  # the first 12 are skipped: committed
        w.commit()

    after_read.append(extend)
    try:
        extended = oocstore.open(store_path)
    finally:
        for w in resumed:
            w.close()
    assert len(extended) in (12, len(images))  # the commit it read, or the newer one
    extended.refresh()
    assert len(extended) == len(images)
    assert extended.complete
    for i, image in enumerate(images):
        assert np.array_equal(extended.sample("img", i), image)


# Holds the store: writes and commits one batch, says "H <pid> <length>", then waits to die.
HOLDER = (
    PRELUDE
    + """
w = oocstore.Writer(cfg["path"], names=NAMES[kind], commit_seconds=3600.0)
if cfg["n_batches"]:
    w.extend(batches(kind, cfg["n_batches"]))
    w.commit()
say(f"H {os.getpid()} {w.committed}")
sys.stdin.read()
"""
)


def reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc`` if it still runs and close its pipes."""
    if proc.returncode is None:
        proc.kill()
        proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


def _source(kind: str, n_batches: int) -> Any:
    return SRC["batches"](kind, n_batches)


def test_second_writer_is_locked_out(store_path: Path) -> None:
    """While one writer process holds a store, another writer (resume, overwrite or plain)
    gets StoreLockedError naming its pid and changes nothing; once the holder is SIGKILLed,
    a new writer takes the store over."""
    err = store_path.with_name("holder.err")
    cfg = {"path": os.fspath(store_path), "kind": "dense", "n_batches": 5}
    holder = start(HOLDER, cfg, err, stdin=subprocess.PIPE)
    try:
        tag, pid_text, committed_text = read_line(holder).split()
        assert tag == "H"
        pid, committed = int(pid_text), int(committed_text)
        assert pid == holder.pid
        assert committed == total("dense", 5)
        attempts = [
            lambda: oocstore.Writer(store_path, resume=True),
            lambda: oocstore.Writer(store_path, overwrite=True),
            lambda: oocstore.write(_source("dense", 8), store_path, names=("x", "y"), resume=True),
        ]
        for attempt in attempts:
            with pytest.raises(oocstore.StoreLockedError, match=rf"\b{pid}\b") as info:
                attempt()
            assert info.value.pid == pid
        with pytest.raises((oocstore.StoreLockedError, oocstore.StoreExistsError)):
            oocstore.Writer(store_path)
        with oocstore.open(store_path) as store:  # readers are never locked out
            assert len(store) == committed
            assert not store.complete
        holder.kill()
        holder.wait(timeout=TIMEOUT)
        assert holder.returncode == -signal.SIGKILL
    finally:
        reap(holder)

    # The kernel dropped the dead holder's flock: no stale lock.
    with oocstore.Writer(store_path, names=("x", "y"), resume=True) as w:
        assert w.skip == committed
        w.extend(_source("dense", 8))
    with oocstore.open(store_path) as store:
        assert store.complete
        n = total("dense", 8)
        assert len(store) == n
        x, y = SRC["dense_rows"](0, n)
        assert np.array_equal(store["x"], x)
        assert np.array_equal(store["y"], y)


def test_lock_before_the_first_commit(store_path: Path) -> None:
    """A writer that holds a store it has not committed to yet locks others out too; killed,
    it leaves nothing that stops the next writer."""
    err = store_path.with_name("holder.err")
    cfg = {"path": os.fspath(store_path), "kind": "dense", "n_batches": 0}
    holder = start(HOLDER, cfg, err, stdin=subprocess.PIPE)
    try:
        tag, pid_text, _ = read_line(holder).split()
        assert tag == "H"
        for resume in (False, True):
            with pytest.raises(oocstore.StoreLockedError, match=rf"\b{pid_text}\b"):
                oocstore.Writer(store_path, resume=resume)
        holder.kill()
        holder.wait(timeout=TIMEOUT)
    finally:
        reap(holder)
    store = oocstore.write(_source("dense", 4), store_path, names=("x", "y"))
    with store:
        assert store.complete
        assert len(store) == total("dense", 4)


def test_store_crosses_into_a_process_pool(store_path: Path) -> None:
    """A Store pickles as its path (well under 1 KB for ~8 MB of data); pool workers unpickle
    it by opening the store and read the same samples."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2048, 1024)).astype(np.float32)  # 8 MiB
    imgs = [
        rng.integers(0, 255, size=(int(h), int(w)), dtype=np.uint8)
        for h, w in rng.integers(1, 40, size=(2048, 2))
    ]
    store = oocstore.write(
        [(x[i : i + 256], imgs[i : i + 256]) for i in range(0, 2048, 256)],
        store_path,
        names=("x", "img"),
    )
    with store:
        assert store.nbytes > 8 * 2**20
        blob = pickle.dumps(store)
        assert len(blob) < 1024, f"a Store pickled to {len(blob)} bytes"
        assert os.fspath(store_path).encode() in blob
        again = pickle.loads(blob)
        assert again.path == store.path
        assert len(again) == len(store)
        picks = [0, 1, 777, 2047]
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=2, mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            lengths = pool.submit(len, store)
            xs = [pool.submit(operator.methodcaller("sample", "x", i), store) for i in picks]
            ims = [pool.submit(operator.methodcaller("sample", "img", i), store) for i in picks]
            assert lengths.result(timeout=TIMEOUT) == 2048
            for i, fut in zip(picks, xs, strict=True):
                assert np.array_equal(fut.result(timeout=TIMEOUT), x[i])
            for i, fut in zip(picks, ims, strict=True):
                assert np.array_equal(fut.result(timeout=TIMEOUT), imgs[i])


def test_no_lock_file_is_left_beside_a_store(store_path: Path) -> None:
    """A closed writer, and one whose source was empty, leave nothing beside the store."""
    parent = store_path.parent
    with pytest.raises(oocstore.EmptySourceError):
        oocstore.write(iter([]), store_path)
    assert sorted(p.name for p in parent.iterdir()) == []
    oocstore.write(_source("dense", 2), store_path, names=("x", "y")).close()
    assert sorted(p.name for p in parent.iterdir()) == [store_path.name]
    with oocstore.Writer(store_path, names=("x", "y"), resume=True) as w:
        w.extend(_source("dense", 3))
    assert sorted(p.name for p in parent.iterdir()) == [store_path.name]


def test_a_lock_whose_file_was_removed_is_not_held_twice(tmp_path: Path) -> None:
    """A process that opened the lock file just before its holder removed it must not hold
    the removed file's lock while another process holds the new file's."""
    from oocstore._lock import StoreLock

    path = tmp_path / ".s.lock"
    first = StoreLock(path, tmp_path / "s")
    first.acquire()
    stale = os.open(path, os.O_RDWR)  # a second process's open, before its flock
    first.release(remove=True)
    assert not path.exists()
    second = StoreLock(path, tmp_path / "s")
    second.acquire()  # creates and locks a new file
    try:
        # The stale descriptor can flock the unlinked inode, but that is not the lock:
        assert not second._is_current(stale)
        third = StoreLock(path, tmp_path / "s")
        with pytest.raises(oocstore.StoreLockedError):
            third.acquire()
    finally:
        os.close(stale)
        second.release()
