"""Markdown from an evaluation's ``summary.json``: the summary page and the results table.

The results table in the README and in the bundle's model card is generated here from a
committed ``summary.json`` and placed between the markers
``<!-- lungseg-results:begin -->`` and ``<!-- lungseg-results:end -->`` by
:func:`update_marked_block` (``lungseg results-table``); a test fails when a document's table
differs from what its summary gives, so no figure is typed by hand.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.io.atomic import atomic_path

#: (metric, column title, format) of the results table.
TABLE_COLUMNS = (
    ("dice", "Dice", ".4f"),
    ("iou", "IoU", ".4f"),
    ("precision", "precision", ".4f"),
    ("recall", "recall", ".4f"),
    ("specificity", "specificity", ".4f"),
    ("auc", "AUC", ".4f"),
    ("hd95_px", "HD95 (px)", ".2f"),
    ("assd_px", "ASSD (px)", ".2f"),
    ("area_error_pct", "area error (%)", "+.2f"),
)
BEGIN, END = "<!-- lungseg-results:begin -->", "<!-- lungseg-results:end -->"


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def _rows(summary: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    stats = summary["statistics"]
    rows = [("all", stats["overall"])]
    for column, groups in stats["groups"].items():
        rows += [(f"{column} = {value}", block) for value, block in groups.items()]
    return rows


def results_table(
    summary: Mapping[str, Any], columns: Sequence[tuple[str, str, str]] = TABLE_COLUMNS
) -> str:
    """Mean [95% CI] of each metric, overall and per group, as a Markdown table."""
    head = "| cases | n | " + " | ".join(title for _, title, _ in columns) + " |"
    lines = [head, "|---|---|" + "---|" * len(columns)]
    for label, block in _rows(summary):
        n = block[columns[0][0]]["n"]
        cells = []
        for metric, _, spec in columns:
            s = block[metric]
            low, high = _fmt(s["ci95_low"], spec), _fmt(s["ci95_high"], spec)
            cells.append(f"{_fmt(s['mean'], spec)} [{low}, {high}]")
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def spread_table(summary: Mapping[str, Any], metric: str = "dice") -> str:
    """Mean ± std, median, 5th percentile and minimum of one metric per row."""
    lines = [
        f"| cases | n | {metric} mean ± std | median | 5th percentile | min |",
        "|---|---|---|---|---|---|",
    ]
    for label, block in _rows(summary):
        s = block[metric]
        lines.append(
            f"| {label} | {s['n']} | {_fmt(s['mean'], '.4f')} ± {_fmt(s['std'], '.4f')} | "
            f"{_fmt(s['median'], '.4f')} | {_fmt(s['p5'], '.4f')} | {_fmt(s['min'], '.4f')} |"
        )
    return "\n".join(lines) + "\n"


def confusion_table(summary: Mapping[str, Any]) -> str:
    """The pooled pixel confusion matrix (counts and % of all pixels)."""
    (tp, fn), (fp, tn) = summary["confusion_matrix"]["counts"]
    total = (tp + fn + fp + tn) or 1

    def cell(v: int) -> str:
        return f"{v:,} ({100 * v / total:.2f}%)"

    return (
        "| reference \\ prediction | lung | background |\n|---|---|---|\n"
        f"| lung | {cell(tp)} | {cell(fn)} |\n| background | {cell(fp)} | {cell(tn)} |\n"
    )


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """``summary.md``: what was evaluated, the tables, the failures and the figures."""
    cases = summary["cases"]
    parts = [
        f"# Evaluation: {summary.get('title', 'lung segmentation')}\n",
        f"{cases['evaluated']} cases evaluated, {cases['failed']} failed.",
    ]
    source = summary.get("model") or {}
    if source:
        parts.append(
            f"Model: {source.get('name', '?')} {source.get('version', '')} "
            f"(checkpoint SHA-256 {str(source.get('checkpoint_sha256', ''))[:12]}…)."
        )
    if summary.get("predictions"):
        parts.append(f"Predictions read from `{summary['predictions']}`.")
    parts += [
        "\n## Mean and 95% bootstrap confidence interval\n",
        results_table(summary),
        "\n## Dice spread\n",
        spread_table(summary),
        "\n## Pooled pixel confusion matrix\n",
        confusion_table(summary),
    ]
    aucs = {k: v for k, v in summary.get("pooled_auc", {}).items() if v is not None}
    if aucs:
        parts.append("Pooled pixel AUC: " + ", ".join(f"{k} {v:.4f}" for k, v in aucs.items()))
    if summary.get("failed"):
        parts.append("\n## Failed cases\n")
        parts += [f"- `{f['case']}`: {f['reason']}" for f in summary["failed"]]
    if summary.get("plots"):
        parts.append("\n## Figures\n")
        parts += [f"![{p}]({p})" for p in summary["plots"] if "/" not in p]
    return "\n".join(parts) + "\n"


def update_marked_block(path: str | os.PathLike, text: str) -> bool:
    """Replace what lies between :data:`BEGIN` and :data:`END` in ``path``; True if changed.

    Raises:
        ValueError: the file lacks the markers (the message shows them).
    """
    path = Path(path)
    doc = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + r"\n.*?" + re.escape(END), re.DOTALL)
    if not pattern.search(doc):
        raise ValueError(f"{path}: no '{BEGIN}' … '{END}' block to fill")
    new = pattern.sub(lambda _: f"{BEGIN}\n{text}{END}", doc, count=1)
    if new == doc:
        return False
    with atomic_path(path) as tmp:
        Path(tmp).write_text(new)
    return True


def marked_block(path: str | os.PathLike) -> str | None:
    """The text between the markers in ``path`` (None without markers)."""
    doc = Path(path).read_text()
    m = re.search(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), doc, re.DOTALL)
    return m.group(1) if m else None
