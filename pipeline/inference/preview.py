"""Preprocessing previews: what the network will see, for a folder of radiographs."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.discovery import iter_inputs
from pipeline.io.errors import InputError


@dataclass
class PreviewResult:
    """Outcome for one input file."""

    path: Path
    status: str
    reason: str = ""
    output: Path | None = None
    meta: dict[str, Any] | None = None
    seconds: float = 0.0


def preview_panels(
    image: np.ndarray, size: int = 512, clip_limit: float = 0.01, radius: int = 15
) -> np.ndarray:
    """Panels ``decoded | percentile-scaled + CLAHE | + top-hat/bottom-hat`` at ``size``."""
    import torch

    from pipeline.transforms import clahe, letterbox, percentile_scale, tophat_enhance

    boxed, _ = letterbox(torch.from_numpy(image)[None], size)
    decoded = boxed[0].numpy()
    scaled = percentile_scale(decoded)
    equalised = clahe(np.asarray(scaled), clip_limit=clip_limit)
    enhanced = tophat_enhance(equalised, radius=radius)
    return np.stack([decoded, equalised, enhanced])


def run_previews(
    inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, **options: Any
) -> Iterator[PreviewResult]:
    """Decode each input and write ``out_dir/<relative path>.png`` with its preview panels.

    Bad files yield a ``failed`` or ``skipped`` result with the reason; the run goes on.
    Nothing is written into the input folders.
    """
    from pipeline.io.png import save_png, side_by_side
    from pipeline.io.reader import read_cxr

    for item in iter_inputs(inputs):
        start = time.perf_counter()
        try:
            image, meta = read_cxr(item.path)
        except InputError as err:
            yield PreviewResult(item.path, err.status, err.reason)
            continue
        out = save_png(
            side_by_side(list(preview_panels(image, **options))), item.output(out_dir, ".png")
        )
        yield PreviewResult(
            item.path, "ok", output=out, meta=meta, seconds=time.perf_counter() - start
        )
