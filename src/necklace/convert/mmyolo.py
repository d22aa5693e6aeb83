"""mmyolo YOLOv6 necks -> necklace ``rep_pafpn`` / ``rep_bifpan``: weights, key for key.

mmyolo itself is not needed: :func:`from_mmyolo_reppafpn` reads a state dict (or the mmyolo module) of
``YOLOv6RepPAFPN`` / ``YOLOv6CSPRepPAFPN`` (onto ``rep_pafpn``) or ``YOLOv6RepBiPAFPN`` /
``YOLOv6CSPRepBiPAFPN`` (onto ``rep_bifpan``), three output levels. The mapping follows the necklace graph:

===========================================  ==================================================================
mmyolo                                       necklace
===========================================  ==================================================================
``reduce_layers.2`` (1x1 ConvModule)          ``nodes.R5.block``
``upsample_layers.{0,1}`` (ConvTranspose2d)   ``nodes.{T4,N3}.edges.0.ops.0``
``upsample_layers.{i}.upsample`` (BiFusion)   ``nodes.B{4,3}.edges.0.ops.0``
``upsample_layers.{i}.conv1`` / ``.conv2``    ``nodes.B{4,3}.edges.1.align`` / ``.edges.2.align``
``upsample_layers.{i}.downsample``            ``nodes.B{4,3}.edges.2.ops.0``
``upsample_layers.{i}.conv3``                 ``nodes.B{4,3}.block``
``top_down_layers.0.0`` / ``.0.1``            ``nodes.T4.block`` (stage) / ``nodes.R4.block`` (1x1 reduce)
``top_down_layers.1``                         ``nodes.N3.block``
``downsample_layers.{i}``                     ``nodes.N{4,5}.edges.0.ops.0``
``bottom_up_layers.{i}``                      ``nodes.N{4,5}.block``
``RepStageBlock.conv1`` / ``.block.{j}``      ``RepBlock.blocks.0`` / ``.blocks.{j+1}``
``RepVGGBlock.rbr_dense/rbr_1x1/rbr_identity``  ``RepConv.conv_kxk/conv_1x1/identity``
``BepC3StageBlock.conv1/conv2/conv3``         ``BepC3.cv1/cv2/cv3``
``BepC3StageBlock.block.conv1/.block.{j}``    ``BepC3.m.0`` / ``.m.{j+1}`` (BottleRep ``conv1/conv2/alpha``)
``ConvModule.conv`` / ``.bn``                 ``ConvNormAct.conv`` / ``.norm``
===========================================  ==================================================================

Level names are shown for outputs P3-P5; the converter reads the neck's actual levels. mmyolo's YOLOv6-L
(``ConvWrapper`` basic blocks) has conv biases that YOLOv6's own ``ConvBNSiLU`` (and necklace) lack; it is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from torch import Tensor, nn

from necklace.convert.torchvision import _short, _source_state
from necklace.graph import GraphNeck
from necklace.layers.rep import BepC3, BottleRep, RepBlock, RepConv

__all__ = ["from_mmyolo_reppafpn"]

_CLASSES = ("YOLOv6RepPAFPN", "YOLOv6CSPRepPAFPN", "YOLOv6RepBiPAFPN", "YOLOv6CSPRepBiPAFPN")
_Pairs = list[tuple[str, str]]


def _conv_norm(neck: str, src: str) -> _Pairs:
    return [(f"{neck}.conv.", f"{src}.conv."), (f"{neck}.norm.", f"{src}.bn.")]


def _repconv(neck: str, src: str) -> _Pairs:
    return [
        *_conv_norm(f"{neck}.conv_kxk", f"{src}.rbr_dense"),
        *_conv_norm(f"{neck}.conv_1x1", f"{src}.rbr_1x1"),
        (f"{neck}.identity.", f"{src}.rbr_identity."),
        (f"{neck}.alpha", f"{src}.alpha"),
    ]


def _stage(module: nn.Module, neck: str, src: str) -> _Pairs:
    """Pairs for a stage block: necklace ``RepBlock`` <-> ``RepStageBlock``, ``BepC3`` <-> ``BepC3StageBlock``."""
    pairs: _Pairs = []
    if isinstance(module, RepBlock):
        for j in range(len(module.blocks)):
            pairs += _repconv(f"{neck}.blocks.{j}", f"{src}.conv1" if j == 0 else f"{src}.block.{j - 1}")
        return pairs
    if isinstance(module, BepC3):
        for ours, theirs in (("cv1", "conv1"), ("cv2", "conv2"), ("cv3", "conv3")):
            pairs += _conv_norm(f"{neck}.{ours}", f"{src}.{theirs}")
        for j, bottle in enumerate(module.m):
            b_neck = f"{neck}.m.{j}"
            b_src = f"{src}.block.conv1" if j == 0 else f"{src}.block.block.{j - 1}"
            assert isinstance(bottle, BottleRep)
            for name in ("conv1", "conv2"):
                if not isinstance(getattr(bottle, name), RepConv):
                    raise ValueError(
                        "mmyolo's YOLOv6-L stage blocks (ConvWrapper: conv with bias + BN) have no necklace "
                        "counterpart; only RepVGG basic blocks (YOLOv6 t/n/s/m) convert."
                    )
                pairs += _repconv(f"{b_neck}.{name}", f"{b_src}.{name}")
            pairs.append((f"{b_neck}.alpha", f"{b_src}.alpha"))
        return pairs
    raise ValueError(f"unexpected stage block {type(module).__name__}; expected RepBlock or BepC3.")


def _layout(neck: GraphNeck, bifusion: bool) -> _Pairs:
    """(necklace prefix, mmyolo prefix) pairs for a three-level ``rep_pafpn`` / ``rep_bifpan`` neck."""
    names = {n.name: n for n in neck.graph.nodes}
    levels = sorted(int(o[1:]) for o in neck.graph.outputs)
    if len(levels) != 3 or [o[0] for o in neck.graph.outputs] != ["N"] * 3:
        raise ValueError(
            f"mmyolo's YOLOv6 necks have three outputs; the necklace neck's are {list(neck.graph.outputs)}. "
            "Build it with build_neck('rep_pafpn' / 'rep_bifpan', in_specs) on three (four for BiFusion) levels."
        )
    lo, mid, top = levels

    def block(node: str) -> nn.Module:
        return cast(nn.Module, neck.nodes[node].block)

    pairs: _Pairs = [*_conv_norm(f"nodes.R{top}.block", "reduce_layers.2")]
    for i, level in enumerate((mid, lo)):  # upsample_layers / top_down_layers count from the top
        stage = f"N{level}" if level == lo else f"T{level}"
        td = f"top_down_layers.{i}.0" if level == mid else f"top_down_layers.{i}"
        has_b = f"B{level}" in names
        if has_b != bifusion:
            kind = "YOLOv6RepBiPAFPN (BiFusion)" if bifusion else "YOLOv6RepPAFPN"
            raise ValueError(
                f"the mmyolo state dict is a {kind} but the necklace neck's level-{level} node "
                f"{'is' if has_b else 'is not'} a BiFusion; build 'rep_bifpan' for BiFusion, 'rep_pafpn' otherwise."
            )
        if bifusion:
            b, up = f"nodes.B{level}", f"upsample_layers.{i}"
            pairs += [(f"{b}.edges.0.ops.0.", f"{up}.upsample.")]
            pairs += _conv_norm(f"{b}.edges.1.align", f"{up}.conv1")
            pairs += _conv_norm(f"{b}.edges.2.align", f"{up}.conv2")
            pairs += _conv_norm(f"{b}.edges.2.ops.0", f"{up}.downsample")
            pairs += _conv_norm(f"{b}.block", f"{up}.conv3")
        else:
            pairs += [(f"nodes.{stage}.edges.0.ops.0.", f"upsample_layers.{i}.")]
        pairs += _stage(block(stage), f"nodes.{stage}.block", td)
        if level == mid:
            pairs += _conv_norm(f"nodes.R{level}.block", f"top_down_layers.{i}.1")
    for i, level in enumerate((mid, top)):
        pairs += _conv_norm(f"nodes.N{level}.edges.0.ops.0", f"downsample_layers.{i}")
        pairs += _stage(block(f"N{level}"), f"nodes.N{level}.block", f"bottom_up_layers.{i}")
    return pairs


def from_mmyolo_reppafpn(
    state_dict: Mapping[str, Tensor] | nn.Module, neck: nn.Module, prefix: str = ""
) -> dict[str, Tensor]:
    """Map an mmyolo YOLOv6 neck's state dict (or the module) onto a necklace neck's keys (``strict``-loadable).

    ``YOLOv6RepPAFPN``/``YOLOv6CSPRepPAFPN`` go onto ``rep_pafpn``, ``YOLOv6RepBiPAFPN``/``YOLOv6CSPRepBiPAFPN``
    (whose state dict has BiFusion ``upsample_layers.*.conv3``) onto ``rep_bifpan``, built with the same preset
    (or ``depth``/``width``/``block`` options) on the same input channels. ``prefix`` selects the neck inside a
    detector's state dict (``"neck."``). Every necklace key must be filled and every source key used, with
    equal shapes; otherwise ``ValueError``.

    Example:
        >>> from necklace import build_neck
        >>> neck = build_neck("rep_pafpn", [(64, 8), (128, 16), (256, 32)], preset="n")  # YOLOv6-N widths
        >>> from_mmyolo_reppafpn({"reduce_layers.2.conv.weight": torch.zeros(32, 256, 1, 1)}, neck)
        Traceback (most recent call last):
        ...
        ValueError: shape mismatches ...: nodes.R5.block.conv.weight (64, 256, 1, 1) <- reduce_layers.2.conv.weight ...
    """
    if isinstance(state_dict, nn.Module) and type(state_dict).__name__ not in _CLASSES:
        raise ValueError(f"expected one of mmyolo's {list(_CLASSES)}, got {type(state_dict).__name__}.")
    if not isinstance(neck, GraphNeck):
        raise TypeError(f"expected a necklace GraphNeck (rep_pafpn / rep_bifpan), got {type(neck).__name__}.")
    sd = _source_state(state_dict, prefix)
    bifusion = any(k.startswith("upsample_layers.0.conv3.") for k in sd)
    pairs = _layout(cast(GraphNeck, neck), bifusion)
    target = neck.state_dict()
    out: dict[str, Tensor] = {}
    missing: list[str] = []
    shapes: list[str] = []
    for key, value in target.items():
        src = next((s + key[len(n) :] for n, s in pairs if key.startswith(n) or key == n.rstrip(".")), None)
        if src is None or src not in sd:
            if src is not None and key.endswith("num_batches_tracked"):
                out[key] = value.clone()
                continue
            missing.append(f"{key} (mmyolo {src})" if src else key)
            continue
        if tuple(sd[src].shape) != tuple(value.shape):
            shapes.append(f"{key} {tuple(value.shape)} <- {src} {tuple(sd[src].shape)}")
            continue
        out[key] = sd[src]
    used = {s + k[len(n) :] for k in out for n, s in pairs if k.startswith(n) or k == n.rstrip(".")}
    unused = sorted(set(sd) - used)
    hint = (
        "Build the necklace neck with the mmyolo model's preset (depth/width factors) and input channels, "
        "e.g. build_neck('rep_bifpan', in_specs, preset='n')."
    )
    if shapes:
        raise ValueError(f"shape mismatches between the mmyolo state dict and the neck: {_short(shapes)}. {hint}")
    if unused:
        raise ValueError(f"the mmyolo state dict has keys without a necklace counterpart: {_short(unused)}. {hint}")
    if missing:
        raise ValueError(f"the necklace neck has keys the mmyolo state dict lacks: {_short(missing)}. {hint}")
    return out
