"""The Zarr v3 backend: a group with one array per field and the manifest in its attributes.

On disk a store is a plain Zarr v3 group (``zarr.open(path)`` reads it): array ``x`` holds field
``x``, ragged fields add ``x.shapes`` (or ``x.values``/``x.offsets``/``x.shapes`` when packed),
and the group's attribute ``"oocstore"`` holds the full manifest, the one record of how many rows
are committed. Zarr's own array shape runs ahead of it while a writer grows the arrays.

Why chunk files are written here and not through zarr-python: zarr 3.1's write path reached
about 0.1x the disk's sequential speed on small images (per-chunk overhead of its async
pipeline, and a read-modify-write for every batch that is not chunk-aligned). The writer hands
this backend whole, chunk-aligned runs of rows, which are encoded as the array's own metadata
says (the ``bytes`` codec, then ``zstd``/``blosc``/``gzip``/``crc32c``, optionally inside the
``sharding_indexed`` codec) and written with ``pwrite``. Arrays whose codecs this module does
not know are read and written through zarr-python instead (correct, slower). The tests check
every layout against zarr-python itself.

Chunk keys are flat (``x/c.0.0.0.0``: the default encoding with the ``.`` separator), so a
commit fsyncs one directory per array. Each chunk file gets its blocks (``posix_fallocate``)
before it is written: a full disk fails there, and it measured ~1.8x faster here.

Crash safety: chunk files written since the last commit, and the directories that gained
entries, are fsynced by :meth:`ZarrBackend.sync` (which may run in the writer's commit thread);
a chunk file that already holds committed rows is only replaced whole (its old version and the
new one fsynced, then a rename) or, when stored uncompressed, rewritten in place with the same
bytes for its committed rows. ``zarr.json`` documents (zarr-python's ``LocalStore`` renames but
never fsyncs them) are written here with :func:`oocstore._durable.atomic_write_bytes`; the
group's ``zarr.json`` is the commit point.

Readers get :class:`ZarrArray` views of the committed rows. Each holds its array's directory
open with a shared ``flock``: when the writer drops an array a view still reads (a ragged field
changing layout), it moves the directory into a hidden attic beside the store instead of
deleting it, and later writer steps delete what no view holds. The writer's lock file sits
beside the store too: zarr-python warns about anything in a group that is not a Zarr node.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import itertools
import json
import math
import os
import re
import shutil
import stat
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from .._direct import DIRECT_AFTER, DirectWriter
from .._durable import (
    atomic_write_bytes,
    fsync_dir,
    fsync_fd,
    open_nofollow,
    preallocate,
    pwrite_all,
)
from ..errors import CorruptStoreError, DiskFullError, UnsupportedDtypeError
from ..manifest import MAX_DEPTH, MAX_MANIFEST_BYTES, Manifest
from ..manifest import _json_depth as json_depth
from ..sizing import available_memory
from ._lazy import LazyArray
from .base import ArrayReader, Backend, BackendOptions, RegionWriter

__all__ = [
    "ATTRIBUTE",
    "CHUNK_BYTES",
    "DEFAULT_COMPRESSORS",
    "SHARD_BYTES",
    "ZarrArray",
    "ZarrBackend",
    "ZarrRegionWriter",
    "chunk_rows_for",
    "shard_rows_for",
]

ATTRIBUTE = "oocstore"
"""The group attribute that holds the manifest."""
CHUNK_BYTES = 32 * 2**20
"""Target bytes per uncompressed chunk. Each chunk is a file that is created, allocated and
fsynced at a commit, and that per-file cost showed: writing 2 GB of 64x64x3 images took
1.7-2.4x the npy backend's time with 8 MiB chunks and 1.1-1.6x with 32 MiB (4 alternating
pairs each, on a busy machine). Our own reader reads single samples by offset, so the chunk
size costs it nothing; the writer writes uncompressed rows in place, so it never stages a
whole chunk. Plain zarr reads a whole chunk per access (32 MiB for one sample); Dask's guide
asks for chunks of 10-100+ MB."""
COMPRESSED_CHUNK_BYTES = 2 * 2**20
"""Target for compressed arrays: a read of one sample decodes its whole chunk, so smaller."""
DEFAULT_COMPRESSORS: Any = None
"""Compressors when ``compressors=`` is not given: none (zarr's own meaning of ``None``).

Measured here (2 cores, ext4 on a VM disk shared with other jobs; 2 GB of 64x64x3 uint8
images and 1 GB of float32 rows written through oocstore): zstd level 1 and blosc-lz4 with
shuffle saved nothing worth having (ratios 1.00-1.01 on the images, 1.07-1.08 on the floats),
and write speed was 0.4-0.7 GB/s for all three within the noise (one earlier series had
compressed writes at half speed). Reading is where it shows: uncompressed chunks read at
3.3 GB/s sequentially and ~29k random samples/s (a ``pread`` of just the sample), zstd at
0.77 GB/s and ~1.3k samples/s (each sample decodes its whole chunk), blosc-lz4 at 2.2 GB/s.
Data that does compress (masks, sparse or quantised arrays) should pass
``compressors="auto"`` (zarr's default, zstd) or any Zarr v3 codec."""
SHARD_BYTES = 128 * 2**20
"""Target uncompressed bytes per shard when sharding is asked for without a size."""
_ZARR_JSON = "zarr.json"
_MAX_ARRAY_META = 2**20  # an array's zarr.json is a few hundred bytes
_MAX_U64 = 2**64 - 1  # a missing inner chunk in a shard index
_ARRAY_DIR = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*(\.(shapes|values|offsets))?")
_TMP_PREFIX = ".oocstore-"
_CHUNK_KEY = re.compile(r"c(\.[0-9]+)+")
_PARTIAL_META = re.compile(r"\.zarr\.json\.[0-9a-f]+\.partial")
_NOSPACE = {errno.ENOSPC, errno.EDQUOT}
# Non-blocking: a FIFO planted as a chunk file must not block the open (see open_nofollow).
_READ_FLAGS = (
    os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
)


# -- sizing -------------------------------------------------------------------------------------


def chunk_rows_for(row_nbytes: int, *, compressed: bool = False, memory: int | None = None) -> int:
    """Rows per chunk along axis 0: whole samples making about :data:`CHUNK_BYTES`.

    The target is :data:`CHUNK_BYTES` (or :data:`COMPRESSED_CHUNK_BYTES` for compressed
    arrays), at most 1/32 of ``memory`` (default: what psutil and the cgroup say is available),
    since the writer stages at least one chunk per array. A sample larger than the target is
    one chunk by itself.

    Parameters
    ----------
    row_nbytes
        Bytes of one row (sample) of the array.
    compressed
        Whether the array's chunks are compressed.
    memory
        Bytes of memory to size against (default: available memory).

    Returns
    -------
    int
        Rows per chunk, at least 1.
    """
    target = COMPRESSED_CHUNK_BYTES if compressed else CHUNK_BYTES
    mem = available_memory() if memory is None else memory
    target = max(min(target, mem // 32), 64 * 2**10)
    # Rows of zero bytes (an axis of length 0) still need a finite chunk.
    return int(min(max(target // max(row_nbytes, 1), 1), 2**24))


def shard_rows_for(chunk_rows: int, row_nbytes: int, *, memory: int | None = None) -> int:
    """Rows per shard: a whole number of chunks making about :data:`SHARD_BYTES`.

    A shard is the unit the writer stages and writes, so it is also capped at 1/16 of
    ``memory`` (default: available memory).
    """
    if row_nbytes == 0:
        return chunk_rows  # rows of no bytes: one chunk per shard (not 2**27 empty ones)
    mem = available_memory() if memory is None else memory
    target = max(min(SHARD_BYTES, mem // 16), 1)
    per_chunk = max(chunk_rows * row_nbytes, 1)
    return int(max(target // per_chunk, 1) * chunk_rows)


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


# -- layout: what an array's zarr.json says, in the terms this module reads and writes ----------


@dataclass
class _Layout:
    """An array on disk: its metadata document and how its chunk files are encoded."""

    path: Path
    """The array's directory."""
    doc: dict[str, Any]
    """The array's ``zarr.json`` document (shape[0] is the allocated rows)."""
    dtype: np.dtype[Any]
    """The dtype readers get (the manifest's, byte order included)."""
    store_dtype: np.dtype[Any]
    """The dtype of the bytes in the chunks (the ``bytes`` codec's byte order)."""
    row_shape: tuple[int, ...]
    chunk_rows: int
    shard_rows: int | None = None
    """Rows per shard when the array is sharded (inner chunks of ``chunk_rows``)."""
    codecs: list[_Codec] = field(default_factory=list)
    """Bytes-to-bytes codecs of the (inner) chunks."""
    index_codecs: list[_Codec] = field(default_factory=list)
    index_at_start: bool = False
    separator: str = "."
    """Of the default chunk key encoding: ``c.0.0`` (flat, written here) or ``c/0/0``."""
    native: bool = True
    """False: a layout this module does not encode; zarr-python reads and writes it."""
    tile_shape: tuple[int, ...] = ()
    """The chunk shape past the sample axis. Equal to ``row_shape`` when a chunk holds whole
    rows; smaller (a *tile*) for a padded field whose trailing axes grow (see
    :func:`oocstore.sizing.tile_shape`), and then a row is spread over a grid of chunk files."""
    fill: Any = 0
    """What a tile's chunk file that was never written holds (zarr's ``fill_value``)."""

    @property
    def capacity(self) -> int:
        return int(self.doc["shape"][0])

    @property
    def row_nbytes(self) -> int:
        return math.prod(self.row_shape) * self.store_dtype.itemsize

    @property
    def fill_bytes_nonzero(self) -> bool:
        """Is the fill value anything but zero bytes (which a hole in a file reads as)?"""
        return bool(np.full(1, self.fill, dtype=self.store_dtype).view(np.uint8).any())

    @property
    def tiled(self) -> bool:
        """Is a row spread over several chunk files (or cut from a larger chunk)?"""
        return math.prod(self.row_shape) > 0 and self.tile_shape != self.row_shape

    @property
    def cell_shape(self) -> tuple[int, ...]:
        """The shape of one row inside a chunk file."""
        return self.tile_shape if self.tiled else self.row_shape

    @property
    def cell_nbytes(self) -> int:
        """Bytes of one row inside a chunk file."""
        return math.prod(self.cell_shape) * self.store_dtype.itemsize

    def grid(self, row_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """Chunk files per row along each trailing axis (of ``row_shape``, default the rows')."""
        shape = self.row_shape if row_shape is None else row_shape
        return tuple(-(-d // t) for d, t in zip(shape, self.tile_shape, strict=True))

    def tiles(self) -> Iterator[tuple[int, ...]]:
        """The grid index of every chunk file of a row."""
        return itertools.product(*(range(g) for g in self.grid()))

    def tile_region(self, tile: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """Where tile ``tile`` lies in a row, and the part of the tile inside the row."""
        where, crop = [], []
        for i, t, d in zip(tile, self.tile_shape, self.row_shape, strict=True):
            lo, hi = i * t, min((i + 1) * t, d)
            where.append(slice(lo, hi))
            crop.append(slice(0, hi - lo))
        return tuple(where), tuple(crop)

    @property
    def unit_rows(self) -> int:
        """Rows per file: a shard, or a chunk."""
        return self.shard_rows or self.chunk_rows

    @property
    def in_place(self) -> bool:
        """Uncompressed and unsharded: a chunk file is the rows' bytes, written in place."""
        return self.native and not self.codecs and self.shard_rows is None

    def unit_key(self, unit: int, tile: tuple[int, ...] | None = None) -> str:
        """The chunk key (path in the array's directory) of shard or chunk ``unit`` (of the
        chunk files of rows ``unit``, the one at ``tile`` of the grid; the first by default)."""
        sep = self.separator
        index = tile if tile is not None else (0,) * len(self.row_shape)
        return f"c{sep}{unit}" + "".join(f"{sep}{i}" for i in index)

    def unit_path(self, unit: int, tile: tuple[int, ...] | None = None) -> Path:
        """The file of shard or chunk ``unit`` (default chunk key encoding)."""
        return self.path / self.unit_key(unit, tile)

    def chunk_files(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        """Every chunk file on disk: its path and its chunk grid index (sample axis first)."""
        if self.separator == ".":
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(self.path):
                    if _CHUNK_KEY.fullmatch(entry.name):
                        yield entry.path, tuple(int(k) for k in entry.name.split(".")[1:])
            return
        top = self.path / "c"
        for dirpath, _, files in os.walk(top):
            rel = Path(dirpath).relative_to(top).parts
            for name in files:
                parts = (*rel, name)
                if all(p.isdigit() for p in parts):
                    yield os.path.join(dirpath, name), tuple(int(p) for p in parts)

    def unit_of(self, entry: str) -> int | None:
        """The unit a chunk file or directory (an entry of the array's directory, or of its
        ``c`` directory with the ``/`` separator) stands for; None if it is not one."""
        head = entry.split(".")[1] if self.separator == "." and entry.startswith("c.") else entry
        return int(head) if head.isdigit() else None

    @classmethod
    def parse(cls, path: Path, doc: Any, dtype: np.dtype[Any], where: str) -> _Layout:
        """Check an array's metadata document; raise CorruptStoreError if it is not one."""
        if not isinstance(doc, dict) or doc.get("zarr_format") != 3:
            raise CorruptStoreError(where, "not a Zarr v3 array (zarr_format is not 3)")
        if doc.get("node_type") != "array":
            raise CorruptStoreError(where, "not a Zarr array (node_type is not 'array')")
        shape = doc.get("shape")
        grid = doc.get("chunk_grid")
        try:
            chunk_shape = grid["configuration"]["chunk_shape"]  # type: ignore[index]
            ok = (
                grid["name"] == "regular"  # type: ignore[index]
                and isinstance(shape, list)
                and isinstance(chunk_shape, list)
                and len(shape) == len(chunk_shape) >= 1
                and all(type(d) is int and 0 <= d < 2**53 for d in shape)
                and all(type(d) is int and 1 <= d < 2**53 for d in chunk_shape)
            )
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise CorruptStoreError(where, "bad 'shape' or 'chunk_grid' in the array metadata")
        row_shape = tuple(shape[1:])  # type: ignore[index]
        layout = cls(path, doc, dtype, dtype, row_shape, int(chunk_shape[0]), native=False)
        layout.tile_shape = tuple(int(c) for c in chunk_shape[1:])
        keys = doc.get("chunk_key_encoding")
        sep = None
        if isinstance(keys, dict) and keys.get("name") == "default":
            sep = (keys.get("configuration") or {}).get("separator", "/")
        default_keys = sep is not None
        codecs = doc.get("codecs")
        if not (default_keys and sep in ("/", ".") and isinstance(codecs, list)):
            return layout
        layout.separator = sep
        if doc.get("storage_transformers") not in (None, []):
            return layout
        if codecs and isinstance(codecs[0], dict) and codecs[0].get("name") == "sharding_indexed":
            conf = codecs[0].get("configuration") or {}
            inner_shape = conf.get("chunk_shape")
            inner = _parse_codecs(conf.get("codecs"))
            index = _parse_codecs(conf.get("index_codecs"))
            if (
                len(codecs) != 1
                or inner is None
                or index is None
                or index[0] == "big"
                or not isinstance(inner_shape, list)
                or len(inner_shape) != len(chunk_shape)
                or inner_shape[1:] != chunk_shape[1:]
                or not all(type(d) is int and d >= 1 for d in inner_shape)
                or chunk_shape[0] % inner_shape[0]
                or conf.get("index_location", "end") not in ("start", "end")
            ):
                return layout
            layout.shard_rows = int(chunk_shape[0])
            layout.chunk_rows = int(inner_shape[0])
            endian, layout.codecs = inner
            layout.index_codecs = index[1]
            layout.index_at_start = conf.get("index_location", "end") == "start"
        else:
            plain = _parse_codecs(codecs)
            if plain is None:
                return layout
            endian, layout.codecs = plain
        if endian is not None:
            layout.store_dtype = dtype.newbyteorder("<" if endian == "little" else ">")
        layout.native = True
        return layout


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    """Read a small regular file (never following a symlink); CorruptStoreError otherwise."""
    where = os.fspath(path)
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        raise CorruptStoreError(where, f"{what} is missing") from None
    except OSError as err:
        raise CorruptStoreError(where, f"cannot open {what} ({err.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptStoreError(where, f"{what} is not a regular file")
        if st.st_size > limit:
            raise CorruptStoreError(where, f"{what} is {st.st_size:,} bytes, more than allowed")
        return os.pread(fd, st.st_size + 1, 0)
    finally:
        os.close(fd)


def _load_json(data: bytes, where: str, what: str) -> Any:
    try:
        text = data.decode("utf8")
    except UnicodeDecodeError:
        raise CorruptStoreError(where, f"{what} is not UTF-8 text") from None
    depth = json_depth(text)
    if depth > MAX_DEPTH + 2:
        raise CorruptStoreError(where, f"{what} JSON nested {depth} deep")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as err:
        raise CorruptStoreError(where, f"{what} is not valid JSON ({err})") from None


def _refuse_constant(name: str) -> Any:
    msg = f"holds {name}, which is not JSON"
    raise ValueError(msg)


def _dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2, allow_nan=False).encode()


@contextlib.contextmanager
def _disk_errors(path: Path) -> Iterator[None]:
    """Turn a full disk into DiskFullError at the call that failed."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as err:
        if err.errno in _NOSPACE:
            raise DiskFullError(os.fspath(path)) from err
        raise


def _check_dtype(dtype: np.dtype[Any]) -> None:
    if dtype.fields is not None or dtype.kind in "VO":
        raise UnsupportedDtypeError(
            "the zarr backend cannot store this dtype (Zarr v3 has no specified structured "
            "or raw-void data type, so other Zarr readers could not read it)",
            expected="a numeric, bool, complex, datetime64/timedelta64, or fixed-width "
            "bytes/str dtype; use the npy backend for structured dtypes",
            actual=str(dtype),
        )


def _array_doc(
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    chunk_rows: int,
    shard_rows: int | None,
    compressors: Any,
    *,
    tile: tuple[int, ...] | None = None,
    fill: Any = None,
) -> dict[str, Any]:
    """The ``zarr.json`` document zarr-python writes for such an array.

    zarr-python builds it, so data type names, fill values and codec configurations are
    exactly what zarr expects; this module only changes ``shape`` later (growth and trimming).
    """
    import zarr
    from zarr.errors import UnstableSpecificationWarning
    from zarr.storage import MemoryStore

    _check_dtype(dtype)
    store = MemoryStore()
    chunk_shape = (chunk_rows, *(max(d, 1) for d in (shape[1:] if tile is None else tile)))
    # Flat chunk keys (c.0.0.0): one directory per array, so a commit fsyncs one directory
    # per array. With "/" (c/0/0/0) every chunk adds nested directories to create and fsync:
    # measured here, 371 directory fsyncs cost 0.9 s per GB of 64x64x3 images.
    kwargs: dict[str, Any] = {
        "compressors": compressors,
        "chunk_key_encoding": {"name": "default", "separator": "."},
    }
    if shard_rows is not None:
        kwargs["shards"] = (shard_rows, *chunk_shape[1:])
    if fill is not None:
        kwargs["fill_value"] = fill
    try:
        with warnings.catch_warnings():
            # S/U dtypes are "unstable" in Zarr v3 (no spec yet); zarr-python reads them fine.
            warnings.simplefilter("ignore", UnstableSpecificationWarning)
            zarr.create_array(
                store, name="a", shape=shape, chunks=chunk_shape, dtype=dtype, **kwargs
            )
    except (TypeError, ValueError) as err:
        if "dtype" in str(err).lower() or "data type" in str(err).lower():
            problem = f"the zarr backend cannot store this dtype ({err})"
            raise UnsupportedDtypeError(problem, actual=str(dtype)) from err
        msg = f"zarr refused compressors={compressors!r} for an array of {dtype}: {err}"
        raise ValueError(msg) from err
    buf = store._store_dict["a/zarr.json"]
    doc: dict[str, Any] = json.loads(buf.to_bytes())
    return doc


@functools.lru_cache(maxsize=256)
def _data_type_json(dtype_str: str) -> str:
    """The ``data_type`` entry zarr-python writes for a dtype (to check stores on open)."""
    doc = _array_doc(np.dtype(dtype_str), (0,), 1, None, None)
    return json.dumps(doc["data_type"], sort_keys=True)


# -- reading ------------------------------------------------------------------------------------


class _UnitReader:
    """Reads rows of one array from its chunk (or shard) files as its layout says."""

    def __init__(self, layout: _Layout, dir_fd: int | None = None) -> None:
        self.layout = layout
        self.dir_fd = dir_fd
        """Chunk files are opened relative to this directory, when given (see ZarrArray)."""
        self._cache: tuple[tuple[int, int], np.ndarray] | None = None
        self._zarr: Any = None

    def forget(self) -> None:
        """Drop the decoded chunk kept for the next read (the writer changed the array)."""
        self._cache = None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` in the layout's store dtype."""
        lay = self.layout
        out = np.empty((stop - start, *lay.row_shape), dtype=lay.store_dtype)
        if out.size == 0:
            return out  # rows of no bytes: nothing to read (a zstd frame of 0 bytes would fail)
        if not lay.native:
            return self._read_zarr(start, stop)
        if lay.tiled:
            self._read_tiled(start, stop, out)
            return out
        unit = lay.unit_rows
        pos = start
        while pos < stop:
            u = pos // unit
            us = u * unit
            end = min(stop, us + unit)
            self._read_unit(u, pos - us, end - us, out[pos - start : end - start])
            pos = end
        return out

    def _read_tiled(self, start: int, stop: int, out: np.ndarray) -> None:
        """Assemble rows from the chunk files of every tile of their grid."""
        lay = self.layout
        unit = lay.unit_rows
        for tile in lay.tiles():
            where, crop = lay.tile_region(tile)
            pos = start
            while pos < stop:
                u = pos // unit
                us = u * unit
                end = min(stop, us + unit)
                cells = self.read_cells(u, tile, pos - us, end - us)
                out[(slice(pos - start, end - start), *where)] = cells[(slice(None), *crop)]
                pos = end

    def read_cells(self, u: int, tile: tuple[int, ...] | None, a: int, b: int) -> np.ndarray:
        """Rows ``[a, b)`` of unit ``u``'s chunk file at ``tile``, as stored (whole tiles)."""
        out = np.empty((b - a, *self.layout.cell_shape), dtype=self.layout.store_dtype)
        self._read_unit(u, a, b, out, tile)
        return out

    def _read_unit(
        self, u: int, a: int, b: int, out: np.ndarray, tile: tuple[int, ...] | None = None
    ) -> None:
        lay = self.layout
        key = lay.unit_key(u, tile)
        where = f"{lay.path}{os.sep}{key}"
        try:
            if self.dir_fd is None:
                fd = open_nofollow(lay.path / key, os.O_RDONLY)
            else:
                fd = os.open(key, _READ_FLAGS, dir_fd=self.dir_fd)
        except FileNotFoundError:
            if self.dir_fd is not None and os.fstat(self.dir_fd).st_nlink == 0:
                problem = (
                    "the writer removed this array after the store was opened (a ragged "
                    "field changed its layout); open the store again to read it"
                )
            elif lay.tiled:
                # A tile no sample reached when these rows were written: all padding. (A
                # tile lost later is caught by verify(): its rows' checksums fail.)
                out[...] = lay.fill
                return
            else:
                problem = f"chunk file of committed rows {u * lay.unit_rows + a}.. is missing"
            raise CorruptStoreError(where, problem) from None
        except OSError as err:  # ELOOP: a symlink planted in the store is never followed
            problem = f"cannot open the chunk file ({err.strerror}); is it a symlink?"
            raise CorruptStoreError(where, problem) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise CorruptStoreError(where, "chunk file is not a regular file")
            if lay.shard_rows is None:
                if not lay.codecs:
                    _pread_into(fd, out, a * lay.cell_nbytes, where)
                    return
                chunk = self._decoded((u, tile, 0), lambda: _read_all(fd), where)
                out[...] = chunk[a:b]
                return
            self._read_shard(fd, (u, tile), a, b, out, where)
        finally:
            os.close(fd)

    def _read_shard(
        self, fd: int, u: tuple[Any, ...], a: int, b: int, out: np.ndarray, where: str
    ) -> None:
        lay = self.layout
        cr = lay.chunk_rows
        n_inner = lay.unit_rows // cr
        index_nbytes = 16 * n_inner + 4 * sum(isinstance(c, _Crc32c) for c in lay.index_codecs)
        size = os.fstat(fd).st_size
        if size < index_nbytes:
            raise CorruptStoreError(where, "shard file is shorter than its index")
        raw = os.pread(fd, index_nbytes, 0 if lay.index_at_start else size - index_nbytes)
        try:
            index = np.frombuffer(_decode(lay.index_codecs, raw), dtype="<u8").reshape(-1, 2)
        except ValueError as err:
            raise CorruptStoreError(where, f"shard index is damaged ({err})") from None
        pos = a
        while pos < b:
            k = pos // cr
            ks = k * cr
            end = min(b, ks + cr)
            off, nb = (int(v) for v in index[k])
            if off == _MAX_U64 or off + nb > size:
                raise CorruptStoreError(where, f"inner chunk {k} of committed rows is missing")
            dst = out[pos - a : end - a]
            if not lay.codecs:
                _pread_into(fd, dst, off + (pos - ks) * lay.cell_nbytes, where)
            else:
                chunk = self._decoded((*u, k), functools.partial(os.pread, fd, nb, off), where)
                dst[...] = chunk[pos - ks : end - ks]
            pos = end

    def _decoded(self, key: tuple[Any, ...], raw: Callable[[], bytes], where: str) -> np.ndarray:
        # One decoded chunk is kept: reading sample after sample decodes each chunk once.
        # Its committed rows never change, so the cache cannot go stale for them.
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        lay = self.layout
        try:
            data = np.frombuffer(_decode(lay.codecs, raw()), dtype=np.uint8)
        except Exception as err:  # numcodecs raises RuntimeError, ValueError...
            raise CorruptStoreError(where, f"cannot decode chunk ({err})") from None
        nbytes = lay.chunk_rows * lay.cell_nbytes
        if data.size != nbytes:
            raise CorruptStoreError(
                where, f"chunk decodes to {data.size:,} bytes, expected {nbytes:,}"
            )
        chunk = data.view(lay.store_dtype).reshape(lay.chunk_rows, *lay.cell_shape)
        self._cache = (key, chunk)
        return chunk

    def _read_zarr(self, start: int, stop: int) -> np.ndarray:
        where = os.fspath(self.layout.path)
        try:
            if self._zarr is None:
                _refuse_symlinks(self.layout.path)  # zarr-python's LocalStore follows them
                self._zarr = _open_zarr(self.layout.path, read_only=True)
            out = np.asarray(self._zarr[start:stop])
        except CorruptStoreError:
            raise
        except Exception as err:  # zarr-python fails on damaged metadata with many types
            problem = f"zarr cannot read rows {start}..{stop} ({type(err).__name__}: {err})"
            raise CorruptStoreError(where, problem[:500]) from None
        want = (stop - start, *self.layout.row_shape)
        if out.ndim == len(want) and all(o >= w for o, w in zip(out.shape, want, strict=True)):
            out = out[tuple(slice(0, w) for w in want)]  # zarr.json runs ahead of the commit
        if out.shape != want:
            problem = f"zarr read rows {start}..{stop} as shape {out.shape}, not {want}"
            raise CorruptStoreError(where, problem)
        return out.astype(self.layout.store_dtype, copy=False)


def _refuse_symlinks(path: Path) -> None:
    """CorruptStoreError if anything in array directory ``path`` is a symlink."""
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            if os.path.islink(os.path.join(dirpath, name)):
                where = os.path.join(dirpath, name)
                raise CorruptStoreError(where, "a symlink in the store is never followed")


def _in_use(path: Path) -> bool:
    """Does a reader's view hold array directory ``path`` (a shared flock on it)?"""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # no locks on this filesystem: nothing tells, delete as before
    finally:
        os.close(fd)  # also drops the lock
    return False


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0)


def _pread_into(fd: int, out: np.ndarray, offset: int, where: str) -> None:
    view = memoryview(out.reshape(-1).view(np.uint8)) if out.size else memoryview(b"")  # type: ignore[arg-type]
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise CorruptStoreError(where, "chunk file ends before its rows (truncated?)")
        done += n


def _open_zarr(path: Path, *, read_only: bool) -> Any:
    """One array through zarr-python, for layouts this module does not encode itself."""
    import zarr
    from zarr.errors import UnstableSpecificationWarning
    from zarr.storage import LocalStore

    store: Any = LocalStore(path, read_only=True) if read_only else _durable_local_store(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnstableSpecificationWarning)
        return zarr.open_array(
            store, mode="r" if read_only else "r+", config={"write_empty_chunks": True}
        )


@functools.cache
def _durable_store_class() -> type:
    from zarr.storage import LocalStore

    class DurableLocalStore(LocalStore):
        """zarr's LocalStore, but every key is written with fsync before its rename."""

        async def set(self, key: str, value: Any) -> None:
            self._check_writable()
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            with _disk_errors(path):
                atomic_write_bytes(path, value.to_bytes())

    return DurableLocalStore


def _durable_local_store(path: Path) -> Any:
    return _durable_store_class()(path)


class ZarrArray(LazyArray):
    """A field of a Zarr store: committed rows only, read on demand, sliced to NumPy.

    Zarr's own array shape may be larger while a writer grows the store; this array never
    shows rows past the manifest's committed length. Uncompressed chunks are read with
    ``pread`` of just the rows asked for; compressed chunks are decoded whole (the last one is
    kept, so reading sample after sample decodes each chunk once).
    """

    def __init__(self, layout: _Layout, length: int) -> None:
        super().__init__((length, *layout.row_shape), layout.dtype)
        # Chunks are opened relative to the array's directory as it was at open: should the
        # writer replace the array (same name, new directory), this view fails loudly rather
        # than read another array's chunks as its own.
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_NOFOLLOW
        try:
            dir_fd = os.open(layout.path, flags | getattr(os, "O_CLOEXEC", 0))
        except OSError as err:
            raise CorruptStoreError(
                os.fspath(layout.path), f"cannot open the array directory ({err.strerror})"
            ) from None
        # A shared lock tells the writer this directory is in use: it then moves the array
        # aside instead of deleting it, and this view keeps reading it (as an np.memmap keeps
        # an unlinked .npy file). Released when the view is collected.
        with contextlib.suppress(OSError):
            fcntl.flock(dir_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        self._reader = _UnitReader(layout, dir_fd)

    def close(self) -> None:
        """Release the directory handle (reads then fail); called when the view is collected."""
        fd, self._reader.dir_fd = self._reader.dir_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        # Not contextlib.suppress: at interpreter exit this module's globals may be gone.
        try:  # noqa: SIM105
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict[str, Any]:
        # A directory handle does not cross processes: the copy reopens the directory.
        return {"layout": self._reader.layout, "shape": self.shape}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["layout"], state["shape"][0])  # type: ignore[misc]

    @property
    def path(self) -> Path:
        """The Zarr array's directory (``zarr.open_array(path)`` opens it)."""
        return self._reader.layout.path

    @property
    def chunks(self) -> tuple[int, ...]:
        """Rows per chunk along axis 0, then the chunk's extent on each trailing axis (the
        whole row unless a ragged field grew it; as ``zarr.Array.chunks``)."""
        lay = self._reader.layout
        return (lay.chunk_rows, *lay.cell_shape)

    def _read(self, start: int, stop: int) -> np.ndarray:
        out = self._reader.read(start, stop)
        return out if out.dtype == self.dtype else out.astype(self.dtype)


# -- writing ------------------------------------------------------------------------------------


@dataclass
class _WriteState:
    """Writer-side state of one array."""

    layout: _Layout
    reader: _UnitReader
    written: int = 0
    """Rows written so far (committed rows after a resume)."""
    meta_dirty: bool = False
    """The in-memory ``zarr.json`` (its shape) differs from the file."""
    dirs: set[Path] = field(default_factory=set)
    """Directories known to exist."""
    zarr_array: Any = None
    chunk: _OpenChunk | None = None
    """The uncompressed chunk file being filled in place, kept open while rows go into it."""
    run: int = 0
    """Bytes written in place so far: a run that goes on from one chunk file to the next."""

    def close_chunk(self) -> None:
        """Put the open chunk file's rows in the file and close it."""
        chunk, self.chunk = self.chunk, None
        if chunk is not None:
            try:
                chunk.writer.close()
            finally:
                os.close(chunk.fd)

    def next_chunk(self, path: Path, fd: int) -> None:
        """Go on with chunk file ``path`` (open as ``fd``): the same writer, retargeted."""
        old = self.chunk
        if old is None:
            after = max(DIRECT_AFTER - self.run, 0)
            self.chunk = _OpenChunk(path, fd, DirectWriter(fd, path, after=after))
            return
        # self.chunk keeps the same writer meanwhile: a sync in the commit thread drains it,
        # and retarget() has put the old file's rows in it before it moves on.
        try:
            old.writer.retarget(fd, path)
        finally:
            os.close(old.fd)
        self.chunk = _OpenChunk(path, fd, old.writer)

    def drain_chunk(self) -> None:
        """Every row written into the open chunk file is in the file (before reading or
        syncing it; may run in the commit thread)."""
        chunk = self.chunk
        if chunk is not None:
            chunk.writer.drain()


@dataclass
class _OpenChunk:
    path: Path
    fd: int
    writer: DirectWriter


class ZarrBackend(Backend):
    """Store arrays as a Zarr v3 group; readers get lazy :class:`ZarrArray` views.

    Options: ``chunks`` (rows per chunk, for all arrays or per array name), ``compressors``
    (passed to zarr-python: a codec, a list, ``"auto"`` for zarr's default zstd; None here
    means uncompressed, see :data:`DEFAULT_COMPRESSORS`), ``extra["shards"]`` (rows per shard,
    ``True`` for about :data:`SHARD_BYTES`, per array name as a dict).
    """

    name: ClassVar[str] = "zarr"
    zero_copy: ClassVar[bool] = False
    suffixes: ClassVar[tuple[str, ...]] = (".zarr",)
    background_sync: ClassVar[bool] = True
    grows_rows: ClassVar[bool] = True

    def __init__(self, root: Path, options: BackendOptions | None = None) -> None:
        super().__init__(root, options)
        self._arrays: dict[str, _WriteState] = {}
        self._mutex = threading.Lock()  # guards the sets below and zarr.json shapes
        self._pending: set[Path] = set()  # chunk files written since the last sync
        self._dirty_dirs: set[Path] = set()  # directories with entries new since then

    @classmethod
    def supports_dtype(cls, dtype: np.dtype[Any]) -> bool:
        """Whether arrays of ``dtype`` can be stored (others raise UnsupportedDtypeError)."""
        try:
            _data_type_json(np.dtype(dtype).str)
        except UnsupportedDtypeError:
            return False
        return True

    # -- reading -----------------------------------------------------------------------------

    @classmethod
    def holds_store(cls, root: Path) -> bool:
        path = root / _ZARR_JSON
        if not root.is_dir() or not path.is_file():
            return False
        try:
            data = _read_bounded(path, MAX_MANIFEST_BYTES + 2**20, "group metadata")
        except CorruptStoreError:
            return True  # a store whose metadata is damaged: read_manifest says how
        return f'"{ATTRIBUTE}"'.encode() in data

    @classmethod
    def read_manifest(cls, root: Path) -> Manifest:
        path = root / _ZARR_JSON
        where = os.fspath(path)
        doc = _load_json(
            _read_bounded(path, MAX_MANIFEST_BYTES + 2**20, "group metadata"),
            where,
            "group metadata",
        )
        if not isinstance(doc, dict) or doc.get("zarr_format") != 3:
            raise CorruptStoreError(where, "not Zarr v3 metadata (zarr_format is not 3)")
        if doc.get("node_type") != "group":
            raise CorruptStoreError(where, "not a Zarr group (node_type is not 'group')")
        attrs = doc.get("attributes")
        if not isinstance(attrs, dict) or ATTRIBUTE not in attrs:
            raise CorruptStoreError(
                where, f"the group has no {ATTRIBUTE!r} attribute (no oocstore manifest)"
            )
        manifest = Manifest.from_json(attrs[ATTRIBUTE], where)
        if manifest.backend != cls.name:
            raise CorruptStoreError(
                where, f"manifest says backend {manifest.backend!r}, files are zarr"
            )
        return manifest

    @classmethod
    def open_arrays(cls, root: Path, manifest: Manifest) -> dict[str, ArrayReader]:
        out: dict[str, ArrayReader] = {}
        fills = _fills(manifest)
        for name, spec in manifest.arrays.items():
            if _vanished_empty(root / name, spec.length):
                out[name] = np.empty((0, *spec.shape), dtype=spec.dtype)
                continue
            layout = _open_layout(root / name, spec.dtype, spec.shape, fills.get(name, 0))
            if layout.capacity < spec.length:
                raise CorruptStoreError(
                    os.fspath(layout.path / _ZARR_JSON),
                    f"array has {layout.capacity:,} rows but the manifest commits "
                    f"{spec.length:,}; was it truncated?",
                )
            out[name] = ZarrArray(layout, spec.length)
        return out

    @classmethod
    def stored_chunk_rows(cls, manifest: Manifest, name: str, array: ArrayReader) -> int | None:
        chunks = getattr(array, "chunks", None)
        return int(chunks[0]) if isinstance(chunks, tuple) and chunks else None

    @classmethod
    def lock_path(cls, root: Path) -> Path:
        """A hidden file beside the store: zarr-python warns about any entry in a group's
        directory that is not a Zarr node (``g.members()`` would warn about ``.lock``)."""
        return root.with_name(f".{root.name}.lock")

    @classmethod
    def unfinished_files(cls, root: Path) -> list[Path] | None:
        if root.is_symlink() or not root.is_dir() or not cls.lock_path(root).is_file():
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

    # -- writing: arrays ---------------------------------------------------------------------

    def create(self) -> None:
        # Only the directory: the group's zarr.json is the commit point, written by the first
        # commit, so a directory without it is not (yet) a store.
        with _disk_errors(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
        self._sweep_attic()
        # Array directories a writer killed before its first commit left, emptied by the
        # writer (unfinished_files): zarr-python would warn about them as unknown objects.
        for entry in os.scandir(self.root):
            if _ARRAY_DIR.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.rmdir(entry.path)  # only if empty
        fsync_dir(self.root.parent)

    def open_existing(self, manifest: Manifest) -> dict[str, int]:
        self._sweep_attic()
        for entry in os.scandir(self.root):
            if entry.name.startswith(_TMP_PREFIX) or entry.name.endswith(".partial"):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            elif (
                _ARRAY_DIR.fullmatch(entry.name)
                and entry.is_dir(follow_symlinks=False)
                and entry.name not in manifest.arrays
            ):
                # Created by an interrupted writer after its last commit: not part of the store.
                self._drop(entry.name)
        capacities = {}
        fills = _fills(manifest)
        for name, spec in manifest.arrays.items():
            if _vanished_empty(self.root / name, spec.length):
                self.create_array(name, spec.dtype, spec.shape, 0)
                capacities[name] = 0
                continue
            layout = _open_layout(self.root / name, spec.dtype, spec.shape, fills.get(name, 0))
            if layout.capacity < spec.length:
                raise CorruptStoreError(
                    os.fspath(layout.path / _ZARR_JSON),
                    f"array has {layout.capacity:,} rows but the manifest commits {spec.length:,}",
                )
            for entry in os.scandir(layout.path):
                if entry.name.startswith(_TMP_PREFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
            st = _WriteState(layout, _UnitReader(layout), written=spec.length)
            if name in fills or list(layout.doc["shape"][1:]) != list(spec.shape):
                self._shrink_rows(st)
            self._arrays[name] = st
            capacities[name] = layout.capacity
        return capacities

    def _shrink_rows(self, st: _WriteState) -> None:
        """Back to the committed row shape, after a writer grew a padded field and was killed.

        Its chunk files past the committed grid hold only rows never committed; they go, so
        growing again starts from padding, never from a dead writer's samples. (zarr.json
        may not show the growth: it is written at the next sync, and the kill can come first.)
        """
        lay = st.layout
        grid = lay.grid()
        for path, index in list(lay.chunk_files()):
            if any(i >= g for i, g in zip(index[1:], grid, strict=False)):
                os.unlink(path)
                self._touched(dirs=(Path(path).parent,))
        if list(lay.doc["shape"][1:]) != list(lay.row_shape):
            with self._mutex:
                lay.doc["shape"][1:] = list(lay.row_shape)
                st.meta_dirty = True

    def _compressors(self) -> Any:
        given = self.options.compressors
        return DEFAULT_COMPRESSORS if given is None else (given or None)

    def _shards(self, name: str) -> Any:
        """The ``shards`` option for array ``name``: rows per shard, True, or None/False."""
        return _option_for(self.options.extra.get("shards"), name, "shards", allow_true=True)

    def _chunking(self, name: str, row_nbytes: int, capacity: int) -> tuple[int, int | None]:
        compressed = self._compressors() is not None
        rows = _option_for(self.options.chunks, name, "chunks")
        chunk = rows if rows is not None else chunk_rows_for(row_nbytes, compressed=compressed)
        if rows is None and capacity > 0 and self.options.extra.get("length") is not None:
            chunk = min(chunk, capacity)  # a short array of known length: no oversized chunk
        shards = self._shards(name)
        if shards is None or shards is False:
            return chunk, None
        if shards is True:
            return chunk, shard_rows_for(chunk, row_nbytes)
        return chunk, -(-shards // chunk) * chunk  # a whole number of chunks

    def create_array(
        self, name: str, dtype: np.dtype[Any], shape: tuple[int, ...], capacity: int
    ) -> None:
        self._create(name, dtype, shape, capacity)

    def create_padded(
        self,
        name: str,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        capacity: int,
        fill: Any,
        tile: tuple[int, ...],
    ) -> None:
        # Chunks are tiles of the trailing axes, so rows can grow without rewriting a byte:
        # new tiles are new chunk files, and an edge tile wastes less than a tile per axis.
        self._create(name, dtype, shape, capacity, tile=tile, fill=fill)

    def _create(
        self,
        name: str,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        capacity: int,
        *,
        tile: tuple[int, ...] | None = None,
        fill: Any = None,
    ) -> None:
        _check_dtype(dtype)
        path = self.root / name
        self._drop(name)
        cell = tuple(shape) if tile is None else tile
        nbytes = int(np.prod(cell, dtype=np.int64)) * dtype.itemsize
        if tile is not None and (self._compressors() is not None or self._shards(name)):
            # Chunks (or shards) written whole are staged whole, a row's every tile at once:
            # sized on the row, so staging one stays near the target (and never on a tile
            # larger than the row, so a few tiny first rows do not make a huge first chunk).
            nbytes = max(nbytes, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        elif tile is not None:
            # Written in place: the rows not written yet take no disk, so a chunk need not be
            # cut to a capacity that, for a ragged stream, is only a guess from the first rows.
            capacity = 0
        chunk, shard = self._chunking(name, nbytes, capacity)
        doc = _array_doc(
            dtype, (capacity, *shape), chunk, shard, self._compressors(), tile=tile, fill=fill
        )
        with _disk_errors(path):
            path.mkdir()
            atomic_write_bytes(path / _ZARR_JSON, _dumps(doc))
        self._touched(dirs=(self.root,))
        layout = _Layout.parse(path, doc, dtype, os.fspath(path / _ZARR_JSON))
        if fill is not None:
            layout.fill = fill
        self._arrays[name] = _WriteState(layout, _UnitReader(layout), dirs={path})

    def grow_rows(self, name: str, shape: tuple[int, ...]) -> None:
        st = self._arrays[name]
        lay = st.layout
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(lay.row_shape) or any(
            a < b for a, b in zip(shape, lay.row_shape, strict=True)
        ):
            msg = f"rows of {name!r} can only grow, not go from {lay.row_shape} to {shape}"
            raise ValueError(msg)
        # Rows already written keep their tiles; the new tiles are missing files, which
        # read as the fill value: their padding. zarr.json follows at the next sync.
        with self._mutex:
            lay.doc["shape"][1:] = list(shape)
            lay.row_shape = shape
            st.meta_dirty = True
        st.zarr_array = None
        st.reader.forget()

    def _drop(self, name: str) -> None:
        st = self._arrays.pop(name, None)
        if st is not None:
            st.close_chunk()
        path = self.root / name
        if path.is_dir() and not path.is_symlink():
            if _in_use(path):
                # A reader's view of an older commit still reads it: move it aside, whole.
                attic = self.attic_path(self.root)
                with _disk_errors(attic):
                    attic.mkdir(exist_ok=True)
                    os.rename(path, attic / f"{name}.{uuid.uuid4().hex}")
            else:
                shutil.rmtree(path)
            self._touched(dirs=(self.root,))
        elif path.exists() or path.is_symlink():
            path.unlink()

    @classmethod
    def attic_path(cls, root: Path) -> Path:
        """Where arrays the writer dropped wait while readers still use them (beside the
        store, like the lock: zarr-python would warn about it inside the group)."""
        return root.with_name(f".{root.name}.attic")

    def _sweep_attic(self) -> None:
        """Delete the dropped arrays no reader uses any more (and the attic, once empty)."""
        attic = self.attic_path(self.root)
        try:
            entries = list(os.scandir(attic))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and not _in_use(Path(entry.path)):
                shutil.rmtree(entry.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            attic.rmdir()  # only if empty

    def delete_array(self, name: str) -> None:
        self._drop(name)

    def chunk_rows(self, name: str) -> int:
        # A shard when sharded (one file), else a chunk.
        return self._arrays[name].layout.unit_rows

    def write_unit_rows(self, name: str) -> int:
        # Uncompressed chunks take rows at their offsets (_write_in_place): no staging copy
        # to whole chunks; encoded ones are written whole, never read back and rewritten.
        lay = self._arrays[name].layout
        return 1 if lay.in_place else lay.unit_rows

    def reserve(self, name: str, capacity: int) -> None:
        # Growth is a change of the shape in zarr.json, written at the next sync; chunk files
        # get their blocks when written, so a full disk fails there (pwrite), never later.
        st = self._arrays[name]
        if capacity > st.layout.capacity:
            with self._mutex:
                st.layout.doc["shape"][0] = int(capacity)
                st.meta_dirty = True
            st.zarr_array = None

    def region_writer(self, name: str, stop: int) -> RegionWriter:
        st = self._arrays[name]
        st.close_chunk()
        self.reserve(name, stop)
        self._flush_meta(st)  # region writers read the array's zarr.json for its layout
        lay = st.layout
        return ZarrRegionWriter(name, lay.path, lay.dtype, lay.row_shape, stop)

    def rows_written(self, name: str, stop: int) -> None:
        st = self._arrays[name]
        st.written = max(st.written, stop)
        st.reader.forget()

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        st = self._arrays[name]
        st.drain_chunk()
        if not st.layout.native:
            self._flush_meta(st)
        out = st.reader.read(start, stop)
        return out if out.dtype == st.layout.dtype else out.astype(st.layout.dtype)

    # -- writing: rows -----------------------------------------------------------------------

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        st = self._arrays[name]
        lay = st.layout
        n = len(values)
        if n == 0:
            return
        stop = start + n
        if stop > lay.capacity:
            self.reserve(name, stop)
        if lay.row_nbytes == 0:
            # Rows of no bytes need no chunk files (zarr reads none): and a padded field that
            # starts empty must not leave chunks sized for empty rows when it grows.
            st.written = max(st.written, stop)
            return
        data = np.ascontiguousarray(values, dtype=lay.store_dtype)
        st.reader.forget()  # its decoded chunk may be one this write changes
        if not lay.native:
            self._write_zarr(st, start, data)
        elif lay.tiled:
            for tile in lay.tiles():
                where, crop = lay.tile_region(tile)
                part = data[(slice(None), *where)]
                if part.shape[1:] == lay.tile_shape:
                    cells = np.ascontiguousarray(part)
                else:  # an edge tile: zarr stores it whole, padding past the row's end
                    cells = np.full((n, *lay.tile_shape), lay.fill, dtype=lay.store_dtype)
                    cells[(slice(None), *crop)] = part
                self._write_rows(st, start, cells, tile)
        else:
            self._write_rows(st, start, data, None)
        # Writing into an encoded unit read its other rows back through the reader, which
        # cached the unit as it was before this write: forget it again.
        st.reader.forget()
        st.written = max(st.written, stop)

    def _write_rows(
        self, st: _WriteState, start: int, data: np.ndarray, tile: tuple[int, ...] | None
    ) -> None:
        """Write rows of chunk files (of one tile of the grid, when rows are tiled)."""
        lay = st.layout
        unit = lay.unit_rows
        stop = start + len(data)
        pos = start
        while pos < stop:
            u = pos // unit
            end = min(stop, (u + 1) * unit)
            part = data[pos - start : end - start]
            if lay.in_place:
                self._write_in_place(st, u, pos - u * unit, part, tile)
            else:
                self._write_unit(st, u, pos, part, tile)
            pos = end

    def _unit_file(self, st: _WriteState, u: int, tile: tuple[int, ...] | None = None) -> Path:
        path = st.layout.unit_path(u, tile)
        parent = path.parent
        if parent not in st.dirs:  # only with "/" chunk keys: c/<u>/0/0 directories
            new = []
            d = parent
            while d not in st.dirs and d != st.layout.path:
                new.append(d)
                d = d.parent
            with _disk_errors(parent):
                parent.mkdir(parents=True, exist_ok=True)
            for d in new:
                self._touched(dirs=(d.parent,))
                st.dirs.add(d)
        return path

    def _touched(self, files: tuple[Path, ...] = (), dirs: tuple[Path, ...] = ()) -> None:
        """Note files to fsync and directories with new entries, for the next sync."""
        with self._mutex:
            self._pending.update(files)
            self._dirty_dirs.update(dirs)

    def _write_in_place(
        self, st: _WriteState, u: int, row: int, part: np.ndarray, tile: tuple[int, ...] | None
    ) -> None:
        """Write rows of an uncompressed chunk at their offset in its file.

        Rows already committed in that chunk are rewritten with the same bytes, so a crash
        mid-write leaves them intact.
        """
        lay = st.layout
        path = self._unit_file(st, u, tile)
        if tile is None:
            self._write_chunk_run(st, path, row, part)
            return
        with _disk_errors(path):
            fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            full = lay.chunk_rows * lay.cell_nbytes  # zarr stores edge chunks whole
            data = part.reshape(-1).view(np.uint8)
            offset = row * lay.cell_nbytes
            if row and lay.tiled and lay.fill_bytes_nonzero and os.fstat(fd).st_size == 0:
                # A tile new to this chunk (the rows grew): its earlier rows are padding
                # (a zero fill needs no bytes: they stay a hole, which reads as zeros).
                data = np.concatenate(
                    [
                        np.full((row, *lay.tile_shape), lay.fill, lay.store_dtype)
                        .reshape(-1)
                        .view(np.uint8),
                        data,
                    ]
                )
                offset = 0
            # Real blocks for these rows first: a full disk fails here, and writing into
            # allocated space measured ~1.8x faster here than letting ext4 allocate at
            # writeback (8 MiB files: 1.04 vs 0.57 GB/s, medians of 3). Only these rows: a
            # store of a few rows must not take a whole chunk of disk.
            preallocate(fd, offset, data.nbytes, path)
            if os.fstat(fd).st_size < full:
                # The chunk's full size, as zarr reads it; rows not written yet are a hole.
                with _disk_errors(path):
                    os.ftruncate(fd, full)
            pwrite_all(fd, data, offset, path)
        finally:
            os.close(fd)
        self._touched(files=(path,), dirs=(path.parent,))

    def _write_chunk_run(self, st: _WriteState, path: Path, row: int, part: np.ndarray) -> None:
        """Rows into an uncompressed chunk file of whole rows, kept open while it fills.

        Its writes go on from one chunk to the next as one run, so a long one goes to the
        disk with ``O_DIRECT`` (oocstore._direct) instead of through the page cache.
        """
        lay = st.layout
        full = lay.chunk_rows * lay.cell_nbytes  # zarr stores edge chunks whole
        data = part.reshape(-1).view(np.uint8)
        offset = row * lay.cell_nbytes
        if st.chunk is None or st.chunk.path != path:
            with _disk_errors(path):
                fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                if st.run >= DIRECT_AFTER:
                    # A long run: the whole chunk's blocks now, not per write (fallocate
                    # waits for the direct write in flight, which stalled every batch).
                    preallocate(fd, offset, full - offset, path)
                if os.fstat(fd).st_size < full:
                    # The chunk's full size, as zarr reads it; rows not written are a hole.
                    with _disk_errors(path):
                        os.ftruncate(fd, full)
            except BaseException:
                os.close(fd)
                raise
            st.next_chunk(path, fd)
        assert st.chunk is not None
        if st.run < DIRECT_AFTER:
            # Real blocks for these rows first (see _write_in_place): a short store takes
            # only what it wrote.
            preallocate(st.chunk.fd, offset, data.nbytes, path)
        st.chunk.writer.pwrite(data, offset)
        st.run += data.nbytes
        self._touched(files=(path,), dirs=(path.parent,))

    def _write_unit(
        self, st: _WriteState, u: int, pos: int, part: np.ndarray, tile: tuple[int, ...] | None
    ) -> None:
        """Encode and write a whole chunk or shard file holding ``part`` from row ``pos``."""
        lay = st.layout
        unit = lay.unit_rows
        us = u * unit
        a, b = pos - us, pos - us + len(part)
        valid = max(b, min(st.written - us, unit))  # rows of this unit holding data
        path = self._unit_file(st, u, tile)
        exists = path.exists()
        if a == 0 and b == unit:
            block = part
        else:
            # Rows of this unit outside ``part`` that were written before are kept (a commit
            # wrote the unit partially, or a resumed writer starts inside it). A tile new to
            # the unit (the rows grew) holds padding for them.
            block = np.full((unit, *lay.cell_shape), lay.fill, dtype=lay.store_dtype)
            block[a:b] = part
            for lo, hi in ((0, a), (b, valid)):
                if hi > lo and exists:
                    block[lo:hi] = st.reader.read_cells(u, tile, lo, hi)
        payload = _encode_unit(lay, block, valid)
        if exists:
            # The file may hold committed rows: make the old file durable (a sync running in
            # the background may not have reached it), then replace it whole with a durable
            # new one. Never rewritten in place: a crash would tear committed rows.
            with _disk_errors(path):
                fd = open_nofollow(path, os.O_RDONLY)
                try:
                    fsync_fd(fd, path)
                finally:
                    os.close(fd)
            tmp = lay.path / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
            with _disk_errors(tmp):
                try:
                    atomic_write_bytes(tmp, bytes(payload))
                    os.replace(tmp, path)
                except BaseException:
                    with contextlib.suppress(OSError):
                        tmp.unlink()
                    raise
            self._touched(dirs=(path.parent,))
        else:
            with _disk_errors(path):
                fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                preallocate(fd, 0, len(payload), path)
                pwrite_all(fd, payload, 0, path)
            finally:
                os.close(fd)
            self._touched(files=(path,), dirs=(path.parent,))

    def _write_zarr(self, st: _WriteState, start: int, data: np.ndarray) -> None:
        # zarr-python writes every key with fsync before its rename (_durable_local_store).
        self._flush_meta(st)
        if st.zarr_array is None:
            st.zarr_array = _open_zarr(st.layout.path, read_only=False)
        try:
            st.zarr_array[start : start + len(data)] = data
        except OSError:
            raise
        except Exception as err:
            msg = f"zarr could not write rows {start}.. of {os.fspath(st.layout.path)!r}: {err}"
            raise OSError(errno.EIO, msg) from err

    # -- commits -------------------------------------------------------------------------------

    def _flush_meta(self, st: _WriteState) -> None:
        with self._mutex:
            if not st.meta_dirty:
                return
            data = _dumps(st.layout.doc)
            st.meta_dirty = False
        path = st.layout.path / _ZARR_JSON
        try:
            with _disk_errors(path):
                atomic_write_bytes(path, data)
        except BaseException:
            st.meta_dirty = True
            raise

    def sync(self, lengths: dict[str, int]) -> None:
        # May run in the writer's commit thread while write() goes on (background_sync): the
        # files and directories noted so far are taken at once; later ones wait for the next
        # sync. Every row in ``lengths`` was written, and noted, before this call.
        for name in lengths:
            st = self._arrays[name]
            st.drain_chunk()
            self._flush_meta(st)
        with self._mutex:
            files, self._pending = self._pending, set()
            dirs, self._dirty_dirs = self._dirty_dirs, set()
        try:
            for path in sorted(files):
                try:
                    fd = open_nofollow(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue  # removed since (its array was dropped)
                try:
                    fsync_fd(fd, path)
                finally:
                    os.close(fd)
            # Deepest first, so a new directory's own entries are durable before its name.
            for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(FileNotFoundError):
                    fsync_dir(d)
        except BaseException:
            self._touched(tuple(files), tuple(dirs))  # still to do, should the writer go on
            raise

    def write_manifest(self, manifest: Manifest) -> None:
        doc = {
            "zarr_format": 3,
            "node_type": "group",
            "attributes": {ATTRIBUTE: manifest.to_json()},
        }
        path = self.root / _ZARR_JSON
        with _disk_errors(path):
            atomic_write_bytes(path, _dumps(doc))

    def finalize(self, lengths: dict[str, int]) -> None:
        for name, length in lengths.items():
            st = self._arrays[name]
            st.close_chunk()
            lay = st.layout
            with self._mutex:
                lay.doc["shape"][0] = int(length)
                st.meta_dirty = True
            st.zarr_array = None
            st.written = min(st.written, length)
            # Chunk files wholly past the end (a crashed writer's, or an over-allocation's).
            units = -(-length // lay.unit_rows)
            where = lay.path if lay.separator == "." else lay.path / "c"
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(where):
                    u = lay.unit_of(entry.name)
                    if u is not None and u >= units:
                        if entry.is_dir(follow_symlinks=False):
                            shutil.rmtree(entry.path)
                        else:
                            os.unlink(entry.path)
                        self._touched(dirs=(where,))
        self.sync(lengths)

    def close(self) -> None:
        for st in self._arrays.values():
            with contextlib.suppress(OSError):
                st.close_chunk()
        with contextlib.suppress(OSError):
            self._sweep_attic()
        self._arrays.clear()
        with self._mutex:
            self._pending.clear()
            self._dirty_dirs.clear()


class ZarrRegionWriter(RegionWriter):
    """Whole chunk (or shard) files of one array, written from any process.

    The layout is read from the array's ``zarr.json`` where the writer runs. A region starts
    on a unit (chunk, or shard) boundary and ends on one or at the array's end, so every file
    written here belongs to this region alone: it is written whole, never read back.
    """

    def __init__(
        self, name: str, path: Path, dtype: np.dtype[Any], row_shape: tuple[int, ...], end: int
    ) -> None:
        self.name = name
        self.path = path
        self.dtype = dtype
        self.row_shape = row_shape
        self.end = end
        """The rows to be written in all: a region ending here may end inside a chunk."""
        self._layout: _Layout | None = None
        self._files: set[Path] = set()
        self._dirs: set[Path] = set()

    def __getstate__(self) -> dict[str, Any]:
        # Paths and numbers only: codec objects are rebuilt from zarr.json where it lands.
        return {
            "name": self.name,
            "path": self.path,
            "dtype": self.dtype,
            "rows": self.row_shape,
            "end": self.end,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        args = (state["name"], state["path"], state["dtype"], state["rows"], state["end"])
        self.__init__(*args)  # type: ignore[misc]

    def _lay(self) -> _Layout:
        if self._layout is None:
            self._layout = _open_layout(self.path, self.dtype, self.row_shape)
        return self._layout

    def write(self, start: int, values: np.ndarray) -> None:
        lay = self._lay()
        stop = start + len(values)
        if stop == start:
            return
        if stop > lay.capacity:
            msg = f"rows {start}..{stop} of {os.fspath(self.path)!r}: it has {lay.capacity} rows"
            raise IndexError(msg)
        data = np.ascontiguousarray(values, dtype=lay.store_dtype)
        if not lay.native or lay.tiled:
            arr = _open_zarr(self.path, read_only=False)  # its store fsyncs every key
            try:
                arr[start:stop] = data
            except Exception as err:
                msg = f"zarr could not write rows {start}.. of {os.fspath(self.path)!r}: {err}"
                raise OSError(errno.EIO, msg) from err
            return
        unit = lay.unit_rows
        if start % unit:
            msg = f"a region of {os.fspath(self.path)!r} starts at row {start}, inside a chunk"
            raise ValueError(msg)
        pos = start
        while pos < stop:
            u = pos // unit
            end = min(stop, (u + 1) * unit)
            if end - pos < unit and end not in (self.end, lay.capacity):
                msg = f"a region of {os.fspath(self.path)!r} ends at row {end}, inside a chunk"
                raise ValueError(msg)
            self._write_unit(lay, u, data[pos - start : end - start])
            pos = end

    def _write_unit(self, lay: _Layout, u: int, part: np.ndarray) -> None:
        path = lay.unit_path(u)
        if path.parent != lay.path:  # "/" chunk keys: c/<u>/0/0 directories
            with _disk_errors(path.parent):
                path.parent.mkdir(parents=True, exist_ok=True)
            d = path.parent
            while d != lay.path:
                self._dirs.add(d.parent)
                d = d.parent
        if lay.in_place:
            payload: bytes | memoryview = memoryview(part.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
            size = lay.chunk_rows * lay.row_nbytes  # zarr stores edge chunks whole
        else:
            block = part
            if len(part) < lay.unit_rows:
                block = np.zeros((lay.unit_rows, *lay.row_shape), dtype=lay.store_dtype)
                block[: len(part)] = part
            payload = _encode_unit(lay, block, len(part))
            size = len(payload)
        with _disk_errors(path):
            fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if size:
                preallocate(fd, 0, size, path)
            pwrite_all(fd, payload, 0, path)
        finally:
            os.close(fd)
        self._files.add(path)
        self._dirs.add(path.parent)

    def sync(self) -> None:
        files, self._files = self._files, set()
        dirs, self._dirs = self._dirs, set()
        for path in sorted(files):
            fd = open_nofollow(path, os.O_RDONLY)
            try:
                fsync_fd(fd, path)
            finally:
                os.close(fd)
        # Deepest first, so a new directory's own entries are durable before its name.
        for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            fsync_dir(d)


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


def _vanished_empty(path: Path, length: int) -> bool:
    """Is array ``path`` one with no committed rows whose metadata is gone?

    A writer replacing an array before its first rows were committed (a dense field turning
    padded) and killed between removing the old one and writing the new one's metadata
    leaves that. Nothing committed is lost, so it reads as empty and a writer recreates it.
    """
    return length == 0 and not (path / _ZARR_JSON).exists() and not path.is_symlink()


def _fills(manifest: Manifest) -> dict[str, Any]:
    """The padding value of every padded array (what its missing tiles read as)."""
    return {n: lay.fill for n, lay in manifest.layouts.items() if lay.kind == "padded"}


def _option_for(value: Any, name: str, what: str, *, allow_true: bool = False) -> Any:
    """The per-array value of a ``chunks``-like option (an int, or a dict by array name)."""
    if isinstance(value, dict):
        value = value.get(name)
    if value is None or (allow_true and isinstance(value, bool)):
        return value
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        msg = f"{what} must be a positive number of rows (or a dict of them), not {value!r}"
        raise ValueError(msg)
    return int(value)


def _open_layout(
    path: Path, dtype: np.dtype[Any], row_shape: tuple[int, ...], fill: Any = 0
) -> _Layout:
    """Read and check one array's zarr.json against the manifest's dtype and row shape.

    A padded field's trailing axes may have grown since the last commit: the layout then
    shows the manifest's (smaller) row shape, the part of each row that commit declared.
    """
    meta = path / _ZARR_JSON
    where = os.fspath(meta)
    if path.is_symlink():
        raise CorruptStoreError(os.fspath(path), "array directory is a symlink")
    doc = _load_json(_read_bounded(meta, _MAX_ARRAY_META, "array metadata"), where, "metadata")
    try:
        layout = _Layout.parse(path, doc, dtype, where)
    except CorruptStoreError:
        raise
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
        problem = f"malformed array metadata ({type(err).__name__}: {err})"
        raise CorruptStoreError(where, problem[:300]) from None
    row_shape = tuple(row_shape)
    ahead = len(layout.row_shape) == len(row_shape) and all(
        a >= b for a, b in zip(layout.row_shape, row_shape, strict=True)
    )
    if not ahead:
        raise CorruptStoreError(
            where,
            f"array rows have shape {layout.row_shape} but the manifest says {row_shape}",
        )
    layout.row_shape = row_shape
    layout.fill = fill
    try:
        expected = _data_type_json(dtype.str)
    except UnsupportedDtypeError:
        raise CorruptStoreError(where, f"the manifest names dtype {dtype}") from None
    if json.dumps(doc.get("data_type"), sort_keys=True) != expected:
        raise CorruptStoreError(
            where,
            f"array data_type is {doc.get('data_type')!r:.80} but the manifest says {dtype}",
        )
    return layout
