"""Convolutions fused with the activation and the residual addition after them, for CPU inference.

MONAI's ``UNet`` with residual units (``res_unet``) runs, per unit, a convolution, a PReLU
and, at the end, an addition of the residual path: each a separate pass over the feature
maps. oneDNN computes an activation or an addition inside the convolution, on the values
still in registers ("post-ops"; PyTorch reaches them through the ``mkldnn`` operators its
compiler uses). :func:`fuse_activations` replaces, in place:

- each MONAI ``Convolution`` (a ``Conv2d`` or ``ConvTranspose2d`` whose ``ADN`` block is, after
  :func:`~pipeline.networks.folding.fold_batch_norms`, an identity norm, an inactive dropout
  and a one-parameter PReLU) by :class:`FusedConvolution`: a PReLU with one weight is a
  leaky ReLU of that slope;
- each ``ResidualUnit`` whose residual path is a ``Conv2d`` by :class:`FusedResidualUnit`,
  whose residual convolution adds the unit's output as a post-op.

In float32 the fused convolution is oneDNN's same primitive with the same blocking, so each
output equals the unfused one bit for bit (tested on the shipped network). Under CPU autocast
to bfloat16 on an x86 CPU with native bfloat16 (:func:`bfloat16_fused`) the fused modules run
in bfloat16 themselves, as autocast would run their convolutions (inputs and weights in
bfloat16, float32 sums, bfloat16 out), the activation or addition applied to the float32 sums
before the one rounding: the outputs differ from the unfused ones by that rounding, which is
why a bfloat16 result's model identity says so (``numerics``). Any other call (training,
float16, CUDA, ARM) runs the original modules, kept inside. For ``res_unet`` at 256² on a
2-core CPU the forward pass of a batch of 4 ran 1.04-1.15 x faster in float32 (alternated
medians; the README has the job's), and 1.19 x faster in bfloat16 than autocast
module by module on an Intel Xeon with AMX (8 alternated rounds).
"""

from __future__ import annotations

import functools
import platform

import torch
from monai.networks.blocks import ADN, Convolution, ResidualUnit
from torch import nn

#: A model identity's ``numerics`` where the network runs fused in bfloat16 (its outputs
#: differ from autocast's unfused ones by a rounding).
BFLOAT16_FUSED = "bfloat16-fused"
#: Where PyTorch's own CPU convolutions are oneDNN's (its x86 builds), so the fused ones
#: compute the same numbers; elsewhere (ARM) the network runs unfused.
ONEDNN_CPU = platform.machine().lower() in {"x86_64", "amd64"}


def _onednn_on() -> bool:
    return ONEDNN_CPU and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


@functools.cache
def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's own check, asked once)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def bfloat16_fused(device: torch.device | str) -> bool:
    """Whether bfloat16 inference on ``device`` runs fused: an x86 CPU with native bfloat16."""
    return torch.device(device).type == "cpu" and _onednn_on() and native_bfloat16()


def fusable(x: torch.Tensor) -> bool:
    """Whether a call may run fused: float32 on an x86 CPU, oneDNN on, no gradients, no autocast."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and _onednn_on()
    )


def fusable_in_bfloat16(x: torch.Tensor) -> bool:
    """Whether a call may run fused in bfloat16: CPU autocast to bfloat16, no gradients.

    Only on a CPU :func:`bfloat16_fused` accepts.
    """
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and not torch.is_grad_enabled()
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and _onednn_on()
        and native_bfloat16()
    )


def _fused_dtype(x: torch.Tensor) -> torch.dtype | None:
    """What a fused call of ``x`` computes in, or None: the original modules run.

    float32 where :func:`fusable`, bfloat16 where :func:`fusable_in_bfloat16`.
    """
    if fusable(x):
        return torch.float32
    return torch.bfloat16 if fusable_in_bfloat16(x) else None


def _prelu_slope(adn: nn.Module | None) -> float | None:
    """The one PReLU slope of an ``ADN`` that is only that PReLU in inference; else None."""
    if not isinstance(adn, ADN) or adn.training:
        return None
    layers = dict(adn.named_children())
    act = layers.pop("A", None)
    if not isinstance(act, nn.PReLU) or act.weight.numel() != 1:
        return None
    for name, layer in layers.items():
        inactive = isinstance(layer, nn.Identity) or (
            name == "D" and isinstance(layer, nn.Dropout) and not layer.training
        )
        if not inactive:
            return None
    return float(act.weight.detach())


class FusedConvolution(nn.Module):
    """A MONAI ``Convolution`` (conv, then a PReLU) as one oneDNN convolution with a post-op.

    Args:
        unit: the convolution; see :func:`fuse_activations` for which ones qualify.
        slope: its PReLU's slope (:func:`_prelu_slope`).
    """

    def __init__(self, unit: Convolution, slope: float):
        super().__init__()
        self.unit = unit
        self.slope = slope
        self.transposed = isinstance(unit.conv, nn.ConvTranspose2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The unit's output: fused where :func:`fusable` or :func:`fusable_in_bfloat16`.

        Elsewhere the unit itself computes it.
        """
        dtype = _fused_dtype(x)
        if dtype is None:
            return self.unit(x)
        x, args = x.to(dtype), _conv_args(self.unit.conv, dtype)
        mkldnn = torch.ops.mkldnn
        op = (
            mkldnn._convolution_transpose_pointwise
            if self.transposed
            else mkldnn._convolution_pointwise
        )
        return op(x, *args, "leaky_relu", [self.slope], "")


