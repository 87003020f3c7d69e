"""Draw the model card's overlay figure from an evaluation run with saved masks.

usage (from the bundle folder, after the evaluate command of docs/README.md with
``--save_masks True``)::

    python scripts/overlay_figure.py EVAL_DIR DATASET_DIR docs/overlay.png

Panels: the two median cases and the two worst cases of ``eval_mean_dice_raw.csv``;
the reference mask is outlined in green, the prediction in magenta.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from pipeline.evaluation import read_metric_details

SIZE = 384


def outline(mask: np.ndarray) -> np.ndarray:
    """The one-pixel boundary of a boolean mask (dilated once to show at small sizes)."""
    edge = mask & ~ndimage.binary_erosion(mask)
    return ndimage.binary_dilation(edge)


def panel(image: Path, truth: Path, pred: Path, dice: float) -> Image.Image:
    """The radiograph with both outlines and the Dice written on it, ``SIZE`` pixels square."""
    gray = np.asarray(Image.open(image).convert("L"))
    rgb = np.repeat(gray[..., None], 3, axis=2).copy()
    rgb[outline(np.asarray(Image.open(truth)) > 127)] = (0, 220, 0)
    rgb[outline(np.asarray(Image.open(pred)) > 127)] = (255, 0, 255)
    out = Image.fromarray(rgb).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    ImageDraw.Draw(out).text((6, 6), f"{image.name}  Dice {dice:.3f}", fill=(255, 255, 0))
    return out


def main(eval_dir: str, dataset_dir: str, output: str) -> None:
    """Pick the cases, draw the panels side by side, save ``output``."""
    scores = sorted(
        read_metric_details(Path(eval_dir) / "eval_mean_dice_raw.csv").items(), key=lambda kv: kv[1]
    )
    middle = len(scores) // 2
    chosen = scores[middle : middle + 2] + scores[:2]
    panels = []
    for path, dice in chosen:
        name = Path(path).name
        truth = Path(dataset_dir) / "masks" / name
        panels.append(panel(Path(path), truth, Path(eval_dir) / name, dice))
    figure = Image.new("RGB", (SIZE * len(panels), SIZE))
    for i, p in enumerate(panels):
        figure.paste(p, (i * SIZE, 0))
    figure.save(output)


if __name__ == "__main__":
    main(*sys.argv[1:4])
