"""Evaluation: per-case metrics grouped by manifest columns (more metrics and plots to come)."""

from pipeline.evaluation.groups import group_summary, read_metric_details, write_group_summary

__all__ = ["group_summary", "read_metric_details", "write_group_summary"]
