"""Sigmoid and threshold in numpy: MONAI's numbers, numpy arrays out."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Activations, AsDiscrete

from pipeline.transforms import Sigmoidd, Thresholdd, sigmoid, threshold


def test_sigmoid_and_threshold_give_monais_values_as_numpy():
    logits = MetaTensor(torch.randn(1, 33, 17) * 4, meta={"x": 1})
    logits[0, 0, 0] = 0.0  # probability exactly 0.5: kept, as MONAI's >=
    prob = sigmoid(logits)
    expected = Activations(sigmoid=True)(logits)
    assert isinstance(prob, np.ndarray) and prob.dtype == np.float32
    np.testing.assert_array_equal(prob, expected.numpy())
    mask = threshold(prob, 0.5)
    assert mask.dtype == np.uint8 and mask[0, 0, 0] == 1
    np.testing.assert_array_equal(mask, AsDiscrete(threshold=0.5)(expected).numpy())


def test_dictionary_wrappers_replace_the_key():
    d = Sigmoidd("pred")({"pred": torch.tensor([[[-3.0, 0.0, 3.0]]])})
    d = Thresholdd("pred", threshold=0.6)(d)
    np.testing.assert_array_equal(d["pred"], [[[0, 0, 1]]])
