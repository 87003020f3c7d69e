"""Masks of the network in bfloat16 against float32, on the test part of the split.

``precision: auto`` (``inference.json``) runs the network in bfloat16 on CPUs with native
bfloat16 instructions. This script predicts every test case (the shared 512² images, and
the same images under the stress protocol's strongest conditions) with the shipped
config in float32 and in bfloat16 and prints, per input kind, the Dice of the two masks
(mean, min) and each one's Dice against the reference mask.

    .venv/bin/python benchmarks/precision_agreement.py [--max-cases 90] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1 when both are empty)."""
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


def inputs(cases: list[dict], stress: object) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(image, reference mask)`` of each case under ``stress`` at severity 3 (as the protocol)."""
    from pipeline.evaluation.stress import _load_case, apply_stress

    return [apply_stress(*_load_case(c), stress, 3, str(c["name"])) for c in cases]


def main() -> None:
    """Predict every input in both precisions; print and save the table."""
    from pipeline.evaluation.stress import Stress, _cases
    from pipeline.inference.predictor import Predictor
    from pipeline.io.datasets import default_data_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-cases", type=int, default=90)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    models = {
        p: Predictor(device="cpu", overrides={"precision": p}) for p in ("float32", "bfloat16")
    }
    cases = _cases(default_data_dir(), None, "test", args.max_cases)
    results = {}
    for stress in Stress:
        rows = []
        for image, truth in inputs(cases, stress):
            a, b = (m.predict_single_npy_array(image).mask for m in models.values())
            rows.append((dice(a, b), dice(a, truth), dice(b, truth)))
        r = np.asarray(rows)
        kind = "clean" if stress is Stress.CLEAN else f"{stress}, severity 3"
        results[kind] = {
            "cases": len(rows),
            "agreement_mean": float(r[:, 0].mean()),
            "agreement_min": float(r[:, 0].min()),
            "dice_float32": float(r[:, 1].mean()),
            "dice_bfloat16": float(r[:, 2].mean()),
        }
        print(json.dumps({kind: results[kind]}), flush=True)
    print("| input | cases | agreement, mean Dice | min | Dice float32 | Dice bfloat16 |")
    print("|---|---|---|---|---|---|")
    for kind, r in results.items():
        print(
            f"| {kind} | {r['cases']} | {r['agreement_mean']:.5f} | {r['agreement_min']:.5f}"
            f" | {r['dice_float32']:.4f} | {r['dice_bfloat16']:.4f} |"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
