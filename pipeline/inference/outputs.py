"""Every output of a prediction, in one place: report row, mask, overlay, NIfTI, SEG, SR.

``lungseg segment``, the web viewer and the DICOM node all take their outputs from here,
so a SEG is the same object whoever writes it, and the colours of the right and left lung
are defined once. Files are written to a temporary name beside their target and renamed
(atomic); SEG and SR UIDs derive from the source's UIDs and the model's identity digest (a
rerun or a resend produces the same instance).
"""

from __future__ import annotations

import copy
import functools
import heapq
import math
import operator
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_numpy

from pipeline.enums import OutputFormat, Status, View
from pipeline.inference.bundle import ModelIdentity
from pipeline.inference.lungs import LungMeasures
from pipeline.inference.predictor import Prediction
from pipeline.inference.timing import Stopwatch
from pipeline.io.atomic import atomic_path, write_bytes_atomic
from pipeline.io.highdicom_tables import install as install_lazy_tables
from pipeline.io.png import RowFilter, save_png, to_uint8
from pipeline.transforms.geometry import nearest_index
from pipeline.transforms.morphology import max_square

#: Colours (RGB) of the patient's right and left lung: overlay outlines and viewer fills.
RIGHT_COLOUR, LEFT_COLOUR = (0, 200, 255), (255, 160, 0)
#: SNOMED CT codes of the right and left lung: the SR's finding types (precoordinated; in
#: no context group pydicom lists) and the SEG's segment labels. The SEG codes each segment
#: as Lung (CID 7151) with the side as a modifier (CID 244).
RIGHT_LUNG = ("3341006", "SCT", "Right lung")
LEFT_LUNG = ("44029006", "SCT", "Left lung")

#: Output folder and suffix of each format under a batch's OUT folder.
LAYOUT = {
    OutputFormat.MASK: ("masks", ".png"),
    OutputFormat.OVERLAY: ("overlays", ".png"),
    OutputFormat.SEG: ("seg", ".dcm"),
    OutputFormat.NIFTI: ("nifti", ".nii.gz"),
    OutputFormat.SR: ("sr", ".dcm"),
}


def output_path(out_dir: Path, relative: Path, fmt: OutputFormat) -> Path:
    """``OUT/<format folder>/<relative path with the format's suffix>``."""
    from pipeline.io.discovery import InputFile

    folder, suffix = LAYOUT[fmt]
    return InputFile(Path(), relative).output(out_dir / folder, suffix)


# --- report rows ------------------------------------------------------------------------


def row(path: Path, status: str, reason: str = "", seconds: float = 0.0, **extra: Any) -> dict:
    """A report row; the columns are :data:`pipeline.inference.report.REPORT_FIELDS`."""
    return {
        "path": str(path),
        "status": status,
        "reason": reason,
        "seconds": round(seconds, 4),
        **extra,
    }


def measured_row(path: Path, meta: dict[str, Any], m: LungMeasures) -> dict:
    """The report row of a segmented image; its reason names what the reader assumed."""
    rows, cols = m.right.shape
    right, left = m.right_px, m.left_px
    spacing = None if math.isnan(m.spacing[0]) else m.spacing
    return row(
        path,
        Status.OK.value,
        f"assumed {meta['assumed']}" if meta.get("assumed") else "",
        sop_instance_uid=meta.get("sop_instance_uid") or "",
        rows=rows,
        columns=cols,
        pixel_spacing_mm="" if spacing is None else f"{spacing[0]:.6g}\\{spacing[1]:.6g}",
        pixel_spacing_source=str(meta.get("pixel_spacing_source") or "none"),
        right_area_px=right,
        left_area_px=left,
        total_area_px=right + left,
        right_area_mm2=round(m.mm2(right), 2),
        left_area_mm2=round(m.mm2(left), 2),
        total_area_mm2=round(m.mm2(right + left), 2),
        mean_confidence=round(m.confidence, 4),
        qa_flags=[str(f) for f in m.flags],
    )


# --- masks --------------------------------------------------------------------------------


def mask_to_uint8(mask: Any) -> np.ndarray:
    """A ``(1, rows, columns)`` or ``(rows, columns)`` binary mask as a 0/255 uint8 image.

    Raises:
        ValueError: the mask has more than one channel or is not 2D.
    """
    arr = convert_to_numpy(mask)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"expected a one-channel 2D mask, got shape {tuple(arr.shape)}")
    if arr.dtype == np.bool_:  # one pass (a comparison would go through float64)
        return arr.view(np.uint8) * np.uint8(255)
    return np.where(arr > 0.5, np.uint8(255), np.uint8(0))


class SaveMask(Transform):
    """Save a binary mask as a 0/255 PNG (atomically); returns the mask unchanged."""

    def __call__(self, mask: Any, path: str | os.PathLike) -> Any:
        """Write ``mask`` to ``path`` (parent folders are created)."""
        save_png(mask_to_uint8(mask), path)
        return mask


class SaveMaskd(MapTransform):
    """Save each key's mask to ``output_dir/<relative path>.png`` (the bundle's ``writers``).

    The relative path is the item's ``relative_key`` entry (set by
    :func:`pipeline.inference.datalist.image_datalist`; MONAI engines merge the batch's
    entries into post-processing), so the output tree mirrors the input tree; without it,
    the image file's name is used. The written path is stored under ``<key>_path``.

    Args:
        keys: mask keys (e.g. ``pred``).
        output_dir: folder to write under.
        relative_key: item entry holding the input's path relative to its folder.
        image_key: item entry whose metadata names the source file (fallback).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        relative_key: str = "relative",
        image_key: str = "image",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.relative_key, self.image_key = relative_key, image_key
        self.saver = SaveMask()

    def _relative(self, d: Mapping[Hashable, Any]) -> Path:
        rel = d.get(self.relative_key)
        if rel:
            return Path(rel)
        meta = getattr(d.get(self.image_key), "meta", {})
        name = meta.get("filename_or_obj")
        if not name:
            raise ValueError(
                f"cannot name the output: no {self.relative_key!r} entry and no source file "
                f"in the {self.image_key!r} metadata"
            )
        return Path(Path(str(name)).name)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Write every key's mask; add ``<key>_path`` with the written file."""
        from pipeline.io.discovery import InputFile

        d = dict(data)
        target = InputFile(Path(), self._relative(d)).output(self.output_dir, ".png")
        for key in self.key_iterator(d):
            path = target if key == self.keys[0] else target.with_name(f"{target.stem}_{key}.png")
            self.saver(d[key], path)
            d[f"{key}_path"] = str(path)
        return d


def write_mask(mask: np.ndarray, path: str | os.PathLike) -> Path:
    """Both lungs (:attr:`Prediction.mask`, boolean) as one 0/255 PNG of the input's size.

    Fast deflate of unfiltered rows; the prediction's mask as it is, not the sides joined
    again (a pass over every pixel fewer: ~0.8 ms at 3000 x 2500).
    """
    return save_png(mask_to_uint8(mask), path, compress_level=1, row_filter=RowFilter.NONE)


