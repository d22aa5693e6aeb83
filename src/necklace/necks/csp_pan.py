"""PP-PicoDet CSP-PAN (Yu et al., 2021): one narrow width, depthwise CSP blocks and an extra coarse level.

Every backbone map is first reduced to one width ``C`` by a 1x1 Conv-BN-act (PaddleDetection ``Channel_T``);
the top-down path upsamples (nearest x2), concatenates and refines with a CSP block whose bottlenecks are
1x1 conv + depthwise-separable ``k x k`` conv (``k = 5``); the bottom-up path downsamples with a depthwise
5x5 stride-2 conv + BN + act and pointwise 1x1 + BN + act (``DP_Module``; edge ``down='dpconv'``), concatenates
and refines likewise. With ``extra=True`` (PicoDet's ``num_features=4``) one more level is the sum of two
such stride-2 modules, on the reduced top input and on the top output.
"""

from __future__ import annotations

from collections.abc import Sequence

from necklace.checks import as_bool, as_int
from necklace.graph import Edge, GraphNeck, NeckGraph, Node, input_name
from necklace.layers.conv import ConvCfg
from necklace.necks.common import ACT, COUNT, MOMENTUM, POSITIVE, UP, WIDTH
from necklace.options import OptionRule
from necklace.registry import register_neck
from necklace.spec import MAX_LEVEL, FeatureSpec, validate_in_specs

__all__ = ["CSP_PAN_KNOBS", "CSP_PAN_PRESETS", "csp_pan", "csp_pan_graph"]

CSP_PAN_KNOBS = (
    "preset (s|m|l)",
    "width",
    "kernel",
    "num_csp_blocks",
    "depthwise",
    "extra",
    "upsample",
    "act",
)

#: PicoDet (ESNet backbone) CSP-PAN widths: ``picodet_{s,m,l}_*_coco.yml`` (legacy models) ``CSPPAN.out_channels``.
CSP_PAN_PRESETS: dict[str, int] = {"s": 96, "m": 128, "l": 160}


