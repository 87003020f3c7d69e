r"""Which reference masks of a collection are drawn to the anatomical lung-field convention.

Most Montgomery/Shenzhen masks outline the visible lung (the left lung stops at the heart's
border); some include the left lower lobe behind the heart. This script finds the latter:
it predicts every case with a *visible-convention* model (the shipped bundle's
``lung_field: visible`` model by default),
takes :func:`pipeline.transforms.lung_field.retrocardiac_region` of the prediction and
measures how much of that region the reference mask fills. Visible-convention masks fill
little of it (median ~1 %), anatomical ones a large part; the cut is ``--threshold``
(0.25: on the shared data the fills below 0.15 hold 540 cases, 0.15-0.25 ten, above 0.25
fifty).

Usage::

    python data/scripts/lung_field_conventions.py ../shared/data/montgomery-shenzhen \\
        data/splits/montgomery-shenzhen-lung-field.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.inference.predictor import Predictor
from pipeline.io.atomic import write_text_atomic
from pipeline.io.datasets import list_cases
from pipeline.io.reader import read_cxr
from pipeline.transforms.lung_field import retrocardiac_region


def fills(collection: Path, predictor: Predictor) -> dict[str, float]:
    """Per case: the share of the predicted mask's retrocardiac region the reference fills."""
    cases = [c for c in list_cases(collection) if c.mask is not None]
    out = {}
    predictions = predictor.predict_from_files([c.image for c in cases])
    for case, pred in zip(cases, predictions, strict=True):
        reference = read_cxr(case.mask)[0] > 0.5
        region = retrocardiac_region(pred.mask)
        out[case.name] = float((reference & region).sum() / max(region.sum(), 1))
    return out


def main() -> None:
    """Write the lung-field file of a collection."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("collection", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--threshold", type=float, default=0.25)
    parser.add_argument("--bundle", help="a visible-convention bundle (default: the shipped one)")
    args = parser.parse_args()
    visible = Predictor(args.bundle, device="auto", overrides={"lung_field": "visible"})
    per_case = fills(args.collection, visible)
    document = {
        "description": "Reference masks drawn to the anatomical lung-field convention (the "
        "left lung behind the heart included); written by data/scripts/lung_field_conventions.py",
        "threshold": args.threshold,
        "anatomical": sorted(n for n, f in per_case.items() if f >= args.threshold),
        "fill": {n: round(f, 4) for n, f in sorted(per_case.items())},
    }
    write_text_atomic(args.output, json.dumps(document, indent=1) + "\n")
    print(f"{len(document['anatomical'])} of {len(per_case)} anatomical -> {args.output}")


if __name__ == "__main__":
    main()
