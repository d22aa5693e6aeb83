"""Helpers shared by the graph generators: level ranges, per-level widths, extra coarse levels."""

from __future__ import annotations

from collections.abc import Sequence

from necklace.checks import as_int, is_int
from necklace.graph import Edge, Node, input_name
from necklace.layers.conv import ACTS, NORMS
from necklace.layers.resample import UP_MODES
from necklace.options import OptionRule
from necklace.spec import MAX_CHANNELS, MAX_LEVEL, MIN_LEVEL, FeatureSpec

__all__ = [
    "ACT",
    "COMPARE_OPTIONS",
    "COUNT",
    "EXTRA_MODES",
    "FPN_RULES",
    "LEVEL",
    "MAX_REPEATS",
    "MOMENTUM",
    "MULTIPLIER",
    "NORM",
    "POSITIVE",
    "UP",
    "WIDTH",
    "extra_level_nodes",
    "resolve_levels",
    "resolve_widths",
]

EXTRA_MODES = ("subsample", "maxpool", "conv")

#: the most repeats / stages an option may ask for (published necks: 12 at most)
MAX_REPEATS = 128
#: option rules shared by the neck families (see :class:`necklace.options.OptionRule`)
WIDTH = OptionRule(ge=1, le=MAX_CHANNELS)  # widths, channel counts
COUNT = OptionRule(ge=1, le=MAX_REPEATS)  # repeats, stages
MULTIPLIER = OptionRule(gt=0, le=4)  # depth / width multipliers (published presets: 0.25..1.5), expansions
POSITIVE = OptionRule(gt=0, le=1)  # eps
MOMENTUM = OptionRule(ge=0, le=1)
LEVEL = OptionRule(ge=MIN_LEVEL, le=MAX_LEVEL)
ACT = OptionRule(choices=tuple(ACTS))
NORM = OptionRule(choices=NORMS)
UP = OptionRule(choices=UP_MODES)
#: the options a pyramid neck gets in a detection comparison: one width, the same levels (P3-P6), so the necks
#: differ only in how they mix the levels (``NeckInfo.compare_options``)
COMPARE_OPTIONS: dict[str, object] = {"width": 32, "levels": [3, 6]}
#: the FPN-style options (fpn, pafpn, augfpn)
FPN_RULES: dict[str, OptionRule] = {
    "width": WIDTH,
    "extra": OptionRule(choices=EXTRA_MODES),
    "extra_source": OptionRule(choices=("input", "output")),
    "upsample": UP,
    "norm": NORM,
    "act": ACT,
}


def resolve_levels(
    in_specs: Sequence[FeatureSpec], levels: Sequence[int] | None, default_extra: int, cover_inputs: bool = False
) -> tuple[int, int]:
    """Return the output level range ``(lo, hi)``; default: the input levels plus ``default_extra`` coarser ones.
    ``cover_inputs``: the neck's top-down path starts at the coarsest input, so ``hi`` may not stop below it."""
    in_levels = [s.level for s in in_specs]
    if levels is None:
        return min(in_levels), max(in_levels) + default_extra
    if not isinstance(levels, (list, tuple)) or len(levels) != 2:
        raise ValueError(f"levels must be a (min_level, max_level) pair such as (3, 7), got {levels!r}.")
    lo, hi = as_int(levels[0], "levels[0] (min_level)"), as_int(levels[1], "levels[1] (max_level)")
    if lo > hi:
        raise ValueError(f"levels {levels!r}: min_level {lo} is above max_level {hi}.")
    if lo < min(in_levels) or lo > max(in_levels):
        raise ValueError(
            f"levels {levels!r}: the finest output level {lo} (stride {2**lo}) must be one of the backbone's "
            f"levels {in_levels} (strides {[s.stride for s in in_specs]}). Add a backbone map at stride "
            f"{2**lo} to in_specs (e.g. features_only out_indices including it) or raise min_level."
        )
    if hi > MAX_LEVEL:
        raise ValueError(f"levels {levels!r}: max_level {hi} is above the supported {MAX_LEVEL}.")
    if cover_inputs and hi < max(in_levels):
        raise ValueError(
            f"levels {levels!r}: max_level {hi} is below the coarsest backbone level {max(in_levels)} (stride "
            f"{2 ** max(in_levels)}), where the top-down path starts. Use max_level >= {max(in_levels)}, or pass "
            "only the backbone maps the neck should read as in_specs."
        )
    return lo, hi


def resolve_widths(width: int | Sequence[int], lo: int, hi: int) -> dict[int, int]:
    """Map each level ``lo..hi`` to its channel count: one ``C`` for all, or one value per level."""
    n = hi - lo + 1
    if is_int(width):
        widths = [as_int(width, "width")] * n
    elif isinstance(width, (list, tuple)) and len(width) == n:
        widths = [as_int(w, f"width[{i}]") for i, w in enumerate(width)]
    else:
        raise ValueError(
            f"width must be one int or a list of {n} ints (one per output level {lo}..{hi}), got {width!r}."
        )
    for w in widths:
        if w <= 0:
            raise ValueError(f"width values must be positive, got {width!r}.")
    return {lo + i: w for i, w in enumerate(widths)}


def extra_level_nodes(
    top_in_level: int,
    hi: int,
    widths: dict[int, int],
    mode: str,
    source: str,
    last_output: str,
    relu_before_extra: bool,
    prefix: str = "P",
) -> list[Node]:
    """Nodes for the levels coarser than the backbone's last one (``top_in_level + 1 .. hi``).

    ``mode``: ``subsample`` (1x1 max-pool stride 2, torchvision ``LastLevelMaxPool``), ``maxpool`` (3x3/2),
    ``conv`` (3x3 stride-2 conv, RetinaNet P6/P7). ``source``: ``input`` (first extra level from the backbone's
    C5) or ``output`` (from the neck's P5). ``relu_before_extra`` applies a ReLU before the 2nd and later
    extra levels (torchvision/detectron2 P7 = conv(relu(P6)); mmdet's default omits it).
    """
    if mode not in EXTRA_MODES:
        raise ValueError(f"extra {mode!r} is not one of {list(EXTRA_MODES)}.")
    if not isinstance(relu_before_extra, bool):
        raise TypeError(f"relu_before_extra must be True or False, got {relu_before_extra!r}.")
    if source not in ("input", "output"):
        raise ValueError(f"extra_source {source!r} must be 'input' (from C{top_in_level}) or 'output'.")
    nodes = []
    prev = last_output
    for level in range(top_in_level + 1, hi + 1):
        first = level == top_in_level + 1
        src = input_name(top_in_level) if (first and source == "input") else prev
        pre = "relu" if (relu_before_extra and not first) else None
        name = f"{prefix}{level}"
        nodes.append(Node(name, level, (Edge(src, down=mode, pre_act=pre),), channels=widths[level]))
        prev = name
    return nodes
