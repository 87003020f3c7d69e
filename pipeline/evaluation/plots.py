"""Evaluation figures as PNG: ROC curves, Dice by group, and overlays of the worst cases.

Matplotlib draws the charts (the non-interactive Agg backend, so no display is needed); the
case overlays are drawn with numpy and Pillow: reference outline in green, prediction outline
in magenta, missed lung (false negative) tinted red and extra "lung" (false positive) tinted
blue.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.atomic import atomic_path

TRUTH_RGB = (40, 220, 40)
PRED_RGB = (230, 40, 230)
MISSED_RGB = (230, 40, 40)
EXTRA_RGB = (40, 90, 255)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Save a figure as PNG atomically and close it."""
    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def roc_figure(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
    path: Path,
    title: str = "Pixel ROC, pooled over cases",
) -> Path:
    """ROC curves ``{label: (fpr, tpr, auc)}``, linear axes."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{label} (AUC {auc:.4f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1))
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def distribution_figure(
    values: Mapping[str, Mapping[str, Sequence[float]]], metric: str, path: Path
) -> Path:
    """Box plot with the cases as points: ``{column: {group value: [metric values]}}``.

    The first panel is every case; then one panel per grouping column.
    """
    plt = pyplot()
    panels = list(values.items())
    fig, axes = plt.subplots(1, len(panels), figsize=(3 + 2.2 * len(panels), 4), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, (column, groups) in zip(axes[0], panels, strict=True):
        labels = list(groups)
        data = [np.asarray([v for v in groups[g] if v == v], dtype=float) for g in labels]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(
            range(1, len(labels) + 1),
            [f"{g}\n(n={d.size})" for g, d in zip(labels, data, strict=True)],
        )
        for i, d in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, d.size), d, s=6, alpha=0.5)
        ax.set_title(column)
        ax.set_ylabel(metric)
    fig.suptitle(f"{metric} per case", y=1.02)
    return save_figure(fig, path)


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, iterations=max(1, max(mask.shape) // 400))


def case_overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """RGB uint8 overlay of one case (see the module docstring for the colours)."""
    gray = np.asarray(image, dtype=np.float32)
    gray = (255 * (gray - gray.min()) / max(float(np.ptp(gray)), 1e-6)).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    for region, colour in ((truth & ~pred, MISSED_RGB), (pred & ~truth, EXTRA_RGB)):
        rgb[region] = 0.5 * rgb[region] + 0.5 * np.asarray(colour, np.float32)
    rgb[_outline(truth)] = TRUTH_RGB
    rgb[_outline(pred)] = PRED_RGB
    return rgb.astype(np.uint8)


def worst_cases_figure(cases: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """A grid of :func:`case_overlay` panels: ``[{name, dice, image, pred, truth}]``."""
    plt = pyplot()
    cols = min(4, max(1, len(cases)))
    rows = max(1, -(-len(cases) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, case in zip(axes.ravel(), cases, strict=False):
        ax.imshow(case_overlay(case["image"], case["pred"], case["truth"]))
        ax.set_title(f"{case['name']}\nDice {case['dice']:.3f}", fontsize=8)
    fig.suptitle(
        "Worst cases: reference green, prediction magenta, missed red, extra blue", fontsize=9
    )
    return save_figure(fig, path)
