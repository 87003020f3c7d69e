"""``lungseg segment``: stream a folder of radiographs through the predictor.

A pool of worker processes runs the predictor's steps around the network
(:mod:`pipeline.inference.workers`): decoding and preprocessing ahead of it and, after it,
post-processing and writing the outputs (:mod:`pipeline.inference.outputs`); the main
process batches and runs the network. The workers are as many as the CPUs the job may use
(:func:`resolve_workers`) and are replaced by a fresh pool every so many images (small ones
counting less: :func:`recycle_weight`) without the stream draining (:class:`PoolRotation`).
Bounded queues keep memory flat whatever the number of inputs. Each finished input is
journalled, so a rerun skips it (one that failed only while its file stays as it was; one
that could not be opened, or whose outputs could not be written, is not journalled); every
file is written atomically and durably, the folders they went into fsync'ed once per batch
before the batch's journal lines (:meth:`~pipeline.inference.report.Journal.sync`).
``dicomweb+http(s)://`` inputs are the instances QIDO-RS finds, each fetched into
``OUT/dicomweb`` a few ahead of the batch (:func:`prefetch`, :mod:`pipeline.io.dicomweb`)
and removed once journalled, and, with ``store_back``, their SEG objects stored back as the
batch goes (:class:`JobStoreBack`); ZIP
and TAR archives, given or found in input folders, are read a member at a time
(:mod:`pipeline.io.archives`): each member written to ``OUT/archives`` just before it is
decoded (a ZIP's by the worker, a TAR's by the archive's one stream, :func:`tar_streams`)
and removed once journalled.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.enums import OutputFormat, Status
from pipeline.inference.outputs import Context, load_standard_tables, output_path, row
from pipeline.inference.predictor import Predictor
from pipeline.inference.report import Journal, tallies, write_reports, write_summary
from pipeline.inference.slots import SlotRef, Slots
from pipeline.inference.timing import Stopwatch, split
from pipeline.inference.workers import (
    LARGE_IMAGE,
    KeepImage,
    decode,
    decode_in_worker,
    decoded_pixels,
    finish_in_worker,
    init_worker,
    keep_freed_memory,
    lower_thread_priority,
    retry_row,
    safe_finish,
    share_with_forked_workers,
    start_forkserver,
    start_method,
    to_wire,
)
from pipeline.io.archives import ArchiveError, TarStream
from pipeline.io.dicomweb import Prefetch
from pipeline.io.discovery import ArchiveMember, InputFile, iter_inputs
from pipeline.lean import resume_collector

DEFAULT_FORMATS = (OutputFormat.SEG, OutputFormat.MASK, OutputFormat.OVERLAY)
#: Worker processes are replaced after this many images per worker: whatever a decoder leaks
#: or leaves fragmented cannot pile up over an archive (:class:`PoolRotation`). An image
#: smaller than :data:`RECYCLE_PIXELS` counts as its share of that size
#: (:func:`recycle_weight`).
RECYCLE_EVERY = 128
#: Images of at least this many pixels (about 1448², the workers' large images) count fully
#: towards :data:`RECYCLE_EVERY`.
RECYCLE_PIXELS = LARGE_IMAGE
#: The least an image counts towards :data:`RECYCLE_EVERY` (a 362² image and smaller).
MIN_RECYCLE_WEIGHT = 1 / 16
#: Stages timed per run (``summary.json`` → ``this_run.stage_seconds``, wall-clock, and
#: ``stage_cpu_seconds``: :mod:`pipeline.inference.timing`).
STAGES = (
    "decode",
    "preprocess",
    "forward",
    "postprocess",
    "seg_encode",
    "write",
    "tb_inputs",
    "tb",
)


#: ``--workers auto`` starts at most this many worker processes (each keeps its own decoded
#: images and output buffers: private memory ~70 MiB at 2048² JPEG 2000, ~95 MiB at
#: 3000 x 2500, measured with 2 and 4 workers).
MAX_AUTO_WORKERS = 16


def resolve_workers(
    workers: int | str,
    device: str | Any,
    cpus: int | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """The number of worker processes ``workers`` (``"auto"`` or a count >= 0) means on ``device``.

    ``auto`` is one worker per usable CPU (:func:`pipeline.cpus.usable_cpus`: the affinity
    mask and the cgroup's CPU quota) when the network runs on the CPU, where the workers run
    at the lowest priority and take only what the network leaves; one fewer beside a GPU,
    where the main process needs a core to feed it. Under torchrun the node's CPUs are
    shared by its ``LOCAL_WORLD_SIZE`` ranks (a Slurm task has its own CPUs already: its
    affinity mask). At least 1, at most :data:`MAX_AUTO_WORKERS`. On 2 CPUs that is 2 (the
    former fixed default).

    Raises:
        ValueError: neither ``auto`` nor a whole number >= 0 (the value quoted).
    """
    if str(workers).strip().lower() != "auto":
        try:
            count = int(str(workers))
        except ValueError:
            count = -1
        if count < 0:
            raise ValueError(f"--workers {workers!r} must be auto or a whole number >= 0")
        return count
    if cpus is None:
        from pipeline.cpus import usable_cpus

        cpus = usable_cpus()
    ranks = int((os.environ if env is None else env).get("LOCAL_WORLD_SIZE", 1))
    cpus = max(1, cpus // max(1, ranks))
    on_gpu = str(getattr(device, "type", device)).startswith("cuda")
    return max(1, min(MAX_AUTO_WORKERS, cpus - 1 if on_gpu else cpus))


def recycle_weight(decoded: dict[str, Any]) -> float:
    """How far one decoded image takes its pool towards replacement (:data:`RECYCLE_EVERY`).

    1 for an image of :data:`RECYCLE_PIXELS` or more, or one that did not decode; a smaller
    image its share of that, at least :data:`MIN_RECYCLE_WEIGHT`. What a decoder leaks or
    leaves fragmented grows with the pixels it decodes, while each replacement costs the
    same: the new workers are forked (the job's process copies the pages it writes next),
    copy the pages they write and build their SEG templates again. Replacing a 512² pool
    every 128 images per worker took ~0.4 ms of the job's process's CPU per image (1000
    images, the network stood in for, 4 alternated runs).
    """
    pixels = decoded_pixels(decoded)
    if pixels is None:
        return 1.0
    return min(1.0, max(MIN_RECYCLE_WEIGHT, pixels / RECYCLE_PIXELS))


def auto_shard(env: dict[str, str] | None = None) -> tuple[int, int]:
    """``(I, N)`` from a Slurm array task or torchrun's ranks (``--shard auto``).

    Slurm: task ``SLURM_ARRAY_TASK_ID`` of ``SLURM_ARRAY_TASK_COUNT`` (from
    ``SLURM_ARRAY_TASK_MIN`` in steps of ``SLURM_ARRAY_TASK_STEP``); torchrun: ``RANK`` of
    ``WORLD_SIZE``.

    Raises:
        ValueError: neither is set (the variables named).
    """
    env = dict(os.environ if env is None else env)
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first, step = (
            int(env.get("SLURM_ARRAY_TASK_MIN", 0)),
            int(env.get("SLURM_ARRAY_TASK_STEP", 1)),
        )
        index = (int(env["SLURM_ARRAY_TASK_ID"]) - first) // max(step, 1)
        return index + 1, int(env["SLURM_ARRAY_TASK_COUNT"])
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]) + 1, int(env["WORLD_SIZE"])
    raise ValueError(
        "--shard auto: neither SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT (a Slurm array job) "
        "nor RANK/WORLD_SIZE (torchrun) is set"
    )


def rank_device(device: str, env: dict[str, str] | None = None) -> str:
    """``auto`` under torchrun with CUDA becomes ``cuda:LOCAL_RANK`` (one GPU per local rank)."""
    env = dict(os.environ if env is None else env)
    if device != "auto" or "LOCAL_RANK" not in env:
        return device
    import torch

    return f"cuda:{int(env['LOCAL_RANK'])}" if torch.cuda.is_available() else device


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` (1 <= I <= N) to ``(I, N)``, ``"auto"`` by :func:`auto_shard`; None stays None.

    Raises:
        ValueError: not of that form, quoting the value.
    """
    if text is None:
        return None
    if text == "auto":
        i, n = auto_shard()
        text = f"{i}/{n}"
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError as err:
        raise ValueError(f"--shard {text!r} must be I/N with integers, e.g. 1/4") from err
    if not 1 <= i <= n:
        raise ValueError(f"--shard {text!r}: I must be between 1 and N ({n})")
    return i, n


def in_shard(relative: Path, shard: tuple[int, int] | None) -> bool:
    """Whether an input belongs to shard ``(I, N)``: a stable hash of its relative path."""
    if shard is None:
        return True
    digest = hashlib.sha1(relative.as_posix().encode()).digest()
    return int.from_bytes(digest[:8], "big") % shard[1] == shard[0] - 1


@dataclass
class Job:
    """One input and where its outputs go."""

    file: InputFile
    key: str
    collides_with: str | None = None

    def output(self, out_dir: Path, fmt: OutputFormat) -> Path:
        """Where this input's ``fmt`` output goes under ``out_dir``."""
        return output_path(out_dir, self.file.relative, fmt)


def plan(inputs: Sequence[str | os.PathLike], shard: tuple[int, int] | None) -> list[Job]:
    """The inputs of this shard, in order; two inputs mapping to one output name are marked."""
    jobs, owners = [], {}
    for found in iter_inputs(inputs):
        if not in_shard(found.relative, shard):
            continue
        owner = owners.setdefault(found.output(Path(), "").as_posix(), str(found.path))
        jobs.append(
            Job(found, str(found.path.resolve()), None if owner == str(found.path) else owner)
        )
    return jobs


@dataclass
class Summary:
    """Counts and timing of a batch run."""

    counts: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in Status})
    processed: int = 0
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def add_all(self, stages: dict[str, float]) -> None:
        """Accumulate a :class:`~.timing.Stopwatch`'s wall and CPU seconds per stage.

        Summed over images, workers and threads; a stage's CPU seconds are the work it
        did, its wall seconds include waiting for a core, the disk or its inputs.
        """
        wall, cpu = split(stages)
        for stage, seconds in wall.items():
            self.stages[stage] += seconds
        for stage, seconds in cpu.items():
            self.cpu[stage] += seconds


