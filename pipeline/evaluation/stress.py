"""Robustness protocol (``lungseg protocol stress``): held-out radiographs under synthetic disease.

Each test case of the split is segmented clean and under every **stress** at three
severities, seeded by case name, stress and severity (the same images on every machine and
every run). The reference is the case's lung-field mask, moved with the image where the
stress moves it (portable-film geometry, a small field). The tuberculosis-positive cases
are reported as their own group of the clean run. A model that outputs the anatomical lung
field is scored where the reference decides (:mod:`pipeline.evaluation.lung_field`).

The generator here is deliberately **not** the training augmentation's
(:mod:`pipeline.transforms.pathology`, smooth random fields pulled towards the soft-tissue
level): it measures generalisation, not memory of the augmentation.

- ``consolidation``: one lung, its lower third / lower two thirds / whole lung, a plateau
  blended linearly to the cardiac-shadow intensity with a blurred edge and air bronchograms.
- ``bilateral``: diffuse airspace disease: 12 / 30 / 60 Gaussian blobs in both lungs,
  basal and peripheral predominance.
- ``effusion``: a flat fluid level at 20 / 35 / 55 % of a lung's height with a linear
  meniscus up the lateral wall (both sides at severity 3), densest at the bottom.
- ``devices``: straight polyline catheters and tubes, square ECG pads, sternal wire loops and
  a burnt-in text label, 1 / 2 / 4 sets.
- ``portable``: supine AP film: lower contrast, gamma, noise, blur, rotation 4 / 7 / 11
  degrees and zoom-out 0.95 / 0.9 / 0.85 (reference warped with the image).
- ``gas``: a gastric air bubble under the image-right lung (the patient's left on a PA film):
  an ellipse of 3 x 5 / 4.5 x 7 / 6 x 9 % of the image's height x width (radii), its top
  1.2 % of the height below the lung's lowest pixel at that lung's median column, its lower
  part cut by a flat air-fluid level, at 0.8 x the lung's median intensity; at severity 3
  also a chain of four round colonic gas loops under the other lung. All of it lies outside
  the reference (3-px margin), so besides Dice the protocol reports the share of the gas the
  mask takes in (``gas_claimed``) and the share of the same pixels that the mask of the
  clean image takes in (``gas_claimed_clean``: a model that draws the lung base lower than
  the reference does so without any gas); their difference is what the gas adds. The
  training simulation is a dome-following pocket instead
  (:func:`pipeline.transforms.pathology.gas_region`).
- ``small_field``: the lungs smaller in the image, as on a collimated film or a small
  patient on a large detector: the radiograph shrunk to 80 / 67 / 55 % of its size, up to
  15 % of the room off-centre, in a noisy surround at a grey level drawn from the image's
  own (2nd-98th percentile) behind a blurred edge (reference shrunk with it). The training
  augmentation shrinks into hard-edged black, white or border-level frames instead
  (:class:`pipeline.transforms.augment.RandSmallFieldd`).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.enums import StrEnum

SEVERITIES = (1, 2, 3)


class Stress(StrEnum):
    """Synthetic conditions of the protocol (``clean`` is the unmodified image)."""

    CLEAN = "clean"
    CONSOLIDATION = "consolidation"
    BILATERAL = "bilateral"
    EFFUSION = "effusion"
    DEVICES = "devices"
    PORTABLE = "portable"
    GAS = "gas"
    SMALL_FIELD = "small_field"


def case_rng(name: str, stress: Stress, severity: int) -> np.random.Generator:
    """A generator seeded by the case, the stress and the severity (stable across machines)."""
    digest = hashlib.sha256(f"{name}|{stress}|{severity}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def _lungs(mask: np.ndarray) -> list[np.ndarray]:
    labels, n = ndimage.label(mask)
    parts = [labels == i for i in range(1, n + 1)]
    return sorted(parts, key=lambda p: -int(p.sum()))[:2]


def cardiac_level(image: np.ndarray, mask: np.ndarray) -> float:
    """Median intensity between the lungs in their lower half (the cardiac shadow)."""
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return float(np.quantile(image, 0.8))
    mid, bottom = (rows[0] + rows[-1]) // 2, rows[-1]
    between = ~mask[mid:bottom].copy()
    between[:, : cols[0]] = False
    between[:, cols[-1] :] = False
    values = image[mid:bottom][between]
    return float(np.median(values)) if values.size else float(np.quantile(image, 0.8))


def _blend(image: np.ndarray, weight: np.ndarray, value: float) -> np.ndarray:
    return image * (1 - weight) + value * weight


def consolidation(image: np.ndarray, mask: np.ndarray, severity: int, rng: np.random.Generator):
    """Lobar consolidation of one lung (see the module docstring)."""
    lungs = _lungs(mask)
    if not lungs:
        return image
    lung = lungs[int(rng.integers(len(lungs)))]
    rows = np.nonzero(lung.any(axis=1))[0]
    cut = rows[-1] - (rows[-1] - rows[0]) * {1: 1 / 3, 2: 2 / 3, 3: 1.01}[severity]
    region = lung & (np.arange(image.shape[0])[:, None] >= cut)
    scale = image.shape[0] / 512
    weight = ndimage.gaussian_filter(region.astype(np.float32), 6 * scale) * (lung | region)
    weight = np.clip(weight * {1: 0.85, 2: 0.9, 3: 0.95}[severity] * 1.4, 0, 0.95)
    out = _blend(image, weight, cardiac_level(image, mask))
    for _ in range(3 * severity):  # air bronchograms: thin dark branches inside
        start = np.argwhere(region)[int(rng.integers(int(region.sum())))]
        angle = rng.uniform(0, 2 * np.pi)
        steps = np.arange(int(40 * scale))[:, None] * np.array([np.sin(angle), np.cos(angle)])
        pts = np.round(start + steps).astype(int)
        ok = (pts >= 0).all(1) & (pts[:, 0] < image.shape[0]) & (pts[:, 1] < image.shape[1])
        line = np.zeros_like(region)
        line[pts[ok, 0], pts[ok, 1]] = True
        line = ndimage.binary_dilation(line, iterations=max(1, round(scale))) & region
        out[line] = out[line] * 0.8
    return out


def bilateral(image: np.ndarray, mask: np.ndarray, severity: int, rng: np.random.Generator):
    """Diffuse bilateral airspace opacities (see the module docstring)."""
    coords = np.argwhere(mask)
    if not len(coords):
        return image
    rows = np.nonzero(mask.any(axis=1))[0]
    centre = image.shape[1] / 2
    basal = (coords[:, 0] - rows[0]) / max(rows[-1] - rows[0], 1)
    peripheral = np.abs(coords[:, 1] - centre) / centre
    p = (0.3 + basal) * (0.3 + peripheral)
    picks = coords[rng.choice(len(coords), size={1: 12, 2: 30, 3: 60}[severity], p=p / p.sum())]
    field = np.zeros(image.shape, np.float32)
    scale = image.shape[0] / 512
    yy = np.arange(image.shape[0], dtype=np.float32)[:, None]
    xx = np.arange(image.shape[1], dtype=np.float32)[None, :]
    for r, c in picks:
        sigma = rng.uniform(8, 25) * scale
        field += np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * sigma**2))
    weight = np.clip(field, 0, 1) * {1: 0.55, 2: 0.75, 3: 0.9}[severity]
    weight *= ndimage.gaussian_filter(mask.astype(np.float32), 2 * scale)
    return _blend(image, weight, cardiac_level(image, mask))


def effusion(image: np.ndarray, mask: np.ndarray, severity: int, rng: np.random.Generator):
    """Pleural effusion: flat level, linear meniscus (see the module docstring)."""
    lungs = _lungs(mask)
    chosen = lungs if severity == 3 else lungs[int(rng.integers(len(lungs))) :][:1]
    level_value = min(1.0, cardiac_level(image, mask) * 1.05)
    out = image
    yy = np.arange(image.shape[0], dtype=np.float32)[:, None]
    xx = np.arange(image.shape[1], dtype=np.float32)[None, :]
    for lung in chosen:
        rows, cols = np.nonzero(lung.any(axis=1))[0], np.nonzero(lung.any(axis=0))[0]
        height = rows[-1] - rows[0]
        left_side = (cols[0] + cols[-1]) / 2 < image.shape[1] / 2
        lateral = (cols[-1] - xx) if left_side else (xx - cols[0])
        lateral = np.clip(lateral / max(cols[-1] - cols[0], 1), 0, 1)
        level = rows[-1] - {1: 0.2, 2: 0.35, 3: 0.55}[severity] * height - 0.08 * height * lateral
        depth = np.clip((yy - level) / 15.0, 0, None)
        weight = (1 - np.exp(-depth)) * (yy >= level)
        weight *= ndimage.gaussian_filter(lung.astype(np.float32), 3)
        out = _blend(out, np.clip(weight * 0.95, 0, 1), level_value)
    return out


def devices(image: np.ndarray, mask: np.ndarray, severity: int, rng: np.random.Generator):
    """Catheters, tubes, ECG pads, sternal wires and a text label (see the module docstring)."""
    from PIL import Image, ImageDraw

    h, w = image.shape
    canvas = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    scale = h / 512
    for _ in range({1: 1, 2: 2, 3: 4}[severity]):
        pts = [(rng.uniform(0.3, 0.7) * w, 0)] + [
            (rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.9) * h) for _ in range(3)
        ]
        draw.line(
            pts, fill=int(rng.integers(200, 255)), width=max(1, int(rng.integers(2, 6) * scale))
        )
        x, y = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
        s = rng.uniform(8, 14) * scale
        draw.rectangle((x - s, y - s, x + s, y + s), outline=230, width=max(1, int(2 * scale)))
        draw.ellipse((x - 3 * scale, y - 3 * scale, x + 3 * scale, y + 3 * scale), fill=250)
        cx, cy = w / 2 + rng.uniform(-10, 10) * scale, rng.uniform(0.3, 0.6) * h
        draw.ellipse(
            (cx - 6 * scale, cy - 4 * scale, cx + 6 * scale, cy + 4 * scale), outline=255, width=2
        )
    draw.text((0.05 * w, 0.05 * h), "PORTABLE SUPINE", fill=255, font=_font(int(18 * scale)))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def portable_geometry(shape: tuple[int, int], severity: int, rng: np.random.Generator):
    """``(matrix, offset)`` for ``ndimage.affine_transform``: rotation, zoom-out at the centre."""
    angle = math.radians({1: 4, 2: 7, 3: 11}[severity] * rng.choice([-1, 1]))
    zoom = {1: 0.95, 2: 0.9, 3: 0.85}[severity]
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    matrix = rot / zoom
    centre = (np.asarray(shape) - 1) / 2
    return matrix, centre - matrix @ centre


def portable(image: np.ndarray, mask: np.ndarray, severity: int, rng: np.random.Generator):
    """Supine AP film: returns ``(image, mask)``, both warped (see the module docstring)."""
    matrix, offset = portable_geometry(image.shape, severity, rng)
    warped = ndimage.affine_transform(image, matrix, offset, order=1, cval=0.0)
    moved = ndimage.affine_transform(mask.astype(np.uint8), matrix, offset, order=0) > 0
    mean = float(warped.mean())
    out = (warped - mean) * {1: 0.8, 2: 0.65, 3: 0.5}[severity] + mean
    out = np.clip(out, 0, 1) ** {1: 1.15, 2: 1.3, 3: 1.5}[severity]
    out = ndimage.gaussian_filter(out, {1: 0.6, 2: 1.0, 3: 1.4}[severity] * image.shape[0] / 512)
    out = out + rng.normal(0, {1: 0.015, 2: 0.03, 3: 0.05}[severity], size=out.shape)
    return np.clip(out, 0, 1).astype(np.float32), moved


def small_field(image: np.ndarray, mask: np.ndarray, severity: int, rng: np.random.Generator):
    """Lungs smaller in the image: returns ``(image, mask)``, both shrunk (module docstring)."""
    scale = {1: 0.8, 2: 0.67, 3: 0.55}[severity]
    room = (1 - scale) * np.asarray(image.shape, dtype=np.float64)
    shift = rng.uniform(-0.15, 0.15, size=2) * room  # off-centre by up to 15 % of the room
    matrix = np.eye(2) / scale
    centre = (np.asarray(image.shape) - 1) / 2
    offset = centre - matrix @ (centre + shift)
    shrunk = ndimage.affine_transform(image, matrix, offset, order=1, cval=0.0)
    support = ndimage.affine_transform(np.ones_like(image), matrix, offset, order=0, cval=0.0)
    weight = ndimage.gaussian_filter(support, 1.5 * image.shape[0] / 512)  # penumbra
    level = float(np.quantile(image, rng.uniform(0.02, 0.98)))
    surround = level + rng.normal(0, 0.02, size=image.shape)
    out = shrunk * weight + surround * (1 - weight)
    moved = ndimage.affine_transform(mask.astype(np.uint8), matrix, offset, order=0) > 0
    return np.clip(out, 0, 1).astype(np.float32), moved


def _ellipse(shape: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float]):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) / radii[0]) ** 2 + ((xx - centre[1]) / radii[1]) ** 2 <= 1


def gas_pockets(mask: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Where the ``gas`` stress puts air below the diaphragm (see the module docstring)."""
    from pipeline.transforms.pathology import lungs_by_side

    sides = lungs_by_side(mask)
    region = np.zeros_like(mask, dtype=bool)
    if sides is None:
        return region
    h, w = mask.shape
    ry, rx = {1: (0.03, 0.05), 2: (0.045, 0.07), 3: (0.06, 0.09)}[severity]
    column = int(np.median(np.nonzero(sides[1])[1])) + int(rng.integers(-3, 4))
    bottom = int(np.nonzero(sides[1][:, column])[0].max())
    cy = min(bottom + (ry + 0.012) * h, h - ry * h - 1)
    region |= _ellipse(mask.shape, (cy, column), (ry * h, rx * w))
    region[int(cy + rng.uniform(0.1, 0.4) * ry * h) :] = False  # the air-fluid level
    if severity == 3:
        column = int(np.median(np.nonzero(sides[0])[1]))
        top = int(np.nonzero(sides[0][:, column])[0].max()) + 0.05 * h
        for i in range(4):
            centre = (top + rng.uniform(0, 0.02) * h, column + (i - 1.5) * 0.045 * w)
            region |= _ellipse(mask.shape, centre, (0.025 * h, 0.025 * h))
    return region & ~ndimage.binary_dilation(mask, iterations=3)


