"""``lungseg tb evaluate``: the packaged TB model (or a scores CSV) on a labelled collection.

Reports AUC [95% CI], sensitivity at 90% specificity, the threshold
metrics per source, a ROC plot and Grad-CAM heat maps.

Evaluating the shipped model on the shared data it was trained on is optimistic by
construction; the summary says how many evaluated cases the bundle was trained on (its
``docs/evaluation/cv_predictions.csv`` lists them) and points to the cross-validated figures.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.atomic import write_text_atomic
from pipeline.tb.model import NOTICE
from pipeline.tb.run import read_predictions, roc_plot, select_cases

#: Grad-CAM target layer of each network family.
CAM_LAYERS = {"densenet": "class_layers.relu", "efficientnet": "_swish"}


def score_cases(
    cases: Sequence[dict[str, Any]], tb_model: Any, seg_model: Any, batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, crops)``: the TB score and the CNN's input of every case."""
    paths = [c["image"] for c in cases]
    from pipeline.inference.outputs import as_segmented

    inputs = [  # each radiograph upright, lungs dark, as the segmentation saw it
        tb_model.prepare(*as_segmented(p.image, p.measures, p.meta.get("view")))
        for p in seg_model.predict_from_files(paths, batch_size, keep_image=True)
    ]
    scores = np.concatenate(
        [tb_model.scores(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    )
    return scores, np.stack([x["crop"] for x in inputs]).astype(np.float32)


def grad_cam(network: Any, inputs: np.ndarray) -> np.ndarray:
    """Grad-CAM maps ``(N, S, S)`` in [0, 1], averaged over the ensemble's members."""
    import torch
    from monai.visualize import GradCAM

    maps = []
    for member in network.members:
        for module in member.modules():  # hooks cannot see through in-place activations
            if isinstance(module, torch.nn.ReLU):
                module.inplace = False
        family = "efficientnet" if hasattr(member, "_conv_head") else "densenet"
        # identity post-processing: MONAI's default normaliser maps the maximum to 0
        cam = GradCAM(member, CAM_LAYERS[family], postprocessing=lambda m: m)
        x = torch.as_tensor(inputs, dtype=torch.float32, device=next(member.parameters()).device)
        maps.append(cam(x=x).detach().cpu().numpy()[:, 0])
    out = np.mean(maps, axis=0)
    low = out.min(axis=(1, 2), keepdims=True)
    return (out - low) / np.maximum(out.max(axis=(1, 2), keepdims=True) - low, 1e-8)


def gradcam_figure(inputs: np.ndarray, maps: np.ndarray, titles: Sequence[str], path: Path) -> Path:
    """Crops with their Grad-CAM heat maps (jet, 40%) and the lung outline, one per panel."""
    from pipeline.evaluation.plots import pyplot, save_figure

    plt = pyplot()
    cols = min(3, len(inputs))
    rows = -(-len(inputs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, x, heat, title in zip(axes.ravel(), inputs, maps, titles, strict=False):
        ax.imshow(x[0], cmap="gray", vmin=-3, vmax=3)
        ax.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.contour(x[1], levels=[0.5], colors="white", linewidths=0.6)
        ax.set_title(title, fontsize=8)
    fig.suptitle("Grad-CAM of the TB ensemble (research only)", fontsize=9)
    return save_figure(fig, path)


def _cam_cases(labels: np.ndarray, scores: np.ndarray, count: int) -> list[int]:
    """The highest-scored TB cases, then the lowest-scored TB case and highest normal ones."""
    tb = [int(i) for i in np.argsort(-scores) if labels[i] == 1]
    normal = [int(i) for i in np.argsort(-scores) if labels[i] == 0]
    picks = tb[: max(1, count - 2)] + tb[-1:] + normal[:1]
    return list(dict.fromkeys(picks))[:count]


def trained_on(bundle: Path) -> set[str]:
    """Names of the cases the bundle's ensemble was trained on (empty when not recorded)."""
    path = bundle / "docs" / "evaluation" / "cv_predictions.csv"
    if not path.is_file():
        return set()
    with open(path, newline="") as fh:
        return {row["name"] for row in csv.DictReader(fh)}


def evaluate_model(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    bundle: str | os.PathLike | None = None,
    seg_bundle: str | os.PathLike | None = None,
    device: str = "auto",
    max_cases: int | None = None,
    gradcam: int = 6,
    mlflow: bool = False,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Score ``data`` with the packaged model; write the report files; return the summary."""
    from pipeline.inference.predictor import Predictor
    from pipeline.tb import SEG_OVERRIDES
    from pipeline.tb.model import TBModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases = select_cases(data, max_cases)
    tb_model = TBModel(bundle, device)
    seg_model = Predictor(seg_bundle, device, SEG_OVERRIDES)
    scores, inputs = score_cases(cases, tb_model, seg_model)
    names = [str(c["name"]) for c in cases]
    labels = np.asarray([int(c["tuberculosis"]) for c in cases])
    sources = np.asarray([str(c.get("source", "")) for c in cases])
    summary = _report(out, names, labels, scores, sources, tb_model.threshold)
    summary["model"] = tb_model.identity()
    seen = trained_on(tb_model.bundle) & set(names)
    summary["cases_in_training_data"] = len(seen)
    if seen:
        summary["warning"] = (
            f"{len(seen)} of {len(names)} cases were in the model's training data: these "
            "figures are optimistic; the cross-validated ones are in the bundle's "
            "docs/evaluation/cv_summary.json"
        )
    if gradcam:
        picks = _cam_cases(labels, scores, gradcam)
        maps = grad_cam(tb_model.network, inputs[picks])
        titles = [f"{'TB' if labels[i] else 'normal'} · score {scores[i]:.2f}" for i in picks]
        gradcam_figure(inputs[picks], maps, titles, out / "gradcam.png")
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
    if mlflow:
        _log(summary, out, tracking_uri)
    return summary


def evaluate_predictions(
    path: str | os.PathLike, out_dir: str | os.PathLike, column: str = "hybrid_score"
) -> dict[str, Any]:
    """Metrics of the scores in a predictions CSV (e.g. ``cv_predictions.csv``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = read_predictions(path, column)
    summary = _report(out, list(p["names"]), p["labels"], p["scores"], p["sources"], None)
    summary["predictions"] = {"file": str(path), "column": column}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
    return summary


def _report(out, names, labels, scores, sources, threshold) -> dict[str, Any]:
    from pipeline.tb.metrics import by_group

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "source", "tuberculosis", "tb_score"])
    writer.writerows(
        [n, s, int(y), f"{v:.6f}"]
        for n, s, y, v in zip(names, sources, labels, scores, strict=True)
    )
    write_text_atomic(out / "predictions.csv", buf.getvalue())
    roc_plot(out / "roc.png", {"TB score": (labels, scores)})
    return {
        "notice": NOTICE,
        "cases": len(names),
        "metrics": by_group(labels, scores, sources, threshold),
    }


def evaluation_markdown(summary: dict[str, Any]) -> str:
    """The evaluation as a Markdown table (per source)."""
    lines = [NOTICE, ""]
    if summary.get("warning"):
        lines += [f"**Warning:** {summary['warning']}.", ""]
    lines += [
        "| cases | n (TB) | AUC [95% CI] | sensitivity at 90% specificity | threshold | "
        "accuracy | F1 | sensitivity | specificity |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for group, m in summary["metrics"].items():
        op, (low, high) = m["at_operating_threshold"], m["auc_ci95"]
        lines.append(
            f"| {group} | {m['n']} ({m['positives']}) | {m['auc']:.3f} [{low:.3f}, {high:.3f}] "
            f"| {m['sensitivity_at_90_specificity']:.3f} | {m['operating_threshold']:.4f} | "
            f"{op['accuracy']:.3f} | {op['f1']:.3f} | {op['sensitivity']:.3f} | "
            f"{op['specificity']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _log(summary: dict[str, Any], out: Path, tracking_uri: str | None) -> None:
    from pipeline.evaluation.tracking import Recorder

    rec = Recorder(tracking_uri, "lungseg-tb", "tb-evaluate", {"kind": "tb-evaluation"})
    try:
        rec.params({"cases": summary["cases"], "model": summary.get("model", {}).get("name", "")})
        rec.metrics(
            {f"{g}_auc": m["auc"] for g, m in summary["metrics"].items()}
            | {
                f"{g}_sens_at_90_spec": m["sensitivity_at_90_specificity"]
                for g, m in summary["metrics"].items()
            }
        )
        rec.artifacts(out, "tb-evaluation")
    except BaseException:
        rec.finish("FAILED")
        raise
    rec.finish()
