"""Statistics: hand values, NaN handling, bootstrap intervals, grouping."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation.stats import describe, summarise


def test_describe_by_hand():
    s = describe([1.0, 2.0, 3.0, 4.0, math.nan])
    assert s["n"] == 4 and s["mean"] == 2.5 and s["median"] == 2.5
    assert s["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert s["p5"] == pytest.approx(1.15) and (s["min"], s["max"]) == (1.0, 4.0)
    assert 1.0 <= s["ci95_low"] < 2.5 < s["ci95_high"] <= 4.0


def test_no_value_gives_nan_statistics_not_an_error():
    s = describe([math.nan, None])
    assert s["n"] == 0 and math.isnan(s["mean"]) and math.isnan(s["ci95_low"])
    one = describe([0.9])
    assert one["std"] == 0.0 and one["ci95_low"] == one["ci95_high"] == 0.9


def test_bootstrap_interval_is_reproducible_and_narrows_with_more_cases():
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.95, 0.02, 20), rng.normal(0.95, 0.02, 500)
    a, b = describe(small), describe(small)
    assert (a["ci95_low"], a["ci95_high"]) == (b["ci95_low"], b["ci95_high"])

    def width(s: dict) -> float:
        return s["ci95_high"] - s["ci95_low"]

    assert width(describe(large)) < width(a) / 3
    # the interval is about mean +- 1.96 standard errors
    se = large.std(ddof=1) / math.sqrt(large.size)
    assert width(describe(large)) == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_summarise_groups_cases_by_column():
    cases = [
        {"dice": 0.9, "source": "a"},
        {"dice": 0.8, "source": "a"},
        {"dice": 0.5, "source": "b"},
        {"dice": "", "source": "b"},  # an undefined value (empty cell)
        {"dice": 0.7},  # no group
    ]
    s = summarise(cases, ["dice"], ["source"], resamples=200)
    assert s["overall"]["dice"]["n"] == 4
    assert s["groups"]["source"]["a"]["dice"]["mean"] == pytest.approx(0.85)
    assert s["groups"]["source"]["b"]["dice"]["n"] == 1
