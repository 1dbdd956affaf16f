"""Training reads: epoch orders, resuming, sharding, and ``store.loader``.

The invariants are checked on :class:`EpochOrder` (pure NumPy, fast) with hypothesis, then
end to end on ``store.batches`` and ``store.loader`` with a few small cases; worker and
distributed tests are kept few, as processes are slow to start.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oocstore
from oocstore.sinks._order import EpochOrder

N = 103
MODES = ["none", "block", "sample"]


def shuffle_arg(mode: str) -> Any:
    return False if mode == "none" else mode


@pytest.fixture
def xy(tmp_path: Path) -> oocstore.Store:
    x = np.arange(N * 6, dtype=np.float32).reshape(N, 2, 3)
    return oocstore.write((x, np.arange(N, dtype=np.int64)), tmp_path / "s.ooc", names=("x", "y"))


# -- the order: every sample once, shards exact -------------------------------------------------


@given(
    length=st.integers(1, 300),
    batch_size=st.integers(1, 40),
    mode=st.sampled_from(MODES),
    world_size=st.integers(1, 5),
    remainder=st.sampled_from(["pad", "drop"]),
    drop_last=st.booleans(),
    block_rows=st.integers(1, 20),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 3),
    buckets=st.none() | st.integers(1, 4) | st.just([5.0, 20.0]),
)
def test_each_epoch_partitions_the_samples_across_ranks(
    length: int,
    batch_size: int,
    mode: str,
    world_size: int,
    remainder: str,
    drop_last: bool,
    block_rows: int,
    seed: int,
    epoch: int,
    buckets: int | list[float] | None,
) -> None:
    keys = (np.arange(length) * 7919) % 31  # sizes 0..30, in no particular order

    def order(rank: int) -> EpochOrder:
        return EpochOrder(
            length,
            batch_size,
            fields=("x",),
            shuffle=shuffle_arg(mode),
            seed=seed,
            block_rows=block_rows,
            window=3,
            rank=rank,
            world_size=world_size,
            remainder=remainder,
            drop_last=drop_last,
            bucket_keys=keys,
            buckets=buckets,
        )

    orders = [order(r) for r in range(world_size)]
    per_rank = [o.epoch_rows(epoch) for o in orders]
    counts = {len(rows) for rows in per_rank}
    assert len(counts) == 1  # equal counts on every rank
    assert counts == {orders[0].samples}
    for o in orders:
        sizes = [len(o.batch_rows(epoch, k)) for k in range(len(o))]
        assert sizes == [len(orders[0].batch_rows(epoch, k)) for k in range(len(o))]
        assert all(0 < s <= batch_size for s in sizes)
        if buckets is None:
            assert all(s == batch_size for s in sizes[:-1])
        else:  # each batch from one bucket
            for k in range(len(o)):
                assert len(set(o._bucket_of[o.batch_rows(epoch, k)].tolist())) == 1
        if drop_last:
            assert set(sizes) <= {batch_size}
    everything = Counter(np.concatenate(per_rank).tolist())
    assert set(everything) <= set(range(length))
    if buckets is None:
        each = -(-length // world_size) if remainder == "pad" else length // world_size
        assert orders[0].samples == (each // batch_size * batch_size if drop_last else each)
        for rows in per_rank:
            assert len(set(rows.tolist())) == len(rows) or length < world_size  # no repeats
        if remainder == "drop" or length % world_size == 0:
            assert max(everything.values(), default=1) == 1  # each sample on one rank only
    elif remainder == "drop" or world_size == 1:
        assert max(everything.values(), default=1) == 1
    if not drop_last:
        if remainder == "pad":
            assert set(everything) == set(range(length))  # nothing left out
        elif buckets is None:
            assert len(everything) == length // world_size * world_size


def test_orders_depend_only_on_seed_and_epoch() -> None:
    def rows(seed: int, epoch: int, mode: str = "sample") -> list[int]:
        o = EpochOrder(50, 7, fields=("x",), shuffle=mode, seed=seed, block_rows=4, window=2)
        return o.epoch_rows(epoch).tolist()

    for mode in ("block", "sample"):
        assert rows(3, 1, mode) == rows(3, 1, mode)
        assert rows(3, 1, mode) != rows(3, 2, mode)
        assert rows(3, 1, mode) != rows(4, 1, mode)
        assert sorted(rows(3, 1, mode)) == list(range(50))
    # Global random state plays no part.
    saved = np.random.get_state()
    try:
        np.random.seed(0)
        first = rows(5, 0)
        np.random.seed(1)
        assert rows(5, 0) == first
    finally:
        np.random.set_state(saved)


def test_epoch_orders_are_pinned() -> None:
    # Epoch 1 with seed 0, written down: a resume after an upgrade (or on another machine)
    # needs the same order. A change here breaks every saved state dict: say so in the notes.
    def rows(mode: str) -> list[int]:
        o = EpochOrder(12, 4, fields=("x",), shuffle=mode, seed=0, block_rows=3, window=2)
        return o.epoch_rows(1).tolist()

    assert rows("sample") == [4, 6, 7, 9, 0, 2, 3, 5, 1, 8, 10, 11]
    assert rows("block") == [4, 6, 7, 8, 1, 3, 5, 9, 0, 2, 10, 11]


def test_shuffle_true_picks_by_available_memory(
    xy: oocstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psutil

    assert xy.batches(8, shuffle=True).shuffle == "sample"  # 3 KB fits
    vm = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: vm._replace(available=1000))
    assert xy.batches(8, shuffle=True).shuffle == "block"
    assert xy.batches(8, shuffle="sample").shuffle == "sample"
    assert xy.batches(8).shuffle == "none"


# -- store.batches: resume ----------------------------------------------------------------------


def ids_of(batches: Any, stop: int | None = None) -> list[int]:
    out: list[int] = []
    for batch in itertools.islice(batches, stop):  # takes exactly `stop` batches
        out.extend(np.asarray(batch[-1]).tolist())
    return out


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mode=st.sampled_from(MODES),
    batch_size=st.integers(1, 30),
    stop=st.integers(0, 40),
    drop_last=st.booleans(),
    world_size=st.integers(1, 3),
    data=st.data(),
)
def test_batches_resume_mid_epoch_where_they_stopped(
    xy: oocstore.Store,
    mode: str,
    batch_size: int,
    stop: int,
    drop_last: bool,
    world_size: int,
    data: st.DataObject,
) -> None:
    rank = data.draw(st.integers(0, world_size - 1))
    options = {
        "shuffle": shuffle_arg(mode),
        "seed": 11,
        "drop_last": drop_last,
        "rank": rank,
        "world_size": world_size,
    }
    whole = xy.batches(batch_size, **options)
    ids_of(whole)  # epoch 0
    expected = ids_of(whole)  # epoch 1, uninterrupted
    first = xy.batches(batch_size, **options)
    ids_of(first)
    head = ids_of(first, stop=stop)  # epoch 1, interrupted
    state = first.state_dict()
    again = xy.batches(batch_size, **options)  # a fresh process, as after a restart
    again.load_state_dict(state)
    if stop < len(first):
        assert head + ids_of(again) == expected
    else:  # the whole epoch was taken: resuming starts the next one
        assert head == expected
    assert ids_of(again) == ids_of(whole)  # and the epochs after go on as before


@pytest.mark.parametrize("shuffle", ["block", "sample"])
def test_batches_resume_on_every_backend(store_path: Path, shuffle: str) -> None:
    x = np.arange(N * 6, dtype=np.float32).reshape(N, 2, 3)
    store = oocstore.write((x, np.arange(N)), store_path, names=("x", "y"))

    # block_rows=5: several windows, so the window reader (lazy fields) starts mid-window.
    def make() -> oocstore.sinks.Batches:
        return oocstore.sinks.Batches(store, 8, shuffle=shuffle, seed=2, block_rows=5, window=2)

    expected = list(make())
    indexed = make()  # as Keras reads it: batches[i], the same batches as iterating
    for i, (ix, iy) in enumerate(indexed[i] for i in range(len(indexed))):
        np.testing.assert_array_equal(iy, expected[i][1])
        np.testing.assert_array_equal(ix, expected[i][0])
    assert all((np.diff(y) > 0).all() for _, y in expected)  # rows increase within a batch
    first = make()
    head = [b for _, b in zip(range(5), first, strict=False)]
    again = make()
    again.load_state_dict(first.state_dict())
    got = head + list(again)
    assert len(got) == len(expected) == 13
    for (gx, gy), (_, ey) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(gy, ey)
        np.testing.assert_array_equal(gx, x[ey])


def test_state_dict_errors(tmp_path: Path, xy: oocstore.Store) -> None:
    state = xy.batches(8, shuffle="sample", seed=1).state_dict()
    other = oocstore.write(np.zeros((N + 1, 2)), tmp_path / "o.ooc", names=("y",))
    with pytest.raises(oocstore.StateDictError, match=r"length=103.*another store"):
        other.batches(8, shuffle="sample", seed=1).load_state_dict(state)
    with pytest.raises(oocstore.StateDictError, match=r"fields=\['x', 'y'\].*\['y'\]"):
        xy.batches(8, shuffle="sample", seed=1, fields=("y",)).load_state_dict(state)
    with pytest.raises(oocstore.StateDictError, match="seed=1, this has 2"):
        xy.batches(8, shuffle="sample", seed=2).load_state_dict(state)
    with pytest.raises(oocstore.StateDictError, match="batch_size=8, this has 4"):
        xy.batches(4, shuffle="sample", seed=1).load_state_dict(state)
    with pytest.raises(oocstore.StateDictError, match="shuffle='sample', this has 'block'"):
        xy.batches(8, shuffle="block", seed=1).load_state_dict(state)
    with pytest.raises(oocstore.StateDictError, match="not an oocstore state dict"):
        xy.batches(8).load_state_dict({"epoch": 1})
    # No seed given: the saved one is taken, so the epoch resumes in the same order.
    unseeded = xy.batches(8, shuffle="sample")
    unseeded.load_state_dict(state)
    assert unseeded.seed == 1
    with pytest.raises(ValueError, match="not an oocstore state dict"):  # also a ValueError
        xy.batches(8).load_state_dict([])  # type: ignore[arg-type]


def test_bad_arguments(xy: oocstore.Store) -> None:
    with pytest.raises(
        oocstore.SamplingError, match="batch_size must be a positive integer, not 0"
    ):
        xy.batches(0)
    with pytest.raises(KeyError, match="no field 'z'"):
        xy.batches(4, fields=("z",))
    with pytest.raises(oocstore.SamplingError, match=r"rank must be in \[0, world_size=2\), not 2"):
        xy.batches(4, rank=2, world_size=2)
    with pytest.raises(oocstore.SamplingError, match="world_size must be given with rank="):
        xy.batches(4, rank=0)
    with pytest.raises(oocstore.SamplingError, match="shuffle must be True, False, 'block'"):
        xy.batches(4, shuffle="window")  # type: ignore[arg-type]
    with pytest.raises(oocstore.SamplingError, match="remainder must be 'pad' or 'drop'"):
        xy.batches(4, rank=0, world_size=2, remainder="repeat")
    torch = pytest.importorskip("torch")
    assert torch
    with pytest.raises(oocstore.SamplingError, match="bucket_field must be a ragged field to"):
        xy.loader(4, buckets=3)


# -- store.loader -------------------------------------------------------------------------------

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")


def start_method() -> str:
    """fork unless JAX or TensorFlow threads are running (see test_sinks.start_method)."""
    return "spawn" if {"jax", "tensorflow"} & set(sys.modules) else "fork"


def scale(batch: tuple[Any, ...]) -> tuple[Any, ...]:
    """A batch transform: module level, so spawned workers can unpickle it."""
    x, y = batch
    return x * 10, y


def loader_ids(loader: Any, stop: int | None = None) -> list[int]:
    return ids_of(loader, stop)


def test_getitems_reads_a_batch_in_the_callers_order(xy: oocstore.Store) -> None:
    ds = xy.to_torch()
    rows = [5, 2, 99, 2, -1]  # unsorted, a repeat, a negative index
    batch = ds.__getitems__(rows)
    x, y = oocstore.sinks.torch.collate(batch)
    assert y.tolist() == [5, 2, 99, 2, N - 1]
    np.testing.assert_array_equal(x.numpy(), xy["x"][[5, 2, 99, 2, N - 1]])
    assert x.is_contiguous()
    assert x.shape == (5, 2, 3)
    with pytest.raises(IndexError, match="sample 103 out of range"):
        ds.__getitems__([1, N])


def test_plain_dataloader_collates_store_batches_correctly(xy: oocstore.Store) -> None:
    # torch's default collate receives a StoreBatch and stacks its samples back: same batches.
    loader = torch.utils.data.DataLoader(xy.to_torch(batch_transform=scale), batch_size=10)
    x, y = next(iter(loader))
    assert isinstance(y, torch.Tensor)
    assert y.tolist() == list(range(10))
    np.testing.assert_array_equal(x.numpy(), xy["x"][:10] * 10)
    with pytest.raises(ValueError, match="not both"):
        xy.to_torch(transform=scale, batch_transform=scale)


@pytest.mark.parametrize("mode", MODES)
def test_loader_gives_every_sample_once(xy: oocstore.Store, mode: str) -> None:
    loader = xy.loader(10, shuffle=shuffle_arg(mode), seed=4, transform=scale)
    assert len(loader) == 11
    batches = list(loader)
    assert all(isinstance(x, torch.Tensor) and x.shape[1:] == (2, 3) for x, _ in batches)
    ids = torch.cat([y for _, y in batches]).numpy()
    assert sorted(ids.tolist()) == list(range(N))
    np.testing.assert_array_equal(torch.cat([x for x, _ in batches]).numpy(), xy["x"][ids] * 10)
    assert len(list(xy.loader(10, drop_last=True))) == 10
    # The same order as store.batches with the same settings.
    assert ids.tolist() == ids_of(xy.batches(10, shuffle=shuffle_arg(mode), seed=4))


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mode=st.sampled_from(MODES), batch_size=st.integers(1, 25), stop=st.integers(0, 30))
def test_loader_resumes_mid_epoch(
    xy: oocstore.Store, mode: str, batch_size: int, stop: int
) -> None:
    make = lambda: xy.loader(batch_size, shuffle=shuffle_arg(mode), seed=9)  # noqa: E731
    whole = make()
    expected = [loader_ids(whole), loader_ids(whole)]
    first = make()
    head = loader_ids(first, stop=stop)
    state = first.state_dict()
    assert state["epoch"] == (0 if stop < len(first) else 1)
    again = make()
    again.load_state_dict(state)
    got = head + loader_ids(again)
    if stop < len(first):
        assert got == expected[0]
        assert loader_ids(again) == expected[1]
    else:
        assert got == expected[0] + expected[1]


def test_loader_workers_give_the_same_epochs_and_resume(xy: oocstore.Store) -> None:
    context = start_method()
    plain = xy.loader(8, shuffle="sample", seed=3)
    expected = loader_ids(plain)
    two = xy.loader(8, shuffle="sample", seed=3, num_workers=2, multiprocessing_context=context)
    head = loader_ids(two, stop=4)  # workers have prefetched more than the 4 batches taken
    again = xy.loader(8, shuffle="sample", seed=3, num_workers=1, multiprocessing_context=context)
    again.load_state_dict(two.state_dict())
    assert head + loader_ids(again) == expected
    assert Counter(expected) == Counter(range(N))


DISTRIBUTED = """
import sys
import numpy as np
import torch.distributed as dist
import oocstore

