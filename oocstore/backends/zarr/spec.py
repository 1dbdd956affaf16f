"""What a Zarr v3 store's metadata says, in the terms oocstore reads and writes: the
constants, chunk and shard sizing, ``zarr.json`` documents and the layout of an array."""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import json
import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CorruptStoreError, DiskFullError, UnsupportedDtypeError
from ...manifest import MAX_DEPTH, MAX_MANIFEST_BYTES, Manifest
from ...manifest import _json_depth as json_depth
from ...sizing import available_memory
from .._files import read_bounded
from ..base import BackendOptions
from .codecs import _Codec, _parse_codecs

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

Images and float rows barely compress, and reading pays: an uncompressed sample is one
``pread``, a compressed one decodes its whole chunk (docs/benchmarks.md, "Figures behind
design choices"). Data that does compress (masks, sparse or quantised arrays) should pass
``compressors="auto"`` (zarr's default, zstd) or any Zarr v3 codec."""
SHARD_BYTES = 128 * 2**20
"""Target uncompressed bytes per shard when sharding is asked for without a size."""
_ZARR_JSON = "zarr.json"
_MAX_ARRAY_META = 2**20  # an array's zarr.json is a few hundred bytes
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
    # per array. With "/" (c/0/0/0) every chunk adds nested directories to create and fsync.
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


GROUP_META_LIMIT = MAX_MANIFEST_BYTES + 2**20
"""The largest group ``zarr.json`` read: the manifest and the JSON around it."""


def group_bytes(manifest: Manifest) -> bytes:
    """The group's ``zarr.json`` that commits ``manifest`` (in its ``oocstore`` attribute)."""
    doc = {"zarr_format": 3, "node_type": "group", "attributes": {ATTRIBUTE: manifest.to_json()}}
    return _dumps(doc)


def manifest_from_group(data: bytes, where: str) -> Manifest:
    """The oocstore manifest in a group's ``zarr.json`` bytes; CorruptStoreError naming
    ``where`` if the document is not a Zarr v3 group carrying one for this backend."""
    doc = _load_json(data, where, "group metadata")
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
    if manifest.backend != "zarr":
        raise CorruptStoreError(
            where, f"manifest says backend {manifest.backend!r}, files are zarr"
        )
    return manifest


def _fills(manifest: Manifest) -> dict[str, Any]:
    """The padding value of every padded array (what its missing tiles read as)."""
    return {n: lay.fill for n, lay in manifest.layouts.items() if lay.kind == "padded"}


@dataclass(frozen=True)
class ZarrOptions(BackendOptions):
    """Write options of the Zarr backends: ``chunks`` (rows per chunk, for all arrays or per
    array name), ``compressors`` (passed to zarr-python: a codec, a list, ``"auto"`` for
    zarr's default zstd; None here means uncompressed, see :data:`DEFAULT_COMPRESSORS`)."""

    shards: Mapping[str, int | bool] | int | bool | None = None
    """Rows per shard, True for about :data:`SHARD_BYTES`, per array name as a mapping."""

    def compressor_codecs(self) -> Any:
        """The compressors zarr.json declares (None: uncompressed)."""
        given = self.compressors
        return DEFAULT_COMPRESSORS if given is None else (given or None)

    def shards_for(self, name: str) -> Any:
        """The ``shards`` option for array ``name``: rows per shard, True, or None/False."""
        return _option_for(self.shards, name, "shards", allow_true=True)

    def chunking(self, name: str, row_nbytes: int, capacity: int) -> tuple[int, int | None]:
        """``(rows per chunk, rows per shard or None)`` of a new array ``name``."""
        compressed = self.compressor_codecs() is not None
        rows = _option_for(self.chunks, name, "chunks")
        chunk = rows if rows is not None else chunk_rows_for(row_nbytes, compressed=compressed)
        if rows is None and capacity > 0 and self.length is not None:
            chunk = min(chunk, capacity)  # a short array of known length: no oversized chunk
        shards = self.shards_for(name)
        if shards is None or shards is False:
            return chunk, None
        if shards is True:
            return chunk, shard_rows_for(chunk, row_nbytes)
        return chunk, -(-int(shards) // chunk) * chunk  # a whole number of chunks


def _option_for(value: Any, name: str, what: str, *, allow_true: bool = False) -> Any:
    """The per-array value of a ``chunks``-like option (an int, or a dict by array name)."""
    if isinstance(value, Mapping):
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
    doc = _load_json(read_bounded(meta, _MAX_ARRAY_META, "array metadata"), where, "metadata")
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
