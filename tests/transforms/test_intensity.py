"""Percentile scaling, CLAHE, top-hat/bottom-hat, mask binarisation: real images, hand values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from pipeline.transforms import (
    CLAHE,
    BinarizeMaskd,
    CLAHEd,
    ScalePercentiles,
    ScalePercentilesd,
    TopHatEnhance,
    TopHatEnhanced,
    binarize_mask,
    clahe,
    percentile_scale,
    tophat_enhance,
)
from pipeline.transforms.intensity import tail_percentiles


def _entropy(img: np.ndarray, bins: int = 64) -> float:
    hist, _ = np.histogram(img, bins=bins, range=(0, 1))
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum())


def _local_contrast(img: np.ndarray) -> float:
    gy, gx = np.gradient(img.astype(np.float64))
    return float(np.hypot(gx, gy).mean())


@pytest.fixture(scope="module")
def image(pixels) -> np.ndarray:
    return pixels.astype(np.float32) / 255


def test_clahe_spreads_the_histogram_of_a_real_radiograph(image, lung_mask):
    out = clahe(image)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert _entropy(out) > _entropy(image) + 0.1
    # inside the lungs (dark, low contrast) the spread of values grows
    assert out[lung_mask].std() > image[lung_mask].std()


def test_higher_clip_limit_gives_more_local_contrast(image):
    low, high = clahe(image, clip_limit=0.005), clahe(image, clip_limit=0.05)
    assert _local_contrast(high) > _local_contrast(low) > _local_contrast(image) * 0.9


def test_clahe_keeps_a_constant_image_finite():
    out = clahe(np.full((64, 64), 0.4, np.float32))
    assert np.isfinite(out).all() and out.std() < 1e-6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"clip_limit": 0}, "clip_limit 0"), ({"tile_grid": (8, 0)}, r"tile_grid \(8, 0\)")],
)
def test_clahe_rejects_bad_parameters(image, kwargs, message):
    with pytest.raises(ValueError, match=message):
        clahe(image, **kwargs)


def test_tophat_amplifies_small_bright_and_dark_details_by_hand():
    img = np.full((21, 21), 0.3, np.float32)
    img[9:12, 3:6] = 0.5  # bright 3x3 detail: top-hat = 0.2 there, so 0.5 + 0.2
    img[9:12, 14:17] = 0.1  # dark 3x3 detail: bottom-hat = 0.2 there, so 0.1 - 0.2 -> clipped 0
    out = tophat_enhance(img, radius=3)
    np.testing.assert_allclose(out[9:12, 3:6], 0.7, atol=1e-6)
    np.testing.assert_allclose(out[9:12, 14:17], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[0:3, 8:13], 0.3, atol=1e-6)  # flat background unchanged


@pytest.mark.parametrize("footprint", ["disk", "square"])
def test_tophat_leaves_structures_larger_than_the_element_alone(footprint):
    ramp = np.tile(np.linspace(0.1, 0.9, 64, dtype=np.float32), (64, 1))
    out = tophat_enhance(ramp, radius=4, footprint=footprint)
    np.testing.assert_allclose(out[8:-8, 8:-8], ramp[8:-8, 8:-8], atol=1e-5)


def test_tophat_sharpens_a_real_radiograph(image):
    out = tophat_enhance(image, radius=15)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert _local_contrast(out) > 1.1 * _local_contrast(image)


def test_tophat_rejects_bad_parameters(image):
    with pytest.raises(ValueError, match="radius 0"):
        tophat_enhance(image, radius=0)
    with pytest.raises(ValueError, match="disk, square"):
        tophat_enhance(image, footprint="star")


def test_binarize_matches_the_data_readme_rule_on_a_real_mask(data_dir):
    from tests.conftest import load_png

    raw = load_png(data_dir / "masks" / "MCUCXR_0104_1.png")
    assert len(np.unique(raw)) > 2  # anti-aliased edges
    np.testing.assert_array_equal(binarize_mask(raw / 255), raw > 127)


def test_binarize_handles_zero_one_masks_and_empty_masks():
    m = np.zeros((4, 4), np.float32)
    m[1:3, 1:3] = 1 / 255  # a 0/1 PNG mask after reading
    np.testing.assert_array_equal(binarize_mask(m), m > 0)
    assert binarize_mask(np.zeros((4, 4))).sum() == 0


def test_array_transforms_apply_per_channel_and_keep_the_type(image):
    stacked = torch.from_numpy(np.stack([image, 1 - image]))
    out = CLAHE()(MetaTensor(stacked, meta={"x": 1}))
    assert isinstance(out, MetaTensor) and out.shape == (2, 512, 400) and out.meta["x"] == 1
    np.testing.assert_allclose(out[0].numpy(), clahe(image, tile_grid=8), atol=1e-6)
    assert isinstance(TopHatEnhance(radius=3)(np.stack([image])), np.ndarray)
    with pytest.raises(ValueError, match=r"expects \(C, H, W\)"):
        CLAHE()(image)


def test_dictionary_wrappers(image):
    d = {
        "image": torch.from_numpy(image[None].copy()),
        "label": torch.from_numpy(image[None] > 0.5).float(),
    }
    out = TopHatEnhanced("image", radius=5)(CLAHEd("image")(BinarizeMaskd("label")(d)))
    assert out["image"].shape == (1, 512, 400)
    assert set(torch.unique(out["label"]).tolist()) == {0.0, 1.0}


def test_percentile_scale_by_hand():
    ramp = np.arange(101, dtype=np.float32)  # percentile p of 0..100 is p
    out = percentile_scale(ramp, lower=10, upper=90)
    np.testing.assert_allclose(out[[0, 10, 50, 90, 100]], [0, 0, 0.5, 1, 1], atol=1e-6)
    assert out.dtype == np.float32
    assert not percentile_scale(np.full((4, 4), 7.0)).any()  # constant: zeros, not NaN
    with pytest.raises(ValueError, match=r"\(99, 1\)"):
        percentile_scale(ramp, lower=99, upper=1)


def test_percentile_scale_equals_monai_on_a_real_radiograph(image):
    from monai.transforms import ScaleIntensityRangePercentiles

    raw = MetaTensor(torch.from_numpy(image[None] * 4095), meta={"x": 1})  # 12-bit range
    expected = ScaleIntensityRangePercentiles(0.5, 99.5, 0.0, 1.0, clip=True)(raw)
    out = ScalePercentiles(0.5, 99.5)(raw)
    assert isinstance(out, MetaTensor) and out.meta["x"] == 1
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-5)
    d = ScalePercentilesd("image")({"image": raw.numpy()})
    np.testing.assert_allclose(d["image"], expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("percentiles", [(0.5, 99.5), (0, 100), (2.5, 97.5), (50,)])
def test_tail_percentiles_are_numpys_to_the_bit(case_pixels, percentiles):
    rng = np.random.default_rng(0)
    arrays = [p.astype(np.float32) / 255 for p in case_pixels.values()]
    arrays += [p.astype(np.uint16) * 16 for p in case_pixels.values()]  # 12-bit, ties
    arrays += [rng.random((1111, 1023)), rng.integers(0, 4096, (3000, 2500), dtype=np.int16)]
    arrays += [np.zeros((512, 512), np.float32), np.arange(7.0)]  # constant; too small
    nan = arrays[0].copy()
    nan[200, 300] = np.nan  # outside the sampled pixels: numpy's NaN all the same
    for arr in [*arrays, nan]:
        expected = np.percentile(arr, percentiles)
        got = tail_percentiles(arr, percentiles)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
