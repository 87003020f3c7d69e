"""Networks and inferers the bundle's config builds: checkpoint ensembles, test-time flips.

Both are options of ``inference.json``, so model work changes JSON, not modules:

- ``"models": {"anatomical": [...], "visible": [...]}`` lists the checkpoints of each lung
  field and ``"lung_field"`` picks one (:func:`lung_field_models`); ``ckpt_path`` and
  ``"ensemble": ["models/fold1.pt", ...]`` follow from it and can be set instead.
  :func:`load_networks` returns one network for one checkpoint; for several, ``"combine"``
  decides: ``soup`` averages their weights into one network (:func:`average_weights`; the
  cost of one network), ``ensemble`` runs them all as an :class:`Ensemble`, whose output is
  the logit of the mean probability.
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
from pipeline.networks.folding import fold_batch_norms
from pipeline.networks.fusion import fuse_activations, native_bfloat16


class Flip(StrEnum):
    """Test-time flips of a ``(B, C, H, W)`` batch."""

    HFLIP = "hflip"
    VFLIP = "vflip"

    @property
    def dims(self) -> tuple[int]:
        """The tensor dimension the flip reverses."""
        return (3,) if self is Flip.HFLIP else (2,)


class Combine(StrEnum):
    """How a bundle combines several checkpoints of one network (``combine`` in ``inference.json``).

    ``soup``: their weights are averaged into one network (a uniform "model soup",
    Wortsman et al., ICML 2022), which runs once. It works for checkpoints fine-tuned from one
    starting point, which lie in one basin of the loss: for 0.6.0's three members it matched
    their ensemble on the clean test part and under every stress (model card), and 0.7.0
    ships such an average as one checkpoint. ``ensemble``:
    every checkpoint runs and their probabilities are averaged, at the cost of all of them.
    """

    SOUP = "soup"
    ENSEMBLE = "ensemble"


class Precision(StrEnum):
    """The arithmetic of the network's forward pass (``precision`` in ``inference.json``).

    ``auto`` is bfloat16 on a CPU with native bfloat16 instructions (AVX512-BF16, AMX), where
    the residual U-Net runs about twice as fast, and float32 everywhere else (CUDA
    included: there the network is not the bottleneck). Reduced precisions run under
    :func:`torch.autocast`; logits are returned as float32. A fused network (``fuse``) runs
    its convolutions in bfloat16 with their activations fused on such a CPU
    (:mod:`pipeline.networks.fusion`).
    """

    AUTO = "auto"
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


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


def read_state(checkpoint: str | os.PathLike, device: torch.device) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict, read with ``weights_only`` (also under ``model``/``state_dict``).

    Raises:
        FileNotFoundError: the checkpoint is missing.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the checkpoint is missing")
    state = torch.load(path, map_location=device, weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def load_weights(network: nn.Module, checkpoint: str | os.PathLike, device: torch.device) -> None:
    """Load a checkpoint (see :func:`read_state`) into ``network``.

    Raises:
        FileNotFoundError: the checkpoint is missing.
        ValueError: its weights do not fit the network (the file and the mismatch quoted).
    """
    _load_state(network, read_state(checkpoint, device), str(checkpoint))


def _load_state(network: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{source}: weights do not fit {type(network).__name__}: {err}") from err


def average_weights(
    checkpoints: Sequence[str | os.PathLike], device: torch.device | None = None
) -> dict[str, torch.Tensor]:
    """The uniform average of several checkpoints' weights (see :class:`Combine`).

    Floating-point tensors are averaged (in float32 at least), BatchNorm running statistics
    included; integer buffers (BatchNorm's ``num_batches_tracked``) are the first checkpoint's.

    Raises:
        FileNotFoundError: a checkpoint is missing.
        ValueError: no checkpoint, or one whose tensors differ in names or shapes from the
            first's (the file and the difference quoted).
    """
    if not checkpoints:
        raise ValueError("no checkpoint to average")
    device = device or torch.device("cpu")
    first = read_state(checkpoints[0], device)
    total = {k: _wide(v) if v.is_floating_point() else v for k, v in first.items()}
    for ckpt in checkpoints[1:]:
        state = read_state(ckpt, device)
        _check_same_tensors(first, state, ckpt)
        for key, value in state.items():
            if value.is_floating_point():
                total[key] += value
    n = len(checkpoints)
    return {k: (v / n).to(first[k].dtype) if v.is_floating_point() else v for k, v in total.items()}


def _wide(value: torch.Tensor) -> torch.Tensor:
    """A float32 (or wider) copy to sum into."""
    return value.to(torch.promote_types(value.dtype, torch.float32), copy=True)


def _check_same_tensors(first: dict, other: dict, source: str | os.PathLike) -> None:
    if first.keys() != other.keys():
        differ = sorted(first.keys() ^ other.keys())[:3]
        raise ValueError(f"{source}: not the first checkpoint's network (tensors {differ} differ)")
    for key, value in other.items():
        if value.shape != first[key].shape:
            raise ValueError(
                f"{source}: {key} has shape {tuple(value.shape)}, the first checkpoint's "
                f"{tuple(first[key].shape)}"
            )


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
    network_def: nn.Module,
    checkpoints: Sequence[str | os.PathLike],
    device: torch.device,
    combine: str | Combine = Combine.ENSEMBLE,
    fold_batch_norm: bool = False,
    fuse: bool = False,
) -> nn.Module:
    """The network with its weights (eval mode); several checkpoints combined by ``combine``.

    Weights are kept channels-last (NHWC), the layout oneDNN's convolutions run fastest in
    on the CPU (1.2-1.3x for res_unet at 256²) and cuDNN's tensor cores prefer; inputs in
    either layout work. With ``fold_batch_norm`` each BatchNorm that follows a convolution
    is folded into it (:func:`pipeline.networks.folding.fold_batch_norms`: res_unet's
    forward pass 1.29x faster on the CPU, logits within 3e-5).

    Args:
        network_def: the network (its first member; copied for the others).
        checkpoints: its weights, one or more.
        device: where it runs.
        combine: :class:`Combine`: one network of the averaged weights (``soup``), or an
            :class:`Ensemble` of one network per checkpoint.
        fold_batch_norm: fold BatchNorm layers into the convolutions before them.
        fuse: also compute the PReLUs and residual additions inside the convolutions
            before them, in CPU inference (:func:`~pipeline.networks.fusion.fuse_activations`;
            in float32 the same outputs bit for bit, in bfloat16 one rounding fewer).

    Raises:
        ValueError: no checkpoint given, an unknown ``combine`` (the allowed set quoted), or
            weights that do not fit.
        FileNotFoundError: a checkpoint is missing.
    """
    if not checkpoints:
        raise ValueError("the bundle config lists no checkpoint (ckpt_path / ensemble)")
    if Combine.parse(combine) is Combine.SOUP and len(checkpoints) > 1:
        source = "the average of " + ", ".join(map(str, checkpoints))
        _load_state(network_def, average_weights(checkpoints), source)
        return _for_inference(network_def, device, fold_batch_norm, fuse)
    copies = [network_def] + [copy.deepcopy(network_def) for _ in checkpoints[1:]]
    members = []
    for net, ckpt in zip(copies, checkpoints, strict=True):  # copied before any is folded
        load_weights(net, ckpt, torch.device("cpu"))
        members.append(_for_inference(net, device, fold_batch_norm, fuse))
    return members[0] if len(members) == 1 else Ensemble(members).eval()


def _for_inference(
    network: nn.Module, device: torch.device, fold: bool, fuse: bool = False
) -> nn.Module:
    """``network`` in eval mode, folded and fused as asked, channels-last on ``device``."""
    network.eval()
    if fold:
        fold_batch_norms(network)
    if fuse:
        fuse_activations(network)
    return network.to(device, memory_format=torch.channels_last)


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
