"""The command line: demo, info, exit codes, one-line errors, ``python -m oocstore``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner

import oocstore
from oocstore.cli import cli


def test_demo_writes_and_reports(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", str(tmp_path / "d.ooc"), "-n", "600"])
    assert result.exit_code == 0, result.output
    assert "wrote 600 samples" in result.output
    assert "GB/s" in result.output
    store = oocstore.open(tmp_path / "d.ooc")
    assert store["images"].shape == (600, 64, 64, 3)
    assert store["labels"][:12].tolist() == [*range(10), 0, 1]


def test_info_lists_fields(tmp_path: Path) -> None:
    path = tmp_path / "s.ooc"
    oocstore.write(
        [(np.zeros((5, 2, 3), np.float32), [[1], [2], [3], [4], [5]])], path, names=("x", "y")
    )
    result = CliRunner().invoke(cli, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert "samples   5 (complete)" in result.output
    assert "x            float32    (2, 3)" in result.output
    as_json = CliRunner().invoke(cli, ["info", "--json", str(path)])
    assert json.loads(as_json.output)["length"] == 5


def test_errors_are_one_line_with_exit_code_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["info", str(tmp_path / "missing.ooc")])
    assert result.exit_code == 1
    assert result.output.strip().startswith("oocstore: error: no store at")
    assert "Traceback" not in result.output


def test_help_has_examples() -> None:
    result = CliRunner().invoke(cli, ["info", "--help"])
    assert result.exit_code == 0
    assert "oocstore info train.ooc" in result.output


def test_python_dash_m_runs_the_same_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "oocstore", "--help"], capture_output=True, text=True, check=True
    )
    assert "demo" in out.stdout
    assert "info" in out.stdout
