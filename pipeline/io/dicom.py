"""Decode DICOM chest radiographs (CR, DX, secondary capture) into display-ready arrays.

The grayscale pipeline of PS3.3 C.11 / PS3.4 N.2 is applied in order:

1. stored values, with ``BitsStored`` honoured (pydicom's decoders mask unused high bits;
   the JPEG family goes to its fastest decoder first, :mod:`pipeline.io.decoders`);
2. Modality LUT: the Modality LUT Sequence, else Rescale Slope/Intercept;
3. VOI LUT: the VOI LUT Sequence or Window Center/Width (item ``voi_index``, the first by
   default), selected by :class:`VOISource`;
4. scaling to [0, 1] by the *range* of the previous stage's output (not the image's own
   min/max, so a PNG and the DICOM made from it decode to the same numbers);
5. presentation: the result is inverted when the image is displayed "low = white":
   MONOCHROME1 unless Presentation LUT Shape is IDENTITY, or MONOCHROME2 with Presentation
   LUT Shape INVERSE. Lungs (air) are always dark in the output.

The output is a ``float32`` array ``rows x columns`` in [0, 1] and a metadata dict.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.enums import SpacingSource, StrEnum, ViewPosition
from pipeline.io.errors import (
    DecodeError,
    EmptyImageError,
    InputError,
    LateralViewError,
    MultiFrameError,
    NoPixelDataError,
    NotAnImageError,
    TruncatedFileError,
    UnsupportedSOPClassError,
)

#: Projection-radiograph SOP classes accepted as input, by UID.
SUPPORTED_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
}
#: Modalities accepted when an object carries no SOP Class UID at all.
SUPPORTED_MODALITIES = ("CR", "DX", "OT")


class VOISource(StrEnum):
    """Which VOI transformation to apply.

    ``auto`` uses the VOI LUT Sequence when present, else the window; ``lut`` and ``window``
    insist on one (an error names what the file has); ``none`` skips the VOI stage.
    """

    AUTO = "auto"
    LUT = "lut"
    WINDOW = "window"
    NONE = "none"


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Tell whether a file is DICOM Part 10 by content (the ``DICM`` magic at offset 128)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


#: Values larger than this are read from the file only when used (pydicom's ``defer_size``):
#: an archive's multi-frame cine loops, tomosynthesis or whole-slide objects (hundreds of MB
#: each) are refused from their header, without their pixels in memory.
DEFER_BYTES = 16 * 2**20


def read_dataset(path: str | os.PathLike, *, force: bool = False) -> Any:
    """Read a DICOM dataset, turning pydicom's failures into typed :class:`InputError`.

    Values over :data:`DEFER_BYTES` (the pixels of large objects) are read when first used.

    Args:
        path: the file.
        force: also parse files without the Part 10 preamble (old archives write raw
            datasets); such a file must then hold Pixel Data or a SOP Class UID.

    Returns:
        The ``pydicom.Dataset``.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, force=force, defer_size=DEFER_BYTES)
    except InvalidDicomError as err:
        raise NotAnImageError(path, "not a DICOM file (no 'DICM' marker)") from err
    except (EOFError, OSError, ValueError, KeyError, TypeError) as err:
        raise TruncatedFileError(path, f"DICOM header cannot be read: {err}") from err
    ended = [str(w.message) for w in caught if "end of file" in str(w.message).lower()]
    if ended:
        raise TruncatedFileError(path, f"file ends early: {ended[0]}")
    if getattr(ds, "preamble", None) is not None and len(ds) == 0:
        raise TruncatedFileError(path, "file ends after the DICOM file meta header")
    if force and ds.preamble is None and "PixelData" not in ds and "SOPClassUID" not in ds:
        raise NotAnImageError(path, "not a DICOM file and not an image format lungseg reads")
    return ds


def check_radiograph(ds: Any, path: str | os.PathLike, *, allow_lateral: bool = False) -> None:
    """Reject objects that are not single-frame frontal projection radiographs.

    Raises:
        UnsupportedSOPClassError, NoPixelDataError, MultiFrameError, EmptyImageError,
        LateralViewError: with the file and the reason.
    """
    _check_sop_class(ds, path)
    if "PixelData" not in ds:
        raise NoPixelDataError(path, "DICOM object has no Pixel Data (7FE0,0010)")
    frames = _integer(ds, "NumberOfFrames", 1)
    if frames > 1:
        raise MultiFrameError(path, f"multi-frame object ({frames} frames); expected one frame")
    rows, cols = _integer(ds, "Rows", 0), _integer(ds, "Columns", 0)
    if rows <= 0 or cols <= 0:
        raise EmptyImageError(path, f"image has {rows} rows and {cols} columns (Rows/Columns)")
    view = ViewPosition.from_dicom(ds.get("ViewPosition"))
    if view.is_lateral and not allow_lateral:
        raise LateralViewError(
            path,
            f"lateral view (ViewPosition {view.value}); only frontal PA/AP views are segmented",
        )


