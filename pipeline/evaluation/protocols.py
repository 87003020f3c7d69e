"""Evaluation protocols: k-fold cross-validation and cross-dataset generalisation.

Each protocol trains with the bundle's ``train.json`` (as ``lungseg train`` does), evaluates
the best checkpoint with the bundle's ``inference.json`` (as ``lungseg evaluate`` does) and
records everything in MLflow: every training is its own run (the bundle's MLflow handlers), and
one protocol run holds the per-fold or per-direction metrics, the aggregate and the evaluation
outputs as artifacts.

- **k-fold**: the fixed test part is left out; the other cases are dealt into ``k`` folds per
  stratum (source x tuberculosis); fold ``i`` trains on the rest and is evaluated on fold
  ``i``. Every non-test case is evaluated once, by the model that did not see it.
- **cross-dataset**: train on every case of one source (15% of it held out for validation and
  checkpoint choice) and evaluate on every case of the other; both directions.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Config ids of ``train.json`` that also shape ``inference.json`` (the evaluated model must be
#: built the way it was trained).
SHARED_IDS = ("network_name", "image_size", "clahe", "tophat", "network_kwargs", "lung_field")
#: Metrics logged per fold/direction and aggregated.
LOGGED = ("dice", "iou", "precision", "recall", "specificity", "auc", "hd95_px", "assd_px")


def _train_and_evaluate(
    name: str,
    data: Path,
    out_dir: Path,
    split: dict[str, Any],
    eval_select: set[str],
    train_overrides: Mapping[str, Any],
    tracking: Mapping[str, Any],
    device: str,
) -> dict[str, Any]:
    """Train one model and evaluate its best checkpoint on ``eval_select``; return the summary."""
    from pipeline.evaluation.run import evaluate
    from pipeline.training.run import train

    run_dir = out_dir / name
    overrides = {
        "dataset_dir": str(data),
        "bundle_root": str(run_dir),
        "split": split,
        "device_name": device,
        **train_overrides,
    }
    result = train(
        overrides,
        mlflow=tracking["enabled"],
        tracking_uri=tracking["uri"],
        experiment=tracking["experiment"],
        run_name=f"{tracking['name']}-{name}",
    )
    # this run's checkpoint alone (not with the shipped bundle's ensemble members), in the
    # lung field it was trained for (train.json's default: visible)
    model = {"ckpt_path": str(run_dir / "models" / "model.pt"), "ensemble": [],
             "lung_field": "visible"}  # fmt: skip
    model.update({k: v for k, v in train_overrides.items() if k in SHARED_IDS})
    summary = evaluate(
        data / "images",
        data / "masks",
        run_dir / "evaluation",
        manifest=_manifest(data),
        device=device,
        select=eval_select,
        title=f"{tracking['name']} {name}",
        overrides=model,
    )
    summary["training"] = result
    return summary


def _manifest(data: Path) -> Path | None:
    path = data / "manifest.csv"
    return path if path.is_file() else None


def _names(data: Path, part: str, **kwargs: Any) -> set[str]:
    from pipeline.training.data import load_split

    return {str(item["name"]) for item in load_split(data, part, **kwargs)}


def kfold(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    folds: int = 5,
    train_overrides: Mapping[str, Any] | None = None,
    device: str = "auto",
    mlflow: bool = True,
    tracking_uri: str | None = None,
    experiment: str = "lungseg-protocols",
    max_folds: int | None = None,
    max_eval_cases: int | None = None,
) -> dict[str, Any]:
    """k-fold cross-validation (see the module docstring).

    Args:
        data: the collection.
        out_dir: one folder per fold (checkpoints, evaluation) and ``protocol.json``/``.md``.
        folds: number of folds (at least 2).
        train_overrides: ``train.json`` config ids (``max_epochs``, ``network_name``...).
        device: ``auto``, ``cpu``, ``cuda``...
        mlflow: record the trainings and the protocol in MLflow.
        tracking_uri: MLflow URI (default: SQLite under ``mlruns/``).
        experiment: MLflow experiment.
        max_folds: run only the first folds (a reduced setting for tests).
        max_eval_cases: evaluate on at most this many cases of each fold (reduced setting).

    Returns:
        ``{"protocol", "folds": [{fold, cases, dice...}], "pooled": summary of every case}``.

    Raises:
        ValueError: fewer than 2 folds.
    """
    if folds < 2:
        raise ValueError(f"folds {folds!r} must be at least 2")
    data, out = Path(data), Path(out_dir)
    tracking = _tracking(mlflow, tracking_uri, experiment, f"kfold{folds}")
    runs = {}
    for fold in range(min(folds, max_folds or folds)):
        split = {"folds": folds, "fold": fold}
        held_out = sorted(_names(data, "validation", **split))[:max_eval_cases]
        runs[f"fold{fold}"] = _train_and_evaluate(
            f"fold{fold}",
            data,
            out,
            split,
            set(held_out),
            dict(train_overrides or {}),
            tracking,
            device,
        )
    params = {"folds": folds, "data": str(data), "device": device, **dict(train_overrides or {})}
    return _finish("kfold", out, runs, tracking, params)


def cross_dataset(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    directions: Sequence[tuple[str, str]] = (
        ("shenzhen", "montgomery"),
        ("montgomery", "shenzhen"),
    ),
    train_overrides: Mapping[str, Any] | None = None,
    device: str = "auto",
    mlflow: bool = True,
    tracking_uri: str | None = None,
    experiment: str = "lungseg-protocols",
    column: str = "source",
    max_eval_cases: int | None = None,
) -> dict[str, Any]:
    """Train on one source, evaluate on another, for each ``(train, test)`` direction.

    Args:
        data: the collection.
        out_dir: one folder per direction (checkpoints, evaluation) and ``protocol.json``/``.md``.
        directions: ``(train on, test on)`` values of ``column``.
        train_overrides: ``train.json`` config ids (``max_epochs``, ``network_name``...).
        device: ``auto``, ``cpu``, ``cuda``...
        mlflow: record the trainings and the protocol in MLflow.
        tracking_uri: MLflow URI (default: SQLite under ``mlruns/``).
        experiment: MLflow experiment.
        column: the manifest column naming the dataset.
        max_eval_cases: evaluate on at most this many cases of the target (reduced setting).
    """
    data, out = Path(data), Path(out_dir)
    tracking = _tracking(mlflow, tracking_uri, experiment, "cross-dataset")
    runs = {}
    for train_on, test_on in directions:
        split = {"where": {column: train_on}, "val_fraction": 0.15, "test_fraction": 0.0}
        target = sorted(
            _names(data, "train", where={column: test_on}, val_fraction=0.0, test_fraction=0.0)
        )[:max_eval_cases]
        if not target:
            raise ValueError(f"no case has {column} = {test_on!r} in {data}")
        runs[f"{train_on}-to-{test_on}"] = _train_and_evaluate(
            f"{train_on}-to-{test_on}",
            data,
            out,
            split,
            set(target),
            dict(train_overrides or {}),
            tracking,
            device,
        )
    params = {"column": column, "data": str(data), "device": device, **dict(train_overrides or {})}
    return _finish("cross-dataset", out, runs, tracking, params)


def _tracking(enabled: bool, uri: str | None, experiment: str, name: str) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%d_%H%M%S")
    return {"enabled": enabled, "uri": uri, "experiment": experiment, "name": f"{name}-{stamp}"}


def _finish(
    protocol: str,
    out: Path,
    runs: Mapping[str, dict[str, Any]],
    tracking: Mapping[str, Any],
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """Aggregate the runs, write ``protocol.json`` and ``protocol.md``, log to MLflow."""
    rows = {name: _row(s) for name, s in runs.items()}
    result = {"protocol": protocol, "params": dict(params), "runs": rows}
    if protocol == "kfold":
        result["across_folds"] = _across(rows.values())
    from pipeline.evaluation.tables import protocol_markdown
    from pipeline.io.atomic import write_text_atomic

    write_text_atomic(out / "protocol.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(out / "protocol.md", protocol_markdown(result))
    if tracking["enabled"]:
        _log_protocol(result, out, tracking)
    return result


def _row(summary: Mapping[str, Any]) -> dict[str, Any]:
    stats = summary["statistics"]["overall"]
    row = {"cases": summary["cases"]["evaluated"], "failed": summary["cases"]["failed"]}
    for metric in LOGGED:
        s = stats[metric]
        row[metric] = s["mean"]
        row[f"{metric}_ci95"] = [s["ci95_low"], s["ci95_high"]]
    row["best_validation_dice"] = summary["training"]["best_metric"]
    row["epochs"] = summary["training"]["epochs"]
    return row


def _across(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    import numpy as np

    out = {}
    for metric in LOGGED:
        vals = np.asarray([r[metric] for r in rows if r[metric] is not None], dtype=float)
        out[metric] = {
            "mean": float(vals.mean()) if vals.size else None,
            "std": float(vals.std(ddof=1)) if vals.size > 1 else 0.0,
        }
    return out


def _log_protocol(result: Mapping[str, Any], out: Path, tracking: Mapping[str, Any]) -> None:
    from pipeline.evaluation.tracking import Recorder

    rec = Recorder(
        tracking["uri"], tracking["experiment"], tracking["name"], {"protocol": result["protocol"]}
    )
    try:
        rec.params(result["params"])
        for name, row in result["runs"].items():
            rec.metrics({f"{name}.{m}": row[m] for m in LOGGED if row[m] is not None})
        for metric, agg in result.get("across_folds", {}).items():
            rec.metrics({f"mean.{metric}": agg["mean"], f"std.{metric}": agg["std"]})
        rec.artifacts(out / "protocol.json")
        rec.artifacts(out / "protocol.md")
        for name in result["runs"]:
            rec.artifacts(out / name / "evaluation", f"{name}/evaluation")
    except BaseException:
        rec.finish("FAILED")
        raise
    rec.finish()
