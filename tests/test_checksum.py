"""Checksums: CRC-32C combining, bounded span lists, and verify over merged spans."""

from __future__ import annotations

import itertools
from pathlib import Path

import crc32c
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import oocstore
from oocstore.checksum import coalesce, crc32c_combine


@given(st.binary(max_size=300), st.binary(max_size=3000))
def test_combine_equals_hashing_the_concatenation(a: bytes, b: bytes) -> None:
    assert crc32c_combine(crc32c.crc32c(a), crc32c.crc32c(b), len(b)) == crc32c.crc32c(a + b)


@given(st.lists(st.integers(1, 40), min_size=1, max_size=60), st.integers(1, 8))
def test_coalesce_keeps_the_crc_of_every_byte(sizes: list[int], limit: int) -> None:
    row_nbytes = 3
    data = np.random.default_rng(len(sizes)).integers(0, 256, sum(sizes) * row_nbytes, np.uint8)
    spans, start = [], 0
    for n in sizes:
        chunk = data[start * row_nbytes : (start + n) * row_nbytes].tobytes()
        spans.append([start, start + n, f"{crc32c.crc32c(chunk):08x}"])
        start += n
    merged = coalesce(spans, 1, (row_nbytes,), limit)
    assert len(merged) <= limit or len(merged) == 1
    assert merged[0][0] == 0
    assert merged[-1][1] == start
    for (_, b, _), (c, _, _) in itertools.pairwise(merged):
        assert b == c  # contiguous, nothing lost or doubled
    for lo, hi, crc in merged:
        chunk = data[lo * row_nbytes : hi * row_nbytes].tobytes()
        assert crc == f"{crc32c.crc32c(chunk):08x}"


def test_spans_stay_bounded_over_many_commits_and_verify_still_finds_damage(
    tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("oocstore.writer.core.MAX_SPANS", 8)  # 50 commits: merged twice
    path = tmp_path / "s.ooc"
    x = np.arange(200 * 5, dtype=np.int32).reshape(200, 5)
    with oocstore.Writer(path) as w:
        for i in range(0, 200, 4):
            w.append(x[i : i + 4])
            w.commit()
    store = oocstore.open(path)
    spans = store.manifest.extra["checksums"]["spans"]["0"]
    assert 4 <= len(spans) <= 8
    assert spans[0][0] == 0
    assert spans[-1][1] == 200
    assert store.verify() == []
    store.close()
    f = path / "0.npy"
    raw = bytearray(f.read_bytes())
    raw[-5 * 4 * 150] ^= 0xFF  # a byte of row 50
    f.write_bytes(bytes(raw))
    with oocstore.open(path) as damaged:
        (hit,) = damaged.verify()
        assert hit.start <= 50 < hit.stop
