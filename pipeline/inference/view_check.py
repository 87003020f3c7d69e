"""The view check: a radiograph stored inverted or upside down is segmented the right way.

A file can hold a negative while its header says otherwise (MONOCHROME2 written over
inverted pixels, an inverted MONOCHROME1, a Presentation LUT Shape or a negative Rescale
Slope read differently by the software that wrote it, a screenshot of an inverted display),
or a film turned upside down (a cassette read the wrong way up, its Patient Orientation left
as ``L/F`` or absent). The network, trained on upright radiographs with the lungs dark,
then finds almost no lung in a negative (mean Dice 0.07-0.26 on the validation part of the
shared split, clean and under every stress of ``lungseg protocol stress``) and part of the
lungs upside down (0.73), and its mean probability inside what it finds drops.

The check (:class:`ViewCheck`, configured in the bundle's ``inference.json``) takes each
image whose confidence (:func:`lung_confidence`) is low through the network again in each
candidate :class:`~pipeline.enums.View` (:func:`as_seen`: its negative, or turned by 180
degrees; the letterbox padding stays black and in place; each view has its own threshold,
:data:`VIEWS`) and keeps the view the network is surest of, where that beats the image as
read by more than ``margin``. The logits of a turned view are turned back
(:func:`as_stored`), so the mask lies on the file's own grid; its sides are decided as the
turned image shows them (:func:`turned_orientation`). Images above the thresholds (92-98 %
of right images) cost nothing more than the confidence. Measured on the shared split (README
*View check*).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from pipeline.enums import View, ViewCheckMode

#: What the report says of an image segmented in another view than it was read in.
NOTES = {
    View.NEGATIVE: "the image looked inverted (lungs bright): segmented as its negative",
    View.ROTATED_180: (
        "the image looked upside down: segmented turned by 180 degrees, sides as turned"
    ),
}
#: Patient directions and their opposites (DICOM Patient Orientation letters).
OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}
#: How an upright PA/AP chest film is displayed: rows towards the patient's left, columns
#: towards the feet (what lungseg assumes where a file does not say).
UPRIGHT = "L\\F"

#: The candidate views and the confidence under which an image is tried in each: every
#: negative of the shared split's validation part was under 0.93, and 0.96 catches 98 % of
#: its upside-down films while trying 4-8 % of its right images (README *View check*).
VIEWS = {View.NEGATIVE.value: 0.95, View.ROTATED_180.value: 0.96}
Region = tuple[slice, slice]


def lung_confidence(logits: torch.Tensor) -> torch.Tensor:
    """Mean lung probability where it is over 0.5, per image of ``(B, 1, H, W)`` logits.

    Returns:
        ``(B,)`` float32; 0 for an image with no pixel over 0.5.
    """
    prob = torch.sigmoid(logits.float()).flatten(1)
    inside = prob > 0.5
    total = torch.where(inside, prob, torch.zeros_like(prob)).sum(1)
    return total / inside.sum(1).clamp(min=1)


def as_seen(images: torch.Tensor, regions: Sequence[Region], view: View) -> torch.Tensor:
    """Each image of a ``(B, C, H, W)`` canvas in ``view``, inside its region; 0 outside.

    A negative is ``1 - x`` (the preprocessing scales every image to [0, 1] by its own
    percentiles, which commutes with inversion); a turn rotates the region in place.
    """
    out = torch.zeros_like(images)
    for i, (rows, cols) in enumerate(regions):
        part = images[i, :, rows, cols]
        out[i, :, rows, cols] = 1 - part if view is View.NEGATIVE else _turn(part, view)
    return out


def as_stored(logits: torch.Tensor, regions: Sequence[Region], view: View) -> torch.Tensor:
    """Logits of images seen in ``view`` brought back onto the images' own grid."""
    out = logits.clone()
    for i, (rows, cols) in enumerate(regions):
        out[i, :, rows, cols] = _turn(logits[i, :, rows, cols], view)
    return out


def _turn(part: torch.Tensor, view: View) -> torch.Tensor:
    return part.flip(-2, -1) if view is View.ROTATED_180 else part


def turned_orientation(patient_orientation: str | None) -> str:
    """The Patient Orientation of an image turned by 180 degrees (``L/F`` → ``R/H``).

    Where the file gives none, or none of two known directions, the upright display
    (:data:`UPRIGHT`) is turned.
    """
    parts = str(patient_orientation or "").replace("/", "\\").upper().split("\\")
    if len(parts) != 2 or not all(p and set(p) <= set(OPPOSITE) for p in parts):
        parts = UPRIGHT.split("\\")
    return "\\".join("".join(OPPOSITE[c] for c in p) for p in parts)


