"""The batch job's worker processes: the predictor's steps around the forward pass.

Before the network: decode and preprocess (:func:`decode`). After it: post-process, measure
and write the outputs (:func:`safe_finish`). Both run in one pool of worker processes
(``--workers`` > 0), each holding a :class:`~pipeline.inference.predictor.Predictor` without
its network, so decoding, post-processing and PNG/DICOM encoding use every core while the
main process feeds the network; with no workers they run in the main process and a thread.

The network keeps every core's thread and the workers run at the lowest scheduling priority
(:data:`WORKER_NICENESS`): on a CPU they fill the gaps between forward passes instead of
taking cores from them, and when they fall behind the network waits for their inputs and
they get the cores. On 2 cores this ran 512² radiographs ~20 % faster than one network
thread beside two equal-priority workers (README, *Throughput*). With the network on a GPU
the main process mostly waits and the workers have the CPU to themselves.

A worker writes an image's files durably (each fsync'ed before its rename) but leaves their
folders' fsync to the journal, once per batch; where its fsyncs have been slow (a network
share) it writes the files on threads, so they wait for the disk together
(:mod:`pipeline.io.atomic`).

Pixels pass between the batch job's process and its workers through shared memory
(:mod:`pipeline.inference.slots`: :func:`stash_pixels`), the rest through the pool's pipes.

Workers are forked from the batch job's process and inherit its imports and predictor; once
the network has initialised CUDA, pools are forked by a fork server instead
(:func:`start_method`). Either way a worker ends with the batch job's process, however that
dies (:func:`die_with_parent`, :func:`die_with`).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.enums import Status, StrEnum
from pipeline.inference.outputs import Context, row, write_outputs
from pipeline.inference.slots import Slots, resolve
from pipeline.inference.timing import Stopwatch, count_whole_process
from pipeline.io.archives import stage
from pipeline.io.atomic import concurrent_writes, deferred_folder_syncs
from pipeline.io.dicomweb import fetch_instance
from pipeline.io.discovery import ArchiveMember, RemoteInstance, signature_of
from pipeline.io.errors import OutputError


def finish(
    path: Path, relative: Path, decoded: dict[str, Any], ctx: Context, predictor: Any
) -> tuple[dict, dict]:
    """Post-process one image's logits with ``predictor`` and write its outputs.

    Args:
        path: the input file.
        relative: its path under its input folder (names the outputs).
        decoded: :func:`decode`'s output with the ``logits`` attached.
        ctx: output settings.
        predictor: a :class:`~pipeline.inference.predictor.Predictor` (network not needed).

    Returns:
        ``(report row, wall and CPU seconds per stage)`` (:class:`~.timing.Stopwatch`). The
        row's ``folders`` lists the folders of its outputs, whose fsync is left to the
        journal (:meth:`~pipeline.inference.report.Journal.record`): one per batch. Where
        fsyncs have been slow the files are written on threads
        (:func:`~pipeline.io.atomic.concurrent_writes`); each is durable before this returns.
    """
    clock = Stopwatch()
    pred = predictor.postprocess(decoded["item"], decoded["logits"])
    clock.lap("postprocess")
    with deferred_folder_syncs() as folders, concurrent_writes():
        out = write_outputs(path, relative, pred, decoded.get("original"), ctx, clock)
    clock.lap("write")  # waiting for the last files
    out["folders"] = sorted(folders)
    return out, clock.stages


#: ``errno`` values that say the environment failed, not the input: the batch stops.
ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ENOMEM, errno.EMFILE, errno.ENFILE}
)


def safe_finish(
    path: Path, relative: Path, decoded: dict[str, Any], ctx: Context, predictor: Any
) -> tuple[dict, dict]:
    """:func:`finish`; errors of one image become a ``failed`` row to retry, never a stop.

    The row carries ``retry``: the batch reports it but does not journal it, so a rerun tries
    the image again (a bug fixed or memory freed meanwhile must not leave it failed for good).

    Raises:
        OutputError: the disk is full, read-only or failing, or memory ran out: the batch
            must stop, since every following image would fail the same way.
    """
    try:
        return finish(path, relative, decoded, ctx, predictor)
    except MemoryError as err:
        raise OutputError(str(ctx.out_dir), f"out of memory while finishing {path}") from err
    except OSError as err:
        if err.errno in ENVIRONMENT_ERRNOS:
            raise OutputError(str(ctx.out_dir), f"{err.strerror} ({err.filename or path})") from err
        return _retry_row(path, err), {}
    except Exception as err:  # one bad output must not stop the batch; the reason is reported
        return _retry_row(path, err), {}


def retry_row(path: Path, reason: str, status: str = Status.FAILED.value) -> dict[str, Any]:
    """A report row the batch reports but does not journal: the next run tries it again."""
    return {**row(path, status, f"{reason} (tried again on the next run)"), "retry": True}


def _retry_row(path: Path, err: Exception) -> dict[str, Any]:
    return retry_row(path, f"writing outputs: {type(err).__name__}: {err}")


class KeepImage(StrEnum):
    """Which copy of the decoded image a decoded item keeps for after the network."""

    NONE = "none"
    UINT8 = "uint8"  # what the overlay draws, a quarter of float32's memory
    FLOAT = "float"  # the image itself, as the TB inputs need for 12-16-bit data


def decode(
    path: Path,
    sidecar: bool,
    keep: KeepImage,
    predictor: Any,
    member: ArchiveMember | None = None,
    remote: RemoteInstance | None = None,
) -> dict[str, Any]:
    """Decode and preprocess one file; errors become an ``error`` entry, never a raise.

    A ``member`` of a ZIP archive is first written to ``path``
    (:func:`~pipeline.io.archives.stage`; a TAR's is there already, written by its archive's
    stream); the batch removes it once its row is journalled.
    A ``remote`` instance is first fetched to ``path`` unless there (the batch's prefetch,
    :class:`~pipeline.io.dicomweb.Prefetch`, has usually put it there; else
    :func:`~pipeline.io.dicomweb.fetch_instance`; its signature is its WADO-RS URL).

    Returns:
        ``item`` (the preprocessed dictionary), ``original`` (the decoded image, as ``keep``
        says), ``stages`` (wall and CPU seconds of decode and preprocess), ``start``; or
        ``error`` (status, reason) with ``source`` (the file's
        :func:`~pipeline.io.images.file_signature` before it was read, so a file completed
        or replaced since is tried again; a member's own signature) and, where the file
        could not be opened at all, ``retry``.
    """
    from pipeline.io.errors import InputError
    from pipeline.io.png import to_uint8

    clock = Stopwatch()
    out: dict[str, Any] = {"start": clock.started, "stages": clock.stages}
    if sidecar:
        out["error"] = (Status.SKIPPED.value, "not an image file (by its suffix)")
        return out
    try:
        # before reading: a copy still growing differs later
        out["source"] = signature_of(path, member, remote)
        if remote is not None:
            fetch_instance(remote, path)
        if member is not None and not member.streamed:  # a TAR's: its stream wrote it
            stage(member, path)
        loaded = predictor.load(path)
        if keep is KeepImage.FLOAT:
            out["original"] = loaded["image"].numpy()[0].astype("float32", copy=False)
        elif keep is KeepImage.UINT8:
            out["original"] = to_uint8(loaded["image"].numpy()[0])
        clock.lap("decode")
        out["item"] = predictor.preprocess(loaded)
        clock.lap("preprocess")
    except InputError as err:
        out["error"] = (err.status, err.reason)
        out["retry"] = err.transient
    except Exception as err:  # any decoder failure is reported, not fatal
        out["error"] = (Status.FAILED.value, f"{type(err).__name__}: {err}")
    return out


# --- worker processes ---------------------------------------------------------------------

_WORKER: dict[str, Any] = {}
#: Images at least this large (pixels, about 1448²) count towards :func:`trim_now_and_then`;
#: smaller ones leave too little behind to be worth the ~1.5 ms a trim costs.
LARGE_IMAGE = 2**21
#: A worker trims its heap once per this many steps (decode or finish) of large images.
TRIM_EVERY = 8


def release_memory() -> None:
    """Give freed heap pages back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    Decoding a large radiograph allocates and frees tens of megabytes per image; glibc keeps
    the freed pages, fragmented, so a long-lived process grows with the number of large images
    it has seen. Trimming every few large images (:func:`trim_now_and_then`) keeps its memory
    flat.
    """
    trim = _WORKER.get("malloc_trim", False)
    if trim is False:
        trim = _WORKER["malloc_trim"] = _find_malloc_trim()
    if trim is not None:
        trim(0)


def trim_now_and_then(every: int = TRIM_EVERY) -> None:
    """:func:`release_memory` at every ``every``-th call in this process.

    Trimming after each step of each large image handed back the pages the next image
    needed, which it then faulted in again, zero-filled: at 2048² JPEG 2000 every image
    paid ~5-7 ms of CPU for it (53 against 59-61 ms outside the network, three alternated
    runs, README *Throughput*). Trimming at every 8th step bounds what a worker keeps to a
    few images' worth (the workers are also replaced every
    :data:`pipeline.inference.segment.RECYCLE_EVERY` images each).
    """
    count = _WORKER["large_steps"] = _WORKER.get("large_steps", 0) + 1
    if count % every == 0:
        release_memory()


#: glibc ``mallopt`` parameters (malloc.h) and the values :func:`keep_freed_memory` sets.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_BLOCKS_UP_TO, KEEP_HEAP_TOP = 32 * 2**20, 512 * 2**20


def keep_freed_memory() -> bool:
    """Make glibc reuse freed memory instead of returning it to the kernel at once.

    The network's feature maps (up to 32 MiB each at the CPU micro-batch) are allocated and
    freed on every forward pass; by default glibc maps blocks that large afresh each time,
    and the kernel zero-fills every page again (a third of a forward pass, measured). With
    the mmap threshold fixed at 32 MiB and the heap kept up to 512 MiB, the same pages are
    reused; the process's memory is the same from one batch to the next. Returns whether
    the settings took (False off glibc).
    """
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(M_MMAP_THRESHOLD, KEEP_BLOCKS_UP_TO) and mallopt(M_TRIM_THRESHOLD, KEEP_HEAP_TOP)
    )


def _find_malloc_trim() -> Any:
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


def die_with_parent(parent: int, poll_seconds: float = 1.0) -> None:
    """End this process when ``parent`` dies, however it dies (``kill -9``, the OOM killer).

    Linux delivers SIGKILL at the parent's death (``PR_SET_PDEATHSIG``); elsewhere, and as a
    second guard, a daemon thread checks every ``poll_seconds`` that the parent is still ours.
    """
    import signal
    import threading

    _set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="lungseg-parent-watch", daemon=True).start()


def die_with(process: int, poll_seconds: float = 1.0) -> None:
    """End this process when ``process``, not its parent, dies, however it dies.

    For a worker forked by the fork server (:func:`start_method`): its parent is the
    server, which lives as long as any process it forked holds the server's "alive" pipe,
    its workers included, so it cannot be what they die with. A daemon thread waits on a
    pidfd of ``process`` (Linux 5.3 and later: woken the moment it exits) or, elsewhere,
    checks every ``poll_seconds`` that it still exists.
    """
    import threading

    try:
        handle = os.pidfd_open(process)
    except ProcessLookupError:  # already gone
        os._exit(1)
    except (AttributeError, OSError):  # not Linux 5.3+: poll
        handle = None

    def watch() -> None:
        if handle is not None:
            import select

            select.select([handle], [], [])  # readable once the process has exited
        else:
            while _exists(process):
                time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="lungseg-parent-watch", daemon=True).start()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return True


def _set_parent_death_signal(signum: int) -> None:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signum)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the watcher thread alone
        pass


def share_with_forked_workers(predictor: Any) -> None:
    """Let workers forked from now on use ``predictor`` instead of parsing the bundle again.

    A forked worker inherits the parent's memory: its pre- and post-processing are already
    built (and its network, shared copy-on-write, is never touched there).
    """
    _WORKER["inherited"] = predictor


#: What the fork server imports once for the workers it forks (:func:`start_method`).
FORKSERVER_PRELOAD = ("pipeline.inference.worker_preload",)


def start_method(cuda_initialized: bool) -> str:
    """How the batch job starts a pool of workers: ``fork``, or ``forkserver`` once CUDA is up.

    Forking copies the parent's memory: the workers inherit what is imported and built
    (:func:`share_with_forked_workers`). A process that has initialised CUDA must not be
    forked (the CUDA runtime does not survive it), so pools started after the network is
    on the GPU (each replacement, :class:`~pipeline.inference.segment.PoolRotation`) are
    forked by a fork server instead: one fresh interpreter, started once
    (:func:`start_forkserver`), that has imported :data:`FORKSERVER_PRELOAD`. Spawning each
    worker afresh instead took ~4 s per pool on 2 cores (an ~8 s stall at each replacement,
    measured with 512² images); a worker forked from the server only builds its predictor.
    """
    return "forkserver" if cuda_initialized else "fork"


def start_forkserver() -> None:
    """Start the fork server with :data:`FORKSERVER_PRELOAD` (no-op once it runs).

    It imports them in its own process, in parallel with the batch job, so the first pool
    that needs it does not wait for the imports.
    """
    import multiprocessing
    import multiprocessing.forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(list(FORKSERVER_PRELOAD))
    multiprocessing.forkserver.ensure_running()


#: ``nice`` increment of the worker processes: the network's threads come first.
WORKER_NICENESS = 19


def lower_priority(increment: int = WORKER_NICENESS) -> None:
    """Lower this process's scheduling priority (ignored where the OS has no ``nice``)."""
    with contextlib.suppress(AttributeError, OSError):  # not POSIX: normal priority
        os.nice(increment)


