"""Run the bundle's training config: what ``lungseg train`` calls."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.inference.bundle import BUNDLE


def tracking_settings(
    bundle: Path, tracking_uri: str | None, experiment: str, run_name: str | None = None
) -> dict[str, Any]:
    """The bundle's MLflow settings (``configs/mlflow.json``) with URI, experiment, run name."""
    settings = json.loads((bundle / "configs" / "mlflow.json").read_text())
    if tracking_uri:
        settings["configs"]["tracking_uri"] = tracking_uri
    settings["configs"]["experiment_name"] = experiment
    if run_name:
        settings["configs"]["run_name"] = run_name
    return settings


def train(
    overrides: dict[str, Any],
    bundle: str | os.PathLike = BUNDLE,
    config_files: tuple[str, ...] = ("train.json",),
    mlflow: bool = True,
    tracking_uri: str | None = None,
    experiment: str = "lungseg",
    run_name: str | None = None,
) -> Any:
    """Train with the bundle's config through MONAI's ``ConfigWorkflow``.

    Args:
        overrides: config ids and values (``network_name``, ``max_epochs``, ``bundle_root``...).
        bundle: the bundle folder.
        config_files: config files under ``configs/`` merged in order (add
            ``multi_gpu_train.json`` under torchrun).
        mlflow: track the run in MLflow with the bundle's settings.
        tracking_uri: MLflow URI (default: ``$MLFLOW_TRACKING_URI`` or SQLite under ``mlruns/``).
        experiment: MLflow experiment name.
        run_name: MLflow run name (default: ``run_<date>_<time>``).

    Returns:
        ``{"epochs": ..., "best_metric": ..., "best_epoch": ...}`` of the finished run.
    """
    from monai.bundle import ConfigWorkflow

    bundle = Path(bundle)
    files = [str(bundle / "configs" / name) for name in config_files]
    tracking = tracking_settings(bundle, tracking_uri, experiment, run_name) if mlflow else None
    workflow = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        workflow_type="train",
        tracking=tracking,
        **overrides,
    )
    workflow.initialize()
    try:
        workflow.run()
        trainer = workflow.parser.get_parsed_content("train#trainer")
        validator = workflow.parser.get_parsed_content("validate#evaluator")
        return {
            "epochs": trainer.state.epoch,
            "best_metric": float(validator.state.best_metric),
            "best_epoch": int(validator.state.best_metric_epoch),
        }
    finally:
        workflow.finalize()
