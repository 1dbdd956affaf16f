"""The CLI beyond demo: ingest, verify, convert, info's attrs; exit codes and --help."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import oocstore
from oocstore.cli import cli

from .images import GOOD, make_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared image folder (read-only for the tests)."""
    return make_tree(tmp_path_factory.mktemp("images") / "src")


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("command", ["ingest", "verify", "convert", "info", "demo"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    code, out, _ = run(command, "--help")
    assert code == 0
    assert "Example" in out
    assert f"oocstore {command}" in out


def test_ingest_prints_a_summary_with_the_skip_list(tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.ooc"
    code, out, err = run("ingest", str(tree), str(dst), "--workers", "2", "--no-progress")
    assert code == 0, err
    assert f"ingested {len(GOOD)} images into" in out
    assert "(padded, true shapes kept)" in out
    assert "2 classes: cat, dog" in out
    assert f"skipped 2 unreadable image(s): listed in {dst}.skipped.txt" in out
    store = oocstore.open(dst)
    assert len(store) == len(GOOD)

    code, out, _ = run("info", str(dst))
    assert code == 0
    assert "ragged: padded to the largest shape with 0; true shapes (" in out
    assert "classes      2: cat, dog" in out
    assert "skipped      2 (listed in out.ooc.skipped.txt)" in out


def test_ingest_options(tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "o.ooc"
    code, out, err = run(
        "ingest", str(tree), str(dst), "--size", "12x10", "--mode", "l", "--labels", "none",
        "--workers", "0",
    )  # fmt: skip
    assert code == 0, err
    store = oocstore.open(dst)
    assert store.fields == ("images", "paths")
    assert store["images"].shape == (len(GOOD), 12, 10, 1)
    code, out, err = run("ingest", str(tree), str(dst), "--size", "12x10", "--workers", "0")
    assert code == 1
    assert "pass --overwrite to replace it or --resume to continue it" in err
    code, out, err = run("ingest", str(tree), str(dst), "--no-pad", "--workers", "0", "--overwrite")
    assert code == 0, err
    assert "(packed, true shapes kept)" in out


def test_ingest_errors_are_one_line(tree: Path, tmp_path: Path) -> None:
    code, _, err = run(
        "ingest", str(tree), str(tmp_path / "f.ooc"), "--on-error", "fail", "--workers", "0"
    )
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("oocstore: error: cannot decode image 'cat/0_truncated.jpg'")
    assert "--on-error skip" in err
    assert "Traceback" not in err

    code, _, err = run("ingest", str(tmp_path / "nope"), str(tmp_path / "n.ooc"))
    assert code == 1
    assert "does not exist" in err


@pytest.mark.parametrize("size", ["0x4", "axb", "3x4x5"])
def test_ingest_bad_size_is_a_usage_error(tree: Path, tmp_path: Path, size: str) -> None:
    code, _, err = run("ingest", str(tree), str(tmp_path / "x.ooc"), "--size", size)
    assert code == 2
    assert "is not a size" in err


def test_verify_exit_codes_and_a_flipped_byte(tmp_path: Path) -> None:
    dst = tmp_path / "v.ooc"
    oocstore.write(
        {"x": np.arange(4000, dtype=np.float32).reshape(1000, 4), "y": np.arange(1000)}, dst
    )
    code, out, _ = run("verify", str(dst))
    assert code == 0
    assert out.startswith(f"ok: {dst}: 1,000 samples in 2 field(s)")

    data = dst / "x.npy"
    raw = bytearray(data.read_bytes())
    raw[-100] ^= 0x01  # a row near the end of field x
    data.write_bytes(bytes(raw))
    code, out, err = run("verify", str(dst))
    assert code == 2
    assert "damaged: field 'x'" in out
    assert "rows " in out
    assert "1 damaged span(s)" in err

    code, _, err = run("verify", str(tmp_path / "missing.ooc"))
    assert code == 1
    assert err.startswith("oocstore: error:")


def test_convert_then_verify(tree: Path, tmp_path: Path) -> None:
    src = tmp_path / "c.ooc"
    oocstore.ingest_images(tree, src, workers=0)
    code, out, err = run("convert", str(src), str(tmp_path / "c.zarr"))
    assert code == 0, err
    assert f"converted {len(GOOD)} samples" in out
    assert "(zarr backend)" in out
    converted = oocstore.open(tmp_path / "c.zarr")
    original = oocstore.open(src)
    assert converted.attrs == original.attrs
    for i in range(len(original)):
        assert np.array_equal(converted.sample("images", i), original.sample("images", i))
    assert run("verify", str(tmp_path / "c.zarr"))[0] == 0
    code, _, err = run("convert", str(src), str(tmp_path / "c.zarr"))
    assert code == 1
    assert "--overwrite" in err


def test_verify_names_the_samples_of_a_damaged_packed_field(tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "p.ooc"
    oocstore.ingest_images(tree, dst, pad=False, workers=0)
    values = dst / "images.values.npy"
    raw = bytearray(values.read_bytes())
    raw[-3] ^= 0xFF  # in the last image
    values.write_bytes(bytes(raw))
    code, out, _ = run("verify", str(dst))
    assert code == 2
    assert "damaged: field 'images' (images.values) rows 0-" in out
    assert f"(samples 0-{len(GOOD)})" in out
