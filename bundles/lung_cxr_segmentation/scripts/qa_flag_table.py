r"""How often the ``small_for_hemithorax`` QA flag fires, on real masks and simulated failures.

usage (from the repository root)::

    python bundles/lung_cxr_segmentation/scripts/qa_flag_table.py DATA OUT_MD \\
        [--split data/splits/montgomery-shenzhen.json] [--model] [--size 512]

Three tables, written as markdown:

1. **Reference masks** of every part of the split: the share flagged (a flag on a
   reference is a lung that really is small: collapse, destroyed lung, a child's thorax).
2. **Simulated failures** on the test part's references, the failure the flag is for: the
   mask leaves out the lower third / half / two thirds of one lung (an opacified base or an
   effusion left out, the lung shrunk to a fragment), of both lungs, or both lungs shrunk
   from their edges by 3 % / 6 % of the thorax span. Each row gives the share the new flag
   catches, the share ``implausible_left_right_ratio`` catches, and the share any flag
   catches.
3. With ``--model``: the shipped model's masks of the test part, clean and under the
   stress protocol's strongest consolidation and effusion: the share flagged (there the
   model's mask is good, so these are the flag's false alarms, unless the reference is
   flagged too).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline.enums import QAFlag
from pipeline.inference.lungs import measure_sides, split_lungs
from pipeline.io.reader import read_cxr
from pipeline.training.data import read_split_file
from pipeline.transforms import binarize_mask

REPO = Path(__file__).resolve().parents[3]


def reference(data: Path, name: str, size: int) -> np.ndarray:
    """A case's reference mask, nearest-neighbour sampled to at most ``size`` columns."""
    mask = binarize_mask(read_cxr(data / "masks" / name)[0]) > 0
    step = max(1, mask.shape[1] // size)
    return mask[::step, ::step]


def flags(right: np.ndarray, left: np.ndarray, components: int = 2) -> set[QAFlag]:
    """The QA flags of a pair of lungs (confidence taken as certain)."""
    return set(measure_sides(right, left, components, 1.0).flags)


def cut_base(lung: np.ndarray, share: float) -> np.ndarray:
    """The lung without the lower ``share`` of its height."""
    rows = np.flatnonzero(lung.any(axis=1))
    out = lung.copy()
    out[int(rows[0] + (1 - share) * (rows[-1] - rows[0])) + 1 :] = False
    return out


def shrink(lung: np.ndarray, share: float, span: int) -> np.ndarray:
    """The lung eroded by ``share`` of the thorax span from every edge."""
    return ndimage.distance_transform_edt(lung) > share * span


def failures(right: np.ndarray, left: np.ndarray) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """The simulated failures of one case: ``(name, right, left)``."""
    span = np.ptp(np.flatnonzero((right | left).any(axis=0))) + 1
    for share in (1 / 3, 1 / 2, 2 / 3):
        yield f"one lung's lower {share:.0%} left out", cut_base(right, share), left
        yield (
            f"both lungs' lower {share:.0%} left out",
            cut_base(right, share),
            cut_base(left, share),
        )
    for share in (0.03, 0.06):
        yield (
            f"both lungs shrunk by {share:.0%} of the span",
            shrink(right, share, span),
            shrink(left, share, span),
        )


def reference_table(data: Path, split: dict, size: int) -> list[str]:
    """Table 1: the share of reference masks flagged, by split part."""
    lines = ["| part | cases | small_for_hemithorax | flagged cases |", "|---|---|---|---|"]
    for part in ("train", "validation", "test"):
        hit = [
            n
            for n in split[part]
            if QAFlag.SMALL_FOR_HEMITHORAX in flags(*split_lungs(reference(data, n, size))[:2])
        ]
        share = len(hit) / len(split[part])
        lines.append(f"| {part} | {len(split[part])} | {share:.1%} | {', '.join(hit)} |")
    return lines


def failure_table(data: Path, names: list[str], size: int) -> list[str]:
    """Table 2: the share of simulated failures each flag catches."""
    caught: dict[str, list[tuple[bool, bool, bool]]] = {}
    for name in names:
        right, left, _ = split_lungs(reference(data, name, size))
        for kind, r, lt in failures(right, left):
            found = flags(r, lt, 2 if r.any() and lt.any() else 1)
            caught.setdefault(kind, []).append(
                (
                    QAFlag.SMALL_FOR_HEMITHORAX in found,
                    QAFlag.IMPLAUSIBLE_RATIO in found,
                    bool(found),
                )
            )
    lines = [
        "| simulated failure | small_for_hemithorax | implausible_left_right_ratio | any flag |",
        "|---|---|---|---|",
    ]
    for kind, hits in caught.items():
        new, ratio, any_flag = np.mean(hits, axis=0)
        lines.append(f"| {kind} | {new:.0%} | {ratio:.0%} | {any_flag:.0%} |")
    return lines


def model_table(data: Path, names: list[str]) -> list[str]:
    """Table 3: the share of the shipped model's masks flagged, clean and stressed."""
    from pipeline.evaluation.stress import Stress, apply_stress
    from pipeline.inference.predictor import Predictor

    predictor = Predictor(device="cpu")
    cases = {
        name: (read_cxr(data / "images" / name)[0], reference(data, name, size=1 << 30))
        for name in names
    }  # read once, stressed three ways
    lines = ["| condition | cases | small_for_hemithorax | flagged cases |", "|---|---|---|---|"]
    for stress, severity in ((Stress.CLEAN, 0), (Stress.CONSOLIDATION, 3), (Stress.EFFUSION, 3)):
        hit = []
        for name, (image, truth) in cases.items():
            stressed, _ = apply_stress(image, truth, stress, severity, name)
            pred = predictor.predict_single_npy_array(stressed)
            if QAFlag.SMALL_FOR_HEMITHORAX in pred.measures.flags:
                hit.append(name)
        label = f"{stress} {severity}" if severity else str(stress)
        lines.append(f"| {label} | {len(names)} | {len(hit) / len(names):.1%} | {', '.join(hit)} |")
    return lines


def main() -> None:
    """Write the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--split", type=Path, default=REPO / "data/splits/montgomery-shenzhen.json")
    ap.add_argument("--model", action="store_true", help="also the shipped model's masks")
    ap.add_argument("--size", type=int, default=512, help="masks sampled to this many columns")
    args = ap.parse_args()
    split = read_split_file(args.split)
    lines = ["## Reference masks", "", *reference_table(args.data, split, args.size), ""]
    lines += ["## Simulated failures (test part)", ""]
    lines += [*failure_table(args.data, split["test"], args.size), ""]
    if args.model:
        lines += [
            "## The shipped model's masks (test part)",
            "",
            *model_table(args.data, split["test"]),
            "",
        ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
