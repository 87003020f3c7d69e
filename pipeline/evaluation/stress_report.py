"""The robustness protocol's report: per-case CSV, the table by stress and severity, figure.

Targets (issue 17) are checked per stress at its strongest severity: mean Dice drop from the
same cases clean ≤ :data:`MAX_DROP` and 10th-percentile Dice ≥ :data:`MIN_P10`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.atomic import write_text_atomic

MAX_DROP = 0.02
MIN_P10 = 0.93
COLUMNS = (
    "name",
    "source",
    "tuberculosis",
    "stress",
    "severity",
    "dice",
    "recall",
    "precision",
    "dice_reference",
    "gas_claimed",
    "gas_claimed_clean",
    "flags",
)
#: A case "claims" the simulated gas when its mask takes in more than this share of it
#: beyond what the mask of the clean image takes in of the same pixels.
CLAIM_SHARE = 0.1


def _stats(dice: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    return {
        "n": int(dice.size),
        "mean_dice": round(float(dice.mean()), 4),
        "drop": round(float((clean - dice).mean()), 4),
        "p10_dice": round(float(np.quantile(dice, 0.1)), 4),
        "min_dice": round(float(dice.min()), 4),
    }


def table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One line per (stress, severity) with Dice statistics, paired with the clean Dice."""
    clean = {r["name"]: r["dice"] for r in rows if r["stress"] == "clean"}
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["stress"], int(r["severity"])), []).append(r)
    out = []
    for (stress, severity), members in groups.items():
        dice = np.array([m["dice"] for m in members])
        base = np.array([clean[m["name"]] for m in members])
        line = {"stress": stress, "severity": severity, **_stats(dice, base)}
        line["recall"] = round(float(np.mean([m["recall"] for m in members])), 4)
        line.update(_claimed(members))
        out.append(line)
    tb = [r for r in rows if r["stress"] == "clean" and str(r["tuberculosis"]) == "1"]
    if tb:
        dice = np.array([r["dice"] for r in tb])
        line = {"stress": "clean, tuberculosis", "severity": 0, **_stats(dice, dice)}
        line["recall"] = round(float(np.mean([r["recall"] for r in tb])), 4)
        out.append(line)
    return out


def _claimed(members: Sequence[Mapping[str, Any]]) -> dict[str, float | int]:
    """Mean share of the drawn gas inside the masks, and inside the clean image's masks.

    ``gas_claimed_cases`` counts the cases whose mask takes in more than
    :data:`CLAIM_SHARE` of the gas beyond the clean image's mask.
    """
    gas = [m for m in members if m.get("gas_claimed", "") != ""]
    if not gas:
        return {}
    claimed = np.array([float(m["gas_claimed"]) for m in gas])
    clean = np.array([float(m["gas_claimed_clean"]) for m in gas])
    return {
        "gas_claimed": round(float(claimed.mean()), 4),
        "gas_claimed_clean": round(float(clean.mean()), 4),
        "gas_claimed_cases": int((claimed - clean > CLAIM_SHARE).sum()),
    }


def targets(lines: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per stress at severity 3: the drop and p10 and whether each meets its target."""
    out = {}
    for line in lines:
        if line["severity"] == 3:
            out[line["stress"]] = {
                "drop": line["drop"],
                "p10_dice": line["p10_dice"],
                "drop_ok": line["drop"] <= MAX_DROP,
                "p10_ok": line["p10_dice"] >= MIN_P10,
            }
    return out


def markdown(lines: Sequence[Mapping[str, Any]]) -> str:
    """The table as Markdown (the gas columns: mean share claimed, on the clean image, cases)."""
    head = (
        "| stress | severity | n | mean Dice | drop from clean | p10 Dice | min Dice | recall "
        "| gas claimed | same pixels, clean image | cases adding > 10 % |"
    )
    out = [head, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for ln in lines:
        claimed = "- | - | -"
        if "gas_claimed" in ln:
            claimed = (
                f"{ln['gas_claimed']:.3f} | {ln['gas_claimed_clean']:.3f} | "
                f"{ln['gas_claimed_cases']}"
            )
        out.append(
            f"| {ln['stress']} | {ln['severity']} | {ln['n']} | {ln['mean_dice']:.4f} | "
            f"{ln['drop']:+.4f} | {ln['p10_dice']:.4f} | {ln['min_dice']:.4f} | "
            f"{ln['recall']:.4f} | {claimed} |"
        )
    return "\n".join(out) + "\n"


def write_report(
    out: Path, rows: Sequence[Mapping[str, Any]], worst: Sequence[Mapping[str, Any]], about: dict
) -> dict[str, Any]:
    """Write ``per_case.csv``, ``summary.json``, ``summary.md`` and ``worst_cases.png``."""
    from pipeline.evaluation.plots import worst_cases_figure

    out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (round(r[k], 5) if isinstance(r[k], float) else r[k]) for k in COLUMNS})
    write_text_atomic(out / "per_case.csv", text.getvalue())
    lines = table(rows)
    summary = {**about, "table": lines, "targets": targets(lines)}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    title = f"# Stress protocol: {about.get('model', {}).get('name', '')}\n\n"
    if about.get("scored", "all pixels") != "all pixels":
        title += (
            "Scored where the reference decides: the retrocardiac region of visible-convention "
            "references left out (`pipeline.evaluation.lung_field`); `dice_reference` in "
            "`per_case.csv` is the plain Dice.\n\n"
        )
    write_text_atomic(out / "summary.md", title + markdown(lines))
    if worst:
        worst_cases_figure(list(worst), out / "worst_cases.png")
    return summary
