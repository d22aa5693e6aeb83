"""Counting: parameters, and FLOPs / MACs of convolutions and matrix multiplies (torch's FlopCounterMode)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (shared parameters counted once).

    Example:
        >>> count_params(nn.Conv2d(3, 4, 3))  # 3*4*9 weights + 4 biases
        112
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _forward(module: nn.Module, inputs: Any) -> Any:
    return module(inputs)


def count_flops(module: nn.Module, inputs: Any) -> int:
    """FLOPs of one ``module(inputs)`` call as torch counts them: ``2 x MACs`` of convs and matmuls.

    ``inputs`` is passed as the single positional argument (a tensor, or a list of maps for a neck).
    Element-wise ops, pooling and interpolation are not counted. Runs under ``no_grad`` in the module's
    current train/eval mode. Convs count their nominal (direct) MACs, so GMAC/s compares algorithms on the same
    work (count a plain or torch-deployed model: a native-deployed one counts what its kernels run).

    Example:
        >>> conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        >>> count_flops(conv, torch.zeros(1, 8, 10, 12)) == 2 * 8 * 16 * 9 * 10 * 12
        True
    """
    return count_call_flops(lambda: _forward(module, inputs))


def count_call_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one ``fn()`` call under ``no_grad``, as :func:`count_flops` counts them (convs and matmuls).

    For callables that are not ``module(inputs)``, e.g. a peer library's neck called with its own input type.

    Example:
        >>> conv = nn.Conv2d(8, 16, 1, bias=False)
        >>> count_call_flops(lambda: conv(torch.zeros(1, 8, 4, 4))) == 2 * 8 * 16 * 4 * 4
        True
    """
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    return int(counter.get_total_flops())


def count_macs(module: nn.Module, inputs: Any) -> int:
    """Multiply-accumulates of one ``module(inputs)`` call: ``count_flops(...) // 2``."""
    return count_flops(module, inputs) // 2
