"""NAS-FPN (Ghiasi et al., 2019): the published 7-cell architecture, stacked, as merge-cell nodes.

Each merge cell is one graph node: both inputs are resized to the cell's level at its runtime size (nearest
upsampling, ``steps`` 2x2 ceil max-pools down), fused by ``sum`` or the global-pooling attention ``gp``
(``x2 + sigmoid(GAP(x2)) * x1``), then refined by the out conv ``ReLU -> 3x3 conv (bias) -> norm``.
"""

from __future__ import annotations

from collections.abc import Sequence

from necklace.graph import Edge, GraphNeck, NeckGraph, Node, input_name
from necklace.layers.conv import ConvCfg
from necklace.necks.common import COUNT, NORM, WIDTH, resolve_levels
from necklace.options import OptionRule
from necklace.registry import register_neck
from necklace.spec import FeatureSpec, validate_in_specs

__all__ = ["NASFPN_CELLS", "NASFPN_KNOBS", "nasfpn", "nasfpn_graph", "nasfpn_input_name"]

NASFPN_KNOBS = ("width", "stack_times", "levels (5 consecutive)", "norm (bn|gn|None)", "upsample (nearest|bilinear)")

#: The published architecture, in execution order (mmdet ``NASFPN`` cell names):
#: ``(cell, fuse, x1, x2, output, out conv)``. Roles ``p3..p7`` are the five levels ``lo..lo+4``; a cell's
#: level is its output role's. ``p4_1``, ``p4_2``, ``p5_tmp`` and ``p7_tmp`` are intermediates; every other
#: output replaces that role's current map.
NASFPN_CELLS: tuple[tuple[str, str, str, str, str, bool], ...] = (
    ("gp_64_4", "gp", "p6", "p4", "p4_1", True),
    ("sum_44_4", "sum", "p4_1", "p4", "p4_2", True),
    ("sum_43_3", "sum", "p4_2", "p3", "p3", True),
    ("sum_34_4", "sum", "p3", "p4_2", "p4", True),
    ("gp_43_5", "gp", "p4", "p3", "p5_tmp", False),
    ("sum_55_5", "sum", "p5", "p5_tmp", "p5", True),
    ("gp_54_7", "gp", "p5", "p4_2", "p7_tmp", False),
    ("sum_77_7", "sum", "p7", "p7_tmp", "p7", True),
    ("gp_75_6", "gp", "p7", "p5", "p6", True),
)


def nasfpn_input_name(level: int) -> str:
    """Name of the node holding level ``level`` before the first stage (lateral or extra level): ``P3_in``."""
    return f"P{level}_in"


