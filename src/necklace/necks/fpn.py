"""FPN (Lin et al., 2017): 1x1 laterals, nearest top-down sum, 3x3 output convs, extra coarse levels."""

from __future__ import annotations

from collections.abc import Sequence

from necklace.graph import Edge, GraphNeck, NeckGraph, Node, input_name
from necklace.layers.conv import ConvCfg
from necklace.necks.common import COMPARE_OPTIONS, FPN_RULES, extra_level_nodes, resolve_levels, resolve_widths
from necklace.registry import register_neck
from necklace.spec import FeatureSpec, validate_in_specs

__all__ = ["FPN_KNOBS", "fpn", "fpn_graph", "top_down_nodes"]

FPN_KNOBS = (
    "width",
    "levels",
    "extra (subsample|maxpool|conv)",
    "extra_source (input|output)",
    "relu_before_extra",
    "upsample (nearest|bilinear|transposed)",
    "norm",
    "act",
)


def top_down_nodes(
    in_specs: Sequence[FeatureSpec], lo: int, widths: dict[int, int], upsample: str
) -> tuple[list[Node], dict[int, str]]:
    """FPN's lateral + top-down nodes (``L<level>``, pre-conv sums) and its 3x3 outputs (``P<level>``)."""
    top = max(s.level for s in in_specs)
    nodes: list[Node] = []
    for level in range(top, lo - 1, -1):
        inputs = [Edge(input_name(level), align="always")]
        if level < top:
            inputs.append(Edge(f"L{level + 1}", up=upsample))
        nodes.append(Node(f"L{level}", level, tuple(inputs), channels=widths[level], fuse="sum"))
    outs = {}
    for level in range(top, lo - 1, -1):
        nodes.append(Node(f"P{level}", level, (f"L{level}",), channels=widths[level], block="conv"))
        outs[level] = f"P{level}"
    return nodes, outs


def fpn_graph(
    in_specs: Sequence[FeatureSpec],
    width: int | Sequence[int] = 256,
    levels: Sequence[int] | None = None,
    extra: str = "subsample",
    extra_source: str = "output",
    relu_before_extra: bool = False,
    upsample: str = "nearest",
    norm: str | None = None,
    act: str | None = None,
) -> NeckGraph:
    """The FPN graph. ``levels=(lo, hi)``: outputs P_lo..P_hi (default: input levels + one extra, like
    torchvision's ``resnet_fpn_backbone`` and mmdet's Faster R-CNN). Extra-level variants:

    - ``extra='subsample'``: P6 = max_pool(k=1, s=2)(P5) (torchvision ``LastLevelMaxPool``, mmdet default);
    - ``extra='conv', extra_source='input', relu_before_extra=True``: RetinaNet P6 = conv(C5),
      P7 = conv(relu(P6)) (detectron2, torchvision v2; mmdet ``'on_input'``, which omits the ReLU by default);
    - ``extra='conv', extra_source='output'``: P6 from P5 (torchvision v1 / FCOS, mmdet ``'on_output'``).

    Example:
        >>> g = fpn_graph([FeatureSpec(512, 8), FeatureSpec(1024, 16), FeatureSpec(2048, 32)], levels=(3, 7),
        ...               extra="conv", extra_source="input", relu_before_extra=True)
        >>> [(s.channels, s.stride) for s in g.out_specs]
        [(256, 8), (256, 16), (256, 32), (256, 64), (256, 128)]
    """
    in_specs = validate_in_specs(in_specs)
    lo, hi = resolve_levels(in_specs, levels, default_extra=1, cover_inputs=True)
    widths = resolve_widths(width, lo, hi)
    top = max(s.level for s in in_specs)
    nodes, outs = top_down_nodes(in_specs, lo, widths, upsample)
    nodes += extra_level_nodes(top, hi, widths, extra, extra_source, outs[top], relu_before_extra)
    cfg = ConvCfg(norm=norm, act=act)
    return NeckGraph(
        in_specs=in_specs,
        nodes=tuple(nodes),
        outputs=tuple(f"P{level}" for level in range(lo, hi + 1)),
        conv=cfg,
        align=cfg,
        up=upsample,
        down="conv",
    )


@register_neck(
    "fpn",
    summary="top-down pathway + 1x1 laterals + 3x3 outputs; extra P6/P7 by subsampling or stride-2 convs",
    paper="Lin et al., Feature Pyramid Networks for Object Detection, CVPR 2017",
    knobs=FPN_KNOBS,
    options_from=fpn_graph,
    rules=FPN_RULES,
    small_options={"width": 16},
    compare_options=COMPARE_OPTIONS,
)
def fpn(in_specs: Sequence[FeatureSpec], **options: object) -> GraphNeck:
    """Build an FPN neck (see :func:`fpn_graph` for the options).

    Example:
        >>> neck = fpn([FeatureSpec(512, 8), FeatureSpec(1024, 16), FeatureSpec(2048, 32)], levels=(3, 5))
        >>> feats = [torch.randn(1, 512, 25, 33), torch.randn(1, 1024, 13, 17), torch.randn(1, 2048, 7, 9)]
        >>> [tuple(o.shape[1:]) for o in neck(feats)]
        [(256, 25, 33), (256, 13, 17), (256, 7, 9)]
    """
    return GraphNeck(fpn_graph(in_specs, **options))  # type: ignore[arg-type]
