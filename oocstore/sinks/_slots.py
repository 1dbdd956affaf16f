"""Reused shared-memory slots for the batches loader workers send to the main process.

A DataLoader worker that gathers a batch into fresh shared memory pays for new pages every
batch (fresh memory on a VM can be many times slower to touch than memory in use), and that
cost, not the gather, decided how far workers scale. Here each worker keeps a small ring of
shared-memory slots and gathers into a free one; the main process copies the batch out of the
slot into memory of its own (NumPy's allocator reuses what the last batch freed) and marks the
slot free again in a flag array both sides map. So a slot is reused only after the main
process has copied what it held: a batch the training loop keeps is never overwritten.

A worker that finds no free slot (batches dropped by an abandoned iterator never give theirs
back) gathers into fresh shared memory as before: slower, never wrong.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

__all__ = [
    "SLOTS_PER_WORKER",
    "SlotAllocator",
    "SlotBatch",
    "WorkerSlots",
    "new_flags",
    "receive",
    "release",
    "sent",
    "worker_slots",
]

SLOTS_PER_WORKER = 6
"""Slots in each worker's ring: more than the batches a worker has in flight (torch's
``prefetch_factor``, 2 by default) plus the one the main process is copying."""

_ALIGN = 64


def new_flags(num_workers: int) -> torch.Tensor:
    """The flags of every worker's slots (1: holds a batch the main process has not copied),
    in shared memory, made in the main process before the workers start."""
    flags = torch.zeros(num_workers * SLOTS_PER_WORKER, dtype=torch.int8)
    flags.share_memory_()  # type: ignore[no-untyped-call]
    return flags


class WorkerSlots:
    """One worker's ring of slots: shared storages reused batch after batch."""

    def __init__(self, flags: torch.Tensor, worker: int) -> None:
        self.flags = flags.numpy()
        self.base = worker * SLOTS_PER_WORKER
        self.storages: list[torch.UntypedStorage | None] = [None] * SLOTS_PER_WORKER
        self.next = 0

    def acquire(self, nbytes: int) -> tuple[int, torch.UntypedStorage] | None:
        """A free slot of at least ``nbytes`` (its global index and storage), or None."""
        for step in range(SLOTS_PER_WORKER):
            i = (self.next + step) % SLOTS_PER_WORKER
            if self.flags[self.base + i]:
                continue
            storage = self.storages[i]
            if storage is None or storage.nbytes() < nbytes:
                storage = torch.UntypedStorage(max(nbytes, 1))  # type: ignore[no-untyped-call]
                storage.share_memory_()
                self.storages[i] = storage
            self.flags[self.base + i] = 1
            self.next = (i + 1) % SLOTS_PER_WORKER
            return self.base + i, storage
        return None

    def release(self, slot: int) -> None:
        """Give back a slot this worker took but sends nothing on."""
        self.flags[slot] = 0


class SlotAllocator:
    """Carves a batch's tensors out of one slot, field after field."""

    def __init__(self, storage: torch.UntypedStorage) -> None:
        self.storage = storage
        self.offset = 0

    def tensor(self, shape: tuple[int, ...], kind: torch.dtype) -> torch.Tensor | None:
        """A tensor of ``shape`` in the slot, or None when the slot is full."""
        itemsize = torch.empty(0, dtype=kind).element_size()
        start = -(-self.offset // _ALIGN) * _ALIGN
        nbytes = math.prod(shape) * itemsize
        if start + nbytes > self.storage.nbytes():
            return None
        self.offset = start + nbytes
        flat = torch.empty(0, dtype=kind).set_(
            self.storage, start // itemsize, (math.prod(shape),), (1,)
        )
        return flat.view(shape)


_rings: dict[int, WorkerSlots] = {}


def worker_slots(flags: torch.Tensor | None) -> WorkerSlots | None:
    """This worker's ring (None in the main process, or when the loader gave no flags)."""
    info = get_worker_info()
    if info is None or flags is None:
        return None
    ring = _rings.get(id(flags))
    if ring is None:
        ring = _rings[id(flags)] = WorkerSlots(flags, info.id)
    return ring


class SlotBatch:
    """A batch some of whose tensors live in slot ``slot``: what a worker sends. ``marks``
    says, leaf by leaf (in :func:`_leaves` order), which tensors are in the slot."""

    def __init__(self, batch: Any, slot: int, flags: torch.Tensor, marks: list[bool]) -> None:
        self.batch = batch
        self.slot = slot
        self.flags = flags
        self.marks = marks

    def pin_memory(self, device: Any = None) -> Any:
        """Pinned copies (torch's pin-memory thread calls this), the slot given back."""
        from torch.utils.data._utils.pin_memory import pin_memory

        try:
            return pin_memory(self.batch, device)  # type: ignore[no-untyped-call]
        finally:
            release(self.flags, self.slot)


def _leaves(value: Any) -> list[Any]:
    """The tensors and other leaves of a batch, depth first (tuples, lists, dict values)."""
    if isinstance(value, tuple | list):
        return [leaf for v in value for leaf in _leaves(v)]
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    return [value]


def _rebuilt(value: Any, leaves: list[Any]) -> Any:
    """``value`` with its leaves replaced by ``leaves`` (consumed from the front)."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(_rebuilt(v, leaves) for v in value))
    if isinstance(value, tuple | list):
        return type(value)(_rebuilt(v, leaves) for v in value)
    if isinstance(value, dict):
        return {k: _rebuilt(v, leaves) for k, v in value.items()}
    return leaves.pop(0)


def sent(batch: Any, slot: int, storage: torch.UntypedStorage, flags: torch.Tensor) -> Any:
    """In a worker: ``batch`` (transformed or not) ready to send. If none of its tensors is
    in the slot any more (a transform made new ones), the slot is free again at once."""
    ptr = storage.data_ptr()
    marks = [
        isinstance(leaf, torch.Tensor) and leaf.untyped_storage().data_ptr() == ptr
        for leaf in _leaves(batch)
    ]
    if not any(marks):
        release(flags, slot)
        return batch
    return SlotBatch(batch, slot, flags, marks)


def release(flags: torch.Tensor, slot: int) -> None:
    """Mark ``slot`` free: its worker may gather the next batch into it."""
    flags.numpy()[slot] = 0


def _copy(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` in this process's memory (NumPy's allocator where NumPy has the dtype)."""
    try:
        return torch.from_numpy(np.array(t.numpy(), copy=True))
    except (TypeError, RuntimeError):  # bfloat16 and friends: torch's own copy
        return t.clone()


def receive(batch: Any) -> Any:
    """In the main process: a batch as the training loop gets it, copied out of its slot."""
    if not isinstance(batch, SlotBatch):
        return batch
    try:
        leaves = _leaves(batch.batch)
        out = [_copy(v) if m else v for v, m in zip(leaves, batch.marks, strict=True)]
        return _rebuilt(batch.batch, out)
    finally:
        release(batch.flags, batch.slot)
