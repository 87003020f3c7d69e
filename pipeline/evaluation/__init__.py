"""Evaluation: per-case metrics, statistics with confidence intervals, plots and tables."""

from pipeline.evaluation.evaluate import Evaluation
from pipeline.evaluation.metrics import METRICS, RocAccumulator, case_metrics
from pipeline.evaluation.run import evaluate, find_cases
from pipeline.evaluation.stats import describe, summarise

__all__ = [
    "METRICS",
    "Evaluation",
    "RocAccumulator",
    "case_metrics",
    "describe",
    "evaluate",
    "find_cases",
    "summarise",
]