def label_outlines(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """The labels kept only along their edges (where a 4-neighbour differs), ``width`` thick."""
    edge = np.zeros(labels.shape, dtype=bool)
    for axis in (0, 1):
        step = np.diff(labels, axis=axis) != 0
        lead = [slice(None)] * 2
        lead[axis] = slice(1, None)
        edge[tuple(lead)] |= step
        lead[axis] = slice(None, -1)
        edge[tuple(lead)] |= step
    out = np.where(edge, labels, 0).astype(labels.dtype)
    return max_square(out, 2 * width - 1)


def _area_text(m: LungMeasures) -> str:
    def one(px: int) -> str:
        mm2 = m.mm2(px)
        return f"{px} px" if math.isnan(mm2) else f"{mm2 / 100:.1f} cm2"

    return f"R {one(m.right_px)}  L {one(m.left_px)}  total {one(m.right_px + m.left_px)}"


#: Overlays larger than this (longer side, pixels) are drawn downscaled: they are for eyeballing.
OVERLAY_MAX_SIZE = 1024


def display_shape(image_shape: tuple[int, ...], max_size: int) -> tuple[int, int]:
    """The ``image``'s (rows, columns), scaled down so the longer side is at most ``max_size``."""
    scale = min(1.0, max_size / max(image_shape))
    return max(1, round(image_shape[0] * scale)), max(1, round(image_shape[1] * scale))


def _resized(arr: np.ndarray, shape: tuple[int, int], resample: Any) -> np.ndarray:
    from PIL import Image

    if arr.shape == shape:
        return arr
    return np.asarray(Image.fromarray(arr).resize((shape[1], shape[0]), resample))


def fit_for_display(
    image: np.ndarray, right: np.ndarray, left: np.ndarray, max_size: int = OVERLAY_MAX_SIZE
) -> tuple[np.ndarray, ...]:
    """The image as uint8 and both masks on one display grid of at most ``max_size``.

    The grid is the image's own (which is smaller than the masks' when the reader decoded
    it at a reduced resolution), downscaled (area average for the image, nearest for the
    masks) to ``max_size``.

    Returns:
        ``(grey image, right mask, left mask)``.
    """
    from PIL import Image

    shape = display_shape(image.shape, max_size)
    gray = _resized(to_uint8(image), shape, Image.Resampling.BOX)
    masks = [_resized(m, shape, Image.Resampling.NEAREST) for m in (right, left)]
    return gray, *masks


def label_overlay(right: np.ndarray, left: np.ndarray) -> np.ndarray:
    """RGBA uint8: the right and left lung filled in their colours, transparent elsewhere."""
    rgba = np.zeros((*right.shape, 4), dtype=np.uint8)
    rgba[right] = (*RIGHT_COLOUR, 255)
    rgba[left] = (*LEFT_COLOUR, 255)
    return rgba


#: The overlay's palette: grey levels 0..252 (an image's 256 levels mapped onto 253, which
#: the eye cannot tell apart), then the right lung's, the left lung's and the QA text's colour.
GREY_LEVELS = 253
RIGHT_INDEX, LEFT_INDEX, QA_INDEX = GREY_LEVELS, GREY_LEVELS + 1, GREY_LEVELS + 2
OVERLAY_PALETTE = np.concatenate(
    [
        np.repeat(np.rint(np.arange(GREY_LEVELS) * 255 / (GREY_LEVELS - 1)), 3).reshape(-1, 3),
        [RIGHT_COLOUR, LEFT_COLOUR, (255, 64, 64)],
    ]
).astype(np.uint8)
#: Palette index of label 0 (unused), 1 (right lung) and 2 (left lung) in the outlines.
_OUTLINE_INDEX = np.array([0, RIGHT_INDEX, LEFT_INDEX], dtype=np.uint8)
#: Grey value -> palette index.
_GREY_INDEX = np.rint(np.arange(256) * (GREY_LEVELS - 1) / 255).astype(np.uint8)


def display_labels(m: LungMeasures, shape: tuple[int, int]) -> np.ndarray:
    """:meth:`LungMeasures.labelmap` on the ``shape`` grid (nearest: each pixel's centre).

    Picked from the masks directly: a full-resolution label map (4 M pixels at 2048²)
    is never built for a display grid a sixteenth its size.
    """
    if m.right.shape == tuple(shape):
        return m.labelmap()
    rows, cols = (nearest_index(f, n) for f, n in zip(m.right.shape, shape, strict=True))
    right, left = (mask.take(rows, axis=0).take(cols, axis=1) for mask in (m.right, m.left))
    return right.view(np.uint8) + 2 * left.view(np.uint8)  # rows, then columns: ~3 x np.ix_


def overlay_indexed(image: np.ndarray, m: LungMeasures) -> np.ndarray:
    """:func:`overlay_image` as uint8 indices into :data:`OVERLAY_PALETTE`.

    A third of the RGB image's bytes: the overlay PNG encodes about three times faster.
    """
    from PIL import Image, ImageDraw

    shape = display_shape(image.shape, OVERLAY_MAX_SIZE)
    gray = _resized(to_uint8(image), shape, Image.Resampling.BOX)
    labels = display_labels(m, shape)
    outline = label_outlines(labels, max(1, round(max(shape) / 400)))
    indices = _GREY_INDEX.take(gray)  # take: ~2 x fancy indexing
    lines = outline > 0
    indices[lines] = _OUTLINE_INDEX[outline[lines]]
    pil = Image.fromarray(indices, mode="L")
    draw = ImageDraw.Draw(pil)
    size = max(10, shape[0] // 40)
    font = _font(size)
    draw.rectangle((0, 0, shape[1], size + 8), fill=0)
    draw.text((4, 2), _area_text(m), fill=GREY_LEVELS - 1, font=font)
    if m.flags:
        draw.text((4, size + 10), "QA: " + ", ".join(map(str, m.flags)), fill=QA_INDEX, font=font)
    return np.asarray(pil)


def overlay_image(image: np.ndarray, m: LungMeasures) -> np.ndarray:
    """RGB uint8: the radiograph, the right/left lung outlines and the areas written on it.

    Drawn on the image's own grid, downscaled to :data:`OVERLAY_MAX_SIZE` when larger.
    """
    return OVERLAY_PALETTE[overlay_indexed(image, m)]


@functools.lru_cache(maxsize=8)
def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def write_overlay(image: np.ndarray, m: LungMeasures, path: str | os.PathLike) -> Path:
    """Save :func:`overlay_image` as an indexed-colour PNG (fast deflate: for eyeballing)."""
    return save_png(overlay_indexed(image, m), path, compress_level=1, palette=OVERLAY_PALETTE)


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


#: (0008,0005) Specific Character Set.
_CHARSET_TAG = 0x00080005


def _complete_type2(source: Any) -> Any:
    """A copy of ``source`` as highdicom takes it; ``source`` itself is left as it is.

    Absent Type 2 patient/study attributes are present and empty (real files sometimes lack
    them). The Specific Character Set is written in the standard's defined terms
    (:func:`~pipeline.io.charset.standard_character_set`), which read the text as pydicom
    read the source's: highdicom refuses anything else, and real files carry ``ISO IR 100``,
    ``ISO_IR 6``, ``ISO 2022 IR 100`` alone, or (Japanese files, as PS3.5's examples write
    them) an empty first value, then ``ISO 2022 IR 87``.
    """
    import copy

    out = copy.copy(source)
    out._dict = dict(source._dict)  # a shallow copy shares pydicom's element dictionary
    for keyword in _TYPE2:
        if keyword not in out:
            setattr(out, keyword, "")
    _standardise_character_set(out)
    _mend_checked_values(out)
    return out


#: Numeric attributes highdicom uses or copies, dropped where the file's value is no number.
_NUMBERS_OR_NOTHING = (
    "InstanceNumber",
    "LossyImageCompressionRatio",
    "SliceThickness",
    "SpacingBetweenSlices",
)


@functools.cache
def _mended_values() -> tuple[tuple[str, Callable[[str], str]], ...]:
    """The attributes :func:`_mend_checked_values` mends, each with its mending function."""
    from pipeline.io.mend import mended_date, mended_modality, mended_sex, mended_time

    return (
        ("PatientBirthDate", mended_date),
        ("PatientSex", mended_sex),
        ("StudyDate", mended_date),
        ("StudyTime", mended_time),
        ("Modality", mended_modality),
    )


def _mend_checked_values(ds: Any) -> None:
    """Mend the values highdicom checks where the file breaks their VR (:mod:`pipeline.io.mend`).

    A dated ``2023-01-01``, a time ``10:11:12``, a sex ``Male`` or a modality ``cr`` made
    highdicom refuse the source; the mended value is set on ``ds`` (a new element). A
    Patient Orientation that is not two directions becomes empty; a Pixel Spacing that is
    not two positive numbers (``0.2``, ``0.2,0.2``) and an instance number, lossy ratio or
    slice thickness that is no number are removed, as from a source without them.
    """
    from pipeline.io.dicom import spacing_pair
    from pipeline.io.mend import valid_patient_orientation

    there = ds.keys()  # tags: one set lookup each (``in ds`` parses a keyword)
    for keyword, mend in _mended_values():
        text = str(ds[_tag(keyword)].value) if _tag(keyword) in there else ""
        mended = mend(text)
        if mended != text:
            setattr(ds, keyword, mended)
    _single_valued_name(ds, there)
    where = _tag("PatientOrientation")
    orientation = ds[where].value if where in there else ""
    if orientation and not valid_patient_orientation(
        [orientation] if isinstance(orientation, str) else orientation
    ):
        ds.PatientOrientation = ""  # Type 2C: known to be unknown
    if _tag("PixelSpacing") in there and spacing_pair(ds, "PixelSpacing") is None:
        del ds.PixelSpacing  # the reader found no spacing there either
    for keyword in _NUMBERS_OR_NOTHING:
        if _tag(keyword) in there and not _all_numbers(ds, keyword):
            del ds[keyword]


def _single_valued_name(ds: Any, there: Any) -> None:
    r"""Make a Patient's Name written with a backslash (``A\B``, read as two names) one name.

    highdicom takes one name only; the SEG carries the file's text as it is, so its bytes
    still match the source's (a name is never changed: it must match).
    """
    from pydicom.multival import MultiValue
    from pydicom.valuerep import PersonName

    where = _tag("PatientName")
    if where in there and isinstance(names := ds[where].value, MultiValue):
        ds.PatientName = PersonName("\\".join(str(name) for name in names))


@functools.cache
def _tag(keyword: str) -> int:
    """The tag of a keyword pydicom knows."""
    from pydicom.datadict import tag_for_keyword

    return int(tag_for_keyword(keyword))


def _all_numbers(ds: Any, keyword: str) -> bool:
    """Whether every value of ``keyword`` in ``ds`` is a finite number."""
    from pipeline.io.dicom import numeric_values

    try:
        return all(math.isfinite(v) for v in numeric_values(ds, keyword))
    except (TypeError, ValueError):
        return False


def _standardise_character_set(ds: Any) -> None:
    """Replace ``ds``'s Specific Character Set by its defined terms (a new element).

    Its text is read under the file's own value first, so it stays as pydicom read it.
    """
    from pydicom.dataelem import DataElement

    from pipeline.io.charset import standard_character_set

    if _CHARSET_TAG not in ds:
        return
    value = ds[_CHARSET_TAG].value
    standard = standard_character_set(value)
    if standard is not None and _as_list(standard) == _as_list(value):
        return
    for _ in ds:  # (rare) every element converted from its bytes under the old value
        pass
    if standard is None:
        del ds[_CHARSET_TAG]
    else:
        ds[_CHARSET_TAG] = DataElement(_CHARSET_TAG, "CS", standard)  # not the shared one


def _as_list(value: str | Sequence[str]) -> list[str]:
    """A character set's values as a list."""
    return [value] if isinstance(value, str) else list(value)


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
    install_lazy_tables()
    import highdicom as hd
    from pydicom.sr.codedict import codes

    source = _complete_type2(source)
    ident = hd.AlgorithmIdentificationSequence(
        name=algorithm["name"],
        version=algorithm["version"],
        family=codes.cid7162.ArtificialIntelligence,
    )
    segments = []
    for number, code, side in (
        (1, RIGHT_LUNG, codes.cid244.Right),
        (2, LEFT_LUNG, codes.cid244.Left),
    ):
        segment = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=code[2],
            segmented_property_category=codes.cid7150.AnatomicalStructure,
            segmented_property_type=codes.cid7151.Lung,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=ident,
        )
        # the side as a Segmented Property Type Modifier (CID 244 Laterality), as PS3.3
        # C.8.20.2 codes paired organs: every code of the SEG then comes from its group
        modifier = [hd.sr.CodedConcept.from_code(side)]
        segment.SegmentedPropertyTypeCodeSequence[
            0
        ].SegmentedPropertyTypeModifierCodeSequence = modifier
        segments.append(segment)
    seg = hd.seg.Segmentation(
        source_images=[source],
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
    _derive_dimension_uid(seg, uids["sop_instance_uid"])
    return seg


#: Source attributes whose values shape a SEG beyond what :class:`SegTemplates` fills in:
#: a source differing in any of them gets its own template (see also
#: :data:`_COORDINATE_ATTRIBUTES`).
_TEMPLATE_KEY_ATTRIBUTES = (
    "SOPClassUID",
    "Modality",
    "LossyImageCompression",
    "SpecificCharacterSet",  # the SEG's own, in which the copied names are encoded
)
#: Source attributes that place an image in the patient's space. highdicom derives more of
#: the SEG from a source with any of them, so such a source's pixel measures are part of its
#: template's key; without them (projection radiographs) they are filled in per source.
_COORDINATE_ATTRIBUTES = ("FrameOfReferenceUID", "ImageOrientationPatient", "ImagePositionPatient")
#: Source attributes of the SEG's Pixel Measures (its Shared Functional Groups).
_PIXEL_MEASURES_ATTRIBUTES = ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices")
#: Attributes highdicom copies from a lossy source as they are: whether the source has them
#: is part of the template's key, their values are filled in per source.
_LOSSY_KEYWORDS = ("LossyImageCompressionRatio", "LossyImageCompressionMethod")


def _has_coordinates(source: Any) -> bool:
    """Whether ``source`` carries any of :data:`_COORDINATE_ATTRIBUTES`."""
    there = source.keys()  # tags: a set lookup each (``keyword in source`` parses it)
    return any(tag in there for tag in _tags(_COORDINATE_ATTRIBUTES))


@functools.lru_cache(maxsize=8)
def _tags(keywords: tuple[str, ...]) -> tuple[int, ...]:
    """The tags of ``keywords`` (pydicom's dictionary knows them all)."""
    from pydicom.datadict import tag_for_keyword

    return tuple(int(tag_for_keyword(k)) for k in keywords)


#: The SEG's Shared Functional Groups: filled in per source without coordinates.
_SHARED_GROUPS = "SharedFunctionalGroupsSequence"


def _shared_groups(source: Any) -> list:
    """The Shared Functional Groups highdicom gives the SEG of a source without coordinates.

    One item, holding the Pixel Measures where the source has a Pixel Spacing (highdicom's
    own :class:`~highdicom.PixelMeasuresSequence`, which formats the values).
    """
    import highdicom as hd
    from pydicom.dataset import Dataset

    item = Dataset()
    spacing = source.get("PixelSpacing")
    if spacing is not None:
        item.PixelMeasuresSequence = hd.PixelMeasuresSequence(
            pixel_spacing=spacing,
            slice_thickness=source.get("SliceThickness"),
            spacing_between_slices=source.get("SpacingBetweenSlices"),
        )
    return [item]


@functools.lru_cache(maxsize=32)
def _copied_keywords(sop_class_uid: str) -> tuple[str, ...]:
    """Root attributes highdicom copies from a source of this SOP class into a SEG.

    Those of the Patient and Study information entities and of the Specimen module, by
    highdicom's own tables of the standard (the module table read a module at a time:
    :func:`~pipeline.io.highdicom_tables.install`, also where no one loaded it before).
    """
    install_lazy_tables()
    from highdicom._standard_utils import (
        get_iod_module_map,
        get_module_attribute_map,
        get_sop_class_iod_map,
    )

    modules = get_iod_module_map()[get_sop_class_iod_map()[sop_class_uid]]
    keys = [m["key"] for m in modules if m["ie"] in ("Patient", "Study")] + ["specimen"]
    attributes = get_module_attribute_map()
    return tuple(
        dict.fromkeys(
            str(item["keyword"])
            for key in keys
            for item in attributes.get(key, [])
            if len(item["path"]) == 0
        )
    )


@functools.lru_cache(maxsize=32)
def _copied_tags(sop_class_uid: str) -> tuple[int, ...]:
    """The tags of :func:`_copied_keywords` that pydicom knows, in ascending order."""
    from pydicom.datadict import tag_for_keyword

    tags = (tag_for_keyword(k) for k in _copied_keywords(sop_class_uid))
    return tuple(sorted(int(t) for t in tags if t is not None))


def load_standard_tables() -> None:
    """Load highdicom's tables of the standard now, e.g. before forking.

    The table of module attributes comes from :mod:`pipeline.io.highdicom_tables` (each
    module parsed when first read: ~20 ms instead of ~0.2 s for the 22 MB of JSON). Workers
    forked afterwards inherit the tables instead of each loading them again.
    """
    install_lazy_tables()
    from highdicom._standard_utils import (
        get_iod_module_map,
        get_module_attribute_map,
        get_sop_class_iod_map,
    )

    get_sop_class_iod_map(), get_iod_module_map(), get_module_attribute_map()


class SegTemplates:
    """SEGs from a template of their kind instead of highdicom's constructor each time.

    The first source of a kind (its SOP class, modality, character set, compression
    history; for a source placed in the patient's space also its geometry and pixel
    measures: :meth:`_key`) is built by :func:`build_seg` (highdicom checks every
    attribute against the standard; with the template's preparation ~20 ms, against
    ~1-2 ms for a SEG from a template); later ones copy that object and fill in what
    differs from source to source: the patient/study attributes
    highdicom copies (:func:`_copied_keywords`: those the source carries, whichever they
    are), the lossy compression ratio and method, the references to the source, the SEG's
    UIDs, instance number, orientation, size, pixel measures and the bit-packed frames. So
    radiographs of any size and pixel spacing (a detector cropped to the collimation, a
    calibrated spacing), carrying any optional patient/study attributes, share one
    template. The result is byte for byte what highdicom builds
    (tests/inference/test_outputs.py compares them).

    Args:
        maxsize: templates kept (least recently used dropped first).
    """

    def __init__(self, maxsize: int = 16):
        import collections

        self.maxsize = maxsize
        self._templates: collections.OrderedDict = collections.OrderedDict()

    def build(
        self, source: Any, m: LungMeasures, uids: dict[str, str], algorithm: dict[str, str]
    ) -> Any:
        """:func:`build_seg`'s SEG of ``source``, from a template when one fits."""
        import copy

        source = _complete_type2(source)
        key = self._key(source, m, algorithm)
        if key not in self._templates:
            seg = build_seg(source, m, uids, algorithm)
            template = copy.deepcopy(seg)
            constant = _constant_bytes(template, source)
            encoded = _EncodedTemplate(template, source, constant) if constant else None
            self._templates[key] = (template, constant, encoded)
            while len(self._templates) > self.maxsize:
                self._templates.popitem(last=False)
            return seg
        self._templates.move_to_end(key)
        template, constant, _ = self._templates[key]
        seg = _fresh_copy(template)
        _fill_from_source(seg, source)
        _fill_own(seg, source, m, uids)
        seg._lungseg_constant_bytes = constant  # write_seg's fast path (see _encode_templated)
        return seg

    def encode(
        self,
        source: Any,
        m: LungMeasures,
        uids: dict[str, str],
        algorithm: dict[str, str],
        datetime14: str,
    ) -> bytes:
        """The Part 10 bytes :func:`write_seg` writes of :meth:`build`'s SEG, dates pinned.

        From a template's encoded pieces when one fits (:class:`_EncodedTemplate`: no
        dataset is built), else through :meth:`build`.
        """
        complete = _complete_type2(source)
        key = self._key(complete, m, algorithm)
        if key not in self._templates or self._templates[key][2] is None:
            seg = self.build(source, m, uids, algorithm)
            pin_dates(seg, datetime14)
            return _encode_templated(seg) or encode_dicom(seg)
        self._templates.move_to_end(key)
        return self._templates[key][2].encode(complete, m, uids, datetime14)

    @staticmethod
    def _key(source: Any, m: LungMeasures, algorithm: dict[str, str]) -> tuple:
        there = source.keys()  # tags: one set lookup each (``in source`` parses a keyword)
        values = tuple(repr(source.get(k)) for k in _TEMPLATE_KEY_ATTRIBUTES)
        lossy = tuple(tag in there for tag in _tags(_LOSSY_KEYWORDS))
        spatial = None  # projection radiographs: any size and pixel spacing share a template
        if _has_coordinates(source):
            keys = (
                *_COORDINATE_ATTRIBUTES,
                "PositionReferenceIndicator",
                *_PIXEL_MEASURES_ATTRIBUTES,
            )
            spatial = (m.right.shape, *(repr(source.get(k)) for k in keys))
        return tuple(sorted(algorithm.items())), values, lossy, spatial


#: The template's sequences that filling in changes inside (copied, not shared).
_FILLED_SEQUENCES = (
    "ReferencedSeriesSequence",
    "SourceImageSequence",
    "PerFrameFunctionalGroupsSequence",
    "DimensionOrganizationSequence",
    "DimensionIndexSequence",
    "ContributingEquipmentSequence",
)


#: Top-level attributes :func:`_fill_own` and :func:`pin_dates` set on every templated SEG.
_OWN_KEYWORDS = (
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "PatientOrientation",
    "Rows",
    "Columns",
    "PixelData",
    *(f"{p}{t}" for p in ("Content", "Series", "InstanceCreation") for t in ("Date", "Time")),
)


def _constant_bytes(template: Any, source: Any) -> dict[Any, bytes]:
    """Encoded bytes of the top-level elements of ``template`` no later SEG of it changes.

    All but :data:`_FILLED_SEQUENCES`, :data:`_OWN_KEYWORDS` and the attributes copied from
    the source, encoded explicit VR little endian; empty for other transfer syntaxes.
    """
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element
    from pydicom.uid import ExplicitVRLittleEndian
    from pydicom.valuerep import AMBIGUOUS_VR

    if template.file_meta.get("TransferSyntaxUID") != ExplicitVRLittleEndian:
        return {}
    varying = {*_FILLED_SEQUENCES, *_OWN_KEYWORDS, *_copied_keywords(str(source.SOPClassUID))}
    varying |= {*_LOSSY_KEYWORDS, *([] if _has_coordinates(source) else [_SHARED_GROUPS])}
    encodings = template.get("SpecificCharacterSet", "iso8859")
    out = {}
    for element in template:
        if element.keyword in varying or element.VR in AMBIGUOUS_VR:
            continue
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_data_element(fp, element, encodings)
        out[element.tag] = fp.getvalue()
    return out


def _encode_templated(seg: Any) -> bytes | None:
    """``seg`` as Part 10 bytes, its template's unchanging elements copied as encoded bytes.

    The same bytes as pydicom's ``save_as(enforce_file_format=True)`` (tested), in about a
    third of the time: only what differs from source to source is encoded. None when
    ``seg`` does not come from a template (:class:`SegTemplates`).
    """
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import (
        correct_ambiguous_vr_element,
        write_data_element,
        write_file_meta_info,
    )
    from pydicom.valuerep import AMBIGUOUS_VR

    constant = getattr(seg, "_lungseg_constant_bytes", None)
    if not constant:
        return None
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    fp.write(seg.preamble or b"\x00" * 128)
    fp.write(b"DICM")
    write_file_meta_info(fp, seg.file_meta, enforce_standard=True)
    encodings = seg.get("SpecificCharacterSet", "iso8859")
    for tag in sorted(seg.keys()):
        if tag in constant:
            fp.write(constant[tag])
            continue
        element = seg[tag]
        if element.VR in AMBIGUOUS_VR:
            element = correct_ambiguous_vr_element(element, seg, True)
        write_data_element(fp, element, encodings)
    return fp.getvalue()


class _EncodedTemplate:
    """A template's SEG as encoded pieces: most bytes kept, the rest encoded per source.

    The pieces follow the template's elements in tag order: the bytes of those that never
    change (:func:`_constant_bytes`, and the elements of ambiguous VR, resolved against the
    template); the template's reference sequences, encoded once and parsed into a tree
    (:func:`_parse_elements`) whose leaves are kept bytes or the elements that differ from
    SEG to SEG (the source's SOP Instance and Series UIDs, the dimension organisation UID,
    the contribution date), so that only those and the lengths around them are encoded
    again; the SEG's own attributes and the lossy compression ones copied from the source,
    encoded each time. The patient/study attributes the source carries are encoded and
    merged in by tag.
    The file meta information is such a tree too (the SOP Instance UID varies; its group
    length is recomputed). The result is what :func:`_encode_templated` gives for
    :meth:`SegTemplates.build`'s SEG (tested), without building that dataset.
    """

    def __init__(self, template: Any, source: Any, constant: dict[Any, bytes]):
        from pydicom.datadict import tag_for_keyword

        copied = set(_copied_keywords(str(source.SOPClassUID)))
        #: the patient/study attributes highdicom copies, by tag: merged in per source
        self.copied_tags = _copied_tags(str(source.SOPClassUID))
        groups = "" if _has_coordinates(source) else _SHARED_GROUPS
        self._groups: dict[tuple[str, ...], bytes] = {}  # encoded Shared Functional Groups
        self.template, self.encodings = template, template.get("SpecificCharacterSet", "iso8859")
        was = {
            "ReferencedSOPInstanceUID": str(source.SOPInstanceUID),
            "SeriesInstanceUID": str(source.SeriesInstanceUID),
            "DimensionOrganizationUID": _dimension_uid(str(template.SOPInstanceUID)),
            "ContributionDateTime": _contribution_datetime(template),
        }
        varying = {self._element_of(k, v): k for k, v in was.items() if v is not None}
        self.head = (template.preamble or b"\x00" * 128) + b"DICM"
        self.meta = self._meta_tree(template)
        self.pieces: list[tuple[int, str, Any]] = []  # (tag, kind, what to write)
        own = {tag_for_keyword(k): k for k in _OWN_KEYWORDS}  # pin_dates adds absent dates
        for tag in sorted(set(template.keys()) | set(own)):
            keyword = template[tag].keyword if tag in template else ""
            if keyword in copied:
                continue  # merged in from each source (:meth:`encode`)
            self.pieces.append((tag, *self._piece(tag, keyword, own, constant, groups, varying)))

    def _piece(
        self, tag: int, keyword: str, own: dict, constant: dict, groups: str, varying: dict
    ) -> tuple[str, Any]:
        """How :meth:`encode` writes the template's element ``tag``: ``(kind, what)``."""
        from pydicom.datadict import dictionary_VR

        if tag in own:
            vr = self.template[tag].VR if tag in self.template else dictionary_VR(tag)
            return "own", (tag, own[tag], vr)
        if tag in constant:
            return "bytes", constant[tag]
        if keyword == groups:
            return "groups", tag
        if keyword in _FILLED_SEQUENCES:
            return "tree", _parse_elements(self._element(self.template[tag]), varying)
        if keyword in _LOSSY_KEYWORDS:
            return "source", tag
        # an element of ambiguous VR: its VR resolved against the template, once
        return "bytes", self._element(self.template[tag])

    def _meta_tree(self, template: Any) -> list | None:
        """The file meta elements after their group length, as a tree (the UID varying).

        None where pydicom's encoding does not start with that group length.
        """
        uid = str(template.file_meta.MediaStorageSOPInstanceUID)
        encoded = _file_meta_bytes(template.file_meta, uid)
        if (
            encoded[:8] != _META_GROUP_LENGTH
            or int.from_bytes(encoded[8:12], "little") != len(encoded) - len(_META_GROUP_LENGTH) - 4
        ):
            return None
        varying = {
            self._element_of("MediaStorageSOPInstanceUID", uid): "MediaStorageSOPInstanceUID"
        }
        return _parse_elements(encoded[12:], varying)

    def _element(self, element: Any) -> bytes:
        """One element as explicit VR little endian bytes (an ambiguous VR resolved)."""
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element
        from pydicom.valuerep import AMBIGUOUS_VR

        if element.VR in AMBIGUOUS_VR:
            element = correct_ambiguous_vr_element(copy.copy(element), self.template, True)
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_data_element(fp, element, self.encodings)
        return fp.getvalue()

    def _element_of(self, keyword: str, value: Any) -> bytes:
        """The encoded element ``keyword`` with ``value`` (its dictionary VR)."""
        return self._value_bytes(*_tag_and_vr(keyword), value)

    def _value_bytes(self, tag: int, vr: str, value: Any) -> bytes:
        """The element ``tag`` with ``value``: :func:`_simple_element`'s, else pydicom's."""
        from pydicom.dataelem import DataElement

        simple = _simple_element(tag, vr, value)
        return simple if simple is not None else self._element(DataElement(tag, vr, value))

    def encode(self, source: Any, m: LungMeasures, uids: dict[str, str], datetime14: str) -> bytes:
        """The Part 10 bytes of the SEG of ``source`` (Type 2 completed), dates pinned."""
        own = _own_values(source, m, uids, datetime14)
        now = {
            "ReferencedSOPInstanceUID": str(source.SOPInstanceUID),
            "SeriesInstanceUID": str(source.SeriesInstanceUID),
            "DimensionOrganizationUID": _dimension_uid(uids["sop_instance_uid"]),
            "ContributionDateTime": datetime14,
            "MediaStorageSOPInstanceUID": uids["sop_instance_uid"],
        }
        encoded = {k: self._element_of(k, v) for k, v in now.items()}
        parts = [self.head, self._meta_bytes(uids["sop_instance_uid"], encoded)]
        there = source.keys()
        copied = [(tag, "source", tag) for tag in self.copied_tags if tag in there]
        for _, kind, value in heapq.merge(self.pieces, copied, key=operator.itemgetter(0)):
            if kind == "bytes":
                parts.append(value)
            elif kind == "tree":
                parts.extend(_render(node, encoded) for node in value)
            elif kind == "source":
                parts.append(self._element(source[value]))
            elif kind == "groups":
                parts.append(self._groups_bytes(value, source))
            else:
                tag, keyword, vr = value
                parts.append(self._value_bytes(tag, vr, own[keyword]))
        return b"".join(parts)

    def _groups_bytes(self, tag: int, source: Any) -> bytes:
        """The encoded Shared Functional Groups of ``source`` (kept by its pixel measures)."""
        from pydicom.dataelem import DataElement

        # the stored values, raw where not yet converted: no conversion for a cached one
        key = tuple(repr(_stored_value(source, t)) for t in _tags(_PIXEL_MEASURES_ATTRIBUTES))
        if key not in self._groups:
            if len(self._groups) >= 64:  # a few detectors' spacings: rarely full
                self._groups.clear()
            self._groups[key] = self._element(DataElement(tag, "SQ", _shared_groups(source)))
        return self._groups[key]

    def _meta_bytes(self, sop_instance_uid: str, encoded: dict[str, bytes]) -> bytes:
        """The file meta information group, group length first, for this SOP Instance UID."""
        if self.meta is None:
            return _file_meta_bytes(self.template.file_meta, sop_instance_uid)
        body = b"".join(_render(node, encoded) for node in self.meta)
        return _META_GROUP_LENGTH + len(body).to_bytes(4, "little") + body


def _stored_value(source: Any, tag: int) -> Any:
    """The value of ``tag`` as ``source`` holds it (bytes while not yet converted), or None."""
    element = source.get_item(tag) if tag in source else None
    return None if element is None else element.value


#: The File Meta Information Group Length element, before its 4-byte value.
_META_GROUP_LENGTH = b"\x02\x00\x00\x00UL\x04\x00"


def _file_meta_bytes(file_meta: Any, sop_instance_uid: str) -> bytes:
    """The file meta group as pydicom encodes it, with this Media Storage SOP Instance UID."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = copy.deepcopy(file_meta)
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, meta, enforce_standard=True)
    return fp.getvalue()


@functools.lru_cache(maxsize=64)
def _tag_and_vr(keyword: str) -> tuple[int, str]:
    """The tag and dictionary VR of ``keyword``."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    return tag, dictionary_VR(tag)


#: Value VRs :func:`_simple_element` encodes, with the byte that pads them to an even length.
_SIMPLE_PADDING = {"UI": b"\x00", "DA": b" ", "TM": b" ", "DT": b" ", "CS": b" ", "IS": b" "}


def _simple_element(tag: int, vr: str, value: Any) -> bytes | None:
    """An element of ASCII text values, one US number or OB bytes, as explicit VR LE bytes.

    The bytes pydicom writes (tested), without building a data element: the SEG's own UIDs,
    dates, instance number, patient orientation, rows, columns and frames. None for anything else
    (non-ASCII text, a number where text is due, other VRs): pydicom encodes those.
    """
    from pydicom.multival import MultiValue

    if vr == "OB" and isinstance(value, bytes) and len(value) % 2 == 0:
        return _element_head(tag, b"OB", len(value)) + value
    if vr == "US" and type(value) is int and 0 <= value < 1 << 16:
        return _element_head(tag, b"US", 2) + value.to_bytes(2, "little")
    pad = _SIMPLE_PADDING.get(vr)
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    if pad is None or not all(_simple_value(v, vr) for v in values):
        return None
    data = "\\".join(map(str, values)).encode("ascii")
    data += pad * (len(data) % 2)
    return _element_head(tag, vr.encode("ascii"), len(data)) + data


def _simple_value(value: Any, vr: str) -> bool:
    """Whether ``value`` is one value :func:`_simple_element` writes as pydicom does."""
    if type(value) is int:  # not bool, not pydicom's IS (which may keep its original text)
        return vr == "IS"
    return type(value) is str and value.isascii() and "\\" not in value


def _element_head(tag: int, vr: bytes, length: int) -> bytes:
    """The tag, VR and length of an explicit VR little endian element."""
    group_element = (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")
    if vr in _LONG_VRS:
        return group_element + vr + b"\x00\x00" + length.to_bytes(4, "little")
    return group_element + vr + length.to_bytes(2, "little")


#: Explicit VR little endian: the VRs whose length takes 4 bytes (after 2 reserved ones).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0"


@dataclass
class _Nested:
    """A sequence or item of defined length: its header, then its children (encoded again)."""

    head: bytes
    children: list


def _parse_elements(buf: bytes, varying: dict[bytes, str]) -> list:
    """Explicit VR little endian elements as a tree: bytes, varying keywords, :class:`_Nested`.

    An element whose whole encoding is a key of ``varying`` becomes that keyword; sequences
    and items of defined length become :class:`_Nested` (their lengths are recomputed);
    everything else stays bytes (undefined lengths, delimiters included).
    """
    out: list = []
    pos = 0
    while pos < len(buf):
        vr = buf[pos + 4 : pos + 6]
        if buf[pos : pos + 4] in (_ITEM, _ITEM_END, _SEQUENCE_END):
            head, length = 8, int.from_bytes(buf[pos + 4 : pos + 8], "little")
            nested = buf[pos : pos + 4] == _ITEM
        elif vr in _LONG_VRS:
            head, length = 12, int.from_bytes(buf[pos + 8 : pos + 12], "little")
            nested = vr == b"SQ"
        else:
            head, length = 8, int.from_bytes(buf[pos + 6 : pos + 8], "little")
            nested = False
        if length == _UNDEFINED or (nested and length == 0):
            out.append(buf[pos : pos + head])  # children follow as siblings, then a delimiter
            pos += head
            continue
        end = pos + head + length
        if nested:
            out.append(
                _Nested(buf[pos : pos + head - 4], _parse_elements(buf[pos + head : end], varying))
            )
        else:
            element = buf[pos:end]
            out.append(varying.get(element, element))
        pos = end
    return out


def _render(node: Any, encoded: dict[str, bytes]) -> bytes:
    """A node of :func:`_parse_elements`' tree as bytes, ``encoded`` giving varying elements."""
    if isinstance(node, bytes):
        return node
    if isinstance(node, str):
        return encoded[node]
    body = b"".join(_render(child, encoded) for child in node.children)
    return node.head + len(body).to_bytes(4, "little") + body


def _own_values(source: Any, m: LungMeasures, uids: dict[str, str], datetime14: str) -> dict:
    """A templated SEG's own top-level values: UIDs, instance number, orientation, frames, dates."""
    packed = _packed_frames((m.right, m.left))
    out: dict[str, Any] = {
        "SeriesInstanceUID": uids["series_instance_uid"],
        "SOPInstanceUID": uids["sop_instance_uid"],
        "InstanceNumber": int(source.get("InstanceNumber") or 1),
        "PatientOrientation": source.get("PatientOrientation", ""),
        "Rows": int(m.right.shape[0]),
        "Columns": int(m.right.shape[1]),
        "PixelData": packed + b"\x00" * (len(packed) % 2),
    }
    for prefix in ("Content", "Series", "InstanceCreation"):
        out[f"{prefix}Date"], out[f"{prefix}Time"] = datetime14[:8], datetime14[8:14]
    return out


def _packed_frames(frames: tuple[np.ndarray, ...]) -> bytes:
    """Binary frames as a SEG's Pixel Data: one bit a pixel, little-endian bit order, no gaps.

    Frames of whole bytes are packed one by one (no stacked copy: 8 MiB at 2048²); others
    together, since a frame then starts inside a byte.
    """
    if frames[0].size % 8:
        return np.packbits(np.stack(frames).reshape(-1), bitorder="little").tobytes()
    return b"".join(np.packbits(f.reshape(-1), bitorder="little").tobytes() for f in frames)


def _contribution_datetime(seg: Any) -> str | None:
    """The Contribution DateTime of the SEG's first contributing equipment item, if any."""
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            return str(item.ContributionDateTime)
    return None


def _fresh_copy(template: Any) -> Any:
    """A new dataset sharing the template's unchanging elements (a deep copy costs 2 ms)."""
    import copy

    from pydicom.dataset import Dataset

    seg = Dataset()
    for element in template:
        seg.add(element)
    for keyword in _FILLED_SEQUENCES:
        if keyword in template:
            seg[keyword] = _copy_sequence(template[keyword])
    seg.file_meta = copy.deepcopy(template.file_meta)
    seg.preamble = template.preamble
    return seg


def _copy_sequence(element: Any) -> Any:
    """A sequence element with new items and elements all the way down, values shared.

    What the fills change are element values, set anew (never changed in place), so the
    values themselves (strings, numbers, bytes) need no copying: a third of
    ``copy.deepcopy``'s time.
    """
    import copy

    from pydicom.dataset import Dataset

    def item_copy(item: Any) -> Any:
        out = Dataset()
        for child in item:
            out.add(_copy_sequence(child) if child.VR == "SQ" else copy.copy(child))
        return out

    out = copy.copy(element)
    out.value = [item_copy(item) for item in element.value]
    return out


def _fill_from_source(seg: Any, source: Any) -> None:
    """The copied patient/study attributes, lossy compression, pixel measures and references."""
    import copy

    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import DataElement

    for keyword in _copied_keywords(str(source.SOPClassUID)):
        if keyword in source:
            seg[keyword] = copy.deepcopy(source[keyword])
        elif keyword in seg:  # the template's source had it, this one has not
            del seg[keyword]
    for keyword in _LOSSY_KEYWORDS:
        if keyword in seg:  # the template's source had it, so this one has it too (the key)
            seg[keyword] = copy.deepcopy(source[keyword])
    if not _has_coordinates(source):  # a new element: the template's is shared, not changed
        tag = tag_for_keyword(_SHARED_GROUPS)
        seg[tag] = DataElement(tag, "SQ", _shared_groups(source))
    series = seg.ReferencedSeriesSequence[0]
    series.SeriesInstanceUID = source.SeriesInstanceUID
    refs = [series.ReferencedInstanceSequence[0], *seg.SourceImageSequence]
    for frame in seg.PerFrameFunctionalGroupsSequence:
        refs.extend(frame.DerivationImageSequence[0].SourceImageSequence)
    for ref in refs:
        ref.ReferencedSOPInstanceUID = source.SOPInstanceUID


def _fill_own(seg: Any, source: Any, m: LungMeasures, uids: dict[str, str]) -> None:
    """The SEG's own UIDs, instance number, orientation, creation times and frames."""
    import datetime

    now = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
    for keyword, value in _own_values(source, m, uids, now).items():
        setattr(seg, keyword, value)
    seg.file_meta.MediaStorageSOPInstanceUID = uids["sop_instance_uid"]
    _derive_dimension_uid(seg, uids["sop_instance_uid"])
    pin_dates(seg, now)  # also the contributing equipment's date-time


def _dimension_uid(sop_uid: str) -> str:
    """The Dimension Organization UID of the SEG with this SOP Instance UID."""
    from pipeline.io.convert import make_uid

    return make_uid("lungseg-seg-dimensions", sop_uid)


def _derive_dimension_uid(seg: Any, sop_uid: str) -> None:
    """Replace highdicom's random Dimension Organization UID by one derived from the SEG's UID."""
    uid = _dimension_uid(sop_uid)
    for item in seg.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = uid
    for item in seg.get("DimensionIndexSequence", []):
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = uid


def pin_dates(ds: Any, datetime14: str) -> None:
    """Give an object the run's date and time (``YYYYMMDDHHMMSS``) instead of "now".

    Content, Series and Instance Creation dates/times and every Contribution DateTime, so two
    runs over the same sources with the same model write identical SEG files.
    """
    date, time_ = datetime14[:8], datetime14[8:14]
    for prefix in ("Content", "Series", "InstanceCreation"):
        setattr(ds, f"{prefix}Date", date)
        setattr(ds, f"{prefix}Time", time_)
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = datetime14


def write_seg(seg: Any, path: str | os.PathLike, content_datetime: str | None = None) -> Path:
    """Save a Segmentation atomically; ``content_datetime`` (YYYYMMDDHHMMSS) pins its dates."""
    if content_datetime:
        pin_dates(seg, content_datetime)
    path = Path(path)
    encoded = _encode_templated(seg)
    with atomic_path(path) as tmp:
        if encoded is None:
            seg.save_as(tmp, enforce_file_format=True)  # Part 10: preamble, DICM, file meta
        else:
            tmp.write_bytes(encoded)
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
    install_lazy_tables()
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
    source = _complete_type2(source)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source, seg],
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


# --- one prediction's DICOM objects -------------------------------------------------------


def encode_dicom(ds: Any) -> bytes:
    """A dataset as DICOM Part 10 bytes (with the file meta header)."""
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


#: This process's SEG templates (:class:`SegTemplates`), used by :func:`seg_of`.
SEG_TEMPLATES = SegTemplates()


class MissingReferenceError(ValueError):
    """A source lacks a UID by which a SEG or SR must reference it."""


#: The source's UIDs a SEG and an SR reference it by (Type 1 in every image IOD).
_REFERENCE_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def source_references(source: Any) -> tuple[str, str]:
    """The source's Series and SOP Instance UIDs, once every reference UID is known present.

    Raises:
        MissingReferenceError: naming the reference UIDs the source lacks or leaves empty.
    """
    missing = [k for k in _REFERENCE_KEYWORDS if not str(source.get(k, "") or "").strip()]
    if missing:
        raise MissingReferenceError(
            f"the source has no {', '.join(missing)}, by which a SEG must reference it"
        )
    return str(source.SeriesInstanceUID), str(source.SOPInstanceUID)


def seg_of(source: Any, m: LungMeasures, identity: ModelIdentity) -> Any:
    """The SEG of a source instance (header enough) under a model: UIDs from both.

    Args:
        source: the source pydicom Dataset.
        m: the measured lungs on the source grid.
        identity: the model that produced them (its digest derives the UIDs).

    Raises:
        MissingReferenceError: the source lacks a UID the SEG references it by.
    """
    uids = seg_uids(*source_references(source), identity.digest)
    return SEG_TEMPLATES.build(source, m, uids, identity.algorithm())


def seg_bytes_of(source: Any, m: LungMeasures, identity: ModelIdentity, datetime14: str) -> bytes:
    """:func:`seg_of`'s SEG as the Part 10 bytes :func:`write_seg` writes, dates pinned.

    Encoded from the template's pieces (:meth:`SegTemplates.encode`) without building the
    dataset: about half the time of :func:`seg_of` and :func:`write_seg`.
    """
    uids = seg_uids(*source_references(source), identity.digest)
    return SEG_TEMPLATES.encode(source, m, uids, identity.algorithm(), datetime14)


def sr_uids(series_uid: str, sop_uid: str, checksum: str) -> dict[str, str]:
    """Series, SOP Instance and observer device UIDs of the SR of a source under a model."""
    from pipeline.io.convert import make_uid

    return {
        "series_instance_uid": make_uid("lungseg-sr-series", series_uid, checksum),
        "sop_instance_uid": make_uid("lungseg-sr", sop_uid, checksum),
        "device_uid": make_uid("lungseg-device", checksum),
    }


def sr_of(source: Any, seg: Any, m: LungMeasures, identity: ModelIdentity) -> Any:
    """The TID 1500 SR of a source's lung areas, referencing its SEG (see :func:`build_sr`).

    Raises:
        ValueError: the pixel spacing is unknown.
    """
    uids = sr_uids(*source_references(source), identity.digest)
    return build_sr(source, seg, m, uids, identity.algorithm())


# --- a batch's files for one prediction ---------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What writing a batch's outputs needs besides the prediction: where and what."""

    out_dir: Path
    formats: tuple[OutputFormat, ...]
    identity: ModelIdentity
    started: str
    tb_inputs: Any = None  # the TB bundle's input preparation (``lungseg segment --tb``)


def write_outputs(
    path: Path,
    relative: Path,
    pred: Prediction,
    original: np.ndarray | None,
    ctx: Context,
    clock: Stopwatch | None = None,
) -> dict:
    """Write one prediction's files under ``ctx.out_dir``; return its report row.

    Args:
        path: the input file.
        relative: its path under its input folder (names the outputs).
        pred: the prediction.
        original: the decoded image: uint8 for the overlay, float32 in [0, 1] for TB inputs.
        ctx: output settings.
        clock: times the stages ``write``, ``seg_encode`` and ``tb_inputs`` (from now).
    """
    clock = Stopwatch() if clock is None else clock
    clock.restart()
    m = pred.measures
    if OutputFormat.MASK in ctx.formats:
        write_mask(pred.mask, output_path(ctx.out_dir, relative, OutputFormat.MASK))
    if OutputFormat.OVERLAY in ctx.formats:
        write_overlay(original, m, output_path(ctx.out_dir, relative, OutputFormat.OVERLAY))
    if OutputFormat.NIFTI in ctx.formats:
        write_nifti(m, output_path(ctx.out_dir, relative, OutputFormat.NIFTI))
    clock.lap("write")
    out = measured_row(path, pred.meta, m)
    if OutputFormat.SEG in ctx.formats and pred.meta.get("format") == "DICOM":
        seg_args = (path, relative, m, ctx, clock)
        out["reason"] = "; ".join(filter(None, (out["reason"], _write_seg(*seg_args))))
    if ctx.tb_inputs is not None:  # scored in batches by the main process, then dropped
        clock.restart()
        out["tb_input"] = ctx.tb_inputs(*as_segmented(original, m, pred.meta.get("view")))
        clock.lap("tb_inputs")
    return out


def as_segmented(
    original: np.ndarray, m: LungMeasures, view: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image (float32) and its right and left lungs the way the network saw them.

    A negative is inverted back and a turned film turned, so what is measured from them (the
    TB inputs) sees an upright radiograph with the lungs dark, as the model was trained on.
    """
    image, right, left = np.asarray(original, dtype=np.float32), m.right, m.left
    if view == View.NEGATIVE:
        image = 1 - image
    elif view == View.ROTATED_180:
        image, right, left = (np.ascontiguousarray(a[::-1, ::-1]) for a in (image, right, left))
    return image, right, left


def _write_seg(path: Path, relative: Path, m: LungMeasures, ctx: Context, clock: Stopwatch) -> str:
    """Write the SEG (and the SR, when asked); return a note for the report ("" or why not)."""
    import pydicom

    clock.restart()
    source = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    try:
        source_references(source)
    except MissingReferenceError as err:  # the file will not change: a note, not a retry
        return f"no SEG: {err}"
    target = output_path(ctx.out_dir, relative, OutputFormat.SEG)
    if OutputFormat.SR not in ctx.formats:  # bytes straight from a template (no dataset)
        encoded = seg_bytes_of(source, m, ctx.identity, ctx.started)
        clock.lap("seg_encode")
        write_bytes_atomic(target, encoded)
        clock.lap("write")
        return ""
    seg = seg_of(source, m, ctx.identity)
    clock.lap("seg_encode")
    write_seg(seg, target, ctx.started)
    note = ""
    if math.isnan(m.spacing[0]):
        note = "no SR: the pixel spacing is unknown, so areas in mm² are too"
    else:
        sr = sr_of(source, seg, m, ctx.identity)
        write_seg(sr, output_path(ctx.out_dir, relative, OutputFormat.SR), ctx.started)
    clock.lap("write")
    return note