def gas(image: np.ndarray, mask: np.ndarray, severity: int, rng: np.random.Generator):
    """Gastric and colonic gas below the diaphragm (see the module docstring)."""
    region = gas_pockets(mask, severity, rng)
    if not region.any():
        return image
    soft = ndimage.gaussian_filter(region.astype(np.float32), 2 * image.shape[0] / 512)
    return _blend(image, soft, 0.8 * float(np.median(image[mask])))


def stress_region(mask: np.ndarray, stress: Stress, severity: int, name: str) -> np.ndarray | None:
    """The gas the ``gas`` stress drew outside the reference (None for the other stresses)."""
    if stress is not Stress.GAS:
        return None
    return gas_pockets(mask, severity, case_rng(name, stress, severity))


GENERATORS = {
    Stress.CONSOLIDATION: consolidation,
    Stress.BILATERAL: bilateral,
    Stress.EFFUSION: effusion,
    Stress.DEVICES: devices,
    Stress.GAS: gas,
}


def apply_stress(
    image: np.ndarray, mask: np.ndarray, stress: Stress, severity: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """One case under one stress: ``(image, reference mask)``, seeded by ``name``.

    Args:
        image: the radiograph, ``rows x columns`` in [0, 1].
        mask: its boolean lung-field mask.
        stress: which condition.
        severity: 1, 2 or 3 (ignored for ``clean``).
        name: the case's name (seeds the generator).

    Raises:
        ValueError: an unknown severity (the allowed values quoted).
    """
    image = np.asarray(image, dtype=np.float32)
    if stress is Stress.CLEAN:
        return image, mask
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity!r} is not one of {SEVERITIES}")
    rng = case_rng(name, stress, severity)
    if stress is Stress.PORTABLE:
        return portable(image, mask, severity, rng)
    if stress is Stress.SMALL_FIELD:
        return small_field(image, mask, severity, rng)
    out = GENERATORS[stress](image, mask, severity, rng)
    return np.clip(out, 0, 1).astype(np.float32), mask


