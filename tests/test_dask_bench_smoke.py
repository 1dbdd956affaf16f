"""Smoke tests: benchmarks/dask_compare.py and benchmarks/parallel.py run and print tables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("dask.array")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script: str, tmp_path: Path) -> str:
    cmd = [sys.executable, str(BENCH / script), "--quick", "--dir", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.iterdir()) == []  # outputs are deleted
    return proc.stdout


def test_dask_compare_quick_prints_a_table(tmp_path: Path) -> None:
    out = run("dask_compare.py", tmp_path)
    assert "## Dask: oocstore vs dask.array.to_zarr / from_zarr" in out
    assert "| write |" in out
    assert "| read .sum() |" in out


def test_parallel_quick_prints_a_table(tmp_path: Path) -> None:
    out = run("parallel.py", tmp_path)
    assert "## Parallel writes: workers=N vs workers=1" in out
    assert "| 1 |" in out
    assert "| 2 |" in out
