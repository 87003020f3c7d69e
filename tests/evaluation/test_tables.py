"""Results tables: generated from JSON, placed between markers, checked against the docs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.evaluation import Evaluation
from pipeline.evaluation.tables import marked_block, table_for, update_marked_block
from pipeline.io.datasets import REPO_ROOT

EVALUATION = REPO_ROOT / "bundles" / "lung_cxr_segmentation" / "docs" / "evaluation"
DOCS = (REPO_ROOT / "README.md", REPO_ROOT / "bundles/lung_cxr_segmentation/docs/README.md")


@pytest.fixture()
def summary(lung_mask, tmp_path):
    ev = Evaluation(["source"], worst=0)
    ev.add("a", lung_mask, lung_mask, groups={"source": "x"})
    ev.add("b", np.roll(lung_mask, 3, axis=1), lung_mask, groups={"source": "y"})
    return ev.write(tmp_path)


def test_results_table_has_a_row_per_group(summary):
    name, table = table_for(summary)
    lines = table.splitlines()
    assert name == "lungseg-results" and len(lines) == 2 + 3  # head, rule, all, x, y
    assert lines[2].startswith("| all | 2 | ") and lines[3].startswith("| source = x | 1 | 1.0000")


def test_results_table_adds_dice_where_the_reference_decides(lung_mask, tmp_path, summary):
    ev = Evaluation(anatomical_references=())
    ev.add("a", lung_mask, lung_mask)
    head = table_for(ev.write(tmp_path / "decided"))[1].splitlines()[0]
    assert head.startswith("| cases | n | Dice | Dice, where the reference decides | IoU |")
    assert "where the reference decides" not in table_for(summary)[1]


def test_marked_block_is_replaced_and_checked(summary, tmp_path, capsys):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "intro\n<!-- lungseg-results:begin -->\nold\n<!-- lungseg-results:end -->\nend\n"
    )
    (tmp_path / "s.json").write_text(json.dumps(summary))
    args = ["results-table", str(tmp_path / "s.json"), "--update", str(doc)]
    assert main([*args, "--check"]) == 1 and "out of date" in capsys.readouterr().err
    assert main(args) == 0 and main([*args, "--check"]) == 0
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("end\n") and "old" not in text
    assert not update_marked_block(doc, marked_block(doc))  # unchanged: not rewritten
    (tmp_path / "plain.md").write_text("no markers")
    with pytest.raises(ValueError, match="lungseg-results:begin"):
        update_marked_block(tmp_path / "plain.md", "x")


@pytest.mark.parametrize("source", ["summary.json", "cross-dataset.json"])
def test_documented_tables_are_generated_from_the_committed_results(source):
    name, table = table_for(json.loads((EVALUATION / source).read_text()))
    for doc in DOCS:
        assert marked_block(doc, name) == table, f"{doc}: run lungseg results-table {source}"


def test_committed_evaluation_of_the_shipped_bundle_covers_both_sources():
    from PIL import Image

    from pipeline.inference.bundle import BUNDLE, file_sha256

    summary = json.loads((EVALUATION / "summary.json").read_text())
    assert summary["cases"] == {"evaluated": 90, "failed": 0}  # the test part of the split
    assert summary["model"]["checkpoint_sha256"] == file_sha256(BUNDLE / "models" / "model.pt")
    by_source = summary["statistics"]["groups"]["source"]
    assert {k: v["dice"]["n"] for k, v in by_source.items()} == {"montgomery": 17, "shenzhen": 73}
    for plot in ("roc.png", "dice_by_group.png"):
        with Image.open(EVALUATION / plot) as img:
            assert img.format == "PNG"
