"""Screening metrics against scikit-learn and hand-counted cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.tb.metrics import (
    at_threshold,
    bootstrap_auc,
    by_group,
    roc_auc,
    screening_metrics,
    threshold_at_specificity,
)


@pytest.fixture(scope="module")
def scored():
    """Overlapping scores of 120 normals and 80 TB cases, with ties."""
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(120, int), np.ones(80, int)]
    scores = np.round(np.r_[rng.normal(0.4, 0.15, 120), rng.normal(0.6, 0.15, 80)], 2)
    return labels, scores


def test_auc_is_sklearns_and_undefined_for_one_class(scored):
    labels, scores = scored
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert np.isnan(roc_auc(np.ones(5), np.arange(5)))


def test_bootstrap_interval_holds_the_auc_and_is_reproducible(scored):
    labels, scores = scored
    low, high = bootstrap_auc(labels, scores, resamples=500)
    assert low < roc_auc(labels, scores) < high and high - low < 0.2
    assert bootstrap_auc(labels, scores, resamples=500) == (low, high)
    # the Mann-Whitney count equals sklearn's AUC on a resample of all cases (one resample)
    assert bootstrap_auc(labels, scores, resamples=1, seed=9)[0] <= 1


def test_threshold_at_90_specificity(scored):
    labels, scores = scored
    threshold, sensitivity = threshold_at_specificity(labels, scores)
    at = at_threshold(labels, scores, threshold)
    assert at["specificity"] >= 0.9 and at["sensitivity"] == pytest.approx(sensitivity)
    looser = at_threshold(labels, scores, np.max(scores[scores < threshold]))
    assert looser["specificity"] < 0.9  # no lower threshold keeps 90% specificity


def test_counts_at_a_threshold():
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.4])
    m = at_threshold(labels, scores, 0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 3)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(4 / 6) and m["accuracy"] == pytest.approx(5 / 7)


def test_perfect_separation():
    m = screening_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert m["auc"] == 1 and m["sensitivity_at_90_specificity"] == 1
    assert m["auc_ci95"] == [1.0, 1.0]


def test_groups_use_the_overall_operating_threshold(scored):
    labels, scores = scored
    groups = np.where(np.arange(labels.size) % 3 == 0, "montgomery", "shenzhen")
    out = by_group(labels, scores, groups)
    assert set(out) == {"all", "montgomery", "shenzhen"}
    chosen = out["all"]["operating_threshold"]
    assert out["montgomery"]["operating_threshold"] == chosen
    assert out["montgomery"]["n"] + out["shenzhen"]["n"] == labels.size
    keep = groups == "shenzhen"
    assert out["shenzhen"]["auc"] == pytest.approx(roc_auc_score(labels[keep], scores[keep]))


def test_the_feature_baseline_is_scikit_learns_and_survives_json(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipeline.tb.model import LogisticScorer

    rng = np.random.default_rng(0)
    features = rng.normal(size=(80, 5)) * [1, 10, 0.1, 3, 1] + [0, 5, 1, 0, -2]
    labels = (features[:, 0] + 0.1 * features[:, 1] + rng.normal(size=80) > 0.5).astype(int)
    scorer = LogisticScorer.fit(features, labels, list("abcde"))
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=5000))
    expected = reference.fit(features, labels).predict_proba(features)[:, 1]
    assert np.allclose(scorer(features), expected, atol=1e-9)
    path = tmp_path / "baseline.json"
    path.write_text(scorer.to_json())
    loaded = LogisticScorer.load(path)
    assert loaded.names == list("abcde") and np.allclose(loaded(features), expected, atol=1e-9)