def lower_thread_priority() -> None:
    """Lower the calling thread's priority as a worker process's (Linux only).

    Linux keeps a nice value per thread; elsewhere ``nice`` would lower the whole process,
    network included, so the thread keeps its priority there.
    """
    if sys.platform.startswith("linux"):
        lower_priority()


def init_worker(
    bundle: str,
    overrides: dict[str, Any],
    parent: int,
    via_server: bool = False,
    slots: Slots | None = None,
) -> None:
    """Pool initializer: die with the batch job, lowest priority, one thread, no network.

    A worker forked after :func:`share_with_forked_workers` uses the parent's predictor.

    Args:
        bundle: the bundle, for a worker that did not inherit the predictor.
        overrides: its config overrides.
        parent: the batch job's process, which this worker must not outlive.
        via_server: forked by the fork server (:func:`start_method`), not by ``parent``.
        slots: the shared memory pixels pass through (:mod:`pipeline.inference.slots`).
    """
    import torch

    _WORKER["slots"] = slots

    if via_server:
        die_with(parent)
    else:
        die_with_parent(parent)
    torch.set_num_threads(1)
    lower_priority()
    count_whole_process()
    inherited = _WORKER.pop("inherited", None)
    if inherited is None:
        from pipeline.inference.predictor import Predictor

        inherited = Predictor(bundle, "cpu", overrides, network=False)
    _WORKER["predictor"] = inherited


