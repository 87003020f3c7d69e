"""Networks: a factory, UNet++ over EfficientNet, BatchNorm folding, activation fusion."""

from pipeline.networks.factory import NETWORKS, build_network
from pipeline.networks.folding import fold_batch_norms
from pipeline.networks.fusion import fuse_activations
from pipeline.networks.unetpp import UNetPlusPlusEfficientNet

__all__ = [
    "NETWORKS",
    "UNetPlusPlusEfficientNet",
    "build_network",
    "fold_batch_norms",
    "fuse_activations",
]
