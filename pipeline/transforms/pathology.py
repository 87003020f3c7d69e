"""Pathology and acquisition simulation for training: the label stays the full lung field.

The network should learn where the lung field *is* (its outline against the ribs, heart,
diaphragm and chest wall), not where the lung is dark. This module makes training samples in
which part of the lung field looks like soft tissue or fluid, or is crossed by devices, or
was taken on a poor portable film, while the label keeps the whole lung field; and samples
with air-dark gas *outside* it, under a hemidiaphragm, which the label leaves out.

Array logic first (functions on ``rows x columns`` float arrays in [0, 1], a boolean lung
mask and a ``numpy.random.Generator``), then the MONAI dictionary transforms
:class:`RandPathologyd` (before the geometric warp: it needs the lung mask aligned) and
:class:`RandAcquisitiond` (after it: film and detector effects).

The generator here is **smooth random fields**: an opacity is a low-resolution Gaussian noise
field, upsampled bicubically, thresholded inside the chosen lung(s) at the quantile that
covers the drawn extent (patchy → lobar → whole lung), with a vertical bias for upper/lower
lobar patterns, soft edges and a mottled texture; the opacified pixels are pulled towards
the soft-tissue level measured around the lungs. Effusions fill a lung from its base to a
level that rises towards the lateral chest wall (a meniscus), denser below. Devices are Bézier
lines and tubes, ECG electrodes with leads and bright text markers. Sub-diaphragmatic gas is
a pocket that follows the diaphragm's curve below one lung's base, a band of diaphragm
between them, its outline roughened by a smooth field and its floor sometimes cut flat (an
air-fluid level), darkened towards or below the lung's level. The robustness protocol
(:mod:`pipeline.evaluation.stress`) uses a different generator on purpose, so that it
measures generalisation rather than memory of this augmentation.
"""

from __future__ import annotations

import io
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type
from scipy import ndimage
from scipy.special import expit

from pipeline.enums import StrEnum


class Lesion(StrEnum):
    """Kinds of simulated abnormality inside the lung field."""

    OPACITY = "opacity"
    EFFUSION = "effusion"
    DEVICES = "devices"
    GAS = "gas"


