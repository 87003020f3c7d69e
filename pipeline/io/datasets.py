"""Locate and list labelled chest X-ray collections (the shared Montgomery + Shenzhen set).

A collection is a folder with ``images/<name>`` and ``masks/<name>`` and, optionally, a
``manifest.csv`` with a ``file`` column and any grouping columns (``source``,
``tuberculosis``...). The shared set lives in ``../shared/data/montgomery-shenzhen`` beside
the repository; ``LUNGSEG_DATA`` points anywhere else.
"""

from __future__ import annotations

import csv
import itertools
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ENV_VAR = "LUNGSEG_DATA"
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where a wheel installs the bundles and split files (``setup.cfg`` ``data_files``).
INSTALLED_DATA = Path(sys.prefix) / "share" / "lungseg"


def project_file(relative: str) -> Path:
    """A file or folder the project ships (``bundles/...``, ``data/splits/...``).

    From the source tree when lungseg runs from a checkout (``pip install -e``), else from
    ``<prefix>/share/lungseg`` where a wheel installs them; the checkout's path when neither
    exists, so errors name the expected place.
    """
    for root in (REPO_ROOT, INSTALLED_DATA):
        if (root / relative).exists():
            return root / relative
    return REPO_ROOT / relative


def default_data_dir() -> Path:
    """``$LUNGSEG_DATA`` if set, else ``../shared/data/montgomery-shenzhen`` beside the repo."""
    env = os.environ.get(ENV_VAR)
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "montgomery-shenzhen"
    return path.resolve()


@dataclass(frozen=True)
class Case:
    """One labelled radiograph."""

    name: str
    image: Path
    mask: Path | None
    fields: dict[str, str] = field(default_factory=dict)


def list_cases(data_dir: str | os.PathLike) -> list[Case]:
    """List the cases of a collection, in manifest order (else sorted by name).

    Raises:
        FileNotFoundError: the folder or its ``images/`` is missing, with what to do.
    """
    root = Path(data_dir)
    images = root / "images"
    if not images.is_dir():
        raise FileNotFoundError(
            f"{root}: no images/ folder; point --data or ${ENV_VAR} at a collection "
            "(see data/README.md for downloading the Montgomery and Shenzhen sets)"
        )
    manifest = root / "manifest.csv"
    if manifest.is_file():
        with open(manifest, newline="") as fh:
            rows = [dict(r) for r in csv.DictReader(fh)]
    else:
        rows = [{"file": p.name} for p in sorted(images.iterdir()) if p.is_file()]
    return [_case(root, row) for row in rows]


def _case(root: Path, row: dict[str, str]) -> Case:
    name = row["file"]
    mask = root / "masks" / name
    return Case(name, root / "images" / name, mask if mask.is_file() else None, row)


def interleave_by(cases: list[Case], column: str) -> list[Case]:
    """Reorder cases so groups of ``column`` alternate (a short prefix covers every group)."""
    groups: dict[str, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.fields.get(column, ""), []).append(case)
    mixed = itertools.zip_longest(*groups.values())
    return [case for row in mixed for case in row if case is not None]


def _mask_for(image: Path, mask_dirs: list[Path]) -> list[Path]:
    names = (image.name, f"{image.stem}_mask{image.suffix}")
    return [d / n for d in mask_dirs for n in names if (d / n).is_file()]


def _merge_masks(paths: list[Path]) -> Any:
    from PIL import Image

    merged = None
    for path in paths:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L")) > 127
        merged = arr if merged is None else merged | arr
    return merged


def _save_resized(arr: Any, path: Path, size: int | None, resample: int) -> None:
    from PIL import Image

    from pipeline.io.atomic import atomic_path

    img = Image.fromarray(arr)
    if size:
        scale = size / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), resample)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def prepare_collection(
    sources: dict[str, tuple[Path, list[Path]]], out_dir: str | os.PathLike, size: int | None = None
) -> int:
    """Build a collection (images/, masks/, manifest.csv) from the NLM downloads.

    Args:
        sources: ``{source name: (folder of CXR PNGs, [mask folders])}``; a case's masks are
            the files of the same name (or ``<stem>_mask.png``) in any mask folder, merged
            (Montgomery ships left and right lungs separately). Cases without a mask are
            left out. The tuberculosis label is the name's ``_1``/``_0`` suffix.
        out_dir: the collection to write.
        size: resize so the longer side is ``size`` (aspect kept); None keeps the original.

    Returns:
        The number of cases written.
    """
    from PIL import Image

    out = Path(out_dir)
    rows = []
    for source, (image_dir, mask_dirs) in sources.items():
        for image in sorted(image_dir.glob("*.png")):
            masks = _mask_for(image, mask_dirs)
            if not masks:
                continue
            with Image.open(image) as img:
                pixels = np.asarray(img.convert("L"))
            _save_resized(pixels, out / "images" / image.name, size, Image.Resampling.LANCZOS)
            mask = (_merge_masks(masks) * 255).astype(np.uint8)
            _save_resized(mask, out / "masks" / image.name, size, Image.Resampling.BILINEAR)
            rows.append({"file": image.name, "source": source, "tuberculosis": image.stem[-1]})
    _write_manifest(rows, out / "manifest.csv")
    return len(rows)


def _write_manifest(rows: list[dict[str, str]], path: Path) -> None:
    from pipeline.io.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "source", "tuberculosis"])
        writer.writeheader()
        writer.writerows(rows)


def prepare_public_sets(
    out_dir: str | os.PathLike,
    montgomery: str | os.PathLike | None = None,
    shenzhen: str | os.PathLike | None = None,
    shenzhen_masks: str | os.PathLike | None = None,
    size: int | None = None,
) -> int:
    """A collection from the unzipped NLM downloads (``lungseg prepare-data``).

    Args:
        out_dir: the collection to write.
        montgomery: the ``MontgomerySet`` folder (``CXR_png/``, ``ManualMask/left|rightMask``).
        shenzhen: the ``ChinaSet_AllFiles`` folder (``CXR_png/``).
        shenzhen_masks: the folder of Shenzhen lung masks (distributed separately).
        size: resize so the longer side is ``size``.

    Raises:
        FileNotFoundError: neither set given, or a ``CXR_png`` folder is missing (named).
    """
    sources: dict[str, tuple[Path, list[Path]]] = {}
    if montgomery:
        root = Path(montgomery)
        masks = [root / "ManualMask" / "leftMask", root / "ManualMask" / "rightMask"]
        sources["montgomery"] = (root / "CXR_png", masks)
    if shenzhen:
        masks = [Path(shenzhen_masks)] if shenzhen_masks else []
        sources["shenzhen"] = (Path(shenzhen) / "CXR_png", masks)
    missing = [str(d) for d, _ in sources.values() if not d.is_dir()]
    if not sources or missing:
        raise FileNotFoundError(
            f"give --montgomery and/or --shenzhen folders with CXR_png/ (missing: {missing})"
        )
    return prepare_collection(sources, out_dir, size)
