"""A writer that fails or is dropped leaves nothing behind; permission problems are named."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import oocstore

from .conftest import SUFFIX

# First appends that fail before anything is committed, each with a different error.
_FAILING_FIRST = {
    "bad-name": ({"names": ("../x",)}, (np.zeros(3),)),
    "object-dtype": ({"names": ("x",)}, (np.array([object()] * 2),)),
    "empty-tuple": ({"names": ("x", "y")}, (np.zeros(3),)),
}


def _fail_first(path: Path, case: str, *, with_block: bool) -> None:
    options, batch = _FAILING_FIRST[case]

    def run() -> None:
        if with_block:
            with oocstore.Writer(path, **options) as w:
                w.append(batch)
        else:
            w = oocstore.Writer(path, **options)
            w.append(batch)

    with pytest.raises(oocstore.OocstoreError):
        run()


@pytest.mark.parametrize("with_block", [True, False], ids=["with", "dropped"])
@pytest.mark.parametrize("case", sorted(_FAILING_FIRST))
def test_failed_first_append_leaves_no_file(
    tmp_path: Path, backend: str, case: str, with_block: bool
) -> None:
    path = tmp_path / f"s{SUFFIX[backend]}"
    _fail_first(path, case, with_block=with_block)
    gc.collect()
    assert sorted(os.listdir(tmp_path)) == []
    # The lock is free again: a new writer in this process can take the same path.
    oocstore.write([np.arange(4)], path)
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_dropped_writer_keeps_its_commits_and_frees_the_lock(tmp_path: Path, backend: str) -> None:
    path = tmp_path / f"s{SUFFIX[backend]}"
    w = oocstore.Writer(path, names=("x",))
    w.append((np.arange(6),))
    w.commit()
    with pytest.raises(oocstore.DtypeError):
        w.append((np.array(["a", "b"]),))
    del w
    gc.collect()
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no lock file beside it
    store = oocstore.open(path)
    assert store["x"].tolist() == list(range(6))
    with oocstore.Writer(path, resume=True) as w:  # the lock was released
        assert w.skip == 6
        w.append((np.arange(8),))  # the source again from its start: 6 samples are skipped
    assert oocstore.open(path)["x"].tolist() == list(range(8))


@pytest.mark.parametrize("how", ["exit", "uncaught"])
def test_writer_alive_at_exit_leaves_no_file(tmp_path: Path, backend: str, how: str) -> None:
    path = tmp_path / f"s{SUFFIX[backend]}"
    script = f"""
        import numpy as np, oocstore
        w = oocstore.Writer({str(path)!r}, names=("../x",))
        try:
            w.append((np.zeros(3),))
        except oocstore.FieldNameError:
            if {how!r} == "uncaught":
                raise
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == (1 if how == "uncaught" else 0), proc.stderr
    assert sorted(os.listdir(tmp_path)) == []


# -- permissions -------------------------------------------------------------------------------

_AS_OTHER_USER = """
import os, sys
import numpy as np, oocstore
os.setgid(65534)
os.setuid(65534)
try:
    oocstore.write([np.arange(3)], sys.argv[1])
except oocstore.StorePermissionError as e:
    assert isinstance(e, PermissionError)
    print("REFUSED", e.path)
    print(e)
"""


def _as_nobody(store: Path) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the writer as another user")
    return subprocess.run(
        [sys.executable, "-c", _AS_OTHER_USER, str(store)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    """A directory under /tmp that another user can enter but not write."""
    top = Path(os.environ.get("TMPDIR", "/tmp")) / f"oocstore-perm-{os.getpid()}-{tmp_path.name}"
    top.mkdir()
    top.chmod(0o755)
    yield top
    subprocess.run(["rm", "-rf", str(top)], check=False)


def test_read_only_directory_is_a_permission_error(shared_dir: Path, backend: str) -> None:
    store = shared_dir / f"s{SUFFIX[backend]}"
    proc = _as_nobody(store)
    assert proc.returncode == 0, proc.stderr
    assert "REFUSED" in proc.stdout, proc.stdout + proc.stderr
    assert "is not writable" in proc.stdout
    assert str(shared_dir) in proc.stdout
    assert os.listdir(shared_dir) == []


@pytest.mark.parametrize("backend_name", ["zarr", "hdf5"])
def test_foreign_lock_file_is_a_permission_error(shared_dir: Path, backend_name: str) -> None:
    work = shared_dir / "work"
    work.mkdir()
    work.chmod(0o777)
    store = work / f"s{SUFFIX[backend_name]}"
    lock = work / f".{store.name}.lock"
    lock.write_text("")
    lock.chmod(0o600)  # root's, unreadable to others
    proc = _as_nobody(store)
    assert proc.returncode == 0, proc.stderr
    assert f"REFUSED {lock}" in proc.stdout, proc.stdout + proc.stderr
    assert "another user (uid 0)" in proc.stdout
    assert "Traceback" not in proc.stderr