def nasfpn_graph(
    in_specs: Sequence[FeatureSpec],
    width: int = 256,
    stack_times: int = 7,
    levels: Sequence[int] | None = None,
    norm: str | None = "bn",
    upsample: str = "nearest",
) -> NeckGraph:
    """The NAS-FPN graph: ``stack_times`` stages of the 7 merge cells, each stage with its own weights.

    ``levels=(lo, lo + 4)`` (default: five levels from the backbone's finest, i.e. P3..P7 for C3..C5 as in
    the paper; give ``levels=(3, 7)`` for a C2..C5 backbone to match mmdet's ``start_level=1``). Backbone
    levels get a 1x1 lateral conv + norm (no activation); levels above the backbone are a 1x1 conv + norm of
    the level below, then a 2x2 stride-2 max-pool. Cells are named ``s<stage>_<cell>`` after mmdet
    (:data:`NASFPN_CELLS`); the out conv is ``ReLU -> 3x3 conv (with bias, even before BN) -> norm``.

    Sizes follow necklace's rule (level ``l`` has ``ceil(H / 2**l)``) for any input: pools are ceil-sized.
    When each level's map is exactly half the one below and the P``lo`` map is divisible by 16 (images padded
    to 128 for P3..P7, as mmdet's config does) this computes exactly what mmdet's ``NASFPN`` computes. On
    other sizes they differ: mmdet's extra levels use floor pools (``MaxPool2d(2, 2)``, so its P6/P7 are
    floor-sized) and its cells zero-pad to a multiple of the ratio before one ``ratio x ratio`` max-pool.

    Example:
        >>> g = nasfpn_graph([FeatureSpec(512, 8), FeatureSpec(1024, 16), FeatureSpec(2048, 32)], stack_times=2)
        >>> len(g.nodes), [s.stride for s in g.out_specs]
        (23, [8, 16, 32, 64, 128])
    """
    if isinstance(stack_times, bool) or not isinstance(stack_times, int) or stack_times < 1:
        raise ValueError(f"stack_times must be a positive int (7 in the paper's RetinaNet), got {stack_times!r}.")
    if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
        raise ValueError(f"NAS-FPN width must be one positive int (cells sum across levels), got {width!r}.")
    if upsample not in ("nearest", "bilinear"):
        raise ValueError(f"upsample {upsample!r} must be 'nearest' or 'bilinear' (mmcv merge cells' modes).")
    in_specs = validate_in_specs(in_specs)
    in_levels = [s.level for s in in_specs]
    if levels is None:
        levels = (min(in_levels), min(in_levels) + 4)
    lo, hi = resolve_levels(in_specs, levels, default_extra=0)
    if hi - lo != 4:
        raise ValueError(
            f"NAS-FPN's cells connect exactly five levels (P3..P7 in the paper); levels {tuple(levels)} give "
            f"{hi - lo + 1}. Use levels=({lo}, {lo + 4})."
        )
    top = max(in_levels)
    nodes: list[Node] = []
    for level in range(lo, min(top, hi) + 1):  # laterals: 1x1 conv + norm, no activation
        nodes.append(Node(nasfpn_input_name(level), level, (Edge(input_name(level), align="always"),), width))
    for level in range(top + 1, hi + 1):  # extra levels: 1x1 conv + norm, then 2x2/2 max-pool
        src = Edge(nasfpn_input_name(level - 1), align="always", down="maxpool2")
        nodes.append(Node(nasfpn_input_name(level), level, (src,), width))
    role_level = {f"p{3 + i}": lo + i for i in range(5)}  # roles p3..p7 -> levels lo..lo+4
    current = {role: nasfpn_input_name(level) for role, level in role_level.items()}  # role -> latest node
    for s in range(stack_times):
        for cell, fuse, x1, x2, out, with_conv in NASFPN_CELLS:
            name = f"s{s}_{cell}"
            level = role_level[out[:2]]
            block, args = ("conv", {"act_first": True}) if with_conv else ("identity", {})
            nodes.append(Node(name, level, (current[x1], current[x2]), width, fuse, block, args))
            current[out] = name
    conv = ConvCfg(norm=norm, act="relu", bias=True)
    return NeckGraph(
        in_specs=in_specs,
        nodes=tuple(nodes),
        outputs=tuple(current[f"p{3 + i}"] for i in range(5)),
        conv=conv,
        align=ConvCfg(norm=norm),
        up=upsample,
        down="maxpool2",
    )


@register_neck(
    "nasfpn",
    summary="stacked NAS-searched merge cells (sum / global-pooling attention) over P3-P7, ReLU-conv-BN outputs",
    paper="Ghiasi et al., NAS-FPN: Learning Scalable Feature Pyramid Architecture for Object Detection, CVPR 2019",
    knobs=NASFPN_KNOBS,
    options_from=nasfpn_graph,
    rules={
        "width": WIDTH,
        "stack_times": COUNT,
        "norm": NORM,
        "upsample": OptionRule(choices=("nearest", "bilinear")),
    },
    small_options={"width": 16, "stack_times": 2},
)
def nasfpn(in_specs: Sequence[FeatureSpec], **options: object) -> GraphNeck:
    """Build a NAS-FPN neck (see :func:`nasfpn_graph` for the options).

    Example:
        >>> neck = nasfpn([FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)], width=32, stack_times=2)
        >>> feats = [torch.randn(1, 64, 13, 17), torch.randn(1, 128, 7, 9), torch.randn(1, 256, 4, 5)]
        >>> [tuple(o.shape[1:]) for o in neck(feats)]
        [(32, 13, 17), (32, 7, 9), (32, 4, 5), (32, 2, 3), (32, 1, 2)]
    """
    return GraphNeck(nasfpn_graph(in_specs, **options))  # type: ignore[arg-type]
