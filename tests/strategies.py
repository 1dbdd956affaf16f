"""Hypothesis strategies for dtypes, per-sample shapes, batches and ragged samples.

They shrink toward small cases: few samples, small shapes, native byte order.
"""

from __future__ import annotations

import numpy as np
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

NATIVE_DTYPES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "datetime64[ns]",
    "datetime64[s]",
    "timedelta64[ms]",
]


@st.composite
def dtypes(draw: st.DrawFn, *, strings: bool = True) -> np.dtype:
    """A storable dtype: numeric, bool, complex, datetime, either byte order, or fixed strings."""
    choices = list(NATIVE_DTYPES)
    if strings:
        choices += ["S5", "U3"]
    dt = np.dtype(draw(st.sampled_from(choices)))
    if dt.itemsize > 1 and dt.kind not in "SU" and draw(st.booleans()):
        dt = dt.newbyteorder(">" if dt.byteorder in "=<" else "<")
    event(f"dtype {dt.str}")
    return dt


def sample_shapes(max_dims: int = 3, max_side: int = 5) -> st.SearchStrategy[tuple[int, ...]]:
    """Per-sample shapes: 0-d labels up to small images, zero-size axes included."""
    return hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=max_side)


def batch_sizes(total: int) -> st.SearchStrategy[list[int]]:
    """Sizes of consecutive batches that add up to ``total`` (uneven last batch, size 1...)."""
    return st.integers(1, max(total, 1)).map(
        lambda b: [min(b, total - i) for i in range(0, total, b)] or [0]
    )


def arrays_for(dtype: np.dtype, shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    """Arrays with any values of ``dtype`` (NaN included), compared by bytes in tests."""
    return hnp.arrays(dtype, shape)


@st.composite
def ragged_shapes(draw: st.DrawFn, n: int, ndim: int | None = None) -> list[tuple[int, ...]]:
    """``n`` trailing shapes with a fixed number of axes: growing, shrinking or random."""
    ndim = draw(st.integers(1, 3)) if ndim is None else ndim
    pattern = draw(st.sampled_from(["random", "growing", "shrinking", "alternating"]))
    event(f"ragged pattern {pattern}")
    sides = st.integers(0, 6)
    shapes = [tuple(draw(sides) for _ in range(ndim)) for _ in range(n)]
    if pattern == "growing":
        shapes.sort(key=lambda s: int(np.prod(s)))
    elif pattern == "shrinking":
        shapes.sort(key=lambda s: -int(np.prod(s)))
    elif pattern == "alternating" and n > 1:
        big = tuple(6 for _ in range(ndim))
        small = tuple(1 for _ in range(ndim))
        shapes = [big if i % 2 else small for i in range(n)]
    return shapes
