"""The PNG encoder: every colour type round-trips through Pillow, bad shapes are named."""

from __future__ import annotations

import io
import sys

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


def test_indexed_colour_decodes_to_the_palette_colours(pixels):
    palette = np.array([(0, 0, 0), (255, 0, 0), (0, 255, 0), (10, 20, 30)], np.uint8)
    indices = (pixels // 64).astype(np.uint8)
    with Image.open(io.BytesIO(encode_png(indices, 1, palette))) as img:
        assert img.mode == "P"
        np.testing.assert_array_equal(np.asarray(img.convert("RGB")), palette[indices])


def test_a_palette_too_short_for_its_indices_is_refused():
    with pytest.raises(ValueError, match=r"palette of 2 colours .* indexed up to 5"):
        encode_png(np.full((3, 3), 5, np.uint8), palette=np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(n, 3\) colours"):
        encode_png(np.zeros((3, 3, 3), np.uint8), palette=np.zeros((4, 3), np.uint8))


def test_fast_levels_round_trip_with_and_without_isal(monkeypatch, pixels):
    pytest.importorskip("isal")
    with_isal = encode_png(pixels, 1)
    monkeypatch.setitem(sys.modules, "isal", None)  # import isal now raises ImportError
    without = encode_png(pixels, 1)
    assert with_isal != without  # two encoders, one image
    for data in (with_isal, without):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)


def test_unfiltered_rows_round_trip(lung_mask, pixels):
    from pipeline.io.png import RowFilter

    mask = np.where(lung_mask, 255, 0).astype(np.uint8)
    for arr in (mask, pixels):
        for level in (1, 6):
            data = encode_png(arr, level, row_filter=RowFilter.NONE)
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), arr)
