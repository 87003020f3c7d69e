"""Factories the training config calls, and the overlay drawn for MLflow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.training import build_optimizer, build_scheduler, select_device
from pipeline.training.handlers import overlay


def test_device_auto_follows_cuda_and_bad_names_are_refused():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    assert select_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="auto, cpu, cuda, cuda:N"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")


def test_optimizer_auto_is_nadam_for_unetpp_only():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(
        build_optimizer("auto", params, network_name="unetpp_efficientnet"), torch.optim.NAdam
    )
    assert type(build_optimizer("auto", params, network_name="res_unet")) is torch.optim.Adam
    assert isinstance(build_optimizer("adamw", params, lr=0.1), torch.optim.AdamW)
    with pytest.raises(ValueError, match="auto, adam, nadam, adamw"):
        build_optimizer("sgd", params)


def test_schedulers():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    plateau = build_scheduler("plateau", opt, 10)
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert plateau.mode == "max" and plateau.factor == 0.5 and plateau.patience == 5
    for _ in range(7):  # the validation Dice does not improve: the rate halves once
        plateau.step(0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    assert isinstance(
        build_scheduler("cosine", opt, 10), torch.optim.lr_scheduler.CosineAnnealingLR
    )
    assert build_scheduler("none", opt, 10) is None
    with pytest.raises(ValueError, match="plateau, cosine, none"):
        build_scheduler("step", opt, 10)


def test_overlay_draws_truth_green_and_prediction_red():
    image = np.full((20, 20), 0.5, np.float32)
    truth = np.zeros((20, 20), bool)
    truth[5:15, 5:15] = True
    pred = np.zeros((20, 20), bool)
    pred[6:16, 6:16] = True
    rgb = overlay(image, truth, pred)
    assert rgb.shape == (20, 20, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[5, 10]) == (0, 255, 0)  # top edge of the truth only
    assert tuple(rgb[15, 10]) == (255, 0, 0)  # bottom edge of the prediction only
    assert tuple(rgb[10, 10]) == (128, 128, 128)  # inside both: the image


def test_init_weights_load_a_bundle_or_a_training_checkpoint(tmp_path):
    import pytest
    import torch

    from pipeline.inference.bundle import BUNDLE
    from pipeline.networks import build_network
    from pipeline.training import initialise

    shipped = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    net = initialise(build_network("res_unet"), BUNDLE / "models" / "model.pt")
    assert all(torch.equal(v, shipped[k]) for k, v in net.state_dict().items())
    torch.save({"model": shipped, "epoch": 3}, tmp_path / "checkpoint_epoch=3.pt")
    again = initialise(build_network("res_unet"), tmp_path / "checkpoint_epoch=3.pt")
    assert all(torch.equal(v, shipped[k]) for k, v in again.state_dict().items())
    untouched = build_network("res_unet")
    assert initialise(untouched, None) is untouched
    with pytest.raises(ValueError, match="do not fit"):
        initialise(build_network("basic_unet"), BUNDLE / "models" / "model.pt")
    with pytest.raises(FileNotFoundError, match="missing"):
        initialise(build_network("res_unet"), tmp_path / "none.pt")
