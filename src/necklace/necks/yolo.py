"""The YOLO-family PAFPN (YOLOv8 style): concat fusion, C2f/CSP refine blocks, stride-2 conv downsampling."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from necklace.graph import Edge, GraphNeck, NeckGraph, Node, input_name
from necklace.layers.conv import ConvCfg
from necklace.spec import FeatureSpec, validate_in_specs

__all__ = ["YOLO_KNOBS", "YOLO_PRESETS", "YoloPreset", "yolo_pafpn", "yolo_pafpn_graph"]

YOLO_KNOBS = ("preset (n|s|m|l|x)", "depth", "width", "max_channels", "block (c2f|csp)", "upsample", "act")


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

#: base (width 1.0) channels of a level's output in YOLOv8 (P3 256, P4 512, P5 1024); P2 128, P6+ 1024.
_BASE = {1: 64, 2: 128, 3: 256, 4: 512, 5: 1024, 6: 1024, 7: 1024, 8: 1024}


def _scale_ch(c: int, p: YoloPreset) -> int:
    return math.ceil(min(c, p.max_channels) * p.width / 8) * 8


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
    if preset is not None and preset not in YOLO_PRESETS:
        raise ValueError(f"unknown YOLO preset {preset!r}; choose one of {sorted(YOLO_PRESETS)} or None.")
    if block not in ("c2f", "csp"):
        raise ValueError(f"yolo_pafpn block must be 'c2f' or 'csp', got {block!r}.")
    base = YOLO_PRESETS[preset] if preset is not None else YoloPreset(1.0, 1.0, 1024)
    p = YoloPreset(
        base.depth if depth is None else depth,
        base.width if width is None else width,
        base.max_channels if max_channels is None else max_channels,
    )
    in_specs = validate_in_specs(in_specs)
    if len(in_specs) < 2:
        raise ValueError(f"yolo_pafpn needs at least two backbone levels, got strides {[s.stride for s in in_specs]}.")
    n = max(round(repeats * p.depth), 1) if repeats > 1 else repeats
    args = {"n": n, "shortcut": False}
    levels = [s.level for s in in_specs]
    lo, top = min(levels), max(levels)
    nodes: list[Node] = []
    td = {top: input_name(top)}
    for level in range(top - 1, lo - 1, -1):
        name = f"T{level}" if level > lo else f"N{level}"
        inputs = (Edge(td[level + 1], up=upsample), input_name(level))
        nodes.append(Node(name, level, inputs, _scale_ch(_BASE[level], p), "concat", block, args))
        td[level] = name
    prev = td[lo]
    outs = [prev]
    for level in range(lo + 1, top + 1):
        name = f"N{level}"
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


def yolo_pafpn(in_specs: Sequence[FeatureSpec], **options: object) -> GraphNeck:
    """Build a YOLOv8-style PAFPN neck (see :func:`yolo_pafpn_graph`).

    Example:
        >>> neck = yolo_pafpn([FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)], preset="n")
        >>> feats = [torch.randn(1, 64, 81, 81), torch.randn(1, 128, 41, 41), torch.randn(1, 256, 21, 21)]
        >>> [tuple(o.shape[1:]) for o in neck(feats)]
        [(64, 81, 81), (128, 41, 41), (256, 21, 21)]
    """
    return GraphNeck(yolo_pafpn_graph(in_specs, **options))  # type: ignore[arg-type]
