"""JPEG Lossless (process 14) pixel data decoded by imagecodecs' libjpeg-turbo, a pydicom plugin.

JPEG Lossless, selection value 1 (``1.2.840.10008.1.2.4.70``) is the most common compressed
syntax of CR and DX archives. pydicom decodes it with pylibjpeg-libjpeg: ~200 ms for a 2048²
12-bit frame here; libjpeg-turbo (through imagecodecs) gives the same values in ~37 ms.

This module is a pydicom decoding plugin (pydicom's *decoder plugins* guide: ``is_available``,
``DECODER_DEPENDENCIES`` and a frame decoding function). :func:`plugin_for` registers it with
pydicom's JPEG Lossless decoders (once) and says whether a dataset can use it: monochrome
frames of ``.57`` or ``.70``. pydicom still does everything around the frame (fragments,
the dtype, sign and unused bits), so the array is the one its own decoders give. Without
imagecodecs, or where libjpeg-turbo refuses a stream, the caller falls back on pydicom's own
decoders (:func:`pipeline.io.dicom.decode_stored`).
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

#: The plugin's name among pydicom's decoding plugins.
LABEL = "lungseg-imagecodecs"
#: JPEG Lossless, Non-Hierarchical (Process 14), and its First-Order Prediction (SV1) form.
SYNTAXES = ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
#: What the plugin needs, by transfer syntax (pydicom's plugin contract).
DECODER_DEPENDENCIES = {uid: ("imagecodecs>=2024.1",) for uid in SYNTAXES}


def is_available(uid: str) -> bool:
    """Whether the plugin can decode ``uid`` here (pydicom's plugin contract)."""
    return str(uid) in SYNTAXES and importlib.util.find_spec("imagecodecs") is not None


def decode_frame(src: bytes, runner: Any) -> bytes:
    """One monochrome frame as little-endian samples of the runner's Bits Allocated.

    Raises:
        ValueError: a colour frame, or one whose size differs from the dataset's.
    """
    import imagecodecs

    if runner.samples_per_pixel != 1:
        samples = runner.samples_per_pixel
        raise ValueError(f"{LABEL} decodes monochrome frames, not {samples} samples a pixel")
    arr = imagecodecs.jpeg8_decode(src)
    if arr.shape != (runner.rows, runner.columns):
        raise ValueError(
            f"the frame decodes to {arr.shape}, the dataset says {(runner.rows, runner.columns)}"
        )
    return arr.astype(f"<u{max(1, runner.bits_allocated // 8)}", copy=False).tobytes()


@functools.cache
def _registered() -> bool:
    """Add the plugin to pydicom's JPEG Lossless decoders (once); whether it is usable."""
    try:
        from pydicom.pixels import get_decoder

        decoders = [get_decoder(uid) for uid in SYNTAXES]
        for decoder in decoders:
            if LABEL not in decoder.available_plugins:
                decoder.add_plugin(LABEL, (__name__, "decode_frame"))
    except (ImportError, AttributeError, ValueError, NotImplementedError):
        return False
    return all(LABEL in decoder.available_plugins for decoder in decoders)


def plugin_for(ds: Any) -> str | None:
    """The plugin's name where ``ds`` is a monochrome JPEG Lossless image it can decode."""
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", ""))
    if syntax not in SYNTAXES or int(ds.get("SamplesPerPixel", 1)) != 1:
        return None
    return LABEL if _registered() else None
