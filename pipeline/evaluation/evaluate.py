"""Evaluate lung masks against reference masks: per-case metrics, statistics, plots.

:class:`Evaluation` collects cases one at a time (from ``lungseg evaluate``, or from the
bundle's ``configs/evaluate.json`` through :class:`pipeline.evaluation.handlers.CaseMetrics`)
and writes, under one folder:

- ``per_case.csv``: one row per case: status, reason, group columns, every metric of
  :data:`pipeline.evaluation.metrics.METRICS` and the confusion counts;
- ``summary.json`` and ``summary.md``: statistics overall and per group (mean, std, median,
  5th percentile, 95% bootstrap CI), the pooled pixel confusion matrix, pooled AUCs;
- ``roc.png`` (with probability maps), ``dice_by_group.png``, ``worst_cases.png`` and
  ``worst/NN_<case>.png`` (the lowest-Dice cases as overlays).
"""

from __future__ import annotations

import csv
import heapq
import io
import json
import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluation.lung_field import decided_overlap
from pipeline.evaluation.metrics import COUNTS, METRICS, RocAccumulator, case_metrics
from pipeline.evaluation.stats import summarise
from pipeline.io.atomic import write_text_atomic

#: Columns of ``per_case.csv`` before the group columns and the metrics.
CASE_FIELDS = ("case", "status", "reason", "pixel_spacing_mm")
#: Metrics where the reference decides (:mod:`pipeline.evaluation.lung_field`), added for a
#: model that outputs the anatomical lung field.
DECIDED = ("dice_decided", "precision_decided", "recall_decided")


@dataclass
class _Worst:
    """A low-Dice case kept for the overlays (masks bit-packed: 1/8 of a byte per pixel)."""

    dice: float
    name: str
    image: str
    shape: tuple[int, int]
    pred: bytes = field(repr=False)
    truth: bytes = field(repr=False)

    def __lt__(self, other: _Worst) -> bool:  # heap order: the best of the worst on top
        return (-self.dice, self.name) < (-other.dice, other.name)

    def masks(self) -> tuple[np.ndarray, np.ndarray]:
        """The two masks, unpacked."""
        n = self.shape[0] * self.shape[1]

        def unpack(packed: bytes) -> np.ndarray:
            return np.unpackbits(np.frombuffer(packed, np.uint8))[:n].reshape(self.shape) > 0

        return unpack(self.pred), unpack(self.truth)


