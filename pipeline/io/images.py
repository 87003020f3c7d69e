"""Read non-DICOM images (PNG, JPEG, TIFF, BMP, NIfTI, MHA/MHD, NRRD) and detect formats.

Every reader returns a float32 ``rows x columns`` array in [0, 1] as the file stores it
(never its transpose): PIL's raster order for PNG/JPEG/TIFF/BMP, ITK's for NIfTI/MHA/NRRD
(the first index, ``i``/``x``, is the column, as in ITK, 3D Slicer and DICOM).

NIfTI is read with nibabel, not SimpleITK: ITK silently zero-fills a truncated NIfTI file
(even gzipped), nibabel reports it.

Values are scaled by the range of the stored type (8-bit: 0..255, 16-bit: 0..65535, so a
PNG and the DICOM made from it agree), or by the image's own min..max for signed, 32-bit
and floating-point data whose range the type does not tell.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.enums import InputFormat, SpacingSource
from pipeline.io.dicom import rgb_to_gray, to_unit_range
from pipeline.io.errors import (
    EmptyImageError,
    MultiFrameError,
    NotAnImageError,
    TruncatedFileError,
    UnreadableFileError,
)

_MAGIC: tuple[tuple[int, bytes, InputFormat], ...] = (
    (128, b"DICM", InputFormat.DICOM),
    (0, b"\x89PNG\r\n\x1a\n", InputFormat.PNG),
    (0, b"\xff\xd8\xff", InputFormat.JPEG),
    (0, b"II*\x00", InputFormat.TIFF),
    (0, b"MM\x00*", InputFormat.TIFF),
    (0, b"BM", InputFormat.BMP),
    (0, b"NRRD", InputFormat.NRRD),
)
_SUFFIXES: dict[str, InputFormat] = {
    ".nii": InputFormat.NIFTI,
    ".nii.gz": InputFormat.NIFTI,
    ".mha": InputFormat.MHA,
    ".mhd": InputFormat.MHA,
    ".nrrd": InputFormat.NRRD,
    ".nhdr": InputFormat.NRRD,
}  # DICOM is never recognised by name: a .dcm without the marker is tried as a raw dataset
_TYPE_RANGES = {np.dtype(np.uint8): (0.0, 255.0), np.dtype(np.uint16): (0.0, 65535.0)}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def detect_format(path: str | os.PathLike) -> InputFormat | None:
    """Recognise a file's format by its magic bytes, else by its suffix.

    Returns:
        The format, or None when neither tells (the caller may still try DICOM without
        preamble).

    Raises:
        UnreadableFileError: the file is missing or cannot be read.
        NotAnImageError: the file is empty.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as err:
        raise UnreadableFileError(path, f"cannot be opened: {err.strerror or err}") from err
    if not head:
        raise NotAnImageError(path, "file is empty (0 bytes)")
    for offset, magic, fmt in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return fmt
    return _SUFFIXES.get(_suffix(path))


def file_signature(path: str | os.PathLike) -> list[int] | None:
    """What changes when a file is written, replaced or changed in any way; None if it is gone.

    Inode, size, and the modification and status-change times in nanoseconds: a copy still
    being written, one completed since, a file replaced by another of the same name or
    given read permission all differ from it.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def value_range(arr: np.ndarray) -> tuple[float, float]:
    """The range to scale by: the stored type's for 8/16-bit unsigned, else min..max."""
    if arr.dtype == np.bool_:
        return 0.0, 1.0
    if arr.dtype in _TYPE_RANGES:
        return _TYPE_RANGES[arr.dtype]
    return float(arr.min()), float(arr.max())


def base_metadata(fmt: InputFormat) -> dict[str, Any]:
    """Metadata keys every reader fills, with neutral values (no None, so batches collate)."""
    return {
        "format": fmt.value,
        "study_instance_uid": "",
        "series_instance_uid": "",
        "sop_instance_uid": "",
        "sop_class_uid": "",
        "modality": "",
        "photometric_interpretation": "",
        "bits_stored": 0,
        "view_position": "UNKNOWN",
        "patient_orientation": "",
        "transfer_syntax_uid": "",
        "pixel_spacing": (float("nan"), float("nan")),
        "pixel_spacing_source": SpacingSource.NONE.value,
        "voi": "none",
        "inverted": False,
    }


