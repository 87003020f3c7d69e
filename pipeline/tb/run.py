"""``lungseg tb train`` and ``lungseg tb evaluate``: files, MLflow, the packaged bundle.

``tb train`` writes into its output folder ``cv_predictions.csv`` (every case's out-of-fold
CNN and baseline scores), ``cv_summary.json``/``.md`` (metrics overall and per source, with
95% bootstrap intervals), ``roc.png``, ``history.json`` (per fold and epoch) and
``model.pt`` (the fold networks as one ensemble); with ``--package`` it also writes the TB
bundle. Every training is one MLflow run (experiment ``lungseg-tb``) with the settings, the
per-epoch curves of every fold, the metrics and those files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.atomic import write_text_atomic
from pipeline.tb.model import NOTICE
from pipeline.tb.train import CVResult, Prepared, Settings

#: The scores of a cross-validation: the CNN, the feature baseline, and their mean (shipped).
SCORES = ("cnn", "baseline", "hybrid")


def select_cases(data: str | os.PathLike, max_cases: int | None) -> list[dict[str, Any]]:
    """The labelled cases of a collection (``tuberculosis`` column required).

    With ``max_cases``, sources and labels alternate, so a prefix covers each of them.
    """
    from pipeline.training.data import datalist

    cases = datalist(data)
    missing = [c["name"] for c in cases if str(c.get("tuberculosis", "")) not in ("0", "1")]
    if missing:
        raise ValueError(
            f"{data}: {len(missing)} cases lack a tuberculosis label 0/1 "
            f"(manifest.csv column 'tuberculosis'), e.g. {missing[:3]}"
        )
    if max_cases is None or max_cases >= len(cases):
        return cases
    groups: dict[tuple, list] = {}
    for c in cases:
        groups.setdefault((c.get("source", ""), c["tuberculosis"]), []).append(c)
    order = [
        g[i] for i in range(max(map(len, groups.values()))) for g in groups.values() if i < len(g)
    ]
    return order[:max_cases]


def prepared_cases(
    cases: Sequence[dict[str, Any]], seg_bundle: Any, device: str, settings: Settings, cache: Path
) -> Prepared:
    """:func:`pipeline.tb.train.prepare`, cached in ``cache`` under the inputs' fingerprint."""
    from pipeline.inference.predictor import Predictor
    from pipeline.tb import SEG_OVERRIDES
    from pipeline.tb.train import prepare

    seg = Predictor(seg_bundle, device, SEG_OVERRIDES)
    key = hashlib.sha256(
        json.dumps(
            [
                [c["image"] for c in cases],
                seg.identity.digest,
                settings.crop_size,
                settings.crop_margin,
            ]
        ).encode()
    ).hexdigest()[:16]
    path = cache / f"prepared-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return Prepared(
                list(z["names"]),
                z["sources"],
                z["labels"],
                z["crops"],
                z["features"],
                list(z["feature_names"]),
            )
    prepared = prepare(cases, seg, settings.crop_size, settings.crop_margin)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in prepared.__dict__.items()})
    os.replace(tmp, path)
    return prepared


def summarize(prepared: Prepared, result: CVResult) -> dict[str, Any]:
    """Cross-validated metrics of both classifiers, overall and per source."""
    from pipeline.tb.metrics import by_group

    done = result.fold_of >= 0
    out: dict[str, Any] = {
        "notice": NOTICE,
        "cases": int(done.sum()),
        "folds": int(result.fold_of.max() + 1),
        "settings": result.settings,
    }
    for name in SCORES:
        scores = getattr(result, name)
        out[name] = by_group(prepared.labels[done], scores[done], prepared.sources[done])
    return out


def write_predictions(path: Path, prepared: Prepared, result: CVResult) -> None:
    """One row per case: name, source, label, fold, both out-of-fold scores."""
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "source", "tuberculosis", "fold", *(f"{s}_score" for s in SCORES)])
    columns = [getattr(result, s) for s in SCORES]
    for i, name in enumerate(prepared.names):
        if result.fold_of[i] >= 0:
            head = [name, prepared.sources[i], int(prepared.labels[i]), int(result.fold_of[i])]
            writer.writerow(head + [f"{c[i]:.6f}" for c in columns])
    write_text_atomic(path, buf.getvalue())


