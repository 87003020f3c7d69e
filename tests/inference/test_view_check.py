"""The view check: negatives and upside-down films of real radiographs segmented the right way,
right images left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.enums import QAFlag, View
from pipeline.inference.predictor import Predictor
from pipeline.inference.view_check import (
    NOTES,
    ViewCheck,
    as_seen,
    as_stored,
    lung_confidence,
    turned_orientation,
)
from pipeline.training.data import load_split
from tests.conftest import dice, load_png

WHOLE = (slice(None), slice(None))


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_lung_confidence_is_the_mean_probability_over_one_half():
    logits = torch.full((2, 1, 4, 4), _logit(0.1))
    logits[0, 0, :2] = _logit(0.9)
    logits[0, 0, 2, 0] = _logit(0.7)
    confidence = lung_confidence(logits)
    assert confidence[0].item() == pytest.approx((8 * 0.9 + 0.7) / 9, abs=1e-6)
    assert confidence[1].item() == 0.0  # no lung at all


def test_views_change_only_the_image_region_and_turns_come_back():
    images = torch.rand(2, 1, 6, 6)
    images[0, :, :, :1] = images[0, :, :, 5:] = 0  # letterboxed: padded left and right
    regions = [(slice(None), slice(1, 5)), WHOLE]
    negative = as_seen(images, regions, View.NEGATIVE)
    assert torch.equal(negative[0, :, :, 1:5], 1 - images[0, :, :, 1:5])
    assert not negative[0, :, :, :1].any() and not negative[0, :, :, 5:].any()
    assert torch.equal(negative[1], 1 - images[1])
    turned = as_seen(images, regions, View.ROTATED_180)
    assert torch.equal(turned[0, 0, :, 1:5], torch.rot90(images[0, 0, :, 1:5], 2))
    assert not turned[0, :, :, :1].any() and not turned[0, :, :, 5:].any()  # padding in place
    assert torch.equal(as_stored(turned, regions, View.ROTATED_180), images)
    assert torch.equal(as_stored(negative, regions, View.NEGATIVE), negative)


@pytest.mark.parametrize(
    ("given", "turned"),
    [
        ("L\\F", "R\\H"),
        ("R\\F", "L\\H"),
        ("A\\FR", "P\\HL"),
        (None, "R\\H"),
        ("", "R\\H"),
        ("X", "R\\H"),
    ],
)
def test_the_turned_orientation_reverses_both_directions(given, turned):
    assert turned_orientation(given) == turned


def _fake_run(confidences: dict[float, float], calls: list) -> object:
    """A 'network' answering an image whose pixels are ``v`` with lungs of confidence ``f(v)``."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch.clone())
        out = torch.full((len(batch), 1, 4, 4), _logit(0.1))
        for i, image in enumerate(batch):
            out[i, 0, :2] = _logit(confidences[round(float(image.max()), 2)])
        return out

    return run


def test_only_unsure_images_get_other_views_and_these_need_the_margin():
    check = ViewCheck(views={"negative": 0.95}, margin=0.01)
    # images of constant 0.2 / 0.4 / 0.6; their negatives 0.8 / 0.6 / 0.4
    images = torch.tensor([0.2, 0.4, 0.6]).view(3, 1, 1, 1).expand(3, 1, 4, 4).clone()
    first = {0.2: 0.98, 0.4: 0.80, 0.6: 0.90}  # sure; unsure; unsure
    second = {0.8: 0.50, 0.6: 0.97, 0.4: 0.905}  # (never asked); surer; within the margin
    calls: list = []
    logits = _fake_run(first, [])(images)
    kept, views = check(images, [WHOLE] * 3, logits, _fake_run(second, calls))
    assert len(calls) == 1 and len(calls[0]) == 2  # the sure image was not run again
    assert views == [View.AS_READ, View.NEGATIVE, View.AS_READ]
    assert torch.equal(kept[0], logits[0]) and torch.equal(kept[2], logits[2])
    assert lung_confidence(kept[1:2]).item() == pytest.approx(0.97, abs=1e-6)


def test_the_surest_view_wins_and_a_turned_one_comes_back_turned():
    check = ViewCheck(views={"negative": 0.95, "rotated_180": 0.95}, margin=0.01)
    images = torch.zeros(1, 1, 4, 4)
    images[0, 0, 0, 0] = 0.6  # asymmetric, so a turn shows
    logits = torch.full((1, 1, 4, 4), _logit(0.8))
    answers = iter([torch.full((1, 1, 4, 4), _logit(0.9)), torch.full((1, 1, 4, 4), _logit(0.1))])

    def run(batch: torch.Tensor) -> torch.Tensor:  # negative: 0.9; turned: one sure corner
        out = next(answers)
        if batch[0, 0, 3, 3] == 0.6:  # the turned image: its lung in the corner it sees
            out[0, 0, 3, 3] = _logit(0.99)
        return out

    kept, views = check(images, [WHOLE], logits, run)
    assert views == [View.ROTATED_180]
    assert kept[0, 0, 0, 0] == pytest.approx(_logit(0.99))  # back on the stored grid


def test_each_view_has_its_own_threshold():
    """An image at 0.955 is tried turned (under 0.96), not as its negative (under 0.95)."""
    check = ViewCheck(views={"negative": 0.95, "rotated_180": 0.96})
    images = torch.full((1, 1, 4, 4), 0.3)
    logits = torch.full((1, 1, 4, 4), _logit(0.955))
    calls: list = []
    _, views = check(images, [WHOLE], logits, _fake_run({0.3: 0.5}, calls))
    assert views == [View.AS_READ] and len(calls) == 1
    assert torch.equal(calls[0], images)  # turned: the same constant image, not 1 - x


def test_off_never_runs_the_network_again():
    calls: list = []
    logits = torch.full((1, 1, 4, 4), -5.0)
    kept, views = ViewCheck("off")(torch.zeros(1, 1, 4, 4), [WHOLE], logits, calls.append)
    assert kept is logits and views == [View.AS_READ] and not calls


def test_settings_are_checked_and_quote_the_allowed_values():
    with pytest.raises(ValueError, match="'guess' is not one of: auto, off"):
        ViewCheck("guess")
    with pytest.raises(
        ValueError, match="'sideways' is not one of: as_read, negative, rotated_180"
    ):
        ViewCheck(views={"sideways": 0.9})
    with pytest.raises(ValueError, match=r"negative: 1.5 is outside \[0, 1\]"):
        ViewCheck(views={"negative": 1.5})
    with pytest.raises(ValueError, match=r"margin: -0.1 is outside \[0, 1\]"):
        ViewCheck(margin=-0.1)


@pytest.fixture(scope="module")
def held_out(data_dir) -> list[np.ndarray]:
    cases = load_split(data_dir, "test", 3)
    return [load_png(Path(c["image"])).astype(np.float32) / 255 for c in cases]


def test_negatives_of_real_radiographs_are_segmented_the_right_way_round(shipped_model, held_out):
    """Without the check a negative lost the lungs (mean Dice ~0.1 to the image's mask)."""
    for image in held_out:
        right = shipped_model.predict_single_npy_array(image)
        assert right.meta.get("view") is None and not right.measures.flags
        for negative in (1 - image, 1 - image[:, 40:-40]):  # square, and letterboxed
            pred = shipped_model.predict_single_npy_array(negative)
            assert pred.meta["view"] == View.NEGATIVE
            assert pred.meta["assumed"] == NOTES[View.NEGATIVE]
            assert QAFlag.INVERTED_POLARITY in pred.measures.flags
            reference = right.mask if negative.shape == image.shape else right.mask[:, 40:-40]
            assert dice(pred.mask, reference) > 0.97


def test_upside_down_radiographs_are_segmented_upright_with_their_sides(shipped_model, held_out):
    """Upside down, the network missed part of the lungs (mean Dice ~0.73); the sides follow
    the turned image: the patient's right lung is then on the image's right."""
    for image in held_out:
        upright = shipped_model.predict_single_npy_array(image[:, 30:-30])
        pred = shipped_model.predict_single_npy_array(np.rot90(image[:, 30:-30], 2).copy())
        assert pred.meta["view"] == View.ROTATED_180
        assert pred.meta["patient_orientation"] == "R\\H"
        assert pred.measures.flags == [QAFlag.UPSIDE_DOWN]
        for side in ("right", "left"):
            turned_back = np.rot90(getattr(pred.measures, side), 2)
            assert dice(turned_back, getattr(upright.measures, side)) > 0.97


def test_the_check_can_be_turned_off(held_out):
    off = Predictor(device="cpu", overrides={"view_check": "off"})
    right = off.predict_single_npy_array(held_out[0])
    pred = off.predict_single_npy_array(1 - held_out[0])
    assert pred.meta.get("view") is None and dice(pred.mask, right.mask) < 0.5


def test_the_canvas_region_comes_from_the_metadata_in_and_out_of_process(shipped_model, held_out):
    from pipeline.inference.predictor import _canvas_region
    from pipeline.inference.workers import to_wire

    item = shipped_model.preprocess(shipped_model.load(held_out[0][:, 100:-100]))
    rows, cols = _canvas_region(item)
    image = item["image"][0]
    assert image[:, : cols.start].abs().sum() == 0 and image[:, cols.stop :].abs().sum() == 0
    assert (rows, cols) == _canvas_region(to_wire({"item": item})["item"])
    assert cols.stop - cols.start < image.shape[1] and rows == slice(0, image.shape[0])


def test_batch_regions_read_a_collated_letterbox(shipped_model, held_out):
    """As MONAI's DataLoader collates the letterbox of a square and a narrow image."""
    from monai.data import list_data_collate

    from pipeline.inference.predictor import _canvas_region
    from pipeline.inference.view_check import batch_regions

    items = [
        shipped_model.preprocess(shipped_model.load(a))
        for a in (held_out[0], held_out[1][:, 90:-90])
    ]
    batch = list_data_collate([{"image": it["image"]} for it in items])["image"]
    assert batch_regions(batch.meta, 2) == [_canvas_region(it) for it in items]
    assert batch_regions({}, 2) == [WHOLE, WHOLE]