def to_wire(decoded: dict[str, Any], pixels: bool = True) -> dict[str, Any]:
    """``decoded`` with every tensor as a numpy array, for sending to another process.

    Pickling a torch tensor between processes moves its storage to shared memory and passes
    a file descriptor over a socket (about ten system calls and a connection per tensor);
    a numpy array is copied through the pipe, far cheaper for the sizes sent here.

    Args:
        decoded: :func:`decode`'s output (with ``logits`` after the network).
        pixels: send the preprocessed image's pixels; without them (for finishing: the
            post-processing reads only the image's metadata) an empty array stands in.
    """
    import torch

    def plain(value: Any) -> Any:
        return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value

    out = dict(decoded)
    if "item" in out and "image_meta" not in out["item"]:  # (already sent: as it is)
        image = out["item"]["image"]
        meta = {k: plain(v) for k, v in getattr(image, "meta", {}).items()}
        out["item"] = {**out["item"], "image": plain(image), "image_meta": meta}
    if not pixels and "item" in out:
        out["item"] = {**out["item"], "image": np.zeros((1, 0, 0), dtype=np.float32)}
    if "logits" in out:
        out["logits"] = plain(out["logits"])
    return out


def from_wire(decoded: dict[str, Any]) -> dict[str, Any]:
    """Undo :func:`to_wire`: the item's image a MetaTensor again, the logits a tensor."""
    import torch
    from monai.data import MetaTensor

    out = dict(decoded)
    if "item" in out and "image_meta" in out["item"]:
        item = dict(out["item"])
        meta = item.pop("image_meta")
        for key in ("affine", "original_affine"):
            if isinstance(meta.get(key), np.ndarray):
                meta[key] = torch.from_numpy(meta[key])
        item["image"] = MetaTensor(torch.from_numpy(item["image"]), meta=meta)
        out["item"] = item
    if isinstance(out.get("logits"), np.ndarray):
        out["logits"] = torch.from_numpy(out["logits"])
    return out


