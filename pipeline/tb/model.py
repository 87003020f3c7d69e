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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.enums import TBNetworkName
from pipeline.io.datasets import project_file

#: Said on every TB score the project writes.
NOTICE = (
    "Research use only: the TB score is not validated for screening, diagnosis or any "
    "clinical decision."
)

#: The TB bundle shipped with the package.
TB_BUNDLE = project_file("bundles/tb_cxr_classification")


def build_classifier(name: str | TBNetworkName, in_channels: int = 2) -> nn.Module:
    """A MONAI classification network with one output logit.

    Args:
        name: a :class:`TBNetworkName` value.
        in_channels: input channels (2: the crop and its lung mask).

    Raises:
        ValueError: an unknown name, quoting the allowed set.
    """
    from monai.networks.nets import DenseNet, DenseNet121, EfficientNetBN

    name = TBNetworkName.parse(name)
    if name is TBNetworkName.DENSENET121:
        return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=1)
    if name is TBNetworkName.DENSENET_SMALL:  # DenseNet-BC, 4 blocks of 4/8/12/8 layers: 0.6 M
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
        name: the architecture (:class:`TBNetworkName`).
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


#: Weight of the feature baseline in the shipped score (the CNN ensemble has the rest).
BASELINE_WEIGHT = 0.5


@dataclass
class LogisticScorer:
    """The feature baseline: standardised features, then L2 logistic regression.

    Stored as plain JSON numbers (no pickle) in the bundle's ``models/baseline.json``.
    """

    names: list[str]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(
        cls, features: np.ndarray, labels: np.ndarray, names: Sequence[str], c: float = 0.05
    ) -> LogisticScorer:
        """Fit on ``features`` (N, F) and 0/1 ``labels`` (scikit-learn, C = ``c``)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(features)
        model = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(features), labels)
        return cls(
            list(names), scaler.mean_, scaler.scale_, model.coef_[0], float(model.intercept_[0])
        )

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Probabilities of rows of features (columns in :attr:`names` order)."""
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return 1 / (1 + np.exp(-(z @ self.coef + self.intercept)))

    def to_json(self) -> str:
        """The scorer as JSON."""
        fields = ("mean", "scale", "coef")
        body = {"names": self.names, "intercept": self.intercept}
        return json.dumps({**body, **{f: getattr(self, f).tolist() for f in fields}}, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LogisticScorer:
        """Read :meth:`to_json`'s output."""
        d = json.loads(Path(path).read_text())
        arrays = [np.asarray(d[k], dtype=np.float64) for k in ("mean", "scale", "coef")]
        return cls(d["names"], *arrays, float(d["intercept"]))


class TBInputs:
    """Both inputs of the TB model for one radiograph: the CNN's crop, the baseline's features.

    Picklable, so worker processes of ``lungseg segment --tb`` prepare them.

    Args:
        crop: the bundle's crop transform (:class:`~pipeline.tb.inputs.LungCropd`).
        names: the baseline's feature names (None: no baseline).
    """

    def __init__(self, crop: Any, names: Sequence[str] | None):
        self.crop, self.names = crop, None if names is None else list(names)

    def __call__(self, image: np.ndarray, right: np.ndarray, left: np.ndarray) -> dict:
        """``{"crop": (2, S, S) float16, "features": (F,) float32 or None}``."""
        from pipeline.tb.features import features_at

        mask = right | left
        crop = np.asarray(self.crop({"image": image[None], "mask": mask[None]})["tb_input"])
        out = {"crop": crop.astype(np.float16), "features": None}
        if self.names is not None:
            values = features_at(image, right, left)
            out["features"] = np.asarray([values[k] for k in self.names], dtype=np.float32)
        return out


class TBModel:
    """The packaged TB classifier: crop parameters, ensemble and operating threshold.

    Everything comes from the bundle's ``configs/inference.json``.

    Args:
        bundle: the TB bundle folder (default: the shipped one).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        FileNotFoundError: the bundle has no config or no checkpoint.
    """

    #: Said with every score.
    notice = NOTICE

    def __init__(self, bundle: str | os.PathLike | None = None, device: str = "auto"):
        from pipeline.inference.bundle import bundle_parser, identity_of
        from pipeline.inference.ensemble import load_weights

        self.bundle = Path(bundle or TB_BUNDLE).resolve()
        parser = bundle_parser(self.bundle, device)
        self.checkpoint = Path(parser.get_parsed_content("ckpt_path"))
        self.device = parser.get_parsed_content("device")
        self.network = parser.get_parsed_content("network_def").to(self.device).eval()
        load_weights(self.network, self.checkpoint, self.device)
        self._identity = identity_of(self.bundle, [self.checkpoint], parser.get())
        self.crop = parser.get_parsed_content("crop")
        self.threshold = float(parser.get_parsed_content("threshold"))
        self.baseline, self.baseline_weight = _baseline(parser)
        self.inputs = TBInputs(self.crop, None if self.baseline is None else self.baseline.names)

    def identity(self) -> dict[str, Any]:
        """Name, version, checksums, config hash and operating threshold, for reports."""
        return {**self._identity.as_dict(), "threshold": self.threshold}

    def prepare(self, image: np.ndarray, right: np.ndarray, left: np.ndarray) -> dict:
        """The model's inputs for one radiograph in [0, 1] and its right and left lungs."""
        return self.inputs(image, right, left)

    def scores(self, inputs: Sequence[dict]) -> np.ndarray:
        """TB scores of prepared inputs.

        The CNN ensemble's probability, averaged with the feature baseline's
        (``baseline_weight``) when the bundle has one.
        """
        cnn = self.cnn_scores([x["crop"] for x in inputs])
        if self.baseline is None or not len(inputs):
            return cnn
        features = np.stack([x["features"] for x in inputs])
        w = self.baseline_weight
        return ((1 - w) * cnn + w * self.baseline(features)).astype(np.float32)

    @torch.inference_mode()
    def cnn_scores(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """The CNN ensemble's probabilities for crops, as one batch."""
        if not len(crops):
            return np.zeros(0, np.float32)
        batch = torch.stack([torch.as_tensor(np.asarray(x, np.float32)) for x in crops])
        logits = self.network(batch.to(self.device)).float().cpu()
        return torch.sigmoid(logits).reshape(-1).numpy()


def _baseline(parser: Any) -> tuple[LogisticScorer | None, float]:
    """The bundle's feature baseline and its weight (None, 0 when it has none)."""
    if "baseline_path" not in parser:
        return None, 0.0
    path = Path(parser.get_parsed_content("baseline_path"))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the TB bundle's baseline model is missing")
    return LogisticScorer.load(path), float(parser.get_parsed_content("baseline_weight"))
