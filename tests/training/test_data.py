"""Datalists and splits on the shared collection."""

from __future__ import annotations

import csv
import shutil
from collections import Counter

import pytest

from pipeline.training.data import datalist, fingerprint, load_split, split


@pytest.fixture(scope="module")
def items(data_dir):
    return datalist(data_dir)


def test_collection_pairs_every_image_with_its_mask(items, data_dir):
    assert len(items) == 600
    for item in items[::50]:
        assert item["image"].endswith("/images/" + item["name"])
        assert item["label"].endswith("/masks/" + item["name"])
    assert Counter(i["source"] for i in items) == {"shenzhen": 486, "montgomery": 114}


def test_split_is_deterministic_disjoint_complete_and_stratified(items):
    parts = split(items, val_fraction=0.15, test_fraction=0.15, seed=0)
    again = split(list(reversed(items)), val_fraction=0.15, test_fraction=0.15, seed=0)
    names = {p: [i["name"] for i in v] for p, v in parts.items()}
    assert names == {p: [i["name"] for i in v] for p, v in again.items()}  # order of input ignored
    assert [len(v) for v in parts.values()] == [420, 90, 90]
    assert len(set().union(*names.values())) == 600
    for part in parts.values():
        share = sum(i["source"] == "montgomery" for i in part) / len(part)
        assert share == pytest.approx(114 / 600, abs=0.02)
        tb = sum(i["tuberculosis"] == "1" for i in part) / len(part)
        assert tb == pytest.approx(290 / 600, abs=0.03)
    other = split(items, seed=1)
    assert {i["name"] for i in other["test"]} != set(names["test"])


def test_k_fold_validation_sets_partition_the_non_test_cases(items):
    folds = [split(items, test_fraction=0.15, folds=5, fold=k) for k in range(5)]
    tests = {frozenset(i["name"] for i in f["test"]) for f in folds}
    assert len(tests) == 1  # the test part does not depend on the fold
    vals = [{i["name"] for i in f["validation"]} for f in folds]
    assert sum(len(v) for v in vals) == 510 and len(set().union(*vals)) == 510
    with pytest.raises(ValueError, match="fold 5 is out of range for 5 folds"):
        split(items, folds=5, fold=5)


def test_csv_datalist_with_relative_paths(tmp_path, data_dir):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    shutil.copy(data_dir / "images" / "CHNCXR_0001_0.png", tmp_path / "img" / "a.png")
    shutil.copy(data_dir / "masks" / "CHNCXR_0001_0.png", tmp_path / "lab" / "a.png")
    with open(tmp_path / "list.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["image", "label", "site"], ["img/a.png", "lab/a.png", "x"]])
    (item,) = datalist(tmp_path / "list.csv")
    assert item["image"] == str(tmp_path / "img" / "a.png") and item["site"] == "x"
    (tmp_path / "bad.csv").write_text("path\nimg/a.png\n")
    with pytest.raises(ValueError, match="lacks 'image' or 'label'"):
        datalist(tmp_path / "bad.csv")


def test_load_split_limit_and_bad_part(data_dir):
    assert len(load_split(data_dir, "validation", limit=5)) == 5
    with pytest.raises(ValueError, match="train, validation, test"):
        load_split(data_dir, "dev")


def test_fingerprint_follows_the_data(items):
    assert fingerprint(items) == fingerprint(list(reversed(items)))
    assert fingerprint(items) != fingerprint(items[1:])
