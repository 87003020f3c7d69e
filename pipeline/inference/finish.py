"""The per-image work around the forward pass: decoding before it, writing after it.

Before: decode and preprocess. After: post-process, measure and write the outputs.

Both run in one pool of worker processes (``--workers`` > 0), so decoding, post-processing
and PNG/DICOM encoding use every core while the main process feeds the network; with no
workers they run in the main process and one thread.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.enums import OutputFormat, Status
from pipeline.inference.lungs import LungMeasures, measure

#: Output folder and suffix of each format.
LAYOUT = {
    OutputFormat.MASK: ("masks", ".png"),
    OutputFormat.OVERLAY: ("overlays", ".png"),
    OutputFormat.SEG: ("seg", ".dcm"),
    OutputFormat.NIFTI: ("nifti", ".nii.gz"),
}


@dataclass(frozen=True)
class Context:
    """What every finishing step needs besides the image: where and what to write."""

    out_dir: Path
    formats: tuple[OutputFormat, ...]
    algorithm: dict[str, str]
    checksum: str
    started: str
    tb_inputs: Any = None  # the TB bundle's input preparation (``lungseg segment --tb``)


def output_path(ctx_out: Path, relative: Path, fmt: OutputFormat) -> Path:
    """``OUT/<format folder>/<relative path with the format's suffix>``."""
    from pipeline.io.discovery import InputFile

    folder, suffix = LAYOUT[fmt]
    return InputFile(Path(), relative).output(ctx_out / folder, suffix)


def row(path: Path, status: str, reason: str = "", seconds: float = 0.0, **extra: Any) -> dict:
    """A report row; the columns are :data:`pipeline.inference.report.REPORT_FIELDS`."""
    return {
        "path": str(path),
        "status": status,
        "reason": reason,
        "seconds": round(seconds, 4),
        **extra,
    }


def measured_row(path: Path, meta: dict[str, Any], m: LungMeasures) -> dict:
    """The report row of a segmented image."""
    rows, cols = m.right.shape
    right, left = m.right_px, m.left_px
    spacing = None if math.isnan(m.spacing[0]) else m.spacing
    return row(
        path,
        Status.OK.value,
        sop_instance_uid=meta.get("sop_instance_uid") or "",
        rows=rows,
        columns=cols,
        pixel_spacing_mm="" if spacing is None else f"{spacing[0]:.6g}\\{spacing[1]:.6g}",
        pixel_spacing_source=str(meta.get("pixel_spacing_source") or "none"),
        right_area_px=right,
        left_area_px=left,
        total_area_px=right + left,
        right_area_mm2=round(m.mm2(right), 2),
        left_area_mm2=round(m.mm2(left), 2),
        total_area_mm2=round(m.mm2(right + left), 2),
        mean_confidence=round(m.confidence, 4),
        qa_flags=[str(f) for f in m.flags],
    )


def measure_prediction(item: dict[str, Any], logits: Any, postprocess: Any) -> LungMeasures:
    """Post-process one image's logits and measure the lungs on its original grid.

    Args:
        item: the preprocessed item (its image's metadata gives spacing and orientation).
        logits: the network's output for it.
        postprocess: ``(item, logits) -> (mask, probability)`` on the original grid.
    """
    meta = item["image"].meta
    mask, prob = postprocess(item, logits)
    spacing = tuple(float(s) for s in meta.get("pixel_spacing", (math.nan, math.nan)))
    return measure(mask, prob, meta.get("patient_orientation"), spacing)


def segment_files(
    model: Any, paths: Sequence[str | os.PathLike], batch_size: int = 8
) -> Iterator[tuple[np.ndarray, LungMeasures]]:
    """Decode, segment and measure files in batches, in order (for whole collections).

    Yields:
        ``(image, measures)``: the decoded radiograph in [0, 1] and its lungs.

    Raises:
        InputError: a file the reader cannot use (a collection is expected to be clean).
    """
    from pipeline.inference.model import split_preprocessing

    load, rest = split_preprocessing(model.preprocessing)
    for first in range(0, len(paths), batch_size):
        loaded = [load({"image": str(p)}) for p in paths[first : first + batch_size]]
        items = [rest(d) for d in loaded]
        logits = model.predict([it["image"] for it in items])
        for d, item, lg in zip(loaded, items, logits, strict=True):
            yield d["image"].numpy()[0], measure_prediction(item, lg, model.postprocess)


def finish(
    path: Path, relative: Path, decoded: dict[str, Any], ctx: Context, postprocess: Any
) -> tuple[dict, dict]:
    """Post-process one image and write its outputs.

    Args:
        path: the input file.
        relative: its path under its input folder (names the outputs).
        decoded: the worker's output (``item``, ``logits``, ``original`` when overlays are on).
        ctx: output settings.
        postprocess: ``(item, logits) -> (mask, probability)`` on the original grid.

    Returns:
        ``(report row, seconds per stage)``.
    """
    from pipeline.inference import outputs

    stages: dict[str, float] = {}
    item, start = decoded["item"], time.perf_counter()
    meta = item["image"].meta
    m = measure_prediction(item, decoded["logits"], postprocess)
    stages["postprocess"] = time.perf_counter() - start
    start = time.perf_counter()
    if OutputFormat.MASK in ctx.formats:
        outputs.write_mask(m, output_path(ctx.out_dir, relative, OutputFormat.MASK))
    if OutputFormat.OVERLAY in ctx.formats:
        outputs.write_overlay(
            decoded["original"], m, output_path(ctx.out_dir, relative, OutputFormat.OVERLAY)
        )
    if OutputFormat.NIFTI in ctx.formats:
        outputs.write_nifti(m, output_path(ctx.out_dir, relative, OutputFormat.NIFTI))
    stages["write"] = time.perf_counter() - start
    if OutputFormat.SEG in ctx.formats and meta.get("format") == "DICOM":
        _seg(path, relative, meta, m, ctx, stages)
    out = measured_row(path, meta, m)
    if ctx.tb_inputs is not None:  # scored in batches by the main process, then dropped
        start = time.perf_counter()
        image = decoded["original"].astype(np.float32) / 255
        out["tb_input"] = ctx.tb_inputs(image, m.right, m.left)
        stages["tb_inputs"] = time.perf_counter() - start
    return out, stages


