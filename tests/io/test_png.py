"""The PNG encoder: every colour type round-trips through Pillow, bad shapes are named."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.io.png import encode_png, save_png


@pytest.mark.parametrize("shape", [(7, 5), (9, 4, 3), (3, 6, 4), (1, 1)], ids=str)
def test_uint8_arrays_round_trip(shape):
    arr = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    for level in (1, 6):
        decoded = np.asarray(Image.open(io.BytesIO(encode_png(arr, level))))
        np.testing.assert_array_equal(decoded, arr)


def test_a_real_radiograph_and_its_mask_round_trip(tmp_path, pixels, lung_mask):
    for arr in (pixels, np.where(lung_mask, 255, 0).astype(np.uint8)):
        with Image.open(save_png(arr, tmp_path / "x.png")) as img:
            np.testing.assert_array_equal(np.asarray(img), arr)


def test_unit_range_floats_are_scaled():
    arr = np.array([[0.0, 0.5, 1.0, 2.0]], dtype=np.float32)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(arr))))
    np.testing.assert_array_equal(decoded, [[0, 128, 255, 255]])


def test_other_shapes_are_refused_with_the_shape():
    with pytest.raises(ValueError, match=r"\(4, 4, 2\)"):
        encode_png(np.zeros((4, 4, 2), np.uint8))
