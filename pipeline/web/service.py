"""What the web viewer does with one upload: check it, segment it, render what the page shows.

File and array logic only; :mod:`pipeline.web.app` is the HTTP layer around it. The model,
its preprocessing and post-processing, the measurements and the QA flags come from the one
predictor (:class:`~pipeline.inference.predictor.Predictor`), the mask PNG, the fills' colours
and the DICOM SEG from :mod:`pipeline.inference.outputs`, as for ``lungseg segment``.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.enums import InputFormat, StrEnum

#: What the viewer accepts, recognised by content (magic bytes), never by name.
ALLOWED_FORMATS = (InputFormat.DICOM, InputFormat.PNG, InputFormat.JPEG)
#: Longest side of the image and overlay the page shows; downloads keep the input's size.
DISPLAY_MAX_SIZE = 2048


class ResultFile(StrEnum):
    """The files a result offers for display and download."""

    IMAGE = "image.png"
    OVERLAY = "overlay.png"
    MASK = "mask.png"
    SEG = "seg.dcm"

    @property
    def media_type(self) -> str:
        """The HTTP Content-Type of the file."""
        return "application/dicom" if self is ResultFile.SEG else "image/png"


class UploadError(Exception):
    """An upload the viewer refuses.

    Attributes:
        status_code: the HTTP status (413 too large, 415 not an accepted type, 422 unusable).
        reason: what is wrong, in words the user can act on.
    """

    def __init__(self, status_code: int, reason: str):
        self.status_code, self.reason = status_code, reason
        super().__init__(reason)


@dataclass
class Result:
    """One segmented upload: the JSON summary and the files behind its links."""

    summary: dict[str, Any]
    files: dict[ResultFile, bytes]


def check_format(path: Path, name: str) -> InputFormat | None:
    """The upload's format by content; None for a possible DICOM file without preamble.

    Raises:
        UploadError: 415 when the content is another image format or an empty file.
    """
    from pipeline.io.errors import NotAnImageError
    from pipeline.io.images import detect_format

    try:
        fmt = detect_format(path)
    except NotAnImageError as err:
        raise UploadError(415, f"{name}: {err.reason}") from err
    if fmt is not None and fmt not in ALLOWED_FORMATS:
        allowed = ", ".join(f.value for f in ALLOWED_FORMATS)
        raise UploadError(415, f"{name}: the content is {fmt.value}; the viewer accepts {allowed}")
    return fmt


def input_error(err: Exception, name: str) -> UploadError:
    """The :class:`UploadError` of a reader error (415 not an image, 422 unusable)."""
    from pipeline.io.errors import InputError, NotAnImageError

    if isinstance(err, NotAnImageError):
        allowed = ", ".join(f.value for f in ALLOWED_FORMATS)
        return UploadError(415, f"{name}: not an image the viewer accepts ({allowed}, by content)")
    if isinstance(err, InputError):
        what = "unsupported DICOM" if err.status == "skipped" else "cannot be decoded"
        return UploadError(422, f"{name}: {what}: {err.reason}")
    return UploadError(422, f"{name}: cannot be decoded: {type(err).__name__}: {err}")


def render(original: np.ndarray, m: Any, max_size: int = DISPLAY_MAX_SIZE) -> dict:
    """The page's image, its overlay (both at most ``max_size``) and the full-size mask PNG."""
    from pipeline.inference.outputs import fit_for_display, label_overlay, mask_to_uint8
    from pipeline.io.png import RowFilter, encode_png

    grey, right, left = fit_for_display(original, m.right, m.left, max_size)
    return {
        ResultFile.IMAGE: encode_png(grey, compress_level=1),
        ResultFile.OVERLAY: encode_png(label_overlay(right, left), compress_level=1),
        ResultFile.MASK: encode_png(mask_to_uint8(m.right | m.left), row_filter=RowFilter.NONE),
    }


def _mm2(m: Any, pixels: int) -> float | None:
    value = m.mm2(pixels)
    return None if math.isnan(value) else round(value, 2)


