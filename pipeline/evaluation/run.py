"""``lungseg evaluate``: pair images with reference masks, segment (or read predictions), score.

Cases are the images under ``--images`` (searched recursively). Each one's reference mask is
the file of the same relative path and stem under ``--masks`` (any image suffix: ``a.dcm``
pairs with ``a.png``); its prediction, with ``--predictions``, is ``<stem>.png`` under that
folder — the layout ``lungseg segment`` writes (``OUT/masks``). A manifest CSV keyed by file
name (``file`` column) gives the group columns.
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluation.evaluate import Evaluation

#: Suffixes tried, in order, for a reference mask of the image's stem.
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".nii.gz", ".nii", ".mha", ".dcm")


@dataclass(frozen=True)
class EvalCase:
    """One image, its reference mask and (optionally) its existing prediction."""

    name: str
    image: Path
    truth: Path | None
    prediction: Path | None = None
    groups: dict[str, str] = field(default_factory=dict)


def read_manifest(path: str | os.PathLike) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Group columns and rows (by file name) of a manifest CSV with a ``file`` column.

    Raises:
        ValueError: no ``file`` column (the message lists the columns found).
    """
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        if "file" not in columns:
            raise ValueError(f"{path}: manifest needs a 'file' column; it has {columns}")
        rows = {row["file"]: {k: v for k, v in row.items() if k != "file"} for row in reader}
    return [c for c in columns if c != "file"], rows


def _stem(name: str) -> str:
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem


def find_reference(masks: Path, relative: Path) -> Path | None:
    """The mask of ``relative`` under ``masks``: same name, else same stem with a mask suffix."""
    exact = masks / relative
    if exact.is_file():
        return exact
    stem = _stem(relative.name)
    for suffix in MASK_SUFFIXES:
        candidate = masks / relative.parent / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def find_cases(
    images: str | os.PathLike,
    masks: str | os.PathLike,
    manifest: str | os.PathLike | None = None,
    predictions: str | os.PathLike | None = None,
    select: Collection[str] | None = None,
) -> tuple[list[EvalCase], list[str]]:
    """The cases under ``images`` and the group columns of the manifest.

    Only the images named in ``select`` (file name or relative path) are kept when it is given.

    Raises:
        FileNotFoundError: ``images`` or ``masks`` is not a folder, or no case was found.
    """
    from pipeline.io.discovery import iter_inputs

    for what, folder in (("--images", images), ("--masks", masks)):
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{what} {str(folder)!r} is not a folder")
    columns, rows = read_manifest(manifest) if manifest else ([], {})
    cases = []
    for found in iter_inputs([images]):
        name = found.relative.as_posix()
        if found.is_sidecar or (
            select is not None and found.path.name not in select and name not in select
        ):
            continue
        pred = found.output(predictions, ".png") if predictions else None
        groups = rows.get(found.path.name) or rows.get(name) or {}
        cases.append(
            EvalCase(name, found.path, find_reference(Path(masks), found.relative), pred, groups)
        )
    if not cases:
        raise FileNotFoundError(
            f"no image found under {str(images)!r}"
            + (f" among the {len(select)} selected names" if select is not None else "")
        )
    return cases, columns


