"""Losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from monai.losses import GeneralizedDiceLoss

from pipeline.losses import PenaltyComboLoss, PenaltyGeneralizedDiceLoss, build_loss

LOGITS = torch.tensor([[[[3.0, -3.0], [2.0, -1.0]]]])
TARGET = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _gdl_by_hand() -> float:
    # two classes: background (1 - y, 1 - p) and lung (y, p); weights 1 / (sum of truth)^2
    p = [_sig(v) for v in (3.0, -3.0, 2.0, -1.0)]
    y = [1, 0, 1, 1]
    classes = [([1 - t for t in y], [1 - q for q in p]), (y, p)]
    num = den = 0.0
    for truth, pred in classes:
        w = 1 / sum(truth) ** 2
        num += w * sum(t * q for t, q in zip(truth, pred, strict=True))
        den += w * (sum(truth) + sum(pred))
    return 1 - 2 * num / den


def test_gdl_reference_value():
    assert _gdl_by_hand() == pytest.approx(0.30682, abs=1e-4)


def test_k_zero_is_the_generalized_dice_loss():
    loss = PenaltyGeneralizedDiceLoss(k=0)(LOGITS, TARGET)
    assert float(loss) == pytest.approx(_gdl_by_hand(), abs=1e-5)
    probs = torch.sigmoid(LOGITS)
    monai_gdl = GeneralizedDiceLoss()(
        torch.cat([1 - probs, probs], 1), torch.cat([1 - TARGET, TARGET], 1)
    )
    assert float(loss) == pytest.approx(float(monai_gdl), abs=1e-6)


def test_penalty_by_hand():
    gdl = _gdl_by_hand()
    expected = gdl / (1 + 2.5 * (1 - gdl))  # 0.30682 / 2.73295 = 0.11227
    assert float(PenaltyGeneralizedDiceLoss(k=2.5)(LOGITS, TARGET)) == pytest.approx(
        expected, abs=1e-5
    )
    assert expected == pytest.approx(0.11227, abs=1e-4)


def test_combo_by_hand():
    bce = sum(-math.log(_sig(v)) for v in (3.0, 3.0, 2.0, -1.0)) / 4  # y=0 at -3: -log(1-sig(-3))
    gdl = _gdl_by_hand()
    expected = 0.5 * bce + 2.0 * gdl / (1 + 1.0 * (1 - gdl))
    loss = PenaltyComboLoss(alpha=0.5, beta=2.0, k=1.0)(LOGITS, TARGET)
    assert float(loss) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    "loss", [PenaltyGeneralizedDiceLoss(), PenaltyComboLoss(), build_loss("dice_ce")]
)
def test_perfect_prediction_is_zero(loss):
    target = (torch.rand(2, 1, 16, 16) > 0.5).float()
    logits = (target * 2 - 1) * 40
    assert float(loss(logits, target)) == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("target_value", [0.0, 1.0])
@pytest.mark.parametrize("name", ["pgdl", "pcl", "dice_ce"])
def test_gradients_are_finite_even_for_uniform_targets(name, target_value):
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    loss = build_loss(name)(logits, torch.full((2, 1, 8, 8), target_value))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_bad_parameters():
    with pytest.raises(ValueError, match="k -1"):
        PenaltyGeneralizedDiceLoss(k=-1)
    with pytest.raises(ValueError, match="dice_ce, pgdl, pcl"):
        build_loss("focal")


def test_ignore_dice_ce_without_ignore_map_is_monai_dice_ce():
    from monai.losses import DiceCELoss

    from pipeline.losses import IgnoreDiceCELoss

    logits = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    target = (torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    ours = IgnoreDiceCELoss()(logits, target)
    assert float(ours) == pytest.approx(float(DiceCELoss(sigmoid=True)(logits, target)), abs=1e-6)
    empty = torch.cat([target, torch.zeros_like(target)], dim=1)
    assert float(IgnoreDiceCELoss()(logits, empty)) == pytest.approx(float(ours), abs=1e-6)


def test_ignored_pixels_neither_count_nor_get_gradients():
    from pipeline.losses import IgnoreDiceCELoss

    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 1, 12, 12, generator=gen, requires_grad=True)
    label = (torch.rand(2, 1, 12, 12, generator=gen) > 0.5).float()
    ignore = torch.zeros_like(label)
    ignore[:, :, 4:9, 6:] = 1
    loss = IgnoreDiceCELoss()(logits, torch.cat([label, ignore], dim=1))
    loss.backward()
    assert torch.all(logits.grad[ignore > 0] == 0) and torch.any(logits.grad[ignore == 0] != 0)
    changed = logits.detach().clone()
    changed[ignore > 0] = 50.0  # anything at all where the map says "ignore"
    again = IgnoreDiceCELoss()(changed, torch.cat([label, ignore], dim=1))
    assert float(again) == pytest.approx(float(loss.detach()), abs=1e-6)


def test_training_loss_by_lung_field():
    from pipeline.losses import IgnoreDiceCELoss, training_loss

    assert isinstance(training_loss("pcl", "visible"), PenaltyComboLoss)
    assert isinstance(training_loss("dice_ce", "anatomical"), IgnoreDiceCELoss)
    with pytest.raises(ValueError, match="'pcl' cannot ignore pixels"):
        training_loss("pcl", "anatomical")
    with pytest.raises(ValueError, match="visible, anatomical"):
        training_loss("dice_ce", "whole")
