"""One factory for every network of the method, keyed by name.

All are 2D with one input channel (a radiograph) and one output channel (lung logits):

- ``basic_unet``: MONAI ``BasicUNet``;
- ``res_unet``: MONAI ``UNet`` with residual units (16-256 channels, 2 units per level);
- ``unetpp_efficientnet``: :class:`~pipeline.networks.unetpp.UNetPlusPlusEfficientNet`;
- ``resnet50_unet``: MONAI ``FlexibleUNet`` with a ResNet50 backbone.

``pretrained`` loads encoder weights from a local file, or ``"imagenet"`` downloads them when
the network has a published checkpoint (EfficientNet); see :mod:`pipeline.networks.pretrained`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from torch import nn

from pipeline.enums import NetworkName
from pipeline.networks.unetpp import UNetPlusPlusEfficientNet


def _basic_unet(**kw: Any) -> nn.Module:
    from monai.networks.nets import BasicUNet

    args = {
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 1,
        "features": (32, 32, 64, 128, 256, 32),
    }
    return BasicUNet(**{**args, **kw})


def _res_unet(**kw: Any) -> nn.Module:
    from monai.networks.nets import UNet

    args = {
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 1,
        "channels": (16, 32, 64, 128, 256),
        "strides": (2, 2, 2, 2),
        "num_res_units": 2,
        "norm": "batch",
    }
    return UNet(**{**args, **kw})


def _unetpp(**kw: Any) -> nn.Module:
    return UNetPlusPlusEfficientNet(**kw)


def _resnet50_unet(**kw: Any) -> nn.Module:
    from monai.networks.nets import FlexibleUNet

    args = {"in_channels": 1, "out_channels": 1, "backbone": "resnet50", "spatial_dims": 2}
    return FlexibleUNet(**{**args, **kw, "pretrained": False})


NETWORKS: dict[str, Callable[..., nn.Module]] = {
    NetworkName.BASIC_UNET.value: _basic_unet,
    NetworkName.RES_UNET.value: _res_unet,
    NetworkName.UNETPP_EFFICIENTNET.value: _unetpp,
    NetworkName.RESNET50_UNET.value: _resnet50_unet,
}


def build_network(
    name: str, pretrained: str | os.PathLike | None = None, **kwargs: Any
) -> nn.Module:
    """Build a network by name.

    Args:
        name: one of :data:`NETWORKS`.
        pretrained: encoder weights: a local ``.pt``/``.pth`` file, or ``"imagenet"`` to
            download the published ones (EfficientNet only); None for random init.
        kwargs: override the network's defaults (e.g. ``backbone="efficientnet-b0"``).

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if name not in NETWORKS:
        raise ValueError(f"network {name!r} is not one of: {', '.join(NETWORKS)}")
    net = NETWORKS[name](**kwargs)
    if pretrained:
        from pipeline.networks.pretrained import load_encoder_weights

        load_encoder_weights(net, pretrained)
    return net
