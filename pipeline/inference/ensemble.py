"""Networks and inferers the bundle's config builds: checkpoint ensembles, test-time flips.

Both are options of ``inference.json``, so model work changes JSON, not modules:

- ``"ensemble": ["models/fold1.pt", ...]`` adds checkpoints to ``models/model.pt``;
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
from collections.abc import Sequence
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


def load_networks(
    network_def: nn.Module, checkpoints: Sequence[str | os.PathLike], device: torch.device
) -> nn.Module:
    """The network with its weights (eval mode), or an :class:`Ensemble` of one per checkpoint.

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
        members.append(net.to(device).eval())
    return members[0] if len(members) == 1 else Ensemble(members).eval()


class FlipInferer:
    """MONAI-style inferer: the network on the image and its flips, probabilities averaged.

    Args:
        flips: names of :class:`Flip` (empty: a plain forward pass).
    """

    def __init__(self, flips: Sequence[str] = ()):
        self.flips = [Flip.parse(f) for f in flips]

    def __call__(self, inputs: torch.Tensor, network: nn.Module) -> torch.Tensor:
        """Logits of ``inputs`` ``(B, C, H, W)``."""
        out = _first(network(inputs))
        if not self.flips:
            return out
        probs = [torch.sigmoid(out.float())]
        for flip in self.flips:
            flipped = _first(network(torch.flip(inputs, flip.dims)))
            probs.append(torch.sigmoid(torch.flip(flipped, flip.dims).float()))
        return _logit(torch.stack(probs).mean(0))
