"""mmdetection ``FPN`` / ``PAFPN`` -> necklace ``fpn`` / ``pafpn`` (``variant='mmdet'``): options and weights.

mmdet itself is not needed: the converters read a state dict (or an mmdet module, when one is at hand, which
also lets them check the neck computes the same function) and the option helper reads a config dict. The key
mapping is derived from the necklace neck's graph:

===================================  ========================================================
mmdet (``ConvModule``)               necklace
===================================  ========================================================
``lateral_convs.{i}.conv`` (1x1)      ``nodes.L<l>.edges.0.align.conv``
``fpn_convs.{i}.conv`` (3x3)          ``nodes.P<l>.block.conv``
``fpn_convs.{n+k}.conv`` (extra)      ``nodes.P<top+1+k>.edges.0.ops.0.conv`` (stride-2 conv)
``downsample_convs.{i}.conv``         ``nodes.B<l+1>.edges.1.ops.0.conv`` (PAFPN)
``pafpn_convs.{i}.conv``              ``nodes.N<l+1>.block.conv`` (PAFPN)
``<module>.bn`` / ``.gn`` (norm)      ``<module>.norm``
===================================  ========================================================

``i`` counts the used levels from ``start_level``; ``n`` is their number. Levels added by max-pool
(``add_extra_convs=False``) have no weights.

Example:
    >>> from necklace import FeatureSpec
    >>> specs = [FeatureSpec(256, 4), FeatureSpec(512, 8), FeatureSpec(1024, 16), FeatureSpec(2048, 32)]
    >>> retinanet = dict(type="FPN", in_channels=[256, 512, 1024, 2048], out_channels=256, start_level=1,
    ...                  add_extra_convs="on_input", num_outs=5)
    >>> name, opts = mmdet_neck_options(retinanet, specs)
    >>> name, opts["levels"], opts["extra"], opts["extra_source"], opts["relu_before_extra"]
    ('fpn', (3, 7), 'conv', 'input', False)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from torch import Tensor, nn

from necklace.convert.torchvision import _check_graph, _fpn_layout, _indices, _map_weights, _source_state
from necklace.graph import GraphNeck, input_name
from necklace.spec import FeatureSpec, as_feature_specs

__all__ = ["from_mmdet_fpn", "from_mmdet_nasfpn", "from_mmdet_pafpn", "mmdet_neck_options", "neck_from_mmdet"]

_NORM_ABBRS = ("bn", "gn", "ln", "in")
_ACTS = {"ReLU": "relu", "ReLU6": "relu6", "SiLU": "silu", "Swish": "silu", "HSwish": "hardswish", "GELU": "gelu"}
_DEFAULTS: dict[str, Any] = {
    "start_level": 0,
    "end_level": -1,
    "add_extra_convs": False,
    "relu_before_extra_convs": False,
    "no_norm_on_lateral": False,
    "conv_cfg": None,
    "norm_cfg": None,
    "act_cfg": None,
    "upsample_cfg": {"mode": "nearest"},
}


def _mmdet_cfg(cfg: Mapping[str, Any] | nn.Module) -> dict[str, Any]:
    """Normalise an mmdet FPN/PAFPN config dict or module to ``type`` + constructor arguments."""
    if isinstance(cfg, nn.Module):
        m: Any = cfg  # an mmdet module: read its attributes untyped
        kind = type(m).__name__
        if kind not in ("FPN", "PAFPN"):
            raise ValueError(f"expected an mmdet FPN or PAFPN module, got {kind} (subclasses add modules).")
        conv = m.fpn_convs[0]
        out: dict[str, Any] = {
            "type": kind,
            "in_channels": list(m.in_channels),
            "out_channels": m.out_channels,
            "num_outs": m.num_outs,
            "start_level": m.start_level,
            "end_level": m.end_level,
            "add_extra_convs": m.add_extra_convs,
            "relu_before_extra_convs": m.relu_before_extra_convs,
            "no_norm_on_lateral": m.no_norm_on_lateral,
            "conv_cfg": conv.conv_cfg,
            "norm_cfg": conv.norm_cfg,
            "act_cfg": conv.act_cfg if conv.with_activation else None,
            "upsample_cfg": dict(getattr(m, "upsample_cfg", {"mode": "nearest"})),
        }
        return out
    if not isinstance(cfg, Mapping):
        raise TypeError(f"expected an mmdet neck config dict or module, got {type(cfg).__name__}.")
    out = {**_DEFAULTS, **cfg}
    out.setdefault("type", "FPN")
    if out["type"] not in ("FPN", "PAFPN"):
        raise ValueError(f"mmdet neck type {out['type']!r}: only 'FPN' and 'PAFPN' convert to necklace here.")
    missing = [k for k in ("in_channels", "out_channels", "num_outs") if k not in out]
    if missing:
        raise ValueError(f"mmdet {out['type']} config lacks {missing}.")
    if out["add_extra_convs"] is True:
        out["add_extra_convs"] = "on_input"
    return out


def mmdet_neck_options(
    cfg: Mapping[str, Any] | nn.Module, in_specs: Sequence[FeatureSpec | tuple[int, int]]
) -> tuple[str, dict[str, Any]]:
    """``(neck_name, options)`` such that ``build_neck(neck_name, in_specs, **options)`` computes what the mmdet
    ``FPN``/``PAFPN`` (a config dict or a module) computes on the backbone maps ``in_specs`` (all of them,
    finest first, as mmdet receives them; the ones before ``start_level`` are read but ignored by both).

    ``add_extra_convs``: ``False`` -> ``extra='subsample'``; ``'on_input'``/``True`` -> ``extra='conv',
    extra_source='input'``; ``'on_output'`` -> ``extra_source='output'``; ``relu_before_extra_convs`` ->
    ``relu_before_extra``. ``norm_cfg`` BN/SyncBN -> ``'bn'``, GN -> ``'gn'``.
    """
    c = _mmdet_cfg(cfg)
    kind = c["type"]
    specs = as_feature_specs(in_specs)
    in_channels = list(c["in_channels"])
    if [s.channels for s in specs] != in_channels:
        raise ValueError(
            f"in_specs channels {[s.channels for s in specs]} differ from the mmdet {kind} in_channels "
            f"{in_channels}; give one FeatureSpec per backbone map mmdet receives, finest first."
        )
    n_in, start = len(in_channels), int(c["start_level"])
    end = c["end_level"]
    if end not in (-1, n_in - 1):
        raise ValueError(
            f"mmdet end_level={end} ignores the inputs above it; necklace necks read every input up to the "
            f"coarsest: drop those maps from in_specs (and from the features) instead."
        )
    lo, top = specs[start].level, specs[-1].level
    n_extra = int(c["num_outs"]) - (n_in - start)
    opts: dict[str, Any] = {"width": int(c["out_channels"]), "levels": (lo, top + n_extra)}
    add = c["add_extra_convs"]
    if n_extra > 0 and add:
        if add not in ("on_input", "on_output"):
            raise ValueError(
                f"mmdet add_extra_convs={add!r} has no necklace equivalent (supported: False, 'on_input', 'on_output')."
            )
        opts.update(extra="conv", extra_source="input" if add == "on_input" else "output")
        opts["relu_before_extra"] = bool(c["relu_before_extra_convs"])
    elif n_extra > 0:
        opts["extra"] = "subsample"
    up = dict(c["upsample_cfg"] or {"mode": "nearest"})
    mode = up.pop("mode", "nearest")
    scale = up.pop("scale_factor", None)
    align_corners = up.pop("align_corners", None)
    if kind == "PAFPN":
        mode, scale, align_corners, up = "nearest", None, None, {}  # PAFPN's top-down is hard-wired nearest
    if up or scale not in (None, 2) or mode not in ("nearest", "bilinear") or (mode == "bilinear" and align_corners):
        raise ValueError(
            f"mmdet upsample_cfg {c['upsample_cfg']!r}: necklace resizes to the finer map's size with 'nearest' or "
            "'bilinear' (align_corners=False); scale_factor 2 is only equivalent where sizes double exactly."
        )
    opts["upsample"] = mode
    if c["conv_cfg"] not in (None, {"type": "Conv2d"}, {"type": "Conv"}):
        raise ValueError(f"mmdet conv_cfg {c['conv_cfg']!r} has no necklace equivalent (plain Conv2d only).")
    norm_cfg = c["norm_cfg"]
    norm: str | None = None
    if norm_cfg is not None:
        ntype = norm_cfg.get("type")
        if ntype in ("BN", "BN2d", "SyncBN"):
            norm = "bn"
        elif ntype == "GN":
            norm = "gn"
            groups = int(norm_cfg.get("num_groups", 32))
            if kind == "PAFPN":
                opts["gn_groups"] = groups
            elif groups != 32:
                raise ValueError(f"mmdet FPN GroupNorm with num_groups={groups}: necklace's fpn uses 32 groups.")
        else:
            raise ValueError(f"mmdet norm_cfg {norm_cfg!r} has no necklace equivalent (BN, SyncBN, GN).")
        if abs(float(norm_cfg.get("eps", 1e-5)) - 1e-5) > 1e-12 or float(norm_cfg.get("momentum", 0.1)) != 0.1:
            raise ValueError(f"mmdet norm_cfg {norm_cfg!r}: necklace's norms use eps 1e-5 and momentum 0.1.")
        if c["no_norm_on_lateral"]:
            raise ValueError("mmdet no_norm_on_lateral=True (no norm on the 1x1 laterals) has no necklace equivalent.")
    opts["norm"] = norm
    act_cfg = c["act_cfg"]
    act: str | None = None
    if act_cfg is not None:
        atype = act_cfg.get("type")
        if atype == "LeakyReLU" and float(act_cfg.get("negative_slope", 0.01)) == 0.1:
            act = "leaky_relu"
        elif atype in _ACTS:
            act = _ACTS[atype]
        else:
            raise ValueError(f"mmdet act_cfg {act_cfg!r} has no necklace equivalent ({sorted(_ACTS)}).")
    opts["act"] = act
    if kind == "PAFPN":
        opts["variant"] = "mmdet"
        return "pafpn", opts
    return "fpn", opts


def _norm_prefix(sd: Mapping[str, Tensor], module: str) -> str | None:
    for abbr in _NORM_ABBRS:
        if any(k.startswith(f"{module}.{abbr}.") for k in sd):
            return f"{module}.{abbr}."
    return None


def _pair(sd: Mapping[str, Tensor], neck_prefix: str, module: str) -> tuple[str, str, str | None]:
    return (neck_prefix, f"{module}.conv.", _norm_prefix(sd, module))


def _check_module(cfg: Mapping[str, Tensor] | nn.Module, neck: nn.Module, name: str) -> None:
    """When the source is an mmdet module, check the neck's graph equals the one its options give."""
    if not isinstance(cfg, nn.Module):
        return
    from necklace.necks.fpn import fpn_graph
    from necklace.necks.pafpn import pafpn_graph

    g = cast(GraphNeck, neck)
    in_channels = list(getattr(cfg, "in_channels", []))
    if [s.channels for s in g.in_specs] != in_channels:
        raise ValueError(
            f"the mmdet neck reads maps with channels {in_channels}; the necklace neck's in_specs have "
            f"{[s.channels for s in g.in_specs]}."
        )
    kind, opts = mmdet_neck_options(cfg, g.in_specs)
    if kind != name:
        raise ValueError(f"an mmdet {type(cfg).__name__} converts to a necklace {kind!r} neck, not {name!r}.")
    expected = (fpn_graph if kind == "fpn" else pafpn_graph)(g.in_specs, **opts)
    _check_graph(g, expected, f"mmdet {type(cfg).__name__}", opts, kind)


