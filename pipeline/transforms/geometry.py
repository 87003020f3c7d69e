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


def crop_letterbox(
    img: torch.Tensor | np.ndarray, params: LetterboxParams
) -> torch.Tensor | np.ndarray:
    """The part of a ``(C, *size)`` tensor or array that covers the image (padding cut away).

    A numpy array stays one (a view); a tensor comes back as a plain tensor.
    """
    if tuple(img.shape[-2:]) != params.size:
        raise ValueError(f"expected spatial shape {params.size}, got {tuple(img.shape[-2:])}")
    top, left = params.pad_before
    plain = img if isinstance(img, np.ndarray) else _plain(img)
    return plain[:, top : top + params.resized_shape[0], left : left + params.resized_shape[1]]


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


def nearest_index(low: int, high: int) -> np.ndarray:
    """For each of ``high`` pixel centres spanning a ``low``-pixel grid, the pixel it falls in.

    Nearest-neighbour resampling either way: upsampling labels, or picking an overlay's
    pixels from a finer mask (Pillow's ``NEAREST`` at whole ratios).
    """
    return np.minimum((np.arange(high) * 2 + 1) * low // (2 * high), low - 1)


def _linear_taps(low: int, high: int, start: int, stop: int) -> tuple[np.ndarray, ...]:
    """Bilinear taps (``align_corners=False``, as :func:`resize_to`) of fine pixels start:stop."""
    src = np.maximum((np.arange(start, stop) + 0.5) * (low / high) - 0.5, 0.0)
    first = np.minimum(src.astype(np.intp), low - 1)
    return first, np.minimum(first + 1, low - 1), (src - first).astype(np.float32)


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
    from pipeline.transforms.morphology import dilate_cross, erode_cross, max_square

    fg = labels > 0
    near = dilate_cross(fg)
    code = np.where(fg, labels, max_square(labels, 3)).astype(np.uint8)
    code[~near] = 0
    code[erode_cross(fg)] += 4
    rows, cols = (
        nearest_index(fg.shape[0], int(shape[0])),
        nearest_index(fg.shape[1], int(shape[1])),
    )
    out = np.zeros((int(shape[0]), int(shape[1])), dtype=np.uint8)
    window = _window(near, rows, cols)
    fine_rows, fine_cols = rows[window[0]], cols[window[1]]
    # code: label (1-2) in the low bits, 4 added inside a region; columns spread first, then
    # whole rows copied (a gather of every fine pixel costs ~4 x more at 2048²)
    out[window] = ((code & 3) * (code >> 2)).take(fine_cols, axis=1)[fine_rows]
    tiles = _edge_tiles(code, fine_rows, fine_cols)
    if tiles is not None:  # edge tiles hold 0 so far: set the pixels above the threshold
        ci, cj, tile_rows, tile_cols = tiles
        above = _tile_above(prob.astype(np.float32, copy=False), shape, window, tiles, threshold)
        label = code[ci, cj][:, None, None]
        flat = (tile_rows + window[0].start)[:, :, None] * out.shape[1]
        out.ravel()[flat + (tile_cols + window[1].start)[:, None, :]] = np.where(above, label, 0)
    return out


def _edge_tiles(
    code: np.ndarray, fine_rows: np.ndarray, fine_cols: np.ndarray
) -> tuple[np.ndarray, ...] | None:
    """The coarse pixels within a pixel of an edge (codes 1-2) and their fine tiles.

    Each coarse pixel covers a rectangle of fine ones (``fine_rows``/``fine_cols``, window
    relative, are non-decreasing). Tiles are padded to the largest one by repeating their
    last row or column (writing a pixel twice writes the same value); coarse pixels that
    cover no fine pixel (a coarse grid finer than the output) are left out.

    Returns:
        ``(coarse rows, coarse columns, tile rows (K, H), tile columns (K, W))`` with the
        tiles' window-relative fine rows and columns, or None when there is no edge.
    """
    ci, cj = np.nonzero((code - np.uint8(1)) < 2)
    spans = []
    for fine, n, index in ((fine_rows, code.shape[0], ci), (fine_cols, code.shape[1], cj)):
        coarse = np.arange(n)
        start = np.searchsorted(fine, coarse, "left")[index]
        stop = np.searchsorted(fine, coarse, "right")[index]
        spans.append((start, stop))
    covered = (spans[0][1] > spans[0][0]) & (spans[1][1] > spans[1][0])
    if not covered.any():
        return None
    tiles = []
    for start, stop in spans:
        start, stop = start[covered], stop[covered]
        size = int((stop - start).max())
        tiles.append(np.minimum(start[:, None] + np.arange(size), stop[:, None] - 1))
    return ci[covered], cj[covered], tiles[0], tiles[1]


def _tile_above(
    prob: np.ndarray,
    shape: Sequence[int],
    window: tuple[slice, slice],
    tiles: tuple[np.ndarray, ...],
    t: float,
) -> np.ndarray:
    """``resize_to(prob, shape) > t`` over :func:`_edge_tiles`' tiles, ``(K, H, W)``.

    Separable bilinear in the order a whole-window evaluation takes (columns, then rows),
    so each value is the same float32 number. A fine row of coarse row ``i`` interpolates
    between coarse rows ``i - 1`` and ``i`` or ``i`` and ``i + 1``: the columns are
    interpolated on those three rows of each tile only, then the rows.
    """
    (r0, r1, rw), (c0, c1, cw) = (
        _linear_taps(n, int(m), w.start, w.stop)
        for n, m, w in zip(prob.shape, shape, window, strict=True)
    )
    ci, _, rows, cols = tiles
    near = np.clip(ci[:, None] + np.arange(-1, 2), 0, prob.shape[0] - 1)[:, :, None]
    near = near * prob.shape[1]  # flat offsets of the three rows: take() beats 2D indexing
    flat = prob.ravel()
    left = flat.take(near + c0[cols][:, None, :])
    across = left + (flat.take(near + c1[cols][:, None, :]) - left) * cw[cols][:, None, :]
    across = across.reshape(-1, across.shape[2])
    base = 3 * np.arange(len(ci))[:, None] - ci[:, None] + 1  # row r of tile k: 3k + r - ci + 1
    top, bottom = across[base + r0[rows]], across[base + r1[rows]]  # (K, H, W)
    return top + (bottom - top) * rw[rows][:, :, None] > t


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
        """``(1, h, w)`` labels and probability (cropped) → ``(1, rows, columns)`` uint8.

        Returns a numpy array when ``labels`` is one, else a tensor.
        """
        lab, p = (
            x if isinstance(x, np.ndarray) else np.asarray(_plain(x).cpu()) for x in (labels, prob)
        )
        out = upsample_labels(
            lab[0].astype(np.uint8, copy=False),
            p[0].astype(np.float32, copy=False),
            params.original_shape,
            self.threshold,
        )[None]
        return out if isinstance(labels, np.ndarray) else torch.from_numpy(out)
