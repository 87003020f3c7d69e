"""Augmentation presets: exact warps by hand, masks stay aligned and binary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandFlipd

from pipeline.transforms import letterbox
from pipeline.transforms.augment import RandCoarseElasticd, augmentations, coarse_elastic


def test_zero_displacement_is_identity():
    img = torch.rand(1, 40, 30)
    torch.testing.assert_close(coarse_elastic(img, torch.zeros(2, 3, 3)), img, atol=1e-5, rtol=0)


def test_constant_displacement_shifts_by_whole_pixels():
    img = torch.rand(1, 40, 30)
    field = torch.zeros(2, 3, 3)
    field[0] = 2.0  # sample 2 rows further down: out[y] = in[y + 2]
    out = coarse_elastic(img, field, mode="nearest")
    torch.testing.assert_close(out[:, :-2], img[:, 2:], atol=1e-6, rtol=0)
    assert out[:, -2:].abs().sum() == 0  # padded with zeros


def test_elastic_warps_image_and_mask_alike():
    t = RandCoarseElasticd(["image", "label"], prob=1.0, sigma=10, mode=["bilinear", "nearest"])
    t.set_random_state(3)
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 20:44] = 1
    out = t({"image": mask.clone(), "label": mask.clone()})
    assert not torch.equal(out["label"], mask)  # it moved
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}
    agree = ((out["image"] > 0.5) == (out["label"] > 0.5)).float().mean()
    assert agree > 0.99


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a * b).sum() / (a.sum() + b.sum()))


def test_default_preset_keeps_real_masks_aligned_and_binary(lung_mask):
    mask = torch.from_numpy(lung_mask[None].astype(np.float32))
    boxed, _ = letterbox(mask, 256, mode="nearest")
    aug = Compose(augmentations("default", size=256))
    aug.set_random_state(0)
    moved = 0
    for _ in range(10):
        out = aug({"image": boxed.clone(), "label": boxed.clone()})
        assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}
        # the image got brightness and noise, the mask did not; their geometry must agree
        assert _dice((out["image"] > 0.5 * out["image"].max()).float(), out["label"]) > 0.95
        moved += int(not torch.equal(out["label"], boxed))
    assert moved >= 7


def test_horizontal_flip_is_off_unless_asked():
    assert not any(isinstance(t, RandFlipd) for t in augmentations("default"))
    assert any(isinstance(t, RandFlipd) for t in augmentations("default", hflip=True))
    assert augmentations("none") == []
    with pytest.raises(ValueError, match="default, light, none"):
        augmentations("heavy")