def _convert(
    sd_or_module: Mapping[str, Tensor] | nn.Module, neck: nn.Module, prefix: str, kind: str
) -> dict[str, Tensor]:
    layout = _fpn_layout(neck, kind)
    _check_module(sd_or_module, neck, kind)
    sd = _source_state(sd_or_module, prefix)
    source = "mmdet PAFPN" if kind == "pafpn" else "mmdet FPN"
    hint = "Use mmdet_neck_options(mmdet_cfg_or_module, in_specs) to get the matching necklace options."
    n = len(layout.levels)
    lat = _indices(sd, "lateral_convs")
    if lat != list(range(n)):
        raise ValueError(
            f"the {source} state dict has lateral_convs {lat} but the neck has {n} lateral levels "
            f"{list(layout.levels)} (mmdet start_level picks the first; num_outs - {n} extra levels). {hint}"
        )
    fpn_idx = _indices(sd, "fpn_convs")
    conv_extras = [e for e in layout.extras if e.down == "conv"]
    n_extra_convs = len(fpn_idx) - n
    if fpn_idx != list(range(len(fpn_idx))) or n_extra_convs < 0:
        raise ValueError(f"the {source} state dict has fpn_convs {fpn_idx}; expected 0..{n - 1} plus extra convs.")
    if n_extra_convs:
        if len(conv_extras) != len(layout.extras) or len(conv_extras) != n_extra_convs:
            raise ValueError(
                f"the {source} state dict has {n_extra_convs} extra stride-2 convs (fpn_convs.{n}..) but the neck's "
                f"extra levels are {[(e.name, e.down) for e in layout.extras]}; build it with extra='conv' and "
                f"levels=(lo, {layout.levels[-1] + n_extra_convs}). {hint}"
            )
    elif any(e.down != "subsample" for e in layout.extras):
        raise ValueError(
            f"the {source} state dict has no extra convs, so its extra levels are max-pool k1 s2; the neck's are "
            f"{[(e.name, e.down) for e in layout.extras]}: build it with extra='subsample'. {hint}"
        )
    pairs = []
    for i in range(n):
        pairs.append(_pair(sd, layout.laterals[i], f"lateral_convs.{i}"))
        pairs.append(_pair(sd, layout.outputs[i], f"fpn_convs.{i}"))
    for k, e in enumerate(conv_extras if n_extra_convs else ()):
        pairs.append(_pair(sd, e.prefix, f"fpn_convs.{n + k}"))
    if kind == "pafpn":
        for name, prefixes in (("downsample_convs", layout.downs), ("pafpn_convs", layout.bottom_up)):
            idx = _indices(sd, name)
            if idx != list(range(n - 1)):
                raise ValueError(f"the {source} state dict has {name} {idx}; the neck has {n - 1} bottom-up levels.")
            pairs += [_pair(sd, p, f"{name}.{i}") for i, p in enumerate(prefixes)]
    return _map_weights(sd, neck, pairs, source, hint)