def summarize(meta: dict[str, Any], m: Any, fmt: str) -> dict[str, Any]:
    """The JSON fields of a result that describe the image and the lungs."""
    from pipeline.inference.lungs import describe_flag

    right, left = m.right_px, m.left_px
    spacing = None if math.isnan(m.spacing[0]) else [round(s, 6) for s in m.spacing]
    return {
        "input_format": fmt,
        "rows": int(m.right.shape[0]),
        "columns": int(m.right.shape[1]),
        "pixel_spacing_mm": spacing,
        "pixel_spacing_source": str(meta.get("pixel_spacing_source") or "none"),
        "areas": {
            "right_px": right,
            "left_px": left,
            "total_px": right + left,
            "right_mm2": _mm2(m, right),
            "left_mm2": _mm2(m, left),
            "total_mm2": _mm2(m, right + left),
        },
        "mean_confidence": round(m.confidence, 4),
        "qa_flags": [{"flag": str(f), "message": describe_flag(f)} for f in m.flags],
    }


class UploadService:
    """Segments uploaded files with one loaded model; safe to call from many threads.

    At most ``parallel`` uploads are decoded and post-processed at once (each large radiograph
    holds ~100 MB while it is), and one forward pass runs at a time; other requests wait.

    Args:
        model: the :class:`~pipeline.inference.predictor.Predictor`.
        display_max_size: longest side of the image and overlay returned for display.
        parallel: uploads processed at once.
    """

    def __init__(self, model: Any, display_max_size: int = DISPLAY_MAX_SIZE, parallel: int = 2):
        if parallel < 1 or display_max_size < 1:
            raise ValueError(
                f"parallel and display_max_size must be >= 1, got {parallel}, {display_max_size}"
            )
        self.model, self.display_max_size = model, display_max_size
        self.identity = model.identity.as_dict()
        self._lock, self._slots = threading.Lock(), threading.BoundedSemaphore(parallel)

    def process(self, path: Path, name: str) -> Result:
        """Segment the file at ``path`` (uploaded as ``name``, used only in error messages).

        Raises:
            UploadError: the file is not an accepted image or cannot be used.
        """
        start = time.perf_counter()
        check_format(path, name)
        with self._slots:
            result = self._process(path, name)
        result.summary["seconds"] = round(time.perf_counter() - start, 3)
        return result

    def _process(self, path: Path, name: str) -> Result:
        from pipeline.inference.outputs import MissingReferenceError
        from pipeline.inference.workers import LARGE_IMAGE, release_memory

        item, original = self._decode(path, name)
        with self._lock:
            logits = self.model.infer([item])[0]
        prediction = self.model.postprocess(item, logits)
        m, meta = prediction.measures, prediction.meta
        files = render(original, m, self.display_max_size)
        summary = {**summarize(meta, m, str(meta.get("format"))), "seg_note": None}
        if meta.get("format") == InputFormat.DICOM.value:
            try:
                files[ResultFile.SEG] = self._seg(path, meta, m)
            except MissingReferenceError as err:  # the rest of the result stands
                summary["seg_note"] = f"no SEG: {err}"
        if original.size >= LARGE_IMAGE:
            release_memory()
        return Result(summary, files)

    def _decode(self, path: Path, name: str) -> tuple[dict[str, Any], np.ndarray]:
        """The preprocessed item and the decoded image (uint8) of an upload."""
        from pipeline.io.png import to_uint8

        try:
            loaded = self.model.load(path)
            original = to_uint8(loaded["image"].numpy()[0])
            return self.model.preprocess(loaded), original
        except Exception as err:  # every reader failure becomes a 4xx with its reason
            raise input_error(err, name) from err

    def _seg(self, path: Path, meta: dict[str, Any], m: Any) -> bytes:
        """The DICOM SEG ``lungseg segment`` would write for this image, encoded."""
        import pydicom

        from pipeline.inference.outputs import encode_dicom, seg_of

        source = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return encode_dicom(seg_of(source, m, self.model.identity))
