"""Fixtures of the DICOM node tests: the shipped model, a study of held-out radiographs."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def model(shipped_model):
    return shipped_model


@pytest.fixture()
def study(radiograph_folder) -> dict[str, Path]:
    root = radiograph_folder["root"]
    return {
        "mono1": root / "dicom/a/mono1.dcm",
        "j2k": root / "dicom/j2k.dcm",
        "rle": root / "dicom/rle.dcm",
        "lateral": root / "junk/lateral.dcm",
        "sr": root / "junk/sr.dcm",
    }
