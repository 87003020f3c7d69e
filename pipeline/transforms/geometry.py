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

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the usual PyTorch alias)
from monai.data import MetaTensor
from monai.transforms import Transform

from pipeline.enums import StrEnum

META_KEY = "letterbox"
#: Metadata key of the full grid of an image decoded at a reduced resolution (the reader's).
REDUCED_KEY = "reduced_from"


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
    img: torch.Tensor,
    size: int | Sequence[int],
    mode: Interpolation | str = "auto",
    grid_shape: Sequence[int] | None = None,
) -> tuple[torch.Tensor, LetterboxParams]:
    """Resize a ``(C, H, W)`` tensor into ``size`` keeping its aspect ratio, zero-padded.

    Args:
        img: the image.
        size: the canvas.
        mode: interpolation.
        grid_shape: the pixel grid ``img`` was decoded from at a reduced resolution (the
            reader's ``reduced_from``): the parameters then map back onto that grid.

    Returns:
        The ``(C, *size)`` float tensor and the parameters :func:`unletterbox` needs.
    """
    params = letterbox_params(img.shape[-2:] if grid_shape is None else grid_shape, size)
    resized = _resize(_plain(img), params.resized_shape, Interpolation.parse(mode))
    canvas = resized.new_zeros((img.shape[0], *params.size))
    top, left = params.pad_before
    canvas[:, top : top + params.resized_shape[0], left : left + params.resized_shape[1]] = resized
    return canvas, params


def crop_letterbox(img: torch.Tensor, params: LetterboxParams) -> torch.Tensor:
    """The part of a ``(C, *size)`` tensor that covers the image (padding cut away)."""
    if tuple(img.shape[-2:]) != params.size:
        raise ValueError(f"expected spatial shape {params.size}, got {tuple(img.shape[-2:])}")
    top, left = params.pad_before
    return _plain(img)[
        :, top : top + params.resized_shape[0], left : left + params.resized_shape[1]
    ]


def unletterbox(
    img: torch.Tensor, params: LetterboxParams, mode: Interpolation | str = "bilinear"
) -> torch.Tensor:
    """Map a ``(C, *size)`` tensor (probabilities, logits or a mask) back to the original grid."""
    return _resize(crop_letterbox(img, params), params.original_shape, Interpolation.parse(mode))


def resize_to(img: torch.Tensor | np.ndarray, shape: Sequence[int], mode: str = "bilinear") -> Any:
    """Resize a ``(C, H, W)`` tensor or a ``rows x columns`` array to ``shape``.

    The cropped letterbox (:func:`crop_letterbox`) of a probability map, resized to the
    original grid bilinearly, is exactly what :func:`unletterbox` gives.
    """
    shape = (int(shape[0]), int(shape[1]))
    if isinstance(img, np.ndarray):
        out = _resize(torch.from_numpy(np.ascontiguousarray(img))[None], shape, Interpolation(mode))
        return out[0].numpy()
    return _resize(_plain(img), shape, Interpolation.parse(mode))


