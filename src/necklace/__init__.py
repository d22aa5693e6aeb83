"""necklace: object-detection necks (FPN, PAFPN, BiFPN, YOLO PAFPN, ...) on one graph engine.

Example:
    >>> import torch, necklace
    >>> specs = [necklace.FeatureSpec(512, 8), necklace.FeatureSpec(1024, 16), necklace.FeatureSpec(2048, 32)]
    >>> neck = necklace.build_neck("fpn", specs, width=256)
    >>> feats = [torch.randn(1, s.channels, 97 // s.stride + 1, 131 // s.stride + 1) for s in specs]
    >>> [tuple(o.shape) for o in neck(feats)]
    [(1, 256, 13, 17), (1, 256, 7, 9), (1, 256, 4, 5), (1, 256, 2, 3)]
"""

import necklace.necks  # noqa: F401  (registers the built-in necks, eagerly: before any user registration)
from necklace.deploy import DeployReport, available_runtimes, deploy
from necklace.deploy.compiled import CompileReport, compile_model
from necklace.export import ExportReport, export_onnx, export_openvino, export_torchscript
from necklace.graph import Edge, GraphNeck, NeckGraph, Node
from necklace.layers.conv import ConvCfg
from necklace.registry import NeckInfo, build_neck, list_necks, neck_info, register_neck
from necklace.spec import FeatureSpec

__version__ = "0.1.0"

__all__ = [
    "CompileReport",
    "ConvCfg",
    "DeployReport",
    "Edge",
    "ExportReport",
    "FeatureSpec",
    "GraphNeck",
    "NeckGraph",
    "NeckInfo",
    "Node",
    "__version__",
    "available_runtimes",
    "build_neck",
    "compile_model",
    "deploy",
    "export_onnx",
    "export_openvino",
    "export_torchscript",
    "list_necks",
    "neck_info",
    "register_neck",
]
