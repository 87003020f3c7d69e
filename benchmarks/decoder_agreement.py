"""Masks from lungseg's first-choice JPEG decoders against pydicom's own order, on the test split.

Lossless JPEG decoders all give the same values; lossy ones may differ by a unit or two
(the standard allows it). ``pipeline.io.decoders`` decodes JPEG Baseline with Pillow's
libjpeg-turbo and JPEG Extended 12-bit with libjpeg-turbo through imagecodecs, where
pydicom tries pylibjpeg-libjpeg first. This script builds lossy DICOM files from the test
part of the shared split, predicts each with both decoders (the shipped model, CPU) and
prints, per input, the masks' Dice (mean, min), the largest difference of the decoded
stored values and each decoder's time per frame.

    .venv/bin/python benchmarks/decoder_agreement.py [--max-cases 90] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from reduced_resolution_agreement import dice  # noqa: E402

#: (rows, columns, syntax) of each input kind.
KINDS = {
    "512² 8-bit JPEG Baseline": (512, 512, "1.2.840.10008.1.2.4.50"),
    "512² 12-bit JPEG Extended": (512, 512, "1.2.840.10008.1.2.4.51"),
    "2048² 12-bit JPEG Extended": (2048, 2048, "1.2.840.10008.1.2.4.51"),
}


def build(pixels: np.ndarray, syntax: str, path: Path) -> Path:
    """A lossy JPEG DICOM file of 8-bit ``pixels`` (12-bit: scaled, low bits filled)."""
    import imagecodecs
    from pydicom.encaps import encapsulate

    from pipeline.io.convert import DicomVariant, build_dicom, write_dicom

    if syntax.endswith(".50"):
        return write_dicom(build_dicom(pixels, DicomVariant.JPEG_BASELINE), path)
    ds = build_dicom(pixels, DicomVariant.RESCALE_12BIT)
    stored = ds.pixel_array | (np.arange(pixels.size, dtype=np.uint16).reshape(pixels.shape) % 16)
    ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(stored, level=90, bitspersample=12)])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_10918_1"
    ds.file_meta.TransferSyntaxUID = syntax
    return write_dicom(ds, path)


@contextlib.contextmanager
def pydicoms_order(own_order: bool) -> Iterator[None]:
    """With ``own_order``, lungseg's first-choice decoders set aside (pydicom's order)."""
    from pipeline.io import decoders

    real = decoders.plugin_for
    decoders.plugin_for = (lambda ds: None) if own_order else real
    try:
        yield
    finally:
        decoders.plugin_for = real


def decoded(path: Path, own_order: bool) -> tuple[np.ndarray, float]:
    """The stored values and the CPU seconds of decoding them (pydicom's order or lungseg's)."""
    import pydicom

    from pipeline.io.dicom import decode_stored

    ds = pydicom.dcmread(path)
    with pydicoms_order(own_order):
        start = time.process_time()
        return decode_stored(ds, path), time.process_time() - start


def mask(model, path: Path, own_order: bool) -> np.ndarray:
    """The shipped model's mask of ``path``, decoded in pydicom's order or lungseg's."""
    with pydicoms_order(own_order):
        return next(model.predict_from_files([path])).mask


def measure(model, cases: list, kind: str, tmp: Path) -> dict:
    """One input kind over ``cases``: Dice of the masks, value differences, decode times."""
    from PIL import Image

    rows, cols, syntax = KINDS[kind]
    scores, largest, times = [], 0, {"lungseg": [], "pydicom": []}
    for case in cases:
        with Image.open(case["image"]) as img:
            pixels = np.asarray(img.convert("L").resize((cols, rows), Image.BICUBIC))
        path = build(pixels, syntax, tmp / "x.dcm")
        (fast, t_fast), (own, t_own) = decoded(path, False), decoded(path, True)
        largest = max(largest, int(np.abs(fast.astype(np.int64) - own).max()))
        times["lungseg"].append(t_fast)
        times["pydicom"].append(t_own)
        scores.append(dice(mask(model, path, False), mask(model, path, True)))
    return {
        "cases": len(scores),
        "mean": float(np.mean(scores)),
        "min": float(np.min(scores)),
        "largest_value_difference": largest,
        "decode_ms": {k: 1e3 * float(np.median(v)) for k, v in times.items()},
    }


def main() -> None:
    """Every input kind over the test cases; print and save the table."""
    from pipeline.inference.predictor import Predictor
    from pipeline.io.datasets import default_data_dir
    from pipeline.training.data import load_split

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-cases", type=int, default=90)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model = Predictor(device="cpu")
    cases = load_split(default_data_dir(), "test", args.max_cases)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            results[kind] = measure(model, cases, kind, Path(tmp))
            print(json.dumps({kind: results[kind]}), flush=True)
    print(
        "| input | cases | mean Dice | min Dice | largest value difference "
        "| decode, lungseg (ms) | decode, pydicom's order (ms) |\n|---|---|---|---|---|---|---|"
    )
    for kind, r in results.items():
        ms = r["decode_ms"]
        print(
            f"| {kind} | {r['cases']} | {r['mean']:.5f} | {r['min']:.5f} | "
            f"{r['largest_value_difference']} | {ms['lungseg']:.1f} | {ms['pydicom']:.1f} |"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
