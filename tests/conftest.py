"""Shared fixtures: the real Montgomery/Shenzhen images, and DICOM files built from them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.io.datasets import default_data_dir

#: Two cases from each source; MCUCXR_0001_0 has the black band Montgomery images carry.
CASES = ("MCUCXR_0001_0.png", "MCUCXR_0104_1.png", "CHNCXR_0001_0.png", "CHNCXR_0327_1.png")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data set; tests that need it fail in CI and skip elsewhere when absent."""
    path = default_data_dir()
    if not (path / "images").is_dir():
        message = f"shared data not found at {path}; set LUNGSEG_DATA"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def load_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


@pytest.fixture(scope="session")
def case_pixels(data_dir: Path) -> dict[str, np.ndarray]:
    """uint8 pixels of the sample cases, by file name."""
    return {name: load_png(data_dir / "images" / name) for name in CASES}


@pytest.fixture(scope="session")
def case_masks(data_dir: Path) -> dict[str, np.ndarray]:
    """Boolean lung masks of the sample cases (lung = value > 127, as the data README says)."""
    return {name: load_png(data_dir / "masks" / name) > 127 for name in CASES}


@pytest.fixture(scope="session")
def pixels(case_pixels: dict[str, np.ndarray]) -> np.ndarray:
    """One real radiograph, cropped to 512 x 400 so a transpose cannot go unnoticed."""
    return np.ascontiguousarray(case_pixels["MCUCXR_0104_1.png"][:, 50:450])


@pytest.fixture(scope="session")
def lung_mask(case_masks: dict[str, np.ndarray]) -> np.ndarray:
    """The lung mask matching :func:`pixels`."""
    return np.ascontiguousarray(case_masks["MCUCXR_0104_1.png"][:, 50:450])
