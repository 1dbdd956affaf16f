"""Which files at a root belong to a Zarr store: the store itself, the leftovers of a writer
killed before its first commit, and the attic of arrays dropped while readers used them."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from ...errors import CorruptStoreError
from .._files import read_bounded
from .spec import (
    _ARRAY_DIR,
    _CHUNK_KEY,
    _PARTIAL_META,
    _TMP_PREFIX,
    _ZARR_JSON,
    ATTRIBUTE,
    GROUP_META_LIMIT,
)
from .view import _in_use

__all__ = ["attic_path", "holds_store", "sweep_attic", "unfinished_files"]


def holds_store(root: Path) -> bool:
    """Does ``root`` hold an oocstore Zarr store (a group whose metadata names a manifest)?"""
    path = root / _ZARR_JSON
    if not root.is_dir() or not path.is_file():
        return False
    try:
        data = read_bounded(path, GROUP_META_LIMIT, "group metadata")
    except CorruptStoreError:
        return True  # a store whose metadata is damaged: reading it says how
    return f'"{ATTRIBUTE}"'.encode() in data


def unfinished_files(root: Path, lock: Path) -> list[Path] | None:
    """The files a writer killed before its first commit left at ``root`` (its lock at
    ``lock``): None unless every entry is one a writer makes."""
    if root.is_symlink() or not root.is_dir() or not lock.is_file():
        return None
    if (root / _ZARR_JSON).exists() or (root / _ZARR_JSON).is_symlink():
        return None
    found: list[Path] = []
    with os.scandir(root) as entries:  # closed on the early returns too
        for entry in entries:
            if _PARTIAL_META.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                found.append(Path(entry.path))
                continue
            if not _ARRAY_DIR.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
                return None
            with os.scandir(entry.path) as subs:
                for sub in subs:
                    ours = (
                        sub.name == _ZARR_JSON
                        or _CHUNK_KEY.fullmatch(sub.name)
                        or _PARTIAL_META.fullmatch(sub.name)
                        or sub.name.startswith(_TMP_PREFIX)
                    )
                    if not ours or not sub.is_file(follow_symlinks=False):
                        return None
                    found.append(Path(sub.path))
    # The writer unlinks these files; create() then removes the emptied directories.
    return found


def attic_path(root: Path) -> Path:
    """Where arrays the writer dropped wait while readers still use them (beside the
    store, like the lock: zarr-python would warn about it inside the group)."""
    return root.with_name(f".{root.name}.attic")


def sweep_attic(root: Path) -> None:
    """Delete the dropped arrays no reader uses any more (and the attic, once empty)."""
    attic = attic_path(root)
    try:
        entries = list(os.scandir(attic))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and not _in_use(Path(entry.path)):
            shutil.rmtree(entry.path, ignore_errors=True)
    with contextlib.suppress(OSError):
        attic.rmdir()  # only if empty
