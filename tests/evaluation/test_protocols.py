"""Protocols end to end in a reduced setting (tiny trainings), with MLflow."""

from __future__ import annotations

import json

import mlflow
import pytest

from pipeline.cli import main

TINY = ["--epochs", "1", "--max-cases", "8", "--image-size", "64", "--set", "cache_workers=0"]


def runs_of(uri: str, experiment: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


@pytest.mark.slow
def test_cross_dataset_protocol_trains_on_one_source_and_tests_on_the_other(
    tmp_path, data_dir, capsys
):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "cross"
    args = [
        "protocol",
        "cross-dataset",
        "-o",
        str(out),
        "--data",
        str(data_dir),
        *TINY,
        "--max-eval-cases",
        "3",
        "--device",
        "cpu",
        "--tracking-uri",
        uri,
        "--no-progress",
    ]
    assert main(args) == 0
    assert "| shenzhen-to-montgomery | 3 | 1 |" in capsys.readouterr().out
    result = json.loads((out / "protocol.json").read_text())
    assert list(result["runs"]) == ["shenzhen-to-montgomery", "montgomery-to-shenzhen"]
    for direction, target in (
        ("shenzhen-to-montgomery", "MCUCXR"),
        ("montgomery-to-shenzhen", "CHNCXR"),
    ):
        rows = (out / direction / "evaluation" / "per_case.csv").read_text().splitlines()[1:]
        assert len(rows) == 3 and all(r.startswith(target) for r in rows)  # only the other set
        assert (out / direction / "models" / "model.pt").is_file()
    runs = {r.info.run_name: r for r in runs_of(uri, "lungseg-protocols")}
    assert len(runs) == 3  # two trainings and the protocol run
    (protocol,) = [r for r in runs.values() if r.data.tags.get("protocol") == "cross-dataset"]
    assert 0 <= protocol.data.metrics["shenzhen-to-montgomery.dice"] <= 1
    trained = [r for r in runs.values() if "val_mean_dice" in r.data.metrics]
    assert len(trained) == 2


@pytest.mark.slow
def test_kfold_protocol_evaluates_each_fold_on_cases_it_did_not_train_on(tmp_path, data_dir):
    from pipeline.inference.bundle import file_sha256
    from pipeline.training.data import load_split

    out = tmp_path / "kfold"
    args = [
        "protocol",
        "kfold",
        "--folds",
        "3",
        "--max-folds",
        "2",
        "-o",
        str(out),
        "--data",
        str(data_dir),
        *TINY,
        "--max-eval-cases",
        "4",
        "--device",
        "cpu",
        "--no-mlflow",
        "--no-progress",
    ]
    assert main(args) == 0
    result = json.loads((out / "protocol.json").read_text())
    assert list(result["runs"]) == ["fold0", "fold1"] and "across_folds" in result
    for fold in (0, 1):
        evaluated = {
            line.split(",")[0]
            for line in (out / f"fold{fold}" / "evaluation" / "per_case.csv")
            .read_text()
            .splitlines()[1:]
        }
        trained = {c["name"] for c in load_split(data_dir, "train", folds=3, fold=fold)}
        assert evaluated and not evaluated & trained
        held = {c["name"] for c in load_split(data_dir, "validation", folds=3, fold=fold)}
        assert len(evaluated) == 4 and evaluated <= held
        # the fold's own checkpoint alone, not joined by the shipped bundle's ensemble
        model = json.loads((out / f"fold{fold}" / "evaluation" / "summary.json").read_text())
        run_ckpt = out / f"fold{fold}" / "models" / "model.pt"
        assert model["model"]["checkpoints_sha256"] == [file_sha256(run_ckpt)]
        assert model["model"]["lung_field"] == "visible"


def test_protocol_usage_errors(tmp_path, capsys):
    assert main(["protocol", "kfold", "--folds", "1", "-o", str(tmp_path), "--no-mlflow"]) == 2
    assert "at least 2" in capsys.readouterr().err
