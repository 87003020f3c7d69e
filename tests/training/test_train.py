"""Training through the bundle's config on real cases: loss, checkpoints, MLflow, resume, DDP."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow
import pytest
import torch

from pipeline.cli import EXIT_OK, main
from pipeline.training.run import train
from tests.conftest import torchrun

pytestmark = pytest.mark.slow

TINY = {"max_cases": 16, "batch_size": 4, "image_size": 128, "cache_workers": 0, "progress": False}


@pytest.fixture()
def tracking(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return uri


def _runs(experiment: str):
    return mlflow.search_runs(experiment_names=[experiment], order_by=["start_time ASC"])


def test_two_epochs_lower_the_loss_and_log_everything(tmp_path, data_dir, tracking):
    result = train(
        {**TINY, "dataset_dir": str(data_dir), "max_epochs": 3, "bundle_root": str(tmp_path)},
        tracking_uri=tracking,
        experiment="t1",
    )
    assert result["epochs"] == 3 and 0 < result["best_metric"] <= 1
    assert (tmp_path / "models" / "model.pt").is_file() and (
        tmp_path / "models" / "last.pt"
    ).is_file()
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.endswith("weight") for k in state)

    (run,) = _runs("t1").itertuples()
    client = mlflow.MlflowClient()
    losses = [
        m.value
        for m in sorted(client.get_metric_history(run.run_id, "train_loss"), key=lambda m: m.step)
    ]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert len(client.get_metric_history(run.run_id, "val_mean_dice")) == 3
    data = client.get_run(run.run_id).data
    assert data.params["network"] == "res_unet" and data.params["train_cases"] == "16"
    assert len(data.tags["git_commit"]) == 40 and len(data.tags["dataset_fingerprint"]) == 16
    artifacts = {a.path for a in client.list_artifacts(run.run_id)}
    assert {"learning_curve.png", "overlays", "checkpoint"} <= artifacts
    assert any(p.startswith("config_") and p.endswith(".json") for p in artifacts)
    assert mlflow.search_logged_models(experiment_ids=[run.experiment_id]).shape[0] == 1


def test_resume_continues_from_the_saved_epoch(tmp_path, data_dir):
    base = {**TINY, "dataset_dir": str(data_dir), "bundle_root": str(tmp_path)}
    assert train({**base, "max_epochs": 1}, mlflow=False)["epochs"] == 1
    last = tmp_path / "models" / "last.pt"

    def saved_epoch() -> int:
        state = torch.load(last, map_location="cpu", weights_only=True)["trainer"]
        return state["iteration"] // state["epoch_length"]

    assert saved_epoch() == 1
    result = train({**base, "max_epochs": 2, "resume": str(last)}, mlflow=False)
    assert result["epochs"] == 2 and saved_epoch() == 2


def _tiny_train_args(data_dir, out, batch: int) -> list[str]:
    """``lungseg train`` arguments for a one-epoch run on 8 cases at 64², no progress bar."""
    return [
        "train", "--data", str(data_dir), "--max-cases", "8", "--epochs", "1",
        "--batch-size", str(batch), "--image-size", "64", "--no-progress",
        "-o", str(out), "--set", "cache_workers=0",
    ]  # fmt: skip


def test_cli_train(tmp_path, data_dir, capsys):
    argv = [*_tiny_train_args(data_dir, tmp_path, batch=4), "--no-mlflow"]
    assert main(argv) == EXIT_OK
    assert "trained 1 epochs; best validation Dice" in capsys.readouterr().out
    assert (tmp_path / "models" / "model.pt").is_file()


def test_torchrun_two_cpu_processes(tmp_path, data_dir, tracking):
    args = [*_tiny_train_args(data_dir, tmp_path, batch=2)[1:], "--experiment", "ddp"]
    cmd = torchrun("pipeline.cli", "train", "--distributed", *args)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (Path(tmp_path) / "models" / "model.pt").is_file()
    assert len(_runs("ddp")) == 1  # only rank 0 logs


def test_training_seed_does_not_redraw_the_split():
    from pipeline.training.run import split_settings

    options = {"val_fraction": 0.15, "test_fraction": 0.15, "folds": 0, "fold": 0}
    assert split_settings({**options, "seed": 2})["seed"] == 0
    assert split_settings({**options, "seed": 2, "split_seed": 5})["seed"] == 5


def test_cli_train_refuses_an_unknown_lung_field(capsys):
    with pytest.raises(SystemExit) as err:
        main(["train", "--lung-field", "whole"])
    assert err.value.code == 2 and "visible" in capsys.readouterr().err


def test_cli_trains_towards_the_anatomical_field_with_the_ignore_map(
    tmp_path, data_dir, monkeypatch
):
    from pipeline.io.datasets import REPO_ROOT
    from pipeline.losses import IgnoreDiceCELoss

    seen = []
    forward = IgnoreDiceCELoss.forward

    def spy(self, input, target):
        seen.append((tuple(target.shape), float(target[:, 1].sum())))
        return forward(self, input, target)

    monkeypatch.setattr(IgnoreDiceCELoss, "forward", spy)
    cases = REPO_ROOT / "data" / "splits" / "montgomery-shenzhen-lung-field.json"
    argv = [*_tiny_train_args(data_dir, tmp_path, batch=4), "--no-mlflow"]
    argv += ["--lung-field", "anatomical", "--lung-field-cases", str(cases)]
    assert main([*argv, "--anatomical-repeat", "2"]) == EXIT_OK
    assert seen and all(shape[1] == 2 for shape, _ in seen)  # label + ignore map
    assert sum(ignored for _, ignored in seen) > 0  # visible-convention masks ignore some
