"""Networks and inferers the bundle's config builds: checkpoint ensembles, test-time flips.

Both are options of ``inference.json``, so model work changes JSON, not modules:

- ``"models": {"anatomical": [...], "visible": [...]}`` lists the checkpoints of each lung
  field and ``"lung_field"`` picks one (:func:`lung_field_models`); ``ckpt_path`` and
  ``"ensemble": ["models/fold1.pt", ...]`` follow from it and can be set instead.
  :func:`load_networks` returns one network for one checkpoint and an :class:`Ensemble`
  for several, whose output is the logit of the mean probability.
- ``"tta": ["hflip"]`` makes :class:`FlipInferer` run the network on the image and on each
  flipped copy, flip the outputs back and average the probabilities.

Either way the output stays one logit map per image, so the bundle's post-processing is
unchanged.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from pipeline.enums import StrEnum


class Flip(StrEnum):
    """Test-time flips of a ``(B, C, H, W)`` batch."""

    HFLIP = "hflip"
    VFLIP = "vflip"

    @property
    def dims(self) -> tuple[int]:
        """The tensor dimension the flip reverses."""
        return (3,) if self is Flip.HFLIP else (2,)


class Precision(StrEnum):
    """The arithmetic of the network's forward pass (``precision`` in ``inference.json``).

    ``auto`` is bfloat16 on a CPU with native bfloat16 instructions (AVX512-BF16, AMX), where
    the residual U-Net runs about twice as fast, and float32 everywhere else (CUDA
    included: there the network is not the bottleneck). Reduced precisions run under
    :func:`torch.autocast`; logits are returned as float32.
    """

    AUTO = "auto"
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's own check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def compute_dtype(precision: str | Precision, device: torch.device | str) -> torch.dtype:
    """The dtype a forward pass computes in on ``device`` for ``precision``.

    Raises:
        ValueError: ``precision`` is not a :class:`Precision` (the allowed set quoted).
    """
    chosen = Precision.parse(precision)
    if chosen is Precision.AUTO:
        on_cpu = torch.device(device).type == "cpu"
        chosen = Precision.BFLOAT16 if on_cpu and native_bfloat16() else Precision.FLOAT32
    return getattr(torch, chosen.value)


def _logit(prob: torch.Tensor) -> torch.Tensor:
    return torch.logit(prob.clamp(1e-7, 1 - 1e-7))


def _first(out: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The full-resolution output of networks that also return deep-supervision heads."""
    return out[0] if isinstance(out, (list, tuple)) else out


class Ensemble(nn.Module):
    """Several networks of one architecture; output: logit of their mean probability.

    Members must return one logit tensor in eval mode (every network of the factory does);
    the module is TorchScript-able (``models/model.ts`` of an ensemble bundle).
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Average the members' sigmoid probabilities, return it as a logit."""
        probs = torch.stack([torch.sigmoid(m(x).float()) for m in self.members])
        return _logit(probs.mean(0))


def load_weights(network: nn.Module, checkpoint: str | os.PathLike, device: torch.device) -> None:
    """Load a checkpoint with ``weights_only``: a state dict, or one under ``model``/``state_dict``.

    Raises:
        FileNotFoundError: the checkpoint is missing.
        ValueError: its weights do not fit the network (the file and the mismatch quoted).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the checkpoint is missing")
    state = torch.load(path, map_location=device, weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit {type(network).__name__}: {err}") from err


def lung_field_models(models: Mapping[str, Sequence[str]], lung_field: str) -> list[str]:
    """The model files of the lung field a bundle is asked for (``models`` in its config).

    Args:
        models: lung field -> checkpoint paths relative to the bundle (the first is
            ``ckpt_path``, the others the ``ensemble``).
        lung_field: ``anatomical`` (the retrocardiac lung included) or ``visible``.

    Raises:
        ValueError: an unknown lung field (the allowed ones quoted), or none of its weights.
    """
    from pipeline.enums import LungField

    field = LungField.parse(lung_field)
    chosen = [str(p) for p in models.get(field.value, ())]
    if not chosen:
        raise ValueError(f"the bundle config lists no model for lung_field {field.value!r}")
    return chosen


def load_networks(
    network_def: nn.Module, checkpoints: Sequence[str | os.PathLike], device: torch.device
) -> nn.Module:
    """The network with its weights (eval mode), or an :class:`Ensemble` of one per checkpoint.

    Weights are kept channels-last (NHWC), the layout oneDNN's convolutions run fastest in
    on the CPU (1.2-1.3x for res_unet at 256²) and cuDNN's tensor cores prefer; inputs in
    either layout work.

    Raises:
        ValueError: no checkpoint given.
        FileNotFoundError: a checkpoint is missing.
    """
    if not checkpoints:
        raise ValueError("the bundle config lists no checkpoint (ckpt_path / ensemble)")
    members = []
    for i, ckpt in enumerate(checkpoints):
        net = network_def if i == 0 else copy.deepcopy(network_def)
        load_weights(net, ckpt, torch.device("cpu"))
        members.append(net.to(device, memory_format=torch.channels_last).eval())
    return members[0] if len(members) == 1 else Ensemble(members).eval()


class FlipInferer:
    """MONAI-style inferer: the network on the image and its flips, probabilities averaged.

    Args:
        flips: names of :class:`Flip` (empty: a plain forward pass).
        dtype: the dtype the network computes in (:func:`compute_dtype`); below float32
            it runs under :func:`torch.autocast`.
    """

    def __init__(self, flips: Sequence[str] = (), dtype: torch.dtype = torch.float32):
        self.flips = [Flip.parse(f) for f in flips]
        self.dtype = dtype

    def __call__(self, inputs: torch.Tensor, network: nn.Module) -> torch.Tensor:
        """float32 logits of ``inputs`` ``(B, C, H, W)``."""
        reduced = self.dtype != torch.float32
        with torch.autocast(inputs.device.type, dtype=self.dtype, enabled=reduced):
            return self._logits(inputs, network).float()

    def _logits(self, inputs: torch.Tensor, network: nn.Module) -> torch.Tensor:
        out = _first(network(inputs))
        if not self.flips:
            return out
        probs = [torch.sigmoid(out.float())]
        for flip in self.flips:
            flipped = _first(network(torch.flip(inputs, flip.dims)))
            probs.append(torch.sigmoid(torch.flip(flipped, flip.dims).float()))
        return _logit(torch.stack(probs).mean(0))
