"""Load pretrained encoder weights into a 1-channel network, adapting the RGB stem.

ImageNet checkpoints have 3-channel stems. Loading them into a 1-channel network with
MONAI's own ``pretrained=True`` leaves the stem randomly initialised; here the stem's RGB
kernels are summed into one channel instead, which gives the same response to a gray image
replicated on R, G and B.

Sources: a local file (a state dict, optionally under ``"state_dict"``/``"model"``), or
``"imagenet"``: the checkpoint MONAI publishes for the EfficientNet backbone, downloaded to
torch's hub cache (``$TORCH_HOME/hub/checkpoints``) when not already there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.error import URLError

import torch
from torch import nn


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be obtained or do not fit the network."""


def _encoder(net: nn.Module) -> nn.Module:
    encoder = getattr(net, "encoder", None)
    if encoder is None:
        raise PretrainedWeightsError(
            f"{type(net).__name__} has no pretrained encoder; pretrained weights apply to "
            "unetpp_efficientnet and resnet50_unet"
        )
    return encoder


def imagenet_url(net: nn.Module) -> str:
    """The published ImageNet checkpoint of the network's EfficientNet backbone."""
    from monai.networks.nets.efficientnet import url_map

    backbone = getattr(net, "backbone", None)
    if backbone not in url_map:
        raise PretrainedWeightsError(
            f"no published ImageNet weights for {type(net).__name__}; pass a local file instead"
        )
    return url_map[backbone]


def download_weights(url: str) -> dict[str, torch.Tensor]:
    """Download (or take from the hub cache) a checkpoint; a clear error when offline."""
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
    except (URLError, OSError) as err:
        raise PretrainedWeightsError(
            f"could not download pretrained weights from {url} ({err}); without network "
            f"access download the file elsewhere and put it at {cache}, or pass its path"
        ) from err


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a local checkpoint (``weights_only``, on CPU)."""
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise PretrainedWeightsError(
            f"pretrained weights file {str(path)!r} does not exist"
        ) from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def adapt_state_dict(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Keep the entries ``target`` has; sum RGB stem kernels into as many input channels as needed.

    Raises:
        PretrainedWeightsError: an entry's shape cannot be made to fit.
    """
    out = {}
    for key, value in state.items():
        if key not in target:
            continue  # classifier head and other parts the encoder does not have
        want = target[key].shape
        if value.shape != want and value.ndim == 4 and value.shape[1] == 3 and want[1] != 3:
            value = value.sum(dim=1, keepdim=True).repeat(1, want[1], 1, 1) / want[1]
        if value.shape != want:
            raise PretrainedWeightsError(
                f"weight {key!r} has shape {tuple(value.shape)}, the network expects {tuple(want)}"
            )
        out[key] = value
    return out


def load_encoder_weights(net: nn.Module, source: str | os.PathLike) -> list[str]:
    """Load ``source`` (a file, a URL or ``"imagenet"``) into the network's encoder.

    Returns:
        The encoder keys the source did not set (left as initialised).
    """
    encoder = _encoder(net)
    text = str(source)
    if text == "imagenet":
        state = download_weights(imagenet_url(net))
    elif text.startswith(("http://", "https://", "file://")):
        state = download_weights(text)
    else:
        state = read_weights(source)
    target = encoder.state_dict()
    adapted = adapt_state_dict(state, target)
    if not adapted:
        raise PretrainedWeightsError(f"no weight of {text} matches {type(encoder).__name__}")
    encoder.load_state_dict(adapted, strict=False)
    return sorted(set(target) - set(adapted))
