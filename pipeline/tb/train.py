"""Stratified k-fold training of the TB classifier and of the classical baseline beside it.

1. :func:`prepare`: every case is segmented with the lung bundle (the predicted mask, as in
   use, not the reference mask), then cropped (:func:`pipeline.tb.inputs.lung_crop`) and
   described by the baseline's features (:func:`pipeline.tb.features.lung_features`).
2. :func:`fold_parts`: folds stratified by source x TB label (the split function of training).
3. Per fold: the CNN trains on the other folds minus an inner validation part (15%, the same
   strata) that picks the best epoch (AUC) and stops early; the fold's cases are scored once,
   by a network that never saw them; the logistic-regression baseline is fitted on the same
   training cases.
4. The out-of-fold scores give the cross-validated metrics; the fold networks together are
   the packaged :class:`~pipeline.tb.model.Ensemble`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.tb.inputs import CROP_SIZE, MARGIN


@dataclass
class Prepared:
    """The cases as the classifiers see them."""

    names: list[str]
    sources: np.ndarray
    labels: np.ndarray
    crops: np.ndarray  # (N, 2, S, S) float16
    features: np.ndarray  # (N, F) float32
    feature_names: list[str]


@dataclass
class Settings:
    """How each fold's CNN is trained."""

    network: str = "densenet_small"
    epochs: int = 24
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 8
    inner_validation: float = 0.15
    crop_size: int = CROP_SIZE
    crop_margin: float = MARGIN
    seed: int = 0
    device: str = "auto"


def prepare(
    cases: Sequence[dict[str, Any]],
    seg_model: Any,
    size: int = CROP_SIZE,
    margin: float = MARGIN,
    batch_size: int = 8,
) -> Prepared:
    """Segment, crop and describe ``cases`` (datalist items with ``source``/``tuberculosis``)."""
    from pipeline.inference.outputs import as_segmented
    from pipeline.tb.features import features_at
    from pipeline.tb.inputs import lung_crop

    crops, rows = [], []
    paths = [c["image"] for c in cases]
    for p in seg_model.predict_from_files(paths, batch_size, keep_image=True):
        image, right, left = as_segmented(p.image, p.measures, p.meta.get("view"))
        crops.append(lung_crop(image, right | left, size, margin).astype(np.float16))
        rows.append(features_at(image, right, left))
    names = sorted(rows[0])
    return Prepared(
        names=[str(c.get("name", Path(c["image"]).name)) for c in cases],
        sources=np.asarray([str(c.get("source", "")) for c in cases]),
        labels=np.asarray([int(c["tuberculosis"]) for c in cases]),
        crops=np.stack(crops),
        features=np.asarray([[r[k] for k in names] for r in rows], dtype=np.float32),
        feature_names=names,
    )


def fold_parts(prepared: Prepared, folds: int, seed: int = 0) -> list[np.ndarray]:
    """Indices of each fold's cases, stratified by source x label (disjoint, covering all)."""
    from pipeline.training.data import split

    items = [
        {"name": n, "image": n, "source": s, "tuberculosis": str(y), "index": i}
        for i, (n, s, y) in enumerate(
            zip(prepared.names, prepared.sources, prepared.labels, strict=True)
        )
    ]
    parts = []
    for fold in range(folds):
        part = split(items, 0.0, 0.0, seed, folds=folds, fold=fold)["validation"]
        parts.append(np.asarray(sorted(c["index"] for c in part), dtype=int))
    return parts


