"""Clinical DICOM node: C-STORE in, DICOM SEG out (``lungseg node``)."""

from pipeline.dicom_node.config import (
    ConfigError,
    Destination,
    NodeConfig,
    load_config,
    parse_config,
)
from pipeline.dicom_node.scp import Node, check_node, echo

__all__ = [
    "ConfigError",
    "Destination",
    "Node",
    "NodeConfig",
    "check_node",
    "echo",
    "load_config",
    "parse_config",
]
