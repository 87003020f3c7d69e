"""Every front end gives the same masks: segment, evaluate, web API, DICOM node, monai.bundle.

All of them predict through :class:`pipeline.inference.predictor.Predictor` and the bundle's
``inference.json``; this checks the masks they write are identical on 20 held-out radiographs
(as DICOM with a pixel spacing, the way a hospital sends them), a negative and a film upside
down among them, so every path applies the bundle's view check.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pipeline.cli import EXIT_OK, main
from pipeline.inference.bundle import BUNDLE
from pipeline.training.data import load_split
from tests.conftest import load_png

pytestmark = pytest.mark.slow
COUNT = 20


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory, data_dir) -> Path:
    from PIL import Image

    from pipeline.io.convert import DicomVariant, build_dicom, write_dicom

    root = tmp_path_factory.mktemp("one_path")
    (root / "refs").mkdir()
    for i, case in enumerate(load_split(data_dir, "test", COUNT)):
        name = Path(case["image"]).stem
        pixels, truth = load_png(Path(case["image"])), load_png(Path(case["label"]))
        views = {name: (pixels, truth)}
        if i == 0:  # one negative and one film upside down: the view check on every path
            views[f"{name}_negative"] = (255 - pixels, truth)
            views[f"{name}_upside_down"] = (np.rot90(pixels, 2), np.rot90(truth, 2))
        for stem, (image, reference) in views.items():
            ds = build_dicom(image.copy(), DicomVariant.MONO2_16BIT, name=stem, spacing_mm=0.35)
            write_dicom(ds, root / "in" / f"{stem}.dcm")
            Image.fromarray(reference.copy()).save(root / "refs" / f"{stem}.png")
    return root


@pytest.fixture(scope="module")
def segmented(dicom_folder) -> dict[str, np.ndarray]:
    out = dicom_folder / "segment"
    argv = ["segment", str(dicom_folder / "in"), "-o", str(out), "--formats", "mask,seg"]
    assert main([*argv, "--no-progress", "--workers", "1", "--batch-size", "3"]) == EXIT_OK
    return {p.stem: load_png(p) > 127 for p in sorted((out / "masks").glob("*.png"))}


def test_segment_wrote_every_mask(segmented, dicom_folder):
    assert len(segmented) == COUNT + 2
    with open(dicom_folder / "segment" / "report.csv", newline="") as fh:
        flags = {Path(r["path"]).stem: r["qa_flags"] for r in csv.DictReader(fh)}
    for stem, flag in flags.items():
        expected = {"negative": "inverted_polarity", "upside_down": "upside_down"}
        view = next((v for v in expected if stem.endswith(f"_{v}")), None)
        others = [f for v, f in expected.items() if v != view]
        assert (view is None or expected[view] in flag) and not any(f in flag for f in others)


def test_bundle_run_gives_the_same_masks(dicom_folder, segmented):
    out = dicom_folder / "bundle"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "1"}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    cmd += ["--dataset_dir", str(dicom_folder / "in"), "--output_dir", str(out)]
    proc = subprocess.run(cmd, cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stem, mask in segmented.items():
        assert np.array_equal(load_png(out / f"{stem}.png") > 127, mask), stem


def test_web_api_gives_the_same_masks(dicom_folder, segmented, shipped_model):
    from PIL import Image

    from pipeline.web.service import ResultFile, UploadService

    service = UploadService(shipped_model)
    for stem, mask in segmented.items():
        result = service.process(dicom_folder / "in" / f"{stem}.dcm", f"{stem}.dcm")
        png = result.files[ResultFile.MASK]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))) > 127, mask), stem
        seg = pydicom.dcmread(io.BytesIO(result.files[ResultFile.SEG]))
        written = pydicom.dcmread(dicom_folder / "segment" / "seg" / f"{stem}.dcm")
        assert seg.SOPInstanceUID == written.SOPInstanceUID  # same identity, same UIDs


def test_dicom_node_gives_the_same_masks(dicom_folder, segmented, shipped_model):
    from pipeline.dicom_node.config import parse_config
    from pipeline.dicom_node.processor import Processor
    from pipeline.dicom_node.spool import Spool

    config = parse_config({"output_dir": str(dicom_folder / "node-out")})
    processor = Processor(config, Spool(dicom_folder / "spool"), shipped_model)
    for stem, mask in segmented.items():
        path = dicom_folder / "in" / f"{stem}.dcm"
        results = processor._segment(path, pydicom.dcmread(path, stop_before_pixels=True))
        seg = pydicom.dcmread(io.BytesIO(results["seg.dcm"]))
        frames = seg.pixel_array.reshape(-1, *mask.shape).astype(bool)
        assert np.array_equal(frames.any(axis=0), mask), stem


def test_evaluate_scores_the_same_masks(dicom_folder, segmented, data_dir):
    from pipeline.evaluation.run import evaluate

    masks = dicom_folder / "refs"
    evaluate(dicom_folder / "in", masks, dicom_folder / "evaluate", device="cpu", worst=0)
    with open(dicom_folder / "evaluate" / "per_case.csv", newline="") as fh:
        rows = {Path(r["case"]).stem: r for r in csv.DictReader(fh)}
    for stem, mask in segmented.items():
        truth = load_png(masks / f"{stem}.png") > 127
        assert int(rows[stem]["pred_area_px"]) == int(mask.sum())
        assert int(rows[stem]["tp"]) == int((mask & truth).sum())
        assert int(rows[stem]["fp"]) == int((mask & ~truth).sum())