def from_mmdet_fpn(
    state_dict: Mapping[str, Tensor] | nn.Module, neck: nn.Module, prefix: str = ""
) -> dict[str, Tensor]:
    """Map an mmdet ``FPN`` state dict (or the module) onto a necklace ``fpn`` neck's keys (``strict=True``-loadable).

    ``prefix`` selects the neck inside a detector's state dict (``"neck."`` for mmdet detectors). A state dict
    cannot tell ``'on_input'`` from ``'on_output'`` when C5 has ``out_channels`` channels, nor whether a ReLU
    precedes P7; pass the module to have those checked too. Mismatches raise ``ValueError``.
    """
    return _convert(state_dict, neck, prefix, "fpn")


def from_mmdet_pafpn(
    state_dict: Mapping[str, Tensor] | nn.Module, neck: nn.Module, prefix: str = ""
) -> dict[str, Tensor]:
    """Map an mmdet ``PAFPN`` state dict (or the module) onto a necklace ``pafpn(variant='mmdet')`` neck's keys."""
    return _convert(state_dict, neck, prefix, "pafpn")


def neck_from_mmdet(module: nn.Module, in_specs: Sequence[FeatureSpec | tuple[int, int]]) -> GraphNeck:
    """Build the necklace neck equivalent to an mmdet ``FPN``/``PAFPN`` module and load its weights."""
    from necklace.registry import build_neck

    kind, opts = mmdet_neck_options(module, in_specs)
    neck = cast(GraphNeck, build_neck(kind, in_specs, **opts))
    neck.load_state_dict((from_mmdet_fpn if kind == "fpn" else from_mmdet_pafpn)(module, neck))
    return neck


