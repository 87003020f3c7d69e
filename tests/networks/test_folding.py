"""BatchNorm folded into the convolution before it: same outputs, no BatchNorm left."""

from __future__ import annotations

import pytest
import torch
from monai.networks.blocks import Convolution
from torch import nn

from pipeline.networks import build_network, fold_batch_norms


def _with_running_statistics(net: nn.Module, seed: int = 0) -> nn.Module:
    """``net`` in eval mode with BatchNorm statistics far from the identity (as if trained)."""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d) and m.track_running_stats:
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))
    return net.eval()


def _count(net: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in net.modules())


@torch.inference_mode()
def test_res_unet_folds_every_batch_norm_and_computes_the_same():
    torch.manual_seed(0)
    net = _with_running_statistics(build_network("res_unet"))
    x = torch.randn(2, 1, 64, 64)
    before, norms = net(x), _count(net, nn.BatchNorm2d)
    transposed = _count(net, nn.ConvTranspose2d)
    assert norms == 17 and transposed > 0  # the decoder's transposed convolutions too
    assert fold_batch_norms(net) == norms
    assert _count(net, nn.BatchNorm2d) == 0
    assert torch.allclose(net(x), before, rtol=1e-4, atol=1e-4)
    assert fold_batch_norms(net) == 0  # nothing left to fold


@torch.inference_mode()
def test_only_a_batch_norm_right_after_a_convolution_is_folded():
    torch.manual_seed(0)
    after_act = Convolution(2, 1, 4, norm="batch", act="prelu", adn_ordering="AN")
    instance = build_network("basic_unet", features=(8, 8, 8, 8, 8, 8))  # instance norms
    batch_stats = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    x = torch.randn(1, 1, 32, 32)
    for net in (after_act, instance, batch_stats):
        net = _with_running_statistics(net)
        before = net(x)
        assert fold_batch_norms(net) == 0
        assert torch.equal(net(x), before)


def test_a_network_in_training_mode_is_refused():
    with pytest.raises(ValueError, match="training mode"):
        fold_batch_norms(build_network("res_unet"))


@torch.inference_mode()
def test_the_shipped_bundle_runs_its_network_folded(shipped_model, pixels):
    from pipeline.inference.ensemble import load_networks

    net = shipped_model.load_network()
    assert _count(net, nn.BatchNorm2d) == 0  # the bundle asks for it (fold_batch_norm)
    plain = load_networks(build_network("res_unet"), shipped_model.checkpoints, "cpu", "soup")
    assert _count(plain, nn.BatchNorm2d) == 17
    image = shipped_model.preprocess(shipped_model.load(pixels))["image"][None]
    folded, unfolded = net(image), plain(image)
    assert (folded - unfolded).abs().max() < 1e-3
    assert torch.equal(folded > 0, unfolded > 0)  # the same mask on the network's grid