class FusedResidualUnit(nn.Module):
    """A MONAI ``ResidualUnit`` whose residual convolution adds the unit's output as a post-op.

    Args:
        unit: the residual unit; its residual path a ``Conv2d``.
    """

    def __init__(self, unit: ResidualUnit):
        super().__init__()
        self.unit = unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``conv(x) + residual(x)``, as the unit computes it (the sum is commutative)."""
        dtype = _fused_dtype(x)
        if dtype is None:
            return self.unit(x)
        x = x.to(dtype)
        cx, args = self.unit.conv(x), _conv_args(self.unit.residual, dtype)
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, cx, *args, "add", None, None, [], None
        )


def _conv_args(conv: nn.Conv2d | nn.ConvTranspose2d, dtype: torch.dtype | None = None) -> tuple:
    """Weight, bias and geometry of ``conv`` as oneDNN's operators take them, in order.

    With a ``dtype`` other than the weight's, the weight and bias in it (:func:`_weights_in`).
    """
    transposed = [list(conv.output_padding)] if isinstance(conv, nn.ConvTranspose2d) else []
    geometry = [list(conv.padding), *transposed, list(conv.stride), list(conv.dilation)]
    own = dtype in (None, conv.weight.dtype)
    weight, bias = (conv.weight, conv.bias) if own else _weights_in(conv, dtype)
    return (weight, bias, *geometry, conv.groups)


def _weights_in(conv: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``conv``'s weight and bias cast to ``dtype``, cast once and kept while they are unchanged.

    Autocast casts a module's weights on every call; the cast copies are kept on the module
    instead, keyed by the weight's storage and version: new weights, or weights changed in
    place, are cast again. (Weights made in inference mode have no version; for them a change
    in place inside inference mode goes unseen.)
    """
    weight = conv.weight
    version = None if weight.is_inference() else weight._version
    key = (dtype, weight.data_ptr(), version)
    cached = getattr(conv, "_lungseg_cast", None)
    if cached is None or cached[0] != key:
        bias = None if conv.bias is None else conv.bias.detach().to(dtype)
        cached = (key, weight.detach().to(dtype), bias)
        conv._lungseg_cast = cached
    return cached[1], cached[2]


def _plain_conv(conv: nn.Module, transposed: bool = False) -> bool:
    """A 2-D (``transposed``: or transposed) convolution oneDNN's operators take as it is."""
    kinds = (nn.Conv2d, nn.ConvTranspose2d) if transposed else (nn.Conv2d,)
    return (
        type(conv) in kinds and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
    )


def fuse_activations(network: nn.Module) -> int:
    """Fuse the PReLUs and residual additions of ``network`` into its convolutions, in place.

    Args:
        network: in eval mode, BatchNorms already folded (a unit with a BatchNorm left
            between its convolution and its PReLU is not fused).

    Returns:
        How many convolutions now carry a post-op.

    Raises:
        ValueError: the network is in training mode.
    """
    if network.training:
        raise ValueError("fuse_activations needs a network in eval mode (network.eval())")
    return _fuse_children(network)


def _fuse_children(module: nn.Module) -> int:
    fused = 0
    for name, child in module.named_children():
        if isinstance(child, (FusedConvolution, FusedResidualUnit)):  # fused already
            continue
        fused += _fuse_children(child)
        replacement = _fused(child)
        if replacement is not None:
            setattr(module, name, replacement)
            fused += 1
    return fused


def _fused(child: nn.Module) -> nn.Module | None:
    """The fused stand-in for ``child``, or None where it has none."""
    if isinstance(child, ResidualUnit) and _plain_conv(child.residual):
        return FusedResidualUnit(child)
    if isinstance(child, Convolution) and _plain_conv(getattr(child, "conv", None), True):
        slope = _prelu_slope(getattr(child, "adn", None))
        if slope is not None:
            return FusedConvolution(child, slope)
    return None
