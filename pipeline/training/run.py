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


#: ``lungseg train`` options and the bundle config ids they set.
TRAIN_OPTIONS = {
    "data": "dataset_dir",
    "network": "network_name",
    "pretrained": "pretrained",
    "epochs": "max_epochs",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "loss": "loss_name",
    "optimizer": "optimizer_name",
    "scheduler": "scheduler_name",
    "image_size": "image_size",
    "clahe": "clahe",
    "tophat": "tophat",
    "augmentation": "augmentation",
    "max_cases": "max_cases",
    "resume": "resume",
    "init": "init_weights",
    "device": "device_name",
    "seed": "seed",
    "workers": "num_workers",
    "early_stop": "early_stop_patience",
    "lung_field": "lung_field",
    "lung_field_cases": "lung_field_cases",
    "anatomical_repeat": "anatomical_repeat",
}
#: Options holding paths, made absolute (training runs from the bundle's folder).
_PATH_IDS = ("dataset_dir", "pretrained", "resume", "init_weights", "lung_field_cases")


def split_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The ``split`` config entry from ``lungseg train`` options (a split file wins).

    The split's seed is ``split_seed`` (default 0), never the training ``seed``: trainings
    of several seeds must share one test part (until 0.5.0 ``--seed S`` also re-drew the
    split, so seeds 1 and 2 of the 0.3.0/0.4.x ensembles trained on most of the seed-0 test
    cases).
    """
    if options.get("split_file"):
        return {"split_file": str(Path(options["split_file"]).resolve())}
    return {
        "val_fraction": options["val_fraction"],
        "test_fraction": options["test_fraction"],
        "seed": options.get("split_seed") or 0,
        "folds": options["folds"],
        "fold": options["fold"],
    }


def overrides_from_options(options: dict[str, Any]) -> dict[str, Any]:
    """Bundle config overrides from ``lungseg train`` options."""
    out = {cfg: options[opt] for opt, cfg in TRAIN_OPTIONS.items() if options.get(opt) is not None}
    for key in _PATH_IDS:
        value = out.get(key)
        if value is not None and "://" not in str(value) and value != "imagenet":
            out[key] = str(Path(value).resolve())
    return out | {"split": split_settings(options)}


def train_from_options(options: dict[str, Any], extra: dict[str, Any]) -> tuple[Any, Path]:
    """``lungseg train``: options to overrides, then :func:`train`; returns result and folder.

    Args:
        options: the parsed command line (``vars(args)``).
        extra: ``--set`` items (config id -> value).
    """
    output = Path(options.get("output") or f"outputs/train/{options['network']}").resolve()
    overrides = overrides_from_options(options)
    overrides.update(bundle_root=str(output), progress=not options.get("no_progress"))
    overrides.update(extra)
    files = (
        ("train.json", "multi_gpu_train.json") if options.get("distributed") else ("train.json",)
    )
    result = train(
        overrides,
        bundle=options.get("bundle") or BUNDLE,
        config_files=files,
        mlflow=not options.get("no_mlflow"),
        tracking_uri=options.get("tracking_uri"),
        experiment=options.get("experiment", "lungseg"),
    )
    return result, output
