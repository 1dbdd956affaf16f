"""Kill writer processes with SIGKILL at random and at chosen instants, then open and resume.

Contract 5: a writer killed at any instant leaves a store that opens and holds exactly the
samples of its last commit (nothing beyond), and ``resume=True`` continues it to the full
source. Every writer runs in its own process, forked from a multiprocessing forkserver that
has imported numpy and oocstore once (a kill costs milliseconds, not an interpreter start); it
reports each manifest it has written through a pipe, so a test knows a lower bound for what
must have survived.
"""

from __future__ import annotations

import multiprocessing
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import oocstore
from oocstore.backends import BACKENDS as REGISTRY

pytestmark = pytest.mark.crash

# The source as code: the writer process and this test build the very same samples from it.
SOURCE = """
import numpy as np

X_WIDTH = 64
UNIFORM = 300  # the first images share one shape: the field starts dense, then turns ragged
NAMES = {"dense": ("x", "y"), "ragged": ("img", "label")}


def batch_sizes(kind, n_batches):
    if kind == "dense":
        return [1 + (i * 37) % 89 for i in range(n_batches)]
    return [1 + (i * 13) % 29 for i in range(n_batches)]


def total(kind, n_batches):
    return sum(batch_sizes(kind, n_batches))


def dense_rows(start, n):
    g = np.arange(start, start + n, dtype=np.int64)
    x = (g[:, None] * X_WIDTH + np.arange(X_WIDTH)).astype(np.float32)
    return x, g


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
            yield dense_rows(start, n)
        else:
            yield [image(g) for g in range(start, start + n)], np.arange(start, start + n)
        start += n


def length_hint(kind, known, n_batches):
    # "short" under-declares the length, so the files must grow past the preallocation.
    return {"exact": total(kind, n_batches), "short": 1000, "none": None}[known]
"""

# The writer process, run by exec() with CFG (a dict) and CONN (a pipe) as globals. It says
# "S <skip>" when it holds the store, "M <length> <complete>" after each manifest it wrote, "C"
# before close() and "D <calls>" after it, or "E <traceback>" if it fails.
# With "inject", it SIGKILLs itself right before or after the n-th call of any of the named
# backend methods (counting only calls made inside close() when "in_close" is set); "D" then
# reports how many calls were counted. With "die_when_complete", it dies right after writing
# a complete manifest. (Commits may run in a background thread: the count is locked.)
CHILD = (
    SOURCE
    + """
import os, signal, threading, time
import oocstore
from oocstore.backends import backend_class, backend_for_path
from pathlib import Path

cfg = CFG
kind, known, n_batches = cfg["kind"], cfg["known"], cfg["n_batches"]
closing = [False]
said = threading.Lock()  # commits may run in a background thread


def say(msg):
    with said:
        CONN.send_bytes(msg.encode())


def die():
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


cls = backend_class(backend_for_path(Path(cfg["path"])))
real_write_manifest = cls.write_manifest


def write_manifest(self, manifest):
    real_write_manifest(self, manifest)
    say(f"M {manifest.length} {int(manifest.complete)}")
    if manifest.complete and cfg["die_when_complete"]:
        die()


cls.write_manifest = write_manifest
calls = [0]
lock = threading.Lock()
inject = cfg.get("inject")
if inject:
    methods, nth, when, in_close = inject

    def wrap(real):
        def wrapped(self, *args, **kwargs):
            counted = closing[0] or not in_close
            with lock:
                calls[0] += counted
                hit = counted and calls[0] == nth
            if hit and when == "before":
                die()
            out = real(self, *args, **kwargs)
            if hit and when == "after":
                die()
            return out

        return wrapped

    for method in methods:
        setattr(cls, method, wrap(getattr(cls, method)))

try:
    w = oocstore.Writer(
        cfg["path"],
        names=NAMES[kind],
        length=length_hint(kind, known, n_batches),
        commit_bytes=cfg["commit_bytes"],
        commit_seconds=3600.0,
        resume=cfg["resume"],
    )
    say(f"S {w.skip}")
    for batch in batches(kind, n_batches):
        w.append(batch)
        if cfg["throttle"]:
            time.sleep(cfg["throttle"])  # a kill a few ms after a commit lands mid-way
    say("C")
    closing[0] = True
    w.close()
    say(f"D {calls[0]}")
except BaseException:
    import traceback

    say("E " + traceback.format_exc())
    raise
"""
)

