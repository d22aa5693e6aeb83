"""torchvision ``FeaturePyramidNetwork`` -> necklace ``fpn``: options that reproduce it, and its weights.

The key mapping is derived from the necklace neck's graph (its lateral levels ``L<l>``, outputs ``P<l>`` and
extra levels), never from a fixed table, and the result loads with ``strict=True``:

========================================  ===============================================
torchvision                               necklace ``fpn``
========================================  ===============================================
``inner_blocks.{i}.0`` (1x1, ``.1`` norm)  ``nodes.L<l>.edges.0.align.conv`` (``.norm``)
``layer_blocks.{i}.0`` (3x3, ``.1`` norm)  ``nodes.P<l>.block.conv`` (``.norm``)
``extra_blocks.p6`` / ``.p7``             ``nodes.P6.edges.0.ops.0.conv`` / ``nodes.P7...``
========================================  ===============================================

``i`` counts the FPN's inputs finest first; ``l`` is the matching pyramid level. The pre-v2 keys
``inner_blocks.{i}.weight`` (before torchvision wrapped the convs in ``Conv2dNormActivation``) are accepted.

Example:
    >>> from torchvision.ops import FeaturePyramidNetwork
    >>> from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    >>> from necklace import FeatureSpec
    >>> tv = FeaturePyramidNetwork([64, 128, 256], 32, extra_blocks=LastLevelP6P7(256, 32))
    >>> specs = [FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)]
    >>> torchvision_fpn_options(tv, specs)
    {'width': 32, 'levels': (3, 7), 'extra': 'conv', 'extra_source': 'input', 'relu_before_extra': True, 'norm': None}
    >>> neck = fpn_from_torchvision(tv, specs)  # build + load; or: neck.load_state_dict(from_torchvision_fpn(tv, neck))
    >>> feats = [torch.randn(1, 64, 25, 33), torch.randn(1, 128, 13, 17), torch.randn(1, 256, 7, 9)]
    >>> with torch.no_grad():
    ...     ref, out = list(tv(dict(zip("abc", feats))).values()), neck(feats)
    >>> max(float((a - b).abs().max()) for a, b in zip(out, ref))
    0.0
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from torch import Tensor, nn

from necklace.graph import GraphNeck, NeckGraph, input_name
from necklace.spec import FeatureSpec, as_feature_specs

__all__ = ["fpn_from_torchvision", "from_torchvision_fpn", "torchvision_fpn_options"]


# --------------------------------------------------------------------------- shared with convert.mmdet
@dataclass(frozen=True)
class _Extra:
    """One level above the backbone's coarsest: how the neck builds it."""

    name: str
    level: int
    down: str  # conv | subsample | maxpool | avgpool | dwconv
    source: str  # 'input' (C_top), 'output' (the neck's top output) or 'chain' (the previous extra level)
    pre_act: str | None
    prefix: str  # state-dict prefix of its stride-2 conv (``conv``/``dwconv`` only)


@dataclass(frozen=True)
class _Layout:
    """Where an FPN/PAFPN neck keeps each conv, in the reference libraries' order (finest level first)."""

    levels: tuple[int, ...]  # backbone levels with a lateral
    laterals: tuple[str, ...]  # 1x1 lateral convs
    outputs: tuple[str, ...]  # 3x3 FPN output convs
    downs: tuple[str, ...]  # PAFPN bottom-up stride-2 convs (level lo+1..top)
    bottom_up: tuple[str, ...]  # PAFPN 3x3 convs after the bottom-up sums
    extras: tuple[_Extra, ...]
    upsample: str