def _seg(
    path: Path, relative: Path, meta: dict, m: LungMeasures, ctx: Context, stages: dict
) -> None:
    import pydicom

    from pipeline.inference import outputs

    start = time.perf_counter()
    source = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    uids = outputs.seg_uids(meta["series_instance_uid"], meta["sop_instance_uid"], ctx.checksum)
    seg = outputs.build_seg(source, m, uids, ctx.algorithm)
    stages["seg_encode"] = time.perf_counter() - start
    start = time.perf_counter()
    outputs.write_seg(seg, output_path(ctx.out_dir, relative, OutputFormat.SEG), ctx.started)
    stages["write"] += time.perf_counter() - start


def safe_finish(
    path: Path, relative: Path, decoded: dict[str, Any], ctx: Context, postprocess: Any
) -> tuple[dict, dict]:
    """:func:`finish`, turning any error into a ``failed`` row (a batch never stops)."""
    try:
        return finish(path, relative, decoded, ctx, postprocess)
    except Exception as err:  # one bad output must not stop the batch; the reason is reported
        return row(path, Status.FAILED.value, f"writing outputs: {type(err).__name__}: {err}"), {}


def decode(path: Path, sidecar: bool, keep_image: bool, load: Any, rest: Any) -> dict[str, Any]:
    """Decode and preprocess one file; errors become an ``error`` entry, never a raise.

    Returns:
        ``item`` (the preprocessed dictionary), ``original`` (the decoded image, when
        ``keep_image``), ``decode``/``preprocess`` seconds, ``start``; or ``error``
        (status, reason).
    """
    from pipeline.io.errors import InputError
    from pipeline.io.writers import to_uint8

    start = time.perf_counter()
    out: dict[str, Any] = {"start": start}
    if sidecar:
        out["error"] = (Status.SKIPPED.value, "not an image file (by its suffix)")
        return out
    try:
        loaded = load({"image": str(path)})
        if keep_image:  # 8-bit: what the overlay draws, a quarter of float32's memory
            out["original"] = to_uint8(loaded["image"].numpy()[0])
        out["decode"] = time.perf_counter() - start
        out["item"] = rest(loaded)
        out["preprocess"] = time.perf_counter() - start - out["decode"]
    except InputError as err:
        out["error"] = (err.status, err.reason)
    except Exception as err:  # any decoder failure is reported, not fatal
        out["error"] = (Status.FAILED.value, f"{type(err).__name__}: {err}")
    return out


# --- worker processes ---------------------------------------------------------------------

_WORKER: dict[str, Any] = {}
#: Images at least this large (pixels, about 1448²) are followed by :func:`release_memory`;
#: smaller ones leave too little behind to be worth the ~1.5 ms a trim costs.
LARGE_IMAGE = 2**21


def release_memory() -> None:
    """Give freed heap pages back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    Decoding a large radiograph allocates and frees tens of megabytes per image; glibc keeps
    the freed pages, fragmented, so a long-lived process grows with the number of large images
    it has seen. Trimming after each image keeps its memory flat.
    """
    trim = _WORKER.get("malloc_trim", False)
    if trim is False:
        trim = _WORKER["malloc_trim"] = _find_malloc_trim()
    if trim is not None:
        trim(0)


def _find_malloc_trim() -> Any:
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


def init_worker(bundle: str) -> None:
    """Pool initializer: one thread per process; the bundle's pre- and post-processing."""
    import torch

    from pipeline.inference.model import Postprocessor, split_preprocessing

    torch.set_num_threads(1)
    post = Postprocessor(bundle)
    _WORKER["load"], _WORKER["rest"] = split_preprocessing(post.preprocessing)
    _WORKER["post"] = post


def decode_in_worker(path: Path, sidecar: bool, keep_image: bool) -> dict[str, Any]:
    """:func:`decode` with the preprocessing loaded by :func:`init_worker`."""
    decoded = decode(path, sidecar, keep_image, _WORKER["load"], _WORKER["rest"])
    if _is_large(decoded):
        release_memory()
    return decoded


def finish_in_worker(
    path: Path, relative: Path, decoded: dict[str, Any], ctx: Context
) -> tuple[dict, dict]:
    """:func:`safe_finish` with the post-processing loaded by :func:`init_worker`."""
    result = safe_finish(path, relative, decoded, ctx, _WORKER["post"])
    if _is_large(decoded):
        release_memory()
    return result


def _is_large(decoded: dict[str, Any]) -> bool:
    """Whether the decoded image had :data:`LARGE_IMAGE` pixels or more (or is unknown)."""
    item = decoded.get("item")
    shape = item["image"].meta.get("original_shape") if item is not None else None
    return shape is None or math.prod(shape) >= LARGE_IMAGE
