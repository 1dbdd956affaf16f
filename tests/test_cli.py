"""The command line: demo, info, exit codes, one-line errors, ``python -m oocstore``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import oocstore
from oocstore.cli import cli
from oocstore.progress import format_bytes


def _mb(text: str) -> float:
    """``'24.7 MB'`` -> 24.7, ``'0 B'`` -> 0.0 (format_bytes, back to MB)."""
    number, unit = text.split()
    return float(number) * {"B": 1e-6, "kB": 1e-3, "MB": 1.0, "GB": 1e3}[unit]


def test_demo_writes_and_reports(tmp_path: Path) -> None:
    args = ["demo", str(tmp_path / "d.ooc"), "-n", "4000", "--photos", "0"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "wrote 4,000 samples" in result.output
    store = oocstore.open(tmp_path / "d.ooc")
    assert store["images"].shape == (4000, 64, 64, 3)
    assert store["labels"][:12].tolist() == [*range(10), 0, 1]
    # The store's rate beside a raw write of as many bytes, and their ratio.
    lines = result.output.splitlines()
    ours = re.search(r"oocstore: +([\d.]+ MB) in ([\d.]+) s = ([\d.]+) GB/s", result.output)
    raw = re.search(r"raw write: +([\d.]+ MB) in ([\d.]+) s = ([\d.]+) GB/s", result.output)
    ratio = re.search(r"oocstore / raw write: ([\d.]+)x \(medians of 3", result.output)
    assert ours, result.output
    assert raw, result.output
    assert ratio, result.output
    assert ours[1] == raw[1] == format_bytes(store.nbytes)
    # The ratio is of throughputs (raw time / oocstore time), up to the rounding of the rates.
    assert float(ratio[1]) == pytest.approx(float(ours[3]) / float(raw[3]), rel=0.05)
    assert not any("photo" in line for line in lines)  # --photos 0: that part is skipped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.ooc"]  # no raw or warm-up file left


def test_demo_ingests_photos_and_reads_them_from_a_second_process(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    args = ["demo", str(tmp_path / "d.ooc"), "-n", "300", "--photos", "300"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"generated 300 photo-like JPEGs \(200-320 px a side, [\d.]+ kB", out), out
    # The ingest is the CLI's own: its summary line and classes.
    assert "ingested 300 images into" in out
    assert "(npy backend) in" in out
    assert "images uint8 (64, 64, 3)" in out
    assert "6 classes: beach, dusk, forest, meadow, ocean, snow" in out
    store = oocstore.open(tmp_path / "d-photos.ooc")
    assert len(store) == 300
    assert store["images"].shape == (300, 64, 64, 3)
    assert np.bincount(store["labels"]).tolist() == [50] * 6
    assert float(store["images"].std()) > 5  # photo-like, not flat
    # The second process read every byte; its pages of the store are shared, none private.
    size = format_bytes(store.nbytes)
    seen = re.search(r"a second process \(python, pid (\d+)\) opened .* and read all (.+):", out)
    assert seen, out
    assert int(seen[1]) != os.getpid()
    assert seen[2] == size
    pages = re.search(
        r"its pages of the store: (.+) resident, (.+) shared with this process, (.+) private", out
    )
    if sys.platform.startswith("linux"):
        assert pages, out
        resident, shared, private = (_mb(g) for g in pages.groups())
        assert resident >= store.nbytes / 1e6 * 0.99
        assert shared >= resident * 0.99
        assert private <= resident * 0.01
    memory = re.search(r"its private memory: (.+) before opening the store, (.+) after", out)
    assert memory, out
    before, after = (_mb(g) for g in memory.groups())
    assert after - before < store.nbytes / 1e6 / 2  # a copy would add the store's 3.7 MB
    # oocstore info of the result, as the CLI prints it.
    assert "samples   300 (complete)" in out
    assert "  images       uint8      (64, 64, 3)" in out
    assert "classes      6: beach, dusk, forest, meadow, ocean, snow" in out
    # The JPEG folder was temporary: only the two stores are left.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d-photos.ooc", "d.ooc"]


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