def _fpn_layout(neck: nn.Module, kind: str) -> _Layout:
    """Read the conv layout of a necklace ``fpn`` (``kind='fpn'``) or mmdet-variant ``pafpn`` neck's graph."""
    if not isinstance(neck, GraphNeck):
        raise TypeError(f"expected a necklace GraphNeck (e.g. build_neck({kind!r}, ...)), got {type(neck).__name__}.")
    g: NeckGraph = neck.graph
    nodes = {n.name: n for n in g.nodes}
    top = max(s.level for s in g.in_specs)
    levels = sorted(n.level for n in g.nodes if n.name == f"L{n.level}")
    what = f"a necklace {kind!r} neck"
    if not levels or levels != list(range(levels[0], top + 1)):
        raise ValueError(
            f"the neck is not {what}: expected lateral nodes L<lo>..L{top} (one per backbone level up to "
            f"C{top}), found {[f'L{lv}' for lv in levels]}. Build it with build_neck({kind!r}, in_specs, ...)."
        )
    upsample = g.up
    for lv in levels:
        node = nodes[f"L{lv}"]
        e0 = node.edges[0]
        if e0.source != input_name(lv) or (e0.align or g.align_mode) != "always" or node.block != "identity":
            raise ValueError(f"the neck is not {what}: node L{lv} is not a 1x1 lateral on C{lv} ({node}).")
        expect = 2 if lv < top else 1
        if len(node.edges) != expect or node.fuse != "sum" or (lv < top and node.edges[1].source != f"L{lv + 1}"):
            raise ValueError(f"the neck is not {what}: node L{lv} is not lateral + top-down sum ({node}).")
        if lv < top:
            upsample = node.edges[1].up or g.up
        out = nodes.get(f"P{lv}")
        if out is None or out.block != "conv" or [e.source for e in out.edges] != [f"L{lv}"]:
            raise ValueError(f"the neck is not {what}: node P{lv} should be a 3x3 conv on L{lv}, got {out}.")
    downs: list[str] = []
    bottom_up: list[str] = []
    last_output = f"P{top}"
    if kind == "pafpn":
        for lv in levels[1:]:
            b, n = nodes.get(f"B{lv}"), nodes.get(f"N{lv}")
            if b is None:
                raise ValueError(
                    f"the neck is not a pafpn with variant='mmdet' (no node B{lv}: the bottom-up sum that mmdet "
                    "PAFPN feeds upwards before its pafpn_convs). Build it with pafpn(..., variant='mmdet')."
                )
            if [e.source for e in b.edges][:1] != [f"P{lv}"] or len(b.edges) != 2 or n is None or n.block != "conv":
                raise ValueError(f"the neck is not a mmdet-variant pafpn: unexpected B{lv}/N{lv} nodes ({b}, {n}).")
            downs.append(f"nodes.B{lv}.edges.1.ops.0")
            bottom_up.append(f"nodes.N{lv}.block")
        if len(levels) > 1:
            last_output = f"N{top}"
    extras: list[_Extra] = []
    prev = last_output
    for node in g.nodes:
        if node.level <= top:
            continue
        if len(node.edges) != 1:
            raise ValueError(f"the neck is not {what}: extra level {node.name} has {len(node.edges)} inputs.")
        e = node.edges[0]
        if not extras and e.source == input_name(top):
            source = "input"
        elif e.source == prev:
            source = "chain" if extras else "output"
        else:
            raise ValueError(f"the neck is not {what}: extra level {node.name} reads {e.source!r}.")
        extras.append(
            _Extra(node.name, node.level, e.down or g.down, source, e.pre_act, f"nodes.{node.name}.edges.0.ops.0")
        )
        prev = node.name
    return _Layout(
        levels=tuple(levels),
        laterals=tuple(f"nodes.L{lv}.edges.0.align" for lv in levels),
        outputs=tuple(f"nodes.P{lv}.block" for lv in levels),
        downs=tuple(downs),
        bottom_up=tuple(bottom_up),
        extras=tuple(extras),
        upsample=upsample,
    )


def _source_state(state_dict: Mapping[str, Tensor] | nn.Module, prefix: str) -> dict[str, Tensor]:
    """The source state dict (a module's own, or a mapping), restricted to ``prefix`` with it stripped."""
    sd = state_dict.state_dict() if isinstance(state_dict, nn.Module) else state_dict
    if not isinstance(sd, Mapping):
        raise TypeError(f"expected a state dict (mapping name -> Tensor) or a module, got {type(sd).__name__}.")
    out = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"the state dict has no keys under prefix {prefix!r}; first keys: {list(sd)[:5]}.")
    return out


