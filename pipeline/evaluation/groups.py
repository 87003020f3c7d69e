"""Summaries of per-case metrics, overall and by group (e.g. source, tuberculosis)."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.atomic import atomic_path


def read_metric_details(path: str | os.PathLike) -> dict[str, float]:
    """Per-case values from a MONAI ``MetricsSaver`` ``<metric>_raw.csv``: file -> mean.

    Raises:
        ValueError: the file has no ``filename`` column or no value column.
    """
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or rows[0][0] != "filename" or len(rows[0]) < 2:
        raise ValueError(f"{path}: expected a MetricsSaver details file (filename, values...)")
    header = rows[0]
    col = header.index("mean") if "mean" in header else 1
    return {row[0]: float(row[col]) for row in rows[1:] if row}


def _stats(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "median": math.nan, "min": math.nan}
    return {
        "n": int(arr.size),
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "median": float(np.median(arr)),
        "min": float(arr.min()),
    }


def group_summary(
    values: Mapping[str, float], items: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> dict[str, Any]:
    """Statistics of ``values`` (keyed by image path) overall and for each value of ``columns``.

    Args:
        values: per-case metric keyed by the image path.
        items: datalist entries with ``image`` and the grouping columns.
        columns: item entries to group by (absent entries are ignored).

    Raises:
        ValueError: a value's key matches no item (the message names it).
    """
    by_path = {os.path.abspath(str(item["image"])): item for item in items}
    cases = []
    for path, value in values.items():
        item = by_path.get(os.path.abspath(path))
        if item is None:
            raise ValueError(f"metric row {path!r} matches no datalist item")
        cases.append((item, value))
    out: dict[str, Any] = {"all": _stats([v for _, v in cases])}
    for column in columns:
        groups = sorted({str(item[column]) for item, _ in cases if column in item})
        out[column] = {
            g: _stats([v for item, v in cases if str(item.get(column)) == g]) for g in groups
        }
    return out


def write_group_summary(
    output_dir: str | os.PathLike,
    metric: str,
    items: Sequence[Mapping[str, Any]],
    columns: Sequence[str] = ("source",),
) -> dict[str, Any]:
    """Read ``<metric>_raw.csv`` under ``output_dir``; write ``<metric>_by_group.json``."""
    values = read_metric_details(Path(output_dir) / f"{metric}_raw.csv")
    summary = group_summary(values, items, columns)
    with atomic_path(Path(output_dir) / f"{metric}_by_group.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
