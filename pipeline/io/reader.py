"""One entry point for every chest X-ray file, and its MONAI transforms.

:func:`read_cxr` dispatches on content (DICOM is recognised by its ``DICM`` marker, not its
name) and returns the same contract for every format: a float32 ``rows x columns`` array in
[0, 1] with lungs dark, and metadata with the original size and, for DICOM, the identifiers
and pixel spacing. :class:`LoadCXR`/:class:`LoadCXRd` wrap it as MONAI transforms giving a
channel-first :class:`monai.data.MetaTensor`; training, the bundle and the batch CLI all load
images through them.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ImageReader, MetaTensor
from monai.transforms import MapTransform, Transform

from pipeline.enums import InputFormat
from pipeline.io.dicom import VOISource, read_dicom
from pipeline.io.errors import InputError, NotAnImageError
from pipeline.io.images import check_size, detect_format, read_itk, read_nifti, read_pil

_PIL_FORMATS = (InputFormat.PNG, InputFormat.JPEG, InputFormat.TIFF, InputFormat.BMP)
SUPPORTED_FORMATS = ", ".join(f.value for f in InputFormat)


def read_cxr(
    path: str | os.PathLike,
    *,
    voi: VOISource | str = VOISource.AUTO,
    voi_index: int = 0,
    allow_lateral: bool = False,
    min_size: int | None = None,
    network_size: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a chest radiograph of any supported format.

    Args:
        path: the file.
        voi: DICOM only: which VOI transformation to apply.
        voi_index: DICOM only: which window / VOI LUT item to use.
        allow_lateral: DICOM only: accept lateral views.
        min_size: DICOM only: decode at a reduced resolution whose longer side is at least
            this many pixels (:mod:`pipeline.io.reduced`); None: the full grid.
        network_size: DICOM only: the letterbox size the image is resized to next; only
            reductions that keep its result are used (see ``reduction_factor``).

    Returns:
        ``(image, meta)``: float32 ``rows x columns`` in [0, 1] (fewer when reduced);
        ``meta`` has ``format``, ``original_shape`` (the file's full grid),
        ``pixel_spacing`` (row, column mm of that grid; NaN when unknown),
        ``pixel_spacing_source``, DICOM UIDs (empty for other formats), and when the image
        was decoded reduced ``reduced_from`` (= ``original_shape``) and ``reduction``.

    Raises:
        InputError: a subclass naming the file and the reason.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt is InputFormat.DICOM or fmt is None:
        try:
            image, meta = read_dicom(
                path,
                voi=voi,
                voi_index=voi_index,
                allow_lateral=allow_lateral,
                force=True,
                min_size=min_size,
                network_size=network_size,
            )
        except NotAnImageError as err:
            if fmt is InputFormat.DICOM:
                raise
            raise NotAnImageError(
                path, f"not DICOM and not an image format lungseg reads ({SUPPORTED_FORMATS})"
            ) from err
    elif fmt in _PIL_FORMATS:
        image, meta = read_pil(path)
    elif fmt is InputFormat.NIFTI:
        image, meta = read_nifti(path)
    else:
        image, meta = read_itk(path, fmt)
    check_size(image, path)
    shape = meta.get("reduced_from", image.shape)
    meta.update(filename_or_obj=str(path), original_shape=tuple(int(s) for s in shape))
    return image, meta


def _affine(spacing: tuple[float, float]) -> torch.Tensor:
    row, col = (1.0 if np.isnan(s) else float(s) for s in spacing)
    return torch.diag(torch.tensor([row, col, 1.0, 1.0], dtype=torch.float64))


def monai_meta(image: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` plus the keys MONAI expects (spatial shape, no channel, affine from spacing)."""
    out = dict(meta)
    affine = _affine(out.get("pixel_spacing", (float("nan"),) * 2))
    out.update(
        spatial_shape=np.asarray(image.shape),
        original_channel_dim="no_channel",
        affine=affine,
        original_affine=affine.clone(),
    )
    return out


def to_meta_tensor(image: np.ndarray, meta: dict[str, Any]) -> MetaTensor:
    """Wrap a ``rows x columns`` image as a channel-first MetaTensor ``(1, rows, columns)``."""
    tensor = torch.from_numpy(np.ascontiguousarray(image))[None]
    return MetaTensor(tensor, meta=monai_meta(image, meta))


