"""How much of a gastric air bubble under the left hemidiaphragm the model calls lung.

usage (from the bundle folder)::

    python scripts/gas_bubble_probe.py DATA SPLIT_FILE [--cases 30] [--set lung_field=visible]

On the first ``--cases`` test cases of the split, an air-dark ellipse (4.5 % x 7 % of the
image's height and width, radii) is drawn just below the left lung's lowest point at its
median column, outside the reference (3-px margin), at 0.8 x the lung's median intensity.
Prints the mean share of the bubble inside the predicted mask and how many cases claim
more than 10 % of it. A measurement of the ICU failure the model card lists, not a
protocol: the ellipse is a crude stand-in for real stomach gas.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline.inference.predictor import Predictor
from pipeline.io.reader import read_cxr
from pipeline.training.data import read_split_file
from pipeline.transforms import binarize_mask
from pipeline.transforms.pathology import lungs_by_side

BUNDLE = Path(__file__).resolve().parents[1]


def with_bubble(image: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image with a bubble under the image-right (patient's left) lung, and the bubble."""
    _, left = lungs_by_side(truth)
    column = int(np.median(np.nonzero(left)[1]))
    bottom = int(np.nonzero(left[:, column])[0].max())
    h, w = image.shape
    ry, rx = int(0.045 * h), int(0.07 * w)
    cy = min(bottom + ry + int(0.012 * h), h - ry - 1)
    yy, xx = np.ogrid[:h, :w]
    bubble = ((yy - cy) / ry) ** 2 + ((xx - column) / rx) ** 2 <= 1
    bubble &= ~ndimage.binary_dilation(truth, iterations=3)
    soft = ndimage.gaussian_filter(bubble.astype(np.float32), 2)
    level = 0.8 * float(np.median(image[left]))
    return (image * (1 - soft) + level * soft).astype(np.float32), bubble


def main() -> None:
    """Print the share of the bubble claimed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("split_file", type=Path)
    parser.add_argument("--cases", type=int, default=30)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    predictor = Predictor(BUNDLE, "cpu", overrides)
    shares = []
    for name in read_split_file(args.split_file)["test"][: args.cases]:
        image, _ = read_cxr(args.data / "images" / name)
        truth = binarize_mask(read_cxr(args.data / "masks" / name)[0]) > 0
        image, bubble = with_bubble(image, truth)
        mask = predictor.predict_single_npy_array(image).mask
        shares.append(float((mask & bubble).sum() / bubble.sum()))
    shares = np.asarray(shares)
    print(
        f"lung_field {predictor.lung_field}: mean share of the bubble inside the mask "
        f"{shares.mean():.3f}; more than 10 % in {int((shares > 0.1).sum())} of {shares.size}"
    )


if __name__ == "__main__":
    main()