rank, world = int(sys.argv[1]), int(sys.argv[2])
init, path, out = sys.argv[3:6]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
store = oocstore.open(path)
ids = {}
for remainder in ("pad", "drop"):
    loader = store.loader(8, shuffle="sample", seed=1, remainder=remainder)  # rank from dist
    assert (loader.order.rank, loader.order.world_size) == (rank, world)
    ids[remainder] = np.concatenate([y.numpy() for _, y in loader])
np.savez(out, **ids)
dist.barrier()
dist.destroy_process_group()
"""


def test_world_size_processes_partition_each_epoch(xy: oocstore.Store, tmp_path: Path) -> None:
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(DISTRIBUTED))
    world = 2
    init = f"file://{tmp_path / 'init'}"
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(r), str(world), init, str(xy.path), tmp_path / f"{r}.npz"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    got = [np.load(tmp_path / f"{r}.npz") for r in range(world)]
    padded = [g["pad"] for g in got]
    assert {len(p) for p in padded} == {52}  # ceil(103 / 2) each
    assert set(np.concatenate(padded).tolist()) == set(range(N))  # 1 sample repeated
    dropped = [g["drop"] for g in got]
    assert {len(d) for d in dropped} == {51}
    together = np.concatenate(dropped).tolist()
    assert len(set(together)) == len(together) == 102  # each sample on exactly one rank


@pytest.mark.filterwarnings("ignore::oocstore.PaddingWarning")
@pytest.mark.parametrize("ragged", ["pad", "pack"])
def test_loader_buckets_pad_each_batch_to_its_own_shape(tmp_path: Path, ragged: str) -> None:
    rng = np.random.default_rng(0)
    seqs = [np.arange(n, dtype=np.int32) + 1 for n in rng.integers(1, 40, 120)]
    store = oocstore.write(
        [(seqs, np.arange(120))], tmp_path / "s.ooc", names=("tok", "id"), ragged=ragged
    )
    assert store.layout("tok") == ("padded" if ragged == "pad" else "packed")
    loader = store.loader(16, shuffle=True, seed=0, buckets=4)
    got = list(loader)
    assert sorted(torch.cat([i for _, i, _ in got]).tolist()) == list(range(120))
    wasted = 0
    for tok, ids, mask in got:
        lengths = [len(seqs[i]) for i in ids.tolist()]
        assert tok.shape == mask.shape == (len(ids), max(lengths))  # the batch's own longest
        for row, valid, n, i in zip(tok, mask, lengths, ids.tolist(), strict=True):
            assert int(valid.sum()) == n
            np.testing.assert_array_equal(row[:n].numpy(), seqs[i])
            assert not row[n:].any()
        wasted += int((~mask).sum())
    unbucketed = sum(int((~m).sum()) for _, _, m in store.loader(16, shuffle=True, seed=0))
    assert wasted < unbucketed / 2
    # Resumes like any other order.
    first = store.loader(16, shuffle=True, seed=0, buckets=4)
    head = [int(v) for _, i, _ in itertools.islice(first, 3) for v in i]
    again = store.loader(16, shuffle=True, seed=0, buckets=4)
    again.load_state_dict(first.state_dict())
    assert (
        head + [int(v) for _, i, _ in again for v in i]
        == torch.cat([i for _, i, _ in got]).tolist()
    )
    with pytest.raises(oocstore.StateDictError, match="buckets"):
        store.loader(16, shuffle=True, seed=0).load_state_dict(first.state_dict())
    with pytest.raises(oocstore.SamplingError, match="bucket_field must be a ragged"):
        store.loader(16, buckets=4, bucket_field="id")
    with pytest.raises(oocstore.SamplingError, match="buckets must be increasing boundaries"):
        store.loader(16, buckets=[10, 5])
