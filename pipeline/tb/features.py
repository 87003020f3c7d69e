"""Radiomics-style features inside the lungs, for the classical TB baseline.

Per lung and per zone (upper, middle, lower third of each lung's height): intensity
statistics of the radiograph standardised inside both lungs (TB opacities make a zone brighter
than the rest); per lung: grey-level co-occurrence texture (GLCM) and a uniform local binary
pattern histogram; plus the lungs' shape (:func:`pipeline.tb.inputs.mask_features`) and the
raw mean and spread of the lung intensities.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import stats

from pipeline.tb.inputs import mask_features

ZONES = ("upper", "middle", "lower")
GLCM_LEVELS = 32
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
LBP_POINTS, LBP_RADIUS = 8, 1
#: Longest side at which features are computed (texture depends on the pixel size; the
#: training images are 512²).
FEATURE_SIZE = 512


def _intensity(values: np.ndarray, prefix: str) -> dict[str, float]:
    if values.size < 2:
        values = np.zeros(2, np.float32)
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {
        f"{prefix}_mean": float(values.mean()),
        f"{prefix}_std": float(values.std()),
        f"{prefix}_skew": float(np.nan_to_num(stats.skew(values))),
        f"{prefix}_kurtosis": float(np.nan_to_num(stats.kurtosis(values))),
        f"{prefix}_p10": float(p10),
        f"{prefix}_p50": float(p50),
        f"{prefix}_p90": float(p90),
    }


def _zones(lung: np.ndarray) -> dict[str, np.ndarray]:
    rows = np.nonzero(lung.any(axis=1))[0]
    out = {z: np.zeros_like(lung) for z in ZONES}
    if rows.size:
        edges = np.linspace(rows.min(), rows.max() + 1, 4).round().astype(int)
        for zone, (a, b) in zip(ZONES, itertools.pairwise(edges), strict=True):
            out[zone][a:b] = lung[a:b]
    return out


def _glcm(image: np.ndarray, lung: np.ndarray, prefix: str) -> dict[str, float]:
    """GLCM properties of the lung's pixels only (level 0 marks outside and is dropped)."""
    from skimage.feature import graycomatrix, graycoprops

    if lung.sum() < 16:
        return {f"{prefix}_glcm_{p}": 0.0 for p in GLCM_PROPS}
    low, high = np.percentile(image[lung], [1, 99])
    levels = np.clip((image - low) / max(high - low, 1e-6), 0, 1) * (GLCM_LEVELS - 1)
    quantised = np.where(lung, levels.round().astype(np.uint8) + 1, 0).astype(np.uint8)
    matrix = graycomatrix(quantised, [2, 4], [0, np.pi / 2], levels=GLCM_LEVELS + 1)
    inside = matrix[1:, 1:].astype(np.float64)
    inside /= np.maximum(inside.sum(axis=(0, 1), keepdims=True), 1)
    return {
        f"{prefix}_glcm_{p}": float(np.nan_to_num(graycoprops(inside, p).mean()))
        for p in GLCM_PROPS
    }


def _lbp(image: np.ndarray, lung: np.ndarray, prefix: str) -> dict[str, float]:
    from skimage.feature import local_binary_pattern

    codes = local_binary_pattern(
        (np.clip(image, 0, 1) * 255).astype(np.uint8), LBP_POINTS, LBP_RADIUS, "uniform"
    )
    bins = LBP_POINTS + 2
    hist = np.bincount(codes[lung].astype(int), minlength=bins)[:bins].astype(float)
    hist /= max(hist.sum(), 1.0)
    return {f"{prefix}_lbp_{i}": float(v) for i, v in enumerate(hist)}


def lung_features(image: np.ndarray, right: np.ndarray, left: np.ndarray) -> dict[str, float]:
    """All baseline features of one radiograph (``image`` in [0, 1], lungs dark).

    Args:
        image: ``rows x columns`` radiograph.
        right: the patient's right lung (boolean, same grid).
        left: the patient's left lung.
    """
    lungs = right | left
    inside = image[lungs] if lungs.any() else image.ravel()
    standard = (image - inside.mean()) / max(float(inside.std()), 1e-6)
    out = {"lungs_raw_mean": float(inside.mean()), "lungs_raw_std": float(inside.std())}
    out.update(mask_features(right, left))
    for name, lung in (("right", right), ("left", left)):
        out.update(_intensity(standard[lung], name))
        for zone, part in _zones(lung).items():
            out.update(_intensity(standard[part], f"{name}_{zone}"))
        out.update(_glcm(image, lung, name))
        out.update(_lbp(image, lung, name))
    return out


def features_at(
    image: np.ndarray, right: np.ndarray, left: np.ndarray, size: int = FEATURE_SIZE
) -> dict[str, float]:
    """:func:`lung_features` at the training images' scale.

    The image and masks are first downscaled to ``size`` on the longer side (area average for
    the image, nearest for the masks).
    """
    scale = size / max(image.shape)
    if scale >= 1:
        return lung_features(image, right, left)
    from PIL import Image

    shape = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    small = np.asarray(
        Image.fromarray(image.astype(np.float32)).resize(shape, Image.Resampling.BOX)
    )
    masks = [
        np.asarray(Image.fromarray(m.astype(np.uint8)).resize(shape, Image.Resampling.NEAREST)) > 0
        for m in (right, left)
    ]
    return lung_features(small, *masks)