def _integer(ds: Any, keyword: str, default: int) -> int:
    """An integer attribute's value; ``default`` when absent, empty or no number."""
    try:
        return int(ds.get(keyword) or default)
    except (TypeError, ValueError):
        return default


#: Photometric Interpretation defined terms of single-sample (grayscale) images.
GRAYSCALE_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
#: All Photometric Interpretation defined terms pydicom decodes.
PHOTOMETRICS = (
    *GRAYSCALE_PHOTOMETRICS,
    "RGB",
    "PALETTE COLOR",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_RCT",
    "YBR_ICT",
    "YBR_PARTIAL_420",
)


def mend_image_pixel(ds: Any) -> list[str]:
    """Supply what old or hand-made files leave out of the Image Pixel module; mend spellings.

    Real exports omit Photometric Interpretation, Samples per Pixel, Pixel Representation
    or Bits Stored, or write ``monochrome2``, ``MONOCHROME 2`` or a term the standard does
    not define (``GRAYSCALE``); pydicom then refuses the pixels. What a viewer assumes is set
    on ``ds``: one sample, MONOCHROME2 (for a one-sample image without a palette, where the
    term is absent or unknown), unsigned, Bits Stored = Bits Allocated (also where Bits
    Stored exceeds it), one frame where Number of Frames is no number; the defined term's
    spelling.

    Returns:
        What was assumed, one phrase each (none for a well-formed file).
    """
    notes = []
    written = str(ds.get("PhotometricInterpretation", "") or "")
    photometric = _defined_term(written)
    grey = _integer(ds, "SamplesPerPixel", 1) == 1 and "RedPaletteColorLookupTableData" not in ds
    if photometric not in PHOTOMETRICS and grey:
        photometric = "MONOCHROME2"  # absent or unknown (GRAYSCALE...): what a viewer shows
    if photometric != written and photometric in PHOTOMETRICS:
        ds.PhotometricInterpretation = photometric
        notes.append(f"Photometric Interpretation {photometric} (the file has {written!r})")
    defaults = {
        "SamplesPerPixel": 1 if photometric in GRAYSCALE_PHOTOMETRICS else 3,
        "PixelRepresentation": 0,
        "BitsStored": _integer(ds, "BitsAllocated", 0) or None,
    }
    for keyword, value in defaults.items():
        if keyword not in ds and value is not None:
            setattr(ds, keyword, value)
            notes.append(f"{keyword} {value} (absent)")
    if "NumberOfFrames" in ds and _integer(ds, "NumberOfFrames", -1) < 0:
        frames = _written(ds, "NumberOfFrames")
        notes.append(f"one frame (the file's Number of Frames is {frames!r})")
        del ds.NumberOfFrames
    allocated = _integer(ds, "BitsAllocated", 0)
    if allocated and _integer(ds, "BitsStored", 0) > allocated:
        notes.append(f"BitsStored {allocated} (the file has {ds.BitsStored}, > Bits Allocated)")
        ds.BitsStored = allocated
    return notes


#: Transfer syntaxes a dataset read without file meta can be in, by how pydicom parsed it:
#: ``(implicit VR, little endian)``. Explicit VR Big Endian (retired) is the one big-endian one.
NATIVE_SYNTAXES = {
    (True, True): "1.2.840.10008.1.2",  # Implicit VR Little Endian: DICOM's default
    (False, True): "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    (False, False): "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
}


