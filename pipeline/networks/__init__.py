"""Networks: a factory keyed by name; UNet++ over an EfficientNet encoder."""

from pipeline.networks.factory import NETWORKS, build_network
from pipeline.networks.unetpp import UNetPlusPlusEfficientNet

__all__ = ["NETWORKS", "UNetPlusPlusEfficientNet", "build_network"]