def read_mask(path: Path, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A mask file as booleans (lung = over half its maximum), checked against ``shape``.

    Raises:
        InputError: unreadable file; ValueError: another size than ``shape``.
    """
    from pipeline.io.reader import read_cxr
    from pipeline.transforms import binarize_mask

    arr, _ = read_cxr(path)
    mask = binarize_mask(arr) > 0
    if shape is not None and mask.shape != tuple(shape):
        raise ValueError(
            f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} (w x h), "
            f"the image {shape[1]}x{shape[0]}"
        )
    return mask


def header_spacing(path: Path) -> tuple[float, float] | None:
    """Pixel spacing from a DICOM header (no pixel decoding); None for other files."""
    from pipeline.io.dicom import is_dicom_file, pixel_spacing

    if not is_dicom_file(path):
        return None
    import pydicom

    spacing, _ = pixel_spacing(pydicom.dcmread(path, stop_before_pixels=True))
    return None if math.isnan(spacing[0]) else spacing


def _score_predictions(
    ev: Evaluation, cases: Sequence[EvalCase], spacing: Any, tick: Callable[[int], Any]
) -> None:
    for case in cases:
        tick(1)
        try:
            if case.prediction is None or not case.prediction.is_file():
                raise FileNotFoundError(f"no prediction {case.prediction}")
            pred = read_mask(case.prediction)
            truth = read_mask(case.truth, pred.shape)
            sp = spacing or header_spacing(case.image)
            ev.add(case.name, pred, truth, None, sp, case.groups, case.image)
        except Exception as err:  # one bad case is reported, the evaluation goes on
            ev.add_failure(case.name, _reason(err), case.groups)


def _score_model(
    ev: Evaluation,
    cases: Sequence[EvalCase],
    predictor: Any,
    spacing: Any,
    batch_size: int,
    tick: Callable[[int], Any],
) -> None:
    for start in range(0, len(cases), batch_size):
        tick(len(cases[start : start + batch_size]))
        ready = []
        for case in cases[start : start + batch_size]:
            try:
                ready.append((case, predictor.load(case.image)))
            except Exception as err:  # undecodable image: a failed row
                ev.add_failure(case.name, _reason(err), case.groups)
        if not ready:
            continue
        predictions = predictor.predict_items([loaded for _, loaded in ready])
        for (case, _), pred in zip(ready, predictions, strict=True):
            try:
                truth = read_mask(case.truth, pred.mask.shape)
                sp = spacing or pred.measures.spacing
                ev.add(case.name, pred.mask, truth, pred.probability, sp, case.groups, case.image)
            except Exception as err:  # unreadable or mismatched reference: a failed row
                ev.add_failure(case.name, _reason(err), case.groups)


def _reason(err: Exception) -> str:
    text = getattr(err, "reason", None)
    path = getattr(err, "path", None)
    return f"{path}: {text}" if text and path else f"{type(err).__name__}: {err}"


def evaluate(
    images: str | os.PathLike,
    masks: str | os.PathLike,
    out_dir: str | os.PathLike,
    manifest: str | os.PathLike | None = None,
    bundle: str | os.PathLike | None = None,
    predictions: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 8,
    pixel_spacing: tuple[float, float] | None = None,
    select: Collection[str] | None = None,
    title: str | None = None,
    worst: int = 8,
    overrides: dict[str, Any] | None = None,
    progress: bool = False,
    lung_field_file: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Evaluate the bundle's model (or existing ``predictions``) on ``images`` vs ``masks``.

    Args:
        images: folder of radiographs (any supported format, searched recursively).
        masks: folder of reference masks (same relative paths and stems).
        out_dir: where the outputs go.
        manifest: CSV keyed by file name; its other columns group the statistics.
        bundle: the bundle folder (default: the shipped one).
        predictions: score these masks instead of running the model.
        device: ``auto``, ``cpu``, ``cuda``...
        batch_size: images per forward pass.
        pixel_spacing: (row, column) mm for every image (default: DICOM header, else none).
        select: keep only the images with these file names or relative paths.
        title: heading of ``summary.md``.
        worst: how many lowest-Dice cases to draw.
        overrides: ``inference.json`` config ids to set (a checkpoint trained elsewhere...).
        lung_field_file: for a model that outputs the anatomical lung field, which
            references are drawn to the anatomical convention (default: the shared data's);
            ``dice_decided``, ``precision_decided`` and ``recall_decided`` are then scored
            where the reference decides (:mod:`pipeline.evaluation.lung_field`), every
            other reference taken as visible-convention.
        progress: show a progress bar.

    Returns:
        The summary written to ``out_dir/summary.json``.
    """
    cases, columns = find_cases(images, masks, manifest, predictions, select)
    ev = Evaluation(columns, worst=worst)
    missing = [c for c in cases if c.truth is None]
    for case in missing:
        ev.add_failure(case.name, f"no reference mask under {masks}", case.groups)
    cases = [c for c in cases if c.truth is not None]
    from tqdm import tqdm

    bar = tqdm(total=len(cases), unit="case", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    about: dict[str, Any] = {
        "title": title or str(images),
        "images": str(images),
        "masks": str(masks),
    }
    if predictions is not None:
        _score_predictions(ev, cases, pixel_spacing, bar.update)
        about["predictions"] = str(predictions)
    else:
        from pipeline.evaluation.lung_field import references_for
        from pipeline.inference.predictor import Predictor

        predictor = Predictor(bundle, device, overrides)
        ev.anatomical = references_for(predictor.lung_field, lung_field_file)
        _score_model(ev, cases, predictor, pixel_spacing, batch_size, bar.update)
        about.update(model=predictor.identity.as_dict(), device=str(predictor.device))
    bar.close()
    about["seconds"] = round(time.perf_counter() - start, 2)
    return ev.write(out_dir, about)
