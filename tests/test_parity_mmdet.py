"""Weight-for-weight parity: mmdet 3.3.0 ``FPN`` / ``PAFPN`` vs necklace ``fpn`` / ``pafpn(variant='mmdet')``.

Needs mmdet, installed without compiled ops (see ``_mmdet_shim``); skipped when it is absent:
``pip install mmengine==0.10.7 mmcv-lite==2.0.1 shapely scipy six terminaltables pycocotools tqdm`` then
``pip install --no-deps mmdet==3.3.0`` (``mmdet.models`` imports pycocotools and tqdm).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tests.helpers import randomize_weights as randomize
from torch import Tensor, nn

from necklace import FeatureSpec, build_neck
from necklace.convert.mmdet import from_mmdet_fpn, from_mmdet_pafpn, mmdet_neck_options, neck_from_mmdet

pytest.importorskip("mmdet")
pytest.importorskip("mmcv")
from _mmdet_shim import import_mmdet_necks  # after the skips: the shim patches mmcv

ATOL = 1e-5
WIDTH = 32
CHANNELS = (8, 16, 32, 64)  # C2..C5
SPECS = [FeatureSpec(c, s) for c, s in zip(CHANNELS, (4, 8, 16, 32), strict=True)]
SIZES = {
    "even": ((64, 64), (32, 32), (16, 16), (8, 8)),
    "odd": ((100, 152), (50, 76), (25, 38), (13, 19)),
    "odd_ceil": ((49, 75), (25, 38), (13, 19), (7, 10)),
}

FPN_CONFIGS: dict[str, dict[str, Any]] = {
    "faster_p2p6_maxpool": dict(num_outs=5),
    "retina_on_input": dict(start_level=1, add_extra_convs="on_input", num_outs=5),
    "retina_on_input_relu": dict(start_level=1, add_extra_convs="on_input", relu_before_extra_convs=True, num_outs=5),
    "on_output": dict(start_level=1, add_extra_convs="on_output", num_outs=5),
    "fcos_on_output_relu": dict(start_level=1, add_extra_convs="on_output", relu_before_extra_convs=True, num_outs=5),
    "extra_true_3_levels": dict(start_level=1, add_extra_convs=True, num_outs=6),
    "maxpool_2_levels": dict(start_level=1, num_outs=5),
    "bn": dict(num_outs=5, norm_cfg=dict(type="BN")),
    "gn_relu_on_input": dict(
        start_level=1,
        add_extra_convs="on_input",
        num_outs=5,
        norm_cfg=dict(type="GN", num_groups=32),
        act_cfg=dict(type="ReLU"),
    ),
    "bilinear": dict(num_outs=5, upsample_cfg=dict(mode="bilinear", align_corners=False)),
}

PAFPN_CONFIGS: dict[str, dict[str, Any]] = {
    "p2p6_maxpool": dict(num_outs=5),
    "retina_on_input_relu": dict(start_level=1, add_extra_convs="on_input", relu_before_extra_convs=True, num_outs=5),
    "on_output": dict(start_level=1, add_extra_convs="on_output", num_outs=5),
    "bn": dict(num_outs=5, norm_cfg=dict(type="BN")),
    "gn16_relu": dict(num_outs=5, norm_cfg=dict(type="GN", num_groups=16), act_cfg=dict(type="ReLU")),
}


def make_mmdet(kind: str, cfg: dict[str, Any]) -> nn.Module:
    necks = import_mmdet_necks()
    cls = necks.FPN if kind == "FPN" else necks.PAFPN
    module = cls(in_channels=list(CHANNELS), out_channels=WIDTH, **cfg)
    return randomize(module)


def features(sizes: tuple[tuple[int, int], ...], seed: int = 1) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, h, w, generator=g) for c, (h, w) in zip(CHANNELS, sizes, strict=True)]


def max_diff(a: list[Tensor] | tuple[Tensor, ...], b: list[Tensor] | tuple[Tensor, ...]) -> float:
    assert len(a) == len(b), (len(a), len(b))
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape, (x.shape, y.shape)
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def parity(kind: str, cfg: dict[str, Any], size: str) -> float:
    ref = make_mmdet(kind, cfg)
    name, opts = mmdet_neck_options({"type": kind, "in_channels": list(CHANNELS), "out_channels": WIDTH, **cfg}, SPECS)
    assert (name, opts) == mmdet_neck_options(ref, SPECS)  # config dict and module agree
    neck = build_neck(name, SPECS, **opts).eval()
    convert = from_mmdet_fpn if kind == "FPN" else from_mmdet_pafpn
    neck.load_state_dict(convert(ref.state_dict(), neck), strict=True)
    convert(ref, neck)  # the module form also checks the graph
    feats = features(SIZES[size])
    with torch.no_grad():
        return max_diff(neck(feats), ref(feats))


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("config", list(FPN_CONFIGS))
def test_fpn_parity(config: str, size: str) -> None:
    assert parity("FPN", FPN_CONFIGS[config], size) <= ATOL


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("config", list(PAFPN_CONFIGS))
def test_pafpn_parity(config: str, size: str) -> None:
    assert parity("PAFPN", PAFPN_CONFIGS[config], size) <= ATOL


def test_neck_from_mmdet_and_prefix() -> None:
    ref = make_mmdet("PAFPN", PAFPN_CONFIGS["retina_on_input_relu"])
    neck = neck_from_mmdet(ref, SPECS)
    feats = features(SIZES["odd"])
    with torch.no_grad():
        assert max_diff(neck(feats), ref(feats)) <= ATOL
    detector_sd = {f"neck.{k}": v for k, v in ref.state_dict().items()} | {"backbone.conv1.weight": torch.zeros(1)}
    converted = from_mmdet_pafpn(detector_sd, neck, prefix="neck.")
    assert converted.keys() == neck.state_dict().keys()


def test_mismatch_errors() -> None:
    relu = make_mmdet("FPN", FPN_CONFIGS["retina_on_input_relu"])
    no_relu_neck = build_neck("fpn", SPECS, width=WIDTH, levels=(3, 7), extra="conv", extra_source="input")
    # a state dict cannot tell the ReLU before P7; the module can
    from_mmdet_fpn(relu.state_dict(), no_relu_neck)
    with pytest.raises(ValueError, match="relu_before_extra=True"):
        from_mmdet_fpn(relu, no_relu_neck)
    # extra convs in mmdet, max-pool levels in necklace
    with pytest.raises(ValueError, match="extra='conv'"):
        from_mmdet_fpn(relu.state_dict(), build_neck("fpn", SPECS, width=WIDTH, levels=(3, 7)))
    # max-pool levels in mmdet, conv levels in necklace
    faster = make_mmdet("FPN", FPN_CONFIGS["faster_p2p6_maxpool"])
    with pytest.raises(ValueError, match="extra='subsample'"):
        from_mmdet_fpn(faster.state_dict(), build_neck("fpn", SPECS, width=WIDTH, extra="conv"))
    # start_level mismatch
    with pytest.raises(ValueError, match="lateral_convs"):
        from_mmdet_fpn(faster.state_dict(), build_neck("fpn", SPECS, width=WIDTH, levels=(3, 6)))
    # norm weights without a norm in the neck
    bn = make_mmdet("FPN", FPN_CONFIGS["bn"])
    with pytest.raises(ValueError, match=r"lateral_convs\.0\.bn\.weight"):
        from_mmdet_fpn(bn.state_dict(), build_neck("fpn", SPECS, width=WIDTH))
    # PAFPN weights into an FPN, and into the panet variant
    pa = make_mmdet("PAFPN", PAFPN_CONFIGS["p2p6_maxpool"])
    with pytest.raises(ValueError, match="downsample_convs"):
        from_mmdet_fpn(pa.state_dict(), build_neck("fpn", SPECS, width=WIDTH))
    with pytest.raises(ValueError, match="variant='mmdet'"):
        from_mmdet_pafpn(pa.state_dict(), build_neck("pafpn", SPECS, width=WIDTH, variant="panet"))
    with pytest.raises(ValueError, match="converts to a necklace 'pafpn'"):
        from_mmdet_fpn(pa, build_neck("fpn", SPECS, width=WIDTH))
    # unsupported mmdet options are named
    base = {"in_channels": list(CHANNELS), "out_channels": WIDTH, "num_outs": 5}
    with pytest.raises(ValueError, match="on_lateral"):
        mmdet_neck_options({**base, "start_level": 1, "add_extra_convs": "on_lateral"}, SPECS)
    with pytest.raises(ValueError, match="end_level"):
        mmdet_neck_options({**base, "end_level": 2, "num_outs": 3}, SPECS)
    with pytest.raises(ValueError, match="no_norm_on_lateral"):
        mmdet_neck_options({**base, "norm_cfg": dict(type="BN"), "no_norm_on_lateral": True}, SPECS)
