"""Build DICOM radiographs from 8-bit images, in the encodings real archives hold.

Used by the test suite (fixtures built at test time from the shared PNGs), ``make demo``,
the benchmarks and ``lungseg dicomize``. Each :class:`DicomVariant` stores the same picture
through a different path of the grayscale pipeline (bit depth, Modality LUT, VOI LUT or
window, MONOCHROME1, Presentation LUT Shape) or transfer syntax; decoding it with
:func:`pipeline.io.read_cxr` gives the picture back (exactly for the lossless linear ones).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.enums import StrEnum
from pipeline.io.atomic import atomic_path

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: Root for UIDs this project generates (pydicom's, with a project-specific suffix).
UID_PREFIX = "1.2.826.0.1.3680043.8.498."


class DicomVariant(StrEnum):
    """How :func:`build_dicom` stores the picture."""

    MONO2_8BIT = "mono2-8bit"
    MONO2_16BIT = "mono2-16bit"
    MONO1_WINDOW = "mono1-window"
    RESCALE_12BIT = "rescale-12bit"
    RESCALE_WINDOW_14BIT = "rescale-window-14bit"
    VOI_LUT = "voi-lut"
    SIGMOID = "sigmoid"
    DX_MONO1_INVERSE = "dx-mono1-inverse"
    RGB = "rgb"
    RLE = "rle"
    JPEG2000 = "jpeg2000"
    JPEG_LS = "jpeg-ls"
    JPEG_BASELINE = "jpeg-baseline"
    JPEG_LOSSLESS = "jpeg-lossless"  # process 14, selection value 1, 12 bits (imagecodecs)
    HTJ2K = "htj2k"  # High-Throughput JPEG 2000 lossless, 16 bits (imagecodecs)
    DEFLATE = "deflate"


def _gamma_lut(entries: int = 4096, gamma: float = 0.6) -> bytes:
    x = np.arange(entries, dtype=np.float64) / (entries - 1)
    return np.rint(65535 * x**gamma).astype("<u2").tobytes()


@dataclass(frozen=True)
class _Spec:
    """Stored values from 8-bit pixels ``p``, and the attributes and syntax that go with them."""

    bits: int
    stored: Callable[[np.ndarray], np.ndarray]
    photometric: str = "MONOCHROME2"
    syntax: str = "1.2.840.10008.1.2.1"  # Explicit VR Little Endian
    sop_class: str = CR
    attrs: dict[str, Any] = field(default_factory=dict)


def _u16(f: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda p: f(p.astype(np.int32)).astype(np.uint16)


_SPECS: dict[DicomVariant, _Spec] = {
    DicomVariant.MONO2_8BIT: _Spec(8, lambda p: p),
    DicomVariant.MONO2_16BIT: _Spec(16, _u16(lambda p: p * 257)),
    # 12-bit MONOCHROME1 whose window maps the data range [1000, 3040] onto the output.
    DicomVariant.MONO1_WINDOW: _Spec(
        12,
        _u16(lambda p: (255 - p) * 8 + 1000),
        "MONOCHROME1",
        attrs={"WindowCenter": 2020.5, "WindowWidth": 2041},
    ),
    DicomVariant.RESCALE_12BIT: _Spec(
        12, _u16(lambda p: p * 16), attrs={"RescaleSlope": 1, "RescaleIntercept": -1024}
    ),
    DicomVariant.RESCALE_WINDOW_14BIT: _Spec(
        14,
        _u16(lambda p: p * 64),
        attrs={
            "RescaleSlope": 0.25,
            "RescaleIntercept": 10,
            "WindowCenter": 2050.5,
            "WindowWidth": 4081,
        },
    ),
    DicomVariant.VOI_LUT: _Spec(12, _u16(lambda p: p * 16), attrs={"_voi_lut": True}),
    DicomVariant.SIGMOID: _Spec(
        12,
        _u16(lambda p: p * 16),
        attrs={"WindowCenter": 2048, "WindowWidth": 2048, "VOILUTFunction": "SIGMOID"},
    ),
    DicomVariant.DX_MONO1_INVERSE: _Spec(
        12,
        _u16(lambda p: 4095 - p * 16),
        "MONOCHROME1",
        sop_class=DX_PRESENTATION,
        attrs={"PresentationLUTShape": "INVERSE", "PresentationIntentType": "FOR PRESENTATION"},
    ),
    DicomVariant.RGB: _Spec(
        8, lambda p: np.repeat(p[..., None], 3, axis=-1), "RGB", sop_class=SECONDARY_CAPTURE
    ),
    DicomVariant.RLE: _Spec(8, lambda p: p, syntax="1.2.840.10008.1.2.5"),
    DicomVariant.JPEG2000: _Spec(12, _u16(lambda p: p * 16), syntax="1.2.840.10008.1.2.4.90"),
    DicomVariant.JPEG_LS: _Spec(8, lambda p: p, syntax="1.2.840.10008.1.2.4.80"),
    DicomVariant.JPEG_BASELINE: _Spec(8, lambda p: p, syntax="1.2.840.10008.1.2.4.50"),
    DicomVariant.JPEG_LOSSLESS: _Spec(12, _u16(lambda p: p * 16), syntax="1.2.840.10008.1.2.4.70"),
    DicomVariant.HTJ2K: _Spec(16, _u16(lambda p: p * 257), syntax="1.2.840.10008.1.2.4.201"),
    DicomVariant.DEFLATE: _Spec(16, _u16(lambda p: p * 257), syntax="1.2.840.10008.1.2.1.99"),
}


def make_uid(*parts: object) -> str:
    """A UID derived from ``parts`` (same parts, same UID), under :data:`UID_PREFIX`."""
    from pydicom.uid import generate_uid

    return generate_uid(prefix=UID_PREFIX, entropy_srcs=[str(p) for p in parts])


def _base_dataset(spec: _Spec, name: str, spacing_mm: float | None) -> Any:
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = spec.sop_class
    ds.SOPInstanceUID = make_uid(name, "instance")
    ds.StudyInstanceUID = make_uid(name, "study")
    ds.SeriesInstanceUID = make_uid(name, "series")
    ds.Modality = {CR: "CR", DX_PRESENTATION: "DX"}.get(spec.sop_class, "OT")
    ds.PatientName, ds.PatientID = "Anonymous^Lungseg", make_uid(name, "patient")[-12:]
    ds.StudyDate = ds.ContentDate = dt.date.today().strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = "120000"
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.AccessionNumber = "1", 1, 1, ""
    ds.BodyPartExamined, ds.ViewPosition, ds.PatientOrientation = "CHEST", "PA", ["L", "F"]
    ds.ImageType = (
        ["DERIVED", "SECONDARY"] if spec.sop_class == SECONDARY_CAPTURE else ["ORIGINAL", "PRIMARY"]
    )
    if spec.sop_class == SECONDARY_CAPTURE:
        ds.ConversionType = "WSD"
    if spacing_mm:
        ds.ImagerPixelSpacing = [spacing_mm, spacing_mm]
    return ds


def _set_attrs(ds: Any, attrs: dict[str, Any]) -> None:
    from pydicom.dataset import Dataset

    for key, value in attrs.items():
        if key == "_voi_lut":
            item = Dataset()
            item.add_new("LUTDescriptor", "US", [4096, 0, 16])
            item.LUTExplanation = "gamma 0.6"
            item.add_new("LUTData", "OW", _gamma_lut())
            ds.VOILUTSequence = [item]
            ds.WindowCenter, ds.WindowWidth = 2048, 4096  # an alternative the LUT takes over
        else:
            setattr(ds, key, value)


def build_dicom(
    pixels: np.ndarray,
    variant: DicomVariant | str = DicomVariant.MONO2_8BIT,
    *,
    name: str = "image",
    spacing_mm: float | None = None,
) -> Any:
    """Build a single-frame chest radiograph dataset from an 8-bit grayscale image.

    Args:
        pixels: ``rows x columns`` uint8 image, lungs dark (as the shared PNGs).
        variant: the encoding (see :class:`DicomVariant`).
        name: seeds the UIDs, so the same name gives the same UIDs.
        spacing_mm: written as ImagerPixelSpacing when given.

    Returns:
        A ``pydicom.Dataset`` ready for :func:`write_dicom`.
    """
    variant = DicomVariant.parse(variant)
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError(f"pixels must be a 2D uint8 array, got {pixels.dtype} {pixels.shape}")
    spec = _SPECS[variant]
    ds = _base_dataset(spec, name, spacing_mm)
    ds.set_pixel_data(spec.stored(pixels), spec.photometric, spec.bits, generate_instance_uid=False)
    _set_attrs(ds, spec.attrs)
    _encode(ds, spec.syntax, pixels)
    return ds


def _encode(ds: Any, syntax: str, pixels: np.ndarray) -> None:
    from pydicom.uid import UID

    uid = UID(syntax)
    if uid == "1.2.840.10008.1.2.4.50":
        _encode_jpeg_baseline(ds, pixels)
    elif uid in _IMAGECODECS:
        _encode_with_imagecodecs(ds, uid)
    elif uid.is_compressed:
        ds.compress(uid, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = uid


def _encode_jpeg_baseline(ds: Any, pixels: np.ndarray, quality: int = 95) -> None:
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=quality)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit


def _jpeg_lossless(stored: np.ndarray, bits: int) -> bytes:
    import imagecodecs

    return imagecodecs.jpeg8_encode(stored, lossless=True, predictor=1, bitspersample=bits)


def _htj2k(stored: np.ndarray, bits: int) -> bytes:
    import imagecodecs

    return imagecodecs.htj2k_encode(stored)


#: Syntaxes pydicom cannot encode, encoded with imagecodecs (also lungseg's JPEG decoder).
_IMAGECODECS = {"1.2.840.10008.1.2.4.70": _jpeg_lossless, "1.2.840.10008.1.2.4.201": _htj2k}


def _encode_with_imagecodecs(ds: Any, uid: Any) -> None:
    """Encapsulate the stored pixels with imagecodecs (JPEG Lossless SV1, HTJ2K lossless)."""
    from pydicom.encaps import encapsulate

    try:
        frame = _IMAGECODECS[uid](ds.pixel_array, int(ds.BitsStored))
    except ImportError as err:
        raise ImportError(f"building {uid.name} fixtures needs imagecodecs: {err}") from err
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uid


def write_dicom(ds: Any, path: str | os.PathLike) -> Path:
    """Write a dataset as a DICOM Part 10 file, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def dicomize(
    images: list[Path],
    out_dir: str | os.PathLike,
    variants: list[DicomVariant],
    spacing_mm: float | None = None,
) -> list[Path]:
    """Convert 8-bit grayscale images to DICOM, cycling through ``variants``.

    Image ``i`` is written as ``out_dir/<variant>/<stem>.dcm`` with ``variants[i % n]``.
    UIDs derive from the image name, so a rerun writes identical files.
    """
    from PIL import Image

    written = []
    for i, image_path in enumerate(images):
        variant = variants[i % len(variants)]
        with Image.open(image_path) as img:
            pixels = np.asarray(img.convert("L"))
        ds = build_dicom(pixels, variant, name=image_path.name, spacing_mm=spacing_mm)
        written.append(write_dicom(ds, Path(out_dir) / variant.value / f"{image_path.stem}.dcm"))
    return written
