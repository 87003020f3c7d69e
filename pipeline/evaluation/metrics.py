"""Per-case segmentation metrics of a binary lung mask against the reference mask.

Overlap and confusion metrics come from MONAI (``compute_dice``, ``compute_iou``,
``get_confusion_matrix``/``compute_confusion_matrix_metric``, and the edge search and surface
distances behind ``compute_hausdorff_distance``/``compute_average_surface_distance``; the AUC
is the Mann-Whitney statistic ``compute_roc_auc`` computes, vectorised); this module fixes what
MONAI leaves undefined, so that no case gives NaN where a value makes sense:

- **A ratio whose denominator is zero** (precision with an empty prediction, recall with an
  empty reference, specificity of an all-lung reference, Dice/IoU/F1 of two empty masks) is
  1.0 when prediction and reference are identical and 0.0 otherwise.
- **Boundary distances** (HD95, ASSD): 0 when both masks are empty; when exactly one is empty,
  the image diagonal (the largest distance possible on that image), so a missed lung weighs
  as the worst possible boundary, not as a gap in the statistics.
- **AUC** of the probability map needs lung and background pixels in the reference; without
  both it is NaN, written as an empty cell and left out of the statistics (their ``n`` says
  how many cases had it). Likewise the relative area error of an empty reference.
- Distances in millimetres and areas in mm² are NaN (empty cells) when the pixel spacing is
  unknown.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

#: Per-case columns, in report order (``per_case.csv`` adds the case name and groups).
METRICS = (
    "dice",
    "iou",
    "precision",
    "recall",
    "specificity",
    "accuracy",
    "f1",
    "auc",
    "hd95_px",
    "assd_px",
    "hd95_mm",
    "assd_mm",
    "pred_area_px",
    "truth_area_px",
    "area_error_px",
    "area_error_pct",
    "pred_area_mm2",
    "truth_area_mm2",
    "area_error_mm2",
)
#: Confusion counts per case (pixels), summed into the pooled confusion matrix.
COUNTS = ("tp", "fp", "fn", "tn")
#: Metrics where lower is better (everything else: higher is better, areas excepted).
LOWER_IS_BETTER = frozenset({"hd95_px", "assd_px", "hd95_mm", "assd_mm"})


def _batch(mask: np.ndarray) -> torch.Tensor:
    """``rows x columns`` to MONAI's ``(batch, channel, rows, columns)`` float tensor."""
    return torch.as_tensor(np.ascontiguousarray(mask), dtype=torch.float32)[None, None]


def _defined(value: float, identical: bool) -> float:
    """MONAI's value, or the rule of this module when MONAI divided zero by zero."""
    return (1.0 if identical else 0.0) if math.isnan(value) else value


