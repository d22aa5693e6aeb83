"""Refine blocks applied after a node's fusion, and the block table the graph engine builds from."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from necklace.layers.conv import (
    ConvCfg,
    ConvNormAct,
    DepthwiseSeparableConv,
    SeparableConv,
    _choices_error,
)
from necklace.layers.rep import BepC3, GhostConv, RepBlock, RepConv, require_bn
from necklace.layers.rfa import ResidualFeatureAugmentation

__all__ = ["BLOCKS", "Bottleneck", "C2f", "C3k2", "CSPBlock", "ELANBlock", "build_block"]


class Bottleneck(nn.Module):
    """Two convs (``k[0]`` then ``k[1]``) with a residual add when ``shortcut`` and shapes allow.

    ``depthwise=True`` makes the second conv a :class:`DepthwiseSeparableConv` (PicoDet / YOLOX depthwise).

    Example:
        >>> Bottleneck(32, 32)(torch.zeros(1, 32, 5, 7)).shape
        torch.Size([1, 32, 5, 7])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        shortcut: bool = True,
        kernels: tuple[int, int] = (3, 3),
        expansion: float = 0.5,
        cfg: ConvCfg | None = None,
        depthwise: bool = False,
    ) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.cv1 = ConvNormAct(in_channels, hidden, kernels[0], cfg=cfg)
        self.cv2: nn.Module
        if depthwise:
            self.cv2 = DepthwiseSeparableConv(hidden, out_channels, kernels[1], cfg=cfg)
        else:
            self.cv2 = ConvNormAct(hidden, out_channels, kernels[1], cfg=cfg)
        self.add = shortcut and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """YOLOv8's C2f: 1x1 to ``2c``, split, ``n`` bottlenecks on the second half keeping every
    intermediate, concat ``(2 + n) c`` and 1x1 to ``out_channels`` (``c = out_channels * expansion``).

    Example:
        >>> C2f(96, 64, n=2)(torch.zeros(1, 96, 9, 13)).shape
        torch.Size([1, 64, 9, 13])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n: int = 1,
        shortcut: bool = False,
        expansion: float = 0.5,
        cfg: ConvCfg | None = None,
    ) -> None:
        super().__init__()
        self.c = int(out_channels * expansion)
        self.cv1 = ConvNormAct(in_channels, 2 * self.c, 1, cfg=cfg)
        self.cv2 = ConvNormAct((2 + n) * self.c, out_channels, 1, cfg=cfg)
        self.m = nn.ModuleList(self._inner(self.c, shortcut, cfg) for _ in range(n))

    def _inner(self, c: int, shortcut: bool, cfg: ConvCfg | None) -> nn.Module:
        """One of the ``n`` blocks on the second half (``c -> c`` channels)."""
        return Bottleneck(c, c, shortcut, (3, 3), 1.0, cfg)

    def forward(self, x: Tensor) -> Tensor:
        return self.tail(self.cv1(x))

    @property
    def head(self) -> ConvNormAct:
        """The 1x1 conv that reads the whole input (``cv1``): ``forward(x) == tail(head(x))``.

        Declared for node rewrites (the native CPU runtime runs the head per part of a concatenated input, so the
        concatenation is never built: :mod:`necklace.deploy.native.nodes`)."""
        return self.cv1

    def tail(self, y: Tensor) -> Tensor:
        """Everything after ``cv1``: ``y`` is its output (``2c`` channels, split into two halves)."""
        parts = [y]
        h = y[:, self.c :]
        for m in self.m:
            h = m(h)
            parts.append(h)
        return self.merge(parts)

    def merge(self, parts: list[Tensor]) -> Tensor:
        """``cv2`` over the concatenation of ``cv1``'s output and every inner block's: (N, out_channels, H, W)."""
        return self.cv2(torch.cat(parts, dim=1))


class C3k2(C2f):
    """YOLO11's C3k2: a :class:`C2f` whose ``n`` inner blocks are bottlenecks of half width (3x3 ``c -> c/2``,
    3x3 ``c/2 -> c``, residual with ``shortcut``) or, with ``c3k``, C3k blocks (a :class:`CSPBlock` of two 3x3 + 3x3
    residual bottlenecks at ``c/2``). Same split / concat / 1x1 structure as C2f, so the same inference path (the
    final concatenation runs as accumulated GEMMs).

    Example:
        >>> C3k2(96, 64, n=1)(torch.zeros(1, 96, 9, 13)).shape
        torch.Size([1, 64, 9, 13])
        >>> type(C3k2(96, 64, n=1, c3k=True).m[0]).__name__
        'CSPBlock'
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n: int = 1,
        c3k: bool = False,
        shortcut: bool = True,
        expansion: float = 0.5,
        cfg: ConvCfg | None = None,
    ) -> None:
        self.c3k = c3k  # (a plain attribute: set before nn.Module.__init__, read by _inner during it)
        super().__init__(in_channels, out_channels, n, shortcut, expansion, cfg)

    def _inner(self, c: int, shortcut: bool, cfg: ConvCfg | None) -> nn.Module:
        if self.c3k:
            return CSPBlock(c, c, 2, shortcut, 0.5, cfg, kernel=3, first_kernel=3)
        return Bottleneck(c, c, shortcut, (3, 3), 0.5, cfg)


