"""Normalise one batch (an array, a tuple/list of arrays, or a dict of arrays) to named fields.

The rule that keeps batches unambiguous: the *top level* of a batch says how many fields there
are (an array is one field, a tuple or list holds one entry per field, a dict maps names to
fields); below that, a field's value is either one array whose axis 0 is the sample axis, or a
Python list holding one entry per sample (which may differ in shape: ragged samples).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .coerce import as_array, is_array_like
from .errors import BatchError

__all__ = ["Batch", "FieldValue", "split_batch"]

FieldValue = np.ndarray | list[np.ndarray]
"""One field of a batch: an array with the sample axis first, or a list of per-sample arrays."""


@dataclass(frozen=True)
class Batch:
    """One batch as named fields, each either a stacked array or a list of ragged samples."""

    fields: dict[str, FieldValue]
    """Field name -> values, in the order the fields were given."""
    size: int
    """Number of samples in the batch (equal for every field)."""


def _names_for(count: int, names: Sequence[str] | None, kind: str, batch_index: int) -> list[str]:
    if names is None:
        return [str(i) for i in range(count)]
    if len(names) != count:
        what = f"the {kind} has {count} field(s) but names= gives {len(names)}"
        raise BatchError(
            what,
            batch_index=batch_index,
            expected=list(names),
            actual=f"{count} value(s)",
        )
    return [str(n) for n in names]


def _field_value(value: Any, batched: bool) -> FieldValue:
    if not batched:
        arr = as_array(value)
        return arr.reshape((1, *arr.shape))
    if isinstance(value, list | tuple) and not is_array_like(value):
        samples = [as_array(v) for v in value]
        if samples and all(s.shape == samples[0].shape for s in samples[1:]):
            return np.stack(samples)
        return samples
    return as_array(value)


def _size(value: FieldValue) -> int | None:
    if isinstance(value, list):
        return len(value)
    if value.ndim == 0:
        return None
    return int(value.shape[0])


def split_batch(
    batch: Any, *, names: Sequence[str] | None, batched: bool, batch_index: int
) -> Batch:
    """Split ``batch`` into named fields and check that every field has the same sample count.

    Raises
    ------
    BatchError
        If fields differ in sample count, a batched field has no sample axis, or ``names``
        does not fit the batch.
    """
    if isinstance(batch, Mapping):
        keys = [str(k) for k in batch]
        # names= only orders a dict's fields; missing or extra keys are the schema's to report.
        same_keys = names is not None and sorted(map(str, names)) == sorted(keys)
        order = [str(n) for n in names] if same_keys and names is not None else keys
        by_key = {str(k): v for k, v in batch.items()}
        raw = {k: by_key[k] for k in order}
    elif isinstance(batch, tuple | list) and not is_array_like(batch):
        given = names
        if given is None and hasattr(batch, "_fields"):  # a namedtuple names its fields
            given = list(batch._fields)
        raw = dict(zip(_names_for(len(batch), given, "batch", batch_index), batch, strict=True))
    else:
        raw = dict(zip(_names_for(1, names, "batch", batch_index), [batch], strict=True))
    if not raw:
        raise BatchError("the batch has no fields", batch_index=batch_index)

    fields: dict[str, FieldValue] = {}
    sizes: dict[str, int] = {}
    for name, value in raw.items():
        fv = _field_value(value, batched)
        size = _size(fv)
        if size is None:
            raise BatchError(
                "a batched field needs a sample axis (axis 0), but this value is a scalar",
                field=name,
                batch_index=batch_index,
                hint="pass batched=False if each item of the source is one sample",
            )
        fields[name] = fv
        sizes[name] = size
    if len(set(sizes.values())) > 1:
        raise BatchError(
            "fields hold different numbers of samples",
            batch_index=batch_index,
            expected="the same length on axis 0 for every field",
            actual=sizes,
        )
    return Batch(fields=fields, size=next(iter(sizes.values())))
