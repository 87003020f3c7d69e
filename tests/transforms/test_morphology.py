"""Hole filling: the same masks as MONAI's FillHoles, on real and random masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import FillHoles as MonaiFillHoles
from scipy import ndimage

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


def test_one_step_morphology_is_scipys(case_masks):
    from pipeline.transforms.morphology import dilate_cross, erode_cross, max_square

    rng = np.random.default_rng(0)
    masks = [m[::2, ::2] for m in case_masks.values()]  # real lungs on the network's grid
    masks += [rng.random(shape) < 0.5 for shape in ((1, 1), (1, 6), (5, 1), (2, 2), (37, 100))]
    masks += [np.ones((4, 9), bool), np.zeros((3, 3), bool)]
    for mask in masks:
        labels = (mask * rng.integers(1, 3, mask.shape)).astype(np.uint8)
        np.testing.assert_array_equal(dilate_cross(mask), ndimage.binary_dilation(mask))
        np.testing.assert_array_equal(erode_cross(mask), ndimage.binary_erosion(mask))
        np.testing.assert_array_equal(max_square(labels, 3), ndimage.grey_dilation(labels, size=3))


@pytest.mark.parametrize("connectivity", [1, 2])
def test_keep_largest_components_is_monais(lung_mask, connectivity):
    from monai.transforms import KeepLargestConnectedComponent

    from pipeline.transforms import KeepLargestComponents, KeepLargestComponentsd

    rng = np.random.default_rng(0)
    masks = [_holed(lung_mask, rng) for _ in range(3)]  # real lungs with specks and notches
    masks += [(rng.random((40, 60)) < d).astype(np.float32) * 2 for d in (0.3, 0.6)]
    tied = np.zeros((9, 9), np.float32)
    tied[0, 0] = tied[0, 4] = tied[4, 0] = tied[8, 8] = 1  # four equal components
    masks.append(tied)
    for mask in masks:
        labels = mask.astype(np.float32)
        labels[::7, ::5] = np.where(labels[::7, ::5] > 0, 2, labels[::7, ::5])  # another label
        for count in (1, 2, 3):
            monai = KeepLargestConnectedComponent(
                applied_labels=[1], is_onehot=False, num_components=count, connectivity=connectivity
            )
            ours = KeepLargestComponents(1, count, connectivity)
            tensor = MetaTensor(torch.from_numpy(labels[None].copy()), meta={"k": 1})
            got = ours(tensor)
            assert isinstance(got, MetaTensor) and got.meta["k"] == 1
            np.testing.assert_array_equal(got.numpy(), np.asarray(monai(tensor.clone())))
            np.testing.assert_array_equal(ours(labels[None].copy()), got.numpy())
    d = KeepLargestComponentsd("pred", count=1)({"pred": torch.from_numpy(tied[None])})
    assert int(d["pred"].sum()) == 1
    with pytest.raises(ValueError, match=r"count 0 .* connectivity 3"):
        KeepLargestComponents(1, 0, 3)(tied[None])


@pytest.mark.parametrize("size", [1, 3, 5, 7])
def test_square_maxima_are_scipys_grey_dilation(size):
    from pipeline.transforms.morphology import max_square

    rng = np.random.default_rng(size)
    for shape in ((1, 1), (2, 9), (6, 1), (40, 33)):
        labels = ((rng.random(shape) < 0.1) * rng.integers(1, 3, shape)).astype(np.uint8)
        expected = ndimage.grey_dilation(labels, size=size)
        np.testing.assert_array_equal(max_square(labels, size), expected)
    with pytest.raises(ValueError, match="odd and positive, got 4"):
        max_square(labels, 4)