def _nearest_index(low: int, high: int) -> np.ndarray:
    """For each of ``high`` pixel centres, the ``low``-grid pixel it falls in."""
    return np.minimum((np.arange(high) * 2 + 1) * low // (2 * high), low - 1)


def _linear_taps(low: int, high: int, start: int, stop: int) -> tuple[np.ndarray, ...]:
    """Bilinear taps (``align_corners=False``, as :func:`resize_to`) of fine pixels start:stop."""
    src = np.maximum((np.arange(start, stop) + 0.5) * (low / high) - 0.5, 0.0)
    first = np.minimum(src.astype(np.intp), low - 1)
    return first, np.minimum(first + 1, low - 1), (src - first).astype(np.float32)


def _above_at(
    prob: np.ndarray, shape: Sequence[int], window: tuple[slice, slice], points: tuple, t: float
) -> np.ndarray:
    """``resize_to(prob, shape) > t`` at ``points`` (row, column arrays inside ``window``).

    Separable bilinear in the order a whole-window evaluation would take (columns, then
    rows), so each value is the same float32 number.
    """
    (r0, r1, rw), (c0, c1, cw) = (
        _linear_taps(n, int(m), w.start, w.stop)
        for n, m, w in zip(prob.shape, shape, window, strict=True)
    )
    rows, cols = points
    top_left, bottom_left = prob[r0[rows], c0[cols]], prob[r1[rows], c0[cols]]
    top = top_left + (prob[r0[rows], c1[cols]] - top_left) * cw[cols]
    bottom = bottom_left + (prob[r1[rows], c1[cols]] - bottom_left) * cw[cols]
    return top + (bottom - top) * rw[rows] > t


def _window(near: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[slice, slice]:
    """The fine-grid rows and columns whose coarse pixels include any of ``near``."""
    out = []
    for axis, index in ((1, rows), (0, cols)):
        hit = np.flatnonzero(near.any(axis=axis))
        if not hit.size:
            return slice(0, 0), slice(0, 0)
        out.append(slice(*np.searchsorted(index, [hit[0], hit[-1] + 1])))
    return out[0], out[1]


def upsample_labels(
    labels: np.ndarray, prob: np.ndarray, shape: Sequence[int], threshold: float = 0.5
) -> np.ndarray:
    """Labels cleaned on a coarse grid, brought to ``shape`` with edges from the probability.

    Components, holes and sides are decided on the coarse grid, where they are cheap; only
    the final labels are upsampled, once. Inside each labelled region (more than one coarse
    pixel from its edge) the label is copied; within one coarse pixel of an edge a fine
    pixel is labelled when the bilinearly upsampled probability exceeds ``threshold``, so
    the outline is the one thresholding the full-resolution probability gives. Regions the
    coarse clean-up removed stay removed; holes it filled stay filled.

    Args:
        labels: ``h x w`` integer labels 0-2 (0 background), aligned with ``prob``.
        prob: ``h x w`` float probability of the foreground.
        shape: the fine grid (rows, columns).
        threshold: the foreground threshold.

    Returns:
        ``rows x columns`` uint8 labels.
    """
    from pipeline.transforms.morphology import dilate_cross, erode_cross, max_3x3

    fg = labels > 0
    near = dilate_cross(fg)
    code = np.where(fg, labels, max_3x3(labels)).astype(np.uint8)
    code[~near] = 0
    code[erode_cross(fg)] += 4
    rows, cols = (
        _nearest_index(fg.shape[0], int(shape[0])),
        _nearest_index(fg.shape[1], int(shape[1])),
    )
    out = np.zeros((int(shape[0]), int(shape[1])), dtype=np.uint8)
    window = _window(near, rows, cols)
    fine_rows, fine_cols = rows[window[0]], cols[window[1]]
    # code: label (1-2) in the low bits, 4 added inside a region
    inside = np.take(np.take((code & 3) * (code >> 2), fine_rows, axis=0), fine_cols, axis=1)
    edge, value = _edge_points(code, fine_rows, fine_cols)
    keep = _above_at(prob.astype(np.float32, copy=False), shape, window, edge, threshold)
    inside[edge[0][keep], edge[1][keep]] = value[keep]
    out[window] = inside
    return out


def _edge_points(
    code: np.ndarray, fine_rows: np.ndarray, fine_cols: np.ndarray
) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Fine pixels (window-relative rows, columns) whose coarse pixel has code 1 or 2, and it.

    Found on the coarse grid and expanded block by block (each coarse pixel covers a
    rectangle of fine ones: ``fine_rows``/``fine_cols`` are non-decreasing), instead of
    searching every fine pixel of the window.
    """
    ci, cj = np.nonzero((code - np.uint8(1)) < 2)  # codes 1 and 2: within a pixel of an edge
    bounds = [
        (np.searchsorted(f, np.arange(n), "left"), np.searchsorted(f, np.arange(n), "right"))
        for f, n in ((fine_rows, code.shape[0]), (fine_cols, code.shape[1]))
    ]
    r0, c0 = bounds[0][0][ci], bounds[1][0][cj]
    height, width = bounds[0][1][ci] - r0, bounds[1][1][cj] - c0
    counts = height * width
    owner = np.repeat(np.arange(len(ci)), counts)
    offset = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    rows = r0[owner] + offset // width[owner]
    cols = c0[owner] + offset % width[owner]
    return (rows, cols), code[ci, cj][owner]


class Letterbox(Transform):
    """MONAI transform for :func:`letterbox`; records the parameters in the MetaTensor."""

    def __init__(self, size: int | Sequence[int] = 256, mode: str = "auto"):
        self.size, self.mode = _pair(size), Interpolation.parse(mode)

    def __call__(self, img: torch.Tensor) -> MetaTensor:
        """Letterbox ``img``; the parameters go to ``meta["letterbox"]``.

        An image decoded at a reduced resolution (``meta["reduced_from"]``) is letterboxed
        as if it had its full grid, so predictions map back onto the file's own pixels.
        """
        meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
        out, params = letterbox(img, self.size, self.mode, meta.get(REDUCED_KEY))
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


def _params_of(img: torch.Tensor, params: LetterboxParams | None) -> LetterboxParams:
    if params is not None:
        return params
    meta = getattr(img, "meta", {})
    if META_KEY not in meta:
        raise ValueError("no letterbox parameters: pass params or a MetaTensor from Letterbox")
    return LetterboxParams.from_meta(meta[META_KEY])


class CropLetterbox(Transform):
    """MONAI transform for :func:`crop_letterbox`: the image's part of the canvas, unresized."""

    def __call__(self, img: torch.Tensor, params: LetterboxParams | None = None) -> torch.Tensor:
        """Cut the padding of ``img`` away (parameters: ``params``, else ``img.meta``)."""
        return crop_letterbox(img, _params_of(img, params))


class UnletterboxLabels(Transform):
    """MONAI transform for :func:`upsample_labels`: cropped-letterbox labels → original grid.

    Args:
        threshold: the foreground threshold of the probability.
    """

    def __init__(self, threshold: float = 0.5):
        self.threshold = float(threshold)

    def __call__(
        self, labels: torch.Tensor, prob: torch.Tensor, params: LetterboxParams
    ) -> torch.Tensor:
        """``(1, h, w)`` labels and probability (cropped) → ``(1, rows, columns)`` uint8."""
        lab = np.asarray(_plain(labels)[0].cpu(), dtype=np.uint8)
        p = np.asarray(_plain(prob)[0].cpu(), dtype=np.float32)
        out = upsample_labels(lab, p, params.original_shape, self.threshold)
        return torch.from_numpy(out)[None]
