"""Per-case metrics: hand-computed values, empty-mask conventions, agreement with MONAI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_hausdorff_distance,
    compute_roc_auc,
)
from scipy import ndimage

from pipeline.evaluation.metrics import METRICS, RocAccumulator, case_metrics, roc_auc


def block(shape, rows, cols) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[rows, cols] = True
    return m


def test_overlap_metrics_by_hand():
    truth = block((4, 4), slice(1, 3), slice(1, 3))  # 4 pixels
    pred = block((4, 4), slice(1, 3), slice(1, 4))  # 6 pixels, 4 of them right
    m = case_metrics(pred, truth)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (4, 2, 0, 10)
    assert m["dice"] == pytest.approx(8 / 10) and m["f1"] == pytest.approx(8 / 10)
    assert m["iou"] == pytest.approx(4 / 6) and m["precision"] == pytest.approx(4 / 6)
    assert m["recall"] == 1.0 and m["specificity"] == pytest.approx(10 / 12)
    assert m["accuracy"] == pytest.approx(14 / 16)
    assert (m["pred_area_px"], m["truth_area_px"], m["area_error_px"]) == (6, 4, 2)
    assert m["area_error_pct"] == pytest.approx(50.0)
    assert set(METRICS) <= set(m)


def test_distances_by_hand_in_pixels_and_anisotropic_millimetres():
    truth = block((8, 8), 2, 2)
    pred = block((8, 8), 2, 5)  # three columns to the right
    m = case_metrics(pred, truth, spacing=(0.5, 2.0))
    assert m["hd95_px"] == pytest.approx(3.0) and m["assd_px"] == pytest.approx(3.0)
    assert m["hd95_mm"] == pytest.approx(6.0) and m["assd_mm"] == pytest.approx(6.0)
    assert m["pred_area_mm2"] == pytest.approx(1.0) and m["area_error_mm2"] == 0.0


def test_unknown_spacing_leaves_millimetres_undefined():
    m = case_metrics(block((8, 8), 2, 2), block((8, 8), 2, 5))
    assert math.isnan(m["hd95_mm"]) and math.isnan(m["truth_area_mm2"])


def test_two_empty_masks_agree_perfectly():
    empty = np.zeros((8, 8), bool)
    m = case_metrics(empty, empty, prob=np.zeros((8, 8)), spacing=(1.0, 1.0))
    for name in ("dice", "iou", "precision", "recall", "specificity", "accuracy", "f1"):
        assert m[name] == 1.0, name
    assert m["hd95_px"] == 0.0 and m["assd_mm"] == 0.0
    assert math.isnan(m["auc"]) and math.isnan(m["area_error_pct"])  # undefined, documented


@pytest.mark.parametrize("empty_side", ["pred", "truth"])
def test_one_empty_mask_scores_zero_and_the_largest_distance(empty_side):
    lung = block((6, 8), slice(1, 4), slice(1, 4))
    empty = np.zeros_like(lung)
    pred, truth = (empty, lung) if empty_side == "pred" else (lung, empty)
    m = case_metrics(pred, truth, spacing=(2.0, 1.0))
    assert m["dice"] == 0.0 and m["iou"] == 0.0 and m["precision"] == 0.0 and m["recall"] == 0.0
    assert m["hd95_px"] == pytest.approx(10.0)  # the diagonal of 6 x 8 pixels
    assert m["assd_mm"] == pytest.approx(math.hypot(12.0, 8.0))
    assert not any(math.isnan(m[k]) for k in ("dice", "precision", "recall", "hd95_px"))


def test_specificity_of_an_all_lung_reference_follows_the_rule():
    full = np.ones((4, 4), bool)
    assert case_metrics(full, full)["specificity"] == 1.0
    # no background in the reference: 0/0, and the masks differ, so 0.0 (the module's rule)
    assert case_metrics(block((4, 4), 0, 0), full)["specificity"] == 0.0
    assert case_metrics(full, block((4, 4), 0, 0))["specificity"] == 0.0  # 0 of 15 background


def test_auc_by_hand():
    truth = np.array([[1, 1, 0, 0]], bool)
    assert roc_auc(np.array([[0.9, 0.8, 0.2, 0.1]]), truth) == 1.0
    assert roc_auc(np.array([[0.1, 0.2, 0.8, 0.9]]), truth) == 0.0
    assert roc_auc(np.full((1, 4), 0.5), truth) == 0.5  # ties count half
    assert roc_auc(np.array([[0.9, 0.3, 0.5, 0.1]]), truth) == 0.75
    assert math.isnan(roc_auc(None, truth)) and math.isnan(roc_auc(np.ones((1, 4)), truth[:, :2]))


@pytest.fixture(scope="module")
def real_case(lung_mask):
    """A real reference mask and a plausible prediction: shifted, with a blurred noisy map."""
    pred = np.roll(ndimage.binary_dilation(lung_mask, iterations=3), 4, axis=1)
    rng = np.random.default_rng(0)
    prob = ndimage.gaussian_filter(pred.astype(float), 4) + rng.normal(0, 0.05, pred.shape)
    return pred, lung_mask, np.round(np.clip(prob, 0, 1), 3)


def test_auc_and_distances_equal_monais_on_a_real_mask(real_case):
    pred, truth, prob = real_case
    m = case_metrics(pred, truth, prob, spacing=(0.7, 0.4))
    expected_auc = compute_roc_auc(torch.tensor(prob.ravel()), torch.tensor(truth.ravel() * 1.0))
    assert m["auc"] == pytest.approx(float(expected_auc), abs=1e-9)
    p, t = (torch.tensor(x, dtype=torch.float32)[None, None] for x in (pred, truth))
    for sp, unit in ((None, "px"), ([0.7, 0.4], "mm")):
        hd = compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=sp)
        asd = compute_average_surface_distance(
            p, t, include_background=True, symmetric=True, spacing=sp
        )
        assert m[f"hd95_{unit}"] == pytest.approx(float(hd), rel=1e-5)
        assert m[f"assd_{unit}"] == pytest.approx(float(asd), rel=1e-5)
    assert 0.9 < m["dice"] < 0.99 and m["hd95_px"] >= 4


def test_isotropic_spacing_scales_the_pixel_distances(real_case):
    pred, truth, _ = real_case
    m = case_metrics(pred, truth, spacing=(0.5, 0.5))
    assert m["hd95_mm"] == pytest.approx(0.5 * m["hd95_px"])
    assert m["assd_mm"] == pytest.approx(0.5 * m["assd_px"])


def test_pooled_roc_matches_the_exact_auc(real_case):
    _, truth, prob = real_case
    acc = RocAccumulator()
    acc.add(prob, truth)
    assert acc.auc() == pytest.approx(roc_auc(prob, truth), abs=2e-3)
    fpr, tpr = acc.curve()
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert math.isnan(RocAccumulator().auc())


def test_bad_inputs_are_refused_with_the_values():
    with pytest.raises(ValueError, match=r"\(4, 4\) and reference \(4, 5\)"):
        case_metrics(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="probability map"):
        case_metrics(np.zeros((4, 4)), np.zeros((4, 4)), prob=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"\(0\.5, -1\)"):
        case_metrics(np.zeros((4, 4)), np.zeros((4, 4)), spacing=(0.5, -1))
