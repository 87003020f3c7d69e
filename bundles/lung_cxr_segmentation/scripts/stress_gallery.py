"""Before/after gallery of the hardest stress-protocol cases (model card figure).

usage (from the bundle folder)::

    python scripts/stress_gallery.py OLD_PER_CASE_CSV OLD_CHECKPOINT DATA docs/stress_gallery.png

Picks the lowest-Dice (stress, severity 3) case of every stress type in the old model's
``per_case.csv`` (``lungseg protocol stress``), rebuilds the stressed image with the
protocol's seeded generator, and draws it segmented by the old checkpoint (left) and by this
bundle (right): reference green, prediction magenta, missed red, extra blue.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from pipeline.evaluation.metrics import overlap_metrics
from pipeline.evaluation.plots import case_overlay, pyplot, save_figure
from pipeline.evaluation.stress import Stress, apply_stress
from pipeline.inference.predictor import Predictor
from pipeline.io.reader import read_cxr
from pipeline.transforms import binarize_mask

BUNDLE = Path(__file__).resolve().parents[1]


def hardest(per_case: Path) -> list[dict]:
    """The worst severity-3 row of each stress."""
    with open(per_case, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["severity"] == "3"]
    worst: dict[str, dict] = {}
    for r in rows:
        if r["stress"] not in worst or float(r["dice"]) < float(worst[r["stress"]]["dice"]):
            worst[r["stress"]] = r
    return [worst[s.value] for s in Stress if s.value in worst]


def main(per_case: str, old_checkpoint: str, data: str, out: str) -> None:
    """Draw the figure."""
    old = Predictor(  # as 0.2.0 ran: no view check (its thresholds are this model's)
        BUNDLE,
        "cpu",
        {"ckpt_path": str(Path(old_checkpoint).resolve()), "ensemble": [], "view_check": "off"},
    )
    new = Predictor(BUNDLE, "cpu")
    cases = hardest(Path(per_case))
    plt = pyplot()
    fig, axes = plt.subplots(len(cases), 2, figsize=(6.4, 3.3 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases, strict=True):
        image, _ = read_cxr(Path(data) / "images" / case["name"])
        truth = binarize_mask(read_cxr(Path(data) / "masks" / case["name"])[0]) > 0
        image, truth = apply_stress(image, truth, Stress(case["stress"]), 3, case["name"])
        for ax, model, label in ((row[0], old, "0.2.0"), (row[1], new, "this bundle")):
            mask = model.predict_single_npy_array(image).mask
            dice = overlap_metrics(mask, truth)["dice"]
            ax.imshow(case_overlay(image, mask, truth))
            ax.set_title(f"{case['name']} {case['stress']} 3\n{label}: Dice {dice:.3f}", fontsize=7)
            ax.axis("off")
    save_figure(fig, out)


if __name__ == "__main__":
    main(*sys.argv[1:5])