def inner_split(
    labels: np.ndarray, sources: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, validation)`` positions, the validation part stratified by source x label."""
    rng = np.random.default_rng(seed)
    val = []
    for key in sorted(set(zip(sources.tolist(), labels.tolist(), strict=True))):
        group = np.nonzero((sources == key[0]) & (labels == key[1]))[0]
        val += rng.permutation(group)[: max(1, round(fraction * group.size))].tolist()
    val_idx = np.asarray(sorted(val), dtype=int)
    return np.setdiff1d(np.arange(labels.size), val_idx), val_idx


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random affine of both channels, then intensity changes of the radiograph channel.

    Rotation ±10°, shift ±6%, zoom 0.9-1.1, shear ±0.05; contrast 0.85-1.15, brightness
    ±0.2 (standardised units), Gaussian noise of std 0.05.
    """
    n = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=gen)

    angle, scale = uniform(-math.pi / 18, math.pi / 18), uniform(0.9, 1.1)
    shear, tx, ty = uniform(-0.05, 0.05), uniform(-0.06, 0.06), uniform(-0.06, 0.06)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin + shear, tx], 1), torch.stack([sin, cos, ty], 1)], 1
    )
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, padding_mode="zeros", align_corners=False)
    contrast, bright = uniform(0.85, 1.15)[:, None, None], uniform(-0.2, 0.2)[:, None, None]
    noise = 0.05 * torch.randn(out[:, 0].shape, generator=gen)
    out[:, 0] = out[:, 0] * contrast + bright + noise
    out[:, 1] = (out[:, 1] > 0.5).float()
    return out


@torch.no_grad()
def predict(
    network: torch.nn.Module, crops: np.ndarray, device: Any, batch: int = 32
) -> np.ndarray:
    """Probabilities of a network for prepared crops."""
    network.eval()
    out = []
    for first in range(0, len(crops), batch):
        x = torch.as_tensor(crops[first : first + batch], dtype=torch.float32, device=device)
        out.append(torch.sigmoid(network(x)).float().cpu().reshape(-1))
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def train_network(
    crops: np.ndarray,
    labels: np.ndarray,
    sources: np.ndarray,
    settings: Settings,
    log: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """Train one CNN; return the best epoch's weights (inner-validation AUC) and the history."""
    from pipeline.tb.metrics import roc_auc
    from pipeline.tb.model import build_classifier
    from pipeline.training import select_device

    device = select_device(settings.device)
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    train_idx, val_idx = inner_split(labels, sources, settings.inner_validation, settings.seed)
    network = build_classifier(settings.network).to(device)
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, settings.epochs))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    best, best_state, history, stale = (-1.0, math.inf), None, [], 0
    for epoch in range(1, settings.epochs + 1):
        start = time.perf_counter()
        loss = _epoch(network, crops, labels, train_idx, optimizer, loss_fn, gen, settings, device)
        schedule.step()
        val_scores = predict(network, crops[val_idx], device)
        val_labels = labels[val_idx]
        val_loss = float(
            loss_fn(
                torch.logit(torch.as_tensor(val_scores).clamp(1e-6, 1 - 1e-6)),
                torch.as_tensor(val_labels, dtype=torch.float32),
            )
        )
        entry = {
            "epoch": epoch,
            "train_loss": loss,
            "val_loss": val_loss,
            "val_auc": roc_auc(val_labels, val_scores),
            "seconds": time.perf_counter() - start,
        }
        history.append(entry)
        if log:
            log(epoch, entry)
        if (entry["val_auc"], -val_loss) > (best[0], -best[1]):
            best, stale = (entry["val_auc"], val_loss), 0
            best_state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
        else:
            stale += 1
            if stale >= settings.patience:
                break
    return best_state, history


def _epoch(network, crops, labels, train_idx, optimizer, loss_fn, gen, settings, device) -> float:
    network.train()
    order = train_idx[torch.randperm(train_idx.size, generator=gen).numpy()]
    total, seen = 0.0, 0
    for first in range(0, order.size, settings.batch_size):
        idx = order[first : first + settings.batch_size]
        if idx.size < 2:  # batch norm needs two samples
            continue
        x = augment(torch.as_tensor(crops[idx], dtype=torch.float32), gen).to(device)
        y = torch.as_tensor(labels[idx], dtype=torch.float32, device=device)[:, None]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(network(x), y)
        loss.backward()
        optimizer.step()
        total, seen = total + loss.item() * idx.size, seen + idx.size
    return total / max(seen, 1)