class CSPBlock(nn.Module):
    """CSP (YOLOv5 C3 / YOLOX CSPLayer): two 1x1 branches, ``n`` bottlenecks on one, concat, 1x1.

    Each bottleneck is a 1x1 (``first_kernel``) then a ``kernel`` x ``kernel`` conv, depthwise-separable with
    ``depthwise=True`` (PP-PicoDet's CSP-PAN: ``kernel=5, depthwise=True``; YOLO11's C3k: ``first_kernel=3``).

    Example:
        >>> CSPBlock(96, 64, n=1)(torch.zeros(1, 96, 9, 13)).shape
        torch.Size([1, 64, 9, 13])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n: int = 1,
        shortcut: bool = False,
        expansion: float = 0.5,
        cfg: ConvCfg | None = None,
        kernel: int = 3,
        depthwise: bool = False,
        first_kernel: int = 1,
    ) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.cv1 = ConvNormAct(in_channels, hidden, 1, cfg=cfg)
        self.cv2 = ConvNormAct(in_channels, hidden, 1, cfg=cfg)
        self.cv3 = ConvNormAct(2 * hidden, out_channels, 1, cfg=cfg)
        self.m = nn.Sequential(
            *(Bottleneck(hidden, hidden, shortcut, (first_kernel, kernel), 1.0, cfg, depthwise) for _ in range(n))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


class ELANBlock(nn.Module):
    """ELAN (YOLOv7): two 1x1 branches; ``stages`` chains of ``depth`` 3x3 convs on the second one, every chain's
    output kept; concat ``(2 + stages)`` maps of ``hidden`` channels and 1x1 to ``out_channels``.

    ``basic='repconv'`` builds the 3x3 convs as :class:`RepConv` (re-parameterisable; needs BN), the
    re-parameterised ELAN of YOLOv6/YOLOv7 deploy forms.

    Example:
        >>> ELANBlock(64, 32, stages=2)(torch.zeros(1, 64, 9, 13)).shape
        torch.Size([1, 32, 9, 13])
        >>> m = ELANBlock(32, 32, basic="repconv", cfg=ConvCfg(norm="bn", act="relu"))
        >>> sum(isinstance(c, RepConv) for c in m.modules())
        4
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stages: int = 2,
        depth: int = 2,
        expansion: float = 0.5,
        basic: str = "conv",
        cfg: ConvCfg | None = None,
    ) -> None:
        super().__init__()
        if basic not in ("conv", "repconv"):
            raise ValueError(f"ELANBlock basic must be 'conv' or 'repconv', got {basic!r}.")
        if stages < 1 or depth < 1:
            raise ValueError(f"ELANBlock needs stages >= 1 and depth >= 1, got stages={stages}, depth={depth}.")
        cfg = cfg or ConvCfg()
        hidden = max(int(out_channels * expansion), 1)
        self.cv1 = ConvNormAct(in_channels, hidden, 1, cfg=cfg)
        self.cv2 = ConvNormAct(in_channels, hidden, 1, cfg=cfg)

        def conv3() -> nn.Module:
            return RepConv(hidden, hidden, cfg=cfg) if basic == "repconv" else ConvNormAct(hidden, hidden, 3, cfg=cfg)

        self.stages = nn.ModuleList(nn.Sequential(*(conv3() for _ in range(depth))) for _ in range(stages))
        self.cv3 = ConvNormAct((2 + stages) * hidden, out_channels, 1, cfg=cfg)

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv1(x), self.cv2(x)]
        for stage in self.stages:
            y.append(stage(y[-1]))
        return self.cv3(torch.cat(y, dim=1))


def _identity(in_channels: int, out_channels: int, cfg: ConvCfg) -> nn.Module:
    if in_channels != out_channels:
        raise ValueError(
            f"block 'identity' cannot change channels ({in_channels} -> {out_channels}); use block 'conv' "
            "or make the node's channels equal to its fused input channels."
        )
    return nn.Identity()