def as_cxr_tensor(image: Any, meta: dict[str, Any] | None = None) -> MetaTensor:
    """An already decoded radiograph as the ``(1, rows, columns)`` MetaTensor LoadCXR gives.

    For hosts that hold the pixels (MONAI Deploy, a PACS plugin, the web viewer's arrays):
    a ``rows x columns`` or ``(1, rows, columns)`` array or tensor, lungs dark, any range (the
    bundle's preprocessing rescales). Its metadata (a MetaTensor's, then ``meta``) is kept;
    ``pixel_spacing`` defaults to unknown and ``format`` to ``array``.

    Raises:
        ValueError: the array is not one 2D image (its shape quoted).
    """
    merged = {**dict(getattr(image, "meta", {}) or {}), **dict(meta or {})}
    plain = image.as_tensor() if isinstance(image, MetaTensor) else image
    arr = np.asarray(plain.detach().cpu() if isinstance(plain, torch.Tensor) else plain)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"expected one 2D radiograph, got an array of shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    merged.setdefault("format", "array")
    merged.setdefault("pixel_spacing", (float("nan"), float("nan")))
    merged.setdefault("original_shape", tuple(int(s) for s in arr.shape))
    return to_meta_tensor(arr, merged)


class LoadCXR(Transform):
    """Load a chest X-ray file as a ``(1, rows, columns)`` MetaTensor in [0, 1].

    Unlike ``monai.transforms.LoadImage`` with a custom reader, errors keep their type
    (:class:`~pipeline.io.errors.InputError`) and name the file. An array or tensor instead
    of a path is passed through :func:`as_cxr_tensor` (already decoded by the host).

    Args:
        voi: DICOM VOI transformation (``auto``, ``lut``, ``window``, ``none``).
        voi_index: which window / VOI LUT item to use (0 = first).
        allow_lateral: accept lateral DICOM views.
        min_size: decode DICOM at a reduced resolution whose longer side is at least this
            (the metadata's ``reduced_from`` tells the letterbox the full grid); None: full.
        network_size: the letterbox size next (only reductions that keep its result).
    """

    def __init__(
        self,
        voi: str = "auto",
        voi_index: int = 0,
        allow_lateral: bool = False,
        min_size: int | None = None,
        network_size: int | None = None,
    ):
        self.voi = VOISource.parse(voi)
        self.voi_index = voi_index
        self.allow_lateral = allow_lateral
        self.min_size = None if min_size is None else int(min_size)
        self.network_size = None if network_size is None else int(network_size)

    def __call__(self, path: str | os.PathLike | np.ndarray | torch.Tensor) -> MetaTensor:
        """Read ``path``; raise :class:`InputError` (a subclass) for bad input."""
        if not isinstance(path, (str, os.PathLike)):
            return as_cxr_tensor(path)
        image, meta = read_cxr(
            path,
            voi=self.voi,
            voi_index=self.voi_index,
            allow_lateral=self.allow_lateral,
            min_size=self.min_size,
            network_size=self.network_size,
        )
        return to_meta_tensor(image, meta)


class LoadCXRd(MapTransform):
    """Dictionary wrapper of :class:`LoadCXR`: replaces each key's path by its image."""

    def __init__(
        self,
        keys: KeysCollection,
        voi: str = "auto",
        voi_index: int = 0,
        allow_lateral: bool = False,
        min_size: int | None = None,
        network_size: int | None = None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadCXR(voi, voi_index, allow_lateral, min_size, network_size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Load every key's file."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


class CXRReader(ImageReader):
    """The same decoding as a MONAI ``ImageReader``, for ``LoadImage(reader=CXRReader())``.

    Prefer :class:`LoadCXR`: ``LoadImage`` turns reader errors into a generic RuntimeError.
    """

    def __init__(self, voi: str = "auto", voi_index: int = 0, allow_lateral: bool = False):
        self.options = {"voi": VOISource.parse(voi), "voi_index": voi_index}
        self.options["allow_lateral"] = allow_lateral

    @staticmethod
    def _single(filename: Any) -> str | os.PathLike:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        if len(names) != 1:
            raise ValueError(f"CXRReader reads one file at a time, got {len(names)}")
        return names[0]

    def verify_suffix(self, filename: Any) -> bool:
        """Accept any single file whose format is recognised (by content or suffix)."""
        try:
            return detect_format(self._single(filename)) is not None
        except (InputError, ValueError):
            return False

    def read(self, data: Any, **kwargs: Any) -> Any:
        """Decode the file now, so errors surface here with their type."""
        return read_cxr(self._single(data), **{**self.options, **kwargs})

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Return the array (no channel) and MONAI-style metadata."""
        image, meta = img
        return image, monai_meta(image, meta)
