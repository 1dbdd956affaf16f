"""Loader workers send batches through reused shared-memory slots (oocstore.sinks._slots).

What must hold: a batch the training loop keeps never changes (a slot is reused only after the
main process copied it out), every sample still comes once per epoch, transforms that make new
tensors or change the slot's in place both work, and an abandoned iterator costs speed, never
correctness.
"""

from __future__ import annotations

import itertools
import multiprocessing
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import oocstore
from oocstore.sinks import _slots

N = 200


def start_method() -> str:
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> oocstore.Store:
    root = tmp_path_factory.mktemp("slots")
    x = (
        np.arange(N * 48, dtype=np.uint8).reshape(N, 4, 4, 3)
        ^ np.arange(N, dtype=np.uint8)[:, None, None, None]
    )
    return oocstore.write((x, np.arange(N, dtype=np.int64)), root / "s.ooc", names=("x", "y"))


def double(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """A transform making new tensors (module level: spawned workers unpickle it)."""
    x, y = batch
    return x.to(torch.int16) * 2, y


def in_place(batch: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """A transform writing into the slot's tensor in place, beside a new one."""
    x, y = batch
    x ^= 0xFF
    return {"x": x, "y": y, "y2": y * 2}


def test_kept_batches_never_change_and_each_sample_comes_once(
    store: oocstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = {"slot": 0, "plain": 0}
    receive = _slots.receive

    def counted(batch: Any) -> Any:
        seen["slot" if isinstance(batch, _slots.SlotBatch) else "plain"] += 1
        return receive(batch)

    monkeypatch.setattr(_slots, "receive", counted)
    loader = store.loader(
        8, shuffle="sample", seed=1, num_workers=2, multiprocessing_context=start_method()
    )
    for _ in range(2):  # two epochs: slots are reused many times over
        kept = list(loader)  # every batch held while the workers go on
        ids = np.concatenate([y.numpy() for _, y in kept])
        assert sorted(ids.tolist()) == list(range(N))
        for x, y in kept:
            np.testing.assert_array_equal(x.numpy(), store["x"][y.numpy()])
    assert seen["slot"] == 2 * N // 8  # every batch came through a slot
    assert seen["plain"] == 0


@pytest.mark.parametrize("transform", [double, in_place])
def test_transforms_new_or_in_place(store: oocstore.Store, transform: Any) -> None:
    loader = store.loader(
        10, shuffle="sample", seed=2, num_workers=2, transform=transform,
        multiprocessing_context=start_method(),
    )  # fmt: skip
    kept = list(loader)
    for batch in kept:
        if transform is double:
            x, y = batch
            np.testing.assert_array_equal(x.numpy(), store["x"][y.numpy()].astype(np.int16) * 2)
        else:
            y = batch["y"]
            np.testing.assert_array_equal(batch["x"].numpy(), store["x"][y.numpy()] ^ 0xFF)
            np.testing.assert_array_equal(batch["y2"].numpy(), y.numpy() * 2)
    assert np.array_equal(np.asarray(store["x"][:1]), store["x"][:1])  # the file is untouched


def test_an_abandoned_epoch_leaves_later_epochs_exact(store: oocstore.Store) -> None:
    """Batches a dropped iterator never delivered keep their slots; the workers fall back to
    fresh shared memory for those, and every later epoch is still exact."""
    loader = store.loader(
        8, shuffle="sample", seed=4, num_workers=2, persistent_workers=True,
        multiprocessing_context=start_method(),
    )  # fmt: skip
    for _ in range(3):
        it = iter(loader)
        next(it)
        del it  # prefetched batches are dropped with their slots
    kept = list(loader)
    ids = np.concatenate([y.numpy() for _, y in kept])
    assert sorted(ids.tolist()) == list(range(N))
    for x, y in kept:
        np.testing.assert_array_equal(x.numpy(), store["x"][y.numpy()])


@given(ops=st.lists(st.sampled_from(["take", "give"]), max_size=60))
def test_a_slot_is_never_handed_out_twice_before_it_is_given_back(ops: list[str]) -> None:
    flags = torch.zeros(2 * _slots.SLOTS_PER_WORKER, dtype=torch.int8)
    ring = _slots.WorkerSlots(flags, worker=1)
    held: list[int] = []
    for op in ops:
        if op == "take":
            got = ring.acquire(64)
            if got is None:
                assert len(held) == _slots.SLOTS_PER_WORKER
                continue
            slot, storage = got
            assert slot not in held
            assert _slots.SLOTS_PER_WORKER <= slot < 2 * _slots.SLOTS_PER_WORKER  # its own
            assert storage.nbytes() >= 64
            held.append(slot)
        elif held:
            _slots.release(flags, held.pop(0))
    assert sorted(np.flatnonzero(flags.numpy()).tolist()) == sorted(held)


@given(
    shapes=st.lists(st.tuples(st.integers(0, 9), st.integers(1, 5)), min_size=1, max_size=6),
    dtype=st.sampled_from([torch.uint8, torch.float32, torch.int64]),
)
def test_tensors_carved_from_a_slot_are_aligned_and_disjoint(
    shapes: list[tuple[int, int]], dtype: torch.dtype
) -> None:
    size = 400
    storage = torch.UntypedStorage(size)
    alloc = _slots.SlotAllocator(storage)
    spans = []
    for shape in shapes:
        before = alloc.offset
        t = alloc.tensor(shape, dtype)
        nbytes = shape[0] * shape[1] * torch.empty(0, dtype=dtype).element_size()
        if t is None:
            assert -(-before // 64) * 64 + nbytes > size  # it would not fit
            assert alloc.offset == before
            continue
        start = t.data_ptr() - storage.data_ptr()
        assert start % 64 == 0
        assert tuple(t.shape) == shape
        spans.append((start, start + nbytes))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert all(hi <= size for _, hi in spans)


def test_an_empty_process_has_no_ring() -> None:
    assert _slots.worker_slots(_slots.new_flags(2)) is None  # the main process never takes