def conditions(stresses: Sequence[Stress | str] | None = None) -> list[tuple[Stress, int]]:
    """The ``(stress, severity)`` pairs of the protocol, clean first (severity 0).

    Args:
        stresses: run only these (names or members; default: every stress). Clean always
            runs: the drops are taken from it.

    Raises:
        ValueError: an unknown stress name (the allowed set quoted).
    """
    chosen = [Stress.parse(s) for s in stresses] if stresses else list(Stress)
    return [(Stress.CLEAN, 0)] + [
        (s, v) for s in Stress if s is not Stress.CLEAN and s in chosen for v in SEVERITIES
    ]


def run_stress(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    bundle: str | os.PathLike | None = None,
    device: str = "auto",
    split_file: str | os.PathLike | None = None,
    part: str = "test",
    max_cases: int | None = None,
    batch_size: int = 8,
    overrides: dict[str, Any] | None = None,
    worst: int = 12,
    lung_field_file: str | os.PathLike | None = None,
    stresses: Sequence[Stress | str] | None = None,
) -> dict[str, Any]:
    """Run the protocol; write ``per_case.csv``, ``summary.json``, ``summary.md``, the figure.

    Args:
        data: the collection (``images/``, ``masks/``, ``manifest.csv``).
        out_dir: where the outputs go.
        bundle: the bundle (default: the shipped one).
        device: ``auto``, ``cpu``, ``cuda``...
        split_file: take the part from this split file (default: the repository's).
        part: which part of the split.
        max_cases: evaluate only this many cases (quick runs).
        batch_size: images per forward pass.
        overrides: ``inference.json`` ids (another checkpoint, TTA, an ensemble...).
        worst: cases in the worst-cases figure.
        lung_field_file: which references are drawn to the anatomical convention (default:
            the shared data's). Used when the model outputs the anatomical lung field: Dice,
            recall and precision are then taken where the reference decides
            (:mod:`pipeline.evaluation.lung_field`), ``dice_reference`` is the plain Dice.
        stresses: run only these stresses (and clean); default: all of them.

    Returns:
        The summary.
    """
    from pipeline.evaluation.lung_field import references_for
    from pipeline.evaluation.stress_report import write_report
    from pipeline.inference.predictor import Predictor

    plan = conditions(stresses)
    cases = _cases(data, split_file, part, max_cases)
    predictor = Predictor(bundle, device, overrides)
    anatomical = references_for(predictor.lung_field, lung_field_file)
    rows, keep, clean = [], [], {}
    for stress, severity in plan:
        rows += _score_condition(
            predictor, cases, stress, severity, batch_size, keep, worst, anatomical, clean
        )
    scored = "all pixels" if anatomical is None else "where the reference decides"
    about = {"model": predictor.identity.as_dict(), "cases": len(cases), "part": part,
             "scored": scored}  # fmt: skip
    return write_report(Path(out_dir), rows, keep, about)