class Segmenter:
    """Runs jobs through a :class:`~pipeline.inference.predictor.Predictor`, writes outputs.

    Args:
        model: the predictor.
        out_dir: output folder.
        formats: what to write per input.
        journal: the run's journal (finished inputs are skipped).
        batch_size: images per forward pass.
        workers: worker processes for decoding and finishing (0: all in this process).
        progress: show a progress bar with rate and ETA.
        tb_model: a scorer that adds a TB score to each row (``inputs``, ``scores``,
            ``threshold``, ``notice``: :class:`pipeline.tb.model.TBModel`).
        on_durable: called with the jobs journalled since, after each sync of the journal
            (their rows durable): the store-back (:class:`JobStoreBack`).
    """

    def __init__(
        self,
        model: Predictor,
        out_dir: Path,
        formats: Sequence[OutputFormat],
        journal: Journal,
        batch_size: int = 8,
        workers: int = 2,
        progress: bool = True,
        tb_model: Any = None,
        on_durable: Callable[[list[Job]], None] | None = None,
    ):
        self.model, self.out_dir, self.formats = model, out_dir, tuple(formats)
        self.on_durable, self._journalled = on_durable, []
        self.tb_model, self._tb_pending = tb_model, []
        self.journal, self.batch_size, self.workers = journal, batch_size, workers
        #: Images decoded ahead of the network, and finishing behind it, at most: enough to
        #: keep every worker busy, bounded so memory stays flat.
        self.depth = max(2 * batch_size, 2 * workers)
        #: Shared memory for the pixels of the images in flight (decoding ahead, in the
        #: batch, finishing behind: at most 2 depths and a batch), made with the first pool.
        self.slots: Slots | None = None
        self._slot_of: dict[str, int | None] = {}
        #: The TAR archives' streams of the run (:func:`tar_streams`), by :func:`stream_key`.
        self._streams: dict[tuple[Path, Path], TarStream] = {}
        #: The DICOMweb instances' fetches ahead of the batch (:func:`prefetch`).
        self._prefetch = Prefetch([], 0)
        self.progress = progress
        self.summary = Summary()
        self.retry_rows: dict[str, dict[str, Any]] = {}
        #: What the next image is expected to count towards replacing the workers: the
        #: last decoded image's :func:`recycle_weight` (a folder's images tend to be alike).
        self.weight = 1.0
        self.context = Context(
            out_dir=out_dir,
            formats=self.formats,
            identity=model.identity,
            started=journal.header["started"],
            tb_inputs=None if tb_model is None else tb_model.inputs,
        )

    def run(self, jobs: list[Job]) -> Summary:
        """Process every job not yet in the journal; return this run's counts."""
        from tqdm import tqdm

        # a failed or skipped input is tried again when its file has changed since
        todo = [j for j in jobs if not self.journal.done(j.key, j.file.signature)]
        _remove_staged([j for j in jobs if j.file.passing], set(map(id, todo)))
        if self.journal.resumed:
            self._remove_stale_temporaries(todo)
        start = time.perf_counter()
        bar = tqdm(total=len(todo), unit="img", disable=not self.progress, dynamic_ncols=True)
        every = RECYCLE_EVERY * self.workers  # 0 (no workers): one thread, never replaced
        if self.workers and self.model.device.type == "cuda":
            start_forkserver()  # its imports run beside the first pool's work (start_method)
        if self.workers:
            self.slots = Slots(2 * self.depth + self.batch_size + 2)
        self._streams = tar_streams(todo, self.depth)
        self._prefetch = prefetch(todo, self.depth)
        try:
            with PoolRotation(self._pool, every, self._forks) as pools:
                self._stream(pools, todo, bar)
        finally:
            for stream in self._streams.values():
                stream.close()
            self._prefetch.close()
        bar.close()
        self.summary.seconds = time.perf_counter() - start
        return self.summary

    def _stream(self, pools: PoolRotation, jobs: list[Job], bar: Any) -> None:
        """Decode, run the network on and finish ``jobs``, in order, journalling each."""
        pending: list[tuple[Job, Future]] = []
        for batch in self._batches(pools, jobs):
            for job, decoded in self._forward(batch):
                pending.append((job, self._submit(pools.current, job, decoded)))
            while len(pending) > self.depth:  # bounded: memory stays flat
                self._record(*pending.pop(0))
                bar.update()
            self._sync()  # one fsync per batch, not per input
        for job, future in pending:
            self._record(job, future)
            bar.update()
        self._flush_tb()
        self._sync()

    def _sync(self) -> None:
        """Make the journal durable; hand the jobs journalled since to ``on_durable``."""
        self.journal.sync()
        if self.on_durable is not None and self._journalled:
            self.on_durable(self._journalled)
        self._journalled = []

    @staticmethod
    def _forks() -> bool:
        """Whether the next pool is forked from this process (milliseconds to start).

        Such a pool replaces the old one once that has finished (memory stays that of one
        pool: at 512² the overlap raised the peak by ~230 MiB and gained nothing measurable
        on 2 cores); a pool from the fork server (once CUDA is up) starts while the old one
        finishes, so the GPU does not wait for it.
        """
        import torch

        return start_method(torch.cuda.is_initialized()) == "fork"

    def _pool(self) -> Executor:
        """Worker processes for decoding and finishing (a thread when workers is 0).

        What forked workers inherit (highdicom's tables of the standard) is built first,
        then the collector restarts with all of it frozen (:func:`~pipeline.lean.resume_collector`).
        """
        import multiprocessing

        import torch

        method = start_method(torch.cuda.is_initialized())
        if self.workers and method == "fork":  # workers inherit what is imported and built here
            share_with_forked_workers(self.model)
            if OutputFormat.SEG in self.formats:  # loaded once here, not in every worker
                load_standard_tables()
        resume_collector()  # start-up is over; frozen before the workers fork (lean.py)
        if not self.workers:
            return ThreadPoolExecutor(1, thread_name_prefix="lungseg-finish")
        if method != "fork":  # forked by the fork server; they watch this process (die_with)
            start_forkserver()
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context(method),
            initializer=init_worker,
            initargs=(
                str(self.model.bundle),
                self.model.overrides,
                os.getpid(),
                method != "fork",
                self.slots.for_workers(method),
            ),
        )

    def _decode(self, pool: Executor, job: Job) -> Future:
        keep = KeepImage.UINT8 if OutputFormat.OVERLAY in self.formats else KeepImage.NONE
        if self.tb_model is not None:  # TB inputs from the float image, as TB training does
            keep = KeepImage.FLOAT
        args = (job.file.path, job.file.is_sidecar, keep)
        if job.collides_with:  # reported as failed without decoding
            args = (job.file.path, True, KeepImage.NONE)
        done: Future = Future()
        member = job.file.member
        if streamed(job):
            try:
                self._streams[stream_key(job)].take(member.key)
            except ArchiveError as err:
                done.set_result(unreadable_member(member, err))
                return done
        if job.file.remote is not None and not args[1]:
            self._prefetch.take(job.file.path)
        if isinstance(pool, ProcessPoolExecutor):
            pixels = not args[1] and self.slots is not None  # a sidecar has none
            slot = self._slot_of[job.key] = self.slots.take() if pixels else None
            return pool.submit(decode_in_worker, *args, slot, member, job.file.remote)
        done.set_result(decode(*args, self.model, member, job.file.remote))
        return done

    def _from_slot(self, decoded: dict[str, Any]) -> dict[str, Any]:
        """``decoded`` with its network input read from the shared slots (a view)."""
        image = decoded.get("item", {}).get("image")
        if not isinstance(image, SlotRef):
            return decoded
        item = {**decoded["item"], "image": self.slots.get(image)}
        return {**decoded, "item": item, "input_ref": image}

    def _logits_to_slot(self, wire: dict[str, Any], decoded: dict[str, Any]) -> dict[str, Any]:
        """``wire`` with its logits written over the network input in the slot, when they fit."""
        where = decoded.get("input_ref")
        if where is None or wire["logits"].nbytes > where.nbytes:
            return wire
        return {**wire, "logits": self.slots.put(where.slot, wire["logits"], where.offset)}

    def _free_slot(self, job: Job) -> None:
        """The slot of ``job``'s pixels is free again (its worker is done with it)."""
        if self.slots is not None:
            self.slots.free(self._slot_of.pop(job.key, None))

    def _batches(self, pools: PoolRotation, todo: list[Job]):
        """Decoded batches, in order, with up to :attr:`depth` images decoding ahead."""
        ahead: list[tuple[Job, Future]] = []
        jobs = iter(todo)
        while True:
            for job in jobs:
                ahead.append((job, self._decode(pools.for_next_image(self.weight), job)))
                if len(ahead) >= self.depth:
                    break
            if not ahead:
                return
            self.model.load_network()  # (once) while the workers decode the first images
            batch, ahead = ahead[: self.batch_size], ahead[self.batch_size :]
            decoded = [(job, self._from_slot(future.result())) for job, future in batch]
            self.weight = recycle_weight(decoded[-1][1])
            yield decoded

    def _remove_stale_temporaries(self, todo: list[Job]) -> None:
        """Delete temporaries a killed run left beside the outputs it was writing.

        And beside the archive members or DICOMweb instances it was writing out.
        """
        for job in todo:
            targets = [job.output(self.out_dir, fmt) for fmt in self.formats]
            passing = job.file.passing
            for target in targets + ([job.file.path] if passing else []):
                if target.parent.is_dir():
                    for tmp in target.parent.glob(f".{target.name}.*.tmp*"):
                        tmp.unlink(missing_ok=True)

    def _forward(self, batch: list[tuple[Job, dict]]) -> list[tuple[Job, dict]]:
        """Run the network on the decoded images of a batch; attach each one's logits."""
        ok = [d for _, d in batch if "error" not in d]
        clock = Stopwatch(whole_process=True)  # the network computes on a pool of threads
        logits = self.model.infer([d["item"] for d in ok]) if ok else []
        clock.lap("forward")
        self.summary.add_all(clock.stages)
        for d, lg in zip(ok, logits, strict=True):
            d["logits"] = lg
        return batch

    def _submit(self, pool: Executor, job: Job, decoded: dict[str, Any]) -> Future:
        done: Future = Future()
        if job.collides_with:
            reason = f"its outputs would overwrite those of {job.collides_with}"
            done.set_result((row(job.file.path, Status.FAILED.value, reason), {}))
        elif "error" in decoded:
            done.set_result((_input_error_row(job.file.path, decoded), {}))
        else:
            self.summary.add_all(decoded["stages"])
            args = (job.file.path, job.file.relative, decoded, self.context)
            if isinstance(pool, ProcessPoolExecutor):
                wire = to_wire(decoded, pixels=False)  # the network has had them
                wire = self._logits_to_slot(wire, decoded)
                wire.pop("input_ref", None)
                args = (job.file.path, job.file.relative, wire, self.context)
                return _timed(pool.submit(finish_in_worker, *args), decoded["start"])
            return _timed(pool.submit(safe_finish, *args, self.model), decoded["start"])
        self._free_slot(job)  # nothing left to finish
        return _timed(done, decoded["start"])

    def _record(self, job: Job, future: Future) -> None:
        result, stages = future.result()
        self._free_slot(job)
        result["seconds"] = round(future.finished_at - future.started_at, 4)
        self.summary.add_all(stages)
        if "tb_input" in result:  # scored with others first (see _flush_tb)
            self._tb_pending.append((job, result))
            if len(self._tb_pending) >= self.batch_size:
                self._flush_tb()
            return
        self._commit(job, result)

    def _flush_tb(self) -> None:
        """Score the rows waiting for a TB score in one batch, then journal them."""
        if not self._tb_pending:
            return
        clock = Stopwatch(whole_process=True)
        scores = self.tb_model.scores([r.pop("tb_input") for _, r in self._tb_pending])
        clock.lap("tb")
        self.summary.add_all(clock.stages)
        for (job, result), score in zip(self._tb_pending, scores, strict=True):
            result.update(
                tb_score=round(float(score), 4),
                tb_flag=int(score >= self.tb_model.threshold),
                tb_note=self.tb_model.notice,
            )
            self._commit(job, result)
        self._tb_pending = []

    def _commit(self, job: Job, result: dict[str, Any]) -> None:
        source = result.pop("source", None)  # the input's signature, for a row that failed
        folders = result.pop("folders", ())  # fsync'ed by the journal's next sync
        passing = job.file.passing
        if passing:  # the row names the member or instance, not its passing copy
            result["path"] = passing.location
        if result.pop("retry", False):  # reported, not journalled: the next run tries again
            self.retry_rows[job.key] = result
        else:
            self.journal.record(job.key, result, sync=False, source=source, folders=folders)
            self._journalled.append(job)
        if passing:  # written out for this image only: the archive or the server keeps it
            job.file.path.unlink(missing_ok=True)
        self.summary.counts[result["status"]] += 1
        self.summary.processed += 1


