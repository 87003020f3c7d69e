"""Binary morphology of predicted masks: hole filling, one-pixel dilation and erosion.

Today: :func:`fill_holes` (the array logic) and :class:`FillHoles` (its MONAI transform),
the same result as MONAI's ``FillHoles`` on one foreground label at about a fifth of the
time: a hole is a background component (8-connected, as MONAI's default full
connectivity) that does not touch the image border, found with one labelling pass instead
of scipy's iterated dilation from the border. :func:`keep_largest_components` and
:class:`KeepLargestComponents` keep a mask's largest components, MONAI's
``KeepLargestConnectedComponent`` on one label (the same pixels, ties included) at about a
quarter of its time. :func:`dilate_cross`, :func:`erode_cross` and
:func:`max_square` are scipy's ``binary_dilation``, ``binary_erosion`` (one step) and
``grey_dilation`` (an odd square) with their default borders, as shifted numpy slices (a
256² mask: ~0.05 ms each against scipy's 0.3-0.6 ms).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import Transform
from monai.utils import convert_to_dst_type, convert_to_numpy
from scipy import ndimage

_FULL_2D = np.ones((3, 3), dtype=bool)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` (2-D, boolean-like) with every enclosed background region set.

    Raises:
        ValueError: ``mask`` is not 2-D (its shape quoted).
    """
    fg = np.asarray(mask) > 0
    if fg.ndim != 2:
        raise ValueError(f"fill_holes takes a rows x columns mask, not shape {fg.shape}")
    background, count = ndimage.label(~fg, structure=_FULL_2D)
    if count == 0:
        return fg
    border = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    open_to_border = np.zeros(count + 1, dtype=bool)
    open_to_border[border] = True
    return fg | ~open_to_border[background]


#: scipy structuring elements of 2-D connectivity 1 (4 neighbours) and 2 (8 neighbours).
_CONNECTIVITY = {1: ndimage.generate_binary_structure(2, 1), 2: _FULL_2D}


def keep_largest_components(mask: np.ndarray, count: int, connectivity: int = 1) -> np.ndarray:
    """The ``count`` largest connected components of a 2-D mask (boolean).

    Components are numbered in raster order and ranked by size as MONAI's
    ``get_largest_connected_component_mask`` ranks them, so equal sizes break the same way.

    Args:
        mask: 2-D, boolean-like.
        count: components to keep (>= 1).
        connectivity: 1 (4 neighbours) or 2 (8 neighbours).

    Raises:
        ValueError: ``mask`` is not 2-D, or ``count`` or ``connectivity`` is out of range.
    """
    fg = np.asarray(mask) > 0
    if fg.ndim != 2:
        raise ValueError(f"keep_largest_components takes a 2-D mask, not shape {fg.shape}")
    if connectivity not in _CONNECTIVITY or int(count) < 1:
        raise ValueError(
            f"count {count!r} must be >= 1 and connectivity {connectivity!r} one of (1, 2)"
        )
    labels, found = ndimage.label(fg, structure=_CONNECTIVITY[connectivity])
    if found <= count:
        return fg
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = np.zeros(sizes.size, dtype=bool)
    keep[np.argsort(sizes)[::-1][: int(count)]] = True
    return keep[labels]


class KeepLargestComponents(Transform):
    """MONAI transform for :func:`keep_largest_components` of one label of a ``(1, H, W)`` image.

    Pixels of ``label`` outside the kept components become 0; other values stay (type and
    dtype kept). Replaces MONAI's ``KeepLargestConnectedComponent(applied_labels=[label],
    is_onehot=False)`` with the same output.
    """

    def __init__(self, label: int = 1, count: int = 1, connectivity: int = 1):
        self.label, self.count, self.connectivity = label, int(count), int(connectivity)

    def __call__(self, img: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Remove the smaller components of channel 0's ``label``."""
        arr = convert_to_numpy(img)
        fg = arr[0] == self.label
        dropped = fg & ~keep_largest_components(fg, self.count, self.connectivity)
        if not dropped.any():
            return img
        out = arr.copy()
        out[0][dropped] = 0
        return convert_to_dst_type(out, dst=img)[0]


def dilate_cross(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_dilation(mask)``: each pixel or one of its 4 neighbours set."""
    fg = np.asarray(mask, dtype=bool)
    out = fg.copy()
    out[1:] |= fg[:-1]
    out[:-1] |= fg[1:]
    out[:, 1:] |= fg[:, :-1]
    out[:, :-1] |= fg[:, 1:]
    return out


def erode_cross(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_erosion(mask)``: the pixel and its 4 neighbours set (outside: unset)."""
    fg = np.asarray(mask, dtype=bool)
    out = np.zeros_like(fg)
    inner = fg[1:-1, 1:-1] & fg[:-2, 1:-1] & fg[2:, 1:-1] & fg[1:-1, :-2] & fg[1:-1, 2:]
    out[1:-1, 1:-1] = inner
    return out


def max_square(image: np.ndarray, size: int) -> np.ndarray:
    """``ndimage.grey_dilation(image, size=size)`` for an odd ``size``, without scipy.

    Each ``size`` x ``size`` window's maximum, as shifted maxima along rows, then columns
    (a tenth to a twentieth of scipy's time on a 1024-pixel overlay). The window is cut at
    the image's edges (scipy's reflection adds no new values).

    Raises:
        ValueError: ``size`` is not an odd positive number.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be odd and positive, got {size}")
    out = np.array(image, copy=True)
    for axis in (0, 1):
        src = out.copy()
        for k in range(1, size // 2 + 1):
            ahead, behind = [slice(None)] * 2, [slice(None)] * 2
            ahead[axis], behind[axis] = slice(k, None), slice(None, -k)
            np.maximum(out[tuple(behind)], src[tuple(ahead)], out=out[tuple(behind)])
            np.maximum(out[tuple(ahead)], src[tuple(behind)], out=out[tuple(ahead)])
    return out


class FillHoles(Transform):
    """MONAI transform for :func:`fill_holes` on a ``(1, H, W)`` 0/1 mask (type and dtype kept)."""

    def __call__(self, img: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Fill the holes of channel 0's foreground (``img`` itself when it has none)."""
        arr = convert_to_numpy(img)
        fg = arr[0] > 0
        holes = fill_holes(fg) & ~fg
        if not holes.any():
            return img
        out = arr.copy()
        out[0][holes] = 1
        return convert_to_dst_type(out, dst=img)[0]
