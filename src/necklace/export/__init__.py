"""Export a neck to ONNX, OpenVINO IR or TorchScript, checked against PyTorch at the export size and at a second size.

:func:`export_onnx` traces with ``torch.export`` (dynamic batch/height/width per input when ``dynamic=True``),
converts with the dynamo ONNX exporter, runs the file in onnxruntime and compares with the PyTorch model.
:func:`export_openvino` converts that graph to OpenVINO IR and checks it in OpenVINO. :func:`export_torchscript`
traces with ``torch.jit.trace`` and checks the saved file the same way. All deploy a copy first
(:func:`necklace.deploy`: re-parameterise, fold BN, freeze fusion weights), write the file atomically (a temporary
file renamed into place only after the check passed) and return an :class:`ExportReport`.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from necklace.export.common import SECOND_IMAGE_SIZES, ExportError, ExportReport
from necklace.export.onnx import export_onnx
from necklace.export.openvino import export_openvino
from necklace.export.torchscript import export_torchscript

__all__ = [
    "EXPORT_FORMATS",
    "SECOND_IMAGE_SIZES",
    "ExportError",
    "ExportReport",
    "export_model",
    "export_onnx",
    "export_openvino",
    "export_torchscript",
]

#: Formats :func:`export_model` knows, with the file suffixes the CLI infers them from.
EXPORT_FORMATS: dict[str, tuple[str, ...]] = {
    "onnx": (".onnx",),
    "openvino": (".xml",),
    "torchscript": (".pt", ".ts", ".torchscript"),
}


def export_model(model: nn.Module, path: str | os.PathLike[str], format: str = "onnx", **options: Any) -> ExportReport:
    """Export with :func:`export_onnx` (``format="onnx"``), :func:`export_openvino` (``"openvino"``) or
    :func:`export_torchscript` (``"torchscript"``).

    Example:
        >>> export_model(nn.Identity(), "x.onnx", format="tflite")
        Traceback (most recent call last):
        ...
        ValueError: unknown export format 'tflite'; choose one of ['onnx', 'openvino', 'torchscript'].
    """
    if format == "onnx":
        return export_onnx(model, path, **options)
    if format == "openvino":
        return export_openvino(model, path, **options)
    if format == "torchscript":
        return export_torchscript(model, path, **options)
    raise ValueError(f"unknown export format {format!r}; choose one of {sorted(EXPORT_FORMATS)}.")
