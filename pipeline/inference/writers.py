"""Write predicted lung masks: array logic, then the MONAI dictionary wrapper the bundle uses."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_numpy

from pipeline.io.discovery import InputFile
from pipeline.io.writers import save_png


def mask_to_uint8(mask: Any) -> np.ndarray:
    """A ``(1, rows, columns)`` or ``(rows, columns)`` binary mask as a 0/255 uint8 image.

    Raises:
        ValueError: the mask has more than one channel or is not 2D.
    """
    arr = convert_to_numpy(mask)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"expected a one-channel 2D mask, got shape {tuple(arr.shape)}")
    return np.where(arr > 0.5, 255, 0).astype(np.uint8)


class SaveMask(Transform):
    """Save a binary mask as a 0/255 PNG (atomically); returns the mask unchanged."""

    def __call__(self, mask: Any, path: str | os.PathLike) -> Any:
        """Write ``mask`` to ``path`` (parent folders are created)."""
        save_png(mask_to_uint8(mask), path)
        return mask


class SaveMaskd(MapTransform):
    """Save each key's mask to ``output_dir/<relative path>.png``.

    The relative path is the item's ``relative_key`` entry (set by
    :func:`pipeline.inference.datalist.image_datalist`; MONAI engines merge the batch's
    entries into post-processing), so the output tree mirrors the
    input tree; without it, the image file's name is used. The written path is stored
    under ``<key>_path``.

    Args:
        keys: mask keys (e.g. ``pred``).
        output_dir: folder to write under.
        relative_key: item entry holding the input's path relative to its folder.
        image_key: item entry whose metadata names the source file (fallback).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        relative_key: str = "relative",
        image_key: str = "image",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.output_dir, self.relative_key, self.image_key = (
            Path(output_dir),
            relative_key,
            image_key,
        )
        self.saver = SaveMask()

    def _relative(self, d: Mapping[Hashable, Any]) -> Path:
        rel = d.get(self.relative_key)
        if rel:
            return Path(rel)
        meta = getattr(d.get(self.image_key), "meta", {})
        name = meta.get("filename_or_obj")
        if not name:
            raise ValueError(
                f"cannot name the output: no {self.relative_key!r} entry and no source file "
                f"in the {self.image_key!r} metadata"
            )
        return Path(Path(str(name)).name)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Write every key's mask; add ``<key>_path`` with the written file."""
        d = dict(data)
        target = InputFile(Path(), self._relative(d)).output(self.output_dir, ".png")
        for key in self.key_iterator(d):
            path = target if key == self.keys[0] else target.with_name(f"{target.stem}_{key}.png")
            self.saver(d[key], path)
            d[f"{key}_path"] = str(path)
        return d
