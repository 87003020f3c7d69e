"""Per-image outputs of ``lungseg segment``: mask PNG, overlay PNG, DICOM SEG, NIfTI.

Every file is written to a temporary name beside its target and renamed (atomic).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.inference.lungs import LungMeasures
from pipeline.io.atomic import atomic_path
from pipeline.io.writers import save_png, to_uint8

#: Outline colours (RGB): patient's right lung, left lung.
RIGHT_COLOUR, LEFT_COLOUR = (0, 200, 255), (255, 160, 0)
#: SNOMED CT codes of the two segments (DICOM CID 7151 / 4031 region terms).
RIGHT_LUNG = ("3341006", "SCT", "Right lung")
LEFT_LUNG = ("44029006", "SCT", "Left lung")


def write_mask(m: LungMeasures, path: str | os.PathLike) -> Path:
    """Both lungs as one 0/255 PNG of the input's size."""
    from pipeline.inference.writers import mask_to_uint8

    return save_png(mask_to_uint8(m.right | m.left), path)


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    edge = mask & ~ndimage.binary_erosion(mask)
    return ndimage.binary_dilation(edge, iterations=max(0, width - 1)) if width > 1 else edge


def _area_text(m: LungMeasures) -> str:
    def one(px: int) -> str:
        mm2 = m.mm2(px)
        return f"{px} px" if math.isnan(mm2) else f"{mm2 / 100:.1f} cm2"

    return f"R {one(m.right_px)}  L {one(m.left_px)}  total {one(m.right_px + m.left_px)}"


#: Overlays larger than this (longer side, pixels) are drawn downscaled: they are for eyeballing.
OVERLAY_MAX_SIZE = 1024


def fit_for_display(
    image: np.ndarray, right: np.ndarray, left: np.ndarray, max_size: int = OVERLAY_MAX_SIZE
) -> tuple[np.ndarray, ...]:
    """The image as uint8 and both masks, downscaled (area average, nearest) to ``max_size``.

    Returns:
        ``(grey image, right mask, left mask)``, the longer side at most ``max_size``.
    """
    from PIL import Image

    scale = max_size / max(image.shape)
    if scale >= 1:
        return to_uint8(image), right, left
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    gray = np.asarray(Image.fromarray(to_uint8(image)).resize(size, Image.Resampling.BOX))
    masks = [
        np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST)) for m in (right, left)
    ]
    return gray, *masks