# --------------------------------------------------------------------------- NAS-FPN
def _nasfpn_options(module: nn.Module, neck: GraphNeck) -> dict[str, Any]:
    """The ``nasfpn_graph`` options equivalent to an mmdet ``NASFPN`` module, for ``neck``'s in_specs."""
    m: Any = module
    if type(m).__name__ != "NASFPN":
        raise ValueError(f"expected an mmdet NASFPN module, got {type(m).__name__}.")
    specs = neck.in_specs
    if [s.channels for s in specs] != list(m.in_channels):
        raise ValueError(
            f"the mmdet NASFPN reads maps with channels {list(m.in_channels)}; the necklace neck's in_specs have "
            f"{[s.channels for s in specs]}. Give one FeatureSpec per map mmdet receives, finest first."
        )
    if m.end_level not in (-1, len(specs) - 1):
        raise ValueError(f"mmdet end_level={m.end_level} has no necklace nasfpn equivalent (drop those inputs).")
    norm_cfg = m.norm_cfg
    if norm_cfg is None:
        norm = None
    elif norm_cfg.get("type") in ("BN", "BN2d", "SyncBN"):
        norm = "bn"
    else:
        raise ValueError(f"mmdet NASFPN norm_cfg {norm_cfg!r}: necklace's nasfpn converter supports BN or None.")
    lo = specs[m.start_level].level
    return {"width": int(m.out_channels), "stack_times": int(m.stack_times), "levels": (lo, lo + 4), "norm": norm}


