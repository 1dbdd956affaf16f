"""The storage layer under the formats: the same contract for a local directory and a URL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oocstore.backends.storage import FsspecStorage, LocalStorage, Storage
from oocstore.errors import CorruptStoreError

fsspec = pytest.importorskip("fsspec")


@pytest.fixture(params=["local", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "local":
        root = tmp_path / "root"
        root.mkdir()
        yield LocalStorage(root)
        return
    url = f"memory://oocstore-storage/{uuid.uuid4().hex}"
    s = FsspecStorage(url)
    s.makedirs()
    yield s
    s.delete("")


def _mkparents(storage: Storage, key: str) -> None:
    if isinstance(storage, LocalStorage):
        storage.path(key).parent.mkdir(parents=True, exist_ok=True)


def test_objects_are_written_whole_and_read_back(storage: Storage) -> None:
    _mkparents(storage, "a/zarr.json")
    storage.write("zarr.json", b"{}")
    storage.write("a/zarr.json", b'{"x": 1}')
    storage.write("a/zarr.json", b"{}")  # replaced whole, never appended to
    assert storage.read("zarr.json", 100, "group metadata") == b"{}"
    assert storage.read("a/zarr.json", 100, "array metadata") == b"{}"
    assert sorted(storage.children()) == ["a", "zarr.json"]
    assert storage.children("a") == ["zarr.json"]
    assert storage.exists("a")
    assert storage.exists("a/zarr.json")
    assert not storage.exists("b")
    assert storage.children("b") == []


def test_missing_and_oversized_objects_are_a_corrupt_store(storage: Storage) -> None:
    with pytest.raises(CorruptStoreError, match=r"group metadata is missing") as err:
        storage.read("zarr.json", 100, "group metadata")
    assert "zarr.json" in str(err.value)
    storage.write("zarr.json", b"x" * 101)
    with pytest.raises(CorruptStoreError, match=r"group metadata is 101 bytes"):
        storage.read("zarr.json", 100, "group metadata")


def test_delete_removes_an_object_or_a_whole_prefix(storage: Storage) -> None:
    for key in ("a/zarr.json", "a/c.0", "b/c.0", "zarr.json"):
        _mkparents(storage, key)
        storage.write(key, b"1")
    storage.delete("a/c.0")
    assert storage.children("a") == ["zarr.json"]
    storage.delete("a")
    assert not storage.exists("a")
    assert sorted(storage.children()) == ["b", "zarr.json"]
    storage.delete("nothing-here")  # nothing to delete is no error


def test_a_local_symlink_is_never_followed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").write_bytes(b"not the store's")
    (root / "zarr.json").symlink_to(tmp_path / "secret")
    with pytest.raises(CorruptStoreError, match="cannot open"):
        LocalStorage(root).read("zarr.json", 100, "group metadata")


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    objects=st.dictionaries(
        st.from_regex(r"[a-z]{1,6}(/[a-z0-9.]{1,6})?", fullmatch=True),
        st.binary(max_size=300),
        max_size=6,
    )
)
def test_what_is_written_is_what_is_read(storage: Storage, objects: dict[str, bytes]) -> None:
    """Any set of objects reads back byte for byte (keys that would be both an object and a
    prefix are left out: neither a directory nor an object store allows both)."""
    tops = {k.split("/")[0] for k in objects if "/" in k}
    objects = {k: v for k, v in objects.items() if k not in tops}
    prefix = uuid.uuid4().hex[:8]
    for key, data in objects.items():
        _mkparents(storage, f"{prefix}/{key}")
        storage.write(f"{prefix}/{key}", data)
    for key, data in objects.items():
        assert storage.read(f"{prefix}/{key}", 1000, "object") == data
    if objects:
        assert sorted(storage.children(prefix)) == sorted({k.split("/")[0] for k in objects})
    storage.delete(prefix)
    assert not storage.exists(prefix)
