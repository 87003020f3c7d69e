"""Pathology simulation for training: lesions inside the lung field, label untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from pipeline.transforms.pathology import (
    Lesion,
    RandAcquisitiond,
    RandPathologyd,
    add_abdominal_gas,
    add_effusion,
    add_opacity,
    collimate,
    degrade,
    gas_region,
    lung_components,
    lungs_by_side,
    soft_tissue_level,
)
from tests.conftest import load_png


@pytest.fixture(scope="module")
def case(data_dir) -> tuple[np.ndarray, np.ndarray]:
    name = "CHNCXR_0001_0.png"
    image = load_png(data_dir / "images" / name).astype(np.float32) / 255
    lung = load_png(data_dir / "masks" / name) > 127
    return image, lung


def test_a_whole_lung_opacity_brings_the_lung_to_soft_tissue_and_stays_inside(case):
    image, lung = case
    out = add_opacity(image, lung, np.random.default_rng(1), extent=1.0, density=1.0)
    assert (out >= image - 1e-6).all()  # never darkens
    outside = ~ndimage.binary_dilation(lung, iterations=4)
    assert np.abs(out - image)[outside].max() < 0.02  # nothing outside the lung field
    changed = (out - image)[lung]
    assert changed.mean() > 0.1  # visibly opacified
    assert np.median(out[lung]) > 0.8 * soft_tissue_level(image, lung)


def test_an_effusion_fills_a_lung_base_with_a_level_that_rises_laterally(case):
    image, lung = case
    rng = np.random.default_rng(3)
    out = add_effusion(image, lung, rng, height=0.4, density=1.0)
    diff = out - image
    rows = np.nonzero(lung.any(axis=1))[0]
    top, bottom = rows[0], rows[-1]
    lower = diff[(bottom - (bottom - top) // 5) : bottom][
        lung[(bottom - (bottom - top) // 5) : bottom]
    ]
    upper = diff[top : top + (bottom - top) // 5][lung[top : top + (bottom - top) // 5]]
    assert lower.mean() > 0.1 and upper.mean() < 0.01  # basal, not apical


def test_lung_components_are_the_two_lungs(case):
    _, lung = case
    parts = lung_components(lung)
    assert len(parts) == 2 and int(sum(p.sum() for p in parts)) == int(lung.sum())


def test_collimation_bands_stay_outside_the_lung_field(case):
    image, lung = case
    for seed in range(10):
        out = collimate(image, lung, np.random.default_rng(seed))
        assert np.array_equal(out[lung], image[lung])


def test_degradation_keeps_the_value_range(case):
    image, _ = case
    for seed in range(10):
        out = degrade(image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_dictionary_transforms_change_the_image_never_the_label(case):
    image, lung = case
    data = {
        "image": torch.from_numpy(image)[None],
        "label": torch.from_numpy(lung.astype(np.float32))[None],
    }
    lesions = RandPathologyd(keys="image", prob=1.0, opacity_prob=1.0)
    film = RandAcquisitiond(keys="image", prob=1.0, collimation_prob=1.0)
    for seed in range(4):
        lesions.set_random_state(seed)
        film.set_random_state(seed)
        out = film(lesions(data))
        assert torch.equal(out["label"], data["label"])
        assert not torch.equal(out["image"], data["image"])
        assert out["image"].shape == data["image"].shape


def test_every_lesion_kind_is_reachable_from_the_enum(case):
    from pipeline.transforms.pathology import simulate_lesion

    image, lung = case
    for kind in Lesion:
        out = simulate_lesion(image, lung, kind, np.random.default_rng(0))
        assert out.shape == image.shape and not np.array_equal(out, image), kind


def test_gas_lies_under_the_diaphragm_of_the_chosen_lung_and_outside_the_field(case):
    _, lung = case
    right_image_lung = lungs_by_side(lung)[1]
    for seed in range(8):
        region = gas_region(lung, np.random.default_rng(seed), size=1.0, left_prob=1.0)
        assert region.any(), seed
        assert not (region & ndimage.binary_dilation(lung, iterations=2)).any()
        cols = np.nonzero(region.any(axis=0))[0]
        rows = np.nonzero(right_image_lung.any(axis=1))[0]  # under the diaphragm, not the heart
        assert np.nonzero(region.any(axis=1))[0].min() >= rows[-1] - 0.15 * (rows[-1] - rows[0])
        assert cols.min() >= np.nonzero(right_image_lung.any(axis=0))[0].min()
        for c in cols:  # below the lung's lowest pixel in every column it occupies
            assert np.nonzero(region[:, c])[0].min() > np.nonzero(right_image_lung[:, c])[0].max()


def test_gas_only_darkens_towards_the_lung_level_and_leaves_the_lung_alone(case):
    image, lung = case
    out = add_abdominal_gas(image, lung, np.random.default_rng(2), size=1.0, darkness=1.0)
    assert (out <= image + 1e-6).all()
    assert np.array_equal(out[lung], image[lung])
    pocket = (image - out) > 0.05
    assert pocket.sum() > 0.002 * image.size  # a visible pocket, not a speck
    assert np.median(out[pocket]) < 1.2 * np.median(image[lung])