def smooth_field(shape: tuple[int, int], grid: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise on a ``grid x grid`` lattice, upsampled bicubically to ``shape``."""
    coarse = torch.from_numpy(rng.normal(size=(1, 1, grid, grid)).astype(np.float32))
    return F.interpolate(coarse, size=shape, mode="bicubic", align_corners=True)[0, 0].numpy()


def lung_components(lung: np.ndarray) -> list[np.ndarray]:
    """The two largest connected components of a lung mask (fewer if there are fewer)."""
    labels, n = ndimage.label(lung)
    if n == 0:
        return []
    sizes = ndimage.sum_labels(lung, labels, index=np.arange(1, n + 1))
    keep = np.argsort(sizes)[::-1][:2] + 1
    return [labels == k for k in keep]


def lungs_by_side(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The two largest components, the image-left one first (None when there are fewer)."""
    lungs = lung_components(mask)
    if len(lungs) < 2:
        return None
    column = np.arange(mask.shape[1])
    centre = [column @ np.count_nonzero(c, axis=0) / np.count_nonzero(c) for c in lungs]
    return (lungs[0], lungs[1]) if centre[0] < centre[1] else (lungs[1], lungs[0])


def soft_tissue_level(image: np.ndarray, lung: np.ndarray) -> float:
    """Soft-tissue intensity: upper quartile of a band around the lungs.

    The band holds heart, mediastinum, chest wall and diaphragm; the image's 60th percentile is
    taken instead when brighter.
    """
    band = ndimage.binary_dilation(lung, iterations=max(2, lung.shape[0] // 40)) & ~lung
    values = image[band] if band.any() else image[~lung]
    level = float(np.quantile(values, 0.75)) if values.size else float(np.median(image))
    return max(level, float(np.quantile(image, 0.6)))


def _pull(image: np.ndarray, weight: np.ndarray, target: float) -> np.ndarray:
    """Move pixels towards ``target`` by ``weight`` in [0, 1]; never darken them."""
    return np.maximum(image, image + weight * (target - image))


def _chosen_lungs(lung: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    parts = lung_components(lung)
    if len(parts) < 2 or rng.random() < 0.35:
        return lung.copy()
    return parts[int(rng.integers(len(parts)))]


def add_opacity(
    image: np.ndarray,
    lung: np.ndarray,
    rng: np.random.Generator,
    extent: float,
    density: float,
) -> np.ndarray:
    """Consolidation / ground glass covering ``extent`` of one or both lungs.

    Args:
        image: radiograph in [0, 1].
        lung: boolean lung-field mask of the same shape.
        rng: random generator.
        extent: fraction of the chosen lung(s) covered (1 = whole lung).
        density: 0 (invisible) to 1 (soft-tissue level or a little above).
    """
    region = _chosen_lungs(lung, rng)
    if not region.any():
        return image
    shape = image.shape
    field = smooth_field(shape, int(rng.integers(2, 9)), rng)
    rows = np.linspace(-1.0, 1.0, shape[0], dtype=np.float32)[:, None]
    field = field + rng.uniform(-1.5, 1.5) * rows
    cut = np.quantile(field[region], 1.0 - min(max(extent, 0.0), 1.0))
    soft = expit((field - cut) / rng.uniform(0.05, 0.3))
    inside = ndimage.gaussian_filter(region.astype(np.float32), sigma=rng.uniform(0.5, 2.0))
    texture = 1.0 + 0.15 * smooth_field(shape, int(rng.integers(16, 48)), rng)
    weight = np.clip(density * soft * inside * texture, 0.0, 1.0)
    target = soft_tissue_level(image, lung) * rng.uniform(0.95, 1.15)
    return _pull(image, weight, min(target, 1.0))


def _lateral_coordinate(part: np.ndarray, image_width: int) -> np.ndarray:
    """Per column, 0 at the mediastinal edge of the lung and 1 at its lateral edge."""
    cols = np.nonzero(part.any(axis=0))[0]
    x = np.arange(image_width, dtype=np.float32)
    span = max(cols[-1] - cols[0], 1)
    on_left = (cols[0] + cols[-1]) / 2 < image_width / 2
    lateral = (cols[-1] - x) / span if on_left else (x - cols[0]) / span
    return np.clip(lateral, 0.0, 1.0)


def add_effusion(
    image: np.ndarray,
    lung: np.ndarray,
    rng: np.random.Generator,
    height: float,
    density: float,
) -> np.ndarray:
    """Basal pleural effusion with a meniscus in one lung (or both).

    Args:
        image: radiograph in [0, 1].
        lung: boolean lung-field mask.
        rng: random generator.
        height: fluid height as a fraction of the lung's height at the mediastinal side.
        density: 0 to 1, how close the fluid comes to the soft-tissue level.
    """
    parts = lung_components(lung)
    if not parts:
        return image
    chosen = parts if rng.random() < 0.3 else [parts[int(rng.integers(len(parts)))]]
    target = soft_tissue_level(image, lung) * rng.uniform(1.0, 1.2)
    rows = np.arange(image.shape[0], dtype=np.float32)[:, None]
    for part in chosen:
        r = np.nonzero(part.any(axis=1))[0]
        top, bottom = float(r[0]), float(r[-1])
        fluid_h = height * (bottom - top)
        lateral = _lateral_coordinate(part, image.shape[1])[None, :]
        level = bottom - fluid_h - rng.uniform(0.1, 0.6) * fluid_h * lateral**2
        fade = rng.uniform(2.0, 0.04 * image.shape[0] + 2.0)
        weight = expit((rows - level) / fade)
        inside = ndimage.gaussian_filter(part.astype(np.float32), sigma=1.0)
        image = _pull(image, np.clip(density * weight * inside, 0.0, 1.0), min(target, 1.0))
    return image


def _bezier(rng: np.random.Generator, shape: tuple[int, int], n: int = 400) -> np.ndarray:
    """Points ``(n, 2)`` (row, column) of a random cubic Bézier curve that enters the chest."""
    h, w = shape
    start = np.array([rng.uniform(-0.05, 0.2) * h, rng.uniform(0.2, 0.8) * w])
    ctrl = np.stack([rng.uniform(0, h, 3), rng.uniform(0.1 * w, 0.9 * w, 3)], axis=1)
    p = np.vstack([start, ctrl])
    t = np.linspace(0, 1, n)[:, None]
    return (
        (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]
    )


def _stamp(points: np.ndarray, shape: tuple[int, int], width: int) -> np.ndarray:
    canvas = np.zeros(shape, dtype=bool)
    rc = np.round(points).astype(int)
    ok = (rc[:, 0] >= 0) & (rc[:, 0] < shape[0]) & (rc[:, 1] >= 0) & (rc[:, 1] < shape[1])
    canvas[rc[ok, 0], rc[ok, 1]] = True
    return ndimage.binary_dilation(canvas, iterations=max(0, width // 2)) if width > 1 else canvas


def _paint(image: np.ndarray, where: np.ndarray, value: float, blur: float = 0.6) -> np.ndarray:
    alpha = ndimage.gaussian_filter(where.astype(np.float32), sigma=blur)
    return image * (1 - alpha) + value * alpha


def add_devices(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lines, tubes, ECG electrodes with leads and text markers (radiopaque: bright)."""
    shape = image.shape
    scale = shape[0] / 256
    for _ in range(int(rng.integers(0, 4))):
        width = int(rng.integers(1, 3) * scale) or 1
        image = _paint(image, _stamp(_bezier(rng, shape), shape, width), rng.uniform(0.75, 1.0))
    if rng.random() < 0.4:
        tube = _stamp(_bezier(rng, shape), shape, int(rng.integers(4, 8) * scale))
        image = _paint(image, tube, min(1.0, image[tube].mean() + rng.uniform(0.1, 0.3)))
    for _ in range(int(rng.integers(0, 5))):
        image = _electrode(image, rng, scale)
    if rng.random() < 0.5:
        image = _marker(image, rng, scale)
    return np.clip(image, 0.0, 1.0)


def _electrode(image: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    h, w = image.shape
    cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    radius = rng.uniform(3, 7) * scale
    yy, xx = np.ogrid[:h, :w]
    dist = np.hypot(yy - cy, xx - cx)
    image = _paint(image, dist <= radius, rng.uniform(0.5, 0.8))
    image = _paint(image, np.abs(dist - radius * 0.5) <= max(1.0, scale), rng.uniform(0.85, 1.0))
    lead = _bezier(rng, image.shape)
    lead = lead - lead[-1] + np.array([cy, cx])
    return _paint(image, _stamp(lead, image.shape, 1), rng.uniform(0.7, 0.95))


def _marker(image: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    h, w = image.shape
    size = int(rng.uniform(10, 22) * scale)
    top = int(rng.choice([rng.uniform(0.02, 0.2), rng.uniform(0.7, 0.9)]) * h)
    left = int(rng.choice([rng.uniform(0.02, 0.2), rng.uniform(0.65, 0.85)]) * w)
    glyph = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(2, 5))):
        a = np.array([top, left]) + rng.uniform(0, size, 2)
        b = np.array([top, left]) + rng.uniform(0, size, 2)
        glyph |= _stamp(np.linspace(a, b, 64), (h, w), max(2, int(2 * scale)))
    if rng.random() < 0.5:
        box = np.zeros_like(glyph)
        box[top : top + size, left : left + size] = True
        image = _paint(image, box, rng.uniform(0.0, 0.15), blur=0.3)
    return _paint(image, glyph, 1.0, blur=0.4)


def simulate_lesion(
    image: np.ndarray, lung: np.ndarray, kind: Lesion, rng: np.random.Generator
) -> np.ndarray:
    """One abnormality of ``kind`` with a random extent and density; the label is unchanged."""
    if kind == Lesion.OPACITY:
        extent = rng.choice([rng.uniform(0.05, 0.3), rng.uniform(0.3, 0.7), 1.0])
        return add_opacity(image, lung, rng, float(extent), rng.uniform(0.5, 1.0))
    if kind == Lesion.EFFUSION:
        return add_effusion(image, lung, rng, rng.uniform(0.1, 0.6), rng.uniform(0.6, 1.0))
    if kind == Lesion.GAS:
        return add_abdominal_gas(image, lung, rng, rng.uniform(0.3, 1.0), rng.uniform(0.7, 1.0))
    return add_devices(image, rng)


def _base_profile(part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The columns of a lung that end on the diaphragm and, per column, the lung's lowest row.

    Columns whose lowest lung pixel is more than 15 % of the lung's height above its lowest
    row end on the heart (or the mediastinum), not on the diaphragm: they are left out.
    """
    rows = np.nonzero(part.any(axis=1))[0]
    cols = np.nonzero(part.any(axis=0))[0]
    lowest = part.shape[0] - 1 - np.argmax(part[::-1, cols], axis=0)
    on_diaphragm = lowest >= rows[-1] - 0.15 * (rows[-1] - rows[0])
    return cols[on_diaphragm], lowest[on_diaphragm]


def gas_region(
    lung: np.ndarray, rng: np.random.Generator, size: float, left_prob: float = 0.75
) -> np.ndarray:
    """Where sub-diaphragmatic gas goes: a dome-shaped pocket under one lung's base.

    The pocket follows the diaphragm's curve, a band of diaphragm (1-3 % of the height) below
    the lung; its depth is a half-ellipse over a random part of the lung's width, its edges
    roughened by a smooth random field, and, half of the time, its floor cut flat (an
    air-fluid level on an upright film). It never touches the lung field (dilated by 2 px).

    Args:
        lung: boolean lung-field mask.
        rng: random generator.
        size: 0 to 1, the pocket's size (width up to 0.9 of the lung's columns that end on
            the diaphragm, depth up to 0.16 of the image height).
        left_prob: probability of the image-right lung (the patient's left on a PA film: the
            gastric fundus and the splenic flexure); otherwise the other one.
    """
    sides = lungs_by_side(lung)
    if sides is None:
        return np.zeros_like(lung)
    part = sides[1] if rng.random() < left_prob else sides[0]
    h = lung.shape[0]
    cols, lowest = _base_profile(part)
    centre = rng.uniform(0.25, 0.75) * (cols.size - 1)
    half = max(2.0, size * rng.uniform(0.3, 0.45) * cols.size)
    offset = (np.arange(cols.size) - centre) / half
    depth = size * rng.uniform(0.08, 0.16) * h * np.sqrt(np.clip(1 - offset**2, 0, 1))
    top = lowest + rng.uniform(0.01, 0.03) * h
    rows = np.arange(h, dtype=np.float32)[:, None]
    rough = 0.25 * depth.max() * smooth_field((h, cols.size), int(rng.integers(4, 10)), rng)
    inside = (rows >= top) & (rows <= top + depth + rough) & (depth > 0)
    if rng.random() < 0.5:
        inside &= rows <= np.quantile(top + depth, rng.uniform(0.3, 0.7))
    region = np.zeros_like(lung)
    region[:, cols] = inside
    return region & ~ndimage.binary_dilation(lung, iterations=2)


def add_abdominal_gas(
    image: np.ndarray, lung: np.ndarray, rng: np.random.Generator, size: float, darkness: float
) -> np.ndarray:
    """Gastric or bowel gas under a hemidiaphragm, as dark as aerated lung or darker.

    The label is unchanged: the network must learn that a dark region *below* the diaphragm
    is not lung; on supine and ICU films the stomach's air lies right under the left lung's
    base, and with no lung markings in front of it, it is often darker than the lung.

    Args:
        image: radiograph in [0, 1].
        lung: boolean lung-field mask.
        rng: random generator.
        size: 0 to 1, see :func:`gas_region`.
        darkness: 0 (unchanged) to 1 (all the way to a level drawn between 0.5 and 1 x the
            lung's median intensity).
    """
    region = gas_region(lung, rng, size)
    if not region.any():
        return image
    target = float(np.median(image[lung])) * rng.uniform(0.5, 1.0)
    weight = ndimage.gaussian_filter(region.astype(np.float32), sigma=rng.uniform(0.7, 2.0))
    texture = 1.0 + 0.2 * smooth_field(image.shape, int(rng.integers(12, 40)), rng)
    weight = np.clip(darkness * weight * texture, 0.0, 1.0)
    return np.minimum(image, image + weight * (target - image))


def jpeg_artefacts(image: np.ndarray, quality: int) -> np.ndarray:
    """Round trip through 8-bit baseline JPEG at ``quality`` (blocking, ringing, banding)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(
        buf, format="JPEG", quality=int(quality)
    )
    buf.seek(0)
    return np.asarray(Image.open(buf), dtype=np.float32) / 255.0


def collimate(image: np.ndarray, lung: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Dark (collimator) or bright (burnt-in) bands at some edges, outside the lung field."""
    h, w = image.shape
    rows = np.nonzero(lung.any(axis=1))[0] if lung is not None and lung.any() else [h, 0]
    cols = np.nonzero(lung.any(axis=0))[0] if lung is not None and lung.any() else [w, 0]
    limits = {
        "top": rows[0],
        "bottom": h - 1 - rows[-1],
        "left": cols[0],
        "right": w - 1 - cols[-1],
    }
    out = image.copy()
    for side, room in limits.items():
        if room <= 2 or rng.random() < 0.5:
            continue
        band = int(rng.uniform(0.3, 1.0) * min(room, 0.15 * h))
        value = 0.0 if rng.random() < 0.7 else 1.0
        sl = {
            "top": np.s_[:band, :],
            "bottom": np.s_[h - band :, :],
            "left": np.s_[:, :band],
            "right": np.s_[:, w - band :],
        }[side]
        out[sl] = value
    return out


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exposure, gamma, contrast, blur, noise and JPEG artefacts, each with some probability."""
    out = image
    if rng.random() < 0.5:
        out = np.clip(out, 0, 1) ** rng.uniform(0.6, 1.7)
    if rng.random() < 0.5:
        mean = float(out.mean())
        out = (out - mean) * rng.uniform(0.5, 1.3) + mean + rng.uniform(-0.15, 0.15)
    if rng.random() < 0.25:
        out = ndimage.gaussian_filter(out, sigma=rng.uniform(0.5, 1.5))
    if rng.random() < 0.35:
        out = out + rng.normal(0.0, rng.uniform(0.01, 0.06), size=out.shape)
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    if rng.random() < 0.25:
        out = jpeg_artefacts(out, int(rng.integers(10, 60)))
    return out


def _as_numpy(img: Any) -> np.ndarray:
    plain = img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(img)
    return plain.detach().cpu().numpy().astype(np.float32)


def _generator(transform: RandomizableTransform) -> np.random.Generator:
    """A numpy Generator seeded from a MONAI transform's random state (``set_random_state``)."""
    return np.random.default_rng(int(transform.R.randint(0, 2**31 - 1)))


def _per_channel(transform: MapTransform, d: dict, fn: Any) -> dict:
    """Apply ``fn`` to every channel of every key of ``d`` the transform selects."""
    for key in transform.key_iterator(d):
        arr = _as_numpy(d[key])
        for c in range(arr.shape[0]):
            arr[c] = fn(arr[c])
        d[key] = convert_to_dst_type(arr, dst=d[key])[0]
    return d


class RandPathologyd(RandomizableTransform, MapTransform):
    """Simulated opacities, effusions and devices inside the lung field (label unchanged).

    Args:
        keys: the image key(s), ``(C, H, W)``; every channel gets the same lesions.
        label_key: the lung-field mask ``(1, H, W)`` the lesions are placed in.
        prob: probability that a sample gets any abnormality.
        opacity_prob: given that, probability of an opacity.
        effusion_prob: likewise, of an effusion.
        devices_prob: likewise, of lines, tubes, electrodes and markers.
        gas_prob: likewise, of gastric or bowel gas under a hemidiaphragm (outside the
            lung field: the label stays as it is).
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        prob: float = 0.6,
        opacity_prob: float = 0.7,
        effusion_prob: float = 0.35,
        devices_prob: float = 0.4,
        gas_prob: float = 0.6,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key = label_key
        self.kinds = {
            Lesion.OPACITY: opacity_prob,
            Lesion.EFFUSION: effusion_prob,
            Lesion.DEVICES: devices_prob,
            Lesion.GAS: gas_prob,
        }

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Add the drawn abnormalities to every image key."""
        d = dict(data)
        self.randomize(None)
        if not self._do_transform or self.label_key not in d:
            return d
        rng = _generator(self)
        kinds = [k for k, p in self.kinds.items() if rng.random() < p]
        lung = _as_numpy(d[self.label_key])[0] > 0.5
        if not kinds or not lung.any():
            return d

        def lesions(channel: np.ndarray) -> np.ndarray:
            for kind in kinds:
                channel = simulate_lesion(channel, lung, kind, rng)
            return np.clip(channel, 0, 1)

        return _per_channel(self, d, lesions)


class RandAcquisitiond(RandomizableTransform, MapTransform):
    """Poor-film effects: exposure, gamma, contrast, blur, noise, JPEG, collimation bands.

    Args:
        keys: the image key(s).
        label_key: lung mask, read so that collimation bands stay outside the lung field.
        prob: probability that a sample is degraded at all.
        collimation_prob: probability of edge bands, given that.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        prob: float = 0.5,
        collimation_prob: float = 0.3,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key, self.collimation_prob = label_key, collimation_prob

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Degrade every image key."""
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        rng = _generator(self)
        lung = _as_numpy(d[self.label_key])[0] > 0.5 if self.label_key in d else None
        bands = rng.random() < self.collimation_prob

        def film(channel: np.ndarray) -> np.ndarray:
            channel = degrade(channel, rng)
            return collimate(channel, lung, rng) if bands else channel

        return _per_channel(self, d, film)
