"""PAFPN / PANet (Liu et al., 2018): FPN plus a bottom-up path, in mmdet's and the official PANet's variants."""

from __future__ import annotations

from collections.abc import Sequence

from necklace.graph import Edge, GraphNeck, NeckGraph, Node
from necklace.layers.conv import ConvCfg
from necklace.necks.common import COMPARE_OPTIONS, FPN_RULES, WIDTH, extra_level_nodes, resolve_levels, resolve_widths
from necklace.necks.fpn import FPN_KNOBS, top_down_nodes
from necklace.options import OptionRule
from necklace.registry import register_neck
from necklace.spec import FeatureSpec, validate_in_specs

__all__ = ["PAFPN_KNOBS", "pafpn", "pafpn_graph"]

PAFPN_KNOBS = ("variant (mmdet|panet)", *FPN_KNOBS, "lite")


def pafpn_graph(
    in_specs: Sequence[FeatureSpec],
    width: int | Sequence[int] = 256,
    levels: Sequence[int] | None = None,
    variant: str = "mmdet",
    extra: str = "subsample",
    extra_source: str = "output",
    relu_before_extra: bool = False,
    upsample: str = "nearest",
    norm: str | None = None,
    act: str | None = None,
    gn_groups: int = 32,
    lite: bool = False,
) -> NeckGraph:
    """The PAFPN graph: FPN outputs ``P<l>``, then a bottom-up path to ``N<l>``.

    - ``variant='mmdet'`` (mmdet ``PAFPN``): ``B_l = P_l + down(B_{l-1})`` with ``B_lo = P_lo`` (the *pre-conv*
      running sum goes up), ``N_l = conv3x3(B_l)``; no norm/act unless given.
    - ``variant='panet'`` (official PANet): ``N_l = conv3x3(down(N_{l-1}) + P_l)`` (the *post-conv* map goes up);
      defaults to GroupNorm, with ReLU on the bottom-up convs and none on the FPN convs.
    - ``lite=True`` (a latency knob): every 3x3 refine conv becomes a depthwise-separable 3x3 (``separable``
      block: depthwise 3x3, pointwise 1x1, norm, act) and the bottom-up stride-2 convs become depthwise-separable
      (``down='dwconv'``); fusion stays a sum. Each such conv has ~8.7x fewer weights at width 256.

    Example:
        >>> g = pafpn_graph([FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)], width=32,
        ...                 levels=(3, 5), variant="panet")
        >>> g.outputs
        ('P3', 'N4', 'N5')
    """
    if variant not in ("mmdet", "panet"):
        raise ValueError(f"pafpn variant {variant!r} must be 'mmdet' (pre-conv sum) or 'panet' (post-conv).")
    in_specs = validate_in_specs(in_specs)
    lo, hi = resolve_levels(in_specs, levels, default_extra=1, cover_inputs=True)
    widths = resolve_widths(width, lo, hi)
    top = max(s.level for s in in_specs)
    nodes, _ = top_down_nodes(in_specs, lo, widths, upsample)
    bottom_act: str | None = act
    if variant == "panet":
        norm = "gn" if norm is None else norm
        bottom_act = "relu" if act is None else act
        fpn_block_args: dict[str, object] = {"act": act}
    else:
        fpn_block_args = {}
    refine, down = ("separable", "dwconv") if lite else ("conv", "conv")
    if fpn_block_args or lite:
        nodes = [
            Node(n.name, n.level, n.inputs, n.channels, n.fuse, refine, fpn_block_args) if n.block == "conv" else n
            for n in nodes
        ]
    prev = f"P{lo}"
    outs = [f"P{lo}"]
    for level in range(lo + 1, top + 1):
        if variant == "mmdet":
            nodes.append(Node(f"B{level}", level, (f"P{level}", Edge(prev, down=down)), widths[level], "sum"))
            nodes.append(Node(f"N{level}", level, (f"B{level}",), widths[level], block=refine))
            prev = f"B{level}"
        else:
            nodes.append(Node(f"N{level}", level, (Edge(prev, down=down), f"P{level}"), widths[level], "sum", refine))
            prev = f"N{level}"
        outs.append(f"N{level}")
    extra_nodes = extra_level_nodes(top, hi, widths, extra, extra_source, outs[-1], relu_before_extra)
    nodes += extra_nodes
    outs += [n.name for n in extra_nodes]
    cfg = ConvCfg(norm=norm, act=bottom_act, gn_groups=gn_groups)
    return NeckGraph(
        in_specs=in_specs,
        nodes=tuple(nodes),
        outputs=tuple(outs),
        conv=cfg,
        align=cfg.with_(act=act),
        up=upsample,
        down="conv",
    )


@register_neck(
    "pafpn",
    summary="FPN + bottom-up path augmentation (mmdet PAFPN or official PANet variant)",
    paper="Liu et al., Path Aggregation Network for Instance Segmentation, CVPR 2018",
    knobs=PAFPN_KNOBS,
    options_from=pafpn_graph,
    rules={**FPN_RULES, "variant": OptionRule(choices=("mmdet", "panet")), "gn_groups": WIDTH},
    small_options={"width": 16},
    compare_options=COMPARE_OPTIONS,
)
def pafpn(in_specs: Sequence[FeatureSpec], **options: object) -> GraphNeck:
    """Build a PAFPN neck (see :func:`pafpn_graph`).

    Example:
        >>> neck = pafpn([FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)], width=32, levels=(3, 5))
        >>> feats = [torch.randn(1, 64, 25, 33), torch.randn(1, 128, 13, 17), torch.randn(1, 256, 7, 9)]
        >>> [tuple(o.shape[1:]) for o in neck(feats)]
        [(32, 25, 33), (32, 13, 17), (32, 7, 9)]
    """
    return GraphNeck(pafpn_graph(in_specs, **options))  # type: ignore[arg-type]
