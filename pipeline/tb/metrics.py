"""Screening metrics of TB scores, overall and per group.

ROC AUC with a bootstrap interval, sensitivity at a fixed specificity, and
accuracy/F1/sensitivity/specificity at a threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: The specificity at which the operating threshold is chosen (screening programmes' usual).
TARGET_SPECIFICITY = 0.90


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (NaN without both classes): the project's Mann-Whitney AUC."""
    from pipeline.evaluation.metrics import roc_auc as mann_whitney

    return mann_whitney(np.asarray(scores), np.asarray(labels))


def bootstrap_auc(
    labels: np.ndarray, scores: np.ndarray, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the AUC.

    Positives and negatives are resampled apart, so every resample keeps the class counts
    and has an AUC.
    """
    labels, scores = np.asarray(labels), np.asarray(scores)
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not pos.size or not neg.size:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    resampled = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    aucs = [
        roc_auc(
            resampled,
            np.r_[
                pos[rng.integers(0, pos.size, pos.size)], neg[rng.integers(0, neg.size, neg.size)]
            ],
        )
        for _ in range(resamples)
    ]
    low, high = np.percentile(aucs, [2.5, 97.5])
    return float(low), float(high)


def threshold_at_specificity(
    labels: np.ndarray, scores: np.ndarray, specificity: float = TARGET_SPECIFICITY
) -> tuple[float, float]:
    """``(threshold, sensitivity)`` of the most sensitive threshold at ``specificity`` or more.

    A score >= threshold is positive.
    """
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(labels, scores)
    ok = fpr <= 1 - specificity + 1e-12
    best = int(np.argmax(np.where(ok, tpr, -1)))
    return float(min(thresholds[best], 1.0)), float(tpr[best])


def at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, F1, sensitivity and specificity of ``score >= threshold``."""
    labels, pred = np.asarray(labels).astype(bool), np.asarray(scores) >= threshold
    tp, tn = int((pred & labels).sum()), int((~pred & ~labels).sum())
    fp, fn = int((pred & ~labels).sum()), int((~pred & labels).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {
        "accuracy": ratio(tp + tn, labels.size),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def screening_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float | None = None
) -> dict[str, Any]:
    """AUC [95% CI], sensitivity at 90% specificity, and the threshold metrics.

    Args:
        labels: 1 = TB, 0 = normal.
        scores: probabilities.
        threshold: the operating threshold (default: the one at 90% specificity here).
    """
    labels, scores = np.asarray(labels).astype(int), np.asarray(scores, dtype=float)
    out: dict[str, Any] = {"n": int(labels.size), "positives": int(labels.sum())}
    out["auc"] = roc_auc(labels, scores)
    out["auc_ci95"] = list(bootstrap_auc(labels, scores))
    both = 0 < labels.sum() < labels.size
    own, sens = threshold_at_specificity(labels, scores) if both else (float("nan"),) * 2
    out["sensitivity_at_90_specificity"] = sens
    out["threshold_at_90_specificity"] = own
    out["at_0.5"] = at_threshold(labels, scores, 0.5)
    chosen = own if threshold is None else threshold
    out["operating_threshold"] = chosen
    out["at_operating_threshold"] = at_threshold(labels, scores, chosen)
    return out


def by_group(
    labels: np.ndarray,
    scores: np.ndarray,
    groups: Sequence[str],
    threshold: float | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`screening_metrics` overall (``all``) and for each value of ``groups``."""
    groups = np.asarray(groups)
    out = {"all": screening_metrics(labels, scores, threshold)}
    chosen = out["all"]["operating_threshold"]  # the overall operating point, in every group
    for group in sorted(set(groups.tolist())):
        keep = groups == group
        out[group] = screening_metrics(np.asarray(labels)[keep], np.asarray(scores)[keep], chosen)
    return out
