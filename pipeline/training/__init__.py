"""Training: datalists and splits, factories and handlers used by the bundle's train config.

MLflow's usage telemetry is switched off unless the user set ``MLFLOW_DISABLE_TELEMETRY``:
clinical sites run offline and nothing here should call out.
"""

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from pipeline.training.setup import (
    build_optimizer,
    build_scheduler,
    default_artifact_location,
    default_tracking_uri,
    initialise,
    is_rank0,
    prepare_trainer,
    select_device,
)

__all__ = [
    "build_optimizer",
    "build_scheduler",
    "default_artifact_location",
    "default_tracking_uri",
    "initialise",
    "is_rank0",
    "prepare_trainer",
    "select_device",
]
