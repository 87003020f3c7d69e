"""Activations and residual additions fused into the convolutions (float32: bit for bit)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pipeline.networks import build_network, fold_batch_norms, fuse_activations, fusion
from pipeline.networks.fusion import ONEDNN_CPU, FusedConvolution, FusedResidualUnit

#: Where the fused convolutions run at all (elsewhere the original modules do).
x86_only = pytest.mark.skipif(not ONEDNN_CPU, reason="fused convolutions run on x86 CPUs only")
#: Where they run in bfloat16 too (a CPU with native bfloat16).
bfloat16_only = pytest.mark.skipif(
    not fusion.bfloat16_fused("cpu"), reason="needs an x86 CPU with native bfloat16"
)


def _count(net: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in net.modules())


def _folded(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = build_network("res_unet").eval()
    for m in net.modules():  # slopes other than PReLU's 0.25 default, as trained ones are
        if isinstance(m, nn.PReLU):
            m.weight.data.uniform_(-0.3, 0.6)
    fold_batch_norms(net)
    return net.to(memory_format=torch.channels_last)


def _prelu_calls(net: nn.Module) -> list[nn.Module]:
    """Record every PReLU module that runs in ``net`` (into the returned list)."""
    calls: list[nn.Module] = []
    for m in net.modules():
        if isinstance(m, nn.PReLU):
            m.register_forward_hook(lambda mod, *_: calls.append(mod))
    return calls


@pytest.fixture(scope="module")
def shipped_batch(shipped_model, case_pixels):
    """Four real radiographs preprocessed by the shipped bundle, one cropped (not square)."""
    images = [
        shipped_model.preprocess(shipped_model.load(p))["image"] for p in case_pixels.values()
    ]
    batch = torch.stack([torch.as_tensor(i) for i in images[:4]])
    return batch.contiguous(memory_format=torch.channels_last)


@x86_only
@torch.inference_mode()
def test_res_unet_fuses_its_prelus_and_residual_convolutions():
    net = _folded()
    fused = copy.deepcopy(net)
    assert fuse_activations(fused) == 22
    assert _count(fused, FusedConvolution) == 17  # every (transposed) convolution + PReLU
    assert _count(fused, FusedResidualUnit) == 5  # the encoder's and the bottom's units
    calls = _prelu_calls(fused)
    x = torch.randn(2, 1, 64, 64).contiguous(memory_format=torch.channels_last)
    assert torch.equal(fused(x), net(x))
    assert not calls  # no PReLU runs on its own
    assert fuse_activations(fused) == 0  # nothing left to fuse


@torch.inference_mode()
def test_the_shipped_network_fused_gives_the_same_logits_bit_for_bit(shipped_model, shipped_batch):
    from pipeline.inference.ensemble import load_networks

    net = shipped_model.load_network()
    assert _count(net, FusedConvolution) == 17  # the bundle asks for it (network: fuse)
    plain = load_networks(
        build_network("res_unet"), shipped_model.checkpoints, "cpu", "soup", fold_batch_norm=True
    )
    assert _count(plain, FusedConvolution) == 0
    for batch in (shipped_batch, shipped_batch[:1], shipped_batch[:3, :, :, 16:240]):
        assert torch.equal(net(batch), plain(batch))
    nchw = shipped_batch.contiguous()
    assert torch.equal(net(nchw), plain(nchw))


def test_training_and_autocast_without_native_bfloat16_run_the_original_modules(monkeypatch):
    net = _folded(1)
    fused = copy.deepcopy(net)
    fuse_activations(fused)
    calls = _prelu_calls(fused)
    x = torch.randn(2, 1, 64, 64)
    monkeypatch.setattr(fusion, "native_bfloat16", lambda: False)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert torch.equal(fused(x), net(x))  # bfloat16 as --precision asks, not float32
    assert len(calls) == _count(net, nn.PReLU) == 17
    monkeypatch.undo()
    out = fused(x.requires_grad_())
    assert out.grad_fn is not None and torch.equal(out.detach(), net(x).detach())
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@torch.inference_mode()
def test_a_unit_with_a_norm_or_another_activation_is_left_alone():
    basic = build_network("basic_unet", features=(8, 8, 8, 8, 8, 8)).eval()  # instance norms
    unfolded = build_network("res_unet").eval()  # BatchNorms between convolution and PReLU
    x = torch.randn(1, 1, 32, 32)
    for net in (basic, unfolded):
        before = net(x)
        fused = fuse_activations(net)
        assert _count(net, FusedConvolution) == 0
        assert fused == _count(net, FusedResidualUnit)  # a residual convolution has no norm
        assert torch.equal(net(x), before)


def test_a_network_in_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        fuse_activations(build_network("res_unet"))


@torch.inference_mode()
def test_a_fused_network_can_be_copied_and_pickled():
    import pickle

    fused = _folded(2)
    fuse_activations(fused)
    x = torch.randn(1, 1, 64, 64)
    for twin in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
        assert torch.equal(twin(x), fused(x))


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@bfloat16_only
@torch.inference_mode()
def test_in_bfloat16_the_shipped_network_runs_fused_and_agrees_with_float32(
    shipped_model, shipped_batch, monkeypatch
):
    """Under autocast the fused modules compute in bfloat16 themselves, one rounding fewer."""
    net = shipped_model.load_network()
    calls = _prelu_calls(net)
    reference = net(shipped_batch)  # float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = net(shipped_batch).float()
        assert not calls  # no PReLU ran on its own: every one inside its convolution
        monkeypatch.setattr(fusion, "native_bfloat16", lambda: False)
        unfused = net(shipped_batch).float()  # autocast's own bfloat16, module by module
        monkeypatch.undo()
    assert calls and not torch.equal(fused, unfused)
    assert (fused - unfused).abs().max() < 1.0  # bfloat16's rounding, not another network
    lungs = reference > 0
    assert _dice(fused > 0, lungs) > 0.995
    assert _dice(unfused > 0, lungs) > 0.995


@bfloat16_only
def test_the_bfloat16_weights_follow_a_change_of_the_float32_ones():
    fused = _folded(3)
    fuse_activations(fused)
    x = torch.randn(1, 1, 64, 64)
    bfloat16 = torch.autocast("cpu", dtype=torch.bfloat16)
    with bfloat16, torch.no_grad():
        before = fused(x)
    with torch.no_grad():  # (outside autocast, whose own casts last as long as its block)
        for m in fused.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(0.5)  # in place: the same storage, a new version
    twin = copy.deepcopy(fused)  # its weights new tensors: cast afresh
    with bfloat16, torch.no_grad():
        after = fused(x)
        assert torch.equal(after, twin(x))
    assert not torch.equal(before, after)


@bfloat16_only
def test_a_network_made_in_inference_mode_runs_fused_in_bfloat16():
    with torch.inference_mode():  # its folded weights are inference tensors (no version)
        fused = _folded(4)
        fuse_activations(fused)
        x = torch.randn(1, 1, 64, 64)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            first, again = fused(x), fused(x)
    assert first.dtype == torch.bfloat16 and torch.equal(first, again)