def tar_streams(todo: list[Job], ahead: int) -> dict[tuple[Path, Path], TarStream]:
    """A stream for each TAR archive with members in ``todo`` to decode (see :class:`TarStream`).

    Keyed by :func:`stream_key`: an archive given under two names is read once for each.

    Args:
        todo: the jobs to run, in order (a TAR's members in the archive's order).
        ahead: members each stream writes out before the batch takes them, at most.
    """
    wanted: dict[tuple[Path, Path], dict[int, Path]] = {}
    for job in filter(streamed, todo):
        wanted.setdefault(stream_key(job), {})[job.file.member.key] = job.file.path
    return {key: TarStream(key[0], paths, ahead) for key, paths in wanted.items()}


def prefetch(todo: list[Job], ahead: int) -> Prefetch:
    """The fetches of the DICOMweb instances in ``todo`` to decode, ahead of the batch.

    Its threads run at the workers' priority (:func:`~.workers.lower_thread_priority`): the
    network's threads come first.
    """
    wanted = [
        (j.file.remote, j.file.path)
        for j in todo
        if j.file.remote is not None and not j.file.is_sidecar and not j.collides_with
    ]
    return Prefetch(wanted, ahead, initializer=lower_thread_priority)


def streamed(job: Job) -> bool:
    """Whether ``job`` decodes a TAR's member, which its archive's stream writes out.

    A sidecar or a job whose outputs collide is reported without decoding: never taken.
    """
    member = job.file.member
    decoded = not job.file.is_sidecar and not job.collides_with
    return member is not None and member.streamed and decoded


