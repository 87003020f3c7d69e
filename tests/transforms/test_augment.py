"""Augmentation presets: exact warps by hand, masks stay aligned and binary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandFlipd

from pipeline.transforms import letterbox
from pipeline.transforms.augment import RandWarpd, affine_matrix, augmentations, warp, warp_grid


def test_identity_grid_leaves_the_image_alone():
    img = torch.rand(1, 40, 30)
    torch.testing.assert_close(warp(img, warp_grid((40, 30))), img, atol=1e-5, rtol=0)


def test_shift_and_displacement_move_by_whole_pixels():
    img = torch.rand(1, 40, 30)
    shifted = warp(img, warp_grid((40, 30), shift=(2.0, 0.0)), mode="nearest")
    torch.testing.assert_close(shifted[:, :-2], img[:, 2:], atol=1e-6, rtol=0)  # out[y] = in[y + 2]
    assert shifted[:, -2:].abs().sum() == 0  # zeros come in from outside
    field = torch.zeros(2, 3, 3)
    field[1] = -3.0  # a constant elastic field is a shift too: out[:, x] = in[:, x - 3]
    moved = warp(img, warp_grid((40, 30), displacement=field), mode="nearest")
    torch.testing.assert_close(moved[:, :, 3:], img[:, :, :-3], atol=1e-6, rtol=0)


def test_affine_matrix_by_hand():
    m = affine_matrix(90.0, (0.0, 0.0), 2.0)  # quarter turn, content twice as large
    torch.testing.assert_close(m, torch.tensor([[0.0, -0.5], [0.5, 0.0]]), atol=1e-6, rtol=0)
    img = torch.zeros(1, 5, 5)
    img[0, 2, 4] = 1.0  # right of the centre
    out = warp(img, warp_grid((5, 5), affine_matrix(90.0, (0.0, 0.0), 1.0)), mode="nearest")
    # output (x, y) samples input (-(y - 2) + 2, x): output (x=2, y=0) reads input (x=4, y=2)
    assert out[0, 0, 2] == 1.0 and out.sum() == 1.0


def test_warp_moves_image_and_mask_alike():
    t = RandWarpd(["image", "label"], prob=1.0, elastic_prob=1.0, mode=["bilinear", "nearest"])
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
    aug = Compose(augmentations("default"))
    aug.set_random_state(0)
    moved = 0
    for _ in range(10):
        out = aug({"image": boxed.clone(), "label": boxed.clone()})
        assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}
        # the image got brightness and noise, the mask did not; their geometry must agree
        assert _dice((out["image"] > 0.5 * out["image"].max()).float(), out["label"]) > 0.95
        moved += int(not torch.equal(out["label"], boxed))
    assert moved >= 7


def test_warped_and_untouched_samples_collate_into_one_batch():
    from monai.data import MetaTensor, list_data_collate

    t = RandWarpd(["image", "label"], prob=0.5, elastic_prob=0.0, mode=["bilinear", "nearest"])
    t.set_random_state(0)
    samples = []
    for _ in range(8):
        img = MetaTensor(torch.rand(1, 32, 32), meta={"filename_or_obj": "x.png"})
        samples.append(t({"image": img, "label": MetaTensor((img > 0.5).float())}))
    assert all(isinstance(s["image"], MetaTensor) for s in samples)
    batch = list_data_collate(samples)
    assert batch["image"].shape == (8, 1, 32, 32)
    assert list(batch["image"].meta["filename_or_obj"]) == ["x.png"] * 8


def test_horizontal_flip_is_off_unless_asked():
    assert not any(isinstance(t, RandFlipd) for t in augmentations("default"))
    assert any(isinstance(t, RandFlipd) for t in augmentations("default", hflip=True))
    assert augmentations("none") == []
    with pytest.raises(ValueError, match="default, robust, light, none"):
        augmentations("heavy")


def test_anatomical_target_is_warped_with_the_label(lung_mask):
    from pipeline.transforms.augment import training_transforms
    from pipeline.transforms.lung_field import retrocardiac_region

    mask = torch.from_numpy(lung_mask[None].astype(np.float32))
    boxed, _ = letterbox(mask, 256, mode="nearest")
    region = torch.from_numpy(retrocardiac_region(boxed[0].numpy() > 0.5)[None]).float()
    aug = Compose(training_transforms("default", "anatomical", anatomical_cases=["other.png"]))
    aug.set_random_state(0)
    moved = 0
    for _ in range(6):
        out = aug({"image": boxed.clone(), "label": boxed.clone(), "name": "case.png"})
        assert out["label"].shape == (2, 256, 256) and "ignore" not in out
        assert not (out["label"][0] * out["label"][1]).any()  # the map stays outside the lung
        assert out["label"][1].sum() > 0.5 * region.sum()  # moved with the label, not lost
        moved += int(not torch.equal(out["label"][1:], region))
    assert moved >= 3
    plain = Compose(training_transforms("default", "visible"))({"image": boxed, "label": boxed})
    assert plain["label"].shape == (1, 256, 256)


@pytest.mark.parametrize(("fill", "surround"), [("black", 0.0), ("white", 1.0), ("edge", 0.25)])
def test_shrink_into_frame_by_hand(fill, surround):
    from pipeline.transforms.augment import shrink_into_frame

    image = np.full((1, 40, 60), 0.25, dtype=np.float32)
    image[:, 10:30, 20:40] = 0.75
    label = np.zeros((1, 40, 60), dtype=np.float32)
    label[:, 10:30, 20:40] = 1
    framed, (moved,) = shrink_into_frame(image, [label], 0.5, (0.0, 1.0), fill)
    assert framed.shape == image.shape and framed.dtype == image.dtype
    assert np.argwhere(moved[0]).min(0).tolist() == [5, 40]  # top edge, right edge
    assert np.argwhere(moved[0]).max(0).tolist() == [14, 49]
    assert moved.sum() == label.sum() / 4 and set(np.unique(moved)) == {0.0, 1.0}
    assert np.allclose(framed[:, 20:, :], surround) and np.allclose(framed[:, :, :30], surround)
    assert np.allclose(framed[0, 6:14, 41:49], 0.75)  # the image came along, inside its frame
    with pytest.raises(ValueError, match=r"scale 1\.5 must be in \(0, 1\]"):
        shrink_into_frame(image, [label], 1.5, (0.5, 0.5))
    with pytest.raises(ValueError, match="Fill 'grey' is not one of: black, white, edge"):
        shrink_into_frame(image, [label], 0.5, (0.5, 0.5), "grey")


def test_small_field_moves_image_label_and_ignore_map_together(lung_mask):
    from pipeline.transforms.augment import RandSmallFieldd

    mask = torch.from_numpy(lung_mask[None].astype(np.float32))
    image = mask * 0.5 + 0.25
    t = RandSmallFieldd(keys=["image", "label", "ignore"], prob=1.0, scale_range=(0.6, 0.6))
    t.set_random_state(3)
    out = t({"image": image, "label": mask, "ignore": mask.clone()})
    assert isinstance(out["label"], torch.Tensor) and out["label"].shape == mask.shape
    assert torch.equal(out["label"], out["ignore"])
    assert out["label"].sum().item() == pytest.approx(mask.sum().item() * 0.36, rel=0.03)
    lung = out["label"][0] > 0
    assert out["image"][0][lung].median().item() == pytest.approx(0.75)  # edges blend
    untouched = RandSmallFieldd(keys=["image", "label"], prob=0.0)({"image": image, "label": mask})
    assert untouched["image"] is image


def test_only_the_robust_preset_shrinks_lungs_into_a_frame():
    from pipeline.transforms.augment import RandSmallFieldd

    for preset, expected in (("robust", True), ("default", False), ("light", False)):
        kinds = [type(t) for t in augmentations(preset)]
        assert (RandSmallFieldd in kinds) is expected, preset
