"""Intensity preprocessing: CLAHE, top-hat/bottom-hat enhancement, mask binarisation.

Array logic first (functions on ``rows x columns`` numpy arrays in [0, 1]), then MONAI
``Transform`` classes applying it to each channel of a ``(C, H, W)`` tensor or array. The
dictionary wrappers live in :mod:`pipeline.transforms.dictionary`.

Percentile intensity scaling is MONAI's own ``ScaleIntensityRangePercentiles(d)`` (used by
the bundle with lower=0.5, upper=99.5, b_min=0, b_max=1, clip=True); it is not re-written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.transforms import Transform
from monai.utils import convert_to_dst_type, convert_to_numpy

from pipeline.enums import StrEnum


class Footprint(StrEnum):
    """Structuring element of the morphological enhancement."""

    DISK = "disk"
    SQUARE = "square"


def clahe(
    image: np.ndarray,
    clip_limit: float = 0.01,
    tile_grid: int | Sequence[int] = (8, 8),
    nbins: int = 256,
) -> np.ndarray:
    """Contrast Limited Adaptive Histogram Equalisation (scikit-image).

    Args:
        image: ``rows x columns`` array; values outside [0, 1] are clipped first.
        clip_limit: normalised clip limit in (0, 1]; higher gives more contrast.
        tile_grid: number of tiles along rows and columns (OpenCV's ``tileGridSize``).
        nbins: histogram bins.

    Returns:
        float32 array of the same shape in [0, 1].
    """
    from skimage.exposure import equalize_adapthist

    if not 0 < clip_limit <= 1:
        raise ValueError(f"clip_limit {clip_limit!r} must be in (0, 1]")
    grid = (tile_grid, tile_grid) if isinstance(tile_grid, int) else tuple(tile_grid)
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"tile_grid {tile_grid!r} must be one or two integers >= 1")
    kernel = tuple(max(1, s // g) for s, g in zip(image.shape, grid, strict=True))
    img = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    out = equalize_adapthist(img, kernel_size=kernel, clip_limit=clip_limit, nbins=nbins)
    return out.astype(np.float32)


def _footprint_ops(radius: int, footprint: Footprint) -> tuple[Callable, Callable]:
    if footprint is Footprint.SQUARE:
        from scipy import ndimage

        size = (2 * radius + 1, 2 * radius + 1)
        return (lambda x: ndimage.white_tophat(x, size=size)), (
            lambda x: ndimage.black_tophat(x, size=size)
        )
    from skimage import morphology

    disk = morphology.disk(radius, decomposition="sequence")
    return (lambda x: morphology.white_tophat(x, disk)), (
        lambda x: morphology.black_tophat(x, disk)
    )


def tophat_enhance(
    image: np.ndarray, radius: int = 15, footprint: Footprint | str = Footprint.DISK
) -> np.ndarray:
    """Morphological contrast enhancement ``I + tophat(I) - bottomhat(I)``, clipped to [0, 1].

    The white top-hat adds back bright details smaller than the structuring element (ribs,
    vessels, the lung border's bright side); the black top-hat (bottom-hat) deepens dark
    ones, so edges sharpen while large uniform regions keep their level.

    Args:
        image: ``rows x columns`` array in [0, 1].
        radius: radius of the structuring element in pixels (>= 1).
        footprint: ``disk`` (isotropic, default) or ``square`` (faster).

    Returns:
        float32 array of the same shape in [0, 1].
    """
    if int(radius) < 1:
        raise ValueError(f"radius {radius!r} must be an integer >= 1")
    white, black = _footprint_ops(int(radius), Footprint.parse(footprint))
    img = np.asarray(image, dtype=np.float32)
    out = img + white(img) - black(img)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def binarize_mask(mask: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """Binarise a label image at ``fraction`` of its maximum, whatever its value range.

    0/255 masks with anti-aliased edges (lung = value > 127) and 0/1 masks both come out
    right: a PNG mask stored as 0/1 reads as 0 and 1/255, which a fixed 0.5 threshold would
    erase. An all-zero mask stays empty.

    Returns:
        float32 array of 0 and 1.
    """
    arr = np.asarray(mask, dtype=np.float32)
    peak = float(arr.max()) if arr.size else 0.0
    if peak <= 0:
        return np.zeros_like(arr)
    return (arr > fraction * peak).astype(np.float32)


class _PerChannel(Transform):
    """Apply a ``rows x columns`` numpy function to each channel of a ``(C, H, W)`` image."""

    def _apply(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        arr = convert_to_numpy(img)
        if arr.ndim != 3:
            raise ValueError(f"{type(self).__name__} expects (C, H, W), got shape {arr.shape}")
        out = np.stack([self._apply(channel) for channel in arr])
        return convert_to_dst_type(
            out, dst=img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32
        )[0]


class CLAHE(_PerChannel):
    """MONAI transform for :func:`clahe` on each channel of a ``(C, H, W)`` image in [0, 1]."""

    def __init__(
        self, clip_limit: float = 0.01, tile_grid: int | Sequence[int] = 8, nbins: int = 256
    ):
        self.clip_limit, self.tile_grid, self.nbins = clip_limit, tile_grid, nbins

    def _apply(self, image: np.ndarray) -> np.ndarray:
        return clahe(image, self.clip_limit, self.tile_grid, self.nbins)


class TopHatEnhance(_PerChannel):
    """MONAI transform for :func:`tophat_enhance` on each channel of a ``(C, H, W)`` image."""

    def __init__(self, radius: int = 15, footprint: str = "disk"):
        self.radius, self.footprint = radius, Footprint.parse(footprint)

    def _apply(self, image: np.ndarray) -> np.ndarray:
        return tophat_enhance(image, self.radius, self.footprint)


class BinarizeMask(_PerChannel):
    """MONAI transform for :func:`binarize_mask` on each channel of a ``(C, H, W)`` label."""

    def __init__(self, fraction: float = 0.5):
        self.fraction = fraction

    def _apply(self, image: np.ndarray) -> np.ndarray:
        return binarize_mask(image, self.fraction)
