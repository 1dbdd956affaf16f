"""The schema: each field's per-sample shape and dtype, taken from batch 0 and checked after.

Dtypes are kept exactly; a later batch is cast only when NumPy calls the cast safe (or the
casting the user chose allows it), and never so that NaN or out-of-range values become integers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .batches import Batch, FieldValue
from .errors import DtypeError, FieldNameError, RaggedError, SchemaError, UnsupportedDtypeError

__all__ = [
    "FIELD_NAME_PATTERN",
    "Casting",
    "FieldSpec",
    "Schema",
    "check_dtype",
    "dtype_from_json",
    "dtype_to_json",
    "validate_field_name",
]

Casting = Literal["no", "equiv", "safe", "same_kind", "unsafe"]

FIELD_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,99}")
"""Field names become file names: letters, digits, ``_`` and ``-`` only, at most 100 long."""

MAX_NDIM = 32  # NumPy's own limit (NPY_MAXDIMS was 32 before 2.0, 64 after).


def validate_field_name(name: str) -> str:
    """Return ``name`` if it is a safe field name, else raise :class:`FieldNameError`."""
    if not isinstance(name, str) or FIELD_NAME_PATTERN.fullmatch(name) is None:
        msg = (
            f"field name {name!r} is not allowed: a field becomes a file in the store, so its "
            "name must be 1-100 letters, digits, '_' or '-' (no '/', '.', '..' or spaces), "
            "starting with a letter, digit or '_'; rename it, e.g. with names=(...)"
        )
        raise FieldNameError(msg)
    return name


def check_dtype(dtype: np.dtype[Any], *, field: str | None = None) -> np.dtype[Any]:
    """Refuse dtypes oocstore cannot store safely (objects, void without fields)."""
    if dtype.hasobject:
        raise UnsupportedDtypeError(
            "object arrays cannot be stored (they hold Python objects, not data)",
            field=field,
            expected="a numeric, bool, string, datetime or structured dtype",
            actual=str(dtype),
        )
    if dtype.kind == "V" and dtype.fields is None and dtype.subdtype is None:
        raise UnsupportedDtypeError(
            "raw void dtypes cannot be stored", field=field, actual=str(dtype)
        )
    if dtype.subdtype is not None:
        raise UnsupportedDtypeError(
            "sub-array dtypes cannot be stored; give the extra axes as part of the shape",
            field=field,
            actual=str(dtype),
        )
    return dtype


def dtype_to_json(dtype: np.dtype[Any]) -> Any:
    """The ``.npy`` description of ``dtype`` (a string, or a list for structured dtypes)."""
    return np.lib.format.dtype_to_descr(dtype)


def _as_descr(obj: Any, depth: int = 0) -> Any:
    # JSON gives lists where the .npy descr has tuples; rebuild them, bounded in depth.
    if depth > 8:
        msg = "dtype description nested too deeply"
        raise ValueError(msg)
    if isinstance(obj, str):
        return obj
    if isinstance(obj, list):
        out = []
        for item in obj:
            if not isinstance(item, list) or len(item) not in (2, 3):
                msg = f"bad structured dtype entry {item!r}"
                raise ValueError(msg)
            name, sub = item[0], item[1]
            if not isinstance(name, str):
                msg = f"bad structured dtype field name {name!r}"
                raise ValueError(msg)
            entry: tuple[Any, ...] = (name, _as_descr(sub, depth + 1))
            if len(item) == 3:
                shape = item[2]
                if not isinstance(shape, list) or not all(
                    type(d) is int and 0 <= d < 2**31 for d in shape
                ):
                    msg = f"bad sub-array shape {shape!r}"
                    raise ValueError(msg)
                entry = (*entry, tuple(shape))
            out.append(entry)
        return out
    msg = f"dtype description must be a string or list, not {type(obj).__name__}"
    raise ValueError(msg)


def dtype_from_json(obj: Any) -> np.dtype[Any]:
    """Parse a dtype written by :func:`dtype_to_json`; raise ``ValueError`` if it is not one."""
    try:
        dtype = np.lib.format.descr_to_dtype(_as_descr(obj))
    except (TypeError, ValueError, KeyError, IndexError, OverflowError) as err:
        msg = f"not a valid dtype description: {obj!r:.200}"
        raise ValueError(msg) from err
    if dtype.hasobject:
        msg = "object dtypes are never loaded (they would need pickle)"
        raise ValueError(msg)
    if dtype.itemsize == 0 and dtype.kind not in "SUV":
        msg = f"dtype {dtype} has no size"
        raise ValueError(msg)
    return dtype


@dataclass(frozen=True)
class FieldSpec:
    """One field: its name, per-sample shape and dtype."""

    name: str
    """The field's name (a safe file name)."""
    shape: tuple[int, ...]
    """Per-sample shape; for a ragged field, the largest shape seen (the padded shape)."""
    dtype: np.dtype[Any]
    """The exact dtype, byte order included."""
    ragged: bool = False
    """True when samples' trailing shapes differ."""

    @property
    def ndim(self) -> int:
        """Number of per-sample axes."""
        return len(self.shape)

    @property
    def sample_nbytes(self) -> int:
        """Bytes of one (padded) sample."""
        return math.prod(self.shape) * self.dtype.itemsize  # Python ints: no overflow

    def to_json(self) -> dict[str, Any]:
        """This spec as JSON-ready data."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": dtype_to_json(self.dtype),
            "ragged": self.ragged,
        }

    @classmethod
    def from_json(cls, obj: Any) -> FieldSpec:
        """Parse and validate a spec written by ``to_json()``; ``ValueError`` if bad."""
        if not isinstance(obj, dict):
            msg = "a field entry must be an object"
            raise ValueError(msg)
        name = obj.get("name")
        try:
            validate_field_name(name)  # type: ignore[arg-type]
        except FieldNameError as err:
            raise ValueError(str(err)) from None
        shape = obj.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_NDIM
            or not all(type(d) is int and 0 <= d < 2**48 for d in shape)
        ):
            msg = (
                f"field {name!r}: shape must be a list of non-negative integers, got {shape!r:.100}"
            )
            raise ValueError(msg)
        dtype = dtype_from_json(obj.get("dtype"))
        ragged = obj.get("ragged", False)
        if not isinstance(ragged, bool):
            msg = f"field {name!r}: 'ragged' must be true or false"
            raise ValueError(msg)
        spec = cls(name=name, shape=tuple(shape), dtype=dtype, ragged=ragged)  # type: ignore[arg-type]
        if spec.sample_nbytes > 2**48:
            msg = f"field {name!r}: one sample of shape {tuple(shape)} would be absurdly large"
            raise ValueError(msg)
        return spec


def _value_dtype_shape(value: FieldValue) -> tuple[np.dtype[Any], list[tuple[int, ...]]]:
    if isinstance(value, list):
        dtypes = {v.dtype for v in value}
        dtype = np.result_type(*dtypes) if dtypes else np.dtype("float64")
        return dtype, [v.shape for v in value]
    return value.dtype, [value.shape[1:]]


def _cast_range_ok(values: np.ndarray, target: np.dtype[Any]) -> bool:
    """True when every value fits ``target`` (integer targets only: finite and in range)."""
    if target.kind not in "iub" or values.size == 0:
        return True
    if values.dtype.kind in "fc":
        v = values.real if values.dtype.kind == "c" else values
        if not np.isfinite(v).all():
            return False
        if target.kind == "b":
            return True
        info = np.iinfo(target)
        return bool(v.min() >= info.min and v.max() <= info.max)
    if values.dtype.kind in "iu" and target.kind in "iu":
        info = np.iinfo(target)
        return bool(values.min() >= info.min and values.max() <= info.max)
    return True


def conform_dtype(
    values: np.ndarray,
    expected: np.dtype[Any],
    *,
    casting: Casting,
    field: str,
    batch_index: int,
) -> np.ndarray:
    """Return ``values`` in dtype ``expected``, cast only as far as ``casting`` allows."""
    actual = values.dtype
    if actual == expected:
        return values
    check_dtype(actual, field=field)
    # A change of byte order only is always exact: normalise it.
    if actual.newbyteorder("=") == expected.newbyteorder("=") or np.can_cast(
        actual, expected, casting
    ):
        if not _cast_range_ok(values, expected):
            raise DtypeError(
                "values would not survive the cast (NaN, infinite or out of range)",
                field=field,
                batch_index=batch_index,
                expected=str(expected),
                actual=str(actual),
            )
        return values.astype(expected)
    what = f"dtype changed and the cast is not {casting!r}"
    raise DtypeError(
        what,
        field=field,
        batch_index=batch_index,
        expected=str(expected),
        actual=str(actual),
        hint=_lossless_hint(actual, expected, casting),
    )


def _lossless_hint(actual: np.dtype[Any], expected: np.dtype[Any], casting: Casting) -> str:
    """What to do about a refused cast, naming only ways that keep every value.

    A weaker ``casting=`` is suggested only when NumPy calls the cast safe (the user chose
    ``"no"`` or ``"equiv"``); narrowing strings, float to int or wide to narrow ints would
    truncate or round values, so the fix offered is a wider dtype from the first batch.
    """
    if casting in ("no", "equiv") and np.can_cast(actual, expected, "safe"):
        return f"{actual} -> {expected} keeps every value: pass casting='safe' to allow it"
    if actual.kind in "US" and expected.kind == actual.kind:
        width = actual.itemsize // (4 if actual.kind == "U" else 1)
        return (
            f"A later batch holds strings up to {width} characters, but the field's width "
            f"({expected}) came from the first batch. Give the first batch the width of the "
            f"longest value the data can hold (e.g. np.asarray(first, dtype='{actual.kind}"
            f"{width}') or wider), so no string is cut"
        )
    common = np.promote_types(expected, actual) if _promotable(expected, actual) else None
    exact = (
        common is not None
        and np.can_cast(expected, common, "safe")
        and np.can_cast(actual, common, "safe")
        and not (common.kind in "fc" and expected.kind in "iu" and actual.kind in "iu")
    )
    if exact:
        return (
            f"The field's dtype came from the first batch; give the first batch a dtype that "
            f"holds both (np.asarray(first, dtype='{common}')), so no value is cut or rounded"
        )
    return (
        f"The field's dtype came from the first batch; give it one that holds every value of "
        f"both {expected} and {actual}, so no value is cut or rounded"
    )


def _promotable(a: np.dtype[Any], b: np.dtype[Any]) -> bool:
    try:
        np.promote_types(a, b)
    except TypeError:
        return False
    return True


@dataclass(frozen=True)
class Schema(Mapping[str, FieldSpec]):
    """The fields of a store, in order; a read-only mapping from name to a ``FieldSpec``."""

    fields: tuple[FieldSpec, ...]
    """The field specs in order."""
    _by_name: dict[str, FieldSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {f.name: f for f in self.fields}
        if len(by_name) != len(self.fields):
            msg = f"duplicate field names in {[f.name for f in self.fields]}"
            raise SchemaError(msg)
        object.__setattr__(self, "_by_name", by_name)

    def __getitem__(self, name: str) -> FieldSpec:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self.fields)

    @property
    def names(self) -> tuple[str, ...]:
        """The field names in order."""
        return tuple(f.name for f in self.fields)

    @property
    def sample_nbytes(self) -> int:
        """Bytes of one (padded) sample over all fields."""
        return sum(f.sample_nbytes for f in self.fields)

    def replace(self, spec: FieldSpec) -> Schema:
        """A copy with the field of the same name replaced by ``spec``."""
        return Schema(tuple(spec if f.name == spec.name else f for f in self.fields))

    @classmethod
    def infer(cls, batch: Batch, *, batch_index: int = 0) -> Schema:
        """Build the schema from the first batch: each field's dtype and per-sample shape."""
        specs = []
        for name, value in batch.fields.items():
            validate_field_name(name)
            dtype, shapes = _value_dtype_shape(value)
            check_dtype(dtype, field=name)
            ndims = {len(s) for s in shapes}
            if len(ndims) > 1:
                raise RaggedError(
                    "samples differ in their number of axes",
                    field=name,
                    batch_index=batch_index,
                    expected=f"{len(shapes[0])} axes like {shapes[0]}",
                    actual=sorted(ndims),
                )
            ragged = len(set(shapes)) > 1
            shape = (
                tuple(int(d) for d in np.max(np.array(shapes, dtype=np.int64), axis=0))
                if shapes and shapes[0]
                else tuple(shapes[0])
                if shapes
                else ()
            )
            specs.append(FieldSpec(name=name, shape=shape, dtype=dtype, ragged=ragged))
        return cls(tuple(specs))

    def to_json(self) -> list[dict[str, Any]]:
        """The schema as JSON-ready data."""
        return [f.to_json() for f in self.fields]

    @classmethod
    def from_json(cls, obj: Any) -> Schema:
        """Parse and validate a schema written by ``to_json()``; ``ValueError`` if bad."""
        if not isinstance(obj, list) or not obj or len(obj) > 10_000:
            msg = "'fields' must be a non-empty list"
            raise ValueError(msg)
        specs = tuple(FieldSpec.from_json(o) for o in obj)
        if len({s.name for s in specs}) != len(specs):
            msg = "duplicate field names"
            raise ValueError(msg)
        return cls(specs)

    def check(
        self, batch: Batch, *, batch_index: int, casting: Casting = "safe"
    ) -> dict[str, FieldValue]:
        """Check ``batch`` against this schema and return its fields in the schema's dtypes.

        Trailing shapes are not compared here: whether a different shape is an error or a
        ragged sample is the writer's ragged policy. The number of axes must match.

        Raises
        ------
        BatchError
            If fields are missing or unexpected.
        DtypeError
            If a dtype differs and the cast is not allowed or would lose values.
        RaggedError
            If a sample has a different number of axes than the schema says.
        """
        if set(batch.fields) != set(self._by_name):
            missing = sorted(set(self._by_name) - set(batch.fields))
            extra = sorted(set(batch.fields) - set(self._by_name))
            from .errors import BatchError

            raise BatchError(
                "the batch's fields differ from the first batch's",
                batch_index=batch_index,
                expected=list(self.names),
                actual=list(batch.fields),
                hint=f"missing {missing}, unexpected {extra}",
            )
        out: dict[str, FieldValue] = {}
        for spec in self.fields:
            value = batch.fields[spec.name]
            samples = value if isinstance(value, list) else [value[0:0]]
            for s in samples:
                nd = s.ndim if isinstance(value, list) else s.ndim - 1
                if nd != spec.ndim:
                    raise RaggedError(
                        "a sample has a different number of axes (a missing or extra axis "
                        "is never broadcast)",
                        field=spec.name,
                        batch_index=batch_index,
                        expected=f"{spec.ndim} axes like {spec.shape}",
                        actual=f"{nd} axes, shape {s.shape[0 if isinstance(value, list) else 1 :]}",
                    )
            if isinstance(value, list):
                out[spec.name] = [
                    conform_dtype(
                        v, spec.dtype, casting=casting, field=spec.name, batch_index=batch_index
                    )
                    for v in value
                ]
            else:
                out[spec.name] = conform_dtype(
                    value, spec.dtype, casting=casting, field=spec.name, batch_index=batch_index
                )
        return out
