"""PyTorch sources, against real torch: each store equals the in-memory answer exactly."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import oocstore
from oocstore.sources import as_stream

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
tud = pytest.importorskip("torch.utils.data", reason="PyTorch is not installed")


@pytest.fixture
def tensors() -> tuple[Any, Any]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(95, 3, 4, generator=gen)
    y = torch.arange(95)
    return x, y


@pytest.fixture
def no_growth(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture the writer's debug log, where it reports growing a file past its allocation."""
    caplog.set_level(logging.DEBUG, logger="oocstore")
    return caplog


def grew(caplog: pytest.LogCaptureFixture) -> bool:
    return any("growing" in r.getMessage() for r in caplog.records)


def test_tensor_dataset_through_dataloader(
    store_path: Path, tensors: tuple[Any, Any], no_growth: pytest.LogCaptureFixture
) -> None:
    x, y = tensors
    loader = tud.DataLoader(tud.TensorDataset(x, y), batch_size=10)
    assert as_stream(loader).length == 95  # exact, from the dataset: preallocated
    store = oocstore.write(loader, store_path, names=("x", "y"))
    assert len(store) == 95
    np.testing.assert_array_equal(store["x"][:], torch.cat([b for b, _ in loader]).numpy())
    np.testing.assert_array_equal(store["y"][:], y.numpy())
    assert store["x"].dtype == np.float32
    assert not grew(no_growth)


@pytest.mark.parametrize(
    ("kwargs", "length", "n_batches"),
    [
        ({"batch_size": 10}, 95, None),
        ({"batch_size": 10, "drop_last": True}, 90, None),
        ({"batch_size": 10, "shuffle": True}, 95, None),  # RandomSampler: still len(dataset)
        ({"batch_size": 32, "drop_last": True, "shuffle": True}, 64, None),
        ({"batch_size": 10, "collate_fn": lambda b: b}, None, 10),  # custom collate: a hint
        ({"batch_size": None}, None, 95),  # items pass through: batches unless batched=False
    ],
)
def test_dataloader_length(
    tensors: tuple[Any, Any], kwargs: dict[str, Any], length: int | None, n_batches: int | None
) -> None:
    stream = as_stream(tud.DataLoader(tud.TensorDataset(*tensors), **kwargs))
    assert (stream.length, stream.n_batches) == (length, n_batches)


def test_dataloader_drop_last_and_shuffle(tmp_path: Path, tensors: tuple[Any, Any]) -> None:
    x, y = tensors
    loader = tud.DataLoader(tud.TensorDataset(x, y), batch_size=32, shuffle=True, drop_last=True)
    torch.manual_seed(3)
    expected = list(loader)
    torch.manual_seed(3)
    store = oocstore.write(loader, tmp_path / "s.ooc")
    assert len(store) == 64
    np.testing.assert_array_equal(store["0"][:], torch.cat([b[0] for b in expected]).numpy())
    np.testing.assert_array_equal(store["1"][:], torch.cat([b[1] for b in expected]).numpy())


def test_dataloader_with_workers(tmp_path: Path, tensors: tuple[Any, Any]) -> None:
    x, y = tensors
    # fork, unless an earlier test left JAX or TensorFlow threads that fork() must not copy
    method = "spawn" if {"jax", "tensorflow"} & set(sys.modules) else "fork"
    ds = tud.TensorDataset(x, y)
    loader = tud.DataLoader(ds, batch_size=8, num_workers=2, multiprocessing_context=method)
    store = oocstore.write(loader, tmp_path / "s.ooc")
    np.testing.assert_array_equal(store["0"][:], x.numpy())


def test_tensor_dataset_directly_is_sliced(tmp_path: Path, tensors: tuple[Any, Any]) -> None:
    x, y = tensors
    ds = tud.TensorDataset(x, y)
    stream = as_stream(ds)
    assert stream.length == 95
    store = oocstore.write(ds, tmp_path / "s.ooc", names=("x", "y"))
    np.testing.assert_array_equal(store["x"][:], x.numpy())
    np.testing.assert_array_equal(store["y"][:], y.numpy())


class Squares(tud.Dataset):  # type: ignore[type-arg]
    """A map-style dataset: (tensor sample, int label), one per index."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Any, int]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return torch.full((2, 2), float(i * i)), i


def test_map_style_dataset_gives_samples_with_exact_length(
    tmp_path: Path, no_growth: pytest.LogCaptureFixture
) -> None:
    ds = Squares(1000)
    assert as_stream(ds).length == 1000
    store = oocstore.write(ds, tmp_path / "s.ooc", names=("x", "y"))
    expected = torch.stack([ds[i][0] for i in range(1000)]).numpy()
    np.testing.assert_array_equal(store["x"][:], expected)
    np.testing.assert_array_equal(store["y"][:], np.arange(1000))
    assert not grew(no_growth)


class Detection(tud.Dataset):  # type: ignore[type-arg]
    """Images of varying size with a dict target holding a varying number of boxes."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> tuple[Any, dict[str, Any]]:
        image = torch.full((3, 4 + i, 5 + 2 * i), i, dtype=torch.uint8)
        boxes = torch.arange(4 * (i % 3 + 1), dtype=torch.float32).reshape(-1, 4)
        return image, {"boxes": boxes, "label": i}


