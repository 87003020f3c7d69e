"""Ignite handler that feeds a MONAI evaluator's outputs to :class:`Evaluation`.

The bundle's ``configs/evaluate.json`` attaches :class:`CaseMetrics` to its evaluator, so the
bundle and ``lungseg evaluate`` compute, summarise and plot with the same code.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluation.evaluate import Evaluation
from pipeline.transforms.geometry import resize_to


class CaseMetrics:
    """Per-case metrics of every evaluated item; all outputs written when the run completes.

    Args:
        output_dir: where :meth:`Evaluation.write` writes.
        items: the datalist (``image`` path and group columns per case).
        group_columns: datalist entries to group the statistics by.
        pred_key: the post-processed binary mask (original grid).
        truth_key: the reference mask (original grid).
        prob_key: the lung probability (the bundle's post-processing copies it out as
            ``prob``, on the network's grid: it is upsampled bilinearly to the mask's); for
            the AUC; absent: no AUC and no ROC curve.
        about: extra entries for ``summary.json`` (model identity, title...).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        items: Sequence[Mapping[str, Any]] = (),
        group_columns: Sequence[str] = ("source", "tuberculosis"),
        pred_key: str = "pred",
        truth_key: str = "truth_mask",
        prob_key: str = "prob",
        about: Mapping[str, Any] | None = None,
    ):
        self.output_dir, self.about = Path(output_dir), dict(about or {})
        self.keys = (pred_key, truth_key, prob_key)
        self.items = {os.path.abspath(str(i["image"])): dict(i) for i in items}
        self.evaluation = Evaluation(group_columns)
        self.summary: dict[str, Any] | None = None

    def attach(self, engine: Any) -> None:
        """Score each iteration's items; write when the evaluation completes."""
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def iteration_completed(self, engine: Any) -> None:
        """Add every item of the batch to the evaluation."""
        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            self.add(item)

    def add(self, item: Mapping[str, Any]) -> None:
        """Score one decollated item."""
        pred_key, truth_key, prob_key = self.keys
        meta = item["image"].meta
        path = str(meta.get("filename_or_obj", ""))
        case = self.items.get(os.path.abspath(path), {})
        pred = np.asarray(item[pred_key])[0] > 0.5
        prob = np.asarray(item[prob_key])[0].astype(np.float32) if prob_key in item else None
        if prob is not None and prob.shape != pred.shape:  # on the network's grid: upsample
            prob = resize_to(prob, pred.shape)
        spacing = tuple(float(s) for s in meta.get("pixel_spacing", (math.nan, math.nan)))
        self.evaluation.add(
            case.get("name", Path(path).name),
            pred,
            np.asarray(item[truth_key])[0] > 0.5,
            prob,
            spacing,
            case,
            path,
        )

    def completed(self, engine: Any = None) -> None:
        """Write per_case.csv, summary.json/.md and the figures.

        In a distributed run (``multi_gpu_evaluate.json``) every rank evaluated its part of the
        cases; rank 0 gathers them all and writes, the others write nothing.
        """
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, self.evaluation)
            if dist.get_rank() != 0:
                return
            merged = Evaluation(self.evaluation.group_columns, self.evaluation.worst)
            for part in parts:
                merged.merge(part)
            self.evaluation = merged
        self.summary = self.evaluation.write(self.output_dir, self.about)
