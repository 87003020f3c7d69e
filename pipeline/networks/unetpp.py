"""UNet++ with an EfficientNet encoder (MONAI) and residual decoder blocks.

Zhou et al.'s nested U-Net: decoder node ``X[i][j]`` (level ``i``, column ``j``) sees every
earlier node of its level and the upsampled node below it,
``X[i][j] = ResBlock(cat(X[i][0], ..., X[i][j-1], up(X[i+1][j-1])))``; ``X[i][0]`` are the
encoder features at stride ``2**(i+1)``. Each block is MONAI's ``UnetResBlock`` (two 3x3
convolutions with a residual connection). With ``deep_supervision`` the network returns the
heads of ``X[0][1..4]`` stacked along a new dimension 1 in training mode (average them for a
prediction), and only the last head in eval mode.

MONAI has no such network; it is assembled from MONAI's ``EfficientNetEncoder`` and blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock
from monai.networks.nets.efficientnet import EfficientNetEncoder
from torch import nn

BACKBONES = tuple(f"efficientnet-b{i}" for i in range(8))


def encoder_channels(backbone: str) -> tuple[int, ...]:
    """Channels of the five encoder outputs (strides 2, 4, 8, 16, 32) of ``backbone``."""
    if backbone not in BACKBONES:
        raise ValueError(f"backbone {backbone!r} is not one of: {', '.join(BACKBONES)}")
    names = EfficientNetEncoder.backbone_names
    return tuple(EfficientNetEncoder.num_channels_per_output()[names.index(backbone)])


class UNetPlusPlusEfficientNet(nn.Module):
    """UNet++ decoder with residual blocks over a MONAI EfficientNet encoder (2D).

    Args:
        backbone: ``efficientnet-b0`` ... ``efficientnet-b7`` (b4 default, as in the method).
        in_channels: input channels (1 for radiographs).
        out_channels: output channels (1: lung logits).
        decoder_channels: channels of the decoder nodes at levels 0..3 (strides 2..16).
        deep_supervision: return the heads of every top node in training mode.
        norm: normalisation of the decoder blocks (MONAI norm name).
    """

    def __init__(
        self,
        backbone: str = "efficientnet-b4",
        in_channels: int = 1,
        out_channels: int = 1,
        decoder_channels: Sequence[int] = (32, 64, 128, 256),
        deep_supervision: bool = False,
        norm: str = "batch",
    ):
        super().__init__()
        enc = encoder_channels(backbone)
        if len(decoder_channels) != 4:
            raise ValueError(f"decoder_channels {decoder_channels!r} must give 4 levels")
        self.backbone = backbone
        self.encoder = EfficientNetEncoder(
            model_name=backbone, pretrained=False, spatial_dims=2, in_channels=in_channels
        )
        for unused in ("_conv_head", "_bn1", "_fc"):  # the classifier head: dead weights for DDP
            setattr(self.encoder, unused, nn.Identity())
        self.depth = 4
        self.deep_supervision = deep_supervision
        width = [*decoder_channels, enc[4]]  # channels of X[i][j>0]; level 4 is the encoder
        self.nodes = nn.ModuleDict()
        for j in range(1, self.depth + 1):
            for i in range(self.depth - j + 1):
                cin = enc[i] + (j - 1) * width[i] + (width[i + 1] if j > 1 else enc[i + 1])
                self.nodes[f"{i}_{j}"] = UnetResBlock(2, cin, width[i], 3, 1, norm_name=norm)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        heads = self.depth if deep_supervision else 1
        self.heads = nn.ModuleList(UnetOutBlock(2, width[0], out_channels) for _ in range(heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the input's resolution (input sides must be multiples of 32)."""
        grid = [[f] for f in self.encoder(x)]  # grid[i][j] = X[i][j]
        for j in range(1, self.depth + 1):
            for i in range(self.depth - j + 1):
                inputs = [*grid[i][:j], self.up(grid[i + 1][j - 1])]
                grid[i].append(self.nodes[f"{i}_{j}"](torch.cat(inputs, dim=1)))
        if not self.deep_supervision:
            return self.up(self.heads[0](grid[0][self.depth]))
        outs = [self.up(head(grid[0][j + 1])) for j, head in enumerate(self.heads)]
        return torch.stack(outs, dim=1) if self.training else outs[-1]
