"""Shared memory for the pixels the batch job and its workers pass each other.

Each image in flight gets a slot (:class:`Slots`): the worker that decodes it leaves there the
network's input and the image the overlay is drawn on; the batch job's process reads the
input, writes the network's logits over it, and the worker that finishes the image reads the
logits and the image from the same slot. Only a small reference (:class:`SlotRef`) goes
through the pool's pipes. Pickled through them, these arrays (~0.5 MB each way per 512²
image) cost the job's process ~1.6 ms and the workers ~1.1 ms of CPU per image; through the
slots ~0.3 and ~0.2 ms (``ProcessPoolExecutor``, 2 workers, 1000 images of those sizes).

The memory is an anonymous file (``memfd_create``): it has no name, so nothing outlives the
processes however they end, and it is not counted against ``/dev/shm``, which containers
often cap at 64 MB (where writing past the cap kills a process with SIGBUS). Forked workers
inherit its mapping; a fork server's workers receive its descriptor when they start. Where
the OS has no ``memfd_create`` it is an anonymous shared mapping, which only forked workers
share. An array that does not fit its slot's room (a full-resolution image kept for TB
screening, a larger network input) is sent through the pipe as before.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

#: Bytes per slot: a float32 network input up to 512² (1 MiB) and an 8-bit overlay image of
#: 1024² (:data:`~pipeline.inference.outputs.OVERLAY_MAX_SIZE`); only what is written is
#: ever backed by memory.
SLOT_BYTES = 2 * 2**20
#: Arrays start at multiples of this in a slot (cache lines, SIMD loads).
ALIGN = 64


class SlotRef(NamedTuple):
    """An array left in slot ``slot`` of the shared :class:`Slots`, ``offset`` bytes in."""

    slot: int
    offset: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        """The array's size in bytes."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


class Slots:
    """``count`` slots of ``size`` bytes in shared memory, and which of them are free.

    Only the batch job's process takes and frees slots (:meth:`take`, :meth:`free`); any
    process holding the object reads and writes them (:meth:`put`, :meth:`get`). Pages are
    backed by memory only once written.

    Args:
        count: slots (images in flight at most; more are sent through the pipes).
        size: bytes per slot.
        fd: an open anonymous file of ``count * size`` bytes to map (default: a new one).
    """

    def __init__(self, count: int, size: int = SLOT_BYTES, fd: int | None = None):
        import mmap
        import os

        self.count, self.size = count, size
        if fd is None and hasattr(os, "memfd_create"):
            try:
                fd = os.memfd_create("lungseg-slots", os.MFD_CLOEXEC)
                os.ftruncate(fd, count * size)
            except OSError:  # e.g. a sandbox that forbids it: an anonymous mapping instead
                fd = None
        self.fd = fd
        self.memory = mmap.mmap(-1 if fd is None else fd, count * size)
        self.bytes = np.frombuffer(self.memory, dtype=np.uint8)
        self._free = list(range(count - 1, -1, -1))

    def __reduce__(self) -> tuple:
        """Pickled for a fork server's worker: the file passes as a duplicated descriptor.

        Raises:
            pickle.PicklingError: the memory is an anonymous mapping (no ``memfd_create``),
                which only forked processes can share.
        """
        import pickle
        from multiprocessing.reduction import DupFd

        if self.fd is None:
            raise pickle.PicklingError("these slots can only be shared with forked workers")
        return (_attach, (DupFd(self.fd), self.count, self.size))

    def for_workers(self, start_method: str) -> Slots | None:
        """These slots, if workers started by ``start_method`` can share them, else None.

        An anonymous mapping (no ``memfd_create``) reaches forked workers only; workers
        without slots send their pixels through the pipes.
        """
        return self if start_method == "fork" or self.fd is not None else None

    @property
    def in_use(self) -> int:
        """Slots taken and not yet given back."""
        return self.count - len(self._free)

    def take(self) -> int | None:
        """A free slot, now taken, or None when every slot is in use."""
        return self._free.pop() if self._free else None

    def free(self, slot: int | None) -> None:
        """Give ``slot`` back (None: nothing was taken)."""
        if slot is not None:
            self._free.append(slot)

    def put(self, slot: int, array: np.ndarray, offset: int = 0) -> SlotRef | None:
        """Copy ``array`` into ``slot`` at ``offset``; its reference, or None if it won't fit."""
        array = np.asarray(array)
        start = -(-offset // ALIGN) * ALIGN
        if start + array.nbytes > self.size:
            return None
        ref = SlotRef(slot, start, tuple(array.shape), array.dtype.str)
        np.copyto(self.get(ref), array, casting="no")
        return ref

    def get(self, ref: SlotRef) -> np.ndarray:
        """The array ``ref`` refers to, as a view of the shared memory (no copy)."""
        begin = ref.slot * self.size + ref.offset
        raw = self.bytes[begin : begin + ref.nbytes]
        return raw.view(np.dtype(ref.dtype)).reshape(ref.shape)

    def end_of(self, ref: SlotRef) -> int:
        """The first byte after ``ref``'s array in its slot (where the next one may go)."""
        return ref.offset + ref.nbytes


def _attach(fd: Any, count: int, size: int) -> Slots:
    """The :class:`Slots` of a descriptor received from the batch job's process."""
    return Slots(count, size, fd.detach())


def resolve(value: Any, slots: Slots | None) -> Any:
    """``value``, or the array it refers to when it is a :class:`SlotRef` (a view)."""
    if isinstance(value, SlotRef):
        if slots is None:
            raise RuntimeError(f"{value} refers to shared slots this process does not have")
        return slots.get(value)
    return value
