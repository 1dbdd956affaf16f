"""The commit record: the userblock header and its two CRC'd JSON slots, bytes in and out.

The file starts with a userblock HDF5 skips; oocstore keeps there a header naming the record
format and two slots, each a sequence number, a payload and its CRC. A commit writes the older
slot; readers take the newest slot that passes its checksum."""

from __future__ import annotations

import os
import struct
import zlib

from ...errors import (
    CorruptStoreError,
)
from ...manifest import Manifest

USERBLOCK_BYTES = 2**20
"""Default userblock size: a 4 KiB header and two slots of ~510 KiB for the manifest."""
HEADER_BYTES = 4096
_MAGIC = b"\x89OOCSTORE-HDF5\r\n"
_HEADER = struct.Struct("<16sIIQQ")  # magic, record format, reserved, userblock, slot bytes
_NOTE = (
    b"\n\nThis is an HDF5 file written by oocstore. These first bytes are an HDF5 userblock: "
    b"HDF5 tools skip it. It holds oocstore's commit record, two checksummed JSON slots.\n"
)
_SLOT_MAGIC = b"OOCSLOT1"
_SLOT = struct.Struct("<8sQQI4x")  # magic, sequence number, payload bytes, crc32
_RECORD_FORMAT = 1


# -- the commit record ------------------------------------------------------------------------


def _header_bytes(userblock: int) -> bytes:
    slot = (userblock - HEADER_BYTES) // 2
    return _HEADER.pack(_MAGIC, _RECORD_FORMAT, 0, userblock, slot) + _NOTE


def _read_header(fd: int, where: str) -> tuple[int, int] | None:
    """``(userblock bytes, slot bytes)`` from an oocstore userblock header, or None."""
    head = os.pread(fd, _HEADER.size, 0)
    if len(head) < _HEADER.size or not head.startswith(_MAGIC):
        return None
    _, version, _, userblock, slot = _HEADER.unpack(head)
    if version != _RECORD_FORMAT:
        raise CorruptStoreError(
            where,
            f"commit record format {version} is not {_RECORD_FORMAT}; "
            "a newer oocstore wrote it: upgrade oocstore",
        )
    if (
        not 2 * HEADER_BYTES <= userblock <= 2**28
        or userblock & (userblock - 1)
        or slot != (userblock - HEADER_BYTES) // 2
    ):
        raise CorruptStoreError(where, f"bad userblock header ({userblock=}, {slot=})")
    return userblock, slot


def _slot_offset(index: int, slot: int) -> int:
    return HEADER_BYTES + index * slot


def _read_record(fd: int, slot: int) -> tuple[int, bytes] | None:
    """The newest commit whose slot passes its checksum: ``(sequence number, payload)``."""
    best: tuple[int, bytes] | None = None
    for index in (0, 1):
        off = _slot_offset(index, slot)
        head = os.pread(fd, _SLOT.size, off)
        if len(head) < _SLOT.size:
            continue
        magic, seq, n, crc = _SLOT.unpack(head)
        if magic != _SLOT_MAGIC or n > slot - _SLOT.size:
            continue
        payload = os.pread(fd, n, off + _SLOT.size)
        if len(payload) != n or _crc(seq, payload) != crc:
            continue  # torn by a kill mid-write (or damaged): the other slot holds a commit
        if best is None or seq > best[0]:
            best = (seq, payload)
    return best


def _crc(seq: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<QQ", seq, len(payload))))


def _slot_bytes(seq: int, payload: bytes) -> bytes:
    return _SLOT.pack(_SLOT_MAGIC, seq, len(payload), _crc(seq, payload)) + payload


def _load_manifest(data: bytes | str, where: str) -> Manifest:
    try:
        manifest = Manifest.loads(data, where)
    except UnicodeDecodeError:
        raise CorruptStoreError(where, "manifest is not UTF-8 text") from None
    if manifest.backend != "hdf5":
        raise CorruptStoreError(
            where, f"manifest says backend {manifest.backend!r}, the file is HDF5"
        )
    return manifest
