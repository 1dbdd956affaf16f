"""Hostile stores: hypothesis mutates every file of a valid store, then a sandboxed process
opens it, reads every field and sample and runs verify().

Each case must end in a correct read (the committed prefix of the original data, or damage that
``verify()`` reports), or in a documented ``OocstoreError`` (``CorruptStoreError`` mostly),
within a time bound. It must never leak ``OverflowError``, ``IndexError``, ``TypeError``,
``RecursionError``, ``RuntimeError``, ``KeyError``, ``UnicodeDecodeError`` (or any other
non-oocstore exception), never die of a signal, never hang, never change a byte (or an mtime)
of the store or of anything outside it. Mutations: byte flips (biased to bytes that are not
zero: headers, JSON, data), truncations, extensions, deleted files and directories, planted
symlinks (to an identical copy outside: reading through it would be a silent follow), swapped
files, hostile values in JSON documents (oocstore.json, zarr.json, the HDF5 commit record,
re-sealed with a valid checksum so the manifest validation itself is reached) and hostile
``.npy`` headers. The full run (``make stress``) makes >= 1,000 cases per backend.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import shutil
import stat
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import oocstore

from .conftest import SUFFIX
from .stress import MODES, record

CASES = {"fast": 40, "full": 1100}
CASE_TIMEOUT = 60.0  # seconds per case; a case takes ~0.05 s, a loaded machine ~1 s
N = 24  # samples in a template store
MAX_CASE_BYTES = 64 * 2**20  # a resumed 24-sample store (+ 3 MiB of extension) stays far below

# The sandbox: opens stores named over a pipe and reports what happened. Run by exec() in a
# process of its own (a crash or hang there is what the test looks for).
SANDBOX = r'''
import resource, traceback
import numpy as np
import oocstore
from oocstore.reader import PackedArray

# A store of a few KB never needs GBs: an allocation sized by a tampered number fails here.
resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))
templates = {}


def read_all(store):
    """Every field, every sample, every view; as comparable bytes."""
    out = {"length": len(store), "fields": list(store.fields), "data": {}}
    for name in store.fields:
        arr = store[name]
        layout = store.layout(name)
        shapes = np.asarray(store.shapes(name))
        samples = [np.asarray(store.sample(name, i)) for i in range(len(store))]
        if isinstance(arr, PackedArray):
            whole = [np.asarray(s) for s in arr]
            n_view = len(arr)
        else:
            whole = np.asarray(arr[:])
            n_view = len(arr)
            # a few slices and fancy indices, as users read
            np.asarray(arr[len(store) // 2 :])
            np.asarray(arr[::3])
        for batch in store.iter_batches(7):
            pass
        out["data"][name] = {
            "layout": layout,
            "n_view": n_view,
            "shapes": shapes.tolist(),
            "samples": [(s.dtype.str, s.shape, s.tobytes()) for s in samples],
            "whole": (
                [(s.dtype.str, s.shape, s.tobytes()) for s in whole]
                if isinstance(whole, list)
                else (whole.dtype.str, whole.shape, whole.tobytes())
            ),
        }
    return out


def matches(got, want):
    """The read is the committed prefix of the template's data."""
    n = got["length"]
    if n > want["length"] or got["fields"] != want["fields"]:
        return False
    for name in want["fields"]:
        g, w = got["data"][name], want["data"][name]
        if g["n_view"] != n or g["shapes"] != w["shapes"][:n]:
            return False
        if g["samples"] != w["samples"][:n]:
            return False
        if isinstance(w["whole"], list):
            continue
        dt, shape, data = w["whole"]
        gdt, gshape, gdata = g["whole"] if not isinstance(g["whole"], list) else (None, None, None)
        row = len(data) // max(want["length"], 1)
        if (gdt, gshape, gdata) != (dt, (n, *shape[1:]), data[: n * row]):
            return False
    return True


def failure(err):
    """The verdict on an exception: refused (one of oocstore's own) or leaked."""
    if isinstance(err, oocstore.OocstoreError):
        return {"outcome": "refused", "type": type(err).__name__, "detail": str(err)[:300]}
    return {"outcome": "leak", "type": type(err).__name__,
            "detail": traceback.format_exc()[-3000:]}


