"""Grad-CAM of the TB ensemble points at what raises the score."""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from pipeline.tb.evaluate import grad_cam


class Brightness(nn.Module):
    """A DenseNet-shaped network whose logit grows with the mean of the first channel."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(2, 1, 1, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
        layers = [("relu", nn.ReLU(inplace=True)), ("pool", nn.AdaptiveAvgPool2d(1))]
        layers += [("flatten", nn.Flatten()), ("out", nn.Linear(1, 1))]
        self.class_layers = nn.Sequential(OrderedDict(layers))
        with torch.no_grad():
            self.class_layers.out.weight.fill_(2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.class_layers(self.features(x))


def test_the_map_is_hot_where_the_evidence_is():
    x = np.zeros((1, 2, 32, 32), np.float32)
    x[0, 0, 4:12, 20:28] = 3.0  # a bright patch: the only thing that raises the logit
    maps = grad_cam(SimpleNamespace(members=[Brightness(), Brightness()]), x)
    assert maps.shape == (1, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    inside, outside = maps[0, 4:12, 20:28].mean(), maps[0, 16:, :16].mean()
    assert inside > 0.9 and outside < 0.1


def test_tb_screening_segments_the_lung_field_its_models_were_trained_on(monkeypatch):
    import pipeline.inference.segment as segment_module
    import pipeline.tb.model as tb_model
    from pipeline.tb.screen import segment_and_screen

    seen = []
    monkeypatch.setattr(tb_model, "TBModel", lambda bundle, device: "tb")
    monkeypatch.setattr(segment_module, "segment", lambda *a, **kw: seen.append(kw) or {})
    segment_and_screen(["in"], "out", device="cpu")
    segment_and_screen(["in"], "out", device="cpu", lung_field="anatomical")
    assert [kw["lung_field"] for kw in seen] == ["visible", "anatomical"]
    assert seen[0]["tb_model"] == "tb"


def test_tb_scores_see_each_radiograph_the_way_the_segmentation_saw_it():
    """A negative the view check turned back is scored as its negative (lungs dark), and a
    turned film upright with its lungs turned with it."""
    from pipeline.inference.lungs import measure
    from pipeline.inference.predictor import Prediction
    from pipeline.tb.evaluate import score_cases

    image = np.linspace(0, 1, 32 * 24, dtype=np.float32).reshape(32, 24)
    mask = np.zeros(image.shape, bool)
    mask[4:20, 2:10] = True
    m = measure(mask, mask.astype(np.float32))
    views = ["as_read", "negative", "rotated_180"]
    preds = [Prediction(mask, mask.astype(np.float32), m, {"view": v}, image) for v in views]
    seen = []
    seg_model = SimpleNamespace(predict_from_files=lambda paths, batch_size, keep_image: preds)
    tb_model = SimpleNamespace(
        prepare=lambda img, right, left: seen.append((img, right)) or {"crop": img},
        scores=lambda inputs: np.zeros(len(inputs)),
    )
    score_cases([{"image": v} for v in views], tb_model, seg_model)
    np.testing.assert_array_equal(seen[0][0], image)
    np.testing.assert_array_equal(seen[1][0], 1 - image)
    np.testing.assert_array_equal(seen[2][0], np.rot90(image, 2))
    np.testing.assert_array_equal(seen[2][1], np.rot90(m.right, 2))
