"""MONAI dictionary wrappers of the array transforms, for bundle configs (``_target_``)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import ensure_tuple_rep

from pipeline.transforms.geometry import (
    META_KEY,
    CropLetterbox,
    Letterbox,
    LetterboxParams,
    Unletterbox,
    UnletterboxLabels,
)
from pipeline.transforms.intensity import CLAHE, BinarizeMask, ScalePercentiles, TopHatEnhance
from pipeline.transforms.morphology import FillHoles, KeepLargestComponents
from pipeline.transforms.prediction import Sigmoid, Threshold


class _Wrapped(MapTransform):
    """Apply one array transform to every key."""

    def __init__(self, keys: KeysCollection, transform: Transform, allow_missing_keys: bool):
        super().__init__(keys, allow_missing_keys)
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class ScalePercentilesd(_Wrapped):
    """Dictionary wrapper of :class:`~pipeline.transforms.intensity.ScalePercentiles`."""

    def __init__(
        self,
        keys: KeysCollection,
        lower: float = 0.5,
        upper: float = 99.5,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, ScalePercentiles(lower, upper), allow_missing_keys)


class CLAHEd(_Wrapped):
    """Dictionary wrapper of :class:`~pipeline.transforms.intensity.CLAHE`."""

    def __init__(
        self,
        keys: KeysCollection,
        clip_limit: float = 0.01,
        tile_grid: int | Sequence[int] = 8,
        nbins: int = 256,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, CLAHE(clip_limit, tile_grid, nbins), allow_missing_keys)


class TopHatEnhanced(_Wrapped):
    """Dictionary wrapper of :class:`~pipeline.transforms.intensity.TopHatEnhance`."""

    def __init__(
        self,
        keys: KeysCollection,
        radius: int = 15,
        footprint: str = "disk",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, TopHatEnhance(radius, footprint), allow_missing_keys)


class BinarizeMaskd(_Wrapped):
    """Dictionary wrapper of :class:`~pipeline.transforms.intensity.BinarizeMask`."""

    def __init__(
        self, keys: KeysCollection, fraction: float = 0.5, allow_missing_keys: bool = False
    ):
        super().__init__(keys, BinarizeMask(fraction), allow_missing_keys)


class Sigmoidd(_Wrapped):
    """Dictionary wrapper of :class:`~pipeline.transforms.prediction.Sigmoid`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, Sigmoid(), allow_missing_keys)


class Thresholdd(_Wrapped):
    """Dictionary wrapper of :class:`~pipeline.transforms.prediction.Threshold`."""

    def __init__(
        self, keys: KeysCollection, threshold: float = 0.5, allow_missing_keys: bool = False
    ):
        super().__init__(keys, Threshold(threshold), allow_missing_keys)


class FillHolesd(_Wrapped):
    """Dictionary wrapper of :class:`~pipeline.transforms.morphology.FillHoles`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, FillHoles(), allow_missing_keys)


class KeepLargestComponentsd(_Wrapped):
    """Dictionary wrapper of :class:`~pipeline.transforms.morphology.KeepLargestComponents`."""

    def __init__(
        self,
        keys: KeysCollection,
        label: int = 1,
        count: int = 1,
        connectivity: int = 1,
        allow_missing_keys: bool = False,
    ):
        keep = KeepLargestComponents(label, count, connectivity)
        super().__init__(keys, keep, allow_missing_keys)


class Letterboxd(MapTransform):
    """Dictionary wrapper of :class:`~pipeline.transforms.geometry.Letterbox`.

    Args:
        keys: keys to resize (image and, in training, label).
        size: the model's input size.
        mode: interpolation per key (``auto`` for images, ``nearest`` for labels).
    """

    def __init__(
        self,
        keys: KeysCollection,
        size: int | Sequence[int] = 256,
        mode: str | Sequence[str] = "auto",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        modes = ensure_tuple_rep(mode, len(self.keys))
        self.transforms = {k: Letterbox(size, m) for k, m in zip(self.keys, modes, strict=True)}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Letterbox every key with its own interpolation."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transforms[key](d[key])
        return d


class Unletterboxd(MapTransform):
    """Dictionary wrapper of :class:`~pipeline.transforms.geometry.Unletterbox`.

    Args:
        keys: keys to map back (e.g. ``pred``).
        ref_key: key whose metadata holds the letterbox parameters (e.g. ``image``); when
            None, each key's own metadata is used.
        mode: interpolation (``bilinear`` for probabilities, ``nearest`` for masks).
    """

    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str | None = "image",
        mode: str = "bilinear",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.transform = Unletterbox(mode)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Map every key back to the original grid."""
        d = dict(data)
        params = None
        if self.ref_key is not None:
            params = LetterboxParams.from_meta(d[self.ref_key].meta[META_KEY])
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], params)
        return d


class CropLetterboxd(MapTransform):
    """Dictionary wrapper of :class:`~pipeline.transforms.geometry.CropLetterbox`.

    Args:
        keys: keys to crop (e.g. ``pred``): they stay on the network's scale.
        ref_key: key whose metadata holds the letterbox parameters (e.g. ``image``).
    """

    def __init__(self, keys: KeysCollection, ref_key: str = "image", allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.ref_key, self.transform = ref_key, CropLetterbox()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Cut the letterbox padding off every key."""
        d = dict(data)
        params = LetterboxParams.from_meta(d[self.ref_key].meta[META_KEY])
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], params)
        return d


class UnletterboxLabelsd(MapTransform):
    """Dictionary wrapper of :class:`~pipeline.transforms.geometry.UnletterboxLabels`.

    Args:
        keys: cropped label keys (e.g. ``pred``) to bring to the original grid.
        prob_key: the cropped foreground probability (edges are thresholded from it).
        ref_key: key whose metadata holds the letterbox parameters (e.g. ``image``).
        threshold: the foreground threshold.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob_key: str = "prob",
        ref_key: str = "image",
        threshold: float = 0.5,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.prob_key, self.ref_key = prob_key, ref_key
        self.transform = UnletterboxLabels(threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Upsample every key's labels onto the original grid."""
        d = dict(data)
        params = LetterboxParams.from_meta(d[self.ref_key].meta[META_KEY])
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], d[self.prob_key], params)
        return d
