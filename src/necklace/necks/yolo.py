"""The YOLO-family PAFPN (YOLOv8 and YOLO11): concat fusion, C2f / CSP / C3k2 refine blocks, stride-2 conv
downsampling."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from necklace.checks import as_bool, as_float, as_int
from necklace.graph import Edge, GraphNeck, NeckGraph, Node, input_name
from necklace.layers.conv import ConvCfg
from necklace.necks.common import ACT, COUNT, MOMENTUM, MULTIPLIER, POSITIVE, UP, WIDTH
from necklace.options import OptionRule
from necklace.registry import register_neck
from necklace.spec import FeatureSpec, validate_in_specs

__all__ = [
    "YOLO11_KNOBS",
    "YOLO11_PRESETS",
    "YOLO_KNOBS",
    "YOLO_PRESETS",
    "YoloPreset",
    "yolo11_pafpn",
    "yolo11_pafpn_graph",
    "yolo_in_specs",
    "yolo_pafpn",
    "yolo_pafpn_graph",
]

YOLO_KNOBS = ("preset (n|s|m|l|x)", "depth", "width", "max_channels", "block (c2f|csp)", "upsample", "act")
YOLO11_KNOBS = ("preset (n|s|m|l|x)", "depth", "width", "max_channels", "repeats", "c3k", "upsample", "act")


@dataclass(frozen=True)
class YoloPreset:
    """YOLOv8 compound scaling: ``depth`` multiplies block repeats, ``width`` channels (capped).

    Example:
        >>> YOLO_PRESETS["s"]
        YoloPreset(depth=0.33, width=0.5, max_channels=1024)
    """

    depth: float
    width: float
    max_channels: int


#: ultralytics yolov8.yaml ``scales``.
YOLO_PRESETS: dict[str, YoloPreset] = {
    "n": YoloPreset(0.33, 0.25, 1024),
    "s": YoloPreset(0.33, 0.50, 1024),
    "m": YoloPreset(0.67, 0.75, 768),
    "l": YoloPreset(1.00, 1.00, 512),
    "x": YoloPreset(1.00, 1.25, 512),
}

#: ultralytics yolo11.yaml ``scales``.
YOLO11_PRESETS: dict[str, YoloPreset] = {
    "n": YoloPreset(0.50, 0.25, 1024),
    "s": YoloPreset(0.50, 0.50, 1024),
    "m": YoloPreset(0.50, 1.00, 512),
    "l": YoloPreset(1.00, 1.00, 512),
    "x": YoloPreset(1.00, 1.50, 512),
}

#: base (width 1.0) channels of a level's output in YOLOv8 (P3 256, P4 512, P5 1024); P2 128, P6+ 1024.
_BASE = {1: 64, 2: 128, 3: 256, 4: 512, 5: 1024, 6: 1024, 7: 1024, 8: 1024}


def _scale_ch(c: int, p: YoloPreset) -> int:
    return math.ceil(min(c, p.max_channels) * p.width / 8) * 8


#: the backbone's P3-P5 outputs at width 1.0: YOLOv8 256/512/1024, YOLO11 512/512/1024 (its C3k2 stages)
_BACKBONE = {"yolo_pafpn": (256, 512, 1024), "yolo11_pafpn": (512, 512, 1024)}


def yolo_in_specs(name: str, options: Mapping[str, Any]) -> tuple[FeatureSpec, ...]:
    """The P3-P5 ``in_specs`` of the YOLOv8 (``name='yolo_pafpn'``) or YOLO11 backbone of the same scale as the
    options (``preset``, ``width``, ``max_channels``).

    Example:
        >>> [s.channels for s in yolo_in_specs("yolo_pafpn", {"preset": "s"})]
        [128, 256, 512]
        >>> [s.channels for s in yolo_in_specs("yolo11_pafpn", {"preset": "m"})]
        [512, 512, 512]
    """
    presets = YOLO_PRESETS if name == "yolo_pafpn" else YOLO11_PRESETS
    p = _preset(presets, options.get("preset", "n"), None, options.get("width"), options.get("max_channels"))
    chans = [_scale_ch(c, p) for c in _BACKBONE[name]]
    return tuple(FeatureSpec(c, s) for c, s in zip(chans, (8, 16, 32), strict=True))


#: the options both YOLO PAFPNs check (see :class:`necklace.options.OptionRule`)
_RULES: dict[str, OptionRule] = {
    "depth": MULTIPLIER,
    "width": MULTIPLIER,
    "max_channels": WIDTH,
    "repeats": COUNT,
    "upsample": UP,
    "act": ACT,
    "norm_eps": POSITIVE,
    "norm_momentum": MOMENTUM,
}


def yolo_pafpn_graph(
    in_specs: Sequence[FeatureSpec],
    preset: str | None = "n",
    depth: float | None = None,
    width: float | None = None,
    max_channels: int | None = None,
    block: str = "c2f",
    repeats: int = 3,
    upsample: str = "nearest",
    act: str = "silu",
    norm_eps: float = 1e-3,
    norm_momentum: float = 0.03,
) -> NeckGraph:
    """YOLOv8's neck over any number of backbone levels (P3-P5 in the stock model, P2-P5 in yolov8-p2).

    Top-down: ``T_l = block(concat(up(T_{l+1}), C_l))`` (``T_top = C_top``); bottom-up:
    ``N_l = block(concat(conv3x3/2(N_{l-1}), T_l))`` with ``N_top`` reading ``C_top``. Blocks are C2f
    (shortcut off) repeated ``max(round(repeats * depth), 1)`` times; channels are YOLOv8's
    ``ceil(min(c, max_channels) * width / 8) * 8``. Conv-BN(eps 1e-3)-SiLU everywhere.

    Example:
        >>> g = yolo_pafpn_graph([FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)], preset="n")
        >>> [(s.channels, s.stride) for s in g.out_specs]
        [(64, 8), (128, 16), (256, 32)]
    """
    if block not in ("c2f", "csp"):
        raise ValueError(f"yolo_pafpn block must be 'c2f' or 'csp', got {block!r}.")
    p = _preset(YOLO_PRESETS, preset, depth, width, max_channels)
    n = _repeats(as_int(repeats, "repeats", ge=1), p)
    args: dict[str, object] = {"n": n, "shortcut": False}
    return _yolo_graph(
        "yolo_pafpn", in_specs, p, block, lambda name, last: args, upsample, act, norm_eps, norm_momentum
    )


def _repeats(repeats: int, p: YoloPreset) -> int:
    """ultralytics' depth gain: ``max(round(repeats * depth), 1)`` for ``repeats > 1``."""
    return max(round(repeats * p.depth), 1) if repeats > 1 else repeats


