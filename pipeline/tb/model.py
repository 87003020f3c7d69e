"""The TB classifier's networks (MONAI), their ensemble, and the packaged model's loader.

The classifier takes the ``(2, S, S)`` lung crop of :func:`pipeline.tb.inputs.lung_crop` and
returns one logit (TB manifestation). The packaged model is an :class:`Ensemble` of the
networks trained in the folds of the cross-validation: its score is the mean of their
probabilities, so no network is scored on an image it was trained on during evaluation, and
the shipped model needs no extra training run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.enums import StrEnum

#: The TB bundle shipped with the package.
TB_BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "tb_cxr_classification"


class TBNetwork(StrEnum):
    """Classifier networks, all from MONAI, trained from scratch."""

    DENSENET121 = "densenet121"
    DENSENET_SMALL = "densenet_small"
    EFFICIENTNET_B0 = "efficientnet_b0"


def build_classifier(name: str | TBNetwork, in_channels: int = 2) -> nn.Module:
    """A MONAI classification network with one output logit.

    Args:
        name: a :class:`TBNetwork` value.
        in_channels: input channels (2: the crop and its lung mask).

    Raises:
        ValueError: an unknown name, quoting the allowed set.
    """
    from monai.networks.nets import DenseNet, DenseNet121, EfficientNetBN

    name = TBNetwork.parse(name)
    if name is TBNetwork.DENSENET121:
        return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=1)
    if name is TBNetwork.DENSENET_SMALL:  # DenseNet-BC, 4 blocks of 4/8/12/8 layers: 0.6 M
        return DenseNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=1,
            init_features=32,
            growth_rate=16,
            block_config=(4, 8, 12, 8),
        )
    return EfficientNetBN(
        "efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=in_channels, num_classes=1
    )


class Ensemble(nn.Module):
    """Several networks of one architecture; the output is the logit of their mean probability.

    Args:
        name: the architecture (:class:`TBNetwork`).
        members: how many networks.
        in_channels: input channels.
    """

    def __init__(self, name: str, members: int = 5, in_channels: int = 2):
        super().__init__()
        if members < 1:
            raise ValueError(f"an ensemble needs at least one member, got {members}")
        self.members = nn.ModuleList(build_classifier(name, in_channels) for _ in range(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1)`` logits."""
        probs = torch.stack([torch.sigmoid(m(x)) for m in self.members]).mean(0)
        return torch.logit(probs.clamp(1e-6, 1 - 1e-6))


class TBModel:
    """The packaged TB classifier: crop parameters, ensemble and operating threshold.

    Everything comes from the bundle's ``configs/inference.json``.

    Args:
        bundle: the TB bundle folder (default: the shipped one).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        FileNotFoundError: the bundle has no config or no checkpoint.
    """

    def __init__(self, bundle: str | os.PathLike | None = None, device: str = "auto"):
        from pipeline.inference.model import bundle_parser

        self.bundle = Path(bundle or TB_BUNDLE).resolve()
        parser = bundle_parser(self.bundle, device)
        self.checkpoint = Path(parser.get_parsed_content("ckpt_path"))
        if not self.checkpoint.is_file():
            raise FileNotFoundError(f"{self.checkpoint}: the TB bundle's checkpoint is missing")
        self.device = parser.get_parsed_content("device")
        self.crop = parser.get_parsed_content("crop")
        self.threshold = float(parser.get_parsed_content("threshold"))
        self.network = parser.get_parsed_content("network_def").to(self.device).eval()
        state = torch.load(self.checkpoint, map_location=self.device, weights_only=True)
        self.network.load_state_dict(state)
        meta = json.loads((self.bundle / "configs" / "metadata.json").read_text())
        self.name, self.version = meta.get("name", self.bundle.name), meta.get("version", "")

    def identity(self) -> dict[str, Any]:
        """Name, version, checksum and operating threshold, for reports."""
        from pipeline.inference.model import file_sha256

        return {
            "name": self.name,
            "version": self.version,
            "bundle": str(self.bundle),
            "checkpoint_sha256": file_sha256(self.checkpoint),
            "threshold": self.threshold,
        }

    def prepare(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The network's input for one radiograph in [0, 1] and its lung mask."""
        return np.asarray(self.crop({"image": image[None], "mask": mask[None]})["tb_input"])

    @torch.inference_mode()
    def scores(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """TB probabilities of prepared inputs, as one batch."""
        if not len(inputs):
            return np.zeros(0, np.float32)
        batch = torch.stack([torch.as_tensor(np.asarray(x, np.float32)) for x in inputs])
        logits = self.network(batch.to(self.device)).float().cpu()
        return torch.sigmoid(logits).reshape(-1).numpy()