def _indices(sd: Mapping[str, Tensor], name: str) -> list[int]:
    """Sorted module-list indices ``i`` of keys ``<name>.<i>.*``."""
    pat = re.compile(rf"^{re.escape(name)}\.(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pat.match(k))})


def _short(keys: Sequence[str], n: int = 6) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _map_weights(
    sd: Mapping[str, Tensor],
    neck: nn.Module,
    pairs: Sequence[tuple[str, str, str | None]],
    source: str,
    hint: str,
) -> dict[str, Tensor]:
    """Translate ``sd`` onto ``neck``'s keys through ``(neck_prefix, source_conv_prefix, source_norm_prefix)``.

    A necklace ``ConvNormAct`` at ``neck_prefix`` holds ``conv.*`` and ``norm.*``; the source keeps the conv at
    ``source_conv_prefix`` (``weight``/``bias`` directly below it) and the norm at ``source_norm_prefix``.
    Every neck key must be filled and every source key used, with equal shapes; otherwise ``ValueError``.
    """
    target = neck.state_dict()
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    shapes: list[str] = []
    for neck_prefix, conv_src, norm_src in pairs:
        for key in target:
            if not key.startswith(neck_prefix + "."):
                continue
            rest = key[len(neck_prefix) + 1 :]
            part, _, leaf = rest.partition(".")
            src_prefix = conv_src if part == "conv" else norm_src if part == "norm" else None
            if src_prefix is None:
                missing.append(f"{key} (no counterpart in {source})")
                continue
            src_key = src_prefix + leaf
            if src_key not in sd:
                if leaf == "num_batches_tracked":  # FrozenBatchNorm2d / old checkpoints have none
                    out[key] = target[key].new_zeros(())
                    continue
                missing.append(f"{src_key} (for {key})")
                continue
            if tuple(sd[src_key].shape) != tuple(target[key].shape):
                shapes.append(f"{src_key} {tuple(sd[src_key].shape)} vs {key} {tuple(target[key].shape)}")
                continue
            out[key] = sd[src_key].detach()
            used.add(src_key)
    if shapes:
        raise ValueError(f"{source} -> necklace: shape mismatch: {_short(shapes, 4)}. {hint}")
    unmapped = [k for k in target if k not in out and not any(k.startswith(p + ".") for p, _, _ in pairs)]
    missing += [f"{k} (no counterpart in {source})" for k in unmapped]
    unused = [k for k in sd if k not in used]
    problems = []
    if missing:
        problems.append(f"the neck needs weights the state dict lacks: {_short(missing)}")
    if unused:
        problems.append(f"the state dict has weights the neck has no place for: {_short(unused)}")
    if problems:
        raise ValueError(f"{source} -> necklace: {'; '.join(problems)}. {hint}")
    return out


def _check_graph(neck: GraphNeck, expected: NeckGraph, source: str, options: Mapping[str, Any], name: str) -> None:
    if neck.graph != expected:
        kwargs = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise ValueError(
            f"the necklace neck does not compute what this {source} computes. Build it with "
            f"build_neck({name!r}, in_specs, {kwargs})."
        )


# --------------------------------------------------------------------------- torchvision
_OLD_KEY = re.compile(r"^(inner_blocks|layer_blocks)\.(\d+)\.(weight|bias)$")


def _upgrade_keys(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map pre-v2 keys ``inner_blocks.{i}.weight`` to ``inner_blocks.{i}.0.weight`` (torchvision's own hook)."""
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        m = _OLD_KEY.match(k)
        out[f"{m.group(1)}.{m.group(2)}.0.{m.group(3)}" if m else k] = v
    return out


def _norm_name(block: nn.Module) -> str | None:
    """necklace norm name for a torchvision ``Conv2dNormActivation``'s norm (``None`` when it has none)."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    mods = list(block.children()) if isinstance(block, nn.Sequential) else [block]
    if len(mods) == 1:
        return None
    norm = mods[1]
    if isinstance(norm, (nn.BatchNorm2d, FrozenBatchNorm2d)):
        if abs(norm.eps - 1e-5) > 1e-12:
            raise ValueError(f"torchvision FPN norm eps {norm.eps} differs from necklace's 1e-5; no equivalent.")
        return "bn"
    if isinstance(norm, nn.GroupNorm):
        import math

        if norm.num_groups != math.gcd(32, norm.num_channels) or abs(norm.eps - 1e-5) > 1e-12:
            raise ValueError(
                f"torchvision FPN GroupNorm({norm.num_groups}, {norm.num_channels}, eps={norm.eps}): necklace's "
                f"fpn uses gcd(32, channels)={math.gcd(32, norm.num_channels)} groups and eps 1e-5."
            )
        return "gn"
    raise ValueError(f"torchvision FPN norm layer {type(norm).__name__} has no necklace equivalent (bn, gn).")


def torchvision_fpn_options(fpn: nn.Module, in_specs: Sequence[FeatureSpec | tuple[int, int]]) -> dict[str, Any]:
    """The ``fpn`` options that reproduce a torchvision ``FeaturePyramidNetwork`` fed maps ``in_specs``.

    ``LastLevelMaxPool`` -> ``extra='subsample'``; ``LastLevelP6P7(in, out)`` -> ``extra='conv',
    relu_before_extra=True, extra_source='output' if in == out else 'input'``; ``norm_layer`` BatchNorm2d /
    FrozenBatchNorm2d -> ``norm='bn'``. ``in_specs`` lists the maps given to the torchvision FPN, finest first.
    """
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    specs = as_feature_specs(in_specs)
    inner = list(getattr(fpn, "inner_blocks", []))
    if not inner or not hasattr(fpn, "layer_blocks"):
        raise TypeError(f"expected a torchvision FeaturePyramidNetwork, got {type(fpn).__name__}.")
    convs = [next(m for m in b.modules() if isinstance(m, nn.Conv2d)) for b in inner]
    in_channels = [c.in_channels for c in convs]
    if [s.channels for s in specs] != in_channels:
        raise ValueError(
            f"in_specs channels {[s.channels for s in specs]} differ from the torchvision FPN's in_channels_list "
            f"{in_channels}; give one FeatureSpec per map it reads, finest first."
        )
    width = convs[0].out_channels
    norm = _norm_name(inner[0])
    lo, top = specs[0].level, specs[-1].level
    extra_blocks = getattr(fpn, "extra_blocks", None)
    opts: dict[str, Any] = {"width": width}
    if extra_blocks is None:
        opts.update(levels=(lo, top))
    elif isinstance(extra_blocks, LastLevelMaxPool):
        opts.update(levels=(lo, top + 1), extra="subsample")
    elif isinstance(extra_blocks, LastLevelP6P7):
        if norm is not None:
            raise ValueError(
                "torchvision's LastLevelP6P7 convs have no norm while this FPN's convs do; necklace's fpn puts the "
                "norm on every conv, so this combination has no exact equivalent."
            )
        source = "output" if extra_blocks.use_P5 else "input"
        opts.update(levels=(lo, top + 2), extra="conv", extra_source=source, relu_before_extra=True)
    else:
        raise ValueError(
            f"torchvision extra block {type(extra_blocks).__name__} has no necklace equivalent "
            "(supported: None, LastLevelMaxPool, LastLevelP6P7)."
        )
    opts["norm"] = norm
    return opts


def from_torchvision_fpn(
    state_dict: Mapping[str, Tensor] | nn.Module, neck: nn.Module, prefix: str = ""
) -> dict[str, Tensor]:
    """Map a torchvision ``FeaturePyramidNetwork`` state dict onto a necklace ``fpn`` neck's keys.

    ``state_dict`` may be the torchvision module itself, which also lets the converter check that the neck
    computes the same function (extra blocks, P6 source, norm). ``prefix`` selects the FPN inside a larger
    state dict (``"backbone.fpn."`` for a torchvision detector). The result loads with
    ``neck.load_state_dict(..., strict=True)``; any mismatch raises ``ValueError`` naming the keys and the fix.
    """
    layout = _fpn_layout(neck, "fpn")
    if isinstance(state_dict, nn.Module):
        graph_neck = cast(GraphNeck, neck)
        specs = [s for s in graph_neck.in_specs if s.level >= layout.levels[0]]
        n_inner = len(getattr(state_dict, "inner_blocks", []))
        if n_inner != len(specs):
            raise ValueError(
                f"the torchvision FPN reads {n_inner} maps but the neck has laterals at levels {list(layout.levels)}."
            )
        opts = torchvision_fpn_options(state_dict, specs)
        from necklace.necks.fpn import fpn_graph

        _check_graph(graph_neck, fpn_graph(graph_neck.in_specs, **opts), "torchvision FPN", opts, "fpn")
    sd = _upgrade_keys(_source_state(state_dict, prefix))
    hint = "Use torchvision_fpn_options(tv_fpn, in_specs) to get the matching fpn options."
    n = len(layout.levels)
    inner = _indices(sd, "inner_blocks")
    if inner != list(range(n)) or _indices(sd, "layer_blocks") != list(range(n)):
        raise ValueError(
            f"the torchvision FPN state dict has inner_blocks {inner} but the neck has {n} lateral levels "
            f"{list(layout.levels)} (C{layout.levels[0]}..C{layout.levels[-1]}). {hint}"
        )
    if layout.upsample != "nearest":
        raise ValueError(f"torchvision's FPN upsamples 'nearest'; the neck uses {layout.upsample!r}. {hint}")
    pairs: list[tuple[str, str, str | None]] = []
    for i in range(n):
        pairs.append((layout.laterals[i], f"inner_blocks.{i}.0.", f"inner_blocks.{i}.1."))
        pairs.append((layout.outputs[i], f"layer_blocks.{i}.0.", f"layer_blocks.{i}.1."))
    extras = layout.extras
    if "extra_blocks.p6.weight" in sd:
        p6 = sd["extra_blocks.p6.weight"]
        use_p5 = p6.shape[0] == p6.shape[1]  # torchvision: use_P5 = in_channels == out_channels
        want = "output" if use_p5 else "input"
        if (
            len(extras) != 2
            or any(e.down != "conv" for e in extras)
            or extras[0].source != want
            or extras[1].pre_act != "relu"
        ):
            raise ValueError(
                "the state dict has LastLevelP6P7 (extra_blocks.p6/p7: P6 from "
                f"{'P5' if use_p5 else 'C5'}, P7 = conv(relu(P6))) but the neck's extra levels are "
                f"{[(e.name, e.down, e.source, e.pre_act) for e in extras]}. Build it with extra='conv', "
                f"extra_source={want!r}, relu_before_extra=True and levels=(lo, {layout.levels[-1] + 2})."
            )
        pairs += [(extras[0].prefix, "extra_blocks.p6.", None), (extras[1].prefix, "extra_blocks.p7.", None)]
    elif extras and (len(extras) > 1 or extras[0].down != "subsample" or extras[0].pre_act):
        raise ValueError(
            "without extra_blocks.p6/p7 weights the torchvision FPN has no extra level or one LastLevelMaxPool "
            f"level; the neck's extra levels are {[(e.name, e.down) for e in extras]}. Build it with "
            f"extra='subsample' and levels=(lo, {layout.levels[-1] + 1}) (or levels=(lo, {layout.levels[-1]}))."
        )
    return _map_weights(sd, neck, pairs, "torchvision FPN", hint)


def fpn_from_torchvision(fpn: nn.Module, in_specs: Sequence[FeatureSpec | tuple[int, int]]) -> GraphNeck:
    """Build the necklace ``fpn`` equivalent to a torchvision ``FeaturePyramidNetwork`` and load its weights."""
    from necklace.necks.fpn import fpn as build_fpn

    neck = build_fpn(as_feature_specs(in_specs), **torchvision_fpn_options(fpn, in_specs))
    neck.load_state_dict(from_torchvision_fpn(fpn, neck))
    return neck
