"""``lungseg tb train/evaluate`` and ``lungseg segment --tb`` end to end, on real images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from pipeline.cli import EXIT_OK, EXIT_USAGE, main
from pipeline.inference.lungs import split_lungs
from pipeline.tb.model import NOTICE
from tests.conftest import load_png


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """One quick training: 16 cases, 2 folds, 1 epoch, tracked and packaged."""
    root = tmp_path_factory.mktemp("tb")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    argv = ["tb", "train", "-o", str(root / "cv"), "--data", str(data_dir), "--max-cases", "16"]
    argv += ["--folds", "2", "--epochs", "1", "--device", "cpu", "--crop-size", "96"]
    argv += ["--tracking-uri", uri, "--package", str(root / "bundle")]
    code = main(argv)
    return {"root": root, "code": code, "uri": uri, "cv": root / "cv", "bundle": root / "bundle"}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_training_writes_scores_a_model_and_the_report(trained):
    assert trained["code"] == EXIT_OK
    rows = _rows(trained["cv"] / "cv_predictions.csv")
    assert len(rows) == 16 and {r["fold"] for r in rows} == {"0", "1"}
    assert {r["source"] for r in rows} == {"montgomery", "shenzhen"}
    for column in ("cnn_score", "baseline_score", "hybrid_score"):
        assert all(0 <= float(r[column]) <= 1 for r in rows)
    summary = json.loads((trained["cv"] / "cv_summary.json").read_text())
    assert summary["cases"] == 16 and summary["notice"] == NOTICE
    assert set(summary["hybrid"]) == {"all", "montgomery", "shenzhen"}
    for row in rows:  # the shipped score is the mean of the two
        mean = (float(row["cnn_score"]) + float(row["baseline_score"])) / 2
        assert float(row["hybrid_score"]) == pytest.approx(mean, abs=2e-6)
    assert 0 <= summary["cnn"]["all"]["auc"] <= 1
    for name in ("roc.png", "history.json", "model.pt", "baseline.json"):
        assert (trained["cv"] / name).stat().st_size > 0


def test_training_is_one_mlflow_run_with_curves_and_files(trained):
    client = mlflow.MlflowClient(trained["uri"])
    experiment = client.get_experiment_by_name("lungseg-tb")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["folds"] == "2" and run.data.params["network"] == "densenet_small"
    history = client.get_metric_history(run.info.run_id, "fold1_val_auc")
    assert [m.step for m in history] == [1]
    assert "cnn_all_auc" in run.data.metrics and "baseline_all_auc" in run.data.metrics
    files = {f.path for f in client.list_artifacts(run.info.run_id, "tb")}
    assert {"tb/cv_summary.json", "tb/model.pt", "tb/roc.png"} <= files


def test_folds_resume_from_their_checkpoints(trained, data_dir):
    before = (trained["cv"] / "cv_predictions.csv").read_text()
    argv = ["tb", "train", "-o", str(trained["cv"]), "--data", str(data_dir), "--max-cases", "16"]
    argv += ["--folds", "2", "--epochs", "1", "--device", "cpu", "--crop-size", "96", "--no-mlflow"]
    assert main(argv) == EXIT_OK
    assert (trained["cv"] / "cv_predictions.csv").read_text() == before


def test_the_packaged_model_scores_probabilities(trained, case_pixels, case_masks):
    from monai.bundle import verify_metadata

    from pipeline.tb.model import TBModel
    from tests.bundle.test_lung_cxr_segmentation import SCHEMA

    model = TBModel(trained["bundle"], "cpu")
    summary = json.loads((trained["cv"] / "cv_summary.json").read_text())
    assert model.threshold == pytest.approx(
        summary["hybrid"]["all"]["operating_threshold"], abs=1e-6
    )
    assert len(model.network.members) == 2 and model.baseline_weight == 0.5
    inputs = [
        model.prepare(case_pixels[n].astype(np.float32) / 255, *split_lungs(case_masks[n])[:2])
        for n in case_pixels
    ]
    assert inputs[0]["crop"].shape == (2, 96, 96) and inputs[0]["features"].shape == (95,)
    scores = model.scores(inputs)
    assert scores.shape == (4,) and np.all((scores >= 0) & (scores <= 1))
    cnn = model.cnn_scores([x["crop"] for x in inputs])
    baseline = model.baseline(np.stack([x["features"] for x in inputs]))
    assert np.allclose(scores, (cnn + baseline) / 2, atol=1e-6)
    verify_metadata(
        meta_file=str(trained["bundle"] / "configs" / "metadata.json"), filepath=str(SCHEMA)
    )


def test_evaluate_reports_auc_gradcam_and_training_overlap(trained, data_dir, capsys):
    out = trained["root"] / "eval"
    argv = ["tb", "evaluate", "--bundle", str(trained["bundle"]), "--data", str(data_dir)]
    assert main([*argv, "--max-cases", "8", "--device", "cpu", "-o", str(out)]) == EXIT_OK
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 8 and summary["cases_in_training_data"] == 8
    assert "optimistic" in summary["warning"] and "optimistic" in capsys.readouterr().out
    assert all(0 <= float(r["tb_score"]) <= 1 for r in _rows(out / "predictions.csv"))
    assert (out / "gradcam.png").stat().st_size > 10_000 and (out / "roc.png").is_file()


def test_evaluate_a_predictions_file_gives_the_cross_validated_auc(trained):
    out = trained["root"] / "eval-cv"
    argv = ["tb", "evaluate", "--predictions", str(trained["cv"] / "cv_predictions.csv")]
    assert main([*argv, "-o", str(out)]) == EXIT_OK
    got = json.loads((out / "summary.json").read_text())["metrics"]["all"]["auc"]
    cv = json.loads((trained["cv"] / "cv_summary.json").read_text())["hybrid"]["all"]["auc"]
    assert got == pytest.approx(cv)


def test_segment_tb_adds_a_research_only_score(trained, radiograph_folder, tmp_path):
    from pipeline.io.reader import read_cxr
    from pipeline.tb.model import TBModel

    out = tmp_path / "seg"
    argv = ["segment", str(radiograph_folder["root"]), "-o", str(out), "--no-progress"]
    main([*argv, "--tb", "--tb-bundle", str(trained["bundle"]), "--workers", "1"])
    rows = {
        Path(r["path"]).relative_to(radiograph_folder["root"]).as_posix(): r
        for r in _rows(out / "report.csv")
    }
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert len(ok) == len(radiograph_folder["cases"])
    for r in ok:
        assert 0 <= float(r["tb_score"]) <= 1 and r["tb_flag"] in ("0", "1")
        assert r["tb_note"] == NOTICE
    assert rows["junk/lateral.dcm"]["tb_score"] == ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tb_screening"]["research_only"] is True
    # the score is the packaged model's on the segmented mask written beside it
    png = next(rel for rel in radiograph_folder["cases"] if rel.startswith("png/"))
    model = TBModel(trained["bundle"], "cpu")
    image = read_cxr(radiograph_folder["root"] / png)[0]
    right, left, _ = split_lungs(load_png(out / "masks" / png) > 127)
    expected = model.scores([model.prepare(image, right, left)])[0]
    assert float(rows[png]["tb_score"]) == pytest.approx(expected, abs=2e-3)
    # the journal holds TB scores of this model: a rerun without --tb is refused, not mixed
    assert main(argv) == EXIT_USAGE


def test_tb_train_usage_errors(tmp_path, capsys):
    assert main(["tb", "train", "-o", str(tmp_path), "--folds", "1"]) == EXIT_USAGE
    assert "--folds" in capsys.readouterr().err
    code = main(["tb", "train", "-o", str(tmp_path), "--network", "vgg", "--max-cases", "4"])
    assert code == EXIT_USAGE and "densenet_small" in capsys.readouterr().err


def test_training_crops_see_each_radiograph_the_way_the_segmentation_saw_it(data_dir):
    """The crops and features of a negative the view check turned back are those of the
    image the right way round, as for the batch job's TB inputs."""
    from types import SimpleNamespace

    from pipeline.inference.lungs import measure
    from pipeline.inference.predictor import Prediction
    from pipeline.tb.train import prepare
    from tests.conftest import load_png

    image = load_png(data_dir / "images" / "MCUCXR_0104_1.png").astype(np.float32) / 255
    mask = load_png(data_dir / "masks" / "MCUCXR_0104_1.png") > 127
    m = measure(mask, mask.astype(np.float32))
    preds = [
        Prediction(mask, mask.astype(np.float32), m, {"view": "as_read"}, image),
        Prediction(mask, mask.astype(np.float32), m, {"view": "negative"}, 1 - image),
    ]
    seg_model = SimpleNamespace(predict_from_files=lambda paths, batch_size, keep_image: preds)
    cases = [{"image": str(i), "tuberculosis": 0, "source": "x"} for i in range(2)]
    prepared = prepare(cases, seg_model, size=64)
    np.testing.assert_allclose(prepared.crops[1], prepared.crops[0], atol=1e-3)
    # texture features bin the intensities: 1 - (1 - x) in float32 moves a few pixels a bin
    np.testing.assert_allclose(prepared.features[1], prepared.features[0], rtol=0.05, atol=1e-3)
