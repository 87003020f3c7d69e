"""The shipped bundle run through MONAI's own runner, as a clinical pipeline would run it."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from pipeline.io.convert import DicomVariant, dicomize
from pipeline.io.datasets import REPO_ROOT
from pipeline.training.data import load_split
from pipeline.transforms.geometry import LetterboxParams
from tests.conftest import dice_where_decided, load_png, torchrun

BUNDLE = REPO_ROOT / "bundles" / "lung_cxr_segmentation"
SCHEMA = REPO_ROOT / "bundles" / "schemas" / "meta_schema_20240725.json"
CONFIGS = BUNDLE / "configs"


def run_bundle(
    *args: str, env_vars: dict | None = None, cwd: Path = BUNDLE, **options: object
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS --key value...`` in a child process, from the bundle folder.

    Fails the test with the child's output when it exits non-zero.
    """
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "1", **(env_vars or {})}
    flags = [item for key, value in options.items() for item in (f"--{key}", str(value))]
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args, *flags],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def held_out(data_dir) -> list[dict]:
    """Three Montgomery and three Shenzhen cases of the test split (never trained on)."""
    test = load_split(data_dir, "test")
    pick = [c for c in test if c["source"] == "montgomery"][:3]
    return pick + [c for c in test if c["source"] == "shenzhen"][:3]


def test_inference_segments_a_folder_of_png_and_dicom(tmp_path, held_out, data_dir):
    inputs = tmp_path / "in"
    (inputs / "png").mkdir(parents=True)
    for case in held_out[::2]:
        shutil.copy(case["image"], inputs / "png" / case["name"])
    dicom_cases = [Path(c["image"]) for c in held_out[1::2]]
    variants = [DicomVariant.MONO1_WINDOW, DicomVariant.JPEG2000, DicomVariant.VOI_LUT]
    dicomize(dicom_cases, inputs / "dicom", variants)
    (inputs / "README.txt").write_text("not an image")

    run_bundle(
        "run",
        config_file="configs/inference.json",
        dataset_dir=str(inputs),
        output_dir=str(tmp_path / "out"),
        device_name="cpu",
    )
    written = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*.png"))
    expected = [Path("png") / c["name"] for c in held_out[::2]]
    expected += [
        Path("dicom") / v.value / Path(c).with_suffix(".png").name
        for v, c in zip(variants, dicom_cases, strict=True)
    ]
    assert written == sorted(expected)
    scores = []
    for rel in written:
        mask = load_png(tmp_path / "out" / rel)
        truth = load_png(data_dir / "masks" / rel.name) > 127
        assert mask.shape == truth.shape and set(np.unique(mask)) <= {0, 255}
        scores.append(dice_where_decided(mask > 127, truth))
    assert min(scores) > 0.9 and np.mean(scores) >= 0.95, scores


