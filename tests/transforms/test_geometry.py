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


def _coarse(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A smooth 'probability' of ``mask`` on a coarser grid (area average, as the network sees)."""
    from pipeline.transforms.geometry import resize_to

    return resize_to(mask.astype(np.float32), shape, "area")


def test_upsampled_labels_have_the_edges_of_the_full_resolution_threshold(lung_mask):
    from pipeline.inference.lungs import split_lungs
    from pipeline.transforms.geometry import resize_to, upsample_labels

    for coarse_shape in ((128, 100), (97, 76)):  # an integer and a non-integer scale
        prob = _coarse(lung_mask, coarse_shape)
        right, left, _ = split_lungs(prob > 0.5)
        labels = right.astype(np.uint8) + 2 * left.astype(np.uint8)
        fine = upsample_labels(labels, prob, lung_mask.shape)
        full = resize_to(prob, lung_mask.shape) > 0.5
        np.testing.assert_array_equal(fine > 0, full)
        f_right, f_left, _ = split_lungs(full)
        np.testing.assert_array_equal(fine == 1, f_right)
        np.testing.assert_array_equal(fine == 2, f_left)


def test_upsampled_labels_keep_what_the_coarse_clean_up_decided(lung_mask):
    from pipeline.transforms.geometry import resize_to, upsample_labels

    prob = _coarse(lung_mask, (128, 100))
    labels = (prob > 0.5).astype(np.uint8)
    prob[5:12, 5:12] = 0.9  # a blob the clean-up removed (not in labels)
    rows, cols = np.nonzero(labels)
    r, c = rows[len(rows) // 2], cols[len(cols) // 2]
    prob[r - 2 : r + 3, c - 2 : c + 3] = 0.1  # a hole the clean-up filled (still in labels)
    fine = upsample_labels(labels, prob, lung_mask.shape)
    assert not fine[20:48, 20:48].any()
    assert fine[4 * r - 8 : 4 * r + 12, 4 * c - 8 : 4 * c + 12].all()
    # elsewhere the outline is the full-resolution threshold's
    full = resize_to(prob, lung_mask.shape) > 0.5
    assert (fine.astype(bool) != full).sum() == (full[20:48, 20:48]).sum() + (
        ~full[4 * r - 8 : 4 * r + 12, 4 * c - 8 : 4 * c + 12]
    ).sum()


def test_letterbox_of_a_reduced_image_maps_back_to_its_full_grid():
    image = MetaTensor(torch.rand(1, 150, 100), meta={"reduced_from": (600, 400)})
    out = Letterbox(64)(image)
    params = LetterboxParams.from_meta(out.meta["letterbox"])
    assert params.original_shape == (600, 400) and params.resized_shape == (64, 43)
    assert tuple(Unletterbox()(out).shape) == (1, 600, 400)


def test_upsampling_no_labels_gives_an_empty_grid():
    from pipeline.transforms.geometry import upsample_labels

    out = upsample_labels(np.zeros((64, 50), np.uint8), np.zeros((64, 50), np.float32), (301, 250))
    assert out.shape == (301, 250) and not out.any()


@pytest.mark.parametrize(
    ("coarse", "fine"), [((16, 12), (64, 48)), ((17, 13), (100, 61)), ((40, 30), (23, 17))]
)
def test_edge_tiles_are_the_fine_pixels_of_coarse_edge_pixels(coarse, fine):
    from pipeline.transforms.geometry import _edge_tiles, nearest_index

    code = np.random.default_rng(3).integers(0, 7, coarse).astype(np.uint8)
    rows, cols = nearest_index(coarse[0], fine[0]), nearest_index(coarse[1], fine[1])
    window_rows, window_cols = rows[5:-3], cols[2:-4]  # a window inside the fine grid
    ci, cj, tile_rows, tile_cols = _edge_tiles(code, window_rows, window_cols)
    r = np.broadcast_to(tile_rows[:, :, None], (len(ci), *tile_rows.shape[1:], tile_cols.shape[1]))
    c = np.broadcast_to(tile_cols[:, None, :], r.shape)
    upsampled = code[np.ix_(window_rows, window_cols)]
    expected = np.nonzero((upsampled == 1) | (upsampled == 2))
    got = set(zip(r.ravel().tolist(), c.ravel().tolist(), strict=True))  # padding repeats
    assert got == set(zip(*(e.tolist() for e in expected), strict=True))
    np.testing.assert_array_equal(
        np.broadcast_to(code[ci, cj][:, None, None], r.shape), upsampled[r, c]
    )


def test_upsampling_onto_a_coarser_grid_thresholds_the_resized_probability():
    """A grid smaller than the labels' (a small image letterboxed up) is handled too."""
    from pipeline.transforms.geometry import resize_to, upsample_labels

    yy, xx = np.mgrid[:96, :80]
    prob = (1 - np.hypot(yy - 48, xx - 40) / 40).clip(0, 1).astype(np.float32)
    labels = (prob > 0.5).astype(np.uint8)
    for shape in ((61, 50), (96, 80), (250, 201)):
        np.testing.assert_array_equal(
            upsample_labels(labels, prob, shape) > 0, resize_to(prob, shape) > 0.5
        )
