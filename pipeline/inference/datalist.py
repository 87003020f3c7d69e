"""Datalists for the bundle's inference: the radiographs found under folders or files."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from pipeline.io.discovery import NON_IMAGE_SUFFIXES, iter_inputs
from pipeline.io.errors import InputError
from pipeline.io.images import detect_format

logger = logging.getLogger(__name__)


def image_datalist(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """One ``{"image": path, "relative": rel}`` item per candidate image under ``inputs``.

    A file is a candidate when its content (or, for DICOM without preamble, its suffix) is a
    known image format. Others (a README, a CSV beside the images, an empty file) are left
    out with a warning naming the file and the reason; DICOM objects that are not images
    (SR, SEG...) are only recognised when loaded, where they raise a typed error.

    Args:
        inputs: a folder (searched recursively), a file, or a list of them.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: no candidate image was found (the message names the inputs).
    """
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    items = []
    for found in iter_inputs(paths):
        reason = _not_an_image(found.path)
        if reason:
            logger.warning("skipping %s: %s", found.path, reason)
            continue
        items.append({"image": str(found.path), "relative": str(found.relative)})
    if not items:
        raise ValueError(f"no images found in {', '.join(map(str, paths))}")
    return items


def _not_an_image(path: os.PathLike) -> str | None:
    if os.path.splitext(os.fspath(path))[1].lower() in NON_IMAGE_SUFFIXES:
        return "not an image file (by its suffix)"
    try:
        fmt = detect_format(path)
    except InputError as err:
        return err.reason
    if fmt is None and os.path.splitext(os.fspath(path))[1]:
        return "format not recognised from its content or suffix"
    return None
