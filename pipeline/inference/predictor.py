"""The one predictor: a bundle's model path as a callable for files and decoded arrays.

Every front end (``lungseg segment``, ``lungseg evaluate``, ``lungseg protocol stress``, the
web viewer, the DICOM node and the TB inputs) predicts through :class:`Predictor`, after
nnU-Net v2's ``nnUNetPredictor``. Nothing here repeats the model path: the bundle's
``configs/inference.json`` defines each step and the predictor only runs them in order:

``loader`` (file → image; skipped for arrays) → ``preprocessing`` → ``network`` under the
``inferer`` (checkpoint ensembles and test-time flips are config options:
:mod:`pipeline.inference.ensemble`) → ``postprocessing`` (sigmoid, the letterbox padding
cut off, the probability copied out as ``prob``, threshold, components, holes and sides on
the network's scale, then the labels brought to the original grid once, their edges
thresholded from the upsampled probability) → lung measures
(:mod:`pipeline.inference.lungs`).

Every result carries the mask **on the original image grid** (and the probability, on the
network's scale and, on demand, on the original grid); the predictor's
:class:`~pipeline.inference.bundle.ModelIdentity` says what produced it.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.enums import LungField, QAFlag, View
from pipeline.inference.bundle import BUNDLE, ModelIdentity, bundle_parser, identity_of
from pipeline.inference.lungs import LungMeasures, mean_inside, measure_sides
from pipeline.inference.view_check import NOTES, ViewCheck, turned_orientation
from pipeline.networks.fusion import BFLOAT16_FUSED, bfloat16_fused
from pipeline.transforms.geometry import META_KEY, LetterboxParams, resize_to


@dataclass
class Prediction:
    """One image's result.

    Attributes:
        mask: boolean lung mask, original grid.
        coarse_probability: float32 lung probability on the network's scale (the
            letterbox's image part); :attr:`probability` brings it to the original grid.
        measures: right/left lungs, areas, confidence and QA flags.
        meta: the reader's metadata (format, spacing, orientation, DICOM UIDs, file name).
        image: the decoded radiograph in [0, 1] (when asked to keep it); smaller than the
            original grid when the reader decoded it reduced (``meta["reduced_from"]``).
    """

    mask: np.ndarray
    coarse_probability: np.ndarray
    measures: LungMeasures
    meta: dict[str, Any]
    image: np.ndarray | None = None

    @functools.cached_property
    def probability(self) -> np.ndarray:
        """float32 lung probability on the original grid (bilinear, computed on first use)."""
        return resize_to(self.coarse_probability, self.mask.shape).astype(np.float32)


def _plain_tensor(image: Any) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        return torch.from_numpy(image)
    return image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)


def _stacked(images: Sequence[torch.Tensor | np.ndarray] | torch.Tensor) -> torch.Tensor:
    """Preprocessed ``(1, H, W)`` images as one plain ``(B, 1, H, W)`` batch (once)."""
    if isinstance(images, torch.Tensor) and not hasattr(images, "meta"):
        return images
    return torch.stack([_plain_tensor(img) for img in images])


def _spacing(meta: dict[str, Any]) -> tuple[float, float]:
    return tuple(float(s) for s in meta.get("pixel_spacing", (math.nan, math.nan)))


def _numerics(config: dict[str, Any], dtype: torch.dtype, device: torch.device) -> str:
    """:class:`ModelIdentity`'s ``numerics``: ``bfloat16-fused`` or empty.

    ``bfloat16-fused`` where a fused network (the config's ``network: fuse``) runs in
    bfloat16 on a CPU that fuses it (:func:`~pipeline.networks.fusion.bfloat16_fused`).
    """
    network = config.get("network")
    fused = isinstance(network, dict) and bool(network.get("fuse"))
    in_bfloat16 = fused and dtype == torch.bfloat16 and bfloat16_fused(device)
    return BFLOAT16_FUSED if in_bfloat16 else ""


def _canvas_region(item: dict[str, Any]) -> tuple[slice, slice]:
    """The rows and columns a preprocessed item's image covers on its letterbox canvas.

    The letterbox parameters are the image's MetaTensor metadata, or, for an item sent
    between processes, its ``image_meta``; without them the whole canvas.
    """
    meta = getattr(item["image"], "meta", None) or item.get("image_meta") or {}
    if META_KEY not in meta:
        return slice(None), slice(None)
    params = LetterboxParams.from_meta(meta[META_KEY])
    (top, left), (rows, cols) = params.pad_before, params.resized_shape
    return slice(top, top + rows), slice(left, left + cols)


def _turn_orientation(item: dict[str, Any]) -> None:
    """Give a preprocessed item the Patient Orientation of its image turned by 180 degrees."""
    meta = getattr(item["image"], "meta", None)
    if meta is None:  # sent between processes: the metadata travels beside the pixels
        meta = item["image_meta"] = dict(item.get("image_meta") or {})
    meta["patient_orientation"] = turned_orientation(meta.get("patient_orientation"))


#: The QA flag of an image segmented in another view than it was read in.
VIEW_FLAGS = {View.NEGATIVE: QAFlag.INVERTED_POLARITY, View.ROTATED_180: QAFlag.UPSIDE_DOWN}


def _mark_view(m: LungMeasures, meta: dict[str, Any], view: View) -> None:
    """Say on the measures (a QA flag) and the metadata in which view it was segmented."""
    m.flags.append(VIEW_FLAGS[view])
    meta["view"] = view.value
    meta["assumed"] = "; ".join(filter(None, [meta.get("assumed"), NOTES[view]]))


class Predictor:
    """A bundle's inference config, loaded once, for files and arrays.

    Args:
        bundle: the bundle folder (default: the shipped one).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
        overrides: ``inference.json`` ids to set first (``ckpt_path`` of a model trained
            elsewhere and its ``image_size``, ``threshold``, ``tta``, ``ensemble``...).
        network: load the network now (False: pre- and post-processing only, for workers,
            or until :meth:`load_network`).

    Raises:
        FileNotFoundError: no ``configs/inference.json`` or a checkpoint is missing.
        KeyError: an override names no config id.
        ValueError: an unknown ``lung_field`` (the allowed ones quoted).
    """

    def __init__(
        self,
        bundle: str | os.PathLike | None = None,
        device: str = "auto",
        overrides: dict[str, Any] | None = None,
        network: bool = True,
    ):
        self.bundle = Path(bundle or BUNDLE).resolve()
        self.overrides = dict(overrides or {})
        parser = bundle_parser(self.bundle, device, self.overrides)
        self.lung_field = LungField.parse(parser.get("lung_field", LungField.VISIBLE.value))
        self.checkpoints = [Path(p) for p in parser.get_parsed_content("checkpoints")]
        for ckpt in self.checkpoints:
            if not ckpt.is_file():
                raise FileNotFoundError(f"{ckpt}: the bundle's checkpoint is missing")
        self._config = copy.deepcopy(parser.get())  # as resolved by the overrides, pre-parse
        self.loader = parser.get_parsed_content("loader")
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.postprocessing = parser.get_parsed_content("postprocessing")
        self.device = parser.get_parsed_content("device")
        self.inferer = parser.get_parsed_content("inferer")
        self.view_check: ViewCheck | None = (
            parser.get_parsed_content("view_checker") if "view_checker" in parser else None
        )
        self.micro_batch = int(parser.get("cpu_micro_batch", 0) or 0)
        self._parser = parser
        self.network: torch.nn.Module | None = None
        if network:
            self.load_network()

    def load_network(self) -> torch.nn.Module:
        """The network with its checkpoints, loaded on the first call.

        The batch job loads it while its worker processes decode the first images.
        """
        if self.network is None:
            self.network = self._parser.get_parsed_content("network")
        return self.network

    @functools.cached_property
    def identity(self) -> ModelIdentity:
        """What this predictor runs (checkpoints hashed on first use, not by every worker)."""
        dtype = getattr(self.inferer, "dtype", torch.float32)
        precision = str(dtype).split(".")[-1]
        numerics = _numerics(self._config, dtype, self.device)
        return identity_of(
            self.bundle, self.checkpoints, self._config, precision, str(self.lung_field), numerics
        )

    # --- the steps, for callers that pipeline them (the batch job's workers) ---------------

    def load(self, source: str | os.PathLike | np.ndarray | torch.Tensor) -> dict[str, Any]:
        """Decode a file (or wrap a decoded array) as ``{"image": MetaTensor (1, H, W)}``.

        Raises:
            InputError: a subclass naming the file and the reason.
        """
        value = str(source) if isinstance(source, (str, os.PathLike)) else source
        return self.loader({"image": value})

    def preprocess(self, loaded: dict[str, Any]) -> dict[str, Any]:
        """The bundle's preprocessing of a loaded item (the network's input under ``image``)."""
        return self.preprocessing(dict(loaded))

    @torch.inference_mode()
    def forward(self, images: Sequence[torch.Tensor | np.ndarray] | torch.Tensor) -> torch.Tensor:
        """Logits of preprocessed ``(1, H, W)`` images (or their ready batch), on the CPU.

        The batch is a plain tensor: a MetaTensor would route every operation of the
        network through its metadata handling. On the CPU the network sees
        ``cpu_micro_batch`` images at a time (the bundle's setting): larger batches' feature
        maps exceed what malloc keeps between calls, and each forward pass then spends a
        third of its time faulting fresh pages in (measured on res_unet at 256²).

        Raises:
            RuntimeError: the predictor was built without its network, not loaded since.
        """
        if self.network is None:
            raise RuntimeError("this Predictor was built with network=False (see load_network)")
        batch = _stacked(images).to(self.device)
        batch = batch.contiguous(memory_format=torch.channels_last)  # the network's layout
        step = (
            self.micro_batch if self.device.type == "cpu" and self.micro_batch > 0 else len(batch)
        )
        return torch.cat(
            [self.inferer(part, self.network).float().cpu() for part in batch.split(step)]
        )

    def infer(self, items: Sequence[dict[str, Any]]) -> torch.Tensor:
        """Logits of preprocessed items, as one batch, after the bundle's view check.

        Each item gets ``view`` (a :class:`~pipeline.enums.View` value): ``negative`` or
        ``rotated_180`` where the network was surer of the image seen so, whose logits
        (brought back onto the image's grid) are then the ones returned; a turned item's
        Patient Orientation becomes the turned image's (:mod:`pipeline.inference.view_check`).
        """
        batch = _stacked([item["image"] for item in items])
        logits = self.forward(batch)
        views = [View.AS_READ] * len(items)
        if self.view_check is not None and items:
            regions = [_canvas_region(item) for item in items]
            logits, views = self.view_check(batch, regions, logits, self.forward)
        for item, view in zip(items, views, strict=True):
            item["view"] = view.value
            if view is View.ROTATED_180:
                _turn_orientation(item)
        return logits

    def postprocess(self, item: dict[str, Any], logits: torch.Tensor) -> Prediction:
        """The bundle's post-processing and the lung measures of one image's logits.

        The post-processing decides components, holes and sides on the network's scale and
        gives the right (1) / left (2) labels on the original grid; the confidence is the
        mean probability inside the lungs on the network's scale.
        """
        out = self.postprocessing({**item, "pred": logits})
        labels = np.asarray(out["pred"])[0]
        prob = np.asarray(out["prob"])[0].astype(np.float32)
        confidence = mean_inside(prob, np.asarray(out["lungs_lowres"])[0])
        meta = dict(item["image"].meta)
        m: LungMeasures = measure_sides(
            labels == 1, labels == 2, int(out["lung_components"]), confidence, _spacing(meta)
        )
        if item.get("view", View.AS_READ) != View.AS_READ:
            _mark_view(m, meta, View(item["view"]))
        return Prediction(labels > 0, prob, m, meta)

    # --- whole predictions --------------------------------------------------------------

    def predict_items(
        self, loaded: Sequence[dict[str, Any]], keep_image: bool = False
    ) -> list[Prediction]:
        """Predict loaded items as one batch (see :meth:`load`)."""
        items = [self.preprocess(d) for d in loaded]
        logits = self.infer(items)
        out = []
        for d, item, lg in zip(loaded, items, logits, strict=True):
            pred = self.postprocess(item, lg)
            pred.image = d["image"].numpy()[0] if keep_image else None
            out.append(pred)
        return out

    def predict_from_files(
        self, paths: Sequence[str | os.PathLike], batch_size: int = 8, keep_image: bool = False
    ) -> Iterator[Prediction]:
        """Predict files in batches, in order (for collections expected to be clean).

        Raises:
            InputError: a file the reader cannot use, naming it.
        """
        for first in range(0, len(paths), batch_size):
            loaded = [self.load(p) for p in paths[first : first + batch_size]]
            yield from self.predict_items(loaded, keep_image)

    def predict_single_npy_array(
        self, image: Any, meta: dict[str, Any] | None = None, keep_image: bool = False
    ) -> Prediction:
        """Predict one decoded radiograph (``rows x columns``, lungs dark, any range).

        Args:
            image: the pixels (numpy array, tensor or MetaTensor).
            meta: reader-style metadata: ``pixel_spacing`` (row, column mm),
                ``patient_orientation``, DICOM UIDs...
            keep_image: keep the array on the result.
        """
        from pipeline.io.reader import as_cxr_tensor

        return self.predict_items([{"image": as_cxr_tensor(image, meta)}], keep_image)[0]
