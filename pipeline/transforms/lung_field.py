"""Training targets for the anatomical lung field from masks drawn to either convention.

Most Montgomery/Shenzhen reference masks outline the *visible* lung: the left lung stops at
the heart's border. About one in twelve (50 of the 600) are drawn to the *anatomical*
convention: the left lower lobe behind the heart is included, down to the diaphragm. A
visible-convention mask says nothing about the retrocardiac lung, so for training towards
the anatomical field its pixels there are neither lung nor background: they are *ignored*.

:func:`retrocardiac_region` gives that region from a visible-convention mask:
below the upper ``top_fraction`` of the left lung (the image-right component: training images
are displayed in the usual PA way), between the lung's medial border and a line that runs from
the medial border at the top of the region to just beside the midline between the lungs
(``midline_gap`` of the width) at ``slope`` x the way down, then on along the midline to the
lung's lowest row. On the shared data the region holds a median 70 % of what the anatomical
masks add to the visible ones (measured with ``data/scripts/lung_field_conventions.py``).

:class:`LungFieldTargetd` writes the ignore map next to the label: zeros for a case listed
as anatomical, the region for any other; :class:`pipeline.losses.IgnoreDiceCELoss` takes both
as a two-channel target.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type

from pipeline.transforms.pathology import lungs_by_side

#: Defaults of :func:`retrocardiac_region` (chosen on the shared data, see the module docstring).
TOP_FRACTION = 0.35
MIDLINE_GAP = 0.02
SLOPE = 1.5


def retrocardiac_region(
    mask: np.ndarray,
    top_fraction: float = TOP_FRACTION,
    midline_gap: float = MIDLINE_GAP,
    slope: float = SLOPE,
) -> np.ndarray:
    """Where a visible-convention mask leaves the retrocardiac left lung undecided.

    Args:
        mask: binary ``rows x columns`` lung mask, patient's right lung on the image's left.
        top_fraction: the region starts this far down the left lung.
        midline_gap: the region's medial limit, this fraction of the width beside the
            midline between the lungs' medial borders.
        slope: how fast the medial limit reaches the midline (1: at the lung's lowest row).

    Returns:
        Boolean map of the region (outside ``mask``); empty when the mask is not two lungs.
    """
    mask = np.asarray(mask) > 0
    region = np.zeros_like(mask)
    lungs = lungs_by_side(mask)
    if lungs is None:
        return region
    right, left = lungs
    midline = (np.nonzero(right.any(0))[0].max() + np.nonzero(left.any(0))[0].min()) / 2
    midline += midline_gap * mask.shape[1]
    rows = np.nonzero(left.any(1))[0]
    top = int(rows[0] + top_fraction * (rows[-1] - rows[0]))
    top = rows[np.searchsorted(rows, top)]  # a row the lung is in
    start = np.argmax(left[top])
    for r in range(top, rows[-1] + 1):
        if not left[r].any():
            continue
        t = min(1.0, slope * (r - top) / max(rows[-1] - top, 1))
        limit = round(start + (midline - start) * t)
        region[r, max(limit, 0) : np.argmax(left[r])] = True
    return region & ~mask


class LungFieldTargetd(MapTransform):
    """Add the ignore map of :func:`retrocardiac_region` to each training sample.

    Args:
        keys: the label key (``(1, H, W)`` binary lung mask, after the letterbox).
        anatomical_cases: names of the cases whose masks follow the anatomical convention
            (their ignore map is empty).
        ignore_key: where the ignore map (same shape and type as the label) goes.
        name_key: the sample's case name (the datalist's ``name``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        anatomical_cases: Collection[str],
        ignore_key: str = "ignore",
        name_key: str = "name",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.anatomical = frozenset(str(n) for n in anatomical_cases)
        self.ignore_key, self.name_key = ignore_key, name_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """The sample with its ignore map under ``ignore_key``."""
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            array = np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label)
            if str(d.get(self.name_key)) in self.anatomical:
                ignore = np.zeros_like(array)
            else:
                ignore = retrocardiac_region(array[0] > 0.5)[None].astype(array.dtype)
            d[self.ignore_key] = convert_to_dst_type(ignore, dst=label)[0]
        return d
