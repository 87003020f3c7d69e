"""Evaluation outputs on real cases: existing predictions, the model, failures, the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pipeline.cli import main
from pipeline.evaluation import Evaluation, evaluate
from tests.conftest import CASES, dice, load_png


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {row["case"]: row for row in csv.DictReader(fh)}


@pytest.fixture()
def scored(tmp_path, data_dir):
    """Images, references and degraded 'predictions' (eroded by 1..4 px) of the sample cases,
    a DICOM image with 0.5 mm spacing, an image without a reference and a mask of the wrong
    size."""
    from pipeline.io.convert import DicomVariant, build_dicom, write_dicom

    images, masks, preds = (tmp_path / d for d in ("images", "masks", "preds"))
    for d in (images, masks, preds):
        d.mkdir()
    expected = {}
    for i, name in enumerate(CASES, start=1):
        (images / name).write_bytes((data_dir / "images" / name).read_bytes())
        (masks / name).write_bytes((data_dir / "masks" / name).read_bytes())
        truth = load_png(data_dir / "masks" / name) > 127
        pred = ndimage.binary_erosion(truth, iterations=i)
        Image.fromarray((pred * 255).astype(np.uint8)).save(preds / name)
        expected[name] = dice(pred, truth)
    name = CASES[0]
    pixels = load_png(data_dir / "images" / name)
    write_dicom(
        build_dicom(pixels, DicomVariant.MONO2_16BIT, name="d", spacing_mm=0.5),
        images / "spaced.dcm",
    )
    (masks / "spaced.png").write_bytes((data_dir / "masks" / name).read_bytes())
    Image.fromarray((load_png(data_dir / "masks" / name) > 127).astype(np.uint8) * 255).save(
        preds / "spaced.png"
    )
    (images / "orphan.png").write_bytes((data_dir / "images" / name).read_bytes())
    (images / "small.png").write_bytes((data_dir / "images" / name).read_bytes())
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(masks / "small.png")
    Image.fromarray(np.zeros((512, 512), np.uint8)).save(preds / "small.png")
    return {"images": images, "masks": masks, "preds": preds, "expected": expected}


def test_existing_predictions_are_scored_case_by_case(scored, data_dir, tmp_path):
    out = tmp_path / "eval"
    summary = evaluate(
        scored["images"],
        scored["masks"],
        out,
        manifest=data_dir / "manifest.csv",
        predictions=scored["preds"],
    )
    rows = read_rows(out / "per_case.csv")
    assert {n: r["status"] for n, r in rows.items()} == {
        **dict.fromkeys(CASES, "ok"),
        "spaced.dcm": "ok",
        "orphan.png": "failed",
        "small.png": "failed",
    }
    assert "no reference mask" in rows["orphan.png"]["reason"]
    assert "64x64" in rows["small.png"]["reason"] and "512x512" in rows["small.png"]["reason"]
    for name, value in scored["expected"].items():
        assert float(rows[name]["dice"]) == pytest.approx(value, rel=1e-5)
        assert rows[name]["source"] in ("montgomery", "shenzhen")
        assert rows[name]["hd95_mm"] == "" and rows[name]["auc"] == ""  # no spacing, no map
    spaced = rows["spaced.dcm"]
    assert float(spaced["dice"]) == 1.0 and spaced["pixel_spacing_mm"] == "0.5\\0.5"
    assert float(spaced["hd95_mm"]) == 0.0
    assert float(spaced["truth_area_mm2"]) == pytest.approx(0.25 * float(spaced["truth_area_px"]))
    assert summary["cases"] == {"evaluated": 5, "failed": 2}
    dices = summary["statistics"]["overall"]["dice"]
    assert dices["n"] == 5 and dices["ci95_low"] <= dices["mean"] <= dices["ci95_high"]
    worst = [w["case"] for w in summary["worst_cases"]]
    lowest = min(scored["expected"], key=scored["expected"].get)
    assert worst[0] == lowest and worst[-1] == "spaced.dcm"  # lowest Dice first
    assert summary["plots"][:2] == ["dice_by_group.png", "worst_cases.png"]  # no ROC: no maps
    for plot in summary["plots"]:
        with Image.open(out / plot) as img:
            assert img.format == "PNG" and img.size[0] > 100


def test_outputs_are_valid_json_and_markdown(scored, tmp_path):
    out = tmp_path / "eval"
    evaluate(scored["images"], scored["masks"], out, predictions=scored["preds"])
    summary = json.loads((out / "summary.json").read_text())  # strict: no NaN literal
    assert summary["statistics"]["overall"]["auc"]["mean"] is None
    assert summary["confusion_matrix"]["counts"][0][0] > 0
    md = (out / "summary.md").read_text()
    assert "| all | 5 |" in md and "orphan.png" in md and "![worst_cases.png]" in md


def test_the_model_is_evaluated_with_probability_maps(tmp_path, data_dir):
    from pipeline.training.data import load_split

    held_out = {item["name"] for item in load_split(data_dir, "test", 8)}
    summary = evaluate(
        data_dir / "images",
        data_dir / "masks",
        tmp_path / "eval",
        manifest=data_dir / "manifest.csv",
        device="cpu",
        select=held_out,
    )
    overall = summary["statistics"]["overall"]
    assert summary["cases"]["evaluated"] == 8
    # every pixel, against references that mostly stop at the heart (the anatomical model
    # outlines the lung behind it): ~0.92 on the test split, 0.97 where they decide
    assert overall["dice"]["mean"] >= 0.9 and overall["auc"]["mean"] > 0.99
    # ... and where the reference decides (the shipped model outputs the anatomical field)
    assert overall["dice_decided"]["mean"] >= 0.95
    assert overall["dice_decided"]["mean"] > overall["dice"]["mean"] + 0.02
    assert set(summary["statistics"]["groups"]["source"]) == {"montgomery", "shenzhen"}
    assert summary["pooled_auc"]["all"] > 0.99 and "roc.png" in summary["plots"]
    assert summary["model"]["checkpoint_sha256"]


def test_an_empty_case_does_not_break_the_summary(tmp_path, lung_mask):
    ev = Evaluation(["source"], worst=2)
    ev.add("empty", np.zeros((8, 8)), np.zeros((8, 8)), groups={"source": "x"})
    ev.add("lung", lung_mask, lung_mask, prob=lung_mask * 0.9, groups={"source": "y"})
    summary = ev.write(tmp_path)
    assert summary["statistics"]["overall"]["dice"]["mean"] == 1.0
    assert summary["statistics"]["overall"]["auc"]["n"] == 1  # undefined for the empty case
    assert not math.isnan(summary["statistics"]["overall"]["hd95_px"]["mean"])


def test_cli_evaluate_exit_codes(scored, tmp_path, capsys):
    args = ["evaluate", "--images", str(scored["images"]), "--masks", str(scored["masks"])]
    assert main([*args, "--predictions", str(scored["preds"]), "-o", str(tmp_path / "a")]) == 1
    assert "5 cases evaluated, 2 failed" in capsys.readouterr().out
    for bad in ("orphan.png", "small.png"):
        (scored["images"] / bad).unlink()
    assert main([*args, "--predictions", str(scored["preds"]), "-o", str(tmp_path / "b")]) == 0
    assert main([*args, "--predictions", "p", "--bundle", "b", "-o", str(tmp_path / "c")]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert main(["evaluate", "--images", str(scored["images"]), "-o", str(tmp_path / "d")]) == 2
    assert main(["evaluate", "--images", "nowhere", "--masks", "x", "-o", "e"]) == 2
    assert "'nowhere' is not a folder" in capsys.readouterr().err


def test_cli_evaluates_a_part_of_the_split_file_with_mlflow(tmp_path, data_dir, capsys):
    import mlflow

    from pipeline.io.datasets import REPO_ROOT

    split = {part: [] for part in ("train", "validation")} | {"test": list(CASES[:2])}
    (tmp_path / "split.json").write_text(json.dumps(split))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(
        [
            "evaluate",
            "--data",
            str(data_dir),
            "--split",
            str(tmp_path / "split.json"),
            "--device",
            "cpu",
            "-o",
            str(tmp_path / "e"),
            "--mlflow",
            "--tracking-uri",
            uri,
            "--experiment",
            "ev",
        ]
    )
    assert code == 0 and "2 cases evaluated, 0 failed" in capsys.readouterr().out
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ev").experiment_id])
    assert (
        run.data.metrics["dice_mean"] >= 0.95 and "source.montgomery.dice_mean" in run.data.metrics
    )
    assert (REPO_ROOT / "data" / "splits" / "montgomery-shenzhen.json").is_file()


def test_decided_metrics_leave_out_what_a_visible_reference_leaves_undecided(data_dir):
    from pipeline.evaluation.evaluate import Evaluation
    from pipeline.transforms.lung_field import retrocardiac_region

    truth = load_png(data_dir / "masks" / "MCUCXR_0001_0.png") > 127
    pred = truth | retrocardiac_region(truth)  # the lung behind the heart outlined too
    ev = Evaluation(anatomical_references={"drawn_with_it.png"})
    visible = ev.add("visible.png", pred, truth)
    anatomical = ev.add("drawn_with_it.png", pred, truth)
    assert visible["dice_decided"] == 1.0 and visible["dice"] < 0.95
    assert anatomical["dice_decided"] == anatomical["dice"] < 0.95
    assert "dice_decided" in ev.summary()["statistics"]["overall"]
    assert "dice_decided" not in Evaluation().add("x.png", pred, truth)