SRC: dict[str, Any] = {}
exec(SOURCE, SRC)  # the same definitions the writer process runs

TIMEOUT = 120.0  # per writer process; generous for a loaded machine, never reached normally


def forkserver() -> Any:
    """The multiprocessing context whose server forks the writers.

    The server imports numpy, oocstore and the backends once, if this test starts it (another
    test may have started it already: the writers then import them themselves).
    """
    ctx = multiprocessing.get_context("forkserver")
    backends = [entry["class"].split(":")[0] for entry in REGISTRY.values()]
    ctx.set_forkserver_preload(["numpy", "oocstore", *backends])
    return ctx


@dataclass(frozen=True)
class Source:
    """One deterministic source: dense rows or ragged images, and how its length is declared."""

    kind: str  # "dense" (x: float32[64], y) or "ragged" (img: uint8[h, w, 3], label)
    known: str  # "exact", "short" (under-declared: the files grow) or "none" (unknown)
    n_batches: int
    commit_bytes: int  # small: a commit every few batches

    @property
    def total(self) -> int:
        return int(SRC["total"](self.kind, self.n_batches))

    def batches(self) -> Any:
        return SRC["batches"](self.kind, self.n_batches)

    def expected(self) -> dict[str, Any]:
        """The whole source, concatenated (dense) or as a list of samples (ragged)."""
        n = self.total
        if self.kind == "dense":
            x, y = SRC["dense_rows"](0, n)
            return {"x": x, "y": y}
        return {"img": [SRC["image"](g) for g in range(n)], "label": np.arange(n)}

    def write(self, path: Path, *, resume: bool) -> oocstore.Store:
        """Write (or resume) the store in this process."""
        return oocstore.write(
            self.batches(),
            path,
            names=SRC["NAMES"][self.kind],
            length=SRC["length_hint"](self.kind, self.known, self.n_batches),
            commit_bytes=self.commit_bytes,
            resume=resume,
        )


@dataclass
class Run:
    """What one writer process did before it died or finished."""

    committed: int = -1  # largest length of a manifest it reported written (-1: none)
    complete: bool = False  # it reported writing a complete manifest
    skip: int | None = None  # the Writer's skip (resume), once it held the store
    finished: bool = False  # close() returned
    calls: int = 0  # backend calls counted for "inject", when it finished
    killed: bool = False
    lines: list[str] = field(default_factory=list)


def run_writer(
    path: Path,
    src: Source,
    *,
    resume: bool,
    plan: tuple[Any, ...] | None = None,
    inject: tuple[list[str], int, str, bool] | None = None,
    die_when_complete: bool = False,
    throttle: float = 0.0,
) -> Run:
    """Run a writer process; kill it as ``plan`` says (or let ``inject`` kill it).

    ``plan`` is ``("commits", k, delay)``: SIGKILL ``delay`` seconds after the k-th reported
    commit of a non-empty manifest; ``("close", delay)``: ``delay`` seconds after close()
    began; ``("time", delay)``: ``delay`` seconds after the writer took the store (a random
    instant: before, during or after any commit); None: let it run.
    """
    cfg = {
        "path": str(path),
        "kind": src.kind,
        "known": src.known,
        "n_batches": src.n_batches,
        "commit_bytes": src.commit_bytes,
        "resume": resume,
        "inject": inject,
        "die_when_complete": die_when_complete,
        "throttle": throttle,
    }
    ctx = forkserver()
    messages, conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=exec, args=(CHILD, {"CFG": cfg, "CONN": conn}), name="oocstore-writer"
    )
    proc.start()
    conn.close()  # the writer holds the only write end: its death is the end of messages
    run = Run()
    deadline = time.monotonic() + TIMEOUT
    commits = 0
    kill_at: float | None = None
    error = ""
    try:
        while True:
            now = time.monotonic()
            if kill_at is not None and now >= kill_at:
                proc.kill()
                kill_at = None
            if now > deadline:
                pytest.fail(f"writer process hung; its last messages: {run.lines[-5:]}")
            if not messages.poll(0.5 if kill_at is None else max(kill_at - now, 0.0)):
                continue
            try:
                line = messages.recv_bytes().decode()
            except EOFError:
                break
            run.lines.append(line)
            tag, *rest = line.split(maxsplit=1 if line.startswith("E") else -1)
            if tag == "M":
                run.committed = max(run.committed, int(rest[0]))
                run.complete |= rest[1] == "1"
                commits += int(rest[0]) > 0
            elif tag == "S":
                run.skip = int(rest[0])
            elif tag == "D":
                run.finished = True
                run.calls = int(rest[0])
            elif tag == "E":
                error = rest[0]
            if kill_at is None and plan is not None:
                if plan[0] == "commits" and tag == "M" and commits == plan[1]:
                    kill_at = time.monotonic() + plan[2]
                    plan = None
                elif (plan[0] == "close" and tag == "C") or (plan[0] == "time" and tag == "S"):
                    kill_at = time.monotonic() + plan[1]
                    plan = None
        proc.join(TIMEOUT)
    finally:
        if proc.exitcode is None:
            proc.kill()
            proc.join()
        messages.close()
    run.killed = proc.exitcode == -signal.SIGKILL
    if not (run.killed or (proc.exitcode == 0 and run.finished)):
        pytest.fail(f"writer process failed (exit {proc.exitcode}):\n{error}")
    return run


