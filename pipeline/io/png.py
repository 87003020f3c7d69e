"""PNG encoding of [0, 1] and uint8 arrays, atomic PNG files, side-by-side panels."""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.io.atomic import write_bytes_atomic


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Map a [0, 1] array to uint8 0..255 (clipped, rounded); uint8 input is returned as is."""
    if np.asarray(image).dtype == np.uint8:
        return np.asarray(image)
    return np.rint(np.clip(np.asarray(image, dtype=np.float32), 0, 1) * 255).astype(np.uint8)


class RowFilter(enum.IntEnum):
    """PNG filter type of every row (PNG specification, filter method 0)."""

    NONE = 0  # bytes as they are: for masks (no subtraction; a 2048² mask deflates smaller)
    SUB = 1  # each byte minus the one a pixel to its left: best for radiographs


def save_png(
    image: np.ndarray,
    path: str | os.PathLike,
    compress_level: int = 6,
    palette: np.ndarray | None = None,
    row_filter: RowFilter = RowFilter.SUB,
) -> Path:
    """Save a ``rows x columns`` [0, 1] array (or an RGB uint8 array) as PNG, atomically.

    Args:
        image: the picture (with ``palette``: uint8 indices into it).
        path: the PNG file (its folder is created).
        compress_level: zlib level, 0-9 (1 is several times faster than 6, files larger).
        palette: ``(n, 3)`` uint8 RGB colours, n <= 256, for an indexed-colour PNG.
        row_filter: the rows' PNG filter.
    """
    return write_bytes_atomic(path, encode_png(image, compress_level, palette, row_filter))


#: PNG colour type by the number of channels (grey, RGB, RGBA), 8 bits per sample.
_COLOUR_TYPE = {1: 0, 3: 2, 4: 6}


def encode_png(
    image: np.ndarray,
    compress_level: int = 6,
    palette: np.ndarray | None = None,
    row_filter: RowFilter = RowFilter.SUB,
) -> bytes:
    """A [0, 1] array or a uint8 grey/RGB/RGBA array as PNG bytes (see :func:`save_png`).

    Every row uses one filter (``row_filter``: "Sub" by default; "None" suits 0/255 masks:
    no subtraction pass, and an upsampled 2048² mask deflates to 17 KB instead of 38) and
    is deflated at ``compress_level``: about half of Pillow's encoding time (which tries
    filters per row), files 0-25 % larger. Levels 0-3 deflate with ISA-L (``isal``, about
    5x zlib's speed at level 1 and smaller files) when it is installed. With
    ``palette``, ``image`` holds uint8 indices into it (indexed colour, one byte a pixel).

    Raises:
        ValueError: the array is not ``rows x columns`` with 1, 3 or 4 channels, or a
            palette is not ``(1..256, 3)`` or is indexed past its end.
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
    row_filter = RowFilter(row_filter)
    raw[:, 0] = row_filter
    if row_filter is RowFilter.SUB:
        raw[:, 1 : 1 + channels] = flat[:, :channels]
        np.subtract(flat[:, channels:], flat[:, :-channels], out=raw[:, 1 + channels :])
    else:
        raw[:, 1:] = flat

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    colour_type, extra = _COLOUR_TYPE[channels], []
    if palette is not None:
        colour_type, extra = 3, [chunk(b"PLTE", _checked_palette(palette, arr).tobytes())]
    header = struct.pack(">IIBBBBB", cols, rows, 8, colour_type, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            *extra,
            chunk(b"IDAT", _deflate(raw.data, compress_level)),  # no copy of the rows
            chunk(b"IEND", b""),
        )
    )


def _deflate(data: bytes | memoryview, level: int) -> bytes:
    """zlib-format deflate: ISA-L for levels 0-3 where installed, else zlib."""
    import zlib

    if level <= 3:
        try:
            from isal import isal_zlib
        except ImportError:
            pass
        else:
            return isal_zlib.compress(data, level)
    return zlib.compress(data, level)


def _checked_palette(palette: np.ndarray, indices: np.ndarray) -> np.ndarray:
    colours = np.ascontiguousarray(palette, dtype=np.uint8)
    if indices.ndim != 2 or colours.ndim != 2 or colours.shape[1] != 3:
        raise ValueError(
            f"an indexed PNG needs rows x columns indices and (n, 3) colours, not "
            f"{indices.shape} and {colours.shape}"
        )
    if not 1 <= len(colours) <= 256 or int(indices.max()) >= len(colours):
        raise ValueError(
            f"palette of {len(colours)} colours (1..256 allowed) indexed up to {indices.max()}"
        )
    return colours


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
