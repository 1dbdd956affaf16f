"""The bytes codecs of a chunk: the ones oocstore reads itself (CRC32C and numcodecs'
codecs), and encoding a unit of rows for writing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from .spec import _Layout

_MAX_U64 = 2**64 - 1  # a missing inner chunk in a shard index


# -- codecs -------------------------------------------------------------------------------------


class _Codec(Protocol):
    """A bytes-to-bytes codec of a Zarr v3 pipeline."""

    def encode(self, buf: Any) -> Any: ...
    def decode(self, buf: Any) -> Any: ...


class _Crc32c:
    """Zarr v3's ``crc32c`` codec: a little-endian CRC32C of the data appended to it."""

    def encode(self, buf: Any) -> bytes:
        import google_crc32c

        data = bytes(memoryview(buf).cast("B"))
        return data + int(google_crc32c.value(data)).to_bytes(4, "little")

    def decode(self, buf: Any) -> bytes:
        import google_crc32c

        data = bytes(memoryview(buf).cast("B"))
        body, tail = data[:-4], data[-4:]
        if len(data) < 4 or int(google_crc32c.value(body)).to_bytes(4, "little") != tail:
            msg = "crc32c checksum does not match"
            raise ValueError(msg)
        return body


def _codec_from_json(doc: Any) -> _Codec | None:
    """The bytes-to-bytes codec a ``codecs`` entry names, or None if this module lacks it."""
    if not isinstance(doc, dict):
        return None
    name, conf = doc.get("name"), doc.get("configuration") or {}
    if not isinstance(conf, dict):
        return None
    try:
        if name == "zstd":
            from numcodecs import Zstd

            zstd: _Codec = Zstd(
                level=int(conf.get("level", 0)), checksum=bool(conf.get("checksum"))
            )
            return zstd
        if name == "gzip":
            from numcodecs import GZip

            gzip: _Codec = GZip(level=int(conf.get("level", 5)))
            return gzip
        if name == "blosc":
            from numcodecs import Blosc

            shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[str(conf.get("shuffle"))]
            # As zarr's BloscCodec builds it (numcodecs >= 0.16 takes the typesize).
            return Blosc.from_config(  # type: ignore[no-any-return]
                {
                    "cname": conf["cname"],
                    "clevel": int(conf["clevel"]),
                    "shuffle": shuffle,
                    "blocksize": int(conf.get("blocksize", 0)),
                    "typesize": int(conf.get("typesize", 1)),
                }
            )
        if name == "crc32c":
            return _Crc32c()
    except (ImportError, KeyError, TypeError, ValueError):
        return None
    return None


def _parse_codecs(docs: Any) -> tuple[str | None, list[_Codec]] | None:
    """``(endian, codecs)`` of a ``[bytes, bytes-to-bytes...]`` list; None if not that."""
    if not isinstance(docs, list) or not docs or not isinstance(docs[0], dict):
        return None
    if docs[0].get("name") != "bytes":
        return None  # an array-to-array codec first (transpose...): zarr-python handles it
    endian = (docs[0].get("configuration") or {}).get("endian")
    if endian not in (None, "little", "big"):
        return None
    codecs = []
    for d in docs[1:]:
        c = _codec_from_json(d)
        if c is None:
            return None
        codecs.append(c)
    return endian, codecs


def _encode(codecs: list[_Codec], data: Any) -> Any:
    for c in codecs:
        data = c.encode(data)
    return data


def _decode(codecs: list[_Codec], data: Any) -> Any:
    for c in reversed(codecs):
        data = c.decode(data)
    return data


def _encode_unit(lay: _Layout, block: np.ndarray, valid: int) -> bytes | memoryview:
    """The bytes of a chunk file, or of a shard file with inner chunks up to ``valid``."""
    if lay.shard_rows is None:
        return _as_bytes(_encode(lay.codecs, block.reshape(-1).view(np.uint8)))
    cr = lay.chunk_rows
    n_inner = lay.shard_rows // cr
    index = np.full((n_inner, 2), _MAX_U64, dtype="<u8")
    parts: list[bytes | memoryview] = []
    offset = 0
    for k in range(n_inner):
        if k * cr >= valid:
            break
        raw = block[k * cr : (k + 1) * cr].reshape(-1).view(np.uint8)
        enc = _as_bytes(_encode(lay.codecs, raw))
        index[k] = (offset, len(enc))
        parts.append(enc)
        offset += len(enc)
    index_bytes = _as_bytes(_encode(lay.index_codecs, index.reshape(-1).view(np.uint8)))
    if lay.index_at_start:
        index[index[:, 0] != _MAX_U64, 0] += len(index_bytes)
        index_bytes = _as_bytes(_encode(lay.index_codecs, index.reshape(-1).view(np.uint8)))
        return b"".join([index_bytes, *parts])
    return b"".join([*parts, index_bytes])


def _as_bytes(data: Any) -> bytes | memoryview:
    if isinstance(data, bytes | memoryview):
        return data
    if isinstance(data, np.ndarray):
        return memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))  # type: ignore[arg-type]
    return memoryview(data).cast("B")
