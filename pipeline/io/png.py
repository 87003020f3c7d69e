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


#: PNG colour type by the number of channels (grey, RGB, RGBA), 8 bits per sample.
_COLOUR_TYPE = {1: 0, 3: 2, 4: 6}


def encode_png(image: np.ndarray, compress_level: int = 6) -> bytes:
    """A [0, 1] array or a uint8 grey/RGB/RGBA array as PNG bytes (see :func:`save_png`).

    Every row uses the PNG "Sub" filter and is deflated at ``compress_level``: about half
    of Pillow's encoding time (which tries filters per row), files 0-25 % larger.

    Raises:
        ValueError: the array is not ``rows x columns`` with 1, 3 or 4 channels.
    """
    import struct
    import zlib

    arr = np.ascontiguousarray(image if image.dtype == np.uint8 else to_uint8(image))
    channels = 1 if arr.ndim == 2 else arr.shape[-1]
    if arr.ndim not in (2, 3) or channels not in _COLOUR_TYPE or 0 in arr.shape:
        raise ValueError(f"cannot encode an array of shape {arr.shape} as PNG")
    rows, cols = arr.shape[:2]
    flat = arr.reshape(rows, cols * channels)
    raw = np.empty((rows, cols * channels + 1), dtype=np.uint8)
    raw[:, 0] = 1  # filter type Sub: each byte minus the byte one pixel to its left
    raw[:, 1 : 1 + channels] = flat[:, :channels]
    np.subtract(flat[:, channels:], flat[:, :-channels], out=raw[:, 1 + channels :])

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", cols, rows, 8, _COLOUR_TYPE[channels], 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(raw.tobytes(), compress_level)),
            chunk(b"IEND", b""),
        )
    )


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