def stash_pixels(wire: dict[str, Any], slots: Slots, slot: int) -> dict[str, Any]:
    """``wire`` (:func:`to_wire`'s) with its network input and kept image left in ``slot``.

    Each array that fits is replaced by its :class:`~pipeline.inference.slots.SlotRef`
    (the input first, the kept image after it); one that does not stays in ``wire``.
    """
    out, offset = dict(wire), 0
    item = out.get("item")
    if item is not None and isinstance(item.get("image"), np.ndarray):
        ref = slots.put(slot, item["image"])
        if ref is not None:
            out["item"], offset = {**item, "image": ref}, slots.end_of(ref)
    if isinstance(out.get("original"), np.ndarray):
        out["original"] = slots.put(slot, out["original"], offset) or out["original"]
    return out


def decode_in_worker(
    path: Path,
    sidecar: bool,
    keep: KeepImage,
    slot: int | None = None,
    member: ArchiveMember | None = None,
    remote: RemoteInstance | None = None,
) -> dict[str, Any]:
    """:func:`decode` with the preprocessing loaded by :func:`init_worker`, for the pipe.

    Args:
        path: the input file.
        sidecar: skip it (not an image file, by its suffix).
        keep: which copy of the decoded image to keep for finishing.
        slot: the shared slot its pixels go to (:func:`stash_pixels`; None: the pipe).
        member: the archive member ``path`` holds (a ZIP's written there first; None: a
            file on disk).
        remote: the DICOMweb instance to fetch to ``path`` first.
    """
    decoded = decode(path, sidecar, keep, _WORKER["predictor"], member, remote)
    if _is_large(decoded):
        trim_now_and_then()
    wire = to_wire(decoded)
    slots = _WORKER.get("slots")
    return wire if slot is None or slots is None else stash_pixels(wire, slots, slot)


