"""Smoke test: benchmarks/compare.py still runs end to end and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "compare.py"


def test_compare_quick_prints_a_table(tmp_path: Path) -> None:
    cmd = [sys.executable, SCRIPT, "--quick", "--gb", "0.02", "--only", "raw,oocstore-npy"]
    cmd += ["--workloads", "images", "--reads", "500", "--no-drop", "--no-scratch"]
    cmd += ["--dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "## Writing" in out
    assert "| raw f.write + fsync (limit) |" in out
    assert "| oocstore npy, length known |" in out
    assert "failed" not in out
    assert "oocstore-npy" in out  # the targets section
    assert list(tmp_path.iterdir()) == []  # outputs are deleted
