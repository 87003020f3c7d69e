"""Grouped summaries of per-case metrics."""

from __future__ import annotations

import json

import pytest

from pipeline.evaluation import group_summary, read_metric_details, write_group_summary

ITEMS = [
    {"image": "/d/a.png", "source": "montgomery"},
    {"image": "/d/b.png", "source": "shenzhen"},
    {"image": "/d/c.png", "source": "shenzhen"},
]


def test_group_summary_by_source():
    out = group_summary({"/d/a.png": 0.9, "/d/b.png": 0.8, "/d/c.png": 0.6}, ITEMS, ["source"])
    assert out["all"]["n"] == 3 and out["all"]["mean"] == pytest.approx(0.7666666)
    assert out["source"]["shenzhen"] == pytest.approx(
        {"n": 2, "mean": 0.7, "std": 0.1414213, "median": 0.7, "min": 0.6}
    )
    assert out["source"]["montgomery"]["std"] == 0.0


def test_unknown_case_is_named():
    with pytest.raises(ValueError, match=r"'/d/x\.png' matches no datalist item"):
        group_summary({"/d/x.png": 1.0}, ITEMS, ["source"])


def test_reads_monai_metrics_saver_details_and_writes_json(tmp_path):
    (tmp_path / "dice_raw.csv").write_text(
        "filename,class0,mean\n/d/a.png,0.9,0.9\n/d/b.png,0.5,0.5\n"
    )
    assert read_metric_details(tmp_path / "dice_raw.csv") == {"/d/a.png": 0.9, "/d/b.png": 0.5}
    summary = write_group_summary(tmp_path, "dice", ITEMS)
    assert json.loads((tmp_path / "dice_by_group.json").read_text()) == summary
    assert summary["source"]["shenzhen"]["n"] == 1


def test_rejects_other_csv(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="expected a MetricsSaver details file"):
        read_metric_details(tmp_path / "x.csv")