def read_predictions(
    path: str | os.PathLike, column: str = "hybrid_score"
) -> dict[str, np.ndarray]:
    """``labels``, ``scores``, ``sources`` and ``names`` of a predictions CSV.

    Raises:
        ValueError: a required column is missing, naming the file and the columns found.
    """
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    needed = {"name", "tuberculosis", column}
    if not rows or not needed <= set(rows[0]):
        found = sorted(rows[0]) if rows else []
        raise ValueError(f"{path}: needs columns {sorted(needed)}, found {found}")
    return {
        "names": np.asarray([r["name"] for r in rows]),
        "labels": np.asarray([int(r["tuberculosis"]) for r in rows]),
        "scores": np.asarray([float(r[column]) for r in rows]),
        "sources": np.asarray([r.get("source", "") for r in rows]),
    }


def summary_markdown(summary: dict[str, Any]) -> str:
    """The cross-validation table: per classifier and source, AUC [CI], sens@90% spec..."""
    lines = [
        f"{NOTICE}",
        "",
        f"{summary['folds']}-fold cross-validation, {summary['cases']} cases (out-of-fold scores).",
        "",
        "| classifier | cases | n (TB) | AUC [95% CI] | sensitivity at 90% specificity | "
        "accuracy | F1 | sensitivity | specificity |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in SCORES:
        for group, m in summary[name].items():
            op = m["at_operating_threshold"]
            low, high = m["auc_ci95"]
            lines.append(
                f"| {name} | {group} | {m['n']} ({m['positives']}) | {m['auc']:.3f} "
                f"[{low:.3f}, {high:.3f}] | {m['sensitivity_at_90_specificity']:.3f} | "
                f"{op['accuracy']:.3f} | {op['f1']:.3f} | {op['sensitivity']:.3f} | "
                f"{op['specificity']:.3f} |"
            )
    threshold = summary["hybrid"]["all"]["operating_threshold"]
    lines += [
        "",
        "hybrid = mean of the CNN's and the baseline's probabilities: the shipped score.",
        "Accuracy, F1, sensitivity and specificity at each classifier's threshold of 90% "
        f"specificity over all cases (the shipped one: {threshold:.4f}).",
    ]
    return "\n".join(lines) + "\n"


def roc_plot(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """ROC curves of ``{label: (labels, scores)}``."""
    from sklearn.metrics import roc_curve

    from pipeline.evaluation.plots import roc_figure
    from pipeline.tb.metrics import roc_auc

    data = {}
    for label, (y, s) in curves.items():
        fpr, tpr, _ = roc_curve(y, s)
        data[label] = (fpr, tpr, roc_auc(y, s))
    return roc_figure(data, path, title="TB ROC, out-of-fold (research only)")


def train_and_report(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: Settings,
    folds: int = 5,
    seg_bundle: Any = None,
    max_cases: int | None = None,
    max_folds: int | None = None,
    mlflow: bool = True,
    tracking_uri: str | None = None,
    experiment: str = "lungseg-tb",
    package: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Prepare, cross-validate, write the report files, log to MLflow, optionally package."""
    from pipeline.tb.train import cross_validate

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases = select_cases(data, max_cases)
    prepared = prepared_cases(cases, seg_bundle, settings.device, settings, out / "cache")
    recorder = _recorder(mlflow, tracking_uri, experiment, settings, folds, data, len(cases))
    try:
        log = None if recorder is None else _epoch_logger(recorder)
        result = cross_validate(prepared, settings, folds, log, max_folds, out / "folds")
        summary = write_outputs(out, prepared, result)
        if package:
            summary["bundle"] = str(package_bundle(package, out, summary, result))
        if recorder is not None:
            _log_results(recorder, summary, out)
    except BaseException:
        if recorder is not None:
            recorder.finish("FAILED")
        raise
    if recorder is not None:
        recorder.finish()
        summary["mlflow_run_id"] = recorder.run_id
    return summary


def write_outputs(out: Path, prepared: Prepared, result: CVResult) -> dict[str, Any]:
    """Write the cross-validation's files (see the module docstring); return the summary."""
    import torch

    from pipeline.tb.model import LogisticScorer
    from pipeline.tb.train import ensemble_state

    summary = summarize(prepared, result)
    write_predictions(out / "cv_predictions.csv", prepared, result)
    write_text_atomic(out / "cv_summary.json", json.dumps(summary, indent=2, allow_nan=False))
    write_text_atomic(out / "cv_summary.md", summary_markdown(summary))
    write_text_atomic(out / "history.json", json.dumps(result.histories, indent=1))
    done = result.fold_of >= 0
    roc_plot(
        out / "roc.png",
        {name: (prepared.labels[done], getattr(result, name)[done]) for name in SCORES},
    )
    tmp = out / ".model.pt.tmp"
    torch.save(ensemble_state(result.states), tmp)
    os.replace(tmp, out / "model.pt")
    baseline = LogisticScorer.fit(prepared.features, prepared.labels, prepared.feature_names)
    write_text_atomic(out / "baseline.json", baseline.to_json())
    return summary


def _recorder(mlflow, tracking_uri, experiment, settings, folds, data, n_cases):
    if not mlflow:
        return None
    from pipeline.evaluation.tracking import Recorder

    rec = Recorder(tracking_uri, experiment, f"tb-{settings.network}-{folds}fold", {"kind": "tb"})
    rec.params(
        {
            **settings.__dict__,
            "folds": folds,
            "data": str(data),
            "cases": n_cases,
        }
    )
    return rec


def _epoch_logger(recorder):
    def log(fold: int, epoch: int, metrics: dict[str, float]) -> None:
        values = {f"fold{fold}_{k}": v for k, v in metrics.items() if k != "epoch"}
        recorder.metrics(values, step=epoch)

    return log


def _log_results(recorder, summary: dict[str, Any], out: Path) -> None:
    flat = {}
    for name in SCORES:
        for group, m in summary[name].items():
            flat[f"{name}_{group}_auc"] = m["auc"]
            flat[f"{name}_{group}_auc_ci95_low"], flat[f"{name}_{group}_auc_ci95_high"] = m[
                "auc_ci95"
            ]
            flat[f"{name}_{group}_sens_at_90_spec"] = m["sensitivity_at_90_specificity"]
    recorder.metrics(flat)
    for name in (
        "cv_summary.json",
        "cv_summary.md",
        "cv_predictions.csv",
        "roc.png",
        "history.json",
        "model.pt",
    ):
        recorder.artifacts(out / name, "tb")


def package_bundle(
    bundle: str | os.PathLike, out: Path, summary: dict[str, Any], result: CVResult
) -> Path:
    """Write the TB bundle: configs from the template, the models, the evaluation files."""
    from pipeline.tb.model import BASELINE_WEIGHT, TB_BUNDLE

    bundle = Path(bundle)
    (bundle / "models").mkdir(parents=True, exist_ok=True)
    (bundle / "docs" / "evaluation").mkdir(parents=True, exist_ok=True)
    if bundle.resolve() != TB_BUNDLE.resolve():
        shutil.copytree(TB_BUNDLE / "configs", bundle / "configs", dirs_exist_ok=True)
    settings = result.settings
    config_path = bundle / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config.update(
        network_name=settings["network"],
        members=len(result.states),
        crop_size=settings["crop_size"],
        crop_margin=settings["crop_margin"],
        threshold=round(summary["hybrid"]["all"]["operating_threshold"], 6),
        baseline_path="$@bundle_root + '/models/baseline.json'",
        baseline_weight=BASELINE_WEIGHT,
    )
    write_text_atomic(config_path, json.dumps(config, indent=4) + "\n")
    shutil.copyfile(out / "model.pt", bundle / "models" / "model.pt")
    shutil.copyfile(out / "baseline.json", bundle / "models" / "baseline.json")
    for name in ("cv_summary.json", "cv_summary.md", "cv_predictions.csv", "roc.png"):
        shutil.copyfile(out / name, bundle / "docs" / "evaluation" / name)
    return bundle
