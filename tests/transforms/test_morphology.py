"""Hole filling: the same masks as MONAI's FillHoles, on real and random masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import FillHoles as MonaiFillHoles

from pipeline.transforms import FillHoles, FillHolesd, fill_holes


def _monai(mask: np.ndarray) -> np.ndarray:
    out = MonaiFillHoles(applied_labels=[1])(torch.from_numpy(mask[None].astype(np.float32)))
    return np.asarray(out[0]) > 0


def _holed(lung_mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mask = lung_mask.copy()
    for _ in range(12):  # holes inside, notches at the edge, specks outside
        r, c = rng.integers(0, mask.shape[0] - 12, 2)
        mask[r : r + rng.integers(1, 12), c : c + rng.integers(1, 12)] ^= True
    return mask


def test_same_as_monai_on_real_lungs_with_holes(lung_mask):
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = _holed(lung_mask, rng)
        filled = fill_holes(mask)
        np.testing.assert_array_equal(filled, _monai(mask))
        assert filled.sum() > mask.sum()  # there were holes to fill


@pytest.mark.parametrize("seed", range(6))
def test_same_as_monai_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((40, 33)) < rng.uniform(0.3, 0.7)
    np.testing.assert_array_equal(fill_holes(mask), _monai(mask))


def test_a_diagonal_gap_to_the_border_is_not_a_hole():
    mask = np.ones((5, 5), bool)
    mask[1, 1] = mask[0, 0] = False  # background reaching the corner only diagonally
    mask[3, 3] = False  # enclosed
    filled = fill_holes(mask)
    assert not filled[1, 1] and filled[3, 3]
    np.testing.assert_array_equal(filled, _monai(mask))


def test_the_transforms_keep_type_dtype_and_metadata(lung_mask):
    mask = _holed(lung_mask, np.random.default_rng(1))
    img = MetaTensor(torch.from_numpy(mask[None].astype(np.float32)), meta={"k": 1})
    out = FillHolesd("pred")({"pred": img})["pred"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32 and out.meta["k"] == 1
    np.testing.assert_array_equal(np.asarray(out[0]) > 0, _monai(mask))
    assert FillHoles()(mask[None].astype(np.uint8)).dtype == np.uint8


def test_other_shapes_are_refused_with_the_shape():
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        fill_holes(np.zeros((2, 3, 4)))