def from_mmdet_nasfpn(
    state_dict: Mapping[str, Tensor] | nn.Module, neck: nn.Module, prefix: str = ""
) -> dict[str, Tensor]:
    """Map an mmdet ``NASFPN`` state dict (or the module) onto a necklace ``nasfpn`` neck's keys.

    =================================================  ===================================================
    mmdet                                              necklace
    =================================================  ===================================================
    ``lateral_convs.{i}.conv`` / ``.bn``               ``nodes.P<l>_in.edges.0.align.conv`` / ``.norm``
    ``extra_downsamples.{i}.0.conv`` / ``.bn``         ``nodes.P<top+1+i>_in.edges.0.align.conv`` / ``.norm``
    ``fpn_stages.{s}.{cell}.out_conv.conv`` / ``.bn``  ``nodes.s<s>_<cell>.block.conv`` / ``.norm``
    =================================================  ===================================================

    Build the neck with ``build_neck("nasfpn", in_specs, width=out_channels, stack_times=stack_times,
    levels=(l, l + 4))`` where ``l`` is the level of mmdet's ``start_level`` input. Passing the module also
    checks those options; mismatches raise ``ValueError``.
    """
    from necklace.necks.nasfpn import NASFPN_CELLS, nasfpn_graph, nasfpn_input_name

    hint = (
        "Build the neck with build_neck('nasfpn', in_specs, width=out_channels, stack_times=stack_times, "
        "levels=(l, l + 4)), l = the level of mmdet's start_level input."
    )
    if not isinstance(neck, GraphNeck) or "s0_gp_64_4" not in neck.nodes:
        raise ValueError(f"the target is not a necklace nasfpn neck (no node 's0_gp_64_4'). {hint}")
    if isinstance(state_dict, nn.Module):
        opts = _nasfpn_options(state_dict, neck)
        _check_graph(neck, nasfpn_graph(neck.in_specs, **opts), "mmdet NASFPN", opts, "nasfpn")
    sd = _source_state(state_dict, prefix)
    graph = neck.graph
    in_names = {input_name(s.level) for s in graph.in_specs}
    lat_levels: list[int] = []
    extra_levels: list[int] = []
    for node in graph.nodes:
        if node.name == nasfpn_input_name(node.level):
            (lat_levels if node.edges[0].source in in_names else extra_levels).append(node.level)
    stages = sum(1 for n in graph.nodes if n.name.endswith("_gp_64_4"))
    for name, want in (
        ("lateral_convs", len(lat_levels)),
        ("extra_downsamples", len(extra_levels)),
        ("fpn_stages", stages),
    ):
        got = _indices(sd, name)
        if got != list(range(want)):
            raise ValueError(f"the mmdet NASFPN state dict has {name} {got}; the neck has {want}. {hint}")
    pairs = []
    for i, level in enumerate(lat_levels):
        pairs.append(_pair(sd, f"nodes.{nasfpn_input_name(level)}.edges.0.align", f"lateral_convs.{i}"))
    for i, level in enumerate(extra_levels):
        pairs.append(_pair(sd, f"nodes.{nasfpn_input_name(level)}.edges.0.align", f"extra_downsamples.{i}.0"))
    for k in range(stages):
        for cell, *_, with_conv in NASFPN_CELLS:
            if with_conv:
                pairs.append(_pair(sd, f"nodes.s{k}_{cell}.block", f"fpn_stages.{k}.{cell}.out_conv"))
    return _map_weights(sd, neck, pairs, "mmdet NASFPN", hint)