def test_nested_dict_samples_are_flattened_and_ragged(tmp_path: Path) -> None:
    ds = Detection()
    store = oocstore.write(ds, tmp_path / "s.ooc")
    assert store.fields == ("0", "1_boxes", "1_label")
    for i in range(len(ds)):
        image, target = ds[i]
        np.testing.assert_array_equal(store.sample("0", i), image.numpy())
        np.testing.assert_array_equal(store.sample("1_boxes", i), target["boxes"].numpy())
    np.testing.assert_array_equal(store["1_label"][:], np.arange(6))


def test_ragged_batches_from_a_zip_collate(tmp_path: Path) -> None:
    ds = Detection()
    loader = tud.DataLoader(ds, batch_size=4, collate_fn=lambda b: tuple(zip(*b, strict=True)))
    store = oocstore.write(
        ((images, [t["label"] for t in targets]) for images, targets in loader),
        tmp_path / "s.ooc",
    )
    for i in range(len(ds)):
        np.testing.assert_array_equal(store.sample("0", i), ds[i][0].numpy())


def test_dataloader_of_dict_batches(tmp_path: Path) -> None:
    class Dicts(tud.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 9

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"x": torch.full((3,), float(i)), "meta": {"id": i}}

    store = oocstore.write(tud.DataLoader(Dicts(), batch_size=4), tmp_path / "s.ooc")
    assert store.fields == ("x", "meta_id")
    np.testing.assert_array_equal(store["meta_id"][:], np.arange(9))
    assert len(store) == 9


def test_list_of_tensors_one_sample_each(
    store_path: Path, tensors: tuple[Any, Any], no_growth: pytest.LogCaptureFixture
) -> None:
    x, _ = tensors
    samples = list(x)  # 95 tensors of shape (3, 4)
    stream = as_stream(samples)
    assert (stream.length, stream.batched) == (95, True)
    store = oocstore.write(samples, store_path)
    np.testing.assert_array_equal(store["0"][:], torch.stack(samples).numpy())
    assert not grew(no_growth)


def test_tuple_of_many_tensors_is_samples_but_x_y_is_fields(tmp_path: Path) -> None:
    x = torch.arange(200 * 3).reshape(200, 3)
    store = oocstore.write(torch.unbind(x), tmp_path / "a.ooc")  # a tuple of 200 samples
    assert store.fields == ("0",)
    np.testing.assert_array_equal(store["0"][:], x.numpy())
    y = torch.arange(200)
    store = oocstore.write((x, y), tmp_path / "b.ooc", names=("x", "y"))  # a bundle of fields
    np.testing.assert_array_equal(store["x"][:], x.numpy())
    np.testing.assert_array_equal(store["y"][:], y.numpy())


def test_list_of_ragged_tensors(tmp_path: Path) -> None:
    samples = [torch.arange(n, dtype=torch.int16) for n in (3, 1, 4, 1, 5)]
    store = oocstore.write(samples, tmp_path / "s.ooc")
    assert [store.sample("0", i).tolist() for i in range(5)] == [s.tolist() for s in samples]


def test_generator_of_image_label_tuples(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randint(0, 255, (n, 8, 8, 3), dtype=torch.uint8, generator=gen), torch.arange(n))
        for n in (16, 16, 7)
    ]
    store = oocstore.write(iter(batches), tmp_path / "s.ooc", names=("images", "labels"))
    np.testing.assert_array_equal(store["images"][:], torch.cat([b[0] for b in batches]).numpy())
    np.testing.assert_array_equal(store["labels"][:], torch.cat([b[1] for b in batches]).numpy())


def test_iterable_dataset_samples(tmp_path: Path) -> None:
    class Stream(tud.IterableDataset):  # type: ignore[type-arg]
        def __iter__(self):  # type: ignore[no-untyped-def]
            for i in range(50):
                yield torch.tensor([i, -i]), i % 3

    store = oocstore.write(Stream(), tmp_path / "s.ooc")
    assert len(store) == 50
    np.testing.assert_array_equal(store["0"][:, 0], np.arange(50))
    np.testing.assert_array_equal(store["1"][:], np.arange(50) % 3)


def test_sample_structure_change_is_a_clear_error(tmp_path: Path) -> None:
    class Bad(tud.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> Any:
            return (torch.zeros(2), i) if i < 2 else (torch.zeros(2), i, i)

    with pytest.raises(oocstore.BatchError, match=r"sample 2 .*expected 2 values, got 3 values"):
        oocstore.write(Bad(), tmp_path / "s.ooc")