def check_prefix(store: oocstore.Store, src: Source, want: dict[str, Any]) -> int:
    """The store holds exactly the source's first ``len(store)`` samples, nothing beyond."""
    n = len(store)
    assert 0 <= n <= src.total
    if src.kind == "dense":
        for name in ("x", "y"):
            arr = store[name]
            assert arr.shape[0] == n
            assert np.array_equal(arr, want[name][:n]), f"field {name!r} differs from the source"
        return n
    assert np.array_equal(store["label"], want["label"][:n])
    shapes = store.shapes("img")
    assert shapes.shape == (n, 3)
    assert np.array_equal(shapes, np.array([s.shape for s in want["img"][:n]]).reshape(n, 3))
    for i in range(n):
        got = store.sample("img", i)
        assert np.array_equal(got, want["img"][i]), f"image {i} differs from the source"
    if store.layout("img") == "packed":
        assert len(store["img"]) == n
    else:
        assert store["img"].shape[0] == n
    return n


def check_after_kill(path: Path, src: Source, run: Run, want: dict[str, Any]) -> int:
    """Open the killed writer's store; return its length (-1 when no commit ever landed)."""
    if run.committed < 0:
        # Killed before or during its first commit: there may be no store yet.
        try:
            store = oocstore.open(path)
        except (oocstore.StoreNotFoundError, oocstore.UnknownBackendError):
            return -1
    else:
        store = oocstore.open(path)
    with store:
        n = check_prefix(store, src, want)
        assert n >= run.committed, f"a commit of {run.committed} samples was lost: {n} remain"
        if run.complete:
            assert store.complete
        if store.complete:
            assert n == src.total
    return n


def check_full(store: oocstore.Store, src: Source, want: dict[str, Any]) -> None:
    """The store is complete and equals the whole source (ragged: padded with zeros)."""
    assert store.complete
    assert len(store) == src.total
    check_prefix(store, src, want)
    if src.kind == "ragged":
        imgs = want["img"]
        top = np.max([s.shape for s in imgs], axis=0)
        assert store.layout("img") == "padded"
        padded = np.zeros((len(imgs), *top), dtype=np.uint8)
        for i, s in enumerate(imgs):
            padded[(i, *(slice(0, d) for d in s.shape))] = s
        assert np.array_equal(store["img"], padded)


# Few MB and a few dozen commits at most: on a busy disk every commit costs several fsyncs.
RANDOM_CASES = [
    Source("dense", "none", 80, 48 * 2**10),  # ~3600 rows, ~1 MB in ~20 commits
    Source("dense", "short", 80, 48 * 2**10),  # declared 1000 rows: the files grow
    Source("ragged", "exact", 60, 12 * 2**10),  # ~900 images, dense then packed, ~20 commits
]


