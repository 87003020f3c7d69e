"""Shared slots: arrays left in shared memory by one process, read by another."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest

from pipeline.inference.slots import ALIGN, SlotRef, Slots, resolve


def test_arrays_round_trip_through_a_slot_as_views():
    slots = Slots(3, size=4096)
    image = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    kept = np.full((5, 7), 9, dtype=np.uint8)
    first = slots.put(1, image)
    second = slots.put(1, kept, slots.end_of(first))
    assert first == SlotRef(1, 0, (1, 3, 4), "<f4") and second.offset == ALIGN
    assert np.array_equal(slots.get(first), image) and np.array_equal(resolve(second, slots), kept)
    view = slots.get(first)
    view[0, 0, 0] = -1  # a view of the shared memory, not a copy
    assert slots.get(first)[0, 0, 0] == -1
    assert not np.shares_memory(slots.get(first), slots.get(SlotRef(2, 0, (1, 3, 4), "<f4")))


def test_an_array_too_large_for_its_room_is_refused_and_slots_run_out():
    slots = Slots(2, size=1024)
    assert slots.put(0, np.zeros(1025, np.uint8)) is None
    assert slots.put(0, np.zeros(100, np.uint8), offset=1000) is None  # aligned past the room
    assert [slots.take(), slots.take(), slots.take()] == [0, 1, None]
    assert slots.in_use == 2
    slots.free(1)
    slots.free(None)  # nothing was taken
    assert slots.in_use == 1 and slots.take() == 1


def test_a_reference_without_the_slots_is_an_error_naming_it():
    ref = SlotRef(0, 0, (2,), "<f4")
    with pytest.raises(RuntimeError, match=r"SlotRef\(slot=0"):
        resolve(ref, None)
    assert resolve("as it is", None) == "as it is"


_HELD: dict[str, Slots] = {}


def _hold(slots: Slots) -> None:  # as init_worker keeps them
    _HELD["slots"] = slots


def _write(value: int) -> int:
    return _HELD["slots"].put(0, np.full((4, 4), value, dtype=np.int16)).offset


@pytest.mark.parametrize(
    ("method", "memfd"), [("fork", True), ("forkserver", True), ("fork", False)]
)
def test_a_worker_writes_where_the_job_reads(method, memfd, monkeypatch):
    """Forked workers inherit the memory (an anonymous mapping too); a fork server's
    receive its file when they start."""
    from concurrent.futures import ProcessPoolExecutor

    if not memfd:
        monkeypatch.delattr(os, "memfd_create", raising=False)
    slots = Slots(1, size=4096)
    assert (slots.fd is not None) == (memfd and hasattr(os, "memfd_create"))
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(1, mp_context=context, initializer=_hold, initargs=(slots,)) as pool:
        offset = pool.submit(_write, 7).result(timeout=60)
    assert np.array_equal(slots.get(SlotRef(0, offset, (4, 4), "<i2")), np.full((4, 4), 7))


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="Linux's memfd_create")
def test_the_memory_is_an_anonymous_file_outside_dev_shm():
    """Containers cap /dev/shm (Docker: 64 MB), and writing past the cap is a SIGBUS."""
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    slots = Slots(2, size=4096)
    slots.put(1, np.ones(4096, np.uint8))
    assert os.readlink(f"/proc/self/fd/{slots.fd}").startswith("/memfd:lungseg-slots")
    assert slots.for_workers("forkserver") is slots
    after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert after == before


def test_without_memfd_the_slots_are_an_anonymous_mapping_for_forked_workers_only(monkeypatch):
    """A sandbox may forbid memfd_create: the job still runs, a fork server's workers
    then send their pixels through the pipes."""
    import pickle

    def forbidden(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "memfd_create", forbidden, raising=False)
    slots = Slots(2, size=4096)
    assert slots.fd is None
    ref = slots.put(0, np.arange(6, dtype=np.int32))
    assert np.array_equal(slots.get(ref), np.arange(6))
    assert slots.for_workers("fork") is slots and slots.for_workers("forkserver") is None
    with pytest.raises(pickle.PicklingError, match="forked workers"):
        pickle.dumps(slots)
