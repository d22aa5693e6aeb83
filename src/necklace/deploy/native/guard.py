"""When the native runtime's inference paths may run: never under autograd, tracing, scripting, compiling,
exporting or CPU autocast. Then every native module computes exactly what its plain PyTorch form computes.

Example:
    >>> import torch
    >>> with torch.no_grad():
    ...     inference_paths_off()
    False
    >>> inference_paths_off()  # autograd on
    True
"""

from __future__ import annotations

import torch

from necklace.spec import _is_tracing

__all__ = ["inference_paths_off"]


def _autocast_on() -> bool:
    """CPU autocast (bfloat16/float16) on: the native ops would be cast piecemeal, so the plain ops run."""
    try:
        return bool(torch.is_autocast_enabled("cpu"))
    except TypeError:  # older torch: no device argument
        return bool(torch.is_autocast_cpu_enabled())


def _is_exporting() -> bool:
    exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(torch.onnx.is_in_onnx_export() or (exporting is not None and exporting()))


def inference_paths_off() -> bool:
    """Whether the native inference paths must not run now: autograd on, tracing / scripting / compiling /
    exporting, or CPU autocast."""
    return torch.is_grad_enabled() or _is_tracing() or _is_exporting() or _autocast_on()