def mend_transfer_syntax(ds: Any, path: str | os.PathLike) -> list[str]:
    """Name the transfer syntax of a raw dataset (no file meta) by how it was parsed.

    Old archives and some PACS exports write datasets without the Part 10 file meta, and so
    without a Transfer Syntax UID; pydicom reads the header (guessing the VR encoding and
    byte order) but refuses the pixels. Native (uncompressed) pixels are in the encoding the
    header was read in, which is set as the file's transfer syntax.

    Returns:
        What was assumed (none where the file names its transfer syntax).

    Raises:
        DecodeError: the pixels are encapsulated, i.e. compressed by a codec nothing names.
    """
    meta = ds.get("file_meta")
    if meta is not None and meta.get("TransferSyntaxUID"):
        return []
    if "PixelData" in ds and ds["PixelData"].is_undefined_length:
        raise DecodeError(
            path,
            "pixel data is compressed (encapsulated) but no Transfer Syntax UID names its codec",
        )
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID

    implicit, little = getattr(ds, "original_encoding", (True, True))
    syntax = UID(NATIVE_SYNTAXES.get((bool(implicit), bool(little)), NATIVE_SYNTAXES[True, True]))
    ds.file_meta = meta if meta is not None else FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    return [f"{syntax.name} (no Transfer Syntax UID: read as the header is encoded)"]


def _compact(term: str) -> str:
    return re.sub(r"[\s_\-]", "", term).upper()


#: Each Photometric Interpretation defined term by its spelling without separators.
_COMPACT_TERMS = {_compact(t): t for t in PHOTOMETRICS}


def _defined_term(written: str) -> str:
    """The Photometric Interpretation term ``written`` spells, else ``written`` upper-cased.

    Case, spaces, underscores and hyphens are ignored (``Monochrome-2``, ``MONOCHROME 2``).
    """
    return _COMPACT_TERMS.get(_compact(written), written.strip().upper())


def mend_rescale(ds: Any) -> list[str]:
    """Drop a Rescale Slope/Intercept that is not one finite number each, or whose slope is 0.

    Applied, such a rescale made every pixel the same (slope 0) or not a number (an
    infinity), silently; text or an empty value failed the image. Without it the stored
    values are used, as where a file has none.

    Returns:
        What was assumed (none for a usable or absent rescale).
    """
    if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        return []
    try:
        (slope,), (intercept,) = (
            numeric_values(ds, k) for k in ("RescaleSlope", "RescaleIntercept")
        )
        usable = bool(np.isfinite(slope) and np.isfinite(intercept) and slope != 0)
    except (TypeError, ValueError):  # text, empty, several values
        usable = False
    if usable:
        return []
    slope, intercept = (_written(ds, k) for k in ("RescaleSlope", "RescaleIntercept"))
    del ds.RescaleSlope, ds.RescaleIntercept
    return [f"no rescale (the file's Rescale Slope {slope!r}, Intercept {intercept!r})"]


def _written(ds: Any, keyword: str) -> str:
    """The value of ``keyword`` as the file writes it (its text, not pydicom's reading)."""
    value = ds.get_item(keyword).value
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    if value is None or isinstance(value, str):
        return value or ""
    return "\\".join(map(str, value)) if isinstance(value, Sequence) else str(value)


