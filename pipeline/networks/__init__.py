"""Networks: a factory keyed by name; UNet++ over an EfficientNet encoder; BatchNorm folding."""

from pipeline.networks.factory import NETWORKS, build_network
from pipeline.networks.folding import fold_batch_norms
from pipeline.networks.unetpp import UNetPlusPlusEfficientNet

__all__ = ["NETWORKS", "UNetPlusPlusEfficientNet", "build_network", "fold_batch_norms"]
