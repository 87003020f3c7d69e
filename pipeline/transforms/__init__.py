"""Preprocessing transforms: array functions, MONAI array transforms, dictionary wrappers."""

from pipeline.transforms.dictionary import (
    BinarizeMaskd,
    CLAHEd,
    Letterboxd,
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
    TopHatEnhance,
    binarize_mask,
    clahe,
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
    "TopHatEnhance",
    "TopHatEnhanced",
    "Unletterbox",
    "Unletterboxd",
    "binarize_mask",
    "clahe",
    "letterbox",
    "letterbox_params",
    "tophat_enhance",
    "unletterbox",
]