def _check_sop_class(ds: Any, path: str | os.PathLike) -> None:
    meta = ds.get("file_meta") or {}
    uid = str(ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", ""))
    if uid in SUPPORTED_SOP_CLASSES:
        return
    if not uid and str(ds.get("Modality", "")).upper() in (*SUPPORTED_MODALITIES, ""):
        return
    from pydicom.uid import UID

    name = UID(uid).name if uid else "none"
    allowed = "; ".join(SUPPORTED_SOP_CLASSES.values())
    raise UnsupportedSOPClassError(
        path, f"SOP class '{name}' ({uid}) is not a projection radiograph; supported: {allowed}"
    )


def decode_stored(ds: Any, path: str | os.PathLike) -> np.ndarray:
    """Decode Pixel Data to stored values, grayscale (RGB is reduced to luma with a warning)."""
    try:
        arr = _pixel_array(ds)
    except (ValueError, EOFError) as err:
        text = str(err)
        if "length" in text or "expected" in text.lower() or "truncat" in text.lower():
            raise TruncatedFileError(path, f"pixel data is incomplete: {text}") from err
        raise DecodeError(path, f"pixel data cannot be decoded: {text}") from err
    except (RuntimeError, NotImplementedError, AttributeError, TypeError) as err:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise DecodeError(path, f"pixel data ({name}) cannot be decoded: {err}") from err
    if arr.ndim == 3 and int(ds.get("SamplesPerPixel", 1)) == 3:
        arr = rgb_to_gray(arr, path)
    if arr.ndim != 2:
        raise DecodeError(path, f"pixel array has shape {arr.shape}; expected rows x columns")
    return arr


def _pixel_array(ds: Any) -> np.ndarray:
    """``ds.pixel_array``, decoded first by the fastest plugin for its syntax.

    :mod:`pipeline.io.decoders` (JPEG Lossless and Extended by libjpeg-turbo, JPEG-LS by
    CharLS, JPEG Baseline by Pillow; one unsigned monochrome JPEG or JPEG-LS frame decoded
    without pydicom's buffers, :func:`~pipeline.io.decoders.decode_direct`); where that
    plugin refuses a stream, pydicom's own order of decoders decides (and raises what they
    raise).
    """
    from pipeline.io.decoders import LABEL, decode_direct, plugin_for

    plugin = plugin_for(ds)
    if plugin == LABEL:
        with contextlib.suppress(Exception):  # any refusal or doubt: pydicom's way below
            direct = decode_direct(ds)
            if direct is not None:
                return direct
    if plugin is not None:
        ds.pixel_array_options(decoding_plugin=plugin)
        try:
            return ds.pixel_array
        except Exception:  # any refusal: pydicom's own decoders decide below
            pass
        finally:
            ds.pixel_array_options()
    return ds.pixel_array


def rgb_to_gray(arr: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Reduce an ``(..., 3)`` RGB array to grayscale, keeping its range.

    Gray images stored as RGB (three equal channels) lose nothing; true colour is reduced to
    luma (ITU-R BT.601 weights) with a warning naming the file.
    """
    rgb = arr[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0]
    warnings.warn(f"{path}: colour image reduced to grayscale (luma)", UserWarning, stacklevel=3)
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float64)
    return rgb.astype(np.float64) @ weights


def _stored_range(ds: Any) -> tuple[float, float]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _lut_range(item: Any) -> tuple[float, float]:
    return 0.0, 2.0 ** int(item.LUTDescriptor[2]) - 1


def apply_modality(arr: np.ndarray, ds: Any) -> tuple[np.ndarray, tuple[float, float]]:
    """Apply the Modality LUT; return the values and the range they can take."""
    from pydicom.pixels import apply_modality_lut

    lo, hi = _stored_range(ds)
    if ds.get("ModalityLUTSequence"):
        return apply_modality_lut(arr, ds), _lut_range(ds.ModalityLUTSequence[0])
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        ends = sorted((lo * slope + intercept, hi * slope + intercept))
        return apply_modality_lut(arr, ds), (ends[0], ends[1])
    return arr, (lo, hi)


def apply_voi(
    arr: np.ndarray,
    ds: Any,
    value_range: tuple[float, float],
    source: VOISource = VOISource.AUTO,
    index: int = 0,
) -> tuple[np.ndarray, tuple[float, float], str]:
    """Apply the selected VOI LUT or window.

    Args:
        arr: modality values.
        ds: the dataset.
        value_range: range of the modality values (the window's output range too).
        source: which VOI to use.
        index: which item of a multi-valued VOI (0 = first).

    Returns:
        The values, their range, and a description of what was applied.
    """
    source = VOISource.parse(source)
    has_lut, has_window = bool(ds.get("VOILUTSequence")), "WindowCenter" in ds
    use_lut = source is VOISource.LUT or (source is VOISource.AUTO and has_lut)
    use_window = source is VOISource.WINDOW or (source is VOISource.AUTO and not has_lut)
    if source is not VOISource.NONE and use_lut:
        return _apply_voi_lut_item(arr, ds, index, has_lut)
    if source is not VOISource.NONE and use_window and (has_window or source is VOISource.WINDOW):
        why = _unusable_window(ds, index) if has_window else None
        if source is VOISource.AUTO and why is not None:  # the image is still usable
            return arr, value_range, f"none (the window cannot be applied: {why})"
        return _apply_window(arr, ds, value_range, index, has_window, why)
    return arr, value_range, "none"


def _apply_voi_lut_item(arr, ds, index, has_lut):
    from pydicom.pixels.processing import apply_voi as pydicom_apply_voi

    if not has_lut:
        raise ValueError("VOI 'lut' was asked for but the file has no VOI LUT Sequence")
    items = ds.VOILUTSequence
    _check_index(index, len(items), "VOI LUT Sequence item")
    if not np.issubdtype(arr.dtype, np.integer):
        arr = np.rint(arr).astype(np.int64)
    out = pydicom_apply_voi(arr, ds, index=index)
    label = str(items[index].get("LUTExplanation", "")) or f"item {index}"
    return out, _lut_range(items[index]), f"VOI LUT Sequence ({label})"


#: VOI LUT Function (0028,1056) defined terms: how a window maps values.
VOI_LUT_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def _unusable_window(ds: Any, index: int) -> str | None:
    """Why window ``index`` of the file cannot be applied, or None when it can.

    Real files carry text, an empty value or a zero width in Window Center/Width, or an
    unknown VOI LUT Function; an index past the file's windows is left to the caller.
    """
    try:
        centers, widths = (numeric_values(ds, k) for k in ("WindowCenter", "WindowWidth"))
    except (TypeError, ValueError) as err:
        return f"Window Center/Width are not numbers ({err})"
    if not centers or not widths:
        return "Window Center/Width are empty"
    if index >= min(len(centers), len(widths)):
        return None
    center, width = centers[index], widths[index]
    func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if func not in VOI_LUT_FUNCTIONS:
        return f"VOI LUT Function {func!r} is none of {', '.join(VOI_LUT_FUNCTIONS)}"
    if not (np.isfinite(center) and np.isfinite(width)) or width < (1 if func == "LINEAR" else 0):
        return f"Window Center {center:g} / Width {width:g} (the width must be >= 1 for LINEAR)"
    if width == 0:
        return "Window Width 0"
    return None


def numeric_values(ds: Any, keyword: str) -> list[float]:
    """The values of a numeric attribute as floats, none when absent or empty.

    Raises:
        ValueError: a value is not a number (pydicom could not read it, or it is text).
        TypeError: likewise, for values pydicom left in another form.
    """
    value = ds.get(keyword)
    if value is None or isinstance(value, (str, bytes, int, float)):
        value = [] if value in (None, "", b"") else [value]
    return [float(v) for v in value]


def _apply_window(arr, ds, value_range, index, has_window, why=None):
    from pydicom.pixels import apply_windowing

    if not has_window:
        raise ValueError("VOI 'window' was asked for but the file has no Window Center/Width")
    if why is not None:
        raise ValueError(f"VOI 'window' was asked for but it cannot be applied: {why}")
    centers = ds["WindowCenter"]
    _check_index(index, centers.VM, "window")
    out = apply_windowing(arr, ds, index=index)
    center = centers.value[index] if centers.VM > 1 else centers.value
    widths = ds["WindowWidth"]
    width = widths.value[index] if widths.VM > 1 else widths.value
    func = str(ds.get("VOILUTFunction", "LINEAR"))
    return out, value_range, f"window C={float(center):g} W={float(width):g} {func}"


def _check_index(index: int, count: int, what: str) -> None:
    if not 0 <= index < count:
        raise ValueError(
            f"{what} index {index} is out of range; the file has {count} (0..{count - 1})"
        )


def needs_inversion(ds: Any) -> bool:
    """Tell whether low values display white, so the image must be inverted.

    That is MONOCHROME1 (unless its Presentation LUT Shape is IDENTITY), or any image whose
    Presentation LUT Shape is INVERSE.
    """
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    if photometric == "MONOCHROME1":
        return shape != "IDENTITY"
    return shape == "INVERSE"


def to_unit_range(arr: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Scale values from ``value_range`` to [0, 1] (clipped), as float32."""
    lo, hi = value_range
    scale = 1.0 / (hi - lo) if hi > lo else 1.0
    out = (np.asarray(arr, dtype=np.float64) - lo) * scale
    return np.clip(out, 0.0, 1.0).astype(np.float32)


#: Magnifications a chest radiograph can have (source-to-detector over source-to-patient
#: distance: ~1.1 for a PA film at 180 cm, up to ~1.5 for a short bedside distance); a value
#: outside is taken for a header error and not applied.
MAGNIFICATION_RANGE = (1.0, 2.0)


def pixel_spacing(ds: Any) -> tuple[tuple[float, float], SpacingSource]:
    """Row and column spacing in mm at the patient where the file allows, and its source.

    A Pixel Spacing that differs from the Imager Pixel Spacing (or comes alone) is calibrated
    to the patient and wins. Imager Pixel Spacing is the detector's: the patient, nearer the
    source, is magnified on it (areas ~1.2-1.4 x too large for a PA chest), so it is divided
    by the Estimated Radiographic Magnification Factor or, without one, by Distance Source to
    Detector over Distance Source to Patient (DICOM PS3.3 10.7.1.1, as IHE profiles and
    viewers apply them); without either it is used as it is, and the source says so. A Pixel
    Spacing equal to the Imager Pixel Spacing is the detector's too. Without any the spacing
    is unknown (NaN).
    """
    calibrated, detector = spacing_pair(ds, "PixelSpacing"), spacing_pair(ds, "ImagerPixelSpacing")
    if calibrated is not None and calibrated != detector:
        return calibrated, SpacingSource.PIXEL_SPACING
    if detector is None:
        return (float("nan"), float("nan")), SpacingSource.NONE
    magnification, source = _magnification(ds)
    return (detector[0] / magnification, detector[1] / magnification), source


def _magnification(ds: Any) -> tuple[float, SpacingSource]:
    """The file's radiographic magnification and where it came from (1 where it says none)."""
    low, high = MAGNIFICATION_RANGE
    estimated = _one_number(ds, "EstimatedRadiographicMagnificationFactor")
    if estimated is not None and low <= estimated <= high:
        return estimated, SpacingSource.IMAGER_PIXEL_SPACING_MAGNIFICATION
    sid, sod = (_one_number(ds, k) for k in ("DistanceSourceToDetector", "DistanceSourceToPatient"))
    if sid is not None and sod and low <= sid / sod <= high:
        return sid / sod, SpacingSource.IMAGER_PIXEL_SPACING_DISTANCES
    return 1.0, SpacingSource.IMAGER_PIXEL_SPACING


def _one_number(ds: Any, keyword: str) -> float | None:
    """A single-valued numeric attribute as a finite positive float, else None."""
    values = positive_values(ds, keyword, 1)
    return None if values is None else values[0]


def positive_values(ds: Any, keyword: str, count: int) -> tuple[float, ...] | None:
    """The ``count`` finite positive numbers an attribute holds, or None when it holds other.

    None for an absent attribute and for what real files carry instead: another number of
    values, text (``0.2,0.2``), zeros, infinities.
    """
    try:
        values = numeric_values(ds, keyword)
    except (TypeError, ValueError):  # pydicom could not read the value as numbers
        return None
    if len(values) != count or not all(np.isfinite(v) and v > 0 for v in values):
        return None
    return tuple(values)


def spacing_pair(ds: Any, keyword: str) -> tuple[float, float] | None:
    """Row and column spacing from a spacing attribute: two positive numbers, or None."""
    pair = positive_values(ds, keyword, 2)
    return None if pair is None else (pair[0], pair[1])


def dicom_metadata(ds: Any) -> dict[str, Any]:
    """The identifiers and acquisition facts that later stages need, with no None values."""
    spacing, source = pixel_spacing(ds)
    return {
        "format": "DICOM",
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        "sop_class_uid": str(ds.get("SOPClassUID", "")),
        "modality": str(ds.get("Modality", "")),
        "photometric_interpretation": str(ds.get("PhotometricInterpretation", "")),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "view_position": ViewPosition.from_dicom(ds.get("ViewPosition")).value,
        "patient_orientation": "\\".join(str(v) for v in ds.get("PatientOrientation", []) or []),
        "transfer_syntax_uid": str(getattr(ds.get("file_meta", {}), "TransferSyntaxUID", "")),
        "pixel_spacing": spacing,
        "pixel_spacing_source": source.value,
    }


def grayscale_lut(ds: Any, voi: VOISource, voi_index: int) -> tuple[np.ndarray, str] | None:
    """The whole grayscale pipeline (steps 2-5) as a float32 table over the stored values.

    Indexing the table gives exactly what the steps give pixel by pixel, at a fraction of
    the cost on a large image. None when the stored range is too wide to tabulate.
    """
    lo, hi = _stored_range(ds)
    if hi - lo > 2**16:
        return None
    values = np.arange(int(lo), int(hi) + 1, dtype=np.int64)
    lut, voi_text = _display_values(values, ds, voi, voi_index)
    return lut, voi_text


def _display_values(
    stored: np.ndarray, ds: Any, voi: VOISource, voi_index: int
) -> tuple[np.ndarray, str]:
    """Steps 2-5 of the module docstring on an array of stored values."""
    values, value_range = apply_modality(stored, ds)
    values, value_range, voi_text = apply_voi(values, ds, value_range, voi, voi_index)
    image = to_unit_range(values, value_range)
    return (1.0 - image if needs_inversion(ds) else image), voi_text


def to_display(
    stored: np.ndarray, ds: Any, voi: VOISource, voi_index: int
) -> tuple[np.ndarray, str]:
    """Stored values → float32 [0, 1], lungs dark (by table lookup for integer data).

    Raises:
        ValueError: the VOI asked for is not in the file, or its index is out of range.
    """
    table = grayscale_lut(ds, voi, voi_index) if np.issubdtype(stored.dtype, np.integer) else None
    if table is None:
        return _display_values(stored, ds, voi, voi_index)
    lut, voi_text = table
    lo = int(_stored_range(ds)[0])
    index = stored if lo == 0 else stored.astype(np.int32) - lo
    return np.take(lut, index, mode="clip"), voi_text


def decode_at(
    ds: Any, path: str | os.PathLike, min_size: int | None, network_size: int | None = None
) -> tuple[np.ndarray, int, float]:
    """Stored values at the coarsest resolution keeping the longer side >= ``min_size``.

    ``network_size`` (the letterbox the image goes to) restricts the factor to those that
    keep the letterboxed image as the full one would be
    (:func:`pipeline.io.reduced.reduction_factor`).

    Returns:
        ``(stored values, reduction factor, shift)``: factor 1 is the full grid; ``shift``
        is :func:`pipeline.io.reduced.recentre`'s, for after the grayscale pipeline.
    """
    from pipeline.io.reduced import block_mean, decode_reduced, reduction_factor

    if min_size:
        try:
            reduced = decode_reduced(ds, min_size, network_size)
        except (OSError, ValueError, SyntaxError):  # the codec refused: decode in full
            reduced = None
        if reduced is not None:
            return reduced
    stored = decode_stored(ds, path)
    k = reduction_factor(stored.shape, min_size, network_size)
    if k < 2 or not np.issubdtype(stored.dtype, np.integer):
        return stored, 1, 0.0
    return block_mean(stored, k), k, 0.0


def read_dicom(
    path: str | os.PathLike,
    *,
    voi: VOISource | str = VOISource.AUTO,
    voi_index: int = 0,
    allow_lateral: bool = False,
    force: bool = False,
    min_size: int | None = None,
    network_size: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a DICOM radiograph as a float32 ``rows x columns`` array in [0, 1], lungs dark.

    Args:
        path: the file.
        voi: which VOI transformation to apply (see :class:`VOISource`).
        voi_index: which window or VOI LUT item to use when the file has several.
        allow_lateral: accept lateral views instead of raising :class:`LateralViewError`.
        force: parse files without the Part 10 preamble.
        min_size: decode at a reduced resolution whose longer side is at least this
            (:mod:`pipeline.io.reduced`); None: the full grid.
        network_size: the letterbox size next (restricts the reduction, see there).

    Returns:
        The image and its metadata (see :func:`dicom_metadata`; also ``voi``, ``inverted``,
        ``assumed``: what :func:`mend_transfer_syntax`, :func:`mend_image_pixel` and
        :func:`mend_rescale` supplied and a
        skipped window, "" for a well-formed file,
        and when reduced ``reduced_from``, the full grid's ``(rows, columns)``, and
        ``reduction``, the factor).

    Raises:
        InputError: a subclass naming the file and what is wrong with it.
    """
    voi = VOISource.parse(voi)  # a usage error, raised before the file is touched
    path = Path(path)
    ds = read_dataset(path, force=force)
    check_radiograph(ds, path, allow_lateral=allow_lateral)
    assumed = mend_transfer_syntax(ds, path) + mend_image_pixel(ds) + mend_rescale(ds)
    from pipeline.io.reduced import recentre

    stored, factor, shift = decode_at(ds, path, min_size, network_size)
    try:
        image, voi_text = to_display(stored, ds, voi, voi_index)
    except ValueError as err:
        raise InputError(path, f"grayscale transform failed: {err}") from err
    image = recentre(image, shift)
    if voi_text.startswith("none ("):  # a window skipped: as much an assumption as the rest
        assumed.append(f"VOI {voi_text}")
    meta = dicom_metadata(ds)
    meta.update(voi=voi_text, inverted=needs_inversion(ds), assumed="; ".join(assumed))
    if factor > 1:
        meta.update(reduced_from=(int(ds.Rows), int(ds.Columns)), reduction=factor)
    return image, meta
