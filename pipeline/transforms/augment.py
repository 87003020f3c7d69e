"""Training augmentation presets (MONAI dictionary transforms), applied after the letterbox.

The ``default`` preset follows the method: rotation +-10 degrees, width/height shift 5%,
shear 0.05, zoom +-10%, elastic deformation on a coarse 3x3 grid with sigma 10 px (as in the
U-Net paper), brightness x0.8-1.2 and Gaussian noise. Masks follow every geometric
transform with nearest-neighbour interpolation.

Horizontal flips are **off** by default: a flipped chest X-ray shows the heart on the wrong
side and swaps the anatomical right and left lungs, which the right/left split of the
outputs relies on. ``hflip=True`` turns them on for experiments.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from monai.config import KeysCollection
from monai.transforms import (
    MapTransform,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandomizableTransform,
    RandScaleIntensityd,
)
from monai.utils import ensure_tuple_rep


def coarse_elastic(
    img: torch.Tensor, displacement: torch.Tensor, mode: str = "bilinear"
) -> torch.Tensor:
    """Warp ``(C, H, W)`` by a coarse displacement field ``(2, g, g)`` in pixels (rows, cols).

    The field is upsampled bicubically to the image size, as in the U-Net paper.
    """
    _, rows, cols = img.shape
    field = F.interpolate(
        displacement[None].float(), size=(rows, cols), mode="bicubic", align_corners=True
    )[0]
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    grid_y = (ys + field[0]) / max(rows - 1, 1) * 2 - 1
    grid_x = (xs + field[1]) / max(cols - 1, 1) * 2 - 1
    grid = torch.stack([grid_x, grid_y], dim=-1)[None].to(
        img.dtype if img.is_floating_point() else torch.float32
    )
    sample_mode = "nearest" if mode == "nearest" else "bilinear"
    out = F.grid_sample(
        img[None].float(), grid, mode=sample_mode, padding_mode="zeros", align_corners=True
    )
    return out[0].to(img.dtype)


class RandCoarseElasticd(RandomizableTransform, MapTransform):
    """Elastic deformation with Gaussian displacements on a coarse grid (U-Net paper).

    Args:
        keys: keys to warp with the same field.
        prob: probability of warping a sample.
        grid: control points per side (3 in the U-Net paper).
        sigma: standard deviation of the displacements in pixels (10 in the paper).
        mode: interpolation per key (``bilinear`` for images, ``nearest`` for masks).
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.3,
        grid: int = 3,
        sigma: float = 10.0,
        mode: str | Sequence[str] = "bilinear",
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.grid, self.sigma = int(grid), float(sigma)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self._field: torch.Tensor | None = None

    def randomize(self, data: Any = None) -> None:
        """Draw whether to warp and the displacement field."""
        super().randomize(None)
        field = self.R.normal(0.0, self.sigma, size=(2, self.grid, self.grid))
        self._field = torch.from_numpy(field.astype(np.float32))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Warp every key with one field (or pass the sample through)."""
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = coarse_elastic(d[key], self._field, mode)
        return d


def augmentations(
    preset: str = "default",
    keys: Sequence[str] = ("image", "label"),
    image_key: str = "image",
    size: int = 256,
    hflip: bool = False,
) -> list[Any]:
    """The augmentation transforms of a preset.

    Args:
        preset: ``default`` (the method's), ``light`` (affine only, for quick runs) or
            ``none``.
        keys: image and label keys (geometric transforms apply to all of them).
        image_key: the key intensity transforms apply to.
        size: the model input size (shifts are 5% of it).
        hflip: add random horizontal flips (off by default; see the module docstring).
    """
    if preset not in ("default", "light", "none"):
        raise ValueError(f"augmentation preset {preset!r} is not one of: default, light, none")
    if preset == "none":
        return []
    modes = ["bilinear" if k == image_key else "nearest" for k in keys]
    out: list[Any] = [
        RandAffined(
            keys=list(keys),
            prob=0.8,
            rotate_range=math.radians(10),
            shear_range=(0.05, 0.05),
            translate_range=(0.05 * size, 0.05 * size),
            scale_range=(0.1, 0.1),
            mode=modes,
            padding_mode="zeros",
        )
    ]
    if preset == "default":
        out += [
            RandCoarseElasticd(keys=list(keys), prob=0.3, grid=3, sigma=10.0, mode=modes),
            RandScaleIntensityd(keys=image_key, factors=0.2, prob=0.5),
            RandGaussianNoised(keys=image_key, prob=0.2, std=0.02),
        ]
    if hflip:
        out.append(RandFlipd(keys=list(keys), prob=0.5, spatial_axis=1))
    return out
