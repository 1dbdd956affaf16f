"""Sizing rules: budgets, cgroup limits, staging, growth, batch sizes and the disk check."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import oocstore
from oocstore import sizing

GiB = 2**30


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (1024, 1024),
        ("512MB", 512 * 10**6),
        ("2GiB", 2 * GiB),
        ("1.5 GB", 1_500_000_000),
        ("64kib", 64 * 1024),
        ("10", 10),
        (3.7, 3),
    ],
)
def test_parse_bytes(text, value) -> None:  # type: ignore[no-untyped-def]
    assert sizing.parse_bytes(text) == value


@pytest.mark.parametrize("bad", ["", "lots", "-1GB", "1 parsec", float("nan"), -5, True])
def test_parse_bytes_refuses_nonsense(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="size"):
        sizing.parse_bytes(bad)


def fake_memory(monkeypatch: pytest.MonkeyPatch, available: int, cgroup: int | None) -> None:
    monkeypatch.setattr(
        sizing.psutil, "virtual_memory", lambda: SimpleNamespace(available=available)
    )
    monkeypatch.setattr(sizing, "cgroup_memory_limit", lambda: cgroup)


def test_container_limit_caps_available_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_memory(monkeypatch, 256 * GiB, 4 * GiB)
    assert sizing.available_memory() == 4 * GiB
    assert sizing.memory_budget("100GB") == 2 * GiB  # never more than half of what is there
    assert sizing.memory_budget() <= 512 * 2**20


@pytest.mark.parametrize("available", [1 * 2**20, 64 * 2**20, 24 * GiB, 2048 * GiB])
def test_budget_bounds(monkeypatch: pytest.MonkeyPatch, available: int) -> None:
    fake_memory(monkeypatch, available, None)
    budget = sizing.memory_budget()
    assert sizing.MIN_BUDGET <= budget <= max(available // 2, sizing.MIN_BUDGET)
    assert budget <= sizing.DEFAULT_CAP


def test_cgroup_files(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("4294967296\n")
    (tmp_path / "memory.current").write_text("1073741824\n")
    assert sizing.cgroup_memory_limit(tmp_path) == 3 * GiB
    (tmp_path / "memory.max").write_text("max\n")
    assert sizing.cgroup_memory_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(str(2**63 - 4096))
    assert sizing.cgroup_memory_limit(v1) is None
    (v1 / "memory" / "memory.limit_in_bytes").write_text(str(2 * GiB))
    (v1 / "memory" / "memory.usage_in_bytes").write_text(str(GiB))
    assert sizing.cgroup_memory_limit(v1) == GiB


@pytest.mark.parametrize("sample", [1, 3, 12288, 7 * 2**20, 300 * 2**20])
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_stage_rows_whole_chunks_within_budget(sample: int, chunk: int) -> None:
    rows = sizing.stage_rows(sample, 256 * 2**20, chunk)
    assert rows >= chunk
    assert rows % chunk == 0
    if sample * chunk <= 8 * 2**20:
        assert rows * sample <= 8 * 2**20


def test_growth_is_geometric_and_capped() -> None:
    caps = [1024]
    for _ in range(30):
        caps.append(sizing.grow_capacity(caps[-1], caps[-1] + 1, 1000))
    assert all(b >= a * 1.5 - 1 or b - a >= (4 * GiB) // 1000 for a, b in pairwise(caps))
    assert sizing.grow_capacity(10, 5000, 1) == 5000
    huge = sizing.grow_capacity(10**9, 10**9 + 1, 1000)
    assert huge - 10**9 <= 4 * GiB // 1000 + 1


def test_auto_batch_size() -> None:
    assert sizing.auto_batch_size(12288, 512 * 2**20) == 512 * 2**20 // 8 // 12288
    assert sizing.auto_batch_size(10**12, 512 * 2**20) == 1
    assert sizing.auto_batch_size(1, 512 * 2**20) == 65_536


def test_disk_check_fails_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sizing.psutil, "disk_usage", lambda p: SimpleNamespace(free=10**6))
    with pytest.raises(
        oocstore.DiskFullError, match=r"needed 4,000,000 more bytes, 1,000,000 free"
    ):
        oocstore.write([np.zeros((10, 1000), np.float32)], tmp_path / "s.ooc", length=1000)
    assert not (tmp_path / "s.ooc").exists() or not any(
        p.suffix == ".npy" for p in (tmp_path / "s.ooc").iterdir()
    )