while True:
    try:
        path, template = CONN.recv()
    except EOFError:
        break
    if template is None:  # resume: open the mutated store read-write and close it
        result = {}
        try:
            with oocstore.Writer(path, resume=True):
                pass
            with oocstore.open(path) as store:
                read_all(store)
            result["outcome"] = "ok"
        except BaseException as err:
            result = failure(err)
        CONN.send(result)
        continue
    if template not in templates:
        with oocstore.open(template) as t:
            templates[template] = read_all(t)
    result = {}
    try:
        with oocstore.open(path) as store:
            got = read_all(store)
            damage = store.verify()
    except BaseException as err:
        result = failure(err)
    else:
        result["outcome"] = "ok" if matches(got, templates[template]) else (
            "detected" if damage else "wrong"
        )
        if result["outcome"] == "wrong":
            result["detail"] = f"length {got['length']} of {templates[template]['length']}"
    CONN.send(result)
'''


class Sandbox:
    """One reader process; killed and replaced when a case hangs or it dies."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("forkserver")
        self.proc: Any = None
        self.conn: Any = None

    def start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(
            target=exec, args=(SANDBOX, {"CONN": child}), name="oocstore-sandbox"
        )
        self.proc.start()
        child.close()

    def run(self, path: Path, template: Path | None) -> dict[str, Any]:
        """The sandbox's verdict on ``path`` (read against ``template``, or resumed when it is
        None); a hang or a death is a verdict too."""
        if self.proc is None or not self.proc.is_alive():
            self.start()
        self.conn.send((os.fspath(path), None if template is None else os.fspath(template)))
        if not self.conn.poll(CASE_TIMEOUT):
            self.stop()
            return {"outcome": "hang", "detail": f"no answer in {CASE_TIMEOUT} s"}
        try:
            return dict(self.conn.recv())
        except (EOFError, ConnectionError):
            self.proc.join(10)
            code = self.proc.exitcode
            self.stop()
            return {"outcome": "crash", "detail": f"sandbox exit status {code}"}

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join()
            self.conn.close()
        self.proc = None


# -- templates ---------------------------------------------------------------------------------


def make_templates(root: Path, backend: str) -> list[Path]:
    """Valid stores: complete with a padded ragged field; incomplete with a packed one."""
    imgs = [np.full((i % 3 + 2, i % 4 + 1), i, np.uint8) for i in range(N)]
    x = np.arange(N * 3, dtype=np.float32).reshape(N, 3) / 7
    y = np.arange(N, dtype=np.int64) * 1_000_003
    kw: dict[str, Any] = {} if backend == "npy" else {"chunks": 8}
    out = []
    for name, ragged, close in (("closed", "pad", True), ("packed", "pack", False)):
        path = root / f"{name}{SUFFIX[backend]}"
        w = oocstore.Writer(
            path, names=("x", "img", "y"), ragged=ragged, length=N, attrs={"k": [1, "v"]}, **kw
        )
        w.append((x[:10], imgs[:10], y[:10]))
        w.commit()
        w.append((x[10:], imgs[10:], y[10:]))
        if close:
            w.close()
        else:
            w.abort()
        out.append(path)
    return out


def targets(store: Path) -> list[str]:
    """Every file and directory of the store (relative; "" is the store itself when a file)."""
    if store.is_file():
        return [""]
    out = []
    for dirpath, dirnames, filenames in os.walk(store):
        rel = Path(dirpath).relative_to(store)
        out += [os.fspath(rel / d) for d in sorted(dirnames)]
        out += [os.fspath(rel / f) for f in sorted(filenames)]
    return out


# -- mutations -------------------------------------------------------------------------------

DEEP: Any = [1]
for _ in range(40):
    DEEP = [DEEP]  # deeper than any manifest may nest
HOSTILE = [
    -1, 0, 1, 2, 3, 7, 255, 2**31, 2**32 + 1, 2**53 + 1, 2**62, 2**63, 2**64, 10**30, -(10**30),
    0.5, 1e308, float("nan"), float("inf"), "", "x", "../../x", "/etc/passwd", "a/b", "\udcff",
    "<f8", ">f4", "|O", "<U10", "|S0", "<M8[ns]", "V8", "|b1", "<c16", "packed", "padded",
    "dense", None, True, False, [], {}, [1, 2, 3], [2**40, 2**40], [-1], [[0]],
    {"a": 1}, "x" * 5000, DEEP,
]  # fmt: skip


def leaves(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every value of a JSON document (containers included)."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += leaves(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += leaves(v, (*prefix, i))
    return out


def change_json(doc: Any, where: tuple[Any, ...], how: str, value: Any) -> Any:
    """``doc`` with the value at ``where`` replaced, nudged, or deleted."""
    if not where:
        return value
    parent = doc
    for k in where[:-1]:
        parent = parent[k]
    key = where[-1]
    old = parent[key]
    if how == "delete":
        del parent[key]
    elif how == "nudge" and type(old) is int:
        parent[key] = old + value if isinstance(value, int) and abs(value) < 100 else old * 2
    elif how == "nudge" and isinstance(old, str) and old:
        parent[key] = old[:-1] + chr((ord(old[-1]) + 1) % 128)
    else:
        parent[key] = value
    return doc


@st.composite
def json_change(draw: st.DrawFn, doc: Any) -> tuple[tuple[Any, ...], str, Any]:
    paths = leaves(doc)
    where = draw(st.sampled_from(paths))
    how = draw(st.sampled_from(["set", "set", "nudge", "delete"]) if where else st.just("set"))
    value = draw(st.sampled_from(HOSTILE) | st.integers(-3, 3))
    return where, how, value


NPY_SHAPES = [
    "()", "(0,)", "(-1,)", "(99999999999999999999,)", "(2**64,)", "(24, -3)", "(24, 3, 1, 1)",
    "(24,)", "(25,)", "(1000000, 3)", "(24, 4, 4)", "(3.0,)", "('a',)", "None", "(24, 2**40)",
]  # fmt: skip
NPY_DESCR = ["'<f8'", "'|O'", "'<U3'", "'>i8'", "'|V0'", "[('a', '<i4')]", "'<f4'", "'x'", "3"]


def parse_npy_header(data: bytes) -> tuple[int, str] | None:
    """(offset of the header text, header text) of a .npy file, or None if it is not one."""
    if len(data) < 10 or not data.startswith(b"\x93NUMPY"):
        return None
    major = data[6]
    if major == 1:
        n, start = int.from_bytes(data[8:10], "little"), 10
    else:
        n, start = int.from_bytes(data[8:12], "little"), 12
    return start, data[start : start + n].decode("latin1")


@st.composite
def mutation(draw: st.DrawFn, store: Path, names: list[str]) -> dict[str, Any]:
    """One mutation of one file or directory of ``store``."""
    rel = draw(st.sampled_from(names))
    target = store / rel if rel else store
    if target.is_dir() and not target.is_symlink():
        return {"kind": draw(st.sampled_from(["delete", "symlink"])), "path": rel}
    data = target.read_bytes() if target.exists() and not target.is_symlink() else b""
    kinds = ["flip", "flip", "flip", "truncate", "extend", "delete", "symlink", "swap", "fifo"]
    if rel.endswith(".json") or (rel == "" and store.suffix == ".h5"):
        kinds += ["json"] * 4
    if rel.endswith(".npy"):
        kinds += ["npy"] * 3
    kind = draw(st.sampled_from(kinds))
    out: dict[str, Any] = {"kind": kind, "path": rel}
    size = len(data)
    if kind == "flip" and not size:
        out["at"] = []
    elif kind == "flip":
        nonzero = np.flatnonzero(np.frombuffer(data, np.uint8))
        pos = st.integers(0, size - 1)
        if len(nonzero):
            pos = pos | st.integers(0, len(nonzero) - 1).map(lambda i: int(nonzero[i]))
        out["at"] = draw(st.lists(st.tuples(pos, st.integers(1, 255)), min_size=1, max_size=4))
    elif kind == "truncate":
        out["size"] = draw(st.integers(0, max(size - 1, 0)) | st.integers(max(size - 64, 0), size))
    elif kind == "extend":
        out["bytes"] = draw(st.integers(1, 3 * 2**20) | st.integers(1, 64))
        out["fill"] = draw(st.sampled_from([0, 0xFF, 0x41]))
    elif kind == "swap":
        out["with"] = draw(st.sampled_from(names))
    elif kind == "json":
        doc = read_json_target(store, rel)
        if doc is None:
            out["kind"] = "flip"
            out["at"] = [(0, 1)] if size else []
        else:
            out["change"] = draw(json_change(doc))
    elif kind == "npy":
        out["shape"] = draw(st.sampled_from([None, *NPY_SHAPES]))
        out["descr"] = draw(st.sampled_from([None, *NPY_DESCR]))
        out["fortran"] = draw(st.booleans())
    return out


def read_json_target(store: Path, rel: str) -> Any:
    """The JSON document of a .json file, or of the HDF5 store's newest commit record."""
    if rel.endswith(".json"):
        try:
            return json.loads((store / rel).read_bytes())
        except (ValueError, OSError):
            return None
    from oocstore.backends import hdf5

    fd = os.open(store, os.O_RDONLY)
    try:
        header = hdf5.record._read_header(fd, os.fspath(store))
        record = hdf5.record._read_record(fd, header[1]) if header else None
    except (oocstore.CorruptStoreError, OSError):
        return None
    finally:
        os.close(fd)
    return None if record is None else json.loads(record[1])


def write_json_target(store: Path, rel: str, doc: Any) -> None:
    text = json.dumps(doc).encode("utf8", "surrogatepass")
    if rel.endswith(".json"):
        (store / rel).write_bytes(text)
        return
    from oocstore.backends import hdf5

    fd = os.open(store, os.O_RDWR)
    try:
        header = hdf5.record._read_header(fd, os.fspath(store))
        assert header is not None
        record = hdf5.record._read_record(fd, header[1])
        assert record is not None
        seq = record[0] + 1  # the newest slot, with a valid checksum: validation is reached
        os.pwrite(
            fd, hdf5.record._slot_bytes(seq, text), hdf5.record._slot_offset(seq % 2, header[1])
        )
    finally:
        os.close(fd)


def apply(store: Path, outside: Path, m: dict[str, Any]) -> bool:
    """Apply mutation ``m``; False when it no longer applies (an earlier one removed it)."""
    rel = m["path"]
    target = store / rel if rel else store
    if not os.path.lexists(target) or (target.is_symlink() and m["kind"] != "delete"):
        return False
    kind = m["kind"]
    if stat.S_ISFIFO(target.lstat().st_mode) and kind != "delete":
        return False
    if kind == "delete":
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    elif kind == "symlink":
        copy = outside / f"copy-{len(list(outside.iterdir()))}"
        if target.is_dir():
            try:
                shutil.copytree(target, copy, symlinks=True)
            except shutil.Error:  # it holds a FIFO an earlier mutation planted
                shutil.rmtree(copy, ignore_errors=True)
                return False
            shutil.rmtree(target)
        else:
            shutil.copy2(target, copy)
            target.unlink()
        target.symlink_to(copy)
    elif target.is_dir():
        return False
    elif kind == "fifo":  # opening one for reading would block until a writer comes
        target.unlink()
        os.mkfifo(target)
    elif kind == "flip":
        data = bytearray(target.read_bytes())
        for at, x in m["at"]:
            if at < len(data):
                data[at] ^= x
        target.write_bytes(bytes(data))
    elif kind == "truncate":
        os.truncate(target, min(m["size"], target.stat().st_size))
    elif kind == "extend":
        with target.open("ab") as f:
            f.write(bytes([m["fill"]]) * m["bytes"])
    elif kind == "swap":
        other = store / m["with"] if m["with"] else store
        if not other.is_file() or other.is_symlink() or other == target:
            return False
        a, b = target.read_bytes(), other.read_bytes()
        target.write_bytes(b)
        other.write_bytes(a)
    elif kind == "json":
        doc = read_json_target(store, rel)
        if doc is None:
            return False
        where, how, value = m["change"]
        try:
            doc = change_json(doc, where, how, value)
        except (KeyError, IndexError, TypeError):
            return False
        write_json_target(store, rel, doc)
    elif kind == "npy":
        data = bytearray(target.read_bytes())
        parsed = parse_npy_header(bytes(data))
        if parsed is None:
            return False
        start, text = parsed
        new = text
        if m["shape"] is not None:
            new = re.sub(r"'shape': \([^)]*\)", f"'shape': {m['shape']}", new)
        if m["descr"] is not None:
            new = re.sub(r"'descr': ('[^']*'|\[[^\]]*\])", f"'descr': {m['descr']}", new)
        if m["fortran"]:
            new = new.replace("'fortran_order': False", "'fortran_order': True")
        body = new.rstrip("\n ")
        body = body[: len(text) - 1].ljust(len(text) - 1) + "\n"
        data[start : start + len(text)] = body.encode("latin1")
        target.write_bytes(bytes(data))
    return True


def tree_state(root: Path) -> dict[str, Any]:
    """Every entry under ``root``: type, size, mtime and content hash (link targets)."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st_ = p.lstat()
            key = os.fspath(p.relative_to(root))
            if p.is_symlink():
                out[key] = ("link", os.readlink(p))
            elif stat.S_ISFIFO(st_.st_mode):
                out[key] = ("fifo",)
            elif p.is_file():
                digest = hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
                out[key] = ("file", st_.st_size, st_.st_mtime_ns, digest)
            else:
                out[key] = ("dir", st_.st_mode)
    return out


@pytest.fixture(scope="module")
def sandbox() -> Any:
    box = Sandbox()
    yield box
    box.stop()


@pytest.mark.parametrize("mode", MODES)
def test_mutated_stores(tmp_path: Path, backend: str, mode: str, sandbox: Sandbox) -> None:
    """Hypothesis mutations of every file of valid stores, each read in the sandbox."""
    (tmp_path / "templates").mkdir()
    templates = make_templates(tmp_path / "templates", backend)
    names = {t: targets(t) for t in templates}
    counts: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    refused_resume: Counter[str] = Counter()
    problems: list[str] = []
    cases = [0]

    @settings(
        max_examples=CASES[mode],
        deadline=None,
        database=None,
        derandomize=mode == "fast",
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def one_case(data: st.DataObject) -> None:
        template = data.draw(st.sampled_from(templates), label="template")
        case = tmp_path / f"case{cases[0] % 4}"
        cases[0] += 1
        if case.exists():
            shutil.rmtree(case)
        outside = case / "outside"
        outside.mkdir(parents=True)
        (outside / "sentinel").write_bytes(b"must never change")
        store = case / template.name
        if template.is_dir():
            shutil.copytree(template, store, symlinks=True)
        else:
            shutil.copy2(template, store)
        muts = data.draw(
            st.lists(mutation(store, names[template]), min_size=1, max_size=3), label="mutations"
        )
        applied = [m for m in muts if apply(store, outside, m)]
        for m in applied:
            kinds[m["kind"]] += 1
        before = tree_state(case)
        outside_before = tree_state(outside)
        verdict = sandbox.run(store, template)
        after = tree_state(case)
        counts["cases"] += 1
        counts[verdict["outcome"]] += 1
        what = f"{template.name} {applied}"
        if verdict["outcome"] == "refused":
            refused[verdict["type"]] += 1
        if verdict["outcome"] in ("leak", "crash", "hang", "wrong"):
            problems.append(f"{verdict['outcome']}: {what}\n{verdict.get('detail', '')}")
        # The writer's lock file is never opened by a reader (nor followed by a writer).
        planted = [m for m in applied if m["kind"] == "symlink" and m["path"] != ".lock"]
        if planted and verdict["outcome"] == "ok":
            counts["symlink_followed"] += 1
            problems.append(f"read through a planted symlink: {what}")
        if before != after:
            counts["modified"] += 1
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            problems.append(f"files changed by a read-only open: {changed}: {what}")
        if not data.draw(st.booleans(), label="resume"):
            return
        # Read-write: a resumed writer on the mutated store refuses it or repairs it, never
        # leaks, crashes, hangs, grows files absurdly or touches anything outside the store.
        verdict = sandbox.run(store, None)
        counts["resumes"] += 1
        counts[f"resume_{verdict['outcome']}"] += 1
        if verdict["outcome"] == "refused":
            refused_resume[verdict["type"]] += 1
        if verdict["outcome"] in ("leak", "crash", "hang"):
            problems.append(f"resume {verdict['outcome']}: {what}\n{verdict.get('detail', '')}")
        if tree_state(outside) != outside_before:
            counts["outside_modified"] += 1
            problems.append(f"a resumed writer changed files outside the store: {what}")
        grown = sum(f.stat().st_size for f in case.rglob("*") if f.is_file() and not f.is_symlink())
        if grown > MAX_CASE_BYTES:
            counts["grown"] += 1
            problems.append(f"a resumed writer grew the store to {grown:,} bytes: {what}")

    one_case()
    summary = {
        "mutations": counts["cases"],
        "correct_reads": counts["ok"],
        "damage_reported_by_verify": counts["detected"],
        "refused": counts["refused"],
        "refused_by_type": dict(refused),
        "leaked_exceptions": counts["leak"],
        "crashes": counts["crash"],
        "hangs": counts["hang"],
        "silently_wrong_reads": counts["wrong"],
        "symlinks_followed": counts["symlink_followed"],
        "files_modified": counts["modified"],
        "mutations_by_kind": dict(kinds),
        "resumes": counts["resumes"],
        "resume_ok": counts["resume_ok"],
        "resume_refused": counts["resume_refused"],
        "resume_refused_by_type": dict(refused_resume),
        "resume_leaked_exceptions": counts["resume_leak"],
        "resume_crashes": counts["resume_crash"],
        "resume_hangs": counts["resume_hang"],
        "resume_touched_outside": counts["outside_modified"],
        "resume_grew_files": counts["grown"],
    }
    record(mode, "mutations", backend, summary)
    assert not problems, f"{len(problems)} problems:\n\n" + "\n\n".join(problems[:15])
    assert counts["cases"] >= CASES[mode] * 0.95, summary