def baseline_scores(
    features: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray
) -> np.ndarray:
    """Scores of ``test_idx`` by the feature baseline fitted on ``train_idx``.

    The baseline is :class:`~pipeline.tb.model.LogisticScorer`.
    """
    from pipeline.tb.model import LogisticScorer

    names = [str(i) for i in range(features.shape[1])]
    return LogisticScorer.fit(features[train_idx], labels[train_idx], names)(features[test_idx])


@dataclass
class CVResult:
    """Out-of-fold scores of both classifiers, the fold networks and their histories."""

    fold_of: np.ndarray
    cnn: np.ndarray
    baseline: np.ndarray
    states: list[dict[str, torch.Tensor]]
    histories: list[list[dict[str, float]]]
    settings: dict[str, Any]

    @property
    def hybrid(self) -> np.ndarray:
        """The shipped score: CNN and baseline averaged (``BASELINE_WEIGHT``)."""
        from pipeline.tb.model import BASELINE_WEIGHT

        return (1 - BASELINE_WEIGHT) * self.cnn + BASELINE_WEIGHT * self.baseline


def cross_validate(
    prepared: Prepared,
    settings: Settings,
    folds: int = 5,
    log: Callable[[int, int, dict[str, float]], None] | None = None,
    max_folds: int | None = None,
    checkpoints: Path | None = None,
) -> CVResult:
    """Train and score every fold (``max_folds`` stops early: the rest stay NaN).

    With ``checkpoints``, each finished fold's network and history are saved there and a
    rerun with the same settings and cases takes them instead of training the fold again.
    """
    n = len(prepared.names)
    fold_of = np.full(n, -1)
    cnn, baseline = np.full(n, np.nan), np.full(n, np.nan)
    states, histories = [], []
    for fold, test_idx in enumerate(fold_parts(prepared, folds, settings.seed)):
        if max_folds is not None and fold >= max_folds:
            break
        train_idx = np.setdiff1d(np.arange(n), test_idx)
        fold_log = (lambda e, m, f=fold: log(f, e, m)) if log else None
        state, history = _fold(prepared, train_idx, settings, fold_log, checkpoints, fold)
        cnn[test_idx] = _score(state, prepared.crops[test_idx], settings)
        baseline[test_idx] = baseline_scores(
            prepared.features, prepared.labels, train_idx, test_idx
        )
        fold_of[test_idx] = fold
        states.append(state)
        histories.append(history)
    return CVResult(fold_of, cnn, baseline, states, histories, asdict(settings))


def _fold(prepared, train_idx, settings, log, checkpoints, fold):
    """One fold's network and history: from its checkpoint when one matches, else trained."""
    key = {"settings": asdict(settings), "names": [prepared.names[i] for i in train_idx]}
    path = None if checkpoints is None else checkpoints / f"fold{fold}.pt"
    if path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["key"] == key:
            for entry in saved["history"] if log else []:  # this run's record has the curves too
                log(entry["epoch"], entry)
            return saved["state"], saved["history"]
    state, history = train_network(
        prepared.crops[train_idx],
        prepared.labels[train_idx],
        prepared.sources[train_idx],
        settings,
        log,
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": key, "state": state, "history": history}, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    return state, history


def _score(state: dict[str, torch.Tensor], crops: np.ndarray, settings: Settings) -> np.ndarray:
    from pipeline.tb.model import build_classifier
    from pipeline.training import select_device

    device = select_device(settings.device)
    network = build_classifier(settings.network).to(device)
    network.load_state_dict(state)
    return predict(network, crops, device)


def ensemble_state(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The fold networks' weights as one :class:`~pipeline.tb.model.Ensemble` state dict."""
    return {f"members.{i}.{k}": v for i, state in enumerate(states) for k, v in state.items()}
