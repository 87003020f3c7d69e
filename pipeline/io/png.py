"""PNG encoding of [0, 1] and uint8 arrays, atomic PNG files, side-by-side panels."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.io.atomic import atomic_path


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Map a [0, 1] array to uint8 0..255 (clipped, rounded); uint8 input is returned as is."""
    if np.asarray(image).dtype == np.uint8:
        return np.asarray(image)
    return np.rint(np.clip(np.asarray(image, dtype=np.float32), 0, 1) * 255).astype(np.uint8)


def save_png(image: np.ndarray, path: str | os.PathLike, compress_level: int = 6) -> Path:
    """Save a ``rows x columns`` [0, 1] array (or an RGB uint8 array) as PNG, atomically.

    Args:
        image: the picture.
        path: the PNG file (its folder is created).
        compress_level: zlib level, 0-9 (1 is several times faster than 6, files larger).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(encode_png(image, compress_level))
    return path


def encode_png(image: np.ndarray, compress_level: int = 6) -> bytes:
    """A [0, 1] array or a uint8 grey/RGB/RGBA array as PNG bytes (see :func:`save_png`)."""
    import io

    from PIL import Image

    arr = image if image.dtype == np.uint8 else to_uint8(image)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def side_by_side(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Join equally tall [0, 1] panels horizontally with a white gap."""
    rows = max(p.shape[0] for p in panels)
    spacer = np.ones((rows, gap), dtype=np.float32)
    parts: list[np.ndarray] = []
    for panel in panels:
        if panel.shape[0] != rows:
            raise ValueError(f"panels differ in height: {[p.shape for p in panels]}")
        parts.extend([panel.astype(np.float32), spacer])
    return np.concatenate(parts[:-1], axis=1)
