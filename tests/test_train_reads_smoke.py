"""Smoke test: benchmarks/train_reads.py still runs end to end and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "train_reads.py"

pytest.importorskip("torch", reason="the benchmark reads through PyTorch")


def test_train_reads_smoke_prints_a_table(tmp_path: Path) -> None:
    cmd = [sys.executable, SCRIPT, "--smoke", "--dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "## Training reads: smoke" in out
    for row in ("memmap gather (limit)", "store.loader, 0 workers", "TensorDataset in RAM"):
        assert f"| {row} |" in out
    assert "| loader + 5 ms transform, 2 workers |" in out
    assert "## Targets" in out
    assert "5 ms transform: 2 workers / 0 workers" in out
    assert list(tmp_path.iterdir()) == []  # the store is deleted
