"""Datalists and splits on the shared collection."""

from __future__ import annotations

import csv
import json
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


def test_committed_split_file_is_the_documented_split_of_the_shared_data(items, data_dir):
    from pipeline.io.datasets import REPO_ROOT
    from pipeline.training.data import read_split_file, split_document

    committed = json.loads((REPO_ROOT / "data" / "splits" / "montgomery-shenzhen.json").read_text())
    assert committed == split_document(data_dir)  # regenerated: same names, counts, options
    parts = read_split_file(REPO_ROOT / "data" / "splits" / "montgomery-shenzhen.json")
    assert sum(len(p) for p in parts.values()) == len(items) == 600
    for part in ("train", "validation", "test"):  # stratified: each part has the set's mix
        counts = committed["counts"][part]
        assert counts["source=montgomery"] / counts["cases"] == pytest.approx(114 / 600, abs=0.01)
        assert counts["tuberculosis=1"] / counts["cases"] == pytest.approx(290 / 600, abs=0.01)


def test_load_split_reads_a_split_file_and_filters_by_column(tmp_path, data_dir):
    from pipeline.training.data import write_split_file

    path = write_split_file(data_dir, tmp_path / "split.json", seed=3)
    test = load_split(data_dir, "test", split_file=path)
    assert {c["name"] for c in test} == set(json.loads(path.read_text())["test"])
    shenzhen = load_split(data_dir, "train", where={"source": "shenzhen"}, test_fraction=0.0)
    assert shenzhen and all(c["source"] == "shenzhen" for c in shenzhen)
    both = load_split(
        data_dir,
        "train",
        where={"source": ["shenzhen", "montgomery"]},
        val_fraction=0.0,
        test_fraction=0.0,
    )
    assert len(both) == 600
    with pytest.raises(ValueError, match="no case has a 'hospital' column"):
        load_split(data_dir, "train", where={"hospital": "x"})
    (tmp_path / "bad.json").write_text(
        json.dumps({"train": [], "validation": [], "test": ["x.png"]})
    )
    with pytest.raises(ValueError, match="1 test case"):
        load_split(data_dir, "test", split_file=tmp_path / "bad.json")
    (tmp_path / "not.json").write_text("{}")
    with pytest.raises(ValueError, match="not a split file"):
        load_split(data_dir, "test", split_file=tmp_path / "not.json")


def test_lung_field_file_lists_cases_of_the_shared_data(items, data_dir):
    from pathlib import Path

    from pipeline.training.data import read_lung_field_cases, repeat_cases

    path = Path(__file__).parents[2] / "data" / "splits" / "montgomery-shenzhen-lung-field.json"
    names = read_lung_field_cases(path)
    assert 30 < len(names) < 100 and set(names) <= {i["name"] for i in items}
    assert read_lung_field_cases(None) == []
    repeated = repeat_cases(items, names, 3)
    assert len(repeated) == len(items) + 2 * len(names)
    assert Counter(i["name"] for i in repeated)[names[0]] == 3
    with pytest.raises(ValueError, match="repeat 0"):
        repeat_cases(items, names, 0)


def test_lung_field_file_errors_name_the_file(tmp_path):
    from pipeline.training.data import read_lung_field_cases

    bad = tmp_path / "split.json"
    bad.write_text('{"train": []}')
    with pytest.raises(ValueError, match=r"split\.json: not a lung-field file"):
        read_lung_field_cases(bad)


def test_repeat_sources_rebalances_collections(items):
    from pipeline.training.data import repeat_sources

    repeated = repeat_sources(items, {"montgomery": 3})
    assert Counter(i["source"] for i in repeated) == {"shenzhen": 486, "montgomery": 342}
    assert Counter(i["name"] for i in repeated)["MCUCXR_0001_0.png"] == 3
    assert repeat_sources(items, {}) == items
    with pytest.raises(ValueError, match=r"'padchest'.*\['montgomery', 'shenzhen'\]"):
        repeat_sources(items, {"padchest": 2})
    with pytest.raises(ValueError, match="repeat 0"):
        repeat_sources(items, {"montgomery": 0})
