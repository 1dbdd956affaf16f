"""``import oocstore`` imports no framework: each adapter is imported when a source needs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FRAMEWORKS = ("torch", "tensorflow", "keras", "jax", "dask", "distributed", "fsspec")

SCRIPT = """
import sys, numpy as np, oocstore
store = oocstore.write((np.zeros((4, 2)), np.arange(4)), sys.argv[1], names=("x", "y"))
list(store.batches(2, shuffle=True))
list(oocstore.zip_streams([np.zeros(2)], [np.ones(2)]))
print(" ".join(m for m in {frameworks!r} if m in sys.modules))
"""


def test_import_and_plain_use_import_no_framework(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(frameworks=FRAMEWORKS), str(tmp_path / "s.ooc")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == "", f"imported: {out.stdout.strip()}"
