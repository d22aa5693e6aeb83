"""Refine blocks applied after a node's fusion, and the block table the graph engine builds from."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from necklace.checks import check_keys, describe_value
from necklace.layers.conv import (
    ACTS,
    NORMS,
    ConvCfg,
    ConvNormAct,
    DepthwiseSeparableConv,
    SeparableConv,
    _choices_error,
)
from necklace.layers.rep import BepC3, GhostConv, RepBlock, RepConv, require_bn
from necklace.layers.rfa import ResidualFeatureAugmentation
from necklace.options import OptionRule, OptionSpec, check_options, options_from_signature
from necklace.spec import MAX_CHANNELS

__all__ = [
    "BLOCKS",
    "BLOCK_RULES",
    "Bottleneck",
    "C2f",
    "C3k2",
    "CSPBlock",
    "ELANBlock",
    "block_arg_specs",
    "build_block",
    "check_block_args",
    "check_block_channels",
]


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


_COUNT = OptionRule(ge=1, le=128)
_KERNEL = OptionRule(ge=1, le=31, odd=True)
_EXPANSION = OptionRule(gt=0, le=16)
_WIDTH = OptionRule(ge=1, le=MAX_CHANNELS)
#: choices and ranges of the blocks' arguments (their types come from the builders' signatures in :data:`BLOCKS`)
BLOCK_RULES: dict[str, dict[str, OptionRule]] = {
    "conv": {"kernel": _KERNEL},
    "separable": {"kernel": _KERNEL},
    "c2f": {"n": _COUNT, "expansion": _EXPANSION},
    "c3k2": {"n": _COUNT, "expansion": _EXPANSION},
    "csp": {"n": _COUNT, "expansion": _EXPANSION, "kernel": _KERNEL},
    "repconv": {"groups": _WIDTH},
    "rep_block": {"n": _COUNT},
    "bep_c3": {"n": _COUNT, "expansion": _EXPANSION, "basic": OptionRule(choices=("repconv", "conv"))},
    "ghost": {"kernel": _KERNEL},
    "elan": {
        "stages": _COUNT,
        "depth": _COUNT,
        "expansion": _EXPANSION,
        "basic": OptionRule(choices=("conv", "repconv")),
    },
    "rfa": {"ratios": OptionRule(gt=0, le=1), "hidden": _WIDTH},
}
#: block_args every block takes: per-node overrides of the graph's conv ``norm`` / ``act``
_OVERRIDES = (
    OptionSpec("norm", "str | None", None, choices=NORMS, hint=str | None),
    OptionSpec("act", "str | None", None, choices=tuple(ACTS), hint=str | None),
)


@functools.cache
def block_arg_specs(name: str) -> tuple[OptionSpec, ...]:
    """The typed ``block_args`` of block ``name`` (see :data:`BLOCKS`): its builder's keyword parameters with the
    :data:`BLOCK_RULES` declared for them, plus the ``norm`` / ``act`` overrides.

    Example:
        >>> [s.describe() for s in block_arg_specs("conv")]
        ['kernel: int = 3 (>= 1, <= 31, odd)', 'act_first: bool = False', "norm: str | None = None ('bn' | 'gn')", ...]
    """
    if name not in BLOCKS:
        raise _choices_error("block", name, list(BLOCKS))
    return (*options_from_signature(BLOCKS[name], BLOCK_RULES.get(name), skip=3), *_OVERRIDES)


def check_block_args(name: str, args: Mapping[str, Any], owner: str | None = None) -> dict[str, Any]:
    """``args`` checked against :func:`block_arg_specs`: unknown keys (``kernal``) name the valid ones and the
    closest; wrong types (``kernel: 3.0``, ``shortcut: "no"``) and values (an even ``kernel``, ``n: 0``) raise
    ``TypeError`` / ``ValueError``. NumPy numbers become Python numbers.

    Example:
        >>> check_block_args("conv", {"kernel": 2}, "node 'P3'")
        Traceback (most recent call last):
        ...
        ValueError: node 'P3' block 'conv' option kernel must be odd (1, 3, 5, ...: 'same' padding keeps each map ...
    """
    label = f"{owner} block {name!r}" if owner else f"block {name!r}"
    if not isinstance(args, Mapping):
        raise TypeError(f"{label}: block_args must be a dict, got {describe_value(args)}. Example: {{kernel: 3}}.")
    specs = block_arg_specs(name)
    check_keys(args, [s.name for s in specs], f"{label}: block_args")
    return check_options(label, specs, args)


def _hidden(out_channels: int, expansion: float) -> int:
    return int(out_channels * expansion)


def check_block_channels(
    name: str, in_channels: int, out_channels: int, args: Mapping[str, Any], cfg: ConvCfg, owner: str
) -> None:
    """Refuse, before any module is built, a block that cannot map ``in_channels -> out_channels`` with ``args``
    (checked by :func:`check_block_args`): no hidden channel left by ``expansion``, GhostConv's odd width, RepConv
    groups that do not divide the channels, a re-parameterisable block without BatchNorm."""
    label = f"{owner}: block {name!r} ({in_channels} -> {out_channels} channels)"
    exp = float(args.get("expansion", 0.5))
    need: list[tuple[str, int]] = []
    if name in ("c2f", "c3k2", "csp", "bep_c3"):
        need.append((f"hidden width int({out_channels} * expansion {exp:g})", _hidden(out_channels, exp)))
    if name == "c3k2":
        c = _hidden(out_channels, exp)
        need.append((f"inner bottleneck width int({c} * 0.5)", _hidden(c, 0.5)))
    for what, width in need:
        if width < 1:
            raise ValueError(
                f"{label}: the {what} is {width}; widen the node (channels) or raise expansion so that it is >= 1."
            )
    if name == "ghost" and out_channels % 2:
        raise ValueError(f"{label}: GhostConv makes two halves, so the node's channels must be even.")
    groups = int(args.get("groups", 1))
    if name == "repconv" and (in_channels % groups or out_channels % groups):
        raise ValueError(f"{label}: groups={groups} must divide both channel counts.")
    rep = name in ("repconv", "rep_block") or (name == "bep_c3" and args.get("basic", "repconv") == "repconv")
    rep = rep or (name == "elan" and args.get("basic") == "repconv")
    if rep:
        require_bn(cfg.with_(**{k: args[k] for k in ("norm", "act") if k in args}), label)


def build_block(name: str, in_channels: int, out_channels: int, cfg: ConvCfg, **args: Any) -> nn.Module:
    """Build the refine block ``name`` (see :data:`BLOCKS`) mapping ``in_channels`` -> ``out_channels``."""
    if name not in BLOCKS:
        raise _choices_error("block", name, list(BLOCKS))
    checked = check_block_args(name, args)
    return BLOCKS[name](in_channels, out_channels, cfg, **checked)
