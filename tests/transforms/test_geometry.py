"""Letterbox resize and its inverse: hand-computed layout, real-mask round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from pipeline.io import LoadCXRd
from pipeline.transforms import (
    Letterbox,
    Letterboxd,
    LetterboxParams,
    Unletterbox,
    Unletterboxd,
    letterbox,
    letterbox_params,
    unletterbox,
)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_params_by_hand():
    # 300 x 200 into 256: scale 256/300, columns 200 * 0.853 = 170.7 -> 171, pad (256-171)//2
    p = letterbox_params((300, 200), 256)
    assert p == LetterboxParams((300, 200), (256, 171), (0, 42), (256, 256))
    assert letterbox_params((100, 400), (128, 256)).resized_shape == (64, 256)


def test_letterbox_pads_with_zeros_and_keeps_aspect():
    img = torch.ones(1, 300, 200)
    out, _ = letterbox(img, 256)
    assert out.shape == (1, 256, 256)
    assert out[:, :, :42].abs().sum() == 0 and out[:, :, 42 + 171 :].abs().sum() == 0
    assert torch.allclose(out[:, :, 42 : 42 + 171], torch.ones(1, 256, 171))


def test_same_size_is_exact_identity():
    img = torch.rand(1, 256, 256)
    out, p = letterbox(img, 256)
    assert torch.equal(out, img) and torch.equal(unletterbox(out, p), img)


def test_real_mask_round_trip(lung_mask):
    mask = torch.from_numpy(lung_mask[None].astype(np.float32))
    small, p = letterbox(mask, 256, mode="nearest")
    assert set(torch.unique(small).tolist()) == {0.0, 1.0}
    back = unletterbox(small, p, mode="nearest")[0].numpy() > 0.5
    assert back.shape == lung_mask.shape
    assert _dice(back, lung_mask) > 0.98
    prob = unletterbox(letterbox(mask, 256)[0], p)[0].numpy() > 0.5  # area down, bilinear up
    assert _dice(prob, lung_mask) > 0.98


def test_unletterbox_checks_the_shape():
    with pytest.raises(ValueError, match=r"expected spatial shape \(256, 256\)"):
        unletterbox(torch.zeros(1, 128, 128), letterbox_params((300, 200), 256))
    with pytest.raises(ValueError, match="size 0"):
        letterbox_params((300, 200), 0)


def test_transforms_carry_params_in_metadata(tmp_path, data_dir, lung_mask):
    d = LoadCXRd(["image", "label"])(
        {
            "image": data_dir / "images" / "MCUCXR_0104_1.png",
            "label": data_dir / "masks" / "MCUCXR_0104_1.png",
        }
    )
    d = Letterboxd(["image", "label"], 256, mode=["auto", "nearest"])(d)
    assert d["image"].shape == (1, 256, 256)
    assert d["image"].meta["letterbox"]["original_shape"] == [512, 512]
    assert d["image"].meta["filename_or_obj"].endswith("MCUCXR_0104_1.png")
    pred = MetaTensor(d["label"].as_tensor().clone())
    back = Unletterboxd("pred", ref_key="image", mode="nearest")(
        {"image": d["image"], "pred": pred}
    )
    assert back["pred"].shape == (1, 512, 512)
    boxed = Letterbox(128)(MetaTensor(torch.rand(1, 64, 32)))
    assert Unletterbox()(boxed).shape == (1, 64, 32)
    with pytest.raises(ValueError, match="no letterbox parameters"):
        Unletterbox()(torch.zeros(1, 128, 128))
