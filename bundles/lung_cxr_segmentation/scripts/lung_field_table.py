r"""Clean test results by the reference's lung-field convention (model card table).

usage (from the bundle folder)::

    python scripts/lung_field_table.py DATA SPLIT_FILE LUNG_FIELD_FILE OUT_CSV \\
        [--models A.pt B.pt ...] [--part test]

Every case of the part is predicted (by this bundle, or by the given checkpoints as an
ensemble) and scored against its reference twice: plainly, and *where the reference
decides*: for a reference drawn to the visible convention, the pixels of its
retrocardiac region (the lung behind the heart, which such a mask leaves out without
saying it is not lung) is left out of both masks; an anatomical reference decides
everywhere (:mod:`pipeline.evaluation.lung_field`). ``retro_claimed`` is the share of that region
the prediction calls lung. Prints a markdown table by convention and source.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from pipeline.evaluation.lung_field import undecided
from pipeline.evaluation.metrics import overlap_metrics
from pipeline.inference.predictor import Predictor
from pipeline.io.reader import read_cxr
from pipeline.training.data import read_lung_field_cases, read_split_file
from pipeline.transforms import binarize_mask

BUNDLE = Path(__file__).resolve().parents[1]
COLUMNS = ("dice", "dice_decided", "precision_decided", "recall_decided", "retro_claimed")


def score(pred: np.ndarray, truth: np.ndarray, anatomical: bool) -> dict[str, float]:
    """Plain Dice, and Dice/precision/recall where the reference decides."""
    region = undecided(truth, anatomical)
    decided = overlap_metrics(pred & ~region, truth & ~region)
    return {
        "dice": overlap_metrics(pred, truth)["dice"],
        "dice_decided": decided["dice"],
        "precision_decided": decided["precision"],
        "recall_decided": decided["recall"],
        "retro_claimed": float((pred & region).sum() / region.sum()) if region.any() else np.nan,
    }


def rows(data: Path, names: list[str], anatomical: set[str], predictor: Predictor) -> list[dict]:
    """One scored row per case."""
    out = []
    predictions = predictor.predict_from_files([data / "images" / n for n in names])
    for name, pred in zip(names, predictions, strict=True):
        truth = binarize_mask(read_cxr(data / "masks" / name)[0]) > 0
        convention = "anatomical" if name in anatomical else "visible"
        source = "montgomery" if name.startswith("MCU") else "shenzhen"
        out.append({"name": name, "convention": convention, "source": source,
                    **score(pred.mask, truth, name in anatomical)})  # fmt: skip
    return out


def _mean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def table(scored: list[dict]) -> str:
    """Markdown: mean of every column by group."""
    groups = {"all": scored}
    for key in ("convention", "source"):
        for value in sorted({r[key] for r in scored}):
            groups[f"{key} = {value}"] = [r for r in scored if r[key] == value]
    lines = ["| cases | n | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for label, group in groups.items():
        means = [_mean([r[c] for r in group]) for c in COLUMNS]
        lines.append(f"| {label} | {len(group)} | " + " | ".join(f"{m:.4f}" for m in means) + " |")
    return "\n".join(lines)


def main() -> None:
    """Score, write the CSV, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("split_file", type=Path)
    parser.add_argument("lung_field_file", type=Path)
    parser.add_argument("out_csv", type=Path)
    parser.add_argument("--models", nargs="+", type=Path)
    parser.add_argument("--part", default="test")
    args = parser.parse_args()
    overrides = {}
    if args.models:
        first, *rest = (str(p.resolve()) for p in args.models)
        overrides = {"ckpt_path": first, "ensemble": rest}
    predictor = Predictor(BUNDLE, "cpu", overrides)
    names = read_split_file(args.split_file)[args.part]
    scored = rows(args.data, names, set(read_lung_field_cases(args.lung_field_file)), predictor)
    with open(args.out_csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(scored[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(scored)
    print(table(scored))
    print(json.dumps({"models": [str(m) for m in args.models or []]}))


if __name__ == "__main__":
    main()
