"""AugFPN (Guo et al., CVPR 2020): FPN + residual feature augmentation, with the laterals exposed for consistent
supervision.

Follows the official ``HighFPN`` (``Gus-Guo/AugFPN``, two-stage variant) on the graph engine:

- laterals ``M<l> = 1x1(C<l>)`` are their own nodes (so they can be returned for consistent supervision);
- ``R<top> = rfa(C<top>)``: block ``"rfa"`` (:class:`necklace.layers.rfa.ResidualFeatureAugmentation`) on the *raw*
  top backbone map;
- ``L<top> = M<top> + R<top>`` (the residual add), ``L<l> = M<l> + up(L<l+1>)``, ``P<l> = 3x3(L<l>)``;
- extra levels as FPN's (``extra='subsample'``: P6 = max_pool(k1, s2)(P5), the Faster R-CNN config).

Differences from the official code: the top-down upsampling targets the runtime size of the finer level (the
official ``scale_factor=2`` needs inputs divisible by 32; both agree there); RetinaNet's ``HighFPNRetinanet``
extra (``GAP(RFA)`` added to P6) is not built.

Consistent supervision (paper Sec. 3.2; ``two_stage.py`` of the official code) is a training-time loss, not a
neck op: RoIs are pooled from every raw lateral ``M_l`` (before the RFA add and the top-down pass), an auxiliary
head (shared across levels) predicts the same targets as the main head, and each level's loss is weighted by
``alpha = 0.25`` (:data:`CONSISTENT_SUPERVISION_WEIGHT`; 4 levels -> 1.0x the main loss). The heads are dropped
at inference. :meth:`AugFPN.forward_with_laterals` returns ``(outputs, laterals)`` in one pass;
:func:`consistent_supervision_loss` applies the weighting.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from necklace.graph import Edge, GraphNeck, NeckGraph, Node, input_name
from necklace.layers.conv import ConvCfg
from necklace.necks.common import COMPARE_OPTIONS, FPN_RULES, WIDTH, extra_level_nodes, resolve_levels, resolve_widths
from necklace.options import OptionRule
from necklace.registry import register_neck
from necklace.spec import FeatureSpec, validate_in_specs

__all__ = [
    "AUGFPN_KNOBS",
    "CONSISTENT_SUPERVISION_WEIGHT",
    "AugFPN",
    "augfpn",
    "augfpn_graph",
    "consistent_supervision_loss",
]

#: AugFPN's per-level auxiliary loss weight (``alpha`` in the official ``train_cfg.rcnn``).
CONSISTENT_SUPERVISION_WEIGHT = 0.25

AUGFPN_KNOBS = (
    "width",
    "levels",
    "ratios (RFA pooling ratios, 0.1/0.2/0.3)",
    "rfa_hidden",
    "extra (subsample|maxpool|conv)",
    "extra_source (input|output)",
    "relu_before_extra",
    "upsample (nearest|bilinear)",
    "norm",
    "act",
)


def augfpn_graph(
    in_specs: Sequence[FeatureSpec],
    width: int | Sequence[int] = 256,
    ratios: Sequence[float] = (0.1, 0.2, 0.3),
    levels: Sequence[int] | None = None,
    rfa_hidden: int | None = None,
    extra: str = "subsample",
    extra_source: str = "output",
    relu_before_extra: bool = False,
    upsample: str = "nearest",
    norm: str | None = None,
    act: str | None = None,
) -> NeckGraph:
    """The AugFPN graph: lateral nodes ``M<l>``, RFA node ``R<top>`` on the raw top map, FPN top-down ``L<l>``,
    3x3 outputs ``P<l>``, extra levels as :func:`necklace.necks.fpn_graph`.

    ``ratios``: RFA adaptive-pool ratios (official 0.1, 0.2, 0.3); ``rfa_hidden``: width of the fusion's hidden
    1x1 conv (default ``width``). ``norm``/``act`` apply to the laterals and output convs (none in AugFPN).

    Example:
        >>> g = augfpn_graph([FeatureSpec(256, 4), FeatureSpec(512, 8), FeatureSpec(1024, 16), FeatureSpec(2048, 32)])
        >>> g.outputs, [s.stride for s in g.out_specs]
        (('P2', 'P3', 'P4', 'P5', 'P6'), [4, 8, 16, 32, 64])
        >>> [n.name for n in g.nodes][:6]
        ['M5', 'M4', 'M3', 'M2', 'R5', 'L5']
    """
    in_specs = validate_in_specs(in_specs)
    lo, hi = resolve_levels(in_specs, levels, default_extra=1, cover_inputs=True)
    widths = resolve_widths(width, lo, hi)
    top = max(s.level for s in in_specs)
    nodes: list[Node] = []
    for level in range(top, lo - 1, -1):  # laterals: 1x1 convs, kept as named tensors
        nodes.append(Node(f"M{level}", level, (Edge(input_name(level), align="always"),), channels=widths[level]))
    rfa_args: dict[str, object] = {"ratios": [float(r) for r in ratios]}
    if rfa_hidden is not None:
        rfa_args["hidden"] = int(rfa_hidden)
    nodes.append(
        Node(f"R{top}", top, (Edge(input_name(top), align="never"),), widths[top], block="rfa", block_args=rfa_args)
    )
    nodes.append(Node(f"L{top}", top, (f"M{top}", f"R{top}"), channels=widths[top], fuse="sum"))
    for level in range(top - 1, lo - 1, -1):
        inputs = (f"M{level}", Edge(f"L{level + 1}", up=upsample))
        nodes.append(Node(f"L{level}", level, inputs, channels=widths[level], fuse="sum"))
    for level in range(top, lo - 1, -1):
        nodes.append(Node(f"P{level}", level, (f"L{level}",), channels=widths[level], block="conv"))
    nodes += extra_level_nodes(top, hi, widths, extra, extra_source, f"P{top}", relu_before_extra)
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


class AugFPN(GraphNeck):
    """An AugFPN graph neck whose pre-fusion laterals can be returned for consistent supervision.

    ``forward(features)`` gives the pyramid like any neck; ``forward_with_laterals(features)`` gives
    ``(outputs, laterals)``, ``laterals`` being the raw lateral maps ``M_lo..M_top`` (1x1 convs of the backbone
    maps, before the RFA residual and the top-down sums), with :attr:`lateral_specs`. Attach the auxiliary
    RoI head(s) to them during training only, weighting each level's loss by
    :data:`CONSISTENT_SUPERVISION_WEIGHT` (0.25; see :func:`consistent_supervision_loss`).

    Example:
        >>> specs = [FeatureSpec(32, 8), FeatureSpec(64, 16), FeatureSpec(128, 32)]
        >>> neck = augfpn(specs, width=16)
        >>> feats = [torch.randn(1, s.channels, 64 // s.stride, 64 // s.stride) for s in specs]
        >>> outs, laterals = neck.forward_with_laterals(feats)
        >>> [tuple(o.shape[1:]) for o in outs], [tuple(m.shape[1:]) for m in laterals]
        ([(16, 8, 8), (16, 4, 4), (16, 2, 2), (16, 1, 1)], [(16, 8, 8), (16, 4, 4), (16, 2, 2)])
    """

    def __init__(self, graph: NeckGraph, lateral_names: Sequence[str] | None = None) -> None:
        super().__init__(graph)
        if lateral_names is None:
            lateral_names = [f"M{s.level}" for s in graph.in_specs if f"M{s.level}" in self.nodes]
        sources = graph.sources()
        missing = [n for n in lateral_names if n not in sources]
        if missing:
            raise ValueError(f"AugFPN lateral names {missing} are not nodes of the graph; known: {sorted(sources)}.")
        self.lateral_names: tuple[str, ...] = tuple(lateral_names)
        self.lateral_specs: tuple[FeatureSpec, ...] = tuple(
            FeatureSpec(sources[n][1], 2 ** sources[n][0]) for n in self.lateral_names
        )

    def forward_with_laterals(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """``(outputs, laterals)`` from one pass; ``laterals`` follow :attr:`lateral_specs` (finest first)."""
        return self.forward_with(features, self.lateral_names)


def consistent_supervision_loss(
    level_losses: Sequence[Tensor], weight: float = CONSISTENT_SUPERVISION_WEIGHT
) -> Tensor:
    """AugFPN's auxiliary loss: ``weight * sum(level_losses)`` (one auxiliary loss per lateral level, alpha 0.25).

    Example:
        >>> consistent_supervision_loss([torch.tensor(1.0), torch.tensor(2.0), torch.tensor(1.0), torch.tensor(0.0)])
        tensor(1.)
    """
    if len(level_losses) == 0:
        raise ValueError("consistent_supervision_loss needs one loss per lateral level, got none.")
    total = level_losses[0]
    for loss in level_losses[1:]:
        total = total + loss
    return torch.as_tensor(weight, dtype=total.dtype, device=total.device) * total


@register_neck(
    "augfpn",
    summary="FPN + residual feature augmentation (ratio-invariant adaptive pooling of C5, adaptive spatial fusion) "
    "added to the top lateral; laterals exposed for consistent supervision",
    paper="Guo et al., AugFPN: Improving Multi-scale Feature Learning for Object Detection, CVPR 2020",
    knobs=AUGFPN_KNOBS,
    options_from=augfpn_graph,
    rules={
        **FPN_RULES,
        "ratios": OptionRule(gt=0, le=1),
        "rfa_hidden": WIDTH,
    },
    small_options={"width": 16},
    compare_options=COMPARE_OPTIONS,
)
def augfpn(in_specs: Sequence[FeatureSpec], **options: object) -> AugFPN:
    """Build an AugFPN neck (see :func:`augfpn_graph` for the options, :class:`AugFPN` for the laterals).

    Example:
        >>> neck = augfpn([FeatureSpec(512, 8), FeatureSpec(1024, 16), FeatureSpec(2048, 32)], width=64)
        >>> feats = [torch.randn(1, 512, 25, 33), torch.randn(1, 1024, 13, 17), torch.randn(1, 2048, 7, 9)]
        >>> [tuple(o.shape[1:]) for o in neck(feats)]
        [(64, 25, 33), (64, 13, 17), (64, 7, 9), (64, 4, 5)]
    """
    return AugFPN(augfpn_graph(in_specs, **options))  # type: ignore[arg-type]
