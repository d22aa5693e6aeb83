"""BiFPN (Tan et al., EfficientDet, 2020): weighted bidirectional cells, nodes with one input removed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from necklace.graph import Edge, GraphNeck, NeckGraph, Node, input_name
from necklace.layers.conv import ConvCfg
from necklace.necks.common import ACT, COMPARE_OPTIONS, COUNT, MOMENTUM, POSITIVE, UP, WIDTH, resolve_levels
from necklace.options import OptionRule
from necklace.registry import register_neck
from necklace.spec import FeatureSpec, validate_in_specs

__all__ = [
    "BIFPN_KNOBS",
    "BIFPN_PRESETS",
    "EFFICIENTNET_C3_C5",
    "BiFPNPreset",
    "bifpn",
    "bifpn_graph",
    "bifpn_in_specs",
]

BIFPN_KNOBS = (
    "preset (d0..d7)",
    "width",
    "repeats",
    "levels",
    "fuse (fast|softmax|sum)",
    "act",
    "separable",
    "upsample",
    "downsample (maxpool|avgpool|conv)",
    "padding (symmetric|same)",
    "redundant_bias",
    "lite",
)


@dataclass(frozen=True)
class BiFPNPreset:
    """EfficientDet-Dx BiFPN settings (width, repeats, fusion) and the image size it was trained at.

    Example:
        >>> BIFPN_PRESETS["d1"]
        BiFPNPreset(width=88, repeats=4, fuse='fast', image_size=640)
    """

    width: int
    repeats: int
    fuse: str
    image_size: int


#: EfficientDet D0..D7 (README / model_config.py of the reference implementations).
BIFPN_PRESETS: dict[str, BiFPNPreset] = {
    "d0": BiFPNPreset(64, 3, "fast", 512),
    "d1": BiFPNPreset(88, 4, "fast", 640),
    "d2": BiFPNPreset(112, 5, "fast", 768),
    "d3": BiFPNPreset(160, 6, "fast", 896),
    "d4": BiFPNPreset(224, 7, "fast", 1024),
    "d5": BiFPNPreset(288, 7, "fast", 1280),
    "d6": BiFPNPreset(384, 8, "sum", 1280),
    "d7": BiFPNPreset(384, 8, "sum", 1536),
}

#: EfficientDet Dx -> channels of its EfficientNet backbone at strides 8/16/32 (B0..B6; D7 reuses B6).
EFFICIENTNET_C3_C5: dict[str, tuple[int, int, int]] = {
    "d0": (40, 112, 320),
    "d1": (40, 112, 320),
    "d2": (48, 120, 352),
    "d3": (48, 136, 384),
    "d4": (56, 160, 448),
    "d5": (64, 176, 512),
    "d6": (72, 200, 576),
    "d7": (72, 200, 576),
}


def bifpn_in_specs(options: Mapping[str, Any]) -> tuple[FeatureSpec, ...]:
    """The EfficientNet C3-C5 of the EfficientDet whose ``preset`` the options name (d0 without a preset).

    Example:
        >>> [s.channels for s in bifpn_in_specs({"preset": "d3"})]
        [48, 136, 384]
    """
    chans = EFFICIENTNET_C3_C5[options.get("preset") or "d0"]
    return tuple(FeatureSpec(c, s) for c, s in zip(chans, (8, 16, 32), strict=True))


def _bifpn_image_size(options: Mapping[str, Any]) -> int:
    return BIFPN_PRESETS[options.get("preset") or "d0"].image_size


def bifpn_graph(
    in_specs: Sequence[FeatureSpec],
    preset: str | None = "d0",
    width: int | None = None,
    repeats: int | None = None,
    levels: Sequence[int] | None = None,
    fuse: str | None = None,
    act: str | None = None,
    separable: bool = True,
    upsample: str = "nearest",
    downsample: str = "maxpool",
    padding: str = "symmetric",
    redundant_bias: bool = False,
    norm_eps: float = 1e-3,
    norm_momentum: float = 0.01,
    lite: bool = False,
) -> NeckGraph:
    """The BiFPN graph (EfficientDet's ``bifpn_config``), ``repeats`` cells deep.

    Per cell, top-down nodes for levels ``hi-1 .. lo`` read ``[latest(l), latest(l+1)]``; bottom-up nodes for
    ``lo+1 .. hi`` read every earlier node at ``l`` plus ``latest(l-1)``. Levels above the backbone are made by
    a 1x1 conv + BN then 3x3/2 max-pool (P6), then max-pool (P7). Nodes fuse with fast-normalised weights
    (``fuse='fast'``), ``softmax`` or ``sum`` and refine with act -> separable 3x3 -> BN (pre-activation).
    Explicit ``width``/``repeats``/``fuse`` override the preset. ``padding='same'`` and ``redundant_bias=True``
    reproduce the TF-ported ``tf_efficientdet_*`` weights. ``act`` defaults to swish. ``lite=True`` gives the
    EfficientDet-Lite BiFPN (a latency / quantisation knob): plain ``sum`` fusion and ReLU6 unless ``fuse`` /
    ``act`` are given (the Lite models keep separable convs; their presets are widths 64/88/112/160/224).

    Example:
        >>> g = bifpn_graph([FeatureSpec(40, 8), FeatureSpec(112, 16), FeatureSpec(320, 32)], preset="d0")
        >>> len(g.nodes), [s.stride for s in g.out_specs]
        (26, [8, 16, 32, 64, 128])
    """
    if preset is not None and preset not in BIFPN_PRESETS:
        raise ValueError(f"unknown BiFPN preset {preset!r}; choose one of {sorted(BIFPN_PRESETS)} or None.")
    p = BIFPN_PRESETS[preset] if preset is not None else BiFPNPreset(64, 3, "fast", 512)
    width = p.width if width is None else width
    repeats = p.repeats if repeats is None else repeats
    fuse = ("sum" if lite else p.fuse) if fuse is None else fuse
    act = ("relu6" if lite else "swish") if act is None else act
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"BiFPN repeats must be an int >= 1, got {repeats!r}.")
    if not isinstance(separable, bool):
        raise TypeError(f"BiFPN separable must be True or False, got {separable!r}.")
    if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
        raise ValueError(
            f"BiFPN width must be one positive int (all levels are fused by weighted sums), got {width!r}."
        )
    in_specs = validate_in_specs(in_specs)
    lo, hi = resolve_levels(in_specs, levels, default_extra=2 if max(s.level for s in in_specs) == 5 else 0)
    if hi - lo < 1:
        raise ValueError(f"BiFPN needs at least two levels, got levels {lo}..{hi}.")
    top_in = max(s.level for s in in_specs)
    nodes: list[Node] = []
    latest: dict[int, list[str]] = {}
    for level in range(lo, min(top_in, hi) + 1):
        latest[level] = [input_name(level)]
    prev = input_name(top_in)
    for level in range(top_in + 1, hi + 1):  # P6 = pool(bn(conv1x1(C5))), P7 = pool(P6)
        name = f"P{level}_in"
        nodes.append(Node(name, level, (Edge(prev, down=downsample),), channels=width))
        latest[level] = [name]
        prev = name
    block = "separable" if separable else "conv"
    block_args: dict[str, object] = {"act_first": True, "pw_bias": redundant_bias} if separable else {}
    for r in range(repeats):
        cell: dict[int, list[str]] = {level: list(v) for level, v in latest.items()}
        for level in range(hi - 1, lo - 1, -1):
            name = f"r{r}_P{level}_td" if level > lo else f"r{r}_P{level}_out"
            nodes.append(Node(name, level, (cell[level][-1], cell[level + 1][-1]), width, fuse, block, block_args))
            cell[level].append(name)
        for level in range(lo + 1, hi + 1):
            name = f"r{r}_P{level}_out"
            nodes.append(Node(name, level, (*cell[level], cell[level - 1][-1]), width, fuse, block, block_args))
            cell[level].append(name)
        latest = {level: [cell[level][-1]] for level in cell}
    conv = ConvCfg(norm="bn", act=act, norm_eps=norm_eps, norm_momentum=norm_momentum, padding=padding)
    align = ConvCfg(norm="bn", bias=True if redundant_bias else None, norm_eps=norm_eps, norm_momentum=norm_momentum)
    return NeckGraph(
        in_specs=in_specs,
        nodes=tuple(nodes),
        outputs=tuple(latest[level][0] for level in range(lo, hi + 1)),
        conv=conv,
        align=align,
        up=upsample,
        down=downsample,
    )


@register_neck(
    "bifpn",
    summary="repeated weighted bidirectional cells, single-input nodes removed, separable convs (EfficientDet D0-D7)",
    paper="Tan et al., EfficientDet: Scalable and Efficient Object Detection, CVPR 2020",
    knobs=BIFPN_KNOBS,
    options_from=bifpn_graph,
    rules={
        "preset": OptionRule(choices=tuple(BIFPN_PRESETS), what="BiFPN preset"),
        "width": WIDTH,
        "repeats": COUNT,
        "fuse": OptionRule(choices=("fast", "softmax", "sum")),
        "act": ACT,
        "upsample": UP,
        "downsample": OptionRule(choices=("maxpool", "avgpool", "conv")),
        "padding": OptionRule(choices=("symmetric", "same")),
        "norm_eps": POSITIVE,
        "norm_momentum": MOMENTUM,
    },
    default_in_specs=bifpn_in_specs,
    image_size=_bifpn_image_size,
    small_options={"width": 16, "repeats": 2},
    compare_options={**COMPARE_OPTIONS, "repeats": 2},
)
def bifpn(in_specs: Sequence[FeatureSpec], **options: object) -> GraphNeck:
    """Build a BiFPN neck (see :func:`bifpn_graph`).

    Example:
        >>> neck = bifpn([FeatureSpec(40, 8), FeatureSpec(112, 16), FeatureSpec(320, 32)], preset="d0")
        >>> feats = [torch.randn(1, 40, 25, 33), torch.randn(1, 112, 13, 17), torch.randn(1, 320, 7, 9)]
        >>> [tuple(o.shape[1:]) for o in neck(feats)]
        [(64, 25, 33), (64, 13, 17), (64, 7, 9), (64, 4, 5), (64, 2, 3)]
    """
    return GraphNeck(bifpn_graph(in_specs, **options))  # type: ignore[arg-type]
