"""The shipped TB bundle: metadata, loading, scores, and a model card that matches its JSON."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from pipeline.inference.lungs import split_lungs
from pipeline.tb.metrics import roc_auc
from pipeline.tb.model import TB_BUNDLE, TBModel
from tests.bundle.test_lung_cxr_segmentation import SCHEMA

EVALUATION = TB_BUNDLE / "docs" / "evaluation"


@pytest.fixture(scope="module")
def cv_summary() -> dict:
    return json.loads((EVALUATION / "cv_summary.json").read_text())


def test_metadata_verifies_offline():
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(TB_BUNDLE / "configs" / "metadata.json"), filepath=str(SCHEMA))


def test_shipped_model_scores_real_radiographs(case_pixels, case_masks, cv_summary):
    model = TBModel(device="cpu")
    assert len(model.network.members) == cv_summary["folds"]
    assert model.threshold == pytest.approx(
        cv_summary["hybrid"]["all"]["operating_threshold"], abs=1e-6
    )
    names = sorted(case_pixels)
    inputs = [
        model.prepare(case_pixels[n] / np.float32(255), *split_lungs(case_masks[n])[:2])
        for n in names
    ]
    scores = model.scores(inputs)
    assert np.all((scores >= 0) & (scores <= 1))
    labels = np.array([int(n.rsplit("_", 1)[1][0]) for n in names])
    assert scores[labels == 1].mean() > scores[labels == 0].mean()  # (training cases)


def test_cross_validated_predictions_give_the_summary(cv_summary):
    with open(EVALUATION / "cv_predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == cv_summary["cases"] == 600
    labels = np.array([int(r["tuberculosis"]) for r in rows])
    for name in ("cnn", "baseline", "hybrid"):
        scores = np.array([float(r[f"{name}_score"]) for r in rows])
        assert roc_auc(labels, scores) == pytest.approx(cv_summary[name]["all"]["auc"])


def test_model_card_and_readme_quote_the_cross_validated_auc(cv_summary):
    from pipeline.io.datasets import REPO_ROOT

    auc = cv_summary["hybrid"]["all"]
    low, high = auc["auc_ci95"]
    quoted = f"{auc['auc']:.3f} [{low:.3f}, {high:.3f}]"
    for doc in (TB_BUNDLE / "docs" / "README.md", REPO_ROOT / "README.md"):
        assert quoted in doc.read_text(), doc
