"""Losses of the method: DiceCE (default), Penalty Generalized Dice (PGDL), Penalty Combo (PCL).

All take single-channel logits ``(B, 1, H, W)`` and a binary target of the same shape.

- ``PGDL = GDL / (1 + k * (1 - GDL))`` on top of MONAI's ``GeneralizedDiceLoss``; the binary
  problem is scored as two classes (background, lung), so the generalised inverse-area
  weighting balances lung against background. ``k = 0`` gives GDL. For a poor prediction
  (GDL near 1) the denominator is near 1 and the loss is unchanged; for a good one (GDL near
  0) it is divided by up to ``1 + k``: hard cases weigh more than easy ones.
- ``PCL = alpha * BCE + beta * PGDL``.
- :class:`IgnoreDiceCELoss`: DiceCE where the target's second channel marks pixels that count
  for nothing (the retrocardiac region of a visible-convention mask when training towards the
  anatomical lung field: :mod:`pipeline.transforms.lung_field`).
"""

from __future__ import annotations

from typing import Any

import torch
from monai.losses import DiceCELoss, GeneralizedDiceLoss
from torch import nn


def _two_class(probs: torch.Tensor) -> torch.Tensor:
    return torch.cat([1 - probs, probs], dim=1)


class PenaltyGeneralizedDiceLoss(nn.Module):
    """``GDL / (1 + k (1 - GDL))`` for single-channel logits.

    Args:
        k: penalty coefficient (>= 0); 0 reduces to the Generalized Dice Loss.
        sigmoid: apply a sigmoid to the input (False when it is already a probability).
        kwargs: passed to MONAI's ``GeneralizedDiceLoss`` (``smooth_nr``, ``batch``...).
    """

    def __init__(self, k: float = 2.5, sigmoid: bool = True, **kwargs: Any):
        super().__init__()
        if k < 0:
            raise ValueError(f"penalty k {k!r} must be >= 0")
        self.k, self.sigmoid = float(k), sigmoid
        self.gdl = GeneralizedDiceLoss(include_background=True, **kwargs)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of logits (or probabilities) ``input`` against a binary ``target``."""
        probs = torch.sigmoid(input) if self.sigmoid else input
        gdl = self.gdl(_two_class(probs), _two_class(target.float()))
        return gdl / (1 + self.k * (1 - gdl))


class PenaltyComboLoss(nn.Module):
    """``alpha * BCE + beta * PGDL`` for single-channel logits.

    Args:
        alpha: weight of the binary cross-entropy (on logits).
        beta: weight of the PGDL.
        k: PGDL penalty coefficient.
        kwargs: passed to :class:`PenaltyGeneralizedDiceLoss`.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, k: float = 2.5, **kwargs: Any):
        super().__init__()
        self.alpha, self.beta = float(alpha), float(beta)
        self.bce = nn.BCEWithLogitsLoss()
        self.pgdl = PenaltyGeneralizedDiceLoss(k=k, sigmoid=True, **kwargs)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of logits ``input`` against a binary ``target``."""
        target = target.float()
        return self.alpha * self.bce(input, target) + self.beta * self.pgdl(input, target)


class IgnoreDiceCELoss(nn.Module):
    """Soft Dice + BCE of single-channel logits over the pixels a mask does not ignore.

    The target is ``(B, 2, H, W)``: the binary label, then the ignore map (1: no loss). The
    Dice is per image (MONAI ``DiceCELoss``'s default, ``smooth`` in numerator and
    denominator); the BCE is the mean over the pixels kept. A one-channel target is taken
    with nothing ignored, so validation and plain labels work unchanged.

    Args:
        smooth: Dice smoothing term.
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the BCE term.
    """

    def __init__(self, smooth: float = 1e-5, lambda_dice: float = 1.0, lambda_ce: float = 1.0):
        super().__init__()
        self.smooth, self.lambda_dice, self.lambda_ce = smooth, lambda_dice, lambda_ce

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of logits ``input`` ``(B, 1, H, W)`` against ``target`` (see the class doc)."""
        label = target[:, :1].float()
        keep = 1 - target[:, 1:2].float() if target.shape[1] > 1 else torch.ones_like(label)
        probs = torch.sigmoid(input)
        dims = tuple(range(2, input.ndim))
        overlap = (probs * label * keep).sum(dims)
        total = (probs * keep).sum(dims) + (label * keep).sum(dims)
        dice = 1 - (2 * overlap + self.smooth) / (total + self.smooth)
        bce = nn.functional.binary_cross_entropy_with_logits(input, label, reduction="none")
        ce = (bce * keep).sum() / keep.sum().clamp_min(1)
        return self.lambda_dice * dice.mean() + self.lambda_ce * ce


LOSSES = {
    "dice_ce": lambda **kw: DiceCELoss(**{"sigmoid": True, **kw}),
    "pgdl": PenaltyGeneralizedDiceLoss,
    "pcl": PenaltyComboLoss,
    "ignore_dice_ce": IgnoreDiceCELoss,
}


def training_loss(name: str = "dice_ce", lung_field: str = "visible", **kwargs: Any) -> nn.Module:
    """The training loss: :func:`build_loss`, or with ignored pixels for the anatomical field.

    Raises:
        ValueError: an unknown lung field, or a loss other than DiceCE for the anatomical one.
    """
    from pipeline.enums import LungField

    if LungField.parse(lung_field) is LungField.VISIBLE:
        return build_loss(name, **kwargs)
    if name not in ("dice_ce", "ignore_dice_ce"):
        raise ValueError(
            f"lung_field 'anatomical' trains with loss 'dice_ce' (ignoring the retrocardiac "
            f"region of visible-convention masks); loss {name!r} cannot ignore pixels"
        )
    return IgnoreDiceCELoss(**kwargs)


def build_loss(name: str = "dice_ce", **kwargs: Any) -> nn.Module:
    """Build a loss by name (``dice_ce``, ``pgdl``, ``pcl``, ``ignore_dice_ce``)."""
    if name not in LOSSES:
        raise ValueError(f"loss {name!r} is not one of: {', '.join(LOSSES)}")
    return LOSSES[name](**kwargs)
