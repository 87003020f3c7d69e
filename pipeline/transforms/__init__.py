"""Preprocessing transforms: array functions, MONAI array transforms, dictionary wrappers."""

from pipeline.transforms.dictionary import (
    BinarizeMaskd,
    CLAHEd,
    Letterboxd,
    ScalePercentilesd,
    TopHatEnhanced,
    Unletterboxd,
)
from pipeline.transforms.geometry import (
    Letterbox,
    LetterboxParams,
    Unletterbox,
    letterbox,
    letterbox_params,
    unletterbox,
)
from pipeline.transforms.intensity import (
    CLAHE,
    BinarizeMask,
    ScalePercentiles,
    TopHatEnhance,
    binarize_mask,
    clahe,
    percentile_scale,
    tophat_enhance,
)

__all__ = [
    "CLAHE",
    "BinarizeMask",
    "BinarizeMaskd",
    "CLAHEd",
    "Letterbox",
    "LetterboxParams",
    "Letterboxd",
    "ScalePercentiles",
    "ScalePercentilesd",
    "TopHatEnhance",
    "TopHatEnhanced",
    "Unletterbox",
    "Unletterboxd",
    "binarize_mask",
    "clahe",
    "letterbox",
    "letterbox_params",
    "percentile_scale",
    "tophat_enhance",
    "unletterbox",
]