def csp_pan_graph(
    in_specs: Sequence[FeatureSpec],
    preset: str | None = "s",
    width: int | None = None,
    kernel: int = 5,
    num_csp_blocks: int = 1,
    depthwise: bool = True,
    extra: bool = True,
    upsample: str = "nearest",
    act: str = "hardswish",
    norm_eps: float = 1e-5,
    norm_momentum: float = 0.1,
) -> NeckGraph:
    """PP-PicoDet's CSP-PAN over any number (>= 2) of backbone levels (C3-C5 in PicoDet).

    ``L<l> = 1x1(C<l>)`` to ``width`` channels; top-down ``T<l> = csp(concat(up(T<l+1>), L<l>))`` with
    ``T<top> = L<top>`` (the finest is ``N<lo>``); bottom-up ``N<l> = csp(concat(dp(N<l-1>), T<l>))``, where
    ``dp`` is the depthwise ``kernel`` x ``kernel`` stride-2 module (a plain ``kernel`` conv when
    ``depthwise=False``) and ``csp`` a CSP layer (expansion 0.5, ``num_csp_blocks`` bottlenecks without
    identity, depthwise ``kernel`` convs). ``extra=True`` adds ``P<top+1> = dp(L<top>) + dp(N<top>)``.
    BN (Paddle defaults eps 1e-5, momentum 0.1 in PyTorch terms), hard-swish. Presets: PicoDet-S 96,
    PicoDet-M 128, PicoDet-L 160 channels; ``width`` overrides.

    Example:
        >>> g = csp_pan_graph([FeatureSpec(96, 8), FeatureSpec(192, 16), FeatureSpec(384, 32)], preset="s")
        >>> [(s.channels, s.stride) for s in g.out_specs]
        [(96, 8), (96, 16), (96, 32), (96, 64)]
    """
    if preset is not None and preset not in CSP_PAN_PRESETS:
        raise ValueError(f"unknown CSP-PAN preset {preset!r}; choose one of {sorted(CSP_PAN_PRESETS)} or None.")
    if width is None:
        width = CSP_PAN_PRESETS[preset] if preset is not None else 96
    if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
        raise ValueError(f"CSP-PAN width must be one positive int (every level has the same width), got {width!r}.")
    if isinstance(num_csp_blocks, bool) or not isinstance(num_csp_blocks, int) or num_csp_blocks < 1:
        raise ValueError(f"num_csp_blocks must be an int >= 1, got {num_csp_blocks!r}.")
    kernel = as_int(kernel, "CSP-PAN kernel", ge=1)
    if kernel % 2 == 0:
        raise ValueError(
            f"CSP-PAN kernel must be odd (3, 5, 7: 'same' padding keeps every map at its level's size), got {kernel}."
        )
    depthwise, extra = as_bool(depthwise, "depthwise"), as_bool(extra, "extra")
    in_specs = validate_in_specs(in_specs)
    levels = [s.level for s in in_specs]
    lo, top = min(levels), max(levels)
    if top == lo:
        raise ValueError(f"CSP-PAN needs at least two backbone levels, got strides {[s.stride for s in in_specs]}.")
    if extra and top + 1 > MAX_LEVEL:
        raise ValueError(f"extra=True adds level {top + 1}, above the supported {MAX_LEVEL}; use extra=False.")
    csp = {"n": num_csp_blocks, "shortcut": False, "expansion": 0.5, "kernel": kernel, "depthwise": depthwise}
    down = "dpconv" if depthwise else "conv"
    nodes = [Node(f"L{level}", level, (input_name(level),), width, "concat", "conv", {"kernel": 1}) for level in levels]
    td = {top: f"L{top}"}
    for level in range(top - 1, lo - 1, -1):
        name = f"N{level}" if level == lo else f"T{level}"
        nodes.append(Node(name, level, (Edge(td[level + 1], up=upsample), f"L{level}"), width, "concat", "csp", csp))
        td[level] = name
    outs = [td[lo]]
    for level in range(lo + 1, top + 1):
        bottom_up = (Edge(outs[-1], down=down, kernel=kernel), td[level])
        nodes.append(Node(f"N{level}", level, bottom_up, width, "concat", "csp", csp))
        outs.append(f"N{level}")
    if extra:
        two = (Edge(f"L{top}", down=down, kernel=kernel), Edge(f"N{top}", down=down, kernel=kernel))
        nodes.append(Node(f"P{top + 1}", top + 1, two, width, "sum"))
        outs.append(f"P{top + 1}")
    cfg = ConvCfg(norm="bn", act=act, norm_eps=norm_eps, norm_momentum=norm_momentum)
    return NeckGraph(
        in_specs=in_specs,
        nodes=tuple(nodes),
        outputs=tuple(outs),
        conv=cfg,
        align=cfg,
        align_mode="auto",
        up=upsample,
        down=down,
    )


@register_neck(
    "csp_pan",
    summary="PP-PicoDet CSP-PAN: 1x1 to one width, depthwise CSP blocks, 5x5/2 depthwise downsampling, extra P6",
    paper="Yu et al., PP-PicoDet: A Better Real-Time Object Detector on Mobile Devices, 2021",
    knobs=CSP_PAN_KNOBS,
    options_from=csp_pan_graph,
    rules={
        "preset": OptionRule(choices=tuple(CSP_PAN_PRESETS), what="CSP-PAN preset"),
        "width": WIDTH,
        "kernel": OptionRule(ge=1, le=31, odd=True),
        "num_csp_blocks": COUNT,
        "upsample": UP,
        "act": ACT,
        "norm_eps": POSITIVE,
        "norm_momentum": MOMENTUM,
    },
    small_options={"width": 16},
)
def csp_pan(in_specs: Sequence[FeatureSpec], **options: object) -> GraphNeck:
    """Build a PP-PicoDet CSP-PAN neck (see :func:`csp_pan_graph`).

    Example:
        >>> neck = csp_pan([FeatureSpec(96, 8), FeatureSpec(192, 16), FeatureSpec(384, 32)], preset="s")
        >>> feats = [torch.randn(1, 96, 13, 17), torch.randn(1, 192, 7, 9), torch.randn(1, 384, 4, 5)]
        >>> [tuple(o.shape[1:]) for o in neck(feats)]
        [(96, 13, 17), (96, 7, 9), (96, 4, 5), (96, 2, 3)]
    """
    return GraphNeck(csp_pan_graph(in_specs, **options))  # type: ignore[arg-type]