class Evaluation:
    """Accumulates per-case metrics; :meth:`write` produces every output.

    Args:
        group_columns: case columns to group the statistics by (e.g. source, tuberculosis).
        worst: how many lowest-Dice cases to draw.
        resamples: bootstrap resamples for the confidence intervals.
        anatomical_references: score :data:`DECIDED` too, every reference taken as drawn to
            the visible convention except the cases named here (None: plain metrics only).
    """

    def __init__(
        self,
        group_columns: Sequence[str] = (),
        worst: int = 8,
        resamples: int = 2000,
        anatomical_references: Collection[str] | None = None,
    ):
        self.group_columns, self.worst, self.resamples = tuple(group_columns), worst, resamples
        names = anatomical_references
        self.anatomical = None if names is None else frozenset(names)
        self.rows: list[dict[str, Any]] = []
        self.roc: dict[tuple[str, str], RocAccumulator] = {}
        self._worst: list[_Worst] = []

    def add(
        self,
        name: str,
        pred: np.ndarray,
        truth: np.ndarray,
        prob: np.ndarray | None = None,
        spacing: Sequence[float] | None = None,
        groups: Mapping[str, Any] | None = None,
        image: str | os.PathLike | None = None,
    ) -> dict[str, Any]:
        """Evaluate one case; returns its row (see :func:`case_metrics` for the arguments)."""
        pred, truth = np.asarray(pred) > 0, np.asarray(truth) > 0
        spacing = None if spacing is None or any(math.isnan(s) for s in spacing) else spacing
        values = case_metrics(pred, truth, prob, spacing)
        if self.anatomical is not None:
            decided = decided_overlap(pred, truth, name in self.anatomical)
            values.update({f"{k}_decided": decided[k] for k in ("dice", "precision", "recall")})
        sp = "" if spacing is None else "\\".join(f"{s:.6g}" for s in spacing)
        row = {"case": name, "status": "ok", "reason": "", "pixel_spacing_mm": sp}
        row.update({c: (groups or {}).get(c, "") for c in self.group_columns}, **values)
        self.rows.append(row)
        if prob is not None:
            for key in [("all", "all")] + [(c, str(row[c])) for c in self.group_columns]:
                self.roc.setdefault(key, RocAccumulator()).add(prob, truth)
        self._keep_if_worst(row["dice"], name, str(image or ""), pred, truth)
        return row

    def add_failure(self, name: str, reason: str, groups: Mapping[str, Any] | None = None) -> None:
        """Record a case that could not be evaluated (kept in ``per_case.csv``, not in stats)."""
        row = {"case": name, "status": "failed", "reason": reason, "pixel_spacing_mm": ""}
        self.rows.append(row | {c: (groups or {}).get(c, "") for c in self.group_columns})

    def merge(self, other: Evaluation) -> None:
        """Add another evaluation's cases (e.g. another rank's of a distributed run)."""
        self.rows += other.rows
        for key, acc in other.roc.items():
            mine = self.roc.setdefault(key, RocAccumulator(acc.bins))
            mine.positive += acc.positive
            mine.negative += acc.negative
        for item in other._worst:
            if self.worst <= 0:
                break
            if len(self._worst) < self.worst:
                heapq.heappush(self._worst, item)
            elif item.dice < self._worst[0].dice:
                heapq.heapreplace(self._worst, item)

    def _keep_if_worst(self, dice: float, name: str, image: str, pred, truth) -> None:
        if self.worst <= 0:
            return
        item = _Worst(
            dice, name, image, pred.shape, np.packbits(pred).tobytes(), np.packbits(truth).tobytes()
        )
        if len(self._worst) < self.worst:
            heapq.heappush(self._worst, item)
        elif dice < self._worst[0].dice:
            heapq.heapreplace(self._worst, item)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metric columns: :data:`METRICS`, and :data:`DECIDED` when scored."""
        return METRICS if self.anatomical is None else (*METRICS, *DECIDED)

    @property
    def ok_rows(self) -> list[dict[str, Any]]:
        """Rows of the evaluated cases."""
        return [r for r in self.rows if r["status"] == "ok"]

    def summary(self, about: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Counts, statistics, pooled confusion matrix and AUCs (what ``summary.json`` holds)."""
        ok = self.ok_rows
        counts = {k: int(sum(r[k] for r in ok)) for k in COUNTS}
        return {
            "cases": {"evaluated": len(ok), "failed": len(self.rows) - len(ok)},
            "failed": [
                {"case": r["case"], "reason": r["reason"]} for r in self.rows if r["status"] != "ok"
            ],
            "group_columns": list(self.group_columns),
            "statistics": summarise(ok, self.metrics, self.group_columns, self.resamples),
            "confusion_matrix": confusion_matrix(counts),
            "pooled_auc": {
                f"{c}={v}" if c != "all" else "all": acc.auc()
                for (c, v), acc in sorted(self.roc.items())
            },
            "worst_cases": [
                {"case": w.name, "dice": w.dice} for w in sorted(self._worst, reverse=True)
            ],
            **dict(about or {}),
        }

    def write(self, out_dir: str | os.PathLike, about: Mapping[str, Any] | None = None) -> dict:
        """Write every output under ``out_dir`` (see the module docstring); return the summary."""
        from pipeline.evaluation.tables import summary_markdown

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.write_csv(out / "per_case.csv")
        summary = self.summary(about)
        summary["plots"] = self.write_plots(out)
        write_text_atomic(out / "summary.json", json.dumps(_finite(summary), indent=2) + "\n")
        write_text_atomic(out / "summary.md", summary_markdown(summary))
        return summary

    def write_csv(self, path: Path) -> None:
        """``per_case.csv``: empty cells for NaN and for metrics of failed cases."""
        fields = [*CASE_FIELDS, *self.group_columns, *self.metrics, *COUNTS]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: _cell(row.get(k, "")) for k in fields})
        write_text_atomic(path, buf.getvalue())

    def write_plots(self, out: Path) -> list[str]:
        """The figures; returns their file names (relative to ``out``)."""
        from pipeline.evaluation.plots import distribution_figure, roc_figure, worst_cases_figure

        written, ok = [], self.ok_rows
        if not ok:
            return written
        if self.roc:
            curves = {
                ("all" if c == "all" else f"{c}={v}"): (*acc.curve(), acc.auc())
                for (c, v), acc in sorted(self.roc.items())
                if not math.isnan(acc.auc())
            }
            written.append(roc_figure(curves, out / "roc.png").name)
        panels = {"all": {"all": [r["dice"] for r in ok]}}
        for column in self.group_columns:
            values = sorted({str(r[column]) for r in ok if r[column] != ""})
            panels[column] = {v: [r["dice"] for r in ok if str(r[column]) == v] for v in values}
        written.append(distribution_figure(panels, "dice", out / "dice_by_group.png").name)
        worst = self._worst_cases()
        if worst:
            written.append(worst_cases_figure(worst, out / "worst_cases.png").name)
            written += self._write_worst_overlays(worst, out / "worst")
        return written

    def _worst_cases(self) -> list[dict[str, Any]]:
        cases = []
        for w in sorted(self._worst, reverse=True):  # lowest Dice first
            pred, truth = w.masks()
            cases.append(
                {
                    "name": w.name,
                    "dice": w.dice,
                    "image": _background(w.image, w.shape),
                    "pred": pred,
                    "truth": truth,
                }
            )
        return cases

    @staticmethod
    def _write_worst_overlays(cases: list[dict[str, Any]], folder: Path) -> list[str]:
        from pipeline.evaluation.plots import case_overlay
        from pipeline.io.png import save_png

        names = []
        for i, case in enumerate(cases, start=1):
            stem = Path(case["name"]).name.split(".")[0]
            path = save_png(
                case_overlay(case["image"], case["pred"], case["truth"]),
                folder / f"{i:02d}_{stem}.png",
            )
            names.append(path.relative_to(folder.parent).as_posix())
        return names


def _background(image: str, shape: tuple[int, int]) -> np.ndarray:
    """The case's image for its overlay (mid-grey when it cannot be read again)."""
    from pipeline.io.reader import read_cxr

    try:
        arr, _ = read_cxr(image)
        if arr.shape == shape:
            return arr
    except Exception:  # the overlay still shows the masks; the metrics are unaffected
        pass
    return np.full(shape, 0.5, np.float32)


def confusion_matrix(counts: Mapping[str, int]) -> dict[str, Any]:
    """The pooled pixel confusion matrix: counts and fractions of all pixels."""
    total = sum(counts.values()) or 1
    return {
        "rows": "reference (lung, background)",
        "columns": "prediction (lung, background)",
        "counts": [[counts["tp"], counts["fn"]], [counts["fp"], counts["tn"]]],
        "fractions": [
            [counts["tp"] / total, counts["fn"] / total],
            [counts["fp"] / total, counts["tn"] / total],
        ],
    }


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.10g}"
    return value


def _finite(obj: Any) -> Any:
    """JSON has no NaN: undefined statistics become null."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
