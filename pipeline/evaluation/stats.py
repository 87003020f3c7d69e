"""Statistics of per-case metrics: mean, spread, percentiles and bootstrap confidence intervals.

Every statistic skips NaN values (undefined per-case metrics, see
:mod:`pipeline.evaluation.metrics`); ``n`` counts the values used. The 95% confidence
interval of the mean is a percentile bootstrap (``resamples`` resamples of the cases with
replacement, a fixed seed, so a rerun gives the same interval).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

#: Statistics of :func:`describe`, in table order.
STATISTICS = ("n", "mean", "std", "median", "p5", "ci95_low", "ci95_high", "min", "max")


def bootstrap_ci(
    values: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaN-free, non-empty)."""
    if values.size == 1:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 250):  # chunks: memory stays small for large n
        stop = min(start + 250, resamples)
        means[start:stop] = values[rng.integers(0, values.size, (stop - start, values.size))].mean(
            1
        )
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def describe(values: Iterable[float], resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """:data:`STATISTICS` of the non-NaN ``values`` (all NaN but ``n`` = 0 when none)."""
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return {"n": 0, **{k: math.nan for k in STATISTICS[1:]}}
    low, high = bootstrap_ci(arr, resamples, seed)
    return {
        "n": int(arr.size),
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "median": float(np.median(arr)),
        "p5": float(np.percentile(arr, 5)),
        "ci95_low": low,
        "ci95_high": high,
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


def summarise(
    cases: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    group_columns: Sequence[str] = (),
    resamples: int = 2000,
) -> dict[str, Any]:
    """Statistics of each metric over all cases and within each value of each group column.

    Args:
        cases: per-case rows (metric values and group columns).
        metrics: the metric columns to describe.
        group_columns: columns to group by; cases without the column are left out of it.
        resamples: bootstrap resamples.

    Returns:
        ``{"overall": {metric: stats}, "groups": {column: {value: {metric: stats}}}}``.
    """

    def block(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
        return {m: describe((_number(r.get(m)) for r in rows), resamples) for m in metrics}

    groups: dict[str, Any] = {}
    for column in group_columns:
        values = sorted({str(c[column]) for c in cases if c.get(column) not in (None, "")})
        groups[column] = {v: block([c for c in cases if str(c.get(column)) == v]) for v in values}
    return {"overall": block(cases), "groups": groups}


def _number(value: Any) -> float:
    """A metric cell as a float; empty or missing cells are NaN."""
    if value is None or value == "":
        return math.nan
    return float(value)
