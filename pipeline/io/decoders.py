"""Which pydicom decoding plugin decodes a compressed syntax first: the fastest here.

pydicom tries its plugins for a transfer syntax in the order they were registered. For the
JPEG family that order starts with pylibjpeg-libjpeg, the slowest here:

- JPEG Lossless (process 14, ``.57``, and its SV1 form ``.70``, the most common compressed
  syntax of CR and DX archives): pylibjpeg-libjpeg ~145-215 ms for a 2048² 12-bit frame;
  libjpeg-turbo, through imagecodecs, ~37 ms. pydicom has no such plugin: this module is
  one (pydicom's *decoder plugins* guide: ``is_available``, ``DECODER_DEPENDENCIES`` and
  :func:`decode_frame`), registered with pydicom's decoders on first use.
- JPEG-LS (``.80``, ``.81``): pylibjpeg-libjpeg ~175 ms at 2048², 8 bits; pyjpegls
  (CharLS), pydicom's own plugin, installed with lungseg but tried second, ~55 ms; CharLS
  2.4 through imagecodecs (this module's plugin) ~46 ms, the same values (JPEG-LS decoding,
  near-lossless included, is exactly specified).
- JPEG Extended (``.51``, 12-bit lossy): pylibjpeg-libjpeg ~72 ms at 2048²; libjpeg-turbo
  (this module's plugin) ~24 ms.
- JPEG Baseline (``.50``, 8-bit lossy) decoded in full (images too small to decode
  reduced, :mod:`pipeline.io.reduced`): Pillow's libjpeg-turbo, pydicom's own plugin,
  1.4 ms at 512² against 4.4; the reduced path decodes with Pillow already.

Lossless decoding is exactly specified: every decoder gives the same values (tested). Lossy
JPEG decoders may differ by a unit or two in a few percent of the pixels (the standard
allows it): the masks agree at mean Dice 0.9999 (Baseline 0.99986) on the test split
(``benchmarks/decoder_agreement.py``, README).

:func:`plugin_for` names the plugin to try first for a dataset, where it is installed;
:func:`pipeline.io.dicom.decode_stored` falls back on pydicom's order where it refuses a
stream. Where that plugin is this module's, :func:`decode_direct` decodes the common case
(one unsigned monochrome frame) straight into its array, as pydicom would give it (Bits
Allocated, unused bits cleared); for the rest pydicom does everything around the frame
(fragments, the dtype, sign and unused bits, colour), so the array has the shape and type
its other decoders give.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np

#: The libjpeg-turbo plugin's name among pydicom's decoding plugins.
LABEL = "lungseg-imagecodecs"
#: What the plugin decodes with libjpeg-turbo: JPEG Extended (Process 2 & 4), JPEG
#: Lossless, Non-Hierarchical (Process 14), and its First-Order Prediction (SV1) form.
JPEG_SYNTAXES = ("1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
#: What it decodes with CharLS: JPEG-LS Lossless and Near-Lossless.
JPEG_LS_SYNTAXES = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
#: Everything the plugin decodes.
SYNTAXES = JPEG_SYNTAXES + JPEG_LS_SYNTAXES
#: What the plugin needs, by transfer syntax (pydicom's plugin contract).
DECODER_DEPENDENCIES = {uid: ("imagecodecs>=2024.1",) for uid in SYNTAXES}
#: The plugins to try first, fastest first, by transfer syntax: the first one installed is
#: (the others keep pydicom's order, which puts pylibjpeg-libjpeg first for the JPEG family).
PREFERRED = {
    **dict.fromkeys(JPEG_SYNTAXES, (LABEL,)),
    **dict.fromkeys(JPEG_LS_SYNTAXES, (LABEL, "pyjpegls")),  # CharLS either way
    "1.2.840.10008.1.2.4.50": ("pillow",),  # JPEG Baseline: libjpeg-turbo in Pillow
}


def is_available(uid: str) -> bool:
    """Whether the libjpeg-turbo plugin can decode ``uid`` here (pydicom's plugin contract)."""
    return str(uid) in SYNTAXES and importlib.util.find_spec("imagecodecs") is not None


def decode_frame(src: bytes, runner: Any) -> bytes:
    """One monochrome JPEG or JPEG-LS frame as little-endian samples of its Bits Allocated.

    pydicom does the rest as for its own plugins: JPEG-LS's sign correction (the codestream
    has no sign) follows from the codestream's precision, read before decoding.

    Raises:
        ValueError: a colour frame, or one whose size differs from the dataset's.
    """
    if runner.samples_per_pixel != 1:
        samples = runner.samples_per_pixel
        raise ValueError(f"{LABEL} decodes monochrome frames, not {samples} samples a pixel")
    arr = _codec(str(runner.transfer_syntax))(src)
    if arr.shape != (runner.rows, runner.columns):
        raise ValueError(
            f"the frame decodes to {arr.shape}, the dataset says {(runner.rows, runner.columns)}"
        )
    return arr.astype(f"<u{max(1, runner.bits_allocated // 8)}", copy=False).tobytes()


def decode_direct(ds: Any) -> np.ndarray | None:
    """Stored values of a one-frame, unsigned, monochrome JPEG or JPEG-LS dataset, or None.

    The codec decodes the frame into the array returned: pydicom's way copies it twice
    (the plugin's bytes, then its own buffer) and shifts every value twice for the unused
    bits, ~9 ms of CPU for a 2048² 12-bit frame (42.6 against 33.4 ms a read here). The
    result is pydicom's: ``uint`` of Bits Allocated, bits above Bits Stored cleared for JPEG
    (pydicom leaves them in JPEG-LS; tested against pydicom for 8-16 bits, predictors 1-7,
    JPEG-LS lossless and near-lossless).
    None (pydicom decodes it) for anything else: signed values (their sign extension and
    JPEG-LS's sign correction stay pydicom's), several frames, colour, other Bits
    Allocated, a frame of another size or wider samples than allocated.
    """
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    allocated, stored = int(ds.get("BitsAllocated", 0)), int(ds.get("BitsStored", 0))
    if (
        syntax not in SYNTAXES
        or int(ds.get("SamplesPerPixel", 1)) != 1
        or int(ds.get("PixelRepresentation", 0)) != 0
        or int(ds.get("NumberOfFrames") or 1) != 1
        or allocated not in (8, 16)
        or not 1 <= stored <= allocated
    ):
        return None
    from pydicom.encaps import generate_frames

    arr = _codec(syntax)(next(generate_frames(ds.PixelData, number_of_frames=1)))
    if arr.shape != (int(ds.Rows), int(ds.Columns)) or arr.dtype.itemsize > allocated // 8:
        return None
    arr = arr.astype(np.uint8 if allocated == 8 else np.uint16, copy=False)
    if stored < allocated and syntax in JPEG_SYNTAXES:  # pydicom's unused-bit correction
        np.bitwise_and(arr, (1 << stored) - 1, out=arr)  # (not applied to JPEG-LS)
    return arr


def _codec(syntax: str) -> Callable[[bytes], np.ndarray]:
    """The decoder of one frame of ``syntax``: CharLS for JPEG-LS, else libjpeg-turbo."""
    import imagecodecs

    return imagecodecs.jpegls_decode if syntax in JPEG_LS_SYNTAXES else imagecodecs.jpeg8_decode


@functools.cache
def _register() -> None:
    """Add the libjpeg-turbo plugin to pydicom's decoders of :data:`SYNTAXES` (once).

    Without imagecodecs pydicom lists it as unavailable (:func:`_installed` says no).
    """
    with contextlib.suppress(ImportError, AttributeError, ValueError, NotImplementedError):
        from pydicom.pixels import get_decoder

        for uid in SYNTAXES:
            decoder = get_decoder(uid)
            if LABEL not in decoder.available_plugins:
                decoder.add_plugin(LABEL, (__name__, "decode_frame"))


def _installed(syntax: str, plugin: str) -> bool:
    """Whether pydicom can decode ``syntax`` with ``plugin`` here."""
    try:
        from pydicom.pixels import get_decoder

        return plugin in get_decoder(syntax).available_plugins
    except (ImportError, NotImplementedError):
        return False


def plugin_for(ds: Any) -> str | None:
    """The plugin to decode ``ds`` with first: the first of :data:`PREFERRED` installed."""
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", ""))
    for plugin in PREFERRED.get(syntax, ()):
        if plugin == LABEL:
            if int(ds.get("SamplesPerPixel", 1)) != 1:
                continue  # colour: the next one, or pydicom's order
            _register()
        if _installed(syntax, plugin):
            return plugin
    return None
