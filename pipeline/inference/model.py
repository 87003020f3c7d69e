"""The bundle's model as the batch and serving code use it: loaded from ``inference.json``.

Network, preprocessing and post-processing all come from the bundle config; nothing here
repeats them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.training.run import BUNDLE


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class BundleModel:
    """Preprocess, predict and post-process with a bundle's inference config.

    Args:
        bundle: the bundle folder (default: the shipped one).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
        overrides: config ids and values set after loading ``inference.json`` (e.g.
            ``ckpt_path`` of a model trained elsewhere and the ``image_size`` it was trained at).

    Raises:
        FileNotFoundError: the bundle has no ``configs/inference.json`` or no checkpoint.
        KeyError: an override names no config id of ``inference.json``.
    """

    def __init__(
        self,
        bundle: str | os.PathLike | None = None,
        device: str = "auto",
        overrides: dict[str, Any] | None = None,
    ):
        self.bundle = Path(bundle or BUNDLE).resolve()
        parser = bundle_parser(self.bundle, device)
        unknown = sorted(k for k in overrides or {} if k not in parser)
        if unknown:
            config = self.bundle / "configs" / "inference.json"
            raise KeyError(f"overrides {unknown} are not config ids of {config}")
        parser.update(dict(overrides or {}))
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.postprocessing = parser.get_parsed_content("postprocessing")
        load_network(self, parser)

    def identity(self) -> dict[str, str]:
        """Name, version and checkpoint checksum, for reports."""
        return identity_of(self)

    def algorithm(self) -> dict[str, str]:
        """``name`` and ``version`` of the algorithm, as DICOM SEG/SR objects record it."""
        return {"name": "lungseg " + self.name, "version": self.version or "0"}

    def preprocess(self, path: str | os.PathLike) -> dict[str, Any]:
        """Load and preprocess one file (raises the reader's typed errors)."""
        return self.preprocessing({"image": str(path)})

    @torch.inference_mode()
    def predict(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits for a list of preprocessed ``(1, H, W)`` images, as one batch, on the CPU."""
        batch = torch.stack([torch.as_tensor(img) for img in images]).to(self.device)
        out = self.network(batch)
        return (out[0] if isinstance(out, (list, tuple)) else out).float().cpu()

    def postprocess(
        self, item: dict[str, Any], logits: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mask and probability on the original grid (see :class:`Postprocessor`)."""
        return Postprocessor.apply(self.postprocessing, item, logits)


def load_network(model: Any, parser: Any) -> None:
    """Load a bundle's network onto ``model`` from its parsed config and metadata.

    Sets ``checkpoint``, ``device``, ``network`` (weights loaded, eval mode), ``name`` and
    ``version``; ``model.bundle`` must be set.

    Raises:
        FileNotFoundError: the checkpoint is missing.
    """
    model.checkpoint = Path(parser.get_parsed_content("ckpt_path"))
    if not model.checkpoint.is_file():
        raise FileNotFoundError(f"{model.checkpoint}: the bundle's checkpoint is missing")
    model.device = parser.get_parsed_content("device")
    model.network = parser.get_parsed_content("network_def").to(model.device).eval()
    state = torch.load(model.checkpoint, map_location=model.device, weights_only=True)
    model.network.load_state_dict(state)
    meta = json.loads((model.bundle / "configs" / "metadata.json").read_text())
    model.name, model.version = meta.get("name", model.bundle.name), meta.get("version", "")


def identity_of(model: Any) -> dict[str, str]:
    """Name, version, bundle folder and checkpoint checksum of a loaded bundle model."""
    return {
        "name": model.name,
        "version": model.version,
        "bundle": str(model.bundle),
        "checkpoint_sha256": file_sha256(model.checkpoint),
    }


def bundle_parser(bundle: str | os.PathLike | None, device: str = "cpu") -> Any:
    """A bundle's ``configs/inference.json`` parser with its root and device set.

    Raises:
        FileNotFoundError: the folder has no ``configs/inference.json``.
    """
    from monai.bundle import ConfigParser

    bundle = Path(bundle or BUNDLE).resolve()
    config = bundle / "configs" / "inference.json"
    if not config.is_file():
        raise FileNotFoundError(f"{bundle}: not a bundle (no configs/inference.json)")
    parser = ConfigParser()
    parser.read_config(str(config))
    parser.update({"bundle_root": str(bundle), "device_name": device})
    return parser


class Postprocessor:
    """The bundle's post-processing alone (no network), for worker processes.

    Args:
        bundle: the bundle folder (default: the shipped one).
    """

    def __init__(self, bundle: str | os.PathLike | None = None):
        parser = bundle_parser(bundle)
        self.transform = parser.get_parsed_content("postprocessing")
        self.preprocessing = parser.get_parsed_content("preprocessing")

    def __call__(self, item: dict[str, Any], logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Mask and probability on the original grid for one item and its logits."""
        return self.apply(self.transform, item, logits)

    @staticmethod
    def apply(
        transform: Any, item: dict[str, Any], logits: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run ``transform`` on ``{**item, "pred": logits}``; also map the probability back.

        Returns:
            ``(mask, probability)``: boolean and float32 ``rows x columns`` arrays.
        """
        mask = transform({**item, "pred": logits})["pred"]
        return np.asarray(mask)[0] > 0.5, probability_map(logits, item["image"].meta)


def probability_map(logits: torch.Tensor, meta: dict[str, Any]) -> np.ndarray:
    """Lung probability on the original grid: sigmoid of ``(1, H, W)`` logits, un-letterboxed.

    Args:
        logits: the network's output for one image.
        meta: the preprocessed image's metadata (holds the letterbox parameters).
    """
    from pipeline.transforms import LetterboxParams, unletterbox
    from pipeline.transforms.geometry import META_KEY

    params = LetterboxParams.from_meta(meta[META_KEY])
    prob = unletterbox(torch.sigmoid(torch.as_tensor(logits).float()), params, "bilinear")
    return np.asarray(prob)[0].astype(np.float32)


def split_preprocessing(pre: Any) -> tuple[Any, Any]:
    """The bundle's preprocessing as (loader, the rest), to keep the decoded image.

    Raises:
        ValueError: the preprocessing does not start with ``pipeline.io.LoadCXRd``.
    """
    from monai.transforms import Compose

    from pipeline.io.reader import LoadCXRd

    transforms = list(getattr(pre, "transforms", [pre]))
    if transforms and isinstance(transforms[0], LoadCXRd):
        return transforms[0], Compose(transforms[1:])
    raise ValueError("the bundle's preprocessing must start with pipeline.io.LoadCXRd")
