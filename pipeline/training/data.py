"""Datalists and deterministic, stratified splits for training and evaluation.

A datalist is a list of ``{"image": path, "label": path, "name": ..., <manifest columns>}``.
It comes from a collection folder (``images/`` + ``masks/`` paired by file name, with the
optional ``manifest.csv``), or from a CSV/JSON file with ``image`` and ``label`` entries.

Splits are a pure function of the case names, the fractions and the seed: each stratum
(by default every ``source`` x ``tuberculosis`` combination) is shuffled with the seed and cut
by the fractions, so the proportions of each group are kept in every part. With ``folds > 1``
the non-test cases are dealt into folds per stratum and ``fold`` picks the validation fold.

A **split file** (JSON, :func:`write_split_file`) freezes a split as lists of case names; the
shared data's is ``data/splits/montgomery-shenzhen.json``. ``where`` keeps only the cases whose
columns match (``{"source": "shenzhen"}``) before splitting: the cross-dataset protocol trains
on one source that way.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.datasets import list_cases

PARTS = ("train", "validation", "test")


def datalist(source: str | os.PathLike) -> list[dict[str, Any]]:
    """Labelled cases from a collection folder or a CSV/JSON datalist file.

    Raises:
        FileNotFoundError: no such folder/file, or a case's image or label is missing.
        ValueError: a datalist file without ``image``/``label`` entries.
    """
    path = Path(source)
    if path.is_dir():
        items = [
            {"image": str(c.image), "label": str(c.mask), "name": c.name, **c.fields}
            for c in list_cases(path)
            if c.mask is not None
        ]
    elif path.suffix.lower() in (".csv", ".json"):
        items = _read_datalist_file(path)
    else:
        raise FileNotFoundError(f"{path}: not a collection folder nor a .csv/.json datalist")
    if not items:
        raise FileNotFoundError(f"{path}: no labelled case (image with a mask of the same name)")
    return items


def _read_datalist_file(path: Path) -> list[dict[str, Any]]:
    if path.suffix.lower() == ".json":
        raw = json.loads(path.read_text())
        rows = raw.get("training", raw) if isinstance(raw, dict) else raw
    else:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    items = []
    for i, row in enumerate(rows):
        if "image" not in row or "label" not in row:
            raise ValueError(f"{path}: entry {i} lacks 'image' or 'label': {row!r}")
        item = {**row, "image": _resolve(path, row["image"]), "label": _resolve(path, row["label"])}
        item.setdefault("name", Path(item["image"]).name)
        items.append(item)
    return items


def _resolve(datalist_file: Path, value: str) -> str:
    p = Path(value)
    return str(p if p.is_absolute() else datalist_file.parent / p)


def _strata(items: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(tuple(str(item.get(k, "")) for k in keys), []).append(i)
    return groups


def split(
    items: Sequence[dict[str, Any]],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    stratify: Sequence[str] = ("source", "tuberculosis"),
    folds: int = 0,
    fold: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """Split a datalist into ``train``, ``validation`` and ``test`` (see module docstring)."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"fractions val={val_fraction} test={test_fraction} must be in [0, 1) and sum below 1"
        )
    if folds and not 0 <= fold < folds:
        raise ValueError(f"fold {fold} is out of range for {folds} folds (0..{folds - 1})")
    order = sorted(range(len(items)), key=lambda i: str(items[i].get("name", items[i]["image"])))
    ordered = [items[i] for i in order]
    parts: dict[str, list[dict[str, Any]]] = {p: [] for p in PARTS}
    rng = np.random.default_rng(seed)
    for indices in _strata(ordered, stratify).values():
        shuffled = [ordered[i] for i in rng.permutation(indices)]
        n_test = round(test_fraction * len(shuffled))
        parts["test"] += shuffled[:n_test]
        rest = shuffled[n_test:]
        if folds > 1:
            in_fold = [i % folds == fold for i in range(len(rest))]
            parts["validation"] += [c for c, v in zip(rest, in_fold, strict=True) if v]
            parts["train"] += [c for c, v in zip(rest, in_fold, strict=True) if not v]
        else:
            n_val = round(val_fraction * len(shuffled))
            parts["validation"] += rest[:n_val]
            parts["train"] += rest[n_val:]
    return parts


