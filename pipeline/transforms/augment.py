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
    ConcatItemsd,
    DeleteItemsd,
    MapTransform,
    RandFlipd,
    RandGaussianNoised,
    RandomizableTransform,
    RandScaleIntensityd,
)
from monai.utils import convert_to_dst_type, ensure_tuple_rep

from pipeline.enums import LungField, StrEnum
from pipeline.transforms.lung_field import LungFieldTargetd
from pipeline.transforms.pathology import RandAcquisitiond, RandPathologyd

PRESETS = ("default", "robust", "light", "none")


def _base_grid(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(
        torch.arange(rows, dtype=torch.float32),
        torch.arange(cols, dtype=torch.float32),
        indexing="ij",
    )
    return ys, xs


def warp_grid(
    shape: tuple[int, int],
    matrix: torch.Tensor | None = None,
    shift: tuple[float, float] = (0.0, 0.0),
    displacement: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampling grid for ``F.grid_sample``: output pixel -> input pixel, in one pass.

    Args:
        shape: ``(rows, columns)``.
        matrix: 2x2 linear map about the image centre acting on ``(x, y)`` (rotation, shear,
            zoom); identity when None.
        shift: ``(rows, columns)`` translation in pixels.
        displacement: coarse field ``(2, g, g)`` in pixels (rows, columns), upsampled
            bicubically (the U-Net paper's elastic deformation); none when None.

    Returns:
        ``(1, rows, columns, 2)`` grid normalised to [-1, 1] (``align_corners=True``).
    """
    rows, cols = shape
    ys, xs = _base_grid(rows, cols)
    cy, cx = (rows - 1) / 2, (cols - 1) / 2
    m = torch.eye(2) if matrix is None else matrix.float()
    src_x = m[0, 0] * (xs - cx) + m[0, 1] * (ys - cy) + cx + shift[1]
    src_y = m[1, 0] * (xs - cx) + m[1, 1] * (ys - cy) + cy + shift[0]
    if displacement is not None:
        field = F.interpolate(
            displacement[None].float(), size=shape, mode="bicubic", align_corners=True
        )[0]
        src_y, src_x = src_y + field[0], src_x + field[1]
    grid = torch.stack([src_x / max(cols - 1, 1), src_y / max(rows - 1, 1)], dim=-1) * 2 - 1
    return grid[None]


def warp(img: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Resample a ``(C, H, W)`` tensor on ``grid`` (zeros outside); ``nearest`` for masks.

    The result has the input's type (a MetaTensor keeps its metadata), so warped and
    unwarped samples collate into one batch.
    """
    plain = img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(img)
    out = F.grid_sample(
        plain[None].float(),
        grid,
        mode="nearest" if mode == "nearest" else "bilinear",
        padding_mode="zeros",
        align_corners=True,
    )[0]
    return convert_to_dst_type(out, dst=img)[0]


def affine_matrix(rotate_deg: float, shear: tuple[float, float], zoom: float) -> torch.Tensor:
    """2x2 map on ``(x, y)``: rotation, then shear, then zoom (> 1 enlarges the content)."""
    a = math.radians(rotate_deg)
    rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    sh = torch.tensor([[1.0, shear[0]], [shear[1], 1.0]])
    return rot @ sh / zoom


class RandWarpd(RandomizableTransform, MapTransform):
    """Random affine (rotation, shift, shear, zoom) and coarse elastic warp in one resampling.

    Image and mask share one sampling grid, computed once per sample, so they stay aligned
    and each is interpolated only once (cheaper and sharper than chaining MONAI's
    ``RandAffined`` and an elastic transform).

    Args:
        keys: keys to warp together.
        prob: probability of the affine part.
        rotate_deg: rotation drawn from +-``rotate_deg`` degrees.
        shift: translation drawn from +-``shift`` x the image size, per axis.
        shear: shear factors drawn from +-``shear``.
        zoom: zoom drawn from 1 +- ``zoom``.
        elastic_prob: probability of adding the elastic field.
        elastic_grid: control points per side (3 in the U-Net paper).
        elastic_sigma: standard deviation of the displacements in pixels (10 in the paper).
        mode: interpolation per key (``bilinear`` for images, ``nearest`` for masks).
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.8,
        rotate_deg: float = 10.0,
        shift: float = 0.05,
        shear: float = 0.05,
        zoom: float = 0.1,
        elastic_prob: float = 0.3,
        elastic_grid: int = 3,
        elastic_sigma: float = 10.0,
        mode: str | Sequence[str] = "bilinear",
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, 1.0)
        self.affine_prob, self.elastic_prob = prob, elastic_prob
        self.rotate_deg, self.shift, self.shear, self.zoom = rotate_deg, shift, shear, zoom
        self.elastic_grid, self.elastic_sigma = int(elastic_grid), float(elastic_sigma)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self._params: dict[str, Any] = {}

    def randomize(self, data: Any = None) -> None:
        """Draw the affine parameters and the elastic field (each may be skipped)."""
        r = self.R
        p: dict[str, Any] = {"matrix": None, "shift": (0.0, 0.0), "displacement": None}
        if r.rand() < self.affine_prob:
            shear = (r.uniform(-self.shear, self.shear), r.uniform(-self.shear, self.shear))
            zoom = r.uniform(1 - self.zoom, 1 + self.zoom)
            p["matrix"] = affine_matrix(r.uniform(-self.rotate_deg, self.rotate_deg), shear, zoom)
            p["shift"] = (r.uniform(-self.shift, self.shift), r.uniform(-self.shift, self.shift))
        if r.rand() < self.elastic_prob:
            field = r.normal(
                0.0, self.elastic_sigma, size=(2, self.elastic_grid, self.elastic_grid)
            )
            p["displacement"] = torch.from_numpy(field.astype(np.float32))
        self._params = p

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Warp every key with one grid (or pass the sample through unchanged)."""
        d = dict(data)
        self.randomize()
        p = self._params
        if p["matrix"] is None and p["displacement"] is None:
            return d
        first = next(iter(self.key_iterator(d)), None)
        if first is None:
            return d
        shape = tuple(d[first].shape[-2:])
        shift = (p["shift"][0] * shape[0], p["shift"][1] * shape[1])
        grid = warp_grid(shape, p["matrix"], shift, p["displacement"])
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = warp(d[key], grid, mode)
        return d


class Fill(StrEnum):
    """What surrounds a radiograph shrunk into its frame (:func:`shrink_into_frame`)."""

    BLACK = "black"  # a black surround or padding
    WHITE = "white"  # unexposed, collimated film
    EDGE = "edge"  # the image's own border level: a detector larger than the patient


def shrink_into_frame(
    image: np.ndarray,
    labels: Sequence[np.ndarray],
    scale: float,
    offset: tuple[float, float],
    fill: Fill | str = Fill.BLACK,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Shrink a radiograph and its labels by ``scale`` and place them in a frame of the same size.

    What the lungs look like on a collimated film, a small patient on a large detector or
    an image with wide borders: the same anatomy, smaller in the network's input.

    Args:
        image: ``(C, H, W)`` float image in [0, 1].
        labels: ``(C, H, W)`` label maps (nearest; 0 outside the shrunk image).
        scale: the shrunk image's size over the frame's, in (0, 1].
        offset: where the shrunk image lies in the room left, per axis, in [0, 1].
        fill: the surround's value (:class:`Fill`, or its name).

    Returns:
        The framed image and labels, each of its input's shape and type.

    Raises:
        ValueError: a scale outside (0, 1] or an unknown fill (the allowed values quoted).
    """
    if not 0 < scale <= 1:
        raise ValueError(f"scale {scale!r} must be in (0, 1]")
    fill = Fill.parse(fill)
    rows, cols = image.shape[-2:]
    size = (max(1, round(rows * scale)), max(1, round(cols * scale)))
    top, left = (round((n - m) * f) for n, m, f in zip((rows, cols), size, offset, strict=True))
    edges = np.concatenate(
        [image[..., 0, :], image[..., -1, :], image[..., :, 0], image[..., :, -1]], -1
    )
    value = {Fill.BLACK: 0.0, Fill.WHITE: 1.0, Fill.EDGE: float(np.median(edges))}[fill]

    def framed(arr: np.ndarray, mode: str, surround: float) -> np.ndarray:
        small = F.interpolate(
            torch.as_tensor(arr, dtype=torch.float32)[None],
            size=size,
            mode=mode,
            **({"antialias": True, "align_corners": False} if mode == "bilinear" else {}),
        )[0]
        out = np.full(arr.shape, surround, dtype=np.float32)
        out[..., top : top + size[0], left : left + size[1]] = small.numpy()
        return out.astype(arr.dtype, copy=False)

    return framed(image, "bilinear", value), [framed(lb, "nearest", 0.0) for lb in labels]


class RandSmallFieldd(RandomizableTransform, MapTransform):
    """With probability ``prob``, :func:`shrink_into_frame` the image and its labels.

    The scale is drawn from ``scale_range``, the position uniformly, the surround from
    :class:`Fill` (black, white or the image's border level, equally often).

    Args:
        keys: the image key, then the label keys (moved with it, 0 in the surround).
        prob: probability of shrinking a sample.
        scale_range: smallest and largest scale.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        scale_range: tuple[float, float] = (0.5, 0.9),
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.scale_range = scale_range

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Shrink every key into its frame with one draw (or pass the sample through)."""
        d = dict(data)
        self.randomize(None)
        keys = list(self.key_iterator(d))
        if not self._do_transform or not keys:
            return d
        r = self.R
        scale = r.uniform(*self.scale_range)
        offset = (r.uniform(0, 1), r.uniform(0, 1))
        fill = list(Fill)[r.randint(len(Fill))]
        arrays = [
            np.asarray(d[k].detach().cpu() if isinstance(d[k], torch.Tensor) else d[k])
            for k in keys
        ]
        image, labels = shrink_into_frame(arrays[0], arrays[1:], scale, offset, fill)
        for key, arr in zip(keys, [image, *labels], strict=True):
            d[key] = convert_to_dst_type(torch.from_numpy(arr), dst=d[key])[0]
        return d


def augmentations(
    preset: str = "default",
    keys: Sequence[str] = ("image", "label"),
    image_key: str = "image",
    hflip: bool = False,
) -> list[Any]:
    """The augmentation transforms of a preset.

    Args:
        preset: ``default`` (the method's), ``robust`` (the method's plus simulated
            opacities, effusions, devices, gas under the diaphragm and poor films inside a
            larger rotation/scale range: :mod:`pipeline.transforms.pathology`; and, since
            bundle 0.9.0, half the samples shrunk to 50-90 % into a black, white or
            border-level frame, :class:`RandSmallFieldd`), ``light``
            (affine only, for quick runs) or ``none``.
        keys: image and label keys (geometric transforms apply to all of them).
        image_key: the key intensity transforms apply to.
        hflip: add random horizontal flips (off by default; see the module docstring).
    """
    if preset not in PRESETS:
        raise ValueError(f"augmentation preset {preset!r} is not one of: {', '.join(PRESETS)}")
    if preset == "none":
        return []
    modes = ["bilinear" if k == image_key else "nearest" for k in keys]
    label_key = next((k for k in keys if k != image_key), "label")
    out: list[Any] = []
    if preset == "robust":
        out.append(RandPathologyd(keys=image_key, label_key=label_key))
        warp_kwargs = {"rotate_deg": 15.0, "shift": 0.08, "zoom": 0.15, "elastic_prob": 0.3}
    else:
        warp_kwargs = {"elastic_prob": 0.3 if preset == "default" else 0.0}
    out.append(RandWarpd(keys=list(keys), mode=modes, **warp_kwargs))
    if preset == "robust":  # lungs smaller in the frame: collimation, small patients, borders
        out.append(RandSmallFieldd(keys=[image_key, *(k for k in keys if k != image_key)]))
    if preset in ("default", "robust"):
        out += [
            RandScaleIntensityd(keys=image_key, factors=0.2, prob=0.5),
            RandGaussianNoised(keys=image_key, prob=0.2, std=0.02),
        ]
    if preset == "robust":
        out.append(RandAcquisitiond(keys=image_key, label_key=label_key))
    if hflip:
        out.append(RandFlipd(keys=list(keys), prob=0.5, spatial_axis=1))
    return out


def training_transforms(
    preset: str = "default",
    lung_field: str = "visible",
    anatomical_cases: Sequence[str] = (),
    hflip: bool = False,
) -> list[Any]:
    """What training adds after the preprocessing: augmentation and the lung-field target.

    For the ``anatomical`` lung field the label becomes two channels, the mask and the
    ignore map of :class:`~pipeline.transforms.lung_field.LungFieldTargetd`, warped together
    (the loss is :class:`pipeline.losses.IgnoreDiceCELoss`).

    Args:
        preset: augmentation preset (see :func:`augmentations`).
        lung_field: ``visible`` (the label as drawn) or ``anatomical``.
        anatomical_cases: names of the cases whose masks are drawn to the anatomical
            convention (nothing ignored in them).
        hflip: random horizontal flips.

    Raises:
        ValueError: an unknown preset or lung field.
    """
    if LungField.parse(lung_field) is LungField.VISIBLE:
        return augmentations(preset, hflip=hflip)
    keys = ("image", "label", "ignore")
    return [
        LungFieldTargetd(keys="label", anatomical_cases=anatomical_cases, ignore_key="ignore"),
        *augmentations(preset, keys=keys, hflip=hflip),
        ConcatItemsd(keys=["label", "ignore"], name="label"),
        DeleteItemsd(keys="ignore"),
    ]
