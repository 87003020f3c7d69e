"""Markdown from an evaluation's ``summary.json``: the summary page and the results table.

The results tables in the README and in the bundle's model card are generated here from
committed JSON (an evaluation's ``summary.json``, a protocol's ``protocol.json``) and placed
between markers such as ``<!-- lungseg-results:begin -->`` and ``<!-- lungseg-results:end -->``
by :func:`update_marked_block` (``lungseg results-table``); a test fails when a document's
table differs from what its JSON gives, so no figure is typed by hand.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.io.atomic import write_text_atomic

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
#: Marker names: an evaluation's table and a protocol's.
RESULTS, PROTOCOL = "lungseg-results", "lungseg-protocol"


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
    """Mean [95% CI] of each metric, overall and per group, as a Markdown table.

    Dice where the reference decides follows Dice when the summary has it.
    """
    if "dice_decided" in summary["statistics"]["overall"] and columns is TABLE_COLUMNS:
        columns = (columns[0], ("dice_decided", "Dice, where the reference decides", ".4f"),
                   *columns[1:])  # fmt: skip
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


def table_for(doc: Mapping[str, Any]) -> tuple[str, str]:
    """``(marker name, table)`` for an evaluation summary or a protocol result.

    Raises:
        ValueError: the document is neither.
    """
    if "statistics" in doc:
        return RESULTS, results_table(doc)
    if "protocol" in doc and "runs" in doc:
        return f"{PROTOCOL}-{doc['protocol']}", protocol_table(doc)
    raise ValueError("expected an evaluation summary.json or a protocol.json")


def protocol_table(result: Mapping[str, Any]) -> str:
    """One row per fold/direction: cases, epochs, mean [95% CI] per metric."""
    cols = ("dice", "iou", "recall", "precision", "hd95_px")
    lines = [
        "| run | cases | epochs | " + " | ".join(cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for name, r in result["runs"].items():
        cells = [f"{r[c]:.4f} [{r[c + '_ci95'][0]:.4f}, {r[c + '_ci95'][1]:.4f}]" for c in cols]
        lines.append(f"| {name} | {r['cases']} | {r['epochs']} | " + " | ".join(cells) + " |")
    if "across_folds" in result:
        a = result["across_folds"]
        lines.append(
            "| mean ± std over folds | | | "
            + " | ".join(f"{a[c]['mean']:.4f} ± {a[c]['std']:.4f}" for c in cols)
            + " |"
        )
    return "\n".join(lines) + "\n"


def protocol_markdown(result: Mapping[str, Any]) -> str:
    """``protocol.md``: the heading and :func:`protocol_table`."""
    return f"# Protocol: {result['protocol']}\n\n" + protocol_table(result)


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def update_marked_block(path: str | os.PathLike, text: str, name: str = RESULTS) -> bool:
    """Replace what lies between the ``name`` markers in ``path``; True if it changed.

    Raises:
        ValueError: the file lacks the markers (the message shows them).
    """
    path = Path(path)
    doc = path.read_text()
    begin, end = _markers(name)
    pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.DOTALL)
    if not pattern.search(doc):
        raise ValueError(f"{path}: no '{begin}' … '{end}' block to fill")
    new = pattern.sub(lambda _: f"{begin}\n{text}{end}", doc, count=1)
    if new == doc:
        return False
    write_text_atomic(path, new)
    return True


def marked_block(path: str | os.PathLike, name: str = RESULTS) -> str | None:
    """The text between the ``name`` markers in ``path`` (None without markers)."""
    begin, end = _markers(name)
    m = re.search(re.escape(begin) + r"\n(.*?)" + re.escape(end), Path(path).read_text(), re.DOTALL)
    return m.group(1) if m else None
