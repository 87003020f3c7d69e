"""Resize to the model's input keeping the aspect ratio (letterbox), and the exact inverse.

``letterbox`` scales an image so its longer side fits ``size`` and pads the shorter side
symmetrically with zeros; ``unletterbox`` crops the padding away and resizes back to the
original grid, so a prediction made at 256x256 lands on the input's own pixels. The
parameters travel in the image's MetaTensor metadata under ``"letterbox"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (the usual PyTorch alias)
from monai.data import MetaTensor
from monai.transforms import Transform

from pipeline.enums import StrEnum

META_KEY = "letterbox"


class Interpolation(StrEnum):
    """Resampling for :func:`letterbox` and :func:`unletterbox`.

    ``auto`` is area averaging when shrinking (anti-aliased) and bilinear when enlarging;
    ``nearest`` is for label masks.
    """

    AUTO = "auto"
    AREA = "area"
    BILINEAR = "bilinear"
    NEAREST = "nearest"


@dataclass(frozen=True)
class LetterboxParams:
    """Where the resized image sits inside the padded canvas."""

    original_shape: tuple[int, int]
    resized_shape: tuple[int, int]
    pad_before: tuple[int, int]
    size: tuple[int, int]

    def to_meta(self) -> dict[str, list[int]]:
        """As plain lists, which collate into batches."""
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> LetterboxParams:
        """Rebuild from :meth:`to_meta` output (also a collated single item)."""
        return cls(
            **{k: tuple(int(x) for x in torch.as_tensor(v).flatten()) for k, v in meta.items()}
        )


def _plain(img: Any) -> torch.Tensor:
    """A plain tensor (MetaTensor arithmetic would drag metadata through every op)."""
    return img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    pair = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"size {size!r} must be one or two positive integers")
    return pair  # type: ignore[return-value]


def letterbox_params(shape: Sequence[int], size: int | Sequence[int]) -> LetterboxParams:
    """Compute the letterbox of an image of ``shape`` (rows, columns) into ``size``."""
    rows, cols = int(shape[0]), int(shape[1])
    if rows < 1 or cols < 1:
        raise ValueError(f"cannot letterbox an image of shape {tuple(shape)}")
    target = _pair(size)
    scale = min(target[0] / rows, target[1] / cols)
    resized = (max(1, round(rows * scale)), max(1, round(cols * scale)))
    pad = ((target[0] - resized[0]) // 2, (target[1] - resized[1]) // 2)
    return LetterboxParams((rows, cols), resized, pad, target)


def _resize(img: torch.Tensor, shape: tuple[int, int], mode: Interpolation) -> torch.Tensor:
    if tuple(img.shape[-2:]) == shape:
        return img
    if mode is Interpolation.AUTO:
        mode = Interpolation.AREA if shape[0] < img.shape[-2] else Interpolation.BILINEAR
    x = img.float()[None]
    if mode is Interpolation.NEAREST:
        return F.interpolate(x, size=shape, mode="nearest-exact")[0]
    if mode is Interpolation.AREA:
        return F.interpolate(x, size=shape, mode="area")[0]
    return F.interpolate(x, size=shape, mode="bilinear", align_corners=False)[0]


def letterbox(
    img: torch.Tensor, size: int | Sequence[int], mode: Interpolation | str = "auto"
) -> tuple[torch.Tensor, LetterboxParams]:
    """Resize a ``(C, H, W)`` tensor into ``size`` keeping its aspect ratio, zero-padded.

    Returns:
        The ``(C, *size)`` float tensor and the parameters :func:`unletterbox` needs.
    """
    params = letterbox_params(img.shape[-2:], size)
    resized = _resize(_plain(img), params.resized_shape, Interpolation.parse(mode))
    canvas = resized.new_zeros((img.shape[0], *params.size))
    top, left = params.pad_before
    canvas[:, top : top + params.resized_shape[0], left : left + params.resized_shape[1]] = resized
    return canvas, params


def unletterbox(
    img: torch.Tensor, params: LetterboxParams, mode: Interpolation | str = "bilinear"
) -> torch.Tensor:
    """Map a ``(C, *size)`` tensor (probabilities, logits or a mask) back to the original grid."""
    if tuple(img.shape[-2:]) != params.size:
        raise ValueError(f"expected spatial shape {params.size}, got {tuple(img.shape[-2:])}")
    top, left = params.pad_before
    crop = _plain(img)[
        :, top : top + params.resized_shape[0], left : left + params.resized_shape[1]
    ]
    return _resize(crop, params.original_shape, Interpolation.parse(mode))


class Letterbox(Transform):
    """MONAI transform for :func:`letterbox`; records the parameters in the MetaTensor."""

    def __init__(self, size: int | Sequence[int] = 256, mode: str = "auto"):
        self.size, self.mode = _pair(size), Interpolation.parse(mode)

    def __call__(self, img: torch.Tensor) -> MetaTensor:
        """Letterbox ``img``; the parameters go to ``meta["letterbox"]``."""
        out, params = letterbox(img, self.size, self.mode)
        meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
        meta[META_KEY] = params.to_meta()
        meta["spatial_shape"] = list(params.size)
        return MetaTensor(out, meta=meta)


class Unletterbox(Transform):
    """MONAI transform for :func:`unletterbox`; takes the parameters from the metadata."""

    def __init__(self, mode: str = "bilinear"):
        self.mode = Interpolation.parse(mode)

    def __call__(self, img: torch.Tensor, params: LetterboxParams | None = None) -> torch.Tensor:
        """Undo the letterbox with ``params``, else those in ``img.meta``."""
        if params is None:
            meta = getattr(img, "meta", {})
            if META_KEY not in meta:
                raise ValueError(
                    "no letterbox parameters: pass params or a MetaTensor from Letterbox"
                )
            params = LetterboxParams.from_meta(meta[META_KEY])
        out = unletterbox(img, params, self.mode)
        if isinstance(img, MetaTensor):
            meta = {k: v for k, v in img.meta.items() if k != META_KEY}
            meta["spatial_shape"] = list(params.original_shape)
            return MetaTensor(out, meta=meta)
        return out
