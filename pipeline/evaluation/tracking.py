"""MLflow record of an evaluation: parameters, mean metrics overall and per group, outputs."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.evaluation.metrics import METRICS


def flat_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """``<metric>_mean`` overall and ``<column>.<value>.<metric>_mean`` per group (no NaN)."""
    stats = summary["statistics"]
    out = {f"{m}_mean": stats["overall"][m]["mean"] for m in METRICS}
    for column, groups in stats["groups"].items():
        for value, block in groups.items():
            out.update({f"{column}.{value}.{m}_mean": block[m]["mean"] for m in METRICS})
    return {k: float(v) for k, v in out.items() if v is not None and not math.isnan(float(v))}


def log_evaluation(
    summary: Mapping[str, Any],
    out_dir: str | os.PathLike,
    tracking_uri: str | None = None,
    experiment: str = "lungseg-evaluation",
    run_name: str | None = None,
) -> str:
    """Log one evaluation as an MLflow run; return its run id."""
    import mlflow

    from pipeline.training import default_tracking_uri

    mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
    mlflow.set_experiment(experiment)
    model = summary.get("model") or {}
    with mlflow.start_run(run_name=run_name or summary.get("title")) as run:
        mlflow.log_params(
            {
                "images": summary.get("images", ""),
                "predictions": summary.get("predictions", ""),
                "model": model.get("name", ""),
                "model_version": model.get("version", ""),
                "checkpoint_sha256": model.get("checkpoint_sha256", ""),
                "cases_evaluated": summary["cases"]["evaluated"],
                "cases_failed": summary["cases"]["failed"],
            }
        )
        mlflow.log_metrics(flat_metrics(summary))
        mlflow.log_artifacts(str(Path(out_dir)), artifact_path="evaluation")
        return run.info.run_id
