"""The versioned manifest: the one record of a store's schema and committed length.

The manifest names physical arrays (a field's data, and for ragged fields its shapes or
offsets) with the number of rows of each that are committed. Readers never look past it.
Parsing never trusts the document: size, nesting, every number and name are checked.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .errors import CorruptStoreError
from .schema import MAX_NDIM, FieldSpec, Schema, dtype_from_json, dtype_to_json

__all__ = ["FORMAT", "MAX_MANIFEST_BYTES", "VERSION", "ArraySpec", "FieldLayout", "Manifest"]

FORMAT = "oocstore"
VERSION = 1
MAX_MANIFEST_BYTES = 16 * 2**20
MAX_DEPTH = 32
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")
LayoutKind = Literal["dense", "padded", "packed"]
_ARRAY_SUFFIXES = ("", ".shapes", ".values", ".offsets")


@dataclass(frozen=True)
class ArraySpec:
    """One physical array on disk: dtype, per-row shape and committed rows."""

    dtype: np.dtype[Any]
    """Exact dtype of the array."""
    shape: tuple[int, ...]
    """Per-row shape (rows are axis 0)."""
    length: int
    """Committed rows."""

    @property
    def row_nbytes(self) -> int:
        """Bytes of one row."""
        return math.prod(self.shape) * self.dtype.itemsize  # Python ints: no overflow

    def to_json(self) -> dict[str, Any]:
        """This spec as JSON-ready data."""
        return {
            "dtype": dtype_to_json(self.dtype),
            "shape": list(self.shape),
            "length": self.length,
        }


@dataclass(frozen=True)
class FieldLayout:
    """How a field is laid out: dense, padded (with true shapes) or packed (values + offsets)."""

    kind: LayoutKind = "dense"
    """``dense``: one array; ``padded``: array padded to the max shape plus ``.shapes``;
    ``packed``: flat ``.values`` plus ``.offsets`` and ``.shapes``."""
    fill: Any = 0
    """The value padding is written with (padded layouts)."""

    def arrays(self, name: str) -> tuple[str, ...]:
        """Names of the physical arrays that hold field ``name``."""
        if self.kind == "dense":
            return (name,)
        if self.kind == "padded":
            return (name, f"{name}.shapes")
        return (f"{name}.values", f"{name}.offsets", f"{name}.shapes")


@dataclass
class Manifest:
    """A store's metadata document: backend, schema, committed length and physical arrays."""

    backend: str
    """Backend name (``npy``, ``zarr``, ``hdf5``)."""
    schema: Schema
    """The logical fields."""
    length: int = 0
    """Committed samples."""
    complete: bool = False
    """True once the writer closed the store normally."""
    layouts: dict[str, FieldLayout] = field(default_factory=dict)
    """Per field, how it is laid out (absent means dense)."""
    arrays: dict[str, ArraySpec] = field(default_factory=dict)
    """Physical arrays by name, with their committed rows."""
    attrs: dict[str, Any] = field(default_factory=dict)
    """User metadata (JSON values), e.g. class names of an image folder."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Backend- or feature-specific entries (checksums, chunking), kept as given."""

    def layout(self, name: str) -> FieldLayout:
        """The layout of field ``name`` (dense unless said otherwise)."""
        return self.layouts.get(name, FieldLayout())

    def to_json(self) -> dict[str, Any]:
        """The manifest as JSON-ready data."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "backend": self.backend,
            "length": self.length,
            "complete": self.complete,
            "fields": self.schema.to_json(),
            "layouts": {
                k: {"kind": v.kind, "fill": _fill_to_json(v.fill)}
                for k, v in self.layouts.items()
                if v.kind != "dense"
            },
            "arrays": {k: v.to_json() for k, v in self.arrays.items()},
            "attrs": self.attrs,
            **({"extra": self.extra} if self.extra else {}),
        }

    def dumps(self) -> bytes:
        """The manifest as UTF-8 JSON."""
        return json.dumps(self.to_json(), indent=1, allow_nan=False).encode()

    @classmethod
    def loads(cls, data: bytes | str, path: str) -> Manifest:
        """Parse and validate a manifest; every problem is a CorruptStoreError naming ``path``."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise CorruptStoreError(path, f"manifest is {len(data):,} bytes, more than allowed")
        text = data.decode("utf8", errors="strict") if isinstance(data, bytes) else data
        depth = _json_depth(text)
        if depth > MAX_DEPTH:
            raise CorruptStoreError(
                path, f"manifest JSON nested {depth} deep (at most {MAX_DEPTH})"
            )
        try:
            doc = json.loads(text, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as err:
            raise CorruptStoreError(path, f"manifest is not valid JSON ({err})") from None
        return cls.from_json(doc, path)

    @classmethod
    def from_json(cls, doc: Any, path: str) -> Manifest:
        """Validate a parsed manifest document."""
        try:
            return cls._from_json(doc)
        except (ValueError, TypeError, KeyError, OverflowError) as err:
            raise CorruptStoreError(path, str(err)) from None

    @classmethod
    def _from_json(cls, doc: Any) -> Manifest:
        if not isinstance(doc, dict):
            msg = "manifest must be a JSON object"
            raise ValueError(msg)
        if doc.get("format") != FORMAT:
            msg = f"not an oocstore manifest (format={doc.get('format')!r:.40})"
            raise ValueError(msg)
        version = doc.get("version")
        if type(version) is not int or version < 1:
            msg = f"bad manifest version {version!r:.40}"
            raise ValueError(msg)
        if version > VERSION:
            msg = (
                f"manifest version {version} is newer than this oocstore understands "
                f"({VERSION}); upgrade oocstore"
            )
            raise ValueError(msg)
        backend = doc.get("backend")
        if backend not in ("npy", "zarr", "hdf5"):
            msg = f"unknown backend {backend!r:.40}"
            raise ValueError(msg)
        length = _count(doc.get("length"), "length")
        complete = doc.get("complete")
        if not isinstance(complete, bool):
            msg = "'complete' must be true or false"
            raise ValueError(msg)
        schema = Schema.from_json(doc.get("fields"))
        raw_layouts = doc.get("layouts", {})
        if not isinstance(raw_layouts, dict):
            msg = "'layouts' must be an object"
            raise ValueError(msg)
        layouts: dict[str, FieldLayout] = {}
        for name, lay in raw_layouts.items():
            if name not in schema:
                msg = f"layout for unknown field {name!r:.100}"
                raise ValueError(msg)
            if not isinstance(lay, dict) or lay.get("kind") not in ("dense", "padded", "packed"):
                msg = f"field {name!r}: bad layout {lay!r:.100}"
                raise ValueError(msg)
            fill = lay.get("fill", 0)
            if not isinstance(fill, int | float | bool | str) or (
                isinstance(fill, float) and (not math.isfinite(fill))
            ):
                fill = _fill_from_json(fill)
            layouts[name] = FieldLayout(kind=lay["kind"], fill=fill)
        raw_arrays = doc.get("arrays")
        if not isinstance(raw_arrays, dict):
            msg = "'arrays' must be an object"
            raise ValueError(msg)
        arrays: dict[str, ArraySpec] = {}
        for spec in schema.fields:
            lay = layouts.get(spec.name, FieldLayout())
            for aname in lay.arrays(spec.name):
                a = raw_arrays.get(aname)
                if not isinstance(a, dict):
                    msg = f"array {aname!r} of field {spec.name!r} is missing"
                    raise ValueError(msg)
                shape = a.get("shape")
                if (
                    not isinstance(shape, list)
                    or len(shape) > MAX_NDIM
                    or not all(type(d) is int and 0 <= d < 2**48 for d in shape)
                ):
                    msg = f"array {aname!r}: bad shape {shape!r:.100}"
                    raise ValueError(msg)
                arrays[aname] = ArraySpec(
                    dtype=dtype_from_json(a.get("dtype")),
                    shape=tuple(shape),
                    length=_count(a.get("length"), f"length of {aname!r}"),
                )
            _check_field_arrays(spec, lay, arrays, length)
        if len(raw_arrays) != len(arrays):
            unknown = sorted(set(raw_arrays) - set(arrays))[:5]
            msg = f"manifest names arrays that belong to no field: {unknown}"
            raise ValueError(msg)
        attrs = doc.get("attrs", {})
        if not isinstance(attrs, dict):
            msg = "'attrs' must be an object"
            raise ValueError(msg)
        extra = doc.get("extra", {})
        if not isinstance(extra, dict):
            msg = "'extra' must be an object"
            raise ValueError(msg)
        return cls(
            backend=backend,
            schema=schema,
            length=length,
            complete=complete,
            layouts=layouts,
            arrays=arrays,
            attrs=attrs,
            extra=extra,
        )


def _check_field_arrays(
    spec: FieldSpec, lay: FieldLayout, arrays: dict[str, ArraySpec], length: int
) -> None:
    """The field's physical arrays agree with it: rows, dtype and per-row shape."""
    name = spec.name
    if lay.kind in ("dense", "padded") and arrays[name].length != length:
        msg = f"array {name!r} has {arrays[name].length} rows but the store {length}"
        raise ValueError(msg)
    data = arrays[name] if lay.kind != "packed" else arrays[f"{name}.values"]
    row = spec.shape if lay.kind != "packed" else ()
    if data.dtype != spec.dtype or data.shape != row:
        msg = (
            f"field {name!r} is {spec.dtype}{list(spec.shape)} but its array holds rows of "
            f"{data.dtype}{list(data.shape)}"
        )
        raise ValueError(msg)
    if lay.kind in ("padded", "packed"):
        shapes = arrays[f"{name}.shapes"]
        if (
            shapes.length != length
            or shapes.dtype.kind not in "iu"
            or shapes.shape != (len(spec.shape),)
        ):
            msg = f"array {name + '.shapes'!r} must be {length} rows of {len(spec.shape)} integers"
            raise ValueError(msg)
    if lay.kind == "packed":
        offsets = arrays[f"{name}.offsets"]
        if offsets.length != length or offsets.dtype.kind not in "iu" or offsets.shape != ():
            msg = f"array {name + '.offsets'!r} must be {length} integers"
            raise ValueError(msg)
        if arrays[f"{name}.values"].shape != ():
            msg = f"array {name + '.values'!r} must be flat"
            raise ValueError(msg)


def _count(value: Any, what: str) -> int:
    if type(value) is not int or value < 0 or value >= 2**53:
        msg = f"{what} must be a non-negative integer, got {value!r:.40}"
        raise ValueError(msg)
    return value


def _refuse_constant(name: str) -> Any:
    msg = f"manifest holds {name}, which is not JSON"
    raise ValueError(msg)


def _fill_to_json(fill: Any) -> Any:
    if isinstance(fill, float) and not math.isfinite(fill):
        return {"float": repr(fill)}
    if isinstance(fill, np.generic):
        return fill.item()
    return fill


def _fill_from_json(obj: Any) -> Any:
    if isinstance(obj, dict) and obj.get("float") in ("nan", "inf", "-inf"):
        return float(obj["float"])
    msg = f"bad fill value {obj!r:.40}"
    raise ValueError(msg)


def _json_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` outside strings, without recursing.

    Strings are cut out by one regex and only the brackets are walked, so the scan costs
    little even for a manifest with many checksum spans (it runs at every open and refresh).
    """
    depth = deepest = 0
    for ch in _BRACKETS.findall(_STRINGS.sub("", text)):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest
