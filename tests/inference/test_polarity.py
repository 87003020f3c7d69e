"""The polarity check: negatives of real radiographs turned back, right images left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.enums import Polarity, QAFlag
from pipeline.inference.polarity import (
    INVERTED_NOTE,
    PolarityCheck,
    lung_confidence,
    negatives,
)
from pipeline.inference.predictor import Predictor
from pipeline.training.data import load_split
from tests.conftest import dice, load_png


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_lung_confidence_is_the_mean_probability_over_one_half():
    logits = torch.full((2, 1, 4, 4), _logit(0.1))
    logits[0, 0, :2] = _logit(0.9)
    logits[0, 0, 2, 0] = _logit(0.7)
    confidence = lung_confidence(logits)
    assert confidence[0].item() == pytest.approx((8 * 0.9 + 0.7) / 9, abs=1e-6)
    assert confidence[1].item() == 0.0  # no lung at all


def test_negatives_invert_inside_the_image_and_keep_the_padding_black():
    images = torch.rand(2, 1, 6, 6)
    images[0, :, :, :1] = images[0, :, :, 5:] = 0  # letterboxed: padded left and right
    out = negatives(images, [(slice(None), slice(1, 5)), (slice(None), slice(None))])
    assert torch.equal(out[0, :, :, 1:5], 1 - images[0, :, :, 1:5])
    assert not out[0, :, :, :1].any() and not out[0, :, :, 5:].any()
    assert torch.equal(out[1], 1 - images[1])


def _fake_run(confidences: dict[float, float], calls: list) -> object:
    """A 'network' answering an image whose pixels are ``v`` with lungs of confidence ``f(v)``."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch.clone())
        out = torch.full((len(batch), 1, 4, 4), _logit(0.1))
        for i, image in enumerate(batch):
            out[i, 0, :2] = _logit(confidences[round(float(image.max()), 2)])
        return out

    return run


def test_only_unsure_images_get_a_second_pass_and_the_negative_needs_the_margin():
    check = PolarityCheck(below=0.95, margin=0.01)
    # images of constant 0.2 / 0.4 / 0.6; their negatives 0.8 / 0.6 / 0.4
    images = torch.tensor([0.2, 0.4, 0.6]).view(3, 1, 1, 1).expand(3, 1, 4, 4).clone()
    first = {0.2: 0.98, 0.4: 0.80, 0.6: 0.90}  # sure; unsure; unsure
    second = {0.8: 0.50, 0.6: 0.97, 0.4: 0.905}  # (never asked); surer; within the margin
    calls: list = []
    logits = _fake_run(first, [])(images)
    kept, polarity = check(
        images, [(slice(None), slice(None))] * 3, logits, _fake_run(second, calls)
    )
    assert len(calls) == 1 and len(calls[0]) == 2  # the sure image was not run again
    assert polarity == [Polarity.AS_READ, Polarity.INVERTED, Polarity.AS_READ]
    assert torch.equal(kept[0], logits[0]) and torch.equal(kept[2], logits[2])
    assert lung_confidence(kept[1:2]).item() == pytest.approx(0.97, abs=1e-6)


def test_as_read_never_runs_the_network_again():
    calls: list = []
    images = torch.zeros(1, 1, 4, 4)
    logits = torch.full((1, 1, 4, 4), -5.0)
    kept, polarity = PolarityCheck("as_read")(images, [(slice(None),) * 2], logits, calls.append)
    assert kept is logits and polarity == [Polarity.AS_READ] and not calls


def test_settings_are_checked_and_quote_the_allowed_values():
    with pytest.raises(ValueError, match="'guess' is not one of: auto, as_read"):
        PolarityCheck("guess")
    with pytest.raises(ValueError, match="below must be within"):
        PolarityCheck(below=1.5)
    with pytest.raises(ValueError, match="margin must be within"):
        PolarityCheck(margin=-0.1)


@pytest.fixture(scope="module")
def held_out(data_dir) -> list[np.ndarray]:
    return [
        load_png(Path(c["image"])).astype(np.float32) / 255 for c in load_split(data_dir, "test", 3)
    ]


def test_negatives_of_real_radiographs_are_segmented_the_right_way_round(shipped_model, held_out):
    """Without the check a negative lost the lungs (mean Dice ~0.1 to the image's mask)."""
    for image in held_out:
        right = shipped_model.predict_single_npy_array(image)
        assert (
            right.meta.get("polarity") is None
            and QAFlag.INVERTED_POLARITY not in right.measures.flags
        )
        for negative in (1 - image, 1 - image[:, 40:-40]):  # square, and letterboxed
            pred = shipped_model.predict_single_npy_array(negative)
            assert pred.meta["polarity"] == Polarity.INVERTED
            assert pred.meta["assumed"] == INVERTED_NOTE
            assert QAFlag.INVERTED_POLARITY in pred.measures.flags
            reference = right.mask if negative.shape == image.shape else right.mask[:, 40:-40]
            assert dice(pred.mask, reference) > 0.97


def test_the_check_can_be_turned_off(held_out):
    off = Predictor(device="cpu", overrides={"polarity": "as_read"})
    right = off.predict_single_npy_array(held_out[0])
    pred = off.predict_single_npy_array(1 - held_out[0])
    assert pred.meta.get("polarity") is None and dice(pred.mask, right.mask) < 0.5


def test_the_canvas_region_comes_from_the_metadata_in_and_out_of_process(shipped_model, held_out):
    from pipeline.inference.predictor import _canvas_region
    from pipeline.inference.workers import to_wire

    item = shipped_model.preprocess(shipped_model.load(held_out[0][:, 100:-100]))
    rows, cols = _canvas_region(item)
    image = item["image"][0]
    assert image[:, : cols.start].abs().sum() == 0 and image[:, cols.stop :].abs().sum() == 0
    assert (rows, cols) == _canvas_region(to_wire({"item": item})["item"])
    assert cols.stop - cols.start < image.shape[1] and rows == slice(0, image.shape[0])
