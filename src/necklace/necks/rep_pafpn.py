"""YOLOv6 RepPAN (Li et al., 2022): 1x1-reduced, transposed-conv top-down path and a bottom-up path of RepBlocks.

The neck of YOLOv6 v1/v2 (``RepPANNeck``; mmyolo ``YOLOv6RepPAFPN``), and with ``preset='m'``/``'l'`` its CSP
form (``CSPRepPANNeck``; mmyolo ``YOLOv6CSPRepPAFPN``) whose stage blocks are :class:`~necklace.layers.BepC3`.
Every stage block re-parameterises: :func:`necklace.deploy` folds each RepVGG block into one 3x3 conv.
:mod:`necklace.necks.rep_bifpan` (YOLOv6 v3) reuses this module's presets and node builder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from necklace.checks import as_float, as_int
from necklace.graph import Edge, GraphNeck, NeckGraph, Node, input_name
from necklace.layers.conv import ConvCfg
from necklace.necks.common import ACT, COUNT, MOMENTUM, MULTIPLIER, POSITIVE, UP, WIDTH
from necklace.options import OptionRule
from necklace.registry import register_neck
from necklace.spec import FeatureSpec, validate_in_specs

__all__ = [
    "REP_PAFPN_KNOBS",
    "YOLOV6_PRESETS",
    "YOLOV6_RULES",
    "YoloV6Preset",
    "rep_pafpn",
    "rep_pafpn_graph",
    "yolov6_pan_nodes",
    "yolov6_widths",
]

REP_PAFPN_KNOBS = (
    "preset (t|n|s|m|l)",
    "depth",
    "width",
    "repeats",
    "channels",
    "block (rep_block|bep_c3)",
    "upsample (transposed|nearest|bilinear)",
    "act",
)


@dataclass(frozen=True)
class YoloV6Preset:
    """YOLOv6 compound scaling plus the stage block: ``depth`` scales the repeats, ``width`` the channels.

    ``block`` is ``rep_block`` (RepVGG blocks, N/T/S) or ``bep_c3`` (CSP of BottleReps, M/L) with its hidden
    ``expansion``, ``basic`` block (``repconv`` or plain ``conv``) and activation ``block_act``. The reduce,
    downsample and BiFusion convs are Conv-BN-ReLU in every size (YOLOv6 hard-codes them).

    Example:
        >>> YOLOV6_PRESETS["n"].width, YOLOV6_PRESETS["m"].block
        (0.25, 'bep_c3')
    """

    depth: float
    width: float
    block: str = "rep_block"
    expansion: float = 0.5
    basic: str = "repconv"
    block_act: str = "relu"


#: meituan/YOLOv6 configs (``yolov6{t,n,s,m,l}.py``; mmyolo ``yolov6_*`` and ``yolov6_v3_*``).
YOLOV6_PRESETS: dict[str, YoloV6Preset] = {
    "t": YoloV6Preset(0.33, 0.375),
    "n": YoloV6Preset(0.33, 0.25),
    "s": YoloV6Preset(0.33, 0.50),
    "m": YoloV6Preset(0.60, 0.75, "bep_c3", 2.0 / 3.0, "repconv", "relu"),
    "l": YoloV6Preset(1.00, 1.00, "bep_c3", 0.5, "conv", "silu"),
}

#: base (width 1.0) output channels per level: YOLOv6's P3/P4/P5 neck outputs 128/256/512 (P2/P6 extrapolated).
_BASE = {1: 32, 2: 64, 3: 128, 4: 256, 5: 512, 6: 1024, 7: 1024, 8: 1024}


def _resolve_preset(
    preset: str | None,
    depth: float | None,
    width: float | None,
    block: str | None,
    expansion: float | None,
    basic: str | None,
    block_act: str | None,
) -> YoloV6Preset:
    if preset is not None and preset not in YOLOV6_PRESETS:
        raise ValueError(f"unknown YOLOv6 preset {preset!r}; choose one of {sorted(YOLOV6_PRESETS)} or None.")
    base = YOLOV6_PRESETS[preset] if preset is not None else YoloV6Preset(1.0, 1.0)
    p = YoloV6Preset(
        base.depth if depth is None else as_float(depth, "depth", gt=0),
        base.width if width is None else as_float(width, "width", gt=0),
        base.block if block is None else block,
        base.expansion if expansion is None else as_float(expansion, "expansion", gt=0),
        base.basic if basic is None else basic,
        base.block_act if block_act is None else block_act,
    )
    if p.block not in ("rep_block", "bep_c3"):
        raise ValueError(f"YOLOv6 stage block must be 'rep_block' or 'bep_c3', got {p.block!r}.")
    if p.basic not in ("repconv", "conv"):
        raise ValueError(f"YOLOv6 basic block must be 'repconv' or 'conv', got {p.basic!r}.")
    if p.depth <= 0 or p.width <= 0:
        raise ValueError(f"depth and width multipliers must be positive, got depth={p.depth}, width={p.width}.")
    return p


def yolov6_widths(p: YoloV6Preset, lo: int, hi: int, channels: Sequence[int] | None = None) -> dict[int, int]:
    """Output channels of levels ``lo..hi``: ``ceil(base * width / 8) * 8`` (YOLOv6's ``make_divisible``) or the
    explicit ``channels`` (one per level, finest first)."""
    if channels is not None:
        if isinstance(channels, (int, str)) or len(channels) != hi - lo + 1:
            raise ValueError(f"channels must list one width per output level {lo}..{hi}, got {channels!r}.")
        return {lo + i: as_int(c, f"channels[{i}]", ge=1) for i, c in enumerate(channels)}
    return {level: math.ceil(_BASE[level] * p.width / 8) * 8 for level in range(lo, hi + 1)}


def yolov6_block_args(p: YoloV6Preset, repeats: int) -> tuple[str, dict[str, Any]]:
    """The stage block and its arguments: ``n = max(round(repeats * depth), 1)`` (YOLOv6 ``num_repeats``)."""
    repeats = as_int(repeats, "repeats", ge=1)
    n = max(round(repeats * p.depth), 1) if repeats > 1 else repeats
    if p.block == "rep_block":
        return "rep_block", {"n": n}
    return "bep_c3", {"n": n, "expansion": p.expansion, "basic": p.basic, "act": p.block_act}


def yolov6_pan_nodes(
    in_levels: Sequence[int],
    out_lo: int,
    widths: dict[int, int],
    block: str,
    block_args: dict[str, Any],
    upsample: str,
    bifusion: bool,
) -> tuple[list[Node], list[str]]:
    """Nodes of YOLOv6's RepPAN (``bifusion=False``) or RepBiFPAN (``bifusion=True``) from ``C<top>`` down to
    level ``out_lo`` and back up; returns ``(nodes, output names)``.

    ``R<l>``: 1x1 reduce to the next finer level's width (of ``C<top>``, then of each top-down stage);
    ``T<l>``: stage block on ``concat(up(R<l+1>), C<l>)`` (or, with BiFusion, on ``B<l>`` =
    1x1 of ``concat(up(R<l+1>), 1x1(C<l>), 3x3/2(1x1(C<l-1>)))`` where ``C<l-1>`` exists); ``N<out_lo>`` is the
    finest top-down stage; ``N<l>`` = stage block on ``concat(3x3/2(N<l-1>), R<l>)``.
    """
    top = max(in_levels)
    reduce_args = {"kernel": 1}
    nodes = [Node(f"R{top}", top, (input_name(top),), widths[top - 1], "concat", "conv", reduce_args)]
    for level in range(top - 1, out_lo - 1, -1):
        up = Edge(f"R{level + 1}", up=upsample)
        name = f"N{level}" if level == out_lo else f"T{level}"
        if bifusion and level - 1 in in_levels:
            same = Edge(input_name(level), align="always")
            finer = Edge(input_name(level - 1), align="always", down="conv")
            nodes.append(Node(f"B{level}", level, (up, same, finer), widths[level], "concat", "conv", reduce_args))
            nodes.append(Node(name, level, (f"B{level}",), widths[level], "concat", block, block_args))
        else:
            nodes.append(Node(name, level, (up, input_name(level)), widths[level], "concat", block, block_args))
        if level > out_lo:
            nodes.append(Node(f"R{level}", level, (name,), widths[level - 1], "concat", "conv", reduce_args))
    outs = [f"N{out_lo}"]
    for level in range(out_lo + 1, top + 1):
        down = Edge(f"N{level - 1}", down="conv")
        nodes.append(Node(f"N{level}", level, (down, f"R{level}"), widths[level], "concat", block, block_args))
        outs.append(f"N{level}")
    return nodes, outs


def yolov6_graph(
    in_specs: Sequence[FeatureSpec],
    bifusion: bool,
    min_level: int | None,
    preset: str | None,
    depth: float | None,
    width: float | None,
    repeats: int,
    channels: Sequence[int] | None,
    block: str | None,
    expansion: float | None,
    basic: str | None,
    block_act: str | None,
    upsample: str,
    act: str,
    norm_eps: float,
    norm_momentum: float,
) -> NeckGraph:
    """The shared body of :func:`rep_pafpn_graph` and :func:`~necklace.necks.rep_bifpan_graph`."""
    p = _resolve_preset(preset, depth, width, block, expansion, basic, block_act)
    in_specs = validate_in_specs(in_specs)
    in_levels = [s.level for s in in_specs]
    lo, top = min(in_levels), max(in_levels)
    out_lo = lo if min_level is None else as_int(min_level, "min_level")
    if out_lo not in in_levels or out_lo >= top:
        raise ValueError(
            f"min_level {out_lo} must be a backbone level below the coarsest one: one of {in_levels[:-1]} "
            f"(strides {[s.stride for s in in_specs[:-1]]}); the neck needs at least two levels."
        )
    widths = yolov6_widths(p, out_lo, top, channels)
    stage, stage_args = yolov6_block_args(p, repeats)
    nodes, outs = yolov6_pan_nodes(in_levels, out_lo, widths, stage, stage_args, upsample, bifusion)
    cfg = ConvCfg(norm="bn", act=act, norm_eps=norm_eps, norm_momentum=norm_momentum)
    return NeckGraph(
        in_specs=in_specs,
        nodes=tuple(nodes),
        outputs=tuple(outs),
        conv=cfg,
        align=cfg,
        align_mode="auto",
        up=upsample,
        down="conv",
    )


def rep_pafpn_graph(
    in_specs: Sequence[FeatureSpec],
    preset: str | None = "n",
    depth: float | None = None,
    width: float | None = None,
    repeats: int = 12,
    channels: Sequence[int] | None = None,
    block: str | None = None,
    expansion: float | None = None,
    basic: str | None = None,
    block_act: str | None = None,
    upsample: str = "transposed",
    act: str = "relu",
    norm_eps: float = 1e-3,
    norm_momentum: float = 0.03,
) -> NeckGraph:
    """YOLOv6's RepPAN over any number (>= 2) of backbone levels (C3-C5 in YOLOv6 v1/v2).

    Top-down: ``R5 = 1x1(C5)``, ``T4 = block(concat(up(R5), C4))``, ``R4 = 1x1(T4)``,
    ``N3 = block(concat(up(R4), C3))``; bottom-up: ``N4 = block(concat(3x3/2(N3), R4))``,
    ``N5 = block(concat(3x3/2(N4), R5))`` (the bottom-up path reads the *reduced* maps). ``up`` is a learned 2x2
    stride-2 transposed conv with bias (``upsample='transposed'``, YOLOv6's ``Transpose``). Widths are
    ``ceil(base * width / 8) * 8`` with base 128/256/512 for P3/P4/P5 (``channels`` overrides them); the
    stage block repeats ``max(round(repeats * depth), 1)`` RepVGG blocks (``rep_block``) or is a ``bep_c3``
    (presets m, l). Conv-BN(eps 1e-3)-ReLU elsewhere. YOLOv6-S (``preset='s'`` on 128/256/512 inputs) has
    4,859,968 parameters, equal to mmyolo's ``YOLOv6RepPAFPN``.

    Example:
        >>> g = rep_pafpn_graph([FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)], preset="n")
        >>> [(s.channels, s.stride) for s in g.out_specs]
        [(32, 8), (64, 16), (128, 32)]
    """
    return yolov6_graph(
        in_specs,
        False,
        None,
        preset,
        depth,
        width,
        repeats,
        channels,
        block,
        expansion,
        basic,
        block_act,
        upsample,
        act,
        norm_eps,
        norm_momentum,
    )


#: the options YOLOv6's RepPAN and RepBiFPAN check (see :class:`necklace.options.OptionRule`)
YOLOV6_RULES: dict[str, OptionRule] = {
    "preset": OptionRule(choices=tuple(YOLOV6_PRESETS), what="YOLOv6 preset"),
    "depth": MULTIPLIER,
    "width": MULTIPLIER,
    "repeats": COUNT,
    "channels": WIDTH,
    "block": OptionRule(choices=("rep_block", "bep_c3")),
    "expansion": MULTIPLIER,
    "basic": OptionRule(choices=("repconv", "conv")),
    "block_act": ACT,
    "upsample": UP,
    "act": ACT,
    "norm_eps": POSITIVE,
    "norm_momentum": MOMENTUM,
}


@register_neck(
    "rep_pafpn",
    summary="YOLOv6 RepPAN: 1x1 reduce + transposed-conv up + concat + RepBlock, 3x3/2 conv + concat bottom-up",
    paper="Li et al., YOLOv6: A Single-Stage Object Detection Framework for Industrial Applications, 2022",
    knobs=REP_PAFPN_KNOBS,
    options_from=rep_pafpn_graph,
    rules=YOLOV6_RULES,
    small_options={"width": 0.125, "repeats": 2},
)
def rep_pafpn(in_specs: Sequence[FeatureSpec], **options: object) -> GraphNeck:
    """Build a YOLOv6 RepPAN neck (see :func:`rep_pafpn_graph`).

    Example:
        >>> neck = rep_pafpn([FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)], preset="n")
        >>> feats = [torch.randn(1, 64, 13, 17), torch.randn(1, 128, 7, 9), torch.randn(1, 256, 4, 5)]
        >>> [tuple(o.shape[1:]) for o in neck(feats)]
        [(32, 13, 17), (64, 7, 9), (128, 4, 5)]
    """
    return GraphNeck(rep_pafpn_graph(in_specs, **options))  # type: ignore[arg-type]