def stream_key(job: Job) -> tuple[Path, Path]:
    """The archive of ``job``'s member and the folder its members are written out under."""
    depth = len(PurePosixPath(job.file.member.name).parts)
    return job.file.member.archive, job.file.path.parents[depth - 1]


def unreadable_member(member: ArchiveMember, err: ArchiveError) -> dict[str, Any]:
    """What :func:`~.workers.decode` returns for a member that could not be written out."""
    return {
        "start": time.perf_counter(),
        "stages": {},
        "source": member.signature(),
        "error": (err.status, err.reason),
        "retry": err.transient,
    }


def _remove_staged(members: list[Job], todo: set[int]) -> None:
    """Remove what a killed run left of archive members or DICOMweb instances it finished."""
    for job in members:
        if id(job) not in todo:
            job.file.path.unlink(missing_ok=True)


def _input_error_row(path: Path, decoded: dict[str, Any]) -> dict[str, Any]:
    """The report row of an input that did not decode (see :func:`~.workers.decode`).

    One that could not be opened is tried again on the next run (``retry``); any other
    carries the file's signature (``source``), so the journal skips it only while the file
    stays as it was.
    """
    status, reason = decoded["error"]
    if decoded.get("retry"):
        return retry_row(path, reason, status)
    return {**row(path, status, reason), "source": decoded.get("source")}


