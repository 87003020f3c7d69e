"""Decode a radiograph at the resolution the model needs, not the detector's.

A 2048² or 3000 x 2500 radiograph is letterboxed to 256² for the network, and the mask is
the upsampled prediction: nothing downstream needs every detector pixel. These helpers
decode smaller where the codec allows it and reduce cheaply where it does not:

- JPEG 2000 / HTJ2K: decode a lower resolution level of the wavelet pyramid (Pillow's
  ``reduce``; a 2048² 12-bit frame in ~35 ms at level 2 against ~520 ms in full). Pillow
  returns samples of precision ``p`` < 16 scaled to 16 bits; they are shifted back. The
  low-pass samples sit on the even pixels of the level above, not at the centre of the
  ``k x k`` block they summarise, so the image is moved by ``(k - 1) / 2k`` of a pixel
  (:func:`recentre`) to line up with the block averages of the other paths.
- JPEG baseline: DCT scaling (Pillow's ``draft``: 1/2, 1/4 or 1/8).
- everything else (uncompressed, RLE, JPEG-LS, JPEG Lossless): the stored values are
  averaged over ``k x k`` blocks (rounded back to integers, so the grayscale LUT still
  applies), which costs less than the grayscale pipeline on the full grid would.

The reduction factor is the largest whose result keeps the longer side at or above the
requested minimum; the reader records it and the full grid's shape (``reduced_from``), so
the letterbox maps predictions back onto the **original** pixel grid.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

JPEG2000_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
        "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
        "1.2.840.10008.1.2.4.203",  # HTJ2K
    }
)
JPEG_BASELINE_SYNTAX = "1.2.840.10008.1.2.4.50"


def reduction_factor(
    shape: tuple[int, int],
    min_size: int | None,
    network_size: int | None = None,
    powers_of_two: bool = False,
) -> int:
    """How much to reduce an image of ``shape`` (1: not at all).

    The largest ``k`` whose image keeps the longer side at or above ``min_size``. With
    ``network_size`` (the letterbox the image goes to next), ``k`` must also keep the result
    as the full image would be: either both sides stay whole multiples of the letterboxed
    sides (box averages then compose exactly with the letterbox's area resize, as 2048² →
    512² → 256² does), or the longer side stays at least ``2 * min_size`` (at non-integer
    ratios the area resize's window rounding differs between a 3000-row and a 600-row image
    enough to move a mask by ~0.2 % Dice; from ≥ 4 network pixels per side it is < 0.1 %).

    Args:
        shape: rows, columns.
        min_size: the smallest longer side wanted; None: no reduction.
        network_size: the letterbox size the image is resized to afterwards.
        powers_of_two: only 2, 4, 8... (JPEG 2000 resolution levels).
    """
    if not min_size:
        return 1
    longest = max(shape)
    candidates = range(int(longest // int(min_size)), 1, -1)
    for k in candidates:
        if powers_of_two and k & (k - 1):
            continue
        if network_size is None or longest / k >= 2 * min_size:
            return k
        if _composes_exactly(shape, k, network_size):
            return k
    return 1


def _composes_exactly(shape: tuple[int, int], k: int, network_size: int) -> bool:
    """Whether ``shape / k`` is a whole multiple of the letterbox of ``shape`` on both sides."""
    scale = network_size / max(shape)
    resized = [max(1, round(s * scale)) for s in shape]
    return all(s % k == 0 and (s // k) % r == 0 for s, r in zip(shape, resized, strict=True))


def block_mean(arr: np.ndarray, k: int) -> np.ndarray:
    """Average ``k x k`` blocks of an integer image, rounded; edges padded by replication.

    The result has ``ceil(rows / k) x ceil(columns / k)`` pixels and the input's dtype.
    """
    if k <= 1:
        return arr
    rows, cols = arr.shape
    pad = (-rows % k, -cols % k)
    if any(pad):
        arr = np.pad(arr, ((0, pad[0]), (0, pad[1])), mode="edge")
    # k strided additions per axis: exact integer sums, ~7x faster than numpy's reduction
    # over the two block axes of a (rows/k, k, columns/k, k) view
    accumulator = np.int32 if arr.dtype.itemsize <= 2 else np.int64
    total = _sum_every(_sum_every(arr, k, 0, accumulator), k, 1, accumulator)
    total += (k * k) // 2
    total //= k * k
    return total.astype(arr.dtype)


def _sum_every(arr: np.ndarray, k: int, axis: int, dtype: type) -> np.ndarray:
    """Sums of every ``k`` adjacent rows (axis 0) or columns (axis 1), as a new ``dtype`` array.

    The length along ``axis`` is a multiple of ``k``.
    """

    def part(j: int) -> np.ndarray:
        return arr[j::k] if axis == 0 else arr[:, j::k]

    total = part(0).astype(dtype)  # a copy: the additions never touch ``arr``
    for j in range(1, k):
        total += part(j)
    return total


# --- JPEG 2000 / HTJ2K ------------------------------------------------------------------


def _markers(codestream: bytes) -> dict[int, bytes]:
    """The main-header marker segments of a J2K codestream (marker code → its payload)."""
    if codestream[:4] != b"\xff\x4f\xff\x51":
        return {}
    found, pos = {}, 2
    while pos + 4 <= len(codestream):
        code = int.from_bytes(codestream[pos : pos + 2], "big")
        if code == 0xFF90:  # start of the first tile: the main header is over
            break
        length = int.from_bytes(codestream[pos + 2 : pos + 4], "big")
        found.setdefault(code, codestream[pos + 4 : pos + 2 + length])
        pos += 2 + length
    return found


def j2k_layout(codestream: bytes) -> tuple[int, bool, int] | None:
    """``(precision, signed, decomposition levels)`` of a one-component J2K codestream.

    None for anything else (a JP2 file, several components, a header it cannot parse):
    those are decoded in full.
    """
    markers = _markers(codestream)
    siz, cod = markers.get(0xFF51), markers.get(0xFF52)
    if siz is None or cod is None or len(siz) < 39 or len(cod) < 10:
        return None
    if int.from_bytes(siz[34:36], "big") != 1:  # Csiz: one grey component only
        return None
    ssiz = siz[36]
    return (ssiz & 0x7F) + 1, bool(ssiz & 0x80), cod[5]


def decode_j2k_reduced(frame: bytes, levels: int) -> np.ndarray | None:
    """Decode a J2K/HTJ2K frame ``levels`` resolution levels down (each halves both sides).

    Returns:
        The stored values as unsigned integers at ``ceil(size / 2**levels)``; None when the
        frame is not a plain one-component unsigned codestream (decode it in full instead).
    """
    from PIL import Image

    layout = j2k_layout(frame)
    if layout is None or layout[1] or levels < 1:
        return None
    precision, _, available = layout
    with Image.open(io.BytesIO(frame)) as img:
        img.reduce = min(levels, available)
        img.load()
        arr = np.asarray(img)
    if arr.dtype == np.uint16 and precision < 16:
        arr = arr >> (16 - precision)  # Pillow scales p-bit samples up to 16 bits
    return arr


def decode_jpeg_baseline_reduced(frame: bytes, k: int) -> np.ndarray | None:
    """An 8-bit grey JPEG baseline frame decoded with DCT scaling by up to ``1/k``."""
    from PIL import Image

    with Image.open(io.BytesIO(frame)) as img:
        if img.mode != "L":
            return None
        img.draft("L", (math.ceil(img.width / k), math.ceil(img.height / k)))
        return np.asarray(img)


def recentre(image: np.ndarray, shift: float) -> np.ndarray:
    """Resample ``image`` ``shift`` pixels towards higher rows and columns (linear; edges kept).

    A pixel ``i`` of the result is the value at ``i + shift`` of the input.
    """
    if not shift:
        return image
    out = image.copy()
    out[:-1] += shift * (image[1:] - image[:-1])
    moved = out.copy()
    moved[:, :-1] += shift * (out[:, 1:] - out[:, :-1])
    return moved


def decode_reduced(
    ds: Any, min_size: int | None, network_size: int | None = None
) -> tuple[np.ndarray, int, float] | None:
    """Stored values of ``ds`` decoded at a reduced resolution where the codec allows it.

    Returns:
        ``(stored values, factor, shift)`` — ``shift`` for :func:`recentre` once the values
        are floats — or None to decode in full and reduce afterwards (also when no reduction
        is asked or possible).
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    k = reduction_factor((rows, cols), min_size, network_size, powers_of_two=True)
    if k < 2 or int(ds.get("SamplesPerPixel", 1)) != 1 or syntax not in _REDUCERS:
        return None
    from pydicom.encaps import generate_frames

    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    levels = int(math.log2(k))
    arr = _REDUCERS[syntax](frame, levels)
    if arr is None or arr.ndim != 2:
        return None
    factor = round(max(rows, cols) / max(arr.shape))
    if factor < 2:
        return None
    return arr, factor, (factor - 1) / (2 * factor) if syntax in JPEG2000_SYNTAXES else 0.0


_REDUCERS = {
    **dict.fromkeys(JPEG2000_SYNTAXES, decode_j2k_reduced),
    JPEG_BASELINE_SYNTAX: lambda frame, levels: decode_jpeg_baseline_reduced(frame, 2**levels),
}
