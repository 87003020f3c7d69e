"""MLflow records of evaluations and protocols, through an explicit ``MlflowClient``.

The fluent API (``mlflow.set_experiment``/``start_run``) keeps a process-wide active
experiment; an evaluation logged that way would make the next MONAI ``MLFlowHandler`` in the
same process (a protocol's next training) fail with "active experiment ID does not match".
A client touches no global state.
"""

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
    return _finite(out)


def _finite(values: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and not math.isnan(float(v))}


class Recorder:
    """One MLflow run, created in ``experiment`` (made with the project's artifact location).

    Args:
        tracking_uri: MLflow URI (default: ``$MLFLOW_TRACKING_URI`` or SQLite under mlruns/).
        experiment: experiment name.
        run_name: the run's name.
        tags: tags to set.
    """

    def __init__(
        self,
        tracking_uri: str | None,
        experiment: str,
        run_name: str | None,
        tags: Mapping[str, str] | None = None,
    ):
        import mlflow

        from pipeline.training import default_artifact_location, default_tracking_uri

        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())
        found = self.client.get_experiment_by_name(experiment)
        exp_id = (
            found.experiment_id
            if found
            else self.client.create_experiment(experiment, default_artifact_location())
        )
        run = self.client.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
        self.run_id = run.info.run_id

    def params(self, values: Mapping[str, Any]) -> None:
        """Log parameters (as strings)."""
        for key, value in values.items():
            self.client.log_param(self.run_id, key, str(value))

    def metrics(self, values: Mapping[str, Any], step: int | None = None) -> None:
        """Log the finite metrics (at ``step``, e.g. an epoch, when given)."""
        for key, value in _finite(values).items():
            self.client.log_metric(self.run_id, key, value, step=step)

    def artifacts(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Log a file or a folder."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        """Close the run."""
        self.client.set_terminated(self.run_id, status)


def log_evaluation(
    summary: Mapping[str, Any],
    out_dir: str | os.PathLike,
    tracking_uri: str | None = None,
    experiment: str = "lungseg-evaluation",
    run_name: str | None = None,
) -> str:
    """Log one evaluation as an MLflow run; return its run id."""
    model = summary.get("model") or {}
    rec = Recorder(
        tracking_uri, experiment, run_name or summary.get("title"), {"kind": "evaluation"}
    )
    try:
        rec.params(
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
        rec.metrics(flat_metrics(summary))
        rec.artifacts(out_dir, "evaluation")
    except BaseException:
        rec.finish("FAILED")
        raise
    rec.finish()
    return rec.run_id
