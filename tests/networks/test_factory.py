"""Every network of the method: shapes at 256 and 512, gradients, pretrained encoder weights."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets.efficientnet import EfficientNetEncoder, url_map

from pipeline.networks import NETWORKS, build_network
from pipeline.networks.pretrained import PretrainedWeightsError, imagenet_url, load_encoder_weights

FAST = {"backbone": "efficientnet-b0"}  # b4 is the default; b0 keeps the suite quick


def _kwargs(name: str) -> dict:
    return FAST if name == "unetpp_efficientnet" else {}


@pytest.mark.parametrize("name", list(NETWORKS))
@pytest.mark.parametrize("size", [256, pytest.param(512, marks=pytest.mark.slow)])
def test_forward_backward_shapes(name, size):
    torch.manual_seed(0)
    net = build_network(name, **_kwargs(name))
    x = torch.randn(2, 1, size, size)
    y = net(x)
    assert y.shape == (2, 1, size, size)
    y.float().mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_unetpp_default_is_b4_and_deep_supervision_stacks_heads():
    net = build_network("unetpp_efficientnet")
    assert net.backbone == "efficientnet-b4"
    ds = build_network("unetpp_efficientnet", deep_supervision=True, **FAST)
    out = ds(torch.randn(1, 1, 64, 64))
    assert out.shape == (1, 4, 1, 64, 64)
    ds.eval()
    assert ds(torch.randn(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="res_unet"):
        build_network("vnet")
    with pytest.raises(ValueError, match="efficientnet-b0"):
        build_network("unetpp_efficientnet", backbone="efficientnet-b9")


@pytest.fixture()
def rgb_checkpoint(tmp_path):
    """An ImageNet-shaped (3-channel) EfficientNet-b0 checkpoint with a classifier head."""
    torch.manual_seed(1)
    rgb = EfficientNetEncoder("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=3)
    state = rgb.state_dict()
    state["_fc.weight"] = torch.zeros(1000, 1280)  # a head the encoder does not have
    path = tmp_path / "efficientnet-b0.pth"
    torch.save(state, path)
    return path, state


def test_local_weights_load_with_the_rgb_stem_summed(rgb_checkpoint):
    path, state = rgb_checkpoint
    net = build_network("unetpp_efficientnet", pretrained=str(path), **FAST)
    stem = net.encoder._conv_stem.weight
    assert stem.shape[1] == 1
    torch.testing.assert_close(stem, state["_conv_stem.weight"].sum(dim=1, keepdim=True))
    key = "_blocks.3.5._expand_conv.weight"
    torch.testing.assert_close(net.encoder.state_dict()[key], state[key])
    # a 3-channel gray image gives the same stem response as its 1-channel version
    gray = torch.rand(1, 1, 32, 32)
    conv = torch.nn.functional.conv2d
    torch.testing.assert_close(
        conv(gray, stem),
        conv(gray.repeat(1, 3, 1, 1), state["_conv_stem.weight"]),
        rtol=1e-4,
        atol=1e-5,
    )


def test_download_path_reads_a_url_into_the_hub_cache(rgb_checkpoint, tmp_path, monkeypatch):
    path, _ = rgb_checkpoint
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    net = build_network("unetpp_efficientnet", **FAST)
    missing = load_encoder_weights(net, path.as_uri())
    assert missing == []  # every encoder weight came from the file
    assert (tmp_path / "torch" / "hub" / "checkpoints" / path.name).is_file()


def test_offline_download_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    net = build_network("unetpp_efficientnet", **FAST)
    with pytest.raises(PretrainedWeightsError, match=r"put it at .*hub/checkpoints/w\.pth"):
        load_encoder_weights(net, "http://127.0.0.1:9/w.pth")  # nothing listens on port 9


def test_imagenet_url_and_unsupported_networks(tmp_path):
    assert imagenet_url(build_network("unetpp_efficientnet", **FAST)) == url_map["efficientnet-b0"]
    with pytest.raises(PretrainedWeightsError, match="no pretrained encoder"):
        build_network("res_unet", pretrained=str(tmp_path / "x.pth"))
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        build_network("unetpp_efficientnet", pretrained=str(tmp_path / "x.pth"), **FAST)
