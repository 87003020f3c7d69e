"""Draw the model card's overlay figure from ``lungseg evaluate``'s per-case results.

usage (from the bundle folder)::

    python scripts/overlay_figure.py docs/evaluation/per_case.csv DATASET_DIR docs/overlay.png

Panels: the two median cases and the two worst cases of ``per_case.csv``, segmented again by
this bundle (the predictor); the reference mask is outlined in green, the prediction in
magenta.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from pipeline.inference.predictor import Predictor

BUNDLE = Path(__file__).resolve().parents[1]

SIZE = 384


def outline(mask: np.ndarray) -> np.ndarray:
    """The one-pixel boundary of a boolean mask (dilated once to show at small sizes)."""
    edge = mask & ~ndimage.binary_erosion(mask)
    return ndimage.binary_dilation(edge)


def panel(image: Path, truth: Path, pred: np.ndarray, dice: float) -> Image.Image:
    """The radiograph with both outlines and the Dice written on it, ``SIZE`` pixels square."""
    gray = np.asarray(Image.open(image).convert("L"))
    rgb = np.repeat(gray[..., None], 3, axis=2).copy()
    rgb[outline(np.asarray(Image.open(truth)) > 127)] = (0, 220, 0)
    rgb[outline(pred)] = (255, 0, 255)
    out = Image.fromarray(rgb).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    ImageDraw.Draw(out).text((6, 6), f"{image.name}  Dice {dice:.3f}", fill=(255, 255, 0))
    return out


def main(per_case: str, dataset_dir: str, output: str) -> None:
    """Pick the cases, draw the panels side by side, save ``output``."""
    with open(per_case, newline="") as fh:
        scores = sorted(
            ((r["case"], float(r["dice"])) for r in csv.DictReader(fh) if r["status"] == "ok"),
            key=lambda kv: kv[1],
        )
    middle = len(scores) // 2
    chosen = scores[middle : middle + 2] + scores[:2]
    predictor = Predictor(BUNDLE, device="cpu")
    panels = []
    for name, dice in chosen:
        image = Path(dataset_dir) / "images" / name
        mask = next(predictor.predict_from_files([image])).mask
        panels.append(panel(image, Path(dataset_dir) / "masks" / name, mask, dice))
    figure = Image.new("RGB", (SIZE * len(panels), SIZE))
    for i, p in enumerate(panels):
        figure.paste(p, (i * SIZE, 0))
    figure.save(output)


if __name__ == "__main__":
    main(*sys.argv[1:4])