class PoolRotation:
    """Pools of workers used in turn, a fresh one after every ``every`` images (weighted).

    Unless ``drain_first`` says so, the pool being replaced is shut down without waiting:
    its workers finish what was given to them (their futures stay valid) and then exit,
    while the new pool's workers already decode the next images, so the stream does not
    drain at a replacement; for that moment both pools' memory is held. With
    ``drain_first`` the old pool finishes its work before the new one starts: one pool's
    memory at most, the network idle meanwhile.

    Args:
        make: creates a pool.
        every: images per pool, each counted as its ``weight`` (0: one pool for the run).
        drain_first: asked at each replacement.
    """

    def __init__(
        self,
        make: Callable[[], Executor],
        every: int,
        drain_first: Callable[[], bool] = lambda: False,
    ):
        self.make, self.every, self.drain_first = make, every, drain_first
        self.current: Executor | None = None
        self.used = 0
        self.replaced = 0

    def for_next_image(self, weight: float = 1.0) -> Executor:
        """The pool for the next image, replacing the current one once it has had ``every``.

        Args:
            weight: what the image counts towards ``every`` (:func:`recycle_weight`).
        """
        if self.current is None or (self.every and self.used >= self.every):
            if self.current is not None:
                self.current.shutdown(wait=self.drain_first())
                self.replaced += 1
            self.current, self.used = self.make(), 0.0
        self.used += weight
        return self.current

    def __enter__(self) -> PoolRotation:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.current is not None:
            self.current.shutdown(wait=True)


