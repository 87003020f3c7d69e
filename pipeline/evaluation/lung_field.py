"""Scoring against references drawn to either lung-field convention.

An anatomical-field model (the bundle's default since 0.5.0) outlines the left lung behind
the heart; most shared references (the visible convention) leave that part out without
saying it is not lung. Scored *where the reference decides*, a visible-convention
reference's :func:`~pipeline.transforms.lung_field.retrocardiac_region` is taken out of both
masks; an anatomical-convention reference decides everywhere. Which references follow which
convention is the lung-field file (``data/splits/montgomery-shenzhen-lung-field.json``).
"""

from __future__ import annotations

import os

import numpy as np

from pipeline.enums import LungField
from pipeline.evaluation.metrics import overlap_metrics
from pipeline.transforms.lung_field import retrocardiac_region

#: The shared data's lung-field file, relative to the project.
DEFAULT_FILE = "data/splits/montgomery-shenzhen-lung-field.json"


def anatomical_references(path: str | os.PathLike | None = None) -> frozenset[str]:
    """Names of the references drawn to the anatomical convention (default: the shared data's).

    Raises:
        ValueError: the file is not a lung-field file.
    """
    from pipeline.io.datasets import project_file
    from pipeline.training.data import read_lung_field_cases

    return frozenset(read_lung_field_cases(path or project_file(DEFAULT_FILE)))


def references_for(
    lung_field: LungField, path: str | os.PathLike | None = None
) -> frozenset[str] | None:
    """The anatomical references to score an anatomical-field model against, else None.

    None means: score every pixel plainly (a visible-field model).
    """
    return anatomical_references(path) if lung_field is LungField.ANATOMICAL else None


def undecided(truth: np.ndarray, anatomical_reference: bool) -> np.ndarray:
    """Where ``truth`` does not say lung or not (empty for an anatomical reference)."""
    if anatomical_reference:
        return np.zeros(truth.shape, dtype=bool)
    return retrocardiac_region(truth)


def decided_overlap(
    pred: np.ndarray, truth: np.ndarray, anatomical_reference: bool
) -> dict[str, float]:
    """:func:`~pipeline.evaluation.metrics.overlap_metrics` where the reference decides."""
    keep = ~undecided(truth, anatomical_reference)
    return overlap_metrics(pred & keep, truth & keep)