def _preset(
    presets: dict[str, YoloPreset], preset: str | None, depth: float | None, width: float | None, mc: int | None
) -> YoloPreset:
    if preset is not None and preset not in presets:
        raise ValueError(f"unknown YOLO preset {preset!r}; choose one of {sorted(presets)} or None.")
    base = presets[preset] if preset is not None else YoloPreset(1.0, 1.0, 1024)
    return YoloPreset(
        base.depth if depth is None else as_float(depth, "depth", gt=0),
        base.width if width is None else as_float(width, "width", gt=0),
        base.max_channels if mc is None else as_int(mc, "max_channels", ge=1),
    )


def _yolo_graph(
    owner: str,
    in_specs: Sequence[FeatureSpec],
    p: YoloPreset,
    block: str,
    block_args: Callable[[str, bool], dict[str, object]],
    upsample: str,
    act: str,
    norm_eps: float,
    norm_momentum: float,
) -> NeckGraph:
    """The YOLOv8 / YOLO11 PAN topology; ``block_args(node name, is the last node)`` gives each block's args."""
    in_specs = validate_in_specs(in_specs)
    if len(in_specs) < 2:
        raise ValueError(f"{owner} needs at least two backbone levels, got strides {[s.stride for s in in_specs]}.")
    levels = [s.level for s in in_specs]
    lo, top = min(levels), max(levels)
    nodes: list[Node] = []
    td = {top: input_name(top)}
    for level in range(top - 1, lo - 1, -1):
        name = f"T{level}" if level > lo else f"N{level}"
        inputs = (Edge(td[level + 1], up=upsample), input_name(level))
        ch = _scale_ch(_BASE[level], p)
        nodes.append(Node(name, level, inputs, ch, "concat", block, block_args(name, False)))
        td[level] = name
    prev = td[lo]
    outs = [prev]
    for level in range(lo + 1, top + 1):
        name = f"N{level}"
        args = block_args(name, level == top)
        nodes.append(
            Node(name, level, (Edge(prev, down="conv"), td[level]), _scale_ch(_BASE[level], p), "concat", block, args)
        )
        prev = name
        outs.append(name)
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