def test_evaluate_config_reports_every_metric_by_source_with_the_cli_code(tmp_path, data_dir):
    from pipeline.evaluation import evaluate

    out = tmp_path / "eval"
    run_bundle(
        "run",
        config_file="['configs/inference.json','configs/evaluate.json']",
        dataset_dir=str(data_dir),
        output_dir=str(out),
        max_cases="8",
        device_name="cpu",
        save_masks="True",
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == {"evaluated": 8, "failed": 0}
    overall = summary["statistics"]["overall"]
    # every pixel, against references that mostly stop at the heart (the anatomical model
    # outlines the lung behind it): ~0.92 on the test split, 0.97 where they decide
    assert overall["dice"]["n"] == 8 and overall["dice"]["mean"] >= 0.9
    # (HD95 too: the far edge of the lung behind the heart is ~40 px from theirs)
    assert overall["auc"]["mean"] > 0.99 and overall["hd95_px"]["mean"] < 60
    by_source = summary["statistics"]["groups"]["source"]
    assert set(by_source) == {"montgomery", "shenzhen"}
    assert sum(g["dice"]["n"] for g in by_source.values()) == 8
    assert len(list(out.glob("*.png"))) == 8 + 3  # the masks and three figures
    assert len(list((out / "worst").glob("*.png"))) == 8
    for name in ("roc.png", "dice_by_group.png", "worst_cases.png"):
        assert name in summary["plots"] and Image.open(out / name).format == "PNG"
    # lungseg evaluate on the same cases gives the same per-case values
    with open(out / "per_case.csv", newline="") as fh:
        bundle_rows = {row["case"]: row for row in csv.DictReader(fh)}
    cli = evaluate(
        data_dir / "images",
        data_dir / "masks",
        tmp_path / "cli",
        manifest=data_dir / "manifest.csv",
        device="cpu",
        select=set(bundle_rows),
    )
    assert cli["cases"]["evaluated"] == 8
    with open(tmp_path / "cli" / "per_case.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            for metric in ("dice", "hd95_px", "auc", "tp", "fp"):
                assert float(row[metric]) == pytest.approx(
                    float(bundle_rows[row["case"]][metric]), rel=1e-5
                )


def tracked_run(tmp_path: Path, config_file: str, **options: object):
    """Run a bundle config with ``--tracking configs/mlflow.json``; return its one MLflow run."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env_vars = {"MLFLOW_TRACKING_URI": uri}
    options.update(tracking="configs/mlflow.json", experiment_name="bundle", device_name="cpu")
    run_bundle("run", config_file=config_file, env_vars=env_vars, **options)
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bundle").experiment_id])
    return run


@pytest.mark.slow
def test_train_config_runs_one_epoch_through_monai_runner_with_mlflow(tmp_path, data_dir):
    tiny = {"max_epochs": 1, "max_cases": 8, "image_size": 64, "cache_workers": 0}
    run = tracked_run(
        tmp_path,
        "configs/train.json",
        bundle_root=tmp_path,
        dataset_dir=data_dir,
        progress=False,
        **tiny,
    )
    assert run.data.params["network"] == "res_unet" and "val_mean_dice" in run.data.metrics
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    shipped = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state.keys() == shipped.keys()


@pytest.mark.slow
def test_monai_default_tracking_flag_works_on_the_train_config(tmp_path, data_dir):
    """``--tracking mlflow`` (MONAI's own settings) appends to ``train#handlers``: a list."""
    import mlflow

    tiny = {"max_epochs": 1, "max_cases": 8, "image_size": 64, "cache_workers": 0}
    uri = f"sqlite:///{tmp_path / 'default.db'}"
    run_bundle(
        "run",
        config_file="configs/train.json",
        tracking="mlflow",
        tracking_uri=uri,
        experiment_name="monai-default",
        bundle_root=tmp_path,
        dataset_dir=data_dir,
        progress=False,
        device_name="cpu",
        **tiny,
    )
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("monai-default").experiment_id])
    assert "val_mean_dice" in run.data.metrics and "train_loss" in run.data.metrics


@pytest.mark.slow
def test_evaluate_is_tracked_in_mlflow(tmp_path, data_dir):
    configs = "['configs/inference.json','configs/evaluate.json']"
    run = tracked_run(
        tmp_path, configs, dataset_dir=data_dir, output_dir=tmp_path / "e", max_cases=4
    )
    assert run.data.metrics["eval_mean_dice"] >= 0.9  # every pixel: see the test above


@pytest.fixture()
def no_network(monkeypatch):
    """Make any attempt to open a socket fail, so 'offline' is really offline."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_metadata_verifies_offline_against_the_shipped_schema(no_network):
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))


def test_incomplete_metadata_fails_verification(tmp_path, no_network):
    from monai.bundle import verify_metadata

    meta = json.loads((CONFIGS / "metadata.json").read_text())
    del meta["network_data_format"]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA))


def test_network_input_and_output_match_metadata():
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        device="cpu",
    )


def _inputs(held_out: list[dict]) -> torch.Tensor:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    load, pre = parser.get_parsed_content("loader"), parser.get_parsed_content("preprocessing")
    return torch.stack([pre(load({"image": c["image"]}))["image"].as_tensor() for c in held_out])


def _checkpoint_network() -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(
        torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    )
    return net.eval()


def _assert_same_masks(ts_path: Path, held_out: list[dict]) -> None:
    x = _inputs(held_out)
    with torch.no_grad():
        expected = _checkpoint_network()(x)
        got = torch.jit.load(str(ts_path), map_location="cpu")(x)
    assert torch.equal(expected > 0, got > 0)
    # probabilities, not logits: near 0 and 1 the logit of a mean probability magnifies
    # float32 rounding (the network runs channels-last, the TorchScript contiguous)
    torch.testing.assert_close(torch.sigmoid(got), torch.sigmoid(expected), rtol=0, atol=1e-5)


def test_torchscript_export_gives_the_checkpoint_masks(tmp_path, held_out):
    run_bundle(
        "ckpt_export",
        "network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file="models/model.pt",
        meta_file="configs/metadata.json",
        config_file="configs/inference.json",
    )
    _assert_same_masks(tmp_path / "model.ts", held_out)


def test_shipped_torchscript_is_the_network_the_predictor_runs(held_out):
    """``models/model.ts`` is the whole model of ``inference.json`` (the checkpoint ensemble)."""
    from pipeline.inference.predictor import Predictor

    network = Predictor(BUNDLE, device="cpu").network
    x = _inputs(held_out)
    with torch.no_grad():
        expected = network(x)
        got = torch.jit.load(str(BUNDLE / "models" / "model.ts"), map_location="cpu")(x)
    assert torch.equal(expected > 0, got > 0)
    # probabilities, not logits: near 0 and 1 the logit of a mean probability magnifies
    # float32 rounding (the network runs channels-last, the TorchScript contiguous)
    torch.testing.assert_close(torch.sigmoid(got), torch.sigmoid(expected), rtol=0, atol=1e-5)


def test_weights_stay_under_the_model_zoo_size():
    for path in (BUNDLE / "models").iterdir():
        assert path.stat().st_size < 25 * 2**20, path


def _model_section(name: str) -> dict:
    config = json.loads((CONFIGS / name).read_text())
    keys = ("image_size", "clahe", "tophat", "network_name", "network_kwargs", "network_def")
    section = {k: config[k] for k in keys}
    transforms = config["preprocessing"]
    transforms = transforms["transforms"] if isinstance(transforms, dict) else transforms
    image_steps = []
    for step in transforms:
        args = {k: v for k, v in step.items() if k not in ("keys", "mode", "allow_missing_keys")}
        if "label" not in str(step.get("keys")) or "image" in str(step.get("keys")):
            image_steps.append(args)
    section["preprocessing"] = [
        s for s in image_steps if not any(n in s["_target_"] for n in ("BinarizeMask", "LoadCXR"))
    ]
    return section


def test_training_and_inference_define_the_same_model():
    """MONAI runs each config alone, so both carry the model; this keeps them identical."""
    assert _model_section("train.json") == _model_section("inference.json")
    loader = json.loads((CONFIGS / "inference.json").read_text())["loader"]
    assert loader["_target_"] == "pipeline.io.LoadCXRd"  # file -> image, outside preprocessing


def test_postprocessing_keeps_two_lungs_fills_holes_and_restores_the_grid(held_out):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    loaded = parser.get_parsed_content("loader")({"image": held_out[0]["image"]})
    item = parser.get_parsed_content("preprocessing")(loaded)
    logits = torch.full_like(item["image"], -10.0)
    logits[:, 40:200, 30:110] = 10.0  # right lung
    logits[:, 40:200, 140:220] = 10.0  # left lung
    logits[:, 100:110, 60:70] = -10.0  # a hole
    logits[:, 230:236, 120:126] = 10.0  # a spurious blob
    logits[:, 200:204, 110:114] = 10.0  # touching the right lung at one corner only
    post = parser.get_parsed_content("postprocessing")({**item, "pred": logits})
    out, prob = post["pred"], post["prob"]
    rows, cols = load_png(Path(held_out[0]["image"])).shape
    params = LetterboxParams.from_meta(item["image"].meta["letterbox"])
    # labels on the original grid; the probability on the network's (the letterbox's image
    # part), the sigmoid copied out before the threshold
    assert tuple(out.shape) == (1, rows, cols) and tuple(prob.shape) == (1, *params.resized_shape)
    assert float(prob.min()) < 1e-4 and float(prob.max()) > 1 - 1e-4
    from scipy import ndimage

    assert isinstance(out, np.ndarray) and out.dtype == np.uint8  # numpy from Sigmoidd on
    labels = out[0]
    assert set(np.unique(labels)) == {0, 1, 2}  # right lung 1 (the image's left), left 2
    assert labels[:, : cols // 2].max() == 1 and labels[:, cols // 2 :].max() == 2
    _, count = ndimage.label(labels > 0)
    assert count == 2 and post["lung_components"] == 2  # the corner blob is not a lung's part
    low = post["lungs_lowres"][0] > 0
    assert low.sum() == 160 * 80 * 2 and ndimage.label(low)[1] == 2  # the hole filled
    assert not (ndimage.binary_fill_holes(labels > 0) ^ (labels > 0)).any()


@pytest.mark.slow
def test_multi_gpu_evaluate_gathers_every_rank_into_one_evaluation(tmp_path, data_dir):
    """torchrun with 2 CPU processes: each rank scores its part, rank 0 writes them all."""
    configs = "['configs/inference.json','configs/evaluate.json']"
    run_bundle(
        "run", config_file=configs, dataset_dir=data_dir, output_dir=tmp_path / "one", max_cases=6
    )
    ddp = "['configs/inference.json','configs/evaluate.json','configs/multi_gpu_evaluate.json']"
    options = ["--dataset_dir", str(data_dir), "--output_dir", str(tmp_path / "two")]
    cmd = torchrun("monai.bundle", "run", "--config_file", ddp, *options, "--max_cases", "6")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "1"}
    proc = subprocess.run(cmd, cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def per_case(folder: Path) -> dict[str, str]:
        with open(folder / "per_case.csv", newline="") as fh:
            return {r["case"]: r["dice"] for r in csv.DictReader(fh)}

    one, two = per_case(tmp_path / "one"), per_case(tmp_path / "two")
    assert two == one and len(one) == 6
