"""Combining the bundle's checkpoints: the weight average ("soup") against the ensemble."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.inference.bundle import BUNDLE
from pipeline.inference.ensemble import (
    Ensemble,
    average_weights,
    load_networks,
    read_state,
)
from pipeline.inference.predictor import Predictor
from pipeline.networks import build_network
from pipeline.training.data import load_split
from tests.conftest import dice

MEMBERS = [BUNDLE / "models" / "visible" / n for n in ("model.pt", "model_1.pt", "model_2.pt")]


def test_the_soup_is_the_mean_of_the_members_weights():
    states = [read_state(m, torch.device("cpu")) for m in MEMBERS]
    soup = average_weights(MEMBERS)
    assert soup.keys() == states[0].keys()
    for key, value in soup.items():
        if value.is_floating_point():  # weights and BatchNorm running statistics
            mean = torch.stack([s[key].double() for s in states]).mean(0)
            torch.testing.assert_close(value, mean.to(value.dtype))
        else:  # num_batches_tracked: the first member's
            assert torch.equal(value, states[0][key])
    differ = [
        k for k, v in soup.items() if v.is_floating_point() and not torch.equal(v, states[0][k])
    ]
    assert len(differ) > 100  # the members really differ: the average is not the first
    assert all(torch.equal(v, states[0][k]) for k, v in average_weights(MEMBERS[:1] * 2).items())


def test_weights_of_another_network_are_refused_with_the_file_named(tmp_path):
    state = read_state(MEMBERS[0], torch.device("cpu"))
    cut = tmp_path / "cut.pt"
    torch.save({k: v for k, v in state.items() if not k.startswith("model.2")}, cut)
    with pytest.raises(ValueError, match=r"cut\.pt: not the first checkpoint's network"):
        average_weights([MEMBERS[0], cut])
    wide = tmp_path / "wide.pt"
    key = next(iter(state))
    torch.save({**state, key: torch.zeros(3, *state[key].shape[1:])}, wide)
    with pytest.raises(ValueError, match=rf"wide\.pt: {key} has shape"):
        average_weights([MEMBERS[0], wide])
    with pytest.raises(ValueError, match="no checkpoint"):
        average_weights([])


def test_combine_builds_one_network_for_a_soup_and_all_for_an_ensemble():
    cpu = torch.device("cpu")
    soup = load_networks(build_network("res_unet"), MEMBERS, cpu, "soup")
    assert not isinstance(soup, Ensemble) and not soup.training
    ensemble = load_networks(build_network("res_unet"), MEMBERS, cpu, "ensemble")
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 3
    with pytest.raises(ValueError, match="soup, ensemble"):
        load_networks(build_network("res_unet"), MEMBERS[:1], cpu, "average")


def test_a_soup_segments_like_the_ensemble_of_its_members(data_dir):
    """Real held-out radiographs: one network of averaged weights against three networks."""
    paths = [c["image"] for c in load_split(data_dir, "test", 6)]
    visible = {"lung_field": "visible"}
    soup = Predictor(device="cpu", overrides={**visible, "combine": "soup"})
    ensemble = Predictor(device="cpu", overrides=visible)  # the visible field's default
    assert isinstance(ensemble.network, Ensemble) and not isinstance(soup.network, Ensemble)
    assert soup.identity.digest != ensemble.identity.digest
    pairs = zip(soup.predict_from_files(paths), ensemble.predict_from_files(paths), strict=True)
    for a, b in pairs:
        assert not np.allclose(a.probability, b.probability, atol=1e-3)
        assert dice(a.mask, b.mask) > 0.98


def test_the_shipped_anatomical_model_is_one_network():
    """0.7.0 ships the soup of 0.6.0's members as one checkpoint: one forward pass."""
    predictor = Predictor(device="cpu")
    assert predictor.checkpoints == [BUNDLE / "models" / "model.pt"]
    assert not isinstance(predictor.network, Ensemble)
