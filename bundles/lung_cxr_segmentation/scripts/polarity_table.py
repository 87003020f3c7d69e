r"""The polarity check, measured: right images kept, negatives turned back.

usage (from the repository root)::

    python bundles/lung_cxr_segmentation/scripts/polarity_table.py OUT_MD \\
        [--bundle bundles/lung_cxr_segmentation] [--parts validation test] [--max-cases N]

For every case of each part of the shared split, clean and under each stress of ``lungseg
protocol stress`` at severity 3, the image as read and its negative (``1 - x``: what a file
whose header inverts it gives) are segmented by the bundle with its polarity check on
(``polarity: auto``) and off (``as_read``). Per part and condition, the table gives:

- *as read, second pass*: the share of right images the check took through the network a
  second time (their confidence under the check's ``below``); *as read, turned*: right
  images segmented as their negative (the check's one harmful error);
- *negatives turned back*: negatives the check segmented as their negative, i.e. the
  right way round;
- mean Dice against the reference (the lung field, moved with the image where the stress
  moves it) of the negatives without and with the check, and of the right images with it.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline.enums import Polarity
from pipeline.evaluation.stress import SEVERITIES, Stress, _cases, _load_case, apply_stress
from pipeline.inference.predictor import Predictor
from pipeline.io.datasets import default_data_dir

REPO = Path(__file__).resolve().parents[3]
HEADER = """# The polarity check: images as read and their negatives

Written by `bundles/lung_cxr_segmentation/scripts/polarity_table.py` (its docstring says what
each column is). Each case of the part, clean and under each stress at severity 3, as read and
as its negative, segmented with the bundle's polarity check on and off. Dice is against the
split's reference masks (visible lung; the anatomical model scores ~0.92 there).
"""


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b)))


def _one(on: Predictor, off: Predictor, image: np.ndarray, truth: np.ndarray) -> dict:
    """One image through the check on and off: its Dice both ways and what the check did."""
    with_check, without = on.predict_single_npy_array(image), off.predict_single_npy_array(image)
    lungs = without.coarse_probability[without.coarse_probability > 0.5]
    confidence = float(lungs.mean()) if lungs.size else 0.0
    return {
        "second": confidence < on.polarity_check.below,
        "turned": with_check.meta.get("polarity") == Polarity.INVERTED,
        "dice_on": _dice(with_check.mask, truth),
        "dice_off": _dice(without.mask, truth),
    }


def measure(bundle: Path, part: str, max_cases: int | None) -> dict[str, dict[str, list]]:
    """Per condition, the results of the right images (``read``) and the negatives."""
    on = Predictor(bundle, device="cpu", overrides={"polarity": "auto"})
    off = Predictor(bundle, device="cpu", overrides={"polarity": "as_read"})
    out: dict[str, dict[str, list]] = defaultdict(lambda: {"read": [], "negative": []})
    conditions = [(Stress.CLEAN, 0)] + [(s, max(SEVERITIES)) for s in Stress if s != "clean"]
    for case in _cases(default_data_dir(), None, part, max_cases):
        image0, truth0 = _load_case(case)
        name = Path(case["image"]).name
        for stress, severity in conditions:
            image, truth = apply_stress(image0, truth0, stress, severity, name)
            out[str(stress)]["read"].append(_one(on, off, image, truth))
            out[str(stress)]["negative"].append(_one(on, off, 1 - image, truth))
    return out


def table(part: str, results: dict[str, dict[str, list]]) -> str:
    """The markdown table of one part."""
    lines = [
        f"**{part}** part:",
        "",
        "| condition | images | as read: second pass | as read: turned | negatives turned back"
        " | Dice, negatives, check off / on | Dice, as read, check on |",
        "|---|---|---|---|---|---|---|",
    ]
    for stress, r in results.items():
        read, neg = r["read"], r["negative"]
        count = lambda rows, key: sum(x[key] for x in rows)  # noqa: E731
        mean = lambda rows, key: np.mean([x[key] for x in rows])  # noqa: E731
        lines.append(
            f"| {stress} | {len(read)} | {count(read, 'second')} | {count(read, 'turned')}"
            f" | {count(neg, 'turned')} | {mean(neg, 'dice_off'):.3f} / {mean(neg, 'dice_on'):.3f}"
            f" | {mean(read, 'dice_on'):.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse the arguments, measure each part, write the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--bundle", type=Path, default=REPO / "bundles" / "lung_cxr_segmentation")
    ap.add_argument("--parts", nargs="+", default=["validation", "test"])
    ap.add_argument("--max-cases", type=int)
    args = ap.parse_args()
    tables = [table(p, measure(args.bundle, p, args.max_cases)) for p in args.parts]
    text = "\n".join([HEADER, *tables])
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