def _conv(in_channels: int, out_channels: int, cfg: ConvCfg, kernel: int = 3, act_first: bool = False) -> nn.Module:
    return ConvNormAct(in_channels, out_channels, kernel, cfg=cfg, act_first=act_first)


def _separable(
    in_channels: int,
    out_channels: int,
    cfg: ConvCfg,
    kernel: int = 3,
    act_first: bool = False,
    pw_bias: bool | None = None,
) -> nn.Module:
    return SeparableConv(in_channels, out_channels, kernel, cfg=cfg, act_first=act_first, pw_bias=pw_bias)


def _c2f(
    in_channels: int, out_channels: int, cfg: ConvCfg, n: int = 1, shortcut: bool = False, expansion: float = 0.5
) -> nn.Module:
    return C2f(in_channels, out_channels, n, shortcut, expansion, cfg)


def _c3k2(
    in_channels: int,
    out_channels: int,
    cfg: ConvCfg,
    n: int = 1,
    c3k: bool = False,
    shortcut: bool = True,
    expansion: float = 0.5,
) -> nn.Module:
    return C3k2(in_channels, out_channels, n, c3k, shortcut, expansion, cfg)


def _csp(
    in_channels: int,
    out_channels: int,
    cfg: ConvCfg,
    n: int = 1,
    shortcut: bool = False,
    expansion: float = 0.5,
    kernel: int = 3,
    depthwise: bool = False,
) -> nn.Module:
    return CSPBlock(in_channels, out_channels, n, shortcut, expansion, cfg, kernel, depthwise)


def _repconv(
    in_channels: int, out_channels: int, cfg: ConvCfg, groups: int = 1, identity: bool = True, alpha: bool = False
) -> nn.Module:
    require_bn(cfg, "block 'repconv'")
    return RepConv(in_channels, out_channels, 1, groups, cfg, identity, alpha)


def _rep_block(
    in_channels: int, out_channels: int, cfg: ConvCfg, n: int = 1, identity: bool = True, alpha: bool = False
) -> nn.Module:
    require_bn(cfg, "block 'rep_block'")
    return RepBlock(in_channels, out_channels, n, cfg, identity, alpha)


def _bep_c3(
    in_channels: int,
    out_channels: int,
    cfg: ConvCfg,
    n: int = 1,
    expansion: float = 0.5,
    basic: str = "repconv",
    alpha: bool = True,
) -> nn.Module:
    if basic == "repconv":
        require_bn(cfg, "block 'bep_c3'")
    return BepC3(in_channels, out_channels, n, expansion, cfg, basic, alpha)


def _ghost(in_channels: int, out_channels: int, cfg: ConvCfg, kernel: int = 1) -> nn.Module:
    return GhostConv(in_channels, out_channels, kernel, cfg=cfg)


def _elan(
    in_channels: int,
    out_channels: int,
    cfg: ConvCfg,
    stages: int = 2,
    depth: int = 2,
    expansion: float = 0.5,
    basic: str = "conv",
) -> nn.Module:
    if basic == "repconv":
        require_bn(cfg, "block 'elan' with basic='repconv'")
    return ELANBlock(in_channels, out_channels, stages, depth, expansion, basic, cfg)


def _rfa(
    in_channels: int,
    out_channels: int,
    cfg: ConvCfg,
    ratios: tuple[float, ...] | list[float] = (0.1, 0.2, 0.3),
    hidden: int | None = None,
) -> nn.Module:
    # AugFPN residual feature augmentation: plain convs with bias + ReLU as in the official code (cfg unused)
    return ResidualFeatureAugmentation(in_channels, out_channels, tuple(ratios), hidden)


#: name -> builder(in_channels, out_channels, cfg, **block_args)
BLOCKS: dict[str, Callable[..., nn.Module]] = {
    "identity": _identity,
    "conv": _conv,
    "separable": _separable,
    "c2f": _c2f,
    "c3k2": _c3k2,
    "csp": _csp,
    "repconv": _repconv,
    "rep_block": _rep_block,
    "bep_c3": _bep_c3,
    "ghost": _ghost,
    "elan": _elan,
    "rfa": _rfa,
}


def build_block(name: str, in_channels: int, out_channels: int, cfg: ConvCfg, **args: Any) -> nn.Module:
    """Build the refine block ``name`` (see :data:`BLOCKS`) mapping ``in_channels`` -> ``out_channels``."""
    if name not in BLOCKS:
        raise _choices_error("block", name, list(BLOCKS))
    try:
        return BLOCKS[name](in_channels, out_channels, cfg, **args)
    except TypeError as e:
        raise TypeError(f"block {name!r} got bad arguments {args}: {e}") from None