def yolo11_pafpn_graph(
    in_specs: Sequence[FeatureSpec],
    preset: str | None = "n",
    depth: float | None = None,
    width: float | None = None,
    max_channels: int | None = None,
    repeats: int = 2,
    c3k: bool | None = None,
    upsample: str = "nearest",
    act: str = "silu",
    norm_eps: float = 1e-3,
    norm_momentum: float = 0.03,
) -> NeckGraph:
    """YOLO11's neck: YOLOv8's topology (:func:`yolo_pafpn_graph`) with C3k2 blocks (:class:`necklace.layers.
    blocks.C3k2`: residual half-width bottlenecks, or C3k blocks) repeated ``max(round(repeats * depth), 1)``
    times, on YOLO11's scales (:data:`YOLO11_PRESETS`). ``c3k=None`` follows ultralytics: C3k blocks in every node
    for m / l / x, in the last bottom-up node only otherwise; ``True`` / ``False`` sets every node.

    Example:
        >>> g = yolo11_pafpn_graph([FeatureSpec(128, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)], preset="n")
        >>> [(s.channels, s.stride) for s in g.out_specs], [dict(n.block_args)["c3k"] for n in g.nodes]
        ([(64, 8), (128, 16), (256, 32)], [False, False, False, True])
    """
    p = _preset(YOLO11_PRESETS, preset, depth, width, max_channels)
    n = _repeats(as_int(repeats, "repeats", ge=1), p)
    every = as_bool(c3k, "c3k") if c3k is not None else preset in ("m", "l", "x")

    def args(name: str, last: bool) -> dict[str, object]:
        return {"n": n, "c3k": bool(every or (c3k is None and last)), "shortcut": True}

    return _yolo_graph("yolo11_pafpn", in_specs, p, "c3k2", args, upsample, act, norm_eps, norm_momentum)


@register_neck(
    "yolo11_pafpn",
    summary="YOLO11 PAFPN: YOLOv8's topology with C3k2 blocks (residual half-width bottlenecks / C3k in the last)",
    paper="Jocher & Qiu, Ultralytics YOLO11, 2024 (PAN neck of Liu et al., 2018)",
    knobs=YOLO11_KNOBS,
    options_from=yolo11_pafpn_graph,
    rules={**_RULES, "preset": OptionRule(choices=tuple(YOLO11_PRESETS), what="YOLO preset")},
    default_in_specs=lambda options: yolo_in_specs("yolo11_pafpn", options),
    small_options={"width": 0.0625},
)
def yolo11_pafpn(in_specs: Sequence[FeatureSpec], **options: object) -> GraphNeck:
    """Build a YOLO11 PAFPN neck (see :func:`yolo11_pafpn_graph`).

    Example:
        >>> neck = yolo11_pafpn([FeatureSpec(128, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)], preset="n")
        >>> feats = [torch.randn(1, 128, 81, 81), torch.randn(1, 128, 41, 41), torch.randn(1, 256, 21, 21)]
        >>> [tuple(o.shape[1:]) for o in neck(feats)]
        [(64, 81, 81), (128, 41, 41), (256, 21, 21)]
    """
    return GraphNeck(yolo11_pafpn_graph(in_specs, **options))  # type: ignore[arg-type]


@register_neck(
    "yolo_pafpn",
    summary="YOLOv8-style PAFPN: upsample + concat + C2f top-down, stride-2 conv + concat + C2f bottom-up",
    paper="Jocher et al., Ultralytics YOLOv8, 2023 (PAN neck of Liu et al., 2018)",
    knobs=YOLO_KNOBS,
    options_from=yolo_pafpn_graph,
    rules={
        **_RULES,
        "preset": OptionRule(choices=tuple(YOLO_PRESETS), what="YOLO preset"),
        "block": OptionRule(choices=("c2f", "csp")),
    },
    default_in_specs=lambda options: yolo_in_specs("yolo_pafpn", options),
    small_options={"width": 0.0625},
)
def yolo_pafpn(in_specs: Sequence[FeatureSpec], **options: object) -> GraphNeck:
    """Build a YOLOv8-style PAFPN neck (see :func:`yolo_pafpn_graph`).

    Example:
        >>> neck = yolo_pafpn([FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)], preset="n")
        >>> feats = [torch.randn(1, 64, 81, 81), torch.randn(1, 128, 41, 41), torch.randn(1, 256, 21, 21)]
        >>> [tuple(o.shape[1:]) for o in neck(feats)]
        [(64, 81, 81), (128, 41, 41), (256, 21, 21)]
    """
    return GraphNeck(yolo_pafpn_graph(in_specs, **options))  # type: ignore[arg-type]
