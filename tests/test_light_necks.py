"""Light and re-parameterised necks: YOLOv6 RepPAN / RepBiFPAN, PP-PicoDet CSP-PAN, ``lite`` PAFPN / BiFPN.

Parameter counts against the published / derived figures, ``deploy()`` equality at odd sizes (no BatchNorm and
no multi-branch RepConv left), the engine options they need (``align='always'`` before a learned downsample,
``down='dpconv'``, ``Edge.kernel``), and weight-for-weight parity with mmyolo's YOLOv6 necks when mmyolo is
installed (``pip install --no-deps mmyolo==0.6.0`` next to mmdet; see ``_mmdet_shim``).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch
from tests.helpers import pyramid, randomize_bn
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

import necklace
from necklace import ConvCfg, FeatureSpec, GraphNeck, NeckGraph, Node
from necklace.deploy import reparameterize
from necklace.graph import Edge
from necklace.layers import BepC3, BottleRep, DepthwiseSeparableConv, Fuse, RepConv, Resample, SeparableConv

ODD = (97, 131)  # feature maps of a 97x131 image: 25x33 / 13x17 / 7x9 / 4x5 at strides 4-32


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _specs(channels: tuple[int, ...], strides: tuple[int, ...]) -> list[FeatureSpec]:
    return [FeatureSpec(c, s) for c, s in zip(channels, strides, strict=True)]


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics, BottleRep alphas and fusion weights, so that every folding step matters; eval()."""
    randomize_bn(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in model.named_parameters():
        if name.endswith("alpha") or name.endswith("fuse.weight"):
            p.data.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model.eval()


def _max_rel(a: list[Tensor], b: list[Tensor]) -> float:
    return max(((x - y).abs().max() / y.abs().max()).item() for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------------------- parameter counts
# YOLOv6 backbone maps at width 1.0 are C2..C5 = 128/256/512/1024 (EfficientRep / CSPBep ``channels_list``);
# the presets scale them by the width factor: N 0.25, S 0.5, M 0.75, L 1.0.
def _yolov6_specs(width: float, bifusion: bool) -> list[FeatureSpec]:
    channels = tuple(int(c * width) for c in (128, 256, 512, 1024))
    if bifusion:
        return _specs(channels, (4, 8, 16, 32))
    return _specs(channels[1:], (8, 16, 32))


#: (neck, preset) -> (training-form params, deployed params or None). Sources:
#: - rep_bifpan n/s: the reference notes §4.3 (derived from meituan/YOLOv6 ``RepBiFPANNeck`` with the N/S
#:   ``channels_list``, ``fuse_model`` + ``switch_to_deploy``): 1,193,952 / 1,085,216 and 4,759,488 / 4,337,216;
#:   mmyolo ``YOLOv6RepBiPAFPN`` (n, s) has the same training counts.
#: - rep_pafpn n/s: mmyolo 0.6.0 ``YOLOv6RepPAFPN`` (yolov6_{n,s}_syncbn configs): 1,218,592 and 4,859,968; the
#:   peers table (peers_on_this_machine.md) lists them deployed as 1.10 M and 4.40 M.
#: - rep_pafpn / rep_bifpan m: mmyolo ``YOLOv6CSPRepPAFPN`` / ``YOLOv6CSPRepBiPAFPN`` (hidden_ratio 2/3, RepVGG
#:   basic blocks, ReLU), counted from the modules; deployed form not published.
#: - l: mmyolo's L configs count 13,429,400 / 14,497,432 because its ``ConvWrapper`` basic blocks keep a conv bias
#:   in front of the BN; YOLOv6's own ``ConvBNSiLU`` (and necklace) have none: 4 stages x 12 convs x
#:   (128 + 64 + 128 + 256) channels = 6,912 fewer.
PARAM_COUNTS: dict[tuple[str, str], tuple[int, int | None]] = {
    ("rep_bifpan", "n"): (1_193_952, 1_085_216),
    ("rep_bifpan", "s"): (4_759_488, 4_337_216),
    ("rep_pafpn", "n"): (1_218_592, 1_100_192),
    ("rep_pafpn", "s"): (4_859_968, 4_397_888),
    ("rep_pafpn", "m"): (7_672_428, None),
    ("rep_bifpan", "m"): (8_243_052, None),
    ("rep_pafpn", "l"): (13_429_400 - 6_912, None),
    ("rep_bifpan", "l"): (14_497_432 - 6_912, None),
}
WIDTHS = {"n": 0.25, "s": 0.5, "m": 0.75, "l": 1.0}


@pytest.mark.parametrize(("name", "preset"), list(PARAM_COUNTS), ids=[f"{n}-{p}" for n, p in PARAM_COUNTS])
def test_yolov6_parameter_counts(name: str, preset: str) -> None:
    train, deployed = PARAM_COUNTS[(name, preset)]
    neck = necklace.build_neck(name, _yolov6_specs(WIDTHS[preset], name == "rep_bifpan"), preset=preset)
    assert _n_params(neck) == train
    if deployed is not None:
        assert _n_params(necklace.deploy(neck.eval())) == deployed


def _csp_pan_params(in_channels: tuple[int, ...], c: int, k: int = 5, n: int = 1, extra: bool = True) -> int:
    """PP-PicoDet CSP-PAN parameter count from PaddleDetection ``csp_pan.py`` (derived by hand, no bias, BN)."""

    def conv_bn(cin: int, cout: int, kernel: int = 1, groups: int = 1) -> int:
        return cin // groups * cout * kernel * kernel + 2 * cout

    def dp(ch: int) -> int:  # DP_Module: depthwise k x k + BN, pointwise 1x1 + BN
        return conv_bn(ch, ch, k, groups=ch) + conv_bn(ch, ch)

    mid = c // 2  # CSPLayer(2C -> C), expand_ratio 0.5: main/short 1x1, final 1x1, n bottlenecks on main
    bottleneck = conv_bn(mid, mid) + dp(mid)  # DarknetBottleneck(expansion 1.0, depthwise, no identity)
    csp = 2 * conv_bn(2 * c, mid) + conv_bn(2 * mid, c) + n * bottleneck
    levels = len(in_channels)
    channel_t = sum(conv_bn(ci, c) for ci in in_channels)
    return channel_t + (levels - 1) * csp + (levels - 1) * (dp(c) + csp) + (2 * dp(c) if extra else 0)


@pytest.mark.parametrize(("preset", "width"), [("s", 96), ("m", 128), ("l", 160)])
def test_csp_pan_parameter_counts(preset: str, width: int) -> None:
    in_channels = (116, 232, 464)  # CSPPAN's default in_channels (ShuffleNetV2 1x maps) in csp_pan.py
    neck = necklace.build_neck("csp_pan", _specs(in_channels, (8, 16, 32)), preset=preset)
    assert neck.out_specs == tuple(FeatureSpec(width, s) for s in (8, 16, 32, 64))
    assert _n_params(neck) == _csp_pan_params(in_channels, width)
    flat = necklace.build_neck("csp_pan", _specs(in_channels, (8, 16, 32)), preset=preset, extra=False)
    assert _n_params(flat) == _csp_pan_params(in_channels, width, extra=False)


def test_pafpn_lite_counts_and_blocks() -> None:
    specs = _specs((512, 1024, 2048), (8, 16, 32))
    heavy = necklace.build_neck("pafpn", specs, levels=(3, 5))
    lite = necklace.build_neck("pafpn", specs, levels=(3, 5), lite=True)
    c = 256
    laterals = sum(ci * c + c for ci in (512, 1024, 2048))
    sep = 9 * c + c * c + c  # depthwise 3x3 (no bias) + pointwise 1x1 with bias (no norm)
    assert _n_params(heavy) == laterals + 3 * (9 * c * c + c) + 2 * 2 * (9 * c * c + c)  # torchvision/mmdet figure
    assert _n_params(lite) == laterals + 3 * sep + 2 * 2 * sep  # 3 FPN convs, 2 down + 2 bottom-up convs
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.groups == 1 for m in lite.modules())
    assert sum(isinstance(m, SeparableConv) for m in lite.modules()) == 7
    # the default is untouched
    assert necklace.build_neck("pafpn", specs, levels=(3, 5), lite=False).graph == heavy.graph


def test_bifpn_lite_is_efficientdet_lite() -> None:
    specs = _specs((40, 112, 320), (8, 16, 32))
    d0 = necklace.build_neck("bifpn", specs)
    lite = necklace.build_neck("bifpn", specs, lite=True)
    fuses = [m for m in lite.modules() if isinstance(m, Fuse)]
    assert fuses and all(m.mode == "sum" and m.weight is None for m in fuses)
    assert any(isinstance(m, nn.ReLU6) for m in lite.modules())
    assert not any(isinstance(m, nn.SiLU) for m in lite.modules())
    n_weights = sum(m.weight.numel() for m in d0.modules() if isinstance(m, Fuse) and m.weight is not None)
    assert _n_params(lite) == _n_params(d0) - n_weights  # same convs, no fusion weights
    assert lite.graph.conv.act == "relu6" and d0.graph.conv.act == "swish"
    explicit = necklace.build_neck("bifpn", specs, lite=True, fuse="fast", act="swish")
    assert explicit.graph == d0.graph


# ---------------------------------------------------------------------------------------------- deploy equality
LIGHT: dict[str, tuple[str, dict[str, Any], tuple[int, ...], tuple[int, ...]]] = {
    "rep_pafpn_n": ("rep_pafpn", {"preset": "n", "repeats": 4}, (24, 48, 96), (8, 16, 32)),
    "rep_pafpn_m": ("rep_pafpn", {"preset": "m", "width": 0.125, "repeats": 4}, (24, 48, 96), (8, 16, 32)),
    "rep_pafpn_l": ("rep_pafpn", {"preset": "l", "width": 0.125, "repeats": 4}, (24, 48, 96), (8, 16, 32)),
    "rep_bifpan_n": ("rep_bifpan", {"preset": "n", "repeats": 4}, (16, 24, 48, 96), (4, 8, 16, 32)),
    "rep_bifpan_3in": ("rep_bifpan", {"preset": "n", "repeats": 4}, (24, 48, 96), (8, 16, 32)),
    "rep_bifpan_m": ("rep_bifpan", {"preset": "m", "width": 0.125}, (16, 24, 48, 96), (4, 8, 16, 32)),
    "csp_pan_s": ("csp_pan", {"width": 32}, (24, 48, 96), (8, 16, 32)),
    "csp_pan_c2": ("csp_pan", {"width": 32, "num_csp_blocks": 2}, (16, 24, 48, 96), (4, 8, 16, 32)),
    "pafpn_lite": ("pafpn", {"width": 32, "lite": True, "norm": "bn", "act": "relu"}, (24, 48, 96), (8, 16, 32)),
    "pafpn_lite_panet": ("pafpn", {"width": 32, "lite": True, "variant": "panet"}, (24, 48, 96), (8, 16, 32)),
    "bifpn_lite": ("bifpn", {"width": 32, "repeats": 2, "lite": True}, (24, 48, 96), (8, 16, 32)),
}


@pytest.mark.parametrize("case", list(LIGHT))
def test_deploy_equals_eval_at_odd_size(case: str) -> None:
    name, opts, channels, strides = LIGHT[case]
    specs = _specs(channels, strides)
    torch.manual_seed(0)
    neck = _randomize(necklace.build_neck(name, specs, **opts))
    feats = pyramid(specs, ODD)
    with torch.no_grad():
        ref = neck(feats)
    deployed = necklace.deploy(neck, (feats,))
    assert not any(isinstance(m, _BatchNorm) for m in deployed.modules()), "a BatchNorm survived deploy()"
    reps = [m for m in deployed.modules() if isinstance(m, RepConv)]
    assert all(m.deployed and m.conv_kxk is None and m.identity is None for m in reps)
    assert not deployed.training
    with torch.no_grad():
        out = deployed(feats)
    assert [o.shape for o in out] == [r.shape for r in ref]
    assert _max_rel(out, ref) <= 1e-4
    assert _n_params(deployed) <= _n_params(neck)


def test_yolov6_deploy_folds_every_branch() -> None:
    neck = _randomize(necklace.build_neck("rep_bifpan", _yolov6_specs(0.25, True), preset="n"))
    n_rep = sum(isinstance(m, RepConv) for m in neck.modules())
    assert n_rep == 4 * 4  # four stages (Rep_p4, Rep_p3, Rep_n3, Rep_n4) of round(12 * 0.33) = 4 RepVGG blocks
    deployed = necklace.deploy(neck)
    report = necklace.DeployReport.of(deployed)
    assert report.max_rel_diff is not None and report.max_rel_diff <= 1e-4
    convs = [m for m in deployed.modules() if isinstance(m, RepConv)]
    assert convs and all(sorted(dict(m.named_children())) == ["act", "conv"] for m in convs)


# ---------------------------------------------------------------------------------------------- graph structure
def test_rep_bifpan_topology() -> None:
    neck = necklace.build_neck("rep_bifpan", _yolov6_specs(0.25, True), preset="n")
    g = neck.graph
    assert [n.name for n in g.nodes] == ["R5", "B4", "T4", "R4", "B3", "N3", "N4", "N5"]
    b4 = next(n for n in g.nodes if n.name == "B4")
    assert [e.source for e in b4.edges] == ["R5", "C4", "C3"]
    edge = neck.nodes["B4"].edges[2]  # BiFusion's finer input: 1x1 ConvBNReLU then 3x3/2 ConvBNReLU
    assert edge.align is not None and edge.align.conv.kernel_size == (1, 1)
    assert edge.ops[0].conv.kernel_size == (3, 3) and edge.ops[0].conv.stride == (2, 2)
    assert isinstance(neck.nodes["B4"].edges[0].ops[0], nn.ConvTranspose2d)
    assert "C3 [1x1 64->64, conv /2]" in g.describe()
    # three inputs: the finest top-down node has no finer map and concatenates like RepPAN
    g3 = necklace.build_neck("rep_bifpan", _yolov6_specs(0.25, False), preset="n").graph
    assert [n.name for n in g3.nodes] == ["R5", "B4", "T4", "R4", "N3", "N4", "N5"]
    assert NeckGraph.from_dict(g.to_dict()) == g


def test_csp_pan_topology() -> None:
    neck = necklace.build_neck("csp_pan", _specs((24, 48, 96), (8, 16, 32)), width=32)
    g = neck.graph
    assert g.outputs == ("N3", "N4", "N5", "P6")
    p6 = next(n for n in g.nodes if n.name == "P6")
    assert [e.source for e in p6.edges] == ["L5", "N5"] and p6.fuse == "sum"
    down = neck.nodes["N4"].edges[0].ops[0]
    assert isinstance(down, DepthwiseSeparableConv)
    assert down.dw.conv.kernel_size == (5, 5) and down.dw.conv.groups == 32 and down.dw.conv.stride == (2, 2)
    assert isinstance(down.dw.act, nn.Hardswish) and isinstance(down.dw.norm, nn.BatchNorm2d)
    assert "dpconv 5x5 /2" in g.describe()
    assert NeckGraph.from_dict(g.to_dict()) == g


def test_align_always_on_a_learned_down_edge() -> None:
    specs = _specs((8, 16), (8, 16))
    plain = NeckGraph(specs, (Node("N4", 4, (Edge("C3", down="conv"),), 12, "sum"),), ("N4",))
    always = NeckGraph(specs, (Node("N4", 4, (Edge("C3", down="conv", align="always"),), 12, "sum"),), ("N4",))
    e_plain, e_always = GraphNeck(plain).nodes["N4"].edges[0], GraphNeck(always).nodes["N4"].edges[0]
    assert e_plain.align is None and e_plain.ops[0].conv.weight.shape == (12, 8, 3, 3)
    assert e_always.align.conv.weight.shape == (12, 8, 1, 1) and e_always.ops[0].conv.weight.shape == (12, 12, 3, 3)
    r = Resample(8, 8, steps=1, align=True, down="dpconv", kernel=5)
    assert r(torch.zeros(1, 8, 13, 17), (7, 9)).shape == (1, 8, 7, 9)


def test_edge_kernel_round_trips_and_is_validated() -> None:
    e = Edge("P5", down="dpconv", kernel=5)
    assert e.to_dict() == {"source": "P5", "down": "dpconv", "kernel": 5}
    assert Edge.coerce(e.to_dict()) == e
    with pytest.raises(ValueError, match="positive odd int"):
        Edge("P5", kernel=4)
    with pytest.raises(ValueError, match="positive odd int"):
        Edge("P5", kernel=True)


def test_bottlerep_and_bepc3_reparameterize() -> None:
    cfg = ConvCfg(norm="bn", act="relu", norm_eps=1e-3)
    x = torch.randn(2, 24, 9, 11)
    for m in (BottleRep(24, 24, cfg), BepC3(24, 16, n=4, expansion=0.5, cfg=cfg)):
        _randomize(m)
        with torch.no_grad():
            ref = m(x)
            reparameterize(m)
            assert _max_rel([m(x)], [ref]) <= 1e-5
        assert all(r.deployed for r in m.modules() if isinstance(r, RepConv))
    plain = BottleRep(16, 24, cfg, basic="conv")
    assert not plain.shortcut and plain.alpha is None
    with pytest.raises(ValueError, match="basic block"):
        BottleRep(8, 8, cfg, basic="ghost")


# ---------------------------------------------------------------------------------------------- mmyolo parity
_HAS_MMYOLO = importlib.util.find_spec("mmyolo") is not None and importlib.util.find_spec("mmcv") is not None

MMYOLO_CASES = {
    "YOLOv6RepPAFPN-n": ("YOLOv6RepPAFPN", "rep_pafpn", "n", {}),
    "YOLOv6RepPAFPN-s": ("YOLOv6RepPAFPN", "rep_pafpn", "s", {}),
    "YOLOv6RepBiPAFPN-n": ("YOLOv6RepBiPAFPN", "rep_bifpan", "n", {}),
    "YOLOv6CSPRepPAFPN-m": ("YOLOv6CSPRepPAFPN", "rep_pafpn", "m", {"hidden_ratio": 2 / 3}),
    "YOLOv6CSPRepBiPAFPN-m": ("YOLOv6CSPRepBiPAFPN", "rep_bifpan", "m", {"hidden_ratio": 2 / 3}),
}
_FACTORS = {"n": (0.33, 0.25), "s": (0.33, 0.5), "m": (0.6, 0.75)}


def _mmyolo_neck(cls_name: str, preset: str, extra: dict[str, Any]) -> nn.Module:
    from _mmdet_shim import install_ext_shim  # patches mmcv's compiled-op loader before mmcv.ops

    install_ext_shim()
    import mmyolo.models.necks as necks
    from mmengine.registry import DefaultScope

    deepen, widen = _FACTORS[preset]
    in_channels = [128, 256, 512, 1024] if "Bi" in cls_name else [256, 512, 1024]
    if "CSP" in cls_name:
        extra = {**extra, "block_act_cfg": {"type": "ReLU", "inplace": True}}
    with DefaultScope.overwrite_default_scope("mmyolo"):  # RepStageBlock builds RepVGGBlock by registry name
        cls = getattr(necks, cls_name)
        return cls(in_channels, [128, 256, 512], deepen_factor=deepen, widen_factor=widen, **extra)


@pytest.mark.skipif(not _HAS_MMYOLO, reason="mmyolo (0.6.0) / mmcv not installed")
@pytest.mark.parametrize("case", list(MMYOLO_CASES))
def test_parity_with_mmyolo(case: str) -> None:
    from necklace.convert import from_mmyolo_reppafpn

    cls_name, name, preset, extra = MMYOLO_CASES[case]
    torch.manual_seed(0)
    theirs = _mmyolo_neck(cls_name, preset, extra)
    _randomize(theirs)
    specs = _yolov6_specs(_FACTORS[preset][1], name == "rep_bifpan")
    ours = necklace.build_neck(name, specs, preset=preset).eval()
    assert _n_params(ours) == _n_params(theirs)
    ours.load_state_dict(from_mmyolo_reppafpn(theirs, ours))
    feats = pyramid(specs, (160, 224), batch=1)  # mmyolo needs sizes divisible by 32 (x2 upsample + concat)
    with torch.no_grad():
        ref = theirs(feats)
        for a, b in zip(ours(feats), ref, strict=True):  # the peer's arithmetic: equal up to float rounding
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # a detector state dict: the neck under a prefix
    sd = {f"neck.{k}": v for k, v in theirs.state_dict().items()}
    assert from_mmyolo_reppafpn(sd, ours, prefix="neck.").keys() == ours.state_dict().keys()


@pytest.mark.skipif(not _HAS_MMYOLO, reason="mmyolo (0.6.0) / mmcv not installed")
def test_mmyolo_converter_refuses_the_wrong_neck() -> None:
    from necklace.convert import from_mmyolo_reppafpn

    theirs = _mmyolo_neck("YOLOv6RepBiPAFPN", "n", {})
    pafpn = necklace.build_neck("rep_pafpn", _yolov6_specs(0.25, False), preset="n")
    with pytest.raises(ValueError, match="build 'rep_bifpan'"):
        from_mmyolo_reppafpn(theirs, pafpn)
    wide = necklace.build_neck("rep_bifpan", _yolov6_specs(0.25, True), preset="s")
    with pytest.raises(ValueError, match="shape mismatches"):
        from_mmyolo_reppafpn(theirs, wide)


def test_yolo11_c3k2_blocks_and_c3k_rule() -> None:
    from necklace.layers.blocks import C3k2, CSPBlock

    specs = [FeatureSpec(128, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)]
    neck = necklace.build_neck("yolo11_pafpn", specs, preset="n")
    blocks = [node.block for node in neck.nodes.values()]
    assert all(isinstance(b, C3k2) for b in blocks)
    assert [isinstance(b.m[0], CSPBlock) for b in blocks] == [False, False, False, True]
    t4 = blocks[0]
    # C3k2 (out 128, e 0.5): c = 64; its bottleneck halves the width inside (64 -> 32 -> 64) and adds the input
    assert t4.c == 64 and t4.m[0].cv1.conv.out_channels == 32 and t4.m[0].add
    c3k = blocks[3].m[0]  # C3k at c = 128: two 3x3 + 3x3 residual bottlenecks at 64
    assert len(c3k.m) == 2 and c3k.m[0].cv1.conv.kernel_size == (3, 3) and c3k.m[0].add
    every = necklace.build_neck("yolo11_pafpn", specs, preset="n", c3k=True)
    assert all(isinstance(n.block.m[0], CSPBlock) for n in every.nodes.values())
    none = necklace.build_neck("yolo11_pafpn", specs, preset="l", c3k=False)
    assert not any(isinstance(m, CSPBlock) for n in none.nodes.values() for m in n.block.m)
    assert all(len(n.block.m) == 2 for n in none.nodes.values())  # l: depth 1.0 x 2 repeats
    feats = pyramid(specs, (96, 160), batch=2)
    outs = neck(feats)
    assert [tuple(o.shape[1:]) for o in outs] == [(64, 12, 20), (128, 6, 10), (256, 3, 5)]
    with pytest.raises(ValueError, match="unknown YOLO preset 'q'"):
        necklace.build_neck("yolo11_pafpn", specs, preset="q")
