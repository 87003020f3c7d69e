"""Masks of the fast path against the full-resolution path, on the test part of the split.

The shipped model path decodes large radiographs at reduced resolution
(``decode_min_size``) and post-processes on the network's grid, bringing only the final
labels to the original grid (``UnletterboxLabelsd``). This script predicts every test case
both ways — the shipped config, and one overridden to decode every pixel and post-process
on the original grid (0.3.0's path) — for DICOM files built from the shared images at
several sizes and encodings, and prints the Dice of the two masks (mean, min) per input.

    .venv/bin/python benchmarks/reduced_resolution_agreement.py [--max-cases 90]
        [--decode-min-size N]   # the fast path with another decode_min_size than the bundle's
        [--bundle DIR]          # another bundle (e.g. a network input size other than 256)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: (rows, columns, DicomVariant value) of each input kind.
KINDS = {
    "512² 16-bit uncompressed": (512, 512, "mono2-16bit"),
    "2048² 12-bit JPEG 2000": (2048, 2048, "jpeg2000"),
    "2048² 16-bit HTJ2K": (2048, 2048, "htj2k"),
    "3000 x 2500 16-bit uncompressed": (3000, 2500, "mono2-16bit"),
    "3000 x 2500 12-bit JPEG 2000": (3000, 2500, "jpeg2000"),
    "2048² 12-bit JPEG Lossless SV1": (2048, 2048, "jpeg-lossless"),
}


def full_resolution_overrides() -> dict:
    """The predictor overrides of the full-resolution reference path."""
    from tests.inference.test_predictor import FULL_RESOLUTION_POSTPROCESSING

    return {"decode_min_size": None, "postprocessing#transforms": FULL_RESOLUTION_POSTPROCESSING}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1 when both are empty)."""
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


def main() -> None:
    """Predict the test cases both ways for every input kind; print and save the table."""
    from PIL import Image

    from pipeline.inference.predictor import Predictor
    from pipeline.io.convert import build_dicom, write_dicom
    from pipeline.io.datasets import default_data_dir
    from pipeline.training.data import load_split

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-cases", type=int, default=90)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--decode-min-size", type=int, help="override the bundle's")
    parser.add_argument("--bundle", type=Path, help="bundle folder (default: the shipped one)")
    args = parser.parse_args()
    fast_overrides = (
        {} if args.decode_min_size is None else {"decode_min_size": args.decode_min_size}
    )
    bundle = {} if args.bundle is None else {"bundle": args.bundle}
    fast = Predictor(**bundle, device="cpu", overrides=fast_overrides)
    full = Predictor(**bundle, device="cpu", overrides=full_resolution_overrides())
    cases = load_split(default_data_dir(), "test", args.max_cases)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            rows, cols, variant = KINDS[kind]
            scores = []
            for case in cases:
                with Image.open(case["image"]) as img:
                    pixels = np.asarray(img.convert("L").resize((cols, rows), Image.BICUBIC))
                path = write_dicom(build_dicom(pixels, variant), Path(tmp) / "x.dcm")
                a = next(fast.predict_from_files([path])).mask
                b = next(full.predict_from_files([path])).mask
                scores.append(dice(a, b))
            results[kind] = {"cases": len(scores), "mean": float(np.mean(scores))}
            results[kind]["min"] = float(np.min(scores))
            print(json.dumps({kind: results[kind]}), flush=True)
    print("| input | cases | mean Dice | min Dice |\n|---|---|---|---|")
    for kind, r in results.items():
        print(f"| {kind} | {r['cases']} | {r['mean']:.5f} | {r['min']:.5f} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
