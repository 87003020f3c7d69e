"""The polarity check: a radiograph whose header inverts it is segmented as its negative.

A file that says MONOCHROME2 but stores a negative (or MONOCHROME1 the other way round, a
Presentation LUT Shape or a negative Rescale Slope read differently by the software that
wrote it, a screenshot of an inverted display) reaches the network with the lungs bright.
The network then finds almost no lung (mean Dice 0.07-0.26 on the validation part of the
shared split, clean and under every stress of ``lungseg protocol stress``), and its mean
probability inside what it finds drops: 0.61-0.93 on negatives against 0.92-0.99 on the
same images as read.

The check (:class:`PolarityCheck`, configured in the bundle's ``inference.json``) takes each
image whose confidence (:func:`lung_confidence`) is below ``below`` through the network a
second time as its negative (:func:`negatives`: the letterbox padding stays black) and keeps
the negative where the network is surer of it by more than ``margin``. Images above
``below`` (97-100 % of right images) cost nothing more than the confidence. Measured on the
shared split (README *Polarity*).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from pipeline.enums import Polarity, PolarityMode

#: What the report says of an image segmented as its negative.
INVERTED_NOTE = "the image looked inverted (lungs bright): segmented as its negative"


def lung_confidence(logits: torch.Tensor) -> torch.Tensor:
    """Mean lung probability where it is over 0.5, per image of ``(B, 1, H, W)`` logits.

    Returns:
        ``(B,)`` float32; 0 for an image with no pixel over 0.5.
    """
    prob = torch.sigmoid(logits.float()).flatten(1)
    inside = prob > 0.5
    total = torch.where(inside, prob, torch.zeros_like(prob)).sum(1)
    return total / inside.sum(1).clamp(min=1)


def negatives(images: torch.Tensor, regions: Sequence[tuple[slice, slice]]) -> torch.Tensor:
    """``1 - x`` inside each image's region of its ``(B, C, H, W)`` canvas, 0 outside.

    The preprocessing scales every image to [0, 1] by its own percentiles, which commutes
    with inversion; the letterbox padding around it stays 0, as for any image.
    """
    out = torch.zeros_like(images)
    for i, (rows, cols) in enumerate(regions):
        out[i, :, rows, cols] = 1 - images[i, :, rows, cols]
    return out


class PolarityCheck:
    """Segment an image as its negative where the network is surer of that.

    Args:
        mode: a :class:`PolarityMode` (``as_read``: the check is off).
        below: images whose :func:`lung_confidence` is under this get the second pass.
        margin: the negative is kept only where its confidence exceeds the image's by more
            than this (half the smallest gap between right and wrong polarity seen on the
            validation part: README *Polarity*).

    Raises:
        ValueError: an unknown mode (the allowed ones quoted), or ``below`` or ``margin``
            outside [0, 1].
    """

    def __init__(
        self, mode: str = PolarityMode.AUTO.value, below: float = 0.95, margin: float = 0.01
    ):
        self.mode = PolarityMode.parse(mode)
        for name, value in (("below", below), ("margin", margin)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value!r}")
        self.below, self.margin = float(below), float(margin)

    def __call__(
        self,
        images: torch.Tensor,
        regions: Sequence[tuple[slice, slice]],
        logits: torch.Tensor,
        run: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, list[Polarity]]:
        """The logits to keep and each image's polarity.

        Args:
            images: the network's inputs ``(B, C, H, W)``, as preprocessed.
            regions: each image's rows and columns on its canvas (inside the letterbox).
            logits: the network's logits of ``images``.
            run: the network (logits of a batch).
        """
        kept = [Polarity.AS_READ] * len(images)
        if self.mode is PolarityMode.AS_READ or not len(images):
            return logits, kept
        confidence = lung_confidence(logits)
        unsure = torch.nonzero(confidence < self.below).flatten().tolist()
        if not unsure:
            return logits, kept
        second = run(negatives(images[unsure], [regions[i] for i in unsure])).to(logits)
        better = lung_confidence(second) > confidence[unsure] + self.margin
        logits = logits.clone()
        for j, i in enumerate(unsure):
            if better[j]:
                logits[i], kept[i] = second[j], Polarity.INVERTED
        return logits, kept
