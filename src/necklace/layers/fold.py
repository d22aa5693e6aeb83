"""BatchNorm folding: one conv equal to ``bn(conv(x))`` (eval-mode statistics), the deploy-time building block of
:meth:`necklace.layers.ConvNormAct.fuse`, :class:`necklace.layers.RepConv` and :func:`necklace.deploy.fuse_conv_bn`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: F401  (the doctest uses it)
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["fold_bn", "fold_bn_into_conv"]


def fold_bn(conv_weight: Tensor, conv_bias: Tensor | None, bn: _BatchNorm) -> tuple[Tensor, Tensor]:
    """Return ``(weight, bias)`` of one conv equal to ``bn(conv(x))`` with ``bn`` in eval mode.

    ``W' = W * g / sqrt(var + eps)`` per output channel and ``b' = (b - mean) * g / sqrt(var + eps) + beta``,
    using the BN's own ``eps`` and running statistics (computed in float64, returned in the weight's dtype).

    Example:
        >>> conv, bn = nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8).eval()
        >>> bn.running_var.fill_(4.0)  # doctest: +ELLIPSIS
        tensor(...)
        >>> w, b = fold_bn(conv.weight, None, bn)
        >>> x = torch.randn(1, 4, 5, 7)
        >>> torch.allclose(F.conv2d(x, w, b, padding=1), bn(conv(x)), atol=1e-6)
        True
    """
    if not isinstance(bn, _BatchNorm):
        raise TypeError(f"fold_bn expects a BatchNorm module, got {type(bn).__name__}.")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"{type(bn).__name__}(track_running_stats=False) normalises with batch statistics even in eval(); "
            "it has no running statistics to fold into a conv."
        )
    if conv_weight.shape[0] != bn.num_features:
        raise ValueError(f"conv has {conv_weight.shape[0]} output channels but the BN has {bn.num_features}.")
    with torch.no_grad():
        dt = torch.float64
        mean, var = bn.running_mean.to(dt), bn.running_var.to(dt)
        gamma = bn.weight.to(dt) if bn.weight is not None else torch.ones_like(mean)
        beta = bn.bias.to(dt) if bn.bias is not None else torch.zeros_like(mean)
        scale = gamma / torch.sqrt(var + bn.eps)
        bias = conv_bias.to(dt) if conv_bias is not None else torch.zeros_like(mean)
        weight = conv_weight.to(dt) * scale.reshape(-1, *([1] * (conv_weight.dim() - 1)))
        bias = (bias - mean) * scale + beta
    return weight.to(conv_weight.dtype), bias.to(conv_weight.dtype)


def fold_bn_into_conv(conv: nn.Conv2d, bn: _BatchNorm) -> None:
    """Fold ``bn`` into ``conv`` in place: the weight is rescaled and the conv gains (or updates) a bias.

    The caller replaces ``bn`` by ``nn.Identity`` afterwards. ``conv.weight`` keeps its identity as a parameter.
    """
    weight, bias = fold_bn(conv.weight, conv.bias, bn)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if conv.bias is None:
            conv.bias = nn.Parameter(bias)
        else:
            conv.bias.copy_(bias)
