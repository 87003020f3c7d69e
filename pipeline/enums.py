"""Fixed vocabularies, as enums converted at the boundary (DICOM strings, CLI words)."""

from __future__ import annotations

import enum


class StrEnum(enum.StrEnum):
    """A string enum whose ``str()`` is its value."""

    @classmethod
    def parse(cls, value: str | StrEnum) -> StrEnum:
        """Convert a user or file value to the enum, quoting the allowed set when it fails.

        Args:
            value: the value to convert (case-insensitive).

        Raises:
            ValueError: ``value`` is not one of the members.
        """
        if isinstance(value, cls):
            return value
        text = str(value).strip().upper()
        for member in cls:
            if member.value.upper() == text:
                return member
        allowed = ", ".join(m.value for m in cls)
        raise ValueError(f"{cls.__name__} {value!r} is not one of: {allowed}")


class ViewPosition(StrEnum):
    """DICOM ViewPosition (0018,5101) of a chest radiograph, plus LATERAL/UNKNOWN.

    The DICOM defined terms are AP, PA, LL, RL, RLD, LLD, RLO, LLO; ``LATERAL`` is written
    by some devices although not a defined term; ``UNKNOWN`` stands for an absent or
    unrecognised value.
    """

    PA = "PA"
    AP = "AP"
    LL = "LL"
    RL = "RL"
    LATERAL = "LATERAL"
    RLD = "RLD"
    LLD = "LLD"
    RLO = "RLO"
    LLO = "LLO"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def from_dicom(cls, value: object) -> ViewPosition:
        """Map a raw ViewPosition value to a member; anything unrecognised is ``UNKNOWN``."""
        text = str(value or "").strip().upper()
        if text in ("LAT", "LATERAL"):
            return cls.LATERAL
        return next((m for m in cls if m.value == text), cls.UNKNOWN)

    @property
    def is_lateral(self) -> bool:
        """True for the lateral projections (LL, RL, LATERAL) the model was not trained on."""
        return self in (ViewPosition.LL, ViewPosition.RL, ViewPosition.LATERAL)


class SpacingSource(StrEnum):
    """Which DICOM attribute gave the pixel spacing reported for an image."""

    PIXEL_SPACING = "PixelSpacing"
    # the detector's spacing brought to the patient by the file's magnification
    IMAGER_PIXEL_SPACING_MAGNIFICATION = (
        "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
    )
    IMAGER_PIXEL_SPACING_DISTANCES = (
        "ImagerPixelSpacing*DistanceSourceToPatient/DistanceSourceToDetector"
    )
    IMAGER_PIXEL_SPACING = "ImagerPixelSpacing"  # at the detector: magnified
    FILE_HEADER = "header"  # NIfTI/MHA/NRRD voxel size
    NONE = "none"


class InputFormat(StrEnum):
    """Image formats :func:`pipeline.io.read_cxr` recognises (DICOM by content)."""

    DICOM = "DICOM"
    PNG = "PNG"
    JPEG = "JPEG"
    TIFF = "TIFF"
    BMP = "BMP"
    NIFTI = "NIfTI"
    MHA = "MHA"
    NRRD = "NRRD"


class OutputFormat(StrEnum):
    """What ``lungseg segment`` writes per input (``--formats``)."""

    SEG = "seg"
    MASK = "mask"
    OVERLAY = "overlay"
    NIFTI = "nifti"
    SR = "sr"  # TID 1500 lung areas referencing the SEG (needs seg and a pixel spacing)


class QAFlag(StrEnum):
    """Quality flags of a segmentation, reported per image."""

    NOT_TWO_COMPONENTS = "not_two_components"
    IMPLAUSIBLE_AREA = "implausible_area"
    IMPLAUSIBLE_RATIO = "implausible_left_right_ratio"
    LOW_CONFIDENCE = "low_confidence"
    SMALL_FOR_HEMITHORAX = "small_for_hemithorax"
    INVERTED_POLARITY = "inverted_polarity"  # segmented as its negative (view check)
    UPSIDE_DOWN = "upside_down"  # segmented turned by 180 degrees (view check)


class View(StrEnum):
    """How the network saw an image: as read, as its negative, or turned by 180 degrees."""

    AS_READ = "as_read"
    NEGATIVE = "negative"
    ROTATED_180 = "rotated_180"


class ViewCheckMode(StrEnum):
    """Whether the view check runs: ``auto`` (on images the network is unsure of) or ``off``."""

    AUTO = "auto"
    OFF = "off"


class LungField(StrEnum):
    """Which lung field a reference mask outlines (and a model is trained to output).

    ``visible``: the lung seen as air, stopping at the heart's left border and at the
    diaphragm (most Montgomery/Shenzhen masks). ``anatomical``: the whole lung field, the
    left lower lobe behind the heart included.
    """

    VISIBLE = "visible"
    ANATOMICAL = "anatomical"


class Status(StrEnum):
    """Outcome of one input of a batch."""

    OK = "ok"
    SKIPPED = "skipped"
    FAILED = "failed"


class NetworkName(StrEnum):
    """Segmentation networks of :data:`pipeline.networks.NETWORKS`."""

    RES_UNET = "res_unet"
    BASIC_UNET = "basic_unet"
    UNETPP_EFFICIENTNET = "unetpp_efficientnet"
    RESNET50_UNET = "resnet50_unet"


class TBNetworkName(StrEnum):
    """TB classifier networks (all from MONAI, trained from scratch)."""

    DENSENET121 = "densenet121"
    DENSENET_SMALL = "densenet_small"
    EFFICIENTNET_B0 = "efficientnet_b0"
