"""The retrocardiac region of visible-convention masks and the anatomical training target."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.transforms.lung_field import LungFieldTargetd, retrocardiac_region
from pipeline.transforms.pathology import lungs_by_side
from tests.conftest import load_png

#: a visible-convention mask (the left lung stops at the heart) and an anatomical one
#: (drawn on behind the heart), both listed so in data/splits/montgomery-shenzhen-lung-field.json
VISIBLE, ANATOMICAL = "MCUCXR_0001_0.png", "CHNCXR_0001_0.png"


@pytest.fixture(scope="module")
def masks(data_dir) -> dict[str, np.ndarray]:
    return {n: load_png(data_dir / "masks" / n) > 127 for n in (VISIBLE, ANATOMICAL)}


def test_region_lies_medial_to_the_lower_left_lung(masks):
    mask = masks[VISIBLE]
    region = retrocardiac_region(mask)
    right, left = lungs_by_side(mask)
    rows, cols = np.nonzero(region)
    lung_rows = np.nonzero(left.any(1))[0]
    assert not (region & mask).any()
    assert rows.min() >= lung_rows[0] + 0.3 * (lung_rows[-1] - lung_rows[0])
    assert rows.max() <= lung_rows[-1]
    assert cols.min() > np.nonzero(right.any(0))[0].max()  # beyond the right lung
    for r in np.unique(rows):  # never lateral to the left lung's medial border
        assert cols[rows == r].max() < np.argmax(left[r])
    # the heart's shadow: a sizeable part of the left lung's area, not a sliver nor all of it
    assert 0.15 < region.sum() / left.sum() < 0.8


def test_region_covers_what_an_anatomical_mask_adds(masks):
    # the anatomical reference with its retrocardiac part cut at the heart's border (the
    # left lung's columns beyond its upper-half medial edge) looks like a visible mask
    anatomical = masks[ANATOMICAL]
    _, left = lungs_by_side(anatomical)
    rows = np.nonzero(left.any(1))[0]
    mid = (rows[0] + rows[-1]) // 2
    edge = np.nonzero(left[mid])[0][0] + 10
    visible = anatomical.copy()
    visible[mid:, :edge] &= ~left[mid:, :edge]
    added = anatomical & ~visible
    region = retrocardiac_region(visible)
    assert added.sum() > 1000
    assert (added & region).sum() / added.sum() > 0.7


def test_region_is_empty_unless_two_lungs():
    one = np.zeros((64, 64), bool)
    one[10:50, 5:30] = True
    assert not retrocardiac_region(one).any()
    assert not retrocardiac_region(np.zeros((64, 64), bool)).any()


def test_target_ignores_nothing_in_anatomical_cases(masks):
    t = LungFieldTargetd(keys="label", anatomical_cases=[ANATOMICAL])
    for name, mask in masks.items():
        label = torch.from_numpy(mask[None].astype(np.float32))
        out = t({"label": label, "name": name})
        assert out["ignore"].shape == label.shape and out["ignore"].dtype == label.dtype
        assert torch.equal(out["label"], label)
        expected = np.zeros_like(mask) if name == ANATOMICAL else retrocardiac_region(mask)
        np.testing.assert_array_equal(out["ignore"][0].numpy() > 0, expected)
