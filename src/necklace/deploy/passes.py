"""The torch runtime's transformations: re-parameterise, fold Conv+BatchNorm, freeze fusion weights; and the
helpers every runtime shares (example inputs, output comparison).

Each is an explicit module transformation (DESIGN habit 8); ``forward`` is never patched. They fold *running*
BatchNorm statistics, so the model must be in ``eval()`` mode first: forgetting it is the most reported "train vs
deploy mismatch" with RepVGG-style models.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from necklace.layers.conv import ConvNormAct, SeparableConv
from necklace.layers.fold import fold_bn_into_conv
from necklace.layers.fuse import Fuse
from necklace.spec import FeatureSpec

__all__ = [
    "EXAMPLE_IMAGE_SIZE",
    "check_outputs",
    "example_pyramid",
    "freeze_fusions",
    "fuse_conv_bn",
    "reparameterize",
    "torch_deploy",
]

#: Image size the automatic example pyramid is derived from: odd in both directions on purpose.
EXAMPLE_IMAGE_SIZE = (97, 131)


def _require_eval(model: nn.Module, what: str) -> None:
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            f"{what}: the model is in training mode ({len(training)} module(s), e.g. {training[0]!r}); "
            "call model.eval() first: BN folding uses running statistics."
        )


def reparameterize(model: nn.Module) -> int:
    """Call ``reparameterize()`` on every submodule that has one (in place); return how many were called.

    Works for necklace's :class:`~necklace.layers.RepConv` / :class:`~necklace.layers.RepBlock` and for
    third-party blocks with the same method (timm ``RepVggBlock``, MobileOne, ...).
    """
    count = 0
    for m in list(model.modules()):
        fn = getattr(m, "reparameterize", None)
        if callable(fn):
            fn()
            count += 1
    return count


def _fold_all(model: nn.Module) -> int:
    count = 0
    for m in list(model.modules()):
        if isinstance(m, (ConvNormAct, SeparableConv)):
            count += int(m.fuse())
        elif isinstance(m, nn.Sequential):
            children = list(m.named_children())
            for (_, conv), (bn_name, bn) in itertools.pairwise(children):
                if (
                    isinstance(conv, nn.Conv2d)
                    and isinstance(bn, _BatchNorm)
                    and bn.running_mean is not None
                    and bn.num_features == conv.out_channels
                ):
                    fold_bn_into_conv(conv, bn)
                    setattr(m, bn_name, nn.Identity().train(bn.training))
                    count += 1
    return count


def fuse_conv_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every BatchNorm that follows a conv into that conv's weight and bias; return the fused model.

    Folds :class:`~necklace.layers.ConvNormAct` (conv + BN), :class:`~necklace.layers.SeparableConv` (pointwise
    conv + BN) via their explicit ``fuse()`` methods, and ``nn.Conv2d`` directly followed by a BatchNorm inside an
    ``nn.Sequential``. Each folded BN becomes ``nn.Identity``. Works on a deep copy unless ``inplace=True``.
    The model must be in ``eval()`` mode.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU()).eval()
        >>> fused = fuse_conv_bn(m)
        >>> [type(c).__name__ for c in fused], fused[0].bias is not None
        (['Conv2d', 'Identity', 'ReLU'], True)
    """
    _require_eval(model, "fuse_conv_bn")
    if not inplace:
        model = copy.deepcopy(model)
    with torch.no_grad():
        _fold_all(model)
    return model


def freeze_fusions(model: nn.Module) -> int:
    """Freeze every weighted :class:`~necklace.layers.Fuse` (fast / softmax) into constant buffers; return how
    many were frozen (in place)."""
    count = 0
    for m in model.modules():
        if isinstance(m, Fuse) and m.weight is not None:
            m.freeze()
            count += 1
    return count


def _first_tensor(model: nn.Module) -> Tensor | None:
    for p in model.parameters():
        return p
    for b in model.buffers():
        if b.is_floating_point():
            return b
    return None


def example_pyramid(
    in_specs: tuple[FeatureSpec, ...] | list[FeatureSpec],
    image_size: tuple[int, int] = EXAMPLE_IMAGE_SIZE,
    batch: int = 2,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
) -> list[Tensor]:
    """Random backbone maps for ``in_specs``: ``ceil(H / stride) x ceil(W / stride)`` per level, finest first.

    Example:
        >>> [tuple(t.shape) for t in example_pyramid([FeatureSpec(16, 8), FeatureSpec(32, 16)], batch=1)]
        [(1, 16, 13, 17), (1, 32, 7, 9)]
    """
    g = torch.Generator().manual_seed(seed)
    h, w = image_size
    return [
        torch.randn(batch, s.channels, math.ceil(h / s.stride), math.ceil(w / s.stride), generator=g).to(
            device=device, dtype=dtype
        )
        for s in in_specs
    ]


def _auto_inputs(model: nn.Module) -> tuple[Any, ...] | None:
    specs = getattr(model, "in_specs", None)
    if not isinstance(specs, (tuple, list)) or not specs or not all(isinstance(s, FeatureSpec) for s in specs):
        return None
    ref = _first_tensor(model)
    device = ref.device if ref is not None else None
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else None
    return (example_pyramid(specs, device=device, dtype=dtype),)


def _flatten(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for k in out for t in _flatten(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    return []


def _compare(ref: Any, got: Any) -> tuple[float, float]:
    a, b = _flatten(ref), _flatten(got)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        raise RuntimeError(
            f"deploy: the deployed model's outputs {[tuple(t.shape) for t in b]} do not match the original's "
            f"{[tuple(t.shape) for t in a]}."
        )
    max_abs = max_rel = 0.0
    for x, y in zip(a, b, strict=True):
        if x.numel() == 0:
            continue
        x64, y64 = x.detach().double(), y.detach().double()
        diff = (x64 - y64).abs().max().item()
        scale = x64.abs().max().item()
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else diff)
    return max_abs, max_rel


def torch_deploy(model: nn.Module) -> tuple[nn.Module, tuple[int, int, int]]:
    """The torch runtime's steps on a deep copy of ``model`` (in ``eval()``): :func:`reparameterize`, Conv+BN
    folding, :func:`freeze_fusions`; returns the copy and how many modules each step changed.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)).eval()
        >>> torch_deploy(m)[1]
        (0, 1, 0)
    """
    _require_eval(model, "deploy")
    deployed = copy.deepcopy(model)
    with torch.no_grad():
        counts = (reparameterize(deployed), _fold_all(deployed), freeze_fusions(deployed))
    return deployed.eval(), counts


def check_outputs(model: Any, deployed: Any, inputs: tuple[Any, ...], rtol: float, what: str) -> tuple[float, float]:
    """Compare ``deployed(*inputs)`` with ``model(*inputs)``: ``(max abs, max relative)`` difference, and a
    ``RuntimeError`` naming both when the relative one exceeds ``rtol``."""
    with torch.no_grad():
        max_abs, max_rel = _compare(model(*inputs), deployed(*inputs))
    if not max_rel <= rtol:
        raise RuntimeError(
            f"{what}: the deployed model differs from the original: max abs diff {max_abs:.3g}, max relative diff "
            f"{max_rel:.3g} > rtol {rtol:g}. A block may change behaviour when fused (e.g. a custom "
            "reparameterize()), or the precision is too low for this rtol."
        )
    return max_abs, max_rel
