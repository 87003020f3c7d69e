r"""The view check, measured: right images kept, negatives and upside-down films turned back.

usage (from the repository root)::

    python bundles/lung_cxr_segmentation/scripts/view_check_table.py OUT_MD \\
        [--bundle bundles/lung_cxr_segmentation] [--parts validation test] [--max-cases N]

For every case of each part of the shared split, clean and under each stress of ``lungseg
protocol stress`` at severity 3, the image as read, its negative (``1 - x``: what a file whose
header inverts it gives) and the image turned by 180 degrees (a film read upside down) are
segmented by the bundle with its view check on (``view_check: auto``) and off (``off``). Per
part and condition, the table gives:

- *as read, checked*: the number of right images the check took through the network again
  (their confidence under the highest of the check's thresholds); *as read, turned*: right
  images segmented in another view (the check's one harmful error);
- *negatives / upside down, turned back*: those the check segmented in the view that undoes
  what was done to them;
- mean Dice against the reference (the lung field, moved with the image where the stress
  moves it, and turned with it) without and with the check.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline.enums import View
from pipeline.evaluation.stress import SEVERITIES, Stress, _cases, _load_case, apply_stress
from pipeline.inference.predictor import Predictor
from pipeline.io.datasets import default_data_dir

REPO = Path(__file__).resolve().parents[3]
HEADER = """# The view check: images as read, their negatives and upside-down films

Written by `bundles/lung_cxr_segmentation/scripts/view_check_table.py` (its docstring says what
each column is). Each case of the part, clean and under each stress at severity 3, as read, as
its negative and turned by 180 degrees, segmented with the bundle's view check on and off. Dice
is against the split's reference masks (visible lung; the anatomical model scores ~0.92 there).
"""
#: What is done to an image, and the view that undoes it.
DONE = {
    "read": (lambda a: a, View.AS_READ),
    "negative": (lambda a: 1 - a, View.NEGATIVE),
    "upside_down": (lambda a: np.rot90(a, 2).copy(), View.ROTATED_180),
}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b)))


def _one(on: Predictor, off: Predictor, image: np.ndarray, truth: np.ndarray) -> dict:
    """One image through the check on and off: its Dice both ways and what the check did."""
    with_check, without = on.predict_single_npy_array(image), off.predict_single_npy_array(image)
    lungs = without.coarse_probability[without.coarse_probability > 0.5]
    confidence = float(lungs.mean()) if lungs.size else 0.0
    return {
        "checked": confidence < max(on.view_check.views.values()),
        "view": with_check.meta.get("view", View.AS_READ.value),
        "dice_on": _dice(with_check.mask, truth),
        "dice_off": _dice(without.mask, truth),
    }


def measure(bundle: Path, part: str, max_cases: int | None) -> dict[str, dict[str, list]]:
    """Per condition and per :data:`DONE`, the results of each case."""
    on = Predictor(bundle, device="cpu", overrides={"view_check": "auto"})
    off = Predictor(bundle, device="cpu", overrides={"view_check": "off"})
    out: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    conditions = [(Stress.CLEAN, 0)] + [(s, max(SEVERITIES)) for s in Stress if s != "clean"]
    for case in _cases(default_data_dir(), None, part, max_cases):
        image0, truth0 = _load_case(case)
        name = Path(case["image"]).name
        for stress, severity in conditions:
            image, truth = apply_stress(image0, truth0, stress, severity, name)
            for done, (change, _) in DONE.items():
                turned = np.rot90(truth, 2) if done == "upside_down" else truth
                out[str(stress)][done].append(_one(on, off, change(image), turned))
    return out


def table(part: str, results: dict[str, dict[str, list]]) -> str:
    """The markdown table of one part."""
    lines = [
        f"**{part}** part:",
        "",
        "| condition | images | as read: checked | as read: turned | negatives turned back"
        " | upside down turned back | Dice, negatives, off / on | Dice, upside down, off / on"
        " | Dice, as read, on |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for stress, r in results.items():
        read, neg, up = r["read"], r["negative"], r["upside_down"]
        mean = lambda rows, key: np.mean([x[key] for x in rows])  # noqa: E731
        undone = lambda rows, done: sum(x["view"] == DONE[done][1] for x in rows)  # noqa: E731
        lines.append(
            f"| {stress} | {len(read)} | {sum(x['checked'] for x in read)}"
            f" | {len(read) - undone(read, 'read')} | {undone(neg, 'negative')}"
            f" | {undone(up, 'upside_down')}"
            f" | {mean(neg, 'dice_off'):.3f} / {mean(neg, 'dice_on'):.3f}"
            f" | {mean(up, 'dice_off'):.3f} / {mean(up, 'dice_on'):.3f}"
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