class ViewCheck:
    """Segment an image in the view the network is surest of (as read, negative, turned).

    Args:
        mode: a :class:`~pipeline.enums.ViewCheckMode` (``off``: images as read).
        views: each candidate view and the confidence under which an image is tried in it
            (:data:`VIEWS`).
        margin: another view is kept only where its confidence exceeds the image's by more
            than this (half the smallest gap between negatives and their images on the
            validation part: README *View check*).

    Raises:
        ValueError: an unknown mode or view (the allowed ones quoted), or a confidence or
            the margin outside [0, 1].
    """

    def __init__(
        self,
        mode: str = ViewCheckMode.AUTO.value,
        views: Mapping[str, float] | None = None,
        margin: float = 0.01,
    ):
        self.mode = ViewCheckMode.parse(mode)
        self.views = {View.parse(v): _unit(v, b) for v, b in (views or VIEWS).items()}
        self.views.pop(View.AS_READ, None)
        self.margin = _unit("margin", margin)

    def __call__(
        self,
        images: torch.Tensor,
        regions: Sequence[Region],
        logits: torch.Tensor,
        run: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, list[View]]:
        """The logits to keep (on the images' own grid) and the view each image was seen in.

        Args:
            images: the network's inputs ``(B, C, H, W)``, as preprocessed.
            regions: each image's rows and columns on its canvas (inside the letterbox).
            logits: the network's logits of ``images``.
            run: the network (logits of a batch).
        """
        kept = [View.AS_READ] * len(images)
        if self.mode is ViewCheckMode.OFF or not len(images):
            return logits, kept
        confidence = lung_confidence(logits)
        best, out = confidence + self.margin, logits
        for view, below in self.views.items():
            unsure = torch.nonzero(confidence < below).flatten().tolist()
            if not unsure:
                continue
            where = [regions[i] for i in unsure]
            seen = run(as_seen(images[unsure], where, view)).to(logits)
            surer = lung_confidence(seen)
            for j, i in enumerate(unsure):
                if surer[j] > best[i]:
                    out = out.clone() if out is logits else out
                    best[i], kept[i] = surer[j], view
                    out[i] = as_stored(seen[j : j + 1], where[j : j + 1], view)[0]
        return out, kept


def _unit(name: str, value: float) -> float:
    """``value`` as a float in [0, 1], else a ValueError naming ``name``."""
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name}: {value!r} is outside [0, 1]")
    return float(value)


class ViewCheckInferer:
    """MONAI-style inferer for MONAI's own workflows: ``inferer``, then ``check`` on the batch.

    The bundle's ``evaluator`` (``python -m monai.bundle run``) runs the network through this,
    so it segments as :class:`~pipeline.inference.predictor.Predictor` does: the regions come
    from the batch's letterbox metadata, and a turned image's Patient Orientation is turned in
    the batch's metadata, which the post-processing's side labelling reads.

    Args:
        inferer: the plain inferer (``inputs, network -> logits``).
        check: the :class:`ViewCheck` (None: ``inferer`` alone).
    """

    def __init__(self, inferer: Callable, check: ViewCheck | None = None):
        self.inferer, self.check = inferer, check

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module) -> torch.Tensor:
        """The logits of a batch ``(B, C, H, W)``, each image in the view the check keeps."""
        logits = self.inferer(inputs, network)
        meta = getattr(inputs, "meta", None)
        if self.check is None or meta is None:
            return logits
        plain = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        regions = batch_regions(meta, len(plain))
        logits, views = self.check(plain, regions, logits, lambda x: self.inferer(x, network))
        orientations = meta.get("patient_orientation")
        for i, view in enumerate(views):
            if view is View.ROTATED_180 and isinstance(orientations, list):
                orientations[i] = turned_orientation(orientations[i])
        meta["view"] = [v.value for v in views]
        return logits


def batch_regions(meta: Mapping, count: int) -> list[Region]:
    """Each image's region on its canvas from a collated batch's ``letterbox`` metadata."""
    box = meta.get("letterbox")
    if not box:
        return [(slice(None), slice(None))] * count
    (top, left), (rows, cols) = box["pad_before"], box["resized_shape"]
    return [
        (slice(int(top[i]), int(top[i] + rows[i])), slice(int(left[i]), int(left[i] + cols[i])))
        for i in range(count)
    ]