def _timed(future: Future, started: float) -> Future:
    """Note when the image's processing started and when its outputs were done."""
    future.started_at = started
    future.finished_at = time.perf_counter()
    future.add_done_callback(lambda f: setattr(f, "finished_at", time.perf_counter()))
    return future


#: The packages whose versions ``summary.json`` records: those that shape the results, the
#: pixel decoders included (lossy JPEG decoders may differ by a unit: pipeline.io.decoders).
SOFTWARE = (
    "lungseg",
    "monai",
    "torch",
    "numpy",
    "pydicom",
    "highdicom",
    "scikit-image",
    "imagecodecs",
    "pillow",
    "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg",
    "pyjpegls",
)


def software_versions() -> dict[str, str]:
    """Versions of :data:`SOFTWARE`."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in SOFTWARE:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def segment(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    formats: Sequence[OutputFormat] = DEFAULT_FORMATS,
    bundle: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 8,
    workers: int | str = "auto",
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    tb_model: Any = None,
    studies: Sequence[str] = (),
    query: dict[str, str] | None = None,
    store_back: bool = False,
    precision: str | None = None,
    lung_field: str | None = None,
    view_check: str | None = None,
) -> dict[str, Any]:
    """Segment every radiograph under ``inputs`` into ``out_dir``; return the summary.

    ``workers``: worker processes, or ``auto`` (:func:`resolve_workers`: one per usable CPU,
    one fewer beside a GPU); ``summary.json`` → ``resources`` records what ran.

    ``lung_field`` overrides the bundle's (``anatomical``): ``visible`` runs the model
    trained to the visible-lung convention (the left lung stopping at the heart).

    ``precision`` overrides the bundle's (``float32``): ``bfloat16``, or ``auto`` (bfloat16
    where the CPU has it natively, :class:`~pipeline.inference.ensemble.Precision`).

    ``view_check`` overrides the bundle's view check (``auto``): ``off`` segments every
    image as read (:mod:`pipeline.inference.view_check`).

    With a ``tb_model`` (:func:`pipeline.tb.screen.segment_and_screen` passes the TB
    bundle's), each segmented image also gets a TB score (research only); images are then
    decoded at full resolution (``decode_min_size`` null), as the TB bundle was trained.

    ``inputs`` may be ``dicomweb+http(s)://`` URLs (:mod:`pipeline.io.dicomweb`): their
    instances (``studies``, ``query``) are fetched into ``OUT/dicomweb`` as they are read;
    with ``store_back`` each SEG goes back to the server by STOW-RS once, while the batch
    runs (:class:`JobStoreBack`). ZIP and TAR archives
    are read as folders named after them, a member at a time (:mod:`pipeline.io.archives`):
    each is written to ``OUT/archives`` as it is read and removed once finished; an archive
    that cannot be read is a failed row, tried again next run.

    Raises:
        FileNotFoundError: an input or the bundle does not exist.
        DicomWebError: a DICOMweb server cannot be searched, read or written (named).
        JournalMismatchError: ``out_dir`` holds a run with another model, config or formats.
        OutputError: outputs cannot be written (disk full...): the run stops; what finished
            is journalled, the rest is redone by a rerun.
    """
    out = Path(out_dir)
    if OutputFormat.SR in formats and OutputFormat.SEG not in formats:
        raise ValueError(f"--formats {','.join(formats)}: sr references the SEG; add seg")
    inputs, sources = _dicomweb_inputs(inputs, out, studies, query)
    inputs, unreadable, archives = _open_archives(inputs, out)
    jobs = [j for j in plan(inputs, shard) if j.file.path not in archives]
    overrides = _overrides(
        tb_model, precision=precision, lung_field=lung_field, view_check=view_check
    )
    # the network is loaded once the workers are decoding (Segmenter._batches)
    model = Predictor(bundle, rank_device(device), overrides, network=False)
    workers = resolve_workers(workers, model.device)
    tag = "" if shard is None else f"-shard-{shard[0]}-of-{shard[1]}"
    journal = Journal(out, _journal_header(model, formats, tb_model), overwrite, tag)
    keep_freed_memory()  # the forward passes reuse their pages (see its docstring)
    stow = JobStoreBack(sources if store_back else (), out)
    segmenter = Segmenter(
        model, out, formats, journal, batch_size, workers, progress, tb_model, stow.add
    )
    try:
        run = segmenter.run(jobs)
    except BaseException:
        stow.close()  # what was not sent yet is sent by the next run
        raise
    finally:
        journal.close()
    keys = {j.key for j in jobs}
    finished = {**journal.rows, **segmenter.retry_rows}
    rows = [row for key, row in finished.items() if key in keys] + unreadable
    write_reports(out, rows, tag)
    summary = {
        "counts": {s.value: sum(r["status"] == s.value for r in rows) for s in Status},
        **tallies(rows),
        "inputs": len(jobs) + len(unreadable),  # an archive that could not be read: one
        "this_run": _run_figures(run),
        "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
        "formats": journal.header["formats"],
        "device": str(model.device),
        "resources": resources(workers),
        "model": model.identity.as_dict(),
        "software": software_versions(),
        "started": journal.header["started"],
    }
    if tb_model is not None:
        notice = tb_model.notice
        summary["tb_screening"] = {"research_only": True, "notice": notice, **tb_model.identity()}
    failure = _finish_store_back(stow, jobs, summary) if store_back else None
    write_summary(out, summary, tag)
    if failure is not None:  # after the summary: the batch's counts are not lost with it
        raise failure
    return summary


def _overrides(tb_model: Any, **settings: str | None) -> dict[str, Any]:
    """The bundle overrides of a batch: the settings given (not None), and TB's decoding.

    TB inputs are measured on the full-resolution image the TB bundle was trained on, so a
    run with a ``tb_model`` decodes every pixel (``decode_min_size`` null).
    """
    overrides: dict[str, Any] = {"decode_min_size": None} if tb_model is not None else {}
    overrides.update({key: value for key, value in settings.items() if value is not None})
    return overrides


def _journal_header(model: Predictor, formats: Sequence[OutputFormat], tb_model: Any) -> dict:
    """What a journal records of its run: a later run with other values must not resume it."""
    ident = model.identity.as_dict()
    return {
        "started": time.strftime("%Y%m%d%H%M%S"),
        "checkpoint_sha256": ident["checkpoint_sha256"],
        "model_digest": ident["digest"],
        "formats": sorted(str(f) for f in formats),
        "tb": None if tb_model is None else tb_model.identity()["checkpoint_sha256"],
    }


def _run_figures(run: Summary) -> dict[str, Any]:
    """``summary.json`` → ``this_run``: images, seconds, rate and time per stage."""
    return {
        "processed": run.processed,
        "seconds": round(run.seconds, 2),
        "images_per_second": round(run.processed / run.seconds, 3) if run.seconds else None,
        "stage_seconds": {k: round(v, 3) for k, v in run.stages.items()},
        "stage_cpu_seconds": {k: round(v, 3) for k, v in run.cpu.items()},
    }


def _finish_store_back(
    stow: JobStoreBack, jobs: Sequence[Job], summary: dict[str, Any]
) -> Exception | None:
    """Store the rest; put the count, or why it failed, in ``summary``; return the failure."""
    from pipeline.io.dicomweb import DicomWebError

    try:
        summary["stored_back"] = stow.finish(jobs)
    except (DicomWebError, OSError) as err:  # a rerun stores what is not marked stored
        summary["store_back_error"] = str(err)
        return err
    finally:
        stow.close()
    return None


def resources(workers: int) -> dict[str, int]:
    """What the run had: usable CPUs, worker processes, the network's threads."""
    import torch

    from pipeline.cpus import usable_cpus

    return {
        "usable_cpus": usable_cpus(),
        "workers": workers,
        "network_threads": torch.get_num_threads(),
    }


def _dicomweb_inputs(
    inputs: Sequence[str | os.PathLike], out: Path, studies: Sequence[str], query: Any
) -> tuple[list[str | os.PathLike | InputFile], list[Any]]:
    """The instances of ``dicomweb+http(s)://`` inputs, fetched into ``OUT/dicomweb`` when read.

    Returns:
        The inputs with the instances QIDO-RS finds in place of the URLs, and the sources.

    Raises:
        DicomWebError: a server cannot be searched.
    """
    from pipeline.io.dicomweb import CACHE, DicomWebSource, is_dicomweb

    sources = [DicomWebSource(str(i), studies, query) for i in inputs if is_dicomweb(i)]
    local: list[str | os.PathLike | InputFile] = [i for i in inputs if not is_dicomweb(i)]
    for source in sources:
        local += source.inputs(out / CACHE)
    return local, sources


def _open_archives(
    inputs: Sequence[str | os.PathLike | InputFile], out: Path
) -> tuple[list[str | os.PathLike | InputFile], list[dict[str, Any]], set[Path]]:
    """The members of the ZIP/TAR archives given or found in folders, as inputs.

    Each archive reads as a folder named after it (``name``; one found in a folder: its
    path there, ``batch1/export``), its members written out under ``OUT/archives/<name>``
    while they are read (:mod:`pipeline.io.archives`).

    Returns:
        The inputs with each given archive's members in its place and the found ones'
        added, a failed row (retried by the next run) for each archive that could not be
        read or whose name another archive of this run has, and the archives found in
        folders (not inputs themselves).
    """
    from pipeline.io.archives import FOLDER, archives_under, is_archive, output_name

    local: list[str | os.PathLike | InputFile] = []
    found: list[tuple[Path, str]] = []
    for item in inputs:
        if isinstance(item, InputFile):  # a DICOMweb instance
            local.append(item)
            continue
        if is_archive(item):
            found.append((Path(item), output_name(Path(item))))
            continue
        local.append(item)
        if Path(item).is_dir():
            found += [(a, output_name(a, Path(item))) for a in archives_under(Path(item))]
    failed, names = [], set()
    for archive, name in found:
        if name in names:
            reason = f"another input archive would be read as {name!r} too: rename one"
            failed.append(row(archive, Status.FAILED.value, reason))
            continue
        names.add(name)
        local += _archive_inputs(archive, out / FOLDER / name, name, failed)
    return local, failed, {a for a, _ in found}


def _archive_inputs(
    archive: Path, target: Path, name: str, failed: list[dict[str, Any]]
) -> list[InputFile]:
    """``archive``'s files as inputs named ``name``, written out under ``target`` when read.

    An archive that cannot be read gives none and adds its failed row to ``failed``.
    """
    from pipeline.io.archives import archive_inputs

    try:
        return archive_inputs(archive, target, name)
    except ArchiveError as err:
        failed.append(row(archive, Status.FAILED.value, err.reason))
        return []


class JobStoreBack:
    """``--store-back``: each fetched instance's SEG (and SR) to its own server, once.

    The batch hands over the jobs whose rows are durable as it goes (:meth:`add`, the
    :class:`Segmenter`'s ``on_durable``), so their objects are stored while it runs
    (:class:`~pipeline.io.dicomweb.StoreBack`, on threads of the workers' priority);
    :meth:`finish` stores the rest, those finished by earlier runs included.

    Args:
        sources: the run's DICOMweb sources (each job goes to the one its instance came from).
        out: the output folder (the markers of stored objects are under ``OUT/dicomweb``).
    """

    def __init__(self, sources: Sequence[Any], out: Path):
        from pipeline.io.dicomweb import StoreBack

        self.sources = {source.url: source for source in sources}
        self.out = out
        self.queue = StoreBack(initializer=lower_thread_priority)

    def add(self, jobs: Sequence[Job]) -> None:
        """Queue the SEGs and SRs of ``jobs`` (those of fetched instances that exist)."""
        from pipeline.io.dicomweb import CACHE

        for url, source in self.sources.items():
            fetched = [j for j in jobs if j.file.remote is not None and j.file.remote.url == url]
            for fmt, markers in ((OutputFormat.SEG, ".stored"), (OutputFormat.SR, ".stored-sr")):
                files = [p for p in (j.output(self.out, fmt) for j in fetched) if p.is_file()]
                self.queue.add(source, files, self.out / CACHE / markers)

    def finish(self, jobs: Sequence[Job]) -> int:
        """Store what ``jobs`` have and is not stored yet; return how many this run stored.

        Raises:
            DicomWebError: a request failed (named); what was stored is marked.
        """
        self.add(jobs)
        return self.queue.finish()

    def close(self) -> None:
        """Drop what is queued and not yet sent (a rerun sends it)."""
        self.queue.close()