def finish_in_worker(
    path: Path, relative: Path, decoded: dict[str, Any], ctx: Context
) -> tuple[dict, dict]:
    """:func:`safe_finish` with the post-processing loaded by :func:`init_worker`.

    The logits and the kept image may be in the shared slots (read there, not copied).
    """
    slots = _WORKER.get("slots")
    decoded = {k: resolve(v, slots) for k, v in decoded.items()}
    decoded = from_wire(decoded)
    result = safe_finish(path, relative, decoded, ctx, _WORKER["predictor"])
    if _is_large(decoded):
        trim_now_and_then()
    return result


def _is_large(decoded: dict[str, Any]) -> bool:
    """Whether the decoded image had :data:`LARGE_IMAGE` pixels or more (or is unknown)."""
    pixels = decoded_pixels(decoded)
    return pixels is None or pixels >= LARGE_IMAGE


def decoded_pixels(decoded: dict[str, Any]) -> int | None:
    """The pixels of the image :func:`decode` decoded (before or after :func:`to_wire`).

    Returns:
        Rows x columns as stored in the file, or None when it did not decode.
    """
    item = decoded.get("item")
    meta = item.get("image_meta", getattr(item["image"], "meta", {})) if item else {}
    shape = meta.get("original_shape")
    return None if shape is None else math.prod(shape)
