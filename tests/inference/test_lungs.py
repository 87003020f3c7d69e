"""Right/left assignment, areas and QA flags on synthetic and real masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.enums import QAFlag
from pipeline.inference.lungs import (
    hemithorax_shares,
    measure,
    measure_sides,
    right_on_image_left,
    split_lungs,
)


def _two_lungs(big_on_image_left: bool = True) -> np.ndarray:
    mask = np.zeros((200, 200), bool)
    mask[40:170, 20:90] = True  # image left, 130 x 70
    mask[40:150, 115:180] = True  # image right, 110 x 65
    return mask if big_on_image_left else mask[:, ::-1]


@pytest.mark.parametrize(
    ("orientation", "expected"),
    [("L\\F", True), ("L/F", True), (None, True), ("", True), ("R\\F", False), ("RH", False)],
)
def test_side_rule(orientation, expected):
    assert right_on_image_left(orientation) is expected


def test_patient_orientation_decides_which_component_is_right():
    mask = _two_lungs()
    right, left, count = split_lungs(mask, "L\\F")
    assert count == 2 and right.sum() == 130 * 70 and not right[:, 100:].any()
    right, left, _ = split_lungs(mask, "R\\F")
    assert right.sum() == 110 * 65 and left.sum() == 130 * 70


def test_areas_in_mm2_and_plausible_result_has_no_flags():
    m = measure(_two_lungs(), np.full((200, 200), 0.97, np.float32), "L\\F", (0.5, 0.25))
    assert (m.right_px, m.left_px) == (9100, 7150)
    assert m.mm2(m.right_px) == pytest.approx(9100 * 0.125)
    assert m.flags == [] and m.confidence == pytest.approx(0.97)
    assert np.array_equal(np.unique(m.labelmap()), [0, 1, 2])


def test_unknown_spacing_gives_nan_mm2():
    m = measure(_two_lungs(), np.ones((200, 200), np.float32))
    assert math.isnan(m.mm2(m.right_px))


def test_flags_raise_on_implausible_results():
    one = np.zeros((200, 200), bool)
    one[40:170, 20:90] = True
    m = measure(one, np.full((200, 200), 0.6, np.float32))
    assert set(m.flags) == {
        QAFlag.NOT_TWO_COMPONENTS,
        QAFlag.IMPLAUSIBLE_RATIO,
        QAFlag.LOW_CONFIDENCE,
        QAFlag.SMALL_FOR_HEMITHORAX,  # the missing lung
    }
    tiny = np.zeros((200, 200), bool)
    tiny[50:60, 20:30] = tiny[50:60, 150:160] = True
    assert QAFlag.IMPLAUSIBLE_AREA in measure(tiny, np.ones((200, 200), np.float32)).flags


def test_real_mask_splits_into_the_anatomical_sides(lung_mask):
    right, left, count = split_lungs(lung_mask, "L\\F")
    assert count == 2
    cols = np.nonzero(right)[1].mean(), np.nonzero(left)[1].mean()
    assert cols[0] < cols[1]  # the patient's right lung is displayed on the image's left


def test_large_overlays_are_drawn_at_most_1024_pixels(pixels, lung_mask):
    from PIL import Image

    from pipeline.inference.outputs import OVERLAY_MAX_SIZE, overlay_image

    big = np.asarray(Image.fromarray(pixels).resize((1600, 2048)), dtype=np.float32) / 255
    mask = np.asarray(Image.fromarray(lung_mask).resize((1600, 2048), Image.Resampling.NEAREST))
    overlay = overlay_image(big, measure(mask, np.ones(mask.shape, np.float32), "L\\F"))
    assert overlay.shape == (OVERLAY_MAX_SIZE, 800, 3)
    small = overlay_image(pixels / 255.0, measure(lung_mask, np.ones(lung_mask.shape, np.float32)))
    assert small.shape == (*pixels.shape, 3)


def test_overlay_of_an_8bit_image_keeps_its_grey_levels(pixels, lung_mask):
    from pipeline.inference.outputs import overlay_image

    m = measure(lung_mask, np.ones(lung_mask.shape, np.float32))
    as_float, as_uint8 = overlay_image(pixels / 255.0, m), overlay_image(pixels, m)
    assert np.array_equal(as_float, as_uint8) and len(np.unique(as_uint8[..., 0])) > 100


def _without_base(lung: np.ndarray, share: float) -> np.ndarray:
    rows = np.flatnonzero(lung.any(axis=1))
    out = lung.copy()
    out[int(rows[0] + (1 - share) * (rows[-1] - rows[0])) :] = False
    return out


def test_a_lung_short_of_the_diaphragm_is_flagged_small_for_its_hemithorax(lung_mask):
    right, left, _ = split_lungs(lung_mask, "L\\F")
    assert QAFlag.SMALL_FOR_HEMITHORAX not in measure_sides(right, left, 2, 1.0).flags
    # the opacified lower third of the left lung left out: the area ratio stays plausible
    flags = measure_sides(right, _without_base(left, 0.35), 2, 1.0).flags
    assert QAFlag.SMALL_FOR_HEMITHORAX in flags
    assert QAFlag.IMPLAUSIBLE_RATIO not in flags


def test_both_lungs_shrunk_to_their_apices_are_small_for_the_thorax_span(lung_mask):
    right, left, _ = split_lungs(lung_mask, "L\\F")
    height_share, fill = hemithorax_shares(right, left)
    assert height_share > 0.8 and 0.35 < fill < 0.6
    short = [_without_base(lung, 0.75) for lung in (right, left)]
    height_share, fill = hemithorax_shares(*short)
    assert height_share > 0.8 and fill < 0.2  # equal heights, but a quarter of the area
    assert QAFlag.SMALL_FOR_HEMITHORAX in measure_sides(*short, 2, 1.0).flags


def test_hemithorax_shares_are_taken_in_millimetres_proportions(lung_mask):
    right, left, _ = split_lungs(lung_mask, "L\\F")
    square = hemithorax_shares(right, left, (0.2, 0.2))
    # the same radiograph stored with every other row: rows twice as far apart
    halved = hemithorax_shares(right[::2], left[::2], (0.4, 0.2))
    assert halved == pytest.approx(square, rel=0.02)
    assert hemithorax_shares(right[::2], left[::2])[1] < 0.6 * square[1]  # spacing ignored
    assert hemithorax_shares(right, np.zeros_like(left)) == (0.0, 0.0)


def test_every_qa_flag_is_explained_with_its_limit():
    from pipeline.enums import QAFlag
    from pipeline.inference.lungs import describe_flag

    messages = {flag: describe_flag(flag) for flag in QAFlag}
    assert "8%-65%" in messages[QAFlag.IMPLAUSIBLE_AREA]
    assert "0.5-2.0" in messages[QAFlag.IMPLAUSIBLE_RATIO]
    assert "0.85" in messages[QAFlag.LOW_CONFIDENCE]
    assert "70%" in messages[QAFlag.SMALL_FOR_HEMITHORAX]
    assert "20%" in messages[QAFlag.SMALL_FOR_HEMITHORAX]
    assert "Photometric Interpretation" in messages[QAFlag.INVERTED_POLARITY]
    assert describe_flag("not_two_components") == messages[QAFlag.NOT_TWO_COMPONENTS]
    with pytest.raises(ValueError, match="not_two_components"):
        describe_flag("blurry")


def test_the_overlay_file_is_indexed_colour_and_shows_the_overlay(tmp_path, pixels, lung_mask):
    from PIL import Image

    from pipeline.inference.outputs import LEFT_COLOUR, RIGHT_COLOUR, overlay_image, write_overlay

    m = measure(lung_mask, np.ones(lung_mask.shape, np.float32))
    with Image.open(write_overlay(pixels, m, tmp_path / "o.png")) as img:
        assert img.mode == "P"
        rgb = np.asarray(img.convert("RGB"))
    np.testing.assert_array_equal(rgb, overlay_image(pixels, m))
    colours = {tuple(c) for c in rgb.reshape(-1, 3)}
    assert {RIGHT_COLOUR, LEFT_COLOUR} <= colours
    inside = rgb[200:300, 100:200].astype(int)  # image part: grey, within a level of the input
    assert (inside[..., 0] == inside[..., 2]).mean() > 0.9