def overlap_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice, IoU, precision, recall, specificity, accuracy, F1 and the confusion counts."""
    from monai.metrics import (
        compute_confusion_matrix_metric,
        compute_dice,
        compute_iou,
        get_confusion_matrix,
    )

    p, t = _batch(pred), _batch(truth)
    identical = bool(np.array_equal(pred, truth))
    out = {
        "dice": float(compute_dice(p, t, ignore_empty=False)),
        "iou": float(compute_iou(p, t, ignore_empty=False)),
    }
    cm = get_confusion_matrix(p, t)
    for name, monai_name in (
        ("precision", "precision"),
        ("recall", "recall"),
        ("specificity", "specificity"),
        ("accuracy", "accuracy"),
        ("f1", "f1 score"),
    ):
        out[name] = _defined(float(compute_confusion_matrix_metric(monai_name, cm)), identical)
    tp, fp, tn, fn = (int(v) for v in cm[0, 0])
    out.update(tp=tp, fp=fp, fn=fn, tn=tn)
    return out


def boundary_metrics(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None
) -> dict[str, float]:
    """HD95 and average symmetric surface distance, in pixels and (with spacing) in mm."""
    hd95, assd = _distances(pred, truth, None)
    out = {"hd95_px": hd95, "assd_px": assd, "hd95_mm": math.nan, "assd_mm": math.nan}
    if spacing is not None:
        sr, sc = float(spacing[0]), float(spacing[1])
        hd95, assd = (hd95 * sr, assd * sr) if sr == sc else _distances(pred, truth, (sr, sc))
        out.update(hd95_mm=hd95, assd_mm=assd)
    return out


def _distances(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None
) -> tuple[float, float]:
    """(HD95, ASSD) from one MONAI edge search and surface-distance computation.

    The same values as ``compute_hausdorff_distance(percentile=95)`` and
    ``compute_average_surface_distance(symmetric=True)``, which each search the edges anew.
    """
    from monai.metrics.utils import get_edge_surface_distance

    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return 0.0, 0.0
    if has_pred != has_truth:
        sr, sc = (1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1]))
        diagonal = math.hypot(pred.shape[0] * sr, pred.shape[1] * sc)
        return diagonal, diagonal
    with warnings.catch_warnings():  # MONAI's own deprecation notice inside get_mask_edges
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        _, distances, _ = get_edge_surface_distance(
            torch.as_tensor(pred),
            torch.as_tensor(truth),
            spacing=None if spacing is None else tuple(float(s) for s in spacing),
            symmetric=True,
        )
    hd95 = max(float(torch.quantile(d.float(), 0.95)) for d in distances)
    return hd95, float(torch.cat(distances).float().mean())


def roc_auc(prob: np.ndarray | None, truth: np.ndarray) -> float:
    """Pixel-wise ROC AUC of the probability map (NaN without both classes or without a map).

    The Mann-Whitney statistic with tied scores counted half, which is what MONAI's
    ``compute_roc_auc`` computes, in one sort (MONAI's loop takes ~10x longer on a radiograph).
    """
    if prob is None or truth.all() or not truth.any():
        return math.nan
    scores = np.asarray(prob, dtype=np.float64).ravel()
    lung = np.asarray(truth).ravel() > 0
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # average rank of each run of tied scores (1-based)
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    ranks = np.empty(scores.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    n_pos, n_neg = int(lung.sum()), int((~lung).sum())
    u = ranks[lung].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def area_metrics(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None
) -> dict[str, float]:
    """Predicted and reference lung areas and the error, in pixels, % and (with spacing) mm²."""
    pa, ta = int(pred.sum()), int(truth.sum())
    pixel_mm2 = math.nan if spacing is None else float(spacing[0]) * float(spacing[1])
    return {
        "pred_area_px": pa,
        "truth_area_px": ta,
        "area_error_px": pa - ta,
        "area_error_pct": 100.0 * (pa - ta) / ta if ta else math.nan,
        "pred_area_mm2": pa * pixel_mm2,
        "truth_area_mm2": ta * pixel_mm2,
        "area_error_mm2": (pa - ta) * pixel_mm2,
    }


def case_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    prob: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
) -> dict[str, float]:
    """Every metric of :data:`METRICS` and the confusion counts for one case.

    Args:
        pred: predicted mask, ``rows x columns``, boolean (or 0/1).
        truth: reference mask of the same shape.
        prob: lung probability map of the same shape (for the AUC), or None.
        spacing: pixel spacing (row, column) in mm, or None when unknown.

    Raises:
        ValueError: shapes differ (the message gives both).
    """
    pred, truth = np.asarray(pred) > 0, np.asarray(truth) > 0
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f"prediction {pred.shape} and reference {truth.shape} must be equal 2-D")
    if prob is not None and np.shape(prob) != truth.shape:
        raise ValueError(f"probability map {np.shape(prob)} differs from the mask {truth.shape}")
    if spacing is not None and (len(spacing) != 2 or not all(s > 0 for s in spacing)):
        raise ValueError(f"pixel spacing {spacing!r} must be two positive numbers (mm)")
    out = overlap_metrics(pred, truth)
    out["auc"] = roc_auc(prob, truth)
    out.update(boundary_metrics(pred, truth, spacing))
    out.update(area_metrics(pred, truth, spacing))
    return out


class RocAccumulator:
    """The pooled pixel ROC curve of many cases, from histograms of the probability.

    Pixels are counted in ``bins`` equal probability bins per class, so the memory is constant
    however many cases there are; the curve has one point per bin edge.
    """

    def __init__(self, bins: int = 1000):
        self.bins = bins
        self.positive = np.zeros(bins, dtype=np.int64)
        self.negative = np.zeros(bins, dtype=np.int64)

    def add(self, prob: np.ndarray, truth: np.ndarray) -> None:
        """Count one case's pixels."""
        idx = np.clip((np.asarray(prob, dtype=np.float64) * self.bins).astype(np.int64), 0, None)
        idx = np.minimum(idx, self.bins - 1).ravel()
        lung = np.asarray(truth).ravel() > 0
        self.positive += np.bincount(idx[lung], minlength=self.bins)
        self.negative += np.bincount(idx[~lung], minlength=self.bins)

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """``(false positive rate, true positive rate)`` from threshold 1 down to 0."""
        tp = np.concatenate([[0], np.cumsum(self.positive[::-1])])
        fp = np.concatenate([[0], np.cumsum(self.negative[::-1])])
        return fp / max(fp[-1], 1), tp / max(tp[-1], 1)

    def auc(self) -> float:
        """Area under :meth:`curve` (trapezoids); NaN when a class has no pixel."""
        if not self.positive.any() or not self.negative.any():
            return math.nan
        fpr, tpr = self.curve()
        return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