def _pil_array(img: Any, path: Path) -> tuple[np.ndarray, tuple[float, float]]:
    """Pixels of a Pillow image as grayscale, and the range they can take."""
    mode = img.mode
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16), (0.0, 65535.0)
    if mode == "I":  # 16-bit PNG/TIFF opened as 32-bit by some Pillow versions
        arr = np.asarray(img)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.uint16), (0.0, 65535.0)
        return arr, value_range(arr)
    if mode in ("1", "L", "F"):
        arr = np.asarray(img)
        return arr, value_range(arr)
    if mode == "LA":
        return np.asarray(img)[..., 0], (0.0, 255.0)
    return rgb_to_gray(np.asarray(img.convert("RGB")), path), (0.0, 255.0)


def read_pil(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read PNG, JPEG, TIFF or BMP with Pillow."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                raise MultiFrameError(path, f"multi-page image ({frames} pages); expected one")
            fmt = InputFormat.parse(img.format)
            arr, lo_hi = _pil_array(img, path)
    except UnidentifiedImageError as err:
        raise NotAnImageError(path, "not an image format lungseg reads") from err
    except (OSError, SyntaxError) as err:
        raise TruncatedFileError(path, f"image data cannot be read: {err}") from err
    return to_unit_range(arr, lo_hi), base_metadata(fmt)


def _in_plane(arr: np.ndarray, path: Path, axes: tuple[int, int]) -> np.ndarray:
    """Keep the two in-plane ``axes``; every other axis must be a singleton (no volumes)."""
    if any(n != 1 for i, n in enumerate(arr.shape) if i not in axes):
        raise MultiFrameError(
            path, f"array of shape {arr.shape} is a volume; expected one 2D image"
        )
    return arr.reshape([arr.shape[i] for i in axes])


def _itk_reason(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Reason:", "itk::"))] or lines
    return " ".join(useful)[:300] or "unreadable"


def read_itk(path: str | os.PathLike, fmt: InputFormat) -> tuple[np.ndarray, dict[str, Any]]:
    """Read MHA/MHD or NRRD with SimpleITK (ITK index order: rows = y, columns = x)."""
    import SimpleITK as sitk

    path = Path(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise TruncatedFileError(
            path, f"{fmt.value} file cannot be read: {_itk_reason(err)}"
        ) from err
    arr = sitk.GetArrayFromImage(img)  # (z, y, x) or (y, x), components last
    if img.GetNumberOfComponentsPerPixel() > 1:
        arr = rgb_to_gray(arr, path)
    arr = _in_plane(arr, path, (arr.ndim - 2, arr.ndim - 1))
    spacing = img.GetSpacing()
    return to_unit_range(arr, value_range(arr)), _with_spacing(fmt, spacing[1], spacing[0])


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read NIfTI with nibabel; its ``(i, j)`` array is ``(x, y)``, so rows are ``j``."""
    import zlib

    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(path)
        arr = np.asanyarray(img.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as err:
        raise TruncatedFileError(path, f"NIfTI file cannot be read: {err}") from err
    arr = _in_plane(arr, path, (0, 1)).T
    zooms = img.header.get_zooms()
    return to_unit_range(arr, value_range(arr)), _with_spacing(
        InputFormat.NIFTI, zooms[1], zooms[0]
    )


def _with_spacing(fmt: InputFormat, row_mm: float, col_mm: float) -> dict[str, Any]:
    meta = base_metadata(fmt)
    meta.update(
        pixel_spacing=(float(row_mm), float(col_mm)),
        pixel_spacing_source=SpacingSource.FILE_HEADER.value,
    )
    return meta


def check_size(arr: np.ndarray, path: str | os.PathLike) -> None:
    """Raise :class:`EmptyImageError` for an image with no rows or columns."""
    if arr.ndim != 2 or 0 in arr.shape:
        raise EmptyImageError(path, f"image has shape {arr.shape}; expected rows x columns > 0")
