"""The network's output to a mask: sigmoid probability and threshold, as numpy arrays.

The same numbers as MONAI's ``Activations(sigmoid=True)`` (``torch.sigmoid``) and
``AsDiscrete(threshold=t)`` (``>= t``), returned as plain numpy arrays: MONAI's return
MetaTensors, whose metadata handling then costs every later post-processing step more than
its own work on a 256² grid (about 3 ms of the ~6 ms chain per image, measured). The steps
after them (:mod:`pipeline.transforms.morphology`, the letterbox crop, the lung sides and
the upsampling) keep numpy arrays as numpy arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.transforms import Transform


def sigmoid(logits: Any) -> np.ndarray:
    """float32 ``torch.sigmoid`` of a tensor (MetaTensor, CPU or GPU) or array, as numpy."""
    if isinstance(logits, np.ndarray):
        logits = torch.from_numpy(logits)
    plain = logits.as_tensor() if hasattr(logits, "as_tensor") else logits
    return torch.sigmoid(plain.detach().float()).cpu().numpy()


def threshold(prob: Any, value: float = 0.5) -> np.ndarray:
    """uint8 ``prob >= value`` (1 foreground, 0 background)."""
    arr = prob if isinstance(prob, np.ndarray) else np.asarray(torch.as_tensor(prob).cpu())
    return (arr >= value).view(np.uint8)


class Sigmoid(Transform):
    """MONAI transform for :func:`sigmoid` (logits → float32 probability, numpy)."""

    def __call__(self, img: Any) -> np.ndarray:
        """The probability of ``img``'s logits."""
        return sigmoid(img)


class Threshold(Transform):
    """MONAI transform for :func:`threshold` (probability → uint8 0/1 mask, numpy).

    Args:
        value: the foreground threshold (``>=``, as MONAI's ``AsDiscrete``).
    """

    def __init__(self, value: float = 0.5):
        self.value = float(value)

    def __call__(self, img: Any) -> np.ndarray:
        """The mask of ``img``."""
        return threshold(img, self.value)