def overlay_image(image: np.ndarray, m: LungMeasures) -> np.ndarray:
    """RGB uint8: the radiograph, the right/left lung outlines and the areas written on it.

    Images larger than :data:`OVERLAY_MAX_SIZE` are drawn downscaled to it.
    """
    from PIL import Image, ImageDraw

    gray, right, left = fit_for_display(image, m.right, m.left)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    width = max(1, round(max(gray.shape) / 400))
    rgb[_outline(right, width)] = RIGHT_COLOUR
    rgb[_outline(left, width)] = LEFT_COLOUR
    pil = Image.fromarray(rgb)
    draw = ImageDraw.Draw(pil)
    size = max(10, gray.shape[0] // 40)
    font = _font(size)
    draw.rectangle((0, 0, gray.shape[1], size + 8), fill=(0, 0, 0))
    draw.text((4, 2), _area_text(m), fill=(255, 255, 255), font=font)
    if m.flags:
        draw.text(
            (4, size + 10), "QA: " + ", ".join(map(str, m.flags)), fill=(255, 64, 64), font=font
        )
    return np.asarray(pil)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def write_overlay(image: np.ndarray, m: LungMeasures, path: str | os.PathLike) -> Path:
    """Save :func:`overlay_image` as PNG (fast compression: overlays are for eyeballing)."""
    return save_png(overlay_image(image, m), path, compress_level=1)


def write_nifti(m: LungMeasures, path: str | os.PathLike) -> Path:
    """The right/left labelmap (1/2) as NIfTI, voxel size from the pixel spacing (else 1 mm).

    The array is stored as (columns, rows) so viewers show it in the radiograph's orientation.
    """
    import nibabel as nib

    row, col = (1.0 if math.isnan(s) else s for s in m.spacing)
    affine = np.diag([col, row, 1.0, 1.0])
    img = nib.Nifti1Image(m.labelmap().T[..., None], affine)
    path = Path(path)
    with atomic_path(path) as tmp:
        staged = Path(str(tmp) + ".nii.gz")  # nibabel picks gzip from the name
        try:
            nib.save(img, staged)
            os.replace(staged, tmp)
        finally:
            staged.unlink(missing_ok=True)
    return path


#: Type 2 attributes highdicom copies from the source; real files sometimes lack them.
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def _complete_type2(source: Any) -> Any:
    """A copy of ``source`` with absent Type 2 patient/study attributes present and empty."""
    import copy

    out = copy.copy(source)
    for keyword in _TYPE2:
        if keyword not in out:
            setattr(out, keyword, "")
    return out


def seg_uids(series_uid: str, sop_uid: str, checksum: str) -> dict[str, str]:
    """Series and SOP Instance UIDs of the SEG of a source instance under a model checksum.

    Derived, not random: the same source and model give the same SEG, so a rerun or a resend
    produces the same instance.
    """
    from pipeline.io.convert import make_uid

    return {
        "series_instance_uid": make_uid("lungseg-seg-series", series_uid, checksum),
        "sop_instance_uid": make_uid("lungseg-seg", sop_uid, checksum),
    }


def build_seg(source: Any, m: LungMeasures, uids: dict[str, str], algorithm: dict[str, str]) -> Any:
    """A highdicom BINARY Segmentation of ``source`` with Right lung and Left lung segments.

    Args:
        source: the source pydicom Dataset (same Study; referenced instance).
        m: the measured lungs (source grid).
        uids: ``series_instance_uid`` and ``sop_instance_uid`` of the new object.
        algorithm: ``name`` and ``version`` of the algorithm.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    ident = hd.AlgorithmIdentificationSequence(
        name=algorithm["name"],
        version=algorithm["version"],
        family=codes.cid7162.ArtificialIntelligence,
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=code[2],
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=Code(*code),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=ident,
        )
        for number, code in ((1, RIGHT_LUNG), (2, LEFT_LUNG))
    ]
    seg = hd.seg.Segmentation(
        source_images=[_complete_type2(source)],
        pixel_array=m.labelmap(),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=uids["series_instance_uid"],
        series_number=9901,
        sop_instance_uid=uids["sop_instance_uid"],
        instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer="lungseg",
        manufacturer_model_name=algorithm["name"],
        software_versions=algorithm["version"],
        device_serial_number="none",
        series_description="Lung segmentation (research)",
        omit_empty_frames=False,
    )
    # General Image module, Type 2C for images without Image Orientation/Position (Patient):
    # the same orientation as the source, whose pixel grid the segmentation shares.
    seg.PatientOrientation = source.get("PatientOrientation", "")
    return seg


def write_seg(seg: Any, path: str | os.PathLike, content_datetime: str | None = None) -> Path:
    """Save a Segmentation atomically; ``content_datetime`` (YYYYMMDDHHMMSS) pins its dates."""
    if content_datetime:
        for prefix in ("Content", "Series"):
            setattr(seg, f"{prefix}Date", content_datetime[:8])
            setattr(seg, f"{prefix}Time", content_datetime[8:14])
    path = Path(path)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path


#: SNOMED CT "Plain X-ray of chest", the procedure a measurement report is about.
PLAIN_CHEST_XRAY = ("399208008", "SCT", "Plain X-ray of chest")


def build_sr(
    source: Any, seg: Any, m: LungMeasures, uids: dict[str, str], algorithm: dict[str, str]
) -> Any:
    """A TID 1500 Measurement Report (Comprehensive 3D SR) of the lung areas in mm².

    One planar ROI group per lung referencing its segment of ``seg`` (area), and one
    image-level group with the total area.

    Args:
        source: the source pydicom Dataset (header enough).
        seg: the Segmentation built by :func:`build_seg`.
        m: the measured lungs; their spacing must be known.
        uids: ``series_instance_uid``, ``sop_instance_uid`` and ``device_uid`` of the report.
        algorithm: ``name`` and ``version``.

    Raises:
        ValueError: the pixel spacing is unknown (areas in mm² cannot be given).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    from pipeline.io.convert import make_uid

    if math.isnan(m.spacing[0]):
        raise ValueError("no pixel spacing in the source: lung areas in mm² are unknown")
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids["device_uid"], name=algorithm["name"]
        ),
    )
    algo = hd.sr.AlgorithmIdentification(name=algorithm["name"], version=algorithm["version"])

    def area(pixels: int) -> Any:
        return hd.sr.Measurement(
            name=codes.SCT.Area,
            value=round(m.mm2(pixels), 2),
            unit=codes.UCUM.SquareMillimeter,
            algorithm_id=algo,
        )

    groups: list[Any] = []
    for number, code, pixels in ((1, RIGHT_LUNG, m.right_px), (2, LEFT_LUNG, m.left_px)):
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=make_uid("lungseg-sr-roi", uids["sop_instance_uid"], number),
                    identifier=code[2],
                ),
                referenced_segment=hd.sr.ReferencedSegmentationFrame.from_segmentation(
                    seg, segment_number=number
                ),
                finding_type=Code(*code),
                algorithm_id=algo,
                measurements=[area(pixels)],
            )
        )
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(identifier="Both lungs"),
            finding_type=codes.SCT.Lung,
            algorithm_id=algo,
            measurements=[area(m.right_px + m.left_px)],
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=Code(*PLAIN_CHEST_XRAY),
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[_complete_type2(source), seg],
        content=report,
        series_instance_uid=uids["series_instance_uid"],
        series_number=9902,
        sop_instance_uid=uids["sop_instance_uid"],
        instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer="lungseg",
        is_complete=True,
    )
    _drop_frame_numbers(sr.ContentSequence)
    return sr


def _drop_frame_numbers(items: Any) -> None:
    """Remove Referenced Frame Number where the SOP Instance Reference macro forbids it.

    highdicom writes it beside Referenced Segment Number (not allowed together) and for the
    single-frame radiograph; dciodvfy reports both as errors. The segment number alone
    identifies the segment of the SEG.
    """
    for item in items:
        for ref in item.get("ReferencedSOPSequence", []):
            if "ReferencedFrameNumber" in ref:
                del ref.ReferencedFrameNumber
        if "ContentSequence" in item:
            _drop_frame_numbers(item.ContentSequence)