def _cases(data: Any, split_file: Any, part: str, max_cases: int | None) -> list[dict[str, Any]]:
    from pipeline.io.datasets import project_file
    from pipeline.training.data import load_split

    split_file = split_file or project_file("data/splits/montgomery-shenzhen.json")
    return load_split(data, part, max_cases, split_file=split_file)


def _load_case(case: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    from pipeline.io.reader import read_cxr
    from pipeline.transforms import binarize_mask

    image, _ = read_cxr(case["image"])
    truth, _ = read_cxr(case["label"])
    return image, binarize_mask(truth) > 0


def _score_condition(
    predictor: Any,
    cases: Sequence[dict[str, Any]],
    stress: Stress,
    severity: int,
    batch_size: int,
    keep: list,
    worst: int,
    anatomical: frozenset[str] | None = None,
    clean: dict[str, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Every case under one condition, scored; the clean masks are kept in ``clean``."""
    clean = {} if clean is None else clean
    rows = []
    for first in range(0, len(cases), batch_size):
        batch = cases[first : first + batch_size]
        made = [apply_stress(*_load_case(c), stress, severity, str(c["name"])) for c in batch]
        preds = predictor.predict_items([{"image": _tensor(img)} for img, _ in made])
        for case, (img, truth), pred in zip(batch, made, preds, strict=True):
            name = str(case["name"])
            if stress is Stress.CLEAN:
                clean[name] = pred.mask
            drawn = stress_region(truth, stress, severity, name)
            row = _row(case, stress, severity, pred, truth, anatomical)
            row["gas_claimed"] = share_inside(pred.mask, drawn)
            row["gas_claimed_clean"] = share_inside(clean.get(name, pred.mask), drawn)
            rows.append(row)
            _keep_worst(keep, worst, row, img, pred.mask, truth)
    return rows


def _row(
    case: dict[str, Any],
    stress: Stress,
    severity: int,
    pred: Any,
    truth: np.ndarray,
    anatomical: frozenset[str] | None,
) -> dict[str, Any]:
    """A case's CSV row: overlap where the reference decides (or plain), flags."""
    from pipeline.evaluation.lung_field import decided_overlap
    from pipeline.evaluation.metrics import overlap_metrics

    m = plain = overlap_metrics(pred.mask, truth)
    if anatomical is not None:
        m = decided_overlap(pred.mask, truth, str(case["name"]) in anatomical)
    return {
        "name": case["name"],
        "source": case.get("source", ""),
        "tuberculosis": case.get("tuberculosis", ""),
        "stress": str(stress),
        "severity": severity,
        "dice": m["dice"],
        "recall": m["recall"],
        "precision": m["precision"],
        "dice_reference": plain["dice"],
        "flags": ";".join(map(str, pred.measures.flags)),
    }


def share_inside(mask: np.ndarray, region: np.ndarray | None) -> float | str:
    """The share of ``region`` inside ``mask`` ('' without a region, or an empty one)."""
    if region is None or not region.any():
        return ""
    return float(np.count_nonzero(mask & region) / np.count_nonzero(region))


def _tensor(image: np.ndarray) -> Any:
    from pipeline.io.reader import as_cxr_tensor

    return as_cxr_tensor(image, {"format": "PNG"})


def _keep_worst(keep: list, n: int, row: dict, image: np.ndarray, pred: np.ndarray, truth) -> None:
    """Keep the ``n`` lowest-Dice stressed cases (downscaled panels) for the figure."""
    if row["stress"] == Stress.CLEAN.value or not n:
        return
    step = max(1, image.shape[0] // 256)
    panel = {
        "name": f"{row['name']}\n{row['stress']} {row['severity']}",
        "dice": row["dice"],
        "image": image[::step, ::step],
        "pred": pred[::step, ::step],
        "truth": truth[::step, ::step],
    }
    keep.append(panel)
    keep.sort(key=lambda c: c["dice"])
    del keep[n:]