def select(items: Sequence[dict[str, Any]], where: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The items whose columns match ``where`` (a value, or a list of allowed values, per column).

    Raises:
        ValueError: a column no item has (the message lists the columns there are).
    """
    items = list(items)
    for column, allowed in (where or {}).items():
        if items and not any(column in item for item in items):
            raise ValueError(f"where: no case has a {column!r} column; columns: {sorted(items[0])}")
        values = {str(v) for v in (allowed if isinstance(allowed, list | tuple) else [allowed])}
        items = [item for item in items if str(item.get(column)) in values]
    return items


def load_split(
    source: str | os.PathLike,
    part: str,
    limit: int | None = None,
    split_file: str | os.PathLike | None = None,
    where: dict[str, Any] | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """One part of the split of ``source``; with ``limit``, that many cases, sources alternating.

    Args:
        source: collection folder or datalist file.
        part: ``train``, ``validation`` or ``test``.
        limit: keep this many cases (sources interleaved first).
        split_file: take the part's case names from this file instead of splitting.
        where: keep only matching cases (see :func:`select`), before splitting.
        **kwargs: :func:`split` options.
    """
    if part not in PARTS:
        raise ValueError(f"part {part!r} is not one of: {', '.join(PARTS)}")
    items = select(datalist(source), where)
    if split_file:
        items = _from_split_file(items, split_file, part)
    else:
        items = split(items, **kwargs)[part]
    return _interleave(items, "source")[:limit] if limit else items


def _from_split_file(
    items: Sequence[dict[str, Any]], split_file: str | os.PathLike, part: str
) -> list[dict[str, Any]]:
    names = read_split_file(split_file)[part]
    by_name = {str(item["name"]): item for item in items}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(
            f"{split_file}: {len(missing)} {part} case(s) are not in the data, e.g. {missing[0]!r}"
        )
    return [by_name[n] for n in names]


def read_split_file(path: str | os.PathLike) -> dict[str, list[str]]:
    """The case names of each part of a split file.

    Raises:
        ValueError: the file lacks a part or is not a split file.
    """
    try:
        raw = json.loads(Path(path).read_text())
        return {part: [str(n) for n in raw[part]] for part in PARTS}
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a split file (needs lists {', '.join(PARTS)})") from err


def split_document(source: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
    """A split of ``source`` as a self-describing document (see :func:`write_split_file`)."""
    items = datalist(source)
    parts = split(items, **kwargs)
    options = {"val_fraction": 0.15, "test_fraction": 0.15, "seed": 0,
               "stratify": ["source", "tuberculosis"], **kwargs}  # fmt: skip
    counts = {
        part: {
            "cases": len(cases),
            **{f"{c}={v}": n for c, v, n in _strata_counts(cases, options["stratify"])},
        }
        for part, cases in parts.items()
    }
    return {
        "description": "Fixed train/validation/test split of the lung segmentation data, "
        "stratified by the columns in 'options' (lungseg split regenerates it).",
        "data_fingerprint": fingerprint(items),
        "options": options,
        "counts": counts,
        **{part: sorted(str(c["name"]) for c in cases) for part, cases in parts.items()},
    }


def _strata_counts(cases: Sequence[dict[str, Any]], columns: Sequence[str]):
    for column in columns:
        for value in sorted({str(c.get(column, "")) for c in cases}):
            yield column, value, sum(str(c.get(column, "")) == value for c in cases)


def write_split_file(source: str | os.PathLike, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write :func:`split_document` of ``source`` to ``path`` (JSON, atomically)."""
    from pipeline.io.atomic import write_text_atomic

    return write_text_atomic(path, json.dumps(split_document(source, **kwargs), indent=1) + "\n")


def read_lung_field_cases(path: str | os.PathLike | None) -> list[str]:
    """The case names a lung-field file lists as drawn to the anatomical convention.

    The file (``data/splits/montgomery-shenzhen-lung-field.json``, written by
    ``data/scripts/lung_field_conventions.py``) is JSON with an ``anatomical`` list; None
    gives no case.

    Raises:
        ValueError: the file is not such a document.
    """
    if path is None:
        return []
    try:
        return [str(n) for n in json.loads(Path(path).read_text())["anatomical"]]
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a lung-field file (needs a list 'anatomical')") from err


def repeat_cases(
    items: Sequence[dict[str, Any]], names: Sequence[str], times: int
) -> list[dict[str, Any]]:
    """``items`` with every case named in ``names`` present ``times`` times (oversampling)."""
    if times < 1:
        raise ValueError(f"repeat {times!r} must be >= 1")
    chosen = set(names)
    extra = [item for item in items if str(item.get("name")) in chosen] * (times - 1)
    return list(items) + extra


def repeat_sources(
    items: Sequence[dict[str, Any]], times: dict[str, int] | None
) -> list[dict[str, Any]]:
    """``items`` with the cases of each source in ``times`` present that many times.

    Rebalances collections of unequal size (e.g. ``{"montgomery": 3}``); sources not named
    stay once.

    Raises:
        ValueError: a count below 1, or a source no case has (the allowed ones are quoted).
    """
    times = dict(times or {})
    sources = sorted({str(item.get("source")) for item in items})
    unknown = sorted(set(times) - set(sources))
    if unknown:
        raise ValueError(f"source_repeat: no case has source {unknown[0]!r}; sources: {sources}")
    out = list(items)
    for source, count in times.items():
        names = [str(i.get("name")) for i in items if str(i.get("source")) == source]
        out = repeat_cases(out, names, count)
    return out


def _interleave(items: Sequence[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """Alternate the groups of ``column`` so that a short prefix covers every group."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault(item.get(column), []).append(item)
    mixed = itertools.zip_longest(*groups.values())
    return [item for row in mixed for item in row if item is not None]


def fingerprint(items: Sequence[dict[str, Any]]) -> str:
    """A short hash of the cases' names and file sizes: the same data gives the same print."""
    h = hashlib.sha256()
    for item in sorted(items, key=lambda x: str(x["image"])):
        for key in ("image", "label"):
            p = Path(item[key])
            h.update(f"{p.name}:{p.stat().st_size if p.exists() else -1};".encode())
    return h.hexdigest()[:16]
