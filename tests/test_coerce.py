"""Tensors, PIL images, scalars and lists become NumPy arrays with the least copying."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import oocstore
from oocstore.coerce import as_array


def test_numpy_arrays_pass_through_uncopied() -> None:
    a = np.arange(6)
    assert as_array(a) is a


def test_python_scalars_and_lists(store_path: Path) -> None:
    store = oocstore.write(
        [(1, 2.5, True, "ab")] * 3, store_path, batched=False, names=("i", "f", "b", "s")
    )
    assert store["i"].tolist() == [1, 1, 1]
    assert store["f"].dtype == np.float64
    assert store["b"].dtype == np.bool_
    assert store["s"].tolist() == ["ab"] * 3


def test_lists_of_numbers_are_fields(store_path: Path) -> None:
    store = oocstore.write([([[1, 2], [3, 4]], [0, 1])], store_path)
    assert store["0"].tolist() == [[1, 2], [3, 4]]
    assert store["1"].tolist() == [0, 1]


def test_torch_tensors(store_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    x = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    arr = as_array(x)
    assert np.shares_memory(arr, x.numpy())  # no copy for a CPU tensor
    grad = torch.ones(2, 3, requires_grad=True) * 2
    batches = [(x[:2], torch.tensor([0, 1])), (x[2:], torch.tensor([2, 3]))]
    store = oocstore.write(batches, store_path, names=("x", "y"))
    assert np.array_equal(store["x"], x.numpy())
    assert store["y"].dtype == np.int64
    assert as_array(grad).tolist() == [[2.0] * 3] * 2


def test_torch_bfloat16_is_refused_with_a_fix() -> None:
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    with pytest.raises(oocstore.UnsupportedDtypeError, match=r"bfloat16.*tensor\.float\(\)"):
        as_array(torch.zeros(2, dtype=torch.bfloat16))


def test_pil_images(store_path: Path) -> None:
    image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")
    imgs = [image.new("RGB", (5, 4), (i, 2 * i, 3 * i)) for i in range(6)]
    store = oocstore.write(imgs, store_path, batched=False, names=("img",))
    assert store["img"].shape == (6, 4, 5, 3)
    assert store["img"][5, 0, 0].tolist() == [5, 10, 15]


def test_objects_with_array_protocol() -> None:
    class Wrapped:
        def __array__(self, dtype=None, copy=None):  # type: ignore[no-untyped-def]
            return np.arange(3)

    assert as_array(Wrapped()).tolist() == [0, 1, 2]
