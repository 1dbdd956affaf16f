"""Arrays handed out by a store stay valid after ``close()``: no public call sequence crashes.

Each case runs in a subprocess, so a segfault (reading memory a close unmapped) is a failed
test with its exit code, not a dead test run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import SUFFIX

# Written once per backend: dense, padded and packed fields; chunked HDF5 too (its rows are
# mapped run by run), and a store still being written so refresh() sees the files grow.
_SCRIPT = r"""
import gc, pickle, sys
import numpy as np
import oocstore
from concurrent.futures import ProcessPoolExecutor

path, backend, options = sys.argv[1], sys.argv[2], eval(sys.argv[3])
rng = np.random.default_rng(0)
x = rng.random((300, 4, 3), dtype=np.float32)
y = np.arange(300)
imgs = [np.full((2 + i % 5, 3), i % 251, dtype=np.uint8) for i in range(300)]
oocstore.write([(x, y)], path, names=("x", "y"), **options)
ragged = path + "-ragged" + path[path.rindex("."):]
oocstore.write(({"img": im} for im in imgs), ragged, batched=False)
packed = path + "-packed" + path[path.rindex("."):]
oocstore.write(({"img": im} for im in imgs), packed, batched=False, ragged="pack")

def touch(*arrays):
    return [float(np.asarray(a).sum()) for a in arrays]

# 1. views and slices taken inside `with`, used after it
with oocstore.open(path) as store:
    X, Y = store["x"], store["y"]
    part, row = X[10:20], X[5]
assert touch(X, Y, part, row) == touch(x, y, x[10:20], x[5])
gc.collect()
assert np.array_equal(X[-1], x[-1])

# 2. explicit close(), twice, then the store itself is used again
store = oocstore.open(path)
X = store["x"]
store.close()
store.close()
assert np.array_equal(X, x)
assert np.array_equal(store["y"], y) and len(store) == 300

# 3. ragged fields: padded arrays, samples, shapes; packed samples
with oocstore.open(ragged) as store:
    padded, shapes, s7 = store["img"], store.shapes("img"), store.sample("img", 7)
assert np.array_equal(s7, imgs[7]) and shapes.shape == (300, 2)
assert touch(padded)[0] >= 0
with oocstore.open(packed) as store:
    pk = store["img"]
    first = pk[3]
assert np.array_equal(first, imgs[3]) and np.array_equal(pk[299], imgs[299])

# 4. batches() iterators, made before close and run after it
with oocstore.open(path) as store:
    plain = store.batches(64)
    shuffled = store.batches(64, shuffle=True, seed=1)
    it = iter(store.batches(50))
    next(it)
got = np.concatenate([b[0] for b in plain])
assert np.array_equal(got, x)
assert sorted(np.concatenate([b[1] for b in shuffled]).tolist()) == y.tolist()
assert sum(len(b[1]) for b in it) == 250

# 5. to_torch datasets (used once before close, and never before close)
try:
    import torch  # noqa: F401
except ImportError:
    print("no torch")
else:
    with oocstore.open(path) as store:
        used, fresh = store.to_torch(), store.to_torch()
        used[0]
    with oocstore.open(ragged) as store:
        rag = store.to_torch()
    assert np.array_equal(used[299][0].numpy(), x[299])
    assert np.array_equal(fresh[0][0].numpy(), x[0])
    assert np.array_equal(rag[4][0].numpy(), imgs[4])

# 6. a pickled store crosses into worker processes after its parent closed it
def total(s):
    return float(np.asarray(s["x"]).sum())

store = oocstore.open(path)
X = store["x"]
store.close()
blob = pickle.dumps(store)
with ProcessPoolExecutor(2) as pool:
    sums = list(pool.map(total, [pickle.loads(blob)] * 2))
assert sums == [float(x.sum())] * 2 and np.array_equal(X, x)

# 7. refresh() while a writer grows the files; old views survive, new ones see more
grow = path + "-grow" + path[path.rindex("."):]
w = oocstore.Writer(grow, names=("x",), **options)
w.append((x[:100],))
w.commit()
reader = oocstore.open(grow)
old = reader["x"]
for k in range(1, 3):
    w.append((x[100 * k : 100 * (k + 1)],))
    w.commit()
    assert reader.refresh()
    assert len(reader["x"]) == 100 * (k + 1)
    assert np.array_equal(old, x[:100])
reader.close()
w.close()
assert np.array_equal(old, x[:100])
with oocstore.open(grow) as s:
    assert np.array_equal(s["x"], x)
print("OK")
"""


@pytest.mark.parametrize(
    ("backend", "options"),
    [
        ("npy", {}),
        ("zarr", {}),
        ("hdf5", {}),
        ("hdf5", {"chunks": 64}),  # chunked: rows are mapped run by run
    ],
    ids=["npy", "zarr", "hdf5", "hdf5-chunked"],
)
def test_arrays_outlive_close(tmp_path: Path, backend: str, options: dict[str, int]) -> None:
    path = tmp_path / f"store{SUFFIX[backend]}"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SCRIPT), str(path), backend, repr(options)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, (
        f"exit {proc.returncode} (-11 is a segfault)\n{proc.stdout}\n{proc.stderr[-3000:]}"
    )
    assert proc.stdout.strip().endswith("OK")
