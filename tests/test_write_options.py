"""WriteOptions: every option of write() and Writer, declared once, checked once."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import oocstore
from oocstore.writer import WriteKwargs, WriteOptions


def test_typed_keywords_match_the_fields() -> None:
    """The TypedDict type checkers read is the dataclass's fields, name for name and type for
    type: adding an option in one place only fails here."""
    fields = {f.name: f.type for f in dataclasses.fields(WriteOptions)}
    hints = typing.get_type_hints(WriteKwargs)
    assert list(hints) == list(fields)
    resolved = typing.get_type_hints(WriteOptions)
    assert {k: resolved[k] for k in fields} == hints


def test_write_and_writer_take_no_option_of_their_own() -> None:
    """write() and Writer() declare no option themselves: only the options object, the
    keywords that change it, and (write) the source and workers."""
    import inspect

    for fn, own in [
        (oocstore.write, {"source", "path", "options", "workers", "changes"}),
        (oocstore.Writer.__init__, {"self", "path", "options", "changes"}),
    ]:
        assert set(inspect.signature(fn).parameters) == own


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"ragged": "squash"}, "ragged must be"),
        ({"casting": "lossy"}, "casting must be one of"),
        ({"length": -1}, "length must be a non-negative integer"),
        ({"length": True}, "length must be a non-negative integer"),
        ({"padding_warning": 0}, "padding_warning must be a positive ratio"),
    ],
)
def test_bad_values_are_refused_where_the_options_are_made(
    change: dict[str, object], match: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=match):
        WriteOptions(**change)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        oocstore.write(np.arange(4), tmp_path / "s.ooc", **change)  # type: ignore[arg-type]
    assert not (tmp_path / "s.ooc").exists()


def test_an_unknown_keyword_names_itself_and_the_options(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"unknown write option 'chunk'; the options are .*chunks"):
        oocstore.write(np.arange(4), tmp_path / "s.zarr", chunk=4)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"unknown write options 'a', 'b'"):
        oocstore.Writer(tmp_path / "t.ooc", a=1, b=2)  # type: ignore[call-arg]
    assert not (tmp_path / "s.zarr").exists()
    assert not (tmp_path / "t.ooc").exists()


def test_one_object_serves_write_and_writer(tmp_path: Path) -> None:
    opts = WriteOptions(names=("x", "y"), chunks=16, attrs={"split": "train"})
    x, y = np.arange(40.0).reshape(20, 2), np.arange(20)
    store = oocstore.write((x, y), tmp_path / "a.zarr", opts)
    assert store.fields == ("x", "y")
    assert store.chunk_rows("x") == 16
    assert store.attrs == {"split": "train"}
    with oocstore.Writer(tmp_path / "b.zarr", opts, attrs={"split": "val"}) as w:
        assert w.options.chunks == 16
        assert w.options.attrs == {"split": "val"}
        w.append((x, y))
    b = oocstore.open(tmp_path / "b.zarr")
    assert b.attrs == {"split": "val"}
    np.testing.assert_array_equal(b["x"][:], x)
    assert opts.attrs == {"split": "train"}  # frozen: the object given is never changed


def test_writer_defaults_append_batches_without_a_progress_bar(tmp_path: Path) -> None:
    w = oocstore.Writer(tmp_path / "s.ooc")
    try:
        assert w.batched is True
        assert w.options.progress is False
    finally:
        w.abort()
    assert WriteOptions().batched is None  # write(): the source decides


_CHANGES = st.fixed_dictionaries(
    {},
    optional={
        "length": st.none() | st.integers(0, 10**9),
        "overwrite": st.booleans(),
        "resume": st.booleans(),
        "ragged": st.sampled_from(["pad", "pack", "error"]),
        "casting": st.sampled_from(["no", "equiv", "safe", "same_kind", "unsafe"]),
        "chunks": st.none() | st.integers(1, 10**6),
        "commit_seconds": st.floats(0.1, 1e6),
        "padding_warning": st.none() | st.floats(0.5, 100),
    },
)


@given(base=_CHANGES, changes=_CHANGES)
def test_with_replaces_exactly_the_fields_given(
    base: dict[str, object], changes: dict[str, object]
) -> None:
    opts = WriteOptions(**base)  # type: ignore[arg-type]
    new = opts.with_(**changes)
    for f in dataclasses.fields(WriteOptions):
        want = changes.get(f.name, base.get(f.name, f.default))
        assert getattr(new, f.name) == want
    assert opts == WriteOptions(**base)  # type: ignore[arg-type]
