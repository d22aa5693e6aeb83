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

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from necklace.spec import _is_tracing

__all__ = ["inference_paths_off", "inference_scope"]

#: per thread: how many :func:`inference_scope` blocks are open (the full check passed at the outermost)
_scope = threading.local()


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
    exporting, or CPU autocast. Inside an :func:`inference_scope` (whose entry checked all of them) only autograd is
    looked at again: nothing starts tracing, exporting or autocast in the middle of a forward."""
    if getattr(_scope, "depth", 0):
        return torch.is_grad_enabled()
    return torch.is_grad_enabled() or _is_tracing() or _is_exporting() or _autocast_on()


@contextmanager
def inference_scope() -> Iterator[bool]:
    """Check once for a whole forward (a native neck's): yields whether the inference paths may run, and while the
    block is open :func:`inference_paths_off` only re-checks autograd (the other checks cost microseconds, and a
    neck's forward makes dozens of them).

    Example:
        >>> with torch.no_grad(), inference_scope() as on:
        ...     on, inference_paths_off()
        (True, False)
    """
    if inference_paths_off():
        yield False
        return
    _scope.depth = getattr(_scope, "depth", 0) + 1
    try:
        yield True
    finally:
        _scope.depth -= 1
