"""What the TB classifier sees: the lung region of a radiograph, cropped, with its lung mask.

Array logic first (:func:`lung_crop`, :func:`mask_features`), then the MONAI dictionary
wrapper the TB bundle's preprocessing uses (:class:`LungCropd`).

The crop is the bounding box of both lungs grown by ``margin`` on each side (pleura, apices
and costophrenic angles stay in), resized to ``size`` x ``size``. Channel 0 is the radiograph
standardised by the mean and standard deviation inside the lungs (so exposure and the scanner's
grey levels matter less), clipped to ±4; channel 1 is the lung mask (0/1).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

#: Side of the square crop the classifier sees.
CROP_SIZE = 256
#: Growth of the lungs' bounding box on each side, as a fraction of its size.
MARGIN = 0.08


def lung_box(mask: np.ndarray, margin: float = MARGIN) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the lungs grown by ``margin``; the image if empty."""
    rows, cols = np.nonzero(mask)
    height, width = mask.shape
    if rows.size == 0:
        return 0, height, 0, width
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    dr, dc = round(margin * (bottom - top)), round(margin * (right - left))
    return max(0, top - dr), min(height, bottom + dr), max(0, left - dc), min(width, right + dc)


def _resize(arr: np.ndarray, size: int, mode: str) -> np.ndarray:
    tensor = torch.as_tensor(arr, dtype=torch.float32)[None, None]
    kwargs = {"align_corners": False, "antialias": True} if mode == "bilinear" else {}
    out = torch.nn.functional.interpolate(tensor, (size, size), mode=mode, **kwargs)
    return out[0, 0].numpy()


def lung_crop(
    image: np.ndarray, mask: np.ndarray, size: int = CROP_SIZE, margin: float = MARGIN
) -> np.ndarray:
    """The classifier's input: ``(2, size, size)`` float32, see the module docstring.

    Args:
        image: ``rows x columns`` radiograph (any range, lungs dark).
        mask: binary lung mask on the same grid.
        size: side of the output.
        margin: growth of the lungs' bounding box.

    Raises:
        ValueError: the image and the mask differ in shape.
    """
    if image.shape != mask.shape or image.ndim != 2:
        raise ValueError(f"image {image.shape} and mask {mask.shape} must be the same 2D shape")
    top, bottom, left, right = lung_box(mask, margin)
    crop = np.asarray(image[top:bottom, left:right], dtype=np.float32)
    lungs = np.asarray(mask[top:bottom, left:right], dtype=bool)
    inside = crop[lungs] if lungs.any() else crop.ravel()
    scaled = np.clip((crop - inside.mean()) / max(float(inside.std()), 1e-6), -4, 4)
    out = np.stack([_resize(scaled, size, "bilinear"), _resize(lungs, size, "nearest")])
    return out.astype(np.float32)


def mask_features(right: np.ndarray, left: np.ndarray) -> dict[str, float]:
    """Shape features of the two lungs: area fractions, right/left ratio, heights, widths."""
    total = right.size
    out: dict[str, float] = {}
    for name, lung in (("right", right), ("left", left)):
        rows, cols = np.nonzero(lung)
        out[f"{name}_area_fraction"] = lung.sum() / total
        out[f"{name}_height_fraction"] = (np.ptp(rows) + 1) / lung.shape[0] if rows.size else 0.0
        out[f"{name}_width_fraction"] = (np.ptp(cols) + 1) / lung.shape[1] if cols.size else 0.0
    left_area = out["left_area_fraction"]
    out["right_left_ratio"] = out["right_area_fraction"] / left_area if left_area else 0.0
    return {k: float(v) for k, v in out.items()}


class LungCropd(MapTransform):
    """Dictionary wrapper of :func:`lung_crop`: ``image`` + ``mask`` -> ``output_key``.

    Args:
        keys: the image key and the mask key, in that order (channel-first ``(1, H, W)``).
        output_key: where the ``(2, size, size)`` tensor goes.
        size: side of the crop.
        margin: growth of the lungs' bounding box.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "mask"),
        output_key: str = "tb_input",
        size: int = CROP_SIZE,
        margin: float = MARGIN,
    ):
        super().__init__(keys)
        if len(self.keys) != 2:
            raise ValueError(f"LungCropd needs an image key and a mask key, got {self.keys}")
        self.output_key, self.size, self.margin = output_key, size, margin

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Add the crop under ``output_key``."""
        d = dict(data)
        image, mask = (
            np.asarray(d[k])[0] if np.ndim(d[k]) == 3 else np.asarray(d[k]) for k in self.keys
        )
        d[self.output_key] = torch.from_numpy(lung_crop(image, mask > 0.5, self.size, self.margin))
        return d
