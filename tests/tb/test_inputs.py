"""The TB classifier's inputs and baseline features on real radiographs and masks."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.inference.lungs import split_lungs
from pipeline.tb.features import _zones, lung_features
from pipeline.tb.inputs import LungCropd, lung_box, lung_crop, mask_features


@pytest.fixture(scope="module")
def case(case_pixels, case_masks):
    name = "CHNCXR_0327_1.png"
    return case_pixels[name].astype(np.float32) / 255, case_masks[name]


def test_lung_box_holds_the_lungs_with_a_margin(case):
    _, mask = case
    top, bottom, left, right = lung_box(mask, margin=0.1)
    rows, cols = np.nonzero(mask)
    assert top < rows.min() and bottom > rows.max() + 1
    assert left < cols.min() and right > cols.max() + 1
    assert lung_box(np.zeros((40, 30), bool)) == (0, 40, 0, 30)


def test_lung_crop_standardises_inside_the_lungs(case):
    image, mask = case
    crop = lung_crop(image, mask, size=128)
    assert crop.shape == (2, 128, 128) and crop.dtype == np.float32
    lungs = crop[1] > 0.5
    assert set(np.unique(crop[1])) == {0.0, 1.0}
    assert 0.3 < lungs.mean() < 0.8  # the crop is mostly lungs
    assert abs(crop[0][lungs].mean()) < 0.1 and 0.8 < crop[0][lungs].std() < 1.2
    assert crop[0].max() <= 4 and crop[0].min() >= -4


def test_lung_crop_ignores_exposure(case):
    image, mask = case
    brighter = np.clip(image * 0.7 + 0.2, 0, 1)  # another exposure, same anatomy
    a, b = lung_crop(image, mask), lung_crop(brighter, mask)
    assert np.abs(a[0] - b[0]).mean() < 0.02


def test_lung_crop_rejects_mismatched_shapes(case):
    image, mask = case
    with pytest.raises(ValueError, match="same 2D shape"):
        lung_crop(image, mask[:-1])


def test_lung_cropd_is_the_array_function(case):
    image, mask = case
    out = LungCropd(("image", "mask"), size=64)({"image": image[None], "mask": mask[None]})
    assert np.array_equal(out["tb_input"].numpy(), lung_crop(image, mask, size=64))
    with pytest.raises(ValueError, match="an image key and a mask key"):
        LungCropd(("image",))


def test_zones_split_each_lung_into_three_thirds(case):
    _, mask = case
    right, _, _ = split_lungs(mask)
    zones = _zones(right)
    assert sum(z.sum() for z in zones.values()) == right.sum()
    rows = {name: np.nonzero(z.any(axis=1))[0] for name, z in zones.items()}
    assert rows["upper"].max() < rows["middle"].min() <= rows["middle"].max() < rows["lower"].min()


def test_features_depend_only_on_the_lungs(case):
    image, mask = case
    right, left, _ = split_lungs(mask)
    features = lung_features(image, right, left)
    assert len(features) == 95 and all(np.isfinite(list(features.values())))
    changed = image.copy()
    changed[~mask] = np.random.default_rng(0).random((~mask).sum())  # noise outside the lungs
    for key, value in lung_features(changed, right, left).items():
        if "lbp" not in key:  # LBP codes of edge pixels see their outside neighbours
            assert value == pytest.approx(features[key], rel=1e-5, abs=1e-6), key


def test_mask_features_of_the_two_lungs(case):
    _, mask = case
    right, left, _ = split_lungs(mask)
    f = mask_features(right, left)
    assert f["right_area_fraction"] + f["left_area_fraction"] == pytest.approx(mask.mean())
    assert f["right_left_ratio"] == pytest.approx(right.sum() / left.sum())


def test_features_are_computed_at_the_training_scale(case):
    from PIL import Image

    from pipeline.tb.features import features_at

    image, mask = case
    right, left, _ = split_lungs(mask)
    assert features_at(image, right, left) == lung_features(image, right, left)  # 512: as is
    big = np.asarray(Image.fromarray(image).resize((1024, 1024), Image.Resampling.BILINEAR))
    big_mask = np.asarray(Image.fromarray(mask).resize((1024, 1024), Image.Resampling.NEAREST))
    big_right, big_left, _ = split_lungs(big_mask)
    reference = lung_features(image, right, left)
    scaled = features_at(big, big_right, big_left)
    unscaled = lung_features(big, big_right, big_left)
    for key in ("right_glcm_contrast", "left_glcm_dissimilarity", "right_lbp_3"):
        assert abs(scaled[key] - reference[key]) < abs(unscaled[key] - reference[key]) / 2, key
