"""YOLOv6 v3 RepBiFPAN (Li et al., 2023): RepPAN whose top-down fusions are BiFusion ("BiC") modules.

A BiFusion node at level ``l`` concatenates the transposed-conv-upsampled reduced map of level ``l+1``, a 1x1
Conv-BN-ReLU of the backbone map ``C<l>`` and a 1x1 then 3x3 stride-2 Conv-BN-ReLU of the next finer backbone map
``C<l-1>``, then applies a 1x1 Conv-BN-ReLU; in the graph it is one ``concat`` node whose third edge has
``align='always'`` (the 1x1) and ``down='conv'`` (the 3x3/2). The YOLOv6 v3 backbone returns C2-C5 for this
(``fuse_P2``); C2 only feeds the finest BiFusion and the outputs are P3-P5.
"""

from __future__ import annotations

from collections.abc import Sequence

from necklace.graph import GraphNeck, NeckGraph
from necklace.necks.common import LEVEL
from necklace.necks.rep_pafpn import REP_PAFPN_KNOBS, YOLOV6_RULES, yolov6_graph
from necklace.registry import register_neck
from necklace.spec import FeatureSpec, validate_in_specs

__all__ = ["REP_BIFPAN_KNOBS", "rep_bifpan", "rep_bifpan_graph"]

REP_BIFPAN_KNOBS = (*REP_PAFPN_KNOBS, "min_level")


def rep_bifpan_graph(
    in_specs: Sequence[FeatureSpec],
    preset: str | None = "n",
    depth: float | None = None,
    width: float | None = None,
    repeats: int = 12,
    channels: Sequence[int] | None = None,
    min_level: int | None = None,
    block: str | None = None,
    expansion: float | None = None,
    basic: str | None = None,
    block_act: str | None = None,
    upsample: str = "transposed",
    act: str = "relu",
    norm_eps: float = 1e-3,
    norm_momentum: float = 0.03,
) -> NeckGraph:
    """YOLOv6 v3's RepBiFPANNeck (``preset`` n/s/t; m/l give ``CSPRepBiFPANNeck`` with ``bep_c3`` stages).

    ``min_level`` is the finest output level: by default the second-finest input when there are four or more
    inputs (C2 feeds the P3 BiFusion only, as in YOLOv6 v3), else the finest input, whose top-down node then has
    no finer map and concatenates like RepPAN. Every top-down node above a backbone level is a BiFusion:
    ``B4 = 1x1(concat(up(R5), 1x1(C4), 3x3/2(1x1(C3))))``, ``T4 = block(B4)``; the bottom-up path is RepPAN's.
    YOLOv6-N (``preset='n'`` on the EfficientRep-N maps 32/64/128/256 at strides 4-32) has 1,193,952 parameters
    in training form and 1,085,216 after :func:`necklace.deploy`, as YOLOv6's ``RepBiFPANNeck`` (and mmyolo's
    ``YOLOv6RepBiPAFPN``). Other options as :func:`~necklace.necks.rep_pafpn_graph`.

    Example:
        >>> specs = [FeatureSpec(32, 4), FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)]
        >>> g = rep_bifpan_graph(specs, preset="n")
        >>> [(s.channels, s.stride) for s in g.out_specs]
        [(32, 8), (64, 16), (128, 32)]
        >>> [n.name for n in g.nodes]
        ['R5', 'B4', 'T4', 'R4', 'B3', 'N3', 'N4', 'N5']
    """
    in_specs = validate_in_specs(in_specs)
    if min_level is None:
        levels = sorted(s.level for s in in_specs)
        min_level = levels[1] if len(levels) >= 4 else levels[0]
    return yolov6_graph(
        in_specs,
        True,
        min_level,
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


@register_neck(
    "rep_bifpan",
    summary="YOLOv6 v3 RepBiFPAN: RepPAN with BiFusion (up + same level + 3x3/2 of the finer level) top-down",
    paper="Li et al., YOLOv6 v3.0: A Full-Scale Reloading, 2023",
    knobs=REP_BIFPAN_KNOBS,
    options_from=rep_bifpan_graph,
    rules={**YOLOV6_RULES, "min_level": LEVEL},
    small_options={"width": 0.125, "repeats": 2},
)
def rep_bifpan(in_specs: Sequence[FeatureSpec], **options: object) -> GraphNeck:
    """Build a YOLOv6 v3 RepBiFPAN neck (see :func:`rep_bifpan_graph`).

    Example:
        >>> specs = [FeatureSpec(32, 4), FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)]
        >>> neck = rep_bifpan(specs, preset="n")
        >>> sizes = [(25, 33), (13, 17), (7, 9), (4, 5)]  # a 97x131 image at strides 4-32
        >>> feats = [torch.randn(1, s.channels, h, w) for s, (h, w) in zip(specs, sizes)]
        >>> [tuple(o.shape[1:]) for o in neck(feats)]
        [(32, 13, 17), (64, 7, 9), (128, 4, 5)]
    """
    return GraphNeck(rep_bifpan_graph(in_specs, **options))  # type: ignore[arg-type]