@pytest.mark.parametrize("src", RANDOM_CASES, ids=lambda s: f"{s.kind}-{s.known}")
def test_random_kills_then_resume(store_path: Path, src: Source) -> None:
    """Writers resume one store in turn, each SIGKILLed at a random instant; a last one ends it.

    After every kill the store opens and holds exactly a prefix of the source, at least as
    long as the last commit the writer reported and never shorter than before the kill.
    """
    rng = random.Random(f"{src.kind}-{src.known}")
    want = src.expected()
    # Mid-write kills first: each costs a few of the source's ~20 commits, so all of them land
    # before the end however fast the machine; then kills at random instants of close().
    plans: list[tuple[Any, ...]] = [
        ("commits", rng.randint(1, 2), rng.uniform(0.0, 0.005)) for _ in range(3)
    ]
    plans += [("close", rng.uniform(0.0, 0.01)) for _ in range(2)]
    previous = -1
    kills = 0
    for round_, plan in enumerate(plans):
        run = run_writer(store_path, src, resume=round_ > 0, plan=plan, throttle=0.001)
        kills += run.killed
        if round_ > 0:
            assert run.skip == max(previous, 0), "a resumed writer must skip what is committed"
        n = check_after_kill(store_path, src, run, want)
        if run.committed > 0:
            assert n > 0
        assert n >= previous, "the committed length went down across a crash"
        previous = n
    assert kills >= 3, "writers were not killed mid-way: the test lost its point"
    with src.write(store_path, resume=True) as store:
        check_full(store, src, want)


# Every backend call that changes files: dying right before each of them is a distinct crash.
MUTATING = [
    "create_array",
    "reserve",
    "write",
    "link_array",
    "delete_array",
    "sync",
    "finalize",
    "write_manifest",
]
# Steps of writing to die at: (methods, n-th call of one of them, before/after it).
DENSE_POINTS = [
    (["write_manifest"], 1, "before"),  # before the first commit: no store yet
    (["write_manifest"], 1, "after"),  # the empty store of the first commit
    (["sync"], 3, "before"),
]
RAGGED_POINTS = [
    (["link_array"], 1, "after"),  # the dense field being relabelled as packed values
    (["delete_array"], 1, "before"),  # packed layout committed, the dense file remains
]
SWEEP_LIMIT = 200  # calls inside close() at most; a sweep that long means close() changed a lot


@pytest.mark.parametrize(
    ("src", "points"),
    [
        (Source("dense", "short", 30, 64 * 2**10), DENSE_POINTS),  # ~6 commits, grows once
        (Source("ragged", "none", 40, 32 * 2**10), RAGGED_POINTS),  # ~5 commits
    ],
    ids=["dense", "ragged"],
)
def test_kill_at_steps_of_close(store_path: Path, src: Source, points: list[Any]) -> None:
    """A writer dies at chosen steps of writing, then right before file-changing backend calls
    inside close() (the first three, then every second to fourth call, seeded) and right after its
    final manifest: each time the store opens with its last commit, and a resume completes it.
    """
    rng = random.Random(f"close-{src.kind}")
    want = src.expected()
    runs = 0

    def crash_and_resume(
        inject: tuple[list[str], int, str, bool] | None, die_when_complete: bool = False
    ) -> Run:
        nonlocal runs
        path = store_path.with_name(f"run{runs}{store_path.suffix}")
        runs += 1
        run = run_writer(
            path, src, resume=False, inject=inject, die_when_complete=die_when_complete
        )
        check_after_kill(path, src, run, want)
        with src.write(path, resume=True) as store:
            check_full(store, src, want)
        return run

    for methods, nth, when in points:
        run = crash_and_resume((methods, nth, when, False))
        assert run.killed, f"the writer never reached {(methods, nth, when)}"
    nth = 1
    kills = 0
    while True:
        run = crash_and_resume((MUTATING, nth, "before", True))
        if run.finished:
            break
        kills += 1
        assert nth < SWEEP_LIMIT, f"close() made more than {SWEEP_LIMIT} backend calls"
        nth += 1 if nth < 3 else rng.randint(2, 4)
    assert kills >= 3, "close() must at least sync, trim and write its manifest"
    run = crash_and_resume(None, die_when_complete=True)
    assert run.killed
    assert run.complete
