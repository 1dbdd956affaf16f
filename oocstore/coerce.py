"""Turn tensors, PIL images, scalars and lists into NumPy arrays, copying as little as possible.

Frameworks are recognised by the module of the value's type, so none of them is imported here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import UnsupportedDtypeError

__all__ = ["as_array", "is_array_like"]


def _module_root(value: Any) -> str:
    return type(value).__module__.split(".", 1)[0]


def _torch_to_numpy(t: Any) -> np.ndarray:
    t = t.detach()
    if t.device.type != "cpu":
        # One device-to-host copy; .cpu() synchronises only the stream that produced t.
        t = t.cpu()
    if t.is_conj():
        t = t.resolve_conj()
    try:
        return np.asarray(t.numpy())
    except TypeError as err:  # bfloat16 and other types NumPy has no dtype for
        msg = (
            f"cannot store a torch tensor of dtype {t.dtype}: NumPy has no such dtype; "
            "convert it first, e.g. tensor.float()"
        )
        raise UnsupportedDtypeError(msg) from err


def is_array_like(value: Any) -> bool:
    """Tell whether ``value`` is one array (as opposed to a container of fields or samples)."""
    if isinstance(value, np.ndarray | np.generic):
        return True
    root = _module_root(value)
    if root in {"torch", "tensorflow", "jax", "jaxlib", "PIL", "cupy"}:
        return True
    return hasattr(value, "__array__") and not isinstance(value, list | tuple | dict)


def as_array(value: Any) -> np.ndarray:
    """Return ``value`` as a NumPy array without copying where the source allows it.

    Raises
    ------
    UnsupportedDtypeError
        If the result would be an object array (mixed or unconvertible values).
    """
    if isinstance(value, np.ndarray):
        arr = value
    else:
        root = _module_root(value)
        if root == "torch":
            arr = _torch_to_numpy(value)
        elif root == "tensorflow":
            arr = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
        elif root == "cupy":
            arr = np.asarray(value.get())
        else:
            # jax arrays, PIL images, NumPy scalars, Python scalars and lists all take this path.
            arr = np.asarray(value)
    if arr.dtype.hasobject:
        msg = (
            f"cannot store a value of type {type(value).__name__} that converts to an object "
            "array (mixed types, None, or nested sequences of different lengths); "
            "convert it to a numeric or string array first"
        )
        raise UnsupportedDtypeError(
            msg, expected="a numeric, bool, string or datetime dtype", actual="object"
        )
    return arr
