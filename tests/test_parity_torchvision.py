"""Weight-for-weight parity: torchvision ``FeaturePyramidNetwork`` vs necklace ``fpn`` with converted weights."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import pytest
import torch
from tests.helpers import randomize_weights as randomize
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from necklace import FeatureSpec, build_neck
from necklace.convert.torchvision import fpn_from_torchvision, from_torchvision_fpn, torchvision_fpn_options

ATOL = 1e-5
WIDTH = 32

# (strides, channels, sizes): even pyramids, odd pyramids (ceil-halving), and a 4-level C2..C5 odd pyramid
PYRAMIDS = {
    "c3c5_even": ((8, 16, 32), (16, 32, 64), ((64, 64), (32, 32), (16, 16))),
    "c3c5_odd": ((8, 16, 32), (16, 32, 64), ((25, 33), (13, 17), (7, 9))),
    "c2c5_odd": ((4, 8, 16, 32), (8, 16, 32, 64), ((100, 152), (50, 76), (25, 38), (13, 19))),
}

# name -> (extra block factory given (C_top channels, width), norm_layer)
CONFIGS: dict[str, tuple[Callable[[int, int], ExtraFPNBlock | None], type[nn.Module] | None]] = {
    "no_extra": (lambda c, w: None, None),
    "maxpool": (lambda c, w: LastLevelMaxPool(), None),
    "p6p7_from_c5": (lambda c, w: LastLevelP6P7(c, w), None),
    "p6p7_from_p5": (lambda c, w: LastLevelP6P7(w, w), None),
    "bn_no_extra": (lambda c, w: None, nn.BatchNorm2d),
    "bn_maxpool": (lambda c, w: LastLevelMaxPool(), nn.BatchNorm2d),
}


def make_tv(config: str, channels: tuple[int, ...]) -> FeaturePyramidNetwork:
    extra, norm = CONFIGS[config]
    tv = FeaturePyramidNetwork(list(channels), WIDTH, extra_blocks=extra(channels[-1], WIDTH), norm_layer=norm)
    return randomize(tv)  # type: ignore[return-value]


def features(channels: tuple[int, ...], sizes: tuple[tuple[int, int], ...], seed: int = 1) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, h, w, generator=g) for c, (h, w) in zip(channels, sizes, strict=True)]


def run_tv(tv: FeaturePyramidNetwork, feats: list[Tensor]) -> list[Tensor]:
    with torch.no_grad():
        return list(tv(OrderedDict((str(i), f) for i, f in enumerate(feats))).values())


def max_diff(a: list[Tensor], b: list[Tensor]) -> float:
    assert len(a) == len(b), (len(a), len(b))
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape, (x.shape, y.shape)
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def parity(config: str, pyramid: str) -> float:
    strides, channels, sizes = PYRAMIDS[pyramid]
    specs = [FeatureSpec(c, s) for c, s in zip(channels, strides, strict=True)]
    tv = make_tv(config, channels)
    neck = build_neck("fpn", specs, **torchvision_fpn_options(tv, specs)).eval()
    neck.load_state_dict(from_torchvision_fpn(tv.state_dict(), neck), strict=True)
    feats = features(channels, sizes)
    with torch.no_grad():
        out = neck(feats)
    return max_diff(out, run_tv(tv, feats))


@pytest.mark.parametrize("pyramid", list(PYRAMIDS))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_parity(config: str, pyramid: str) -> None:
    assert parity(config, pyramid) <= ATOL


def test_options_helper() -> None:
    specs = [FeatureSpec(16, 8), FeatureSpec(32, 16), FeatureSpec(64, 32)]
    assert torchvision_fpn_options(make_tv("maxpool", (16, 32, 64)), specs) == {
        "width": WIDTH,
        "levels": (3, 6),
        "extra": "subsample",
        "norm": None,
    }
    assert torchvision_fpn_options(make_tv("p6p7_from_p5", (16, 32, 64)), specs)["extra_source"] == "output"
    assert torchvision_fpn_options(make_tv("p6p7_from_c5", (16, 32, 64)), specs)["extra_source"] == "input"
    assert torchvision_fpn_options(make_tv("bn_no_extra", (16, 32, 64)), specs) == {
        "width": WIDTH,
        "levels": (3, 5),
        "norm": "bn",
    }
    with pytest.raises(ValueError, match="in_channels_list"):
        torchvision_fpn_options(make_tv("maxpool", (16, 32, 64)), specs[:2])


def test_build_from_module_and_old_keys() -> None:
    channels, sizes = (16, 32, 64), ((25, 33), (13, 17), (7, 9))
    specs = [FeatureSpec(c, s) for c, s in zip(channels, (8, 16, 32), strict=True)]
    tv = make_tv("p6p7_from_c5", channels)
    neck = fpn_from_torchvision(tv, specs)
    feats = features(channels, sizes)
    with torch.no_grad():
        assert max_diff(neck(feats), run_tv(tv, feats)) <= ATOL
    # pre-v2 torchvision checkpoints: inner_blocks.{i}.weight instead of inner_blocks.{i}.0.weight
    old = {k.replace(".0.weight", ".weight").replace(".0.bias", ".bias"): v for k, v in tv.state_dict().items()}
    assert "inner_blocks.0.weight" in old
    converted = from_torchvision_fpn(old, neck)
    assert converted.keys() == neck.state_dict().keys()
    for k, v in converted.items():
        assert torch.equal(v, neck.state_dict()[k]), k


def test_detector_state_dict_with_prefix() -> None:
    """A whole torchvision RetinaNet (v1: P6 from P5) state dict, FPN picked out by prefix."""
    from torchvision.models.detection import retinanet_resnet50_fpn

    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None).eval()
    fpn = randomize(model.backbone.fpn)
    specs = [FeatureSpec(512, 8), FeatureSpec(1024, 16), FeatureSpec(2048, 32)]
    neck = build_neck("fpn", specs, **torchvision_fpn_options(fpn, specs))
    neck.load_state_dict(from_torchvision_fpn(model.state_dict(), neck, prefix="backbone.fpn."))
    feats = features((512, 1024, 2048), ((25, 33), (13, 17), (7, 9)))
    with torch.no_grad():
        assert max_diff(neck(feats), run_tv(fpn, feats)) <= ATOL  # type: ignore[arg-type]


def _specs() -> list[FeatureSpec]:
    return [FeatureSpec(16, 8), FeatureSpec(32, 16), FeatureSpec(64, 32)]


def test_mismatch_errors() -> None:
    channels = (16, 32, 64)
    p6p7 = make_tv("p6p7_from_c5", channels)
    # P6P7 weights but a subsample neck
    with pytest.raises(ValueError, match="LastLevelP6P7"):
        from_torchvision_fpn(p6p7.state_dict(), build_neck("fpn", _specs(), width=WIDTH))
    # P6 from C5 in torchvision, from P5 in the neck (shapes would not even tell when C5 has WIDTH channels)
    wrong_src = build_neck("fpn", _specs(), width=WIDTH, levels=(3, 7), extra="conv", relu_before_extra=True)
    with pytest.raises(ValueError, match="extra_source='input'"):
        from_torchvision_fpn(p6p7.state_dict(), wrong_src)
    # no ReLU before P7
    no_relu = build_neck("fpn", _specs(), width=WIDTH, levels=(3, 7), extra="conv", extra_source="input")
    with pytest.raises(ValueError, match="relu_before_extra=True"):
        from_torchvision_fpn(p6p7, no_relu)
    # a BN torchvision FPN into a neck without norm: unused norm weights
    with pytest.raises(ValueError, match=r"inner_blocks\.0\.1\.weight"):
        from_torchvision_fpn(make_tv("bn_no_extra", channels).state_dict(), build_neck("fpn", _specs(), width=WIDTH))
    # the other way round: the neck wants norm weights the state dict lacks
    with pytest.raises(ValueError, match="lacks"):
        from_torchvision_fpn(
            make_tv("no_extra", channels).state_dict(), build_neck("fpn", _specs(), width=WIDTH, norm="bn")
        )
    # width mismatch
    with pytest.raises(ValueError, match="shape mismatch"):
        from_torchvision_fpn(make_tv("maxpool", channels).state_dict(), build_neck("fpn", _specs(), width=16))
    # level count mismatch
    with pytest.raises(ValueError, match="inner_blocks"):
        from_torchvision_fpn(make_tv("maxpool", channels).state_dict(), build_neck("fpn", _specs(), levels=(4, 6)))
    # module given: graph check names the right options
    with pytest.raises(ValueError, match="Build it with"):
        from_torchvision_fpn(make_tv("maxpool", channels), build_neck("fpn", _specs(), width=WIDTH, levels=(3, 5)))
    # not an FPN at all
    with pytest.raises(ValueError, match="not a necklace 'fpn' neck"):
        from_torchvision_fpn(p6p7.state_dict(), build_neck("bifpn", _specs(), width=WIDTH))
    with pytest.raises(TypeError):
        from_torchvision_fpn(p6p7.state_dict(), nn.Conv2d(1, 1, 1))
    # a BN FPN with LastLevelP6P7 (norm-free extra convs) has no exact equivalent
    tv_bn_p6 = FeaturePyramidNetwork([16, 32, 64], WIDTH, LastLevelP6P7(64, WIDTH), norm_layer=nn.BatchNorm2d)
    with pytest.raises(ValueError, match="no exact equivalent"):
        torchvision_fpn_options(tv_bn_p6, _specs())
