"""Backbones: out_specs match what forward returns (strides, channels, ceil sizes at odd image sizes)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from necklace import FeatureSpec, build_neck
from necklace.detection import (
    Backbone,
    TimmBackbone,
    TinyBackbone,
    TorchvisionResNet,
    build_backbone,
    timm_backbone,
    torchvision_resnet,
)

ODD = (97, 131)


def _check(backbone: Backbone, size: tuple[int, int] = ODD) -> list[torch.Tensor]:
    backbone.eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, *size))
    assert isinstance(feats, list) and len(feats) == len(backbone.out_specs)
    for f, s in zip(feats, backbone.out_specs, strict=True):
        assert f.shape[1] == s.channels
        assert tuple(f.shape[-2:]) == (math.ceil(size[0] / s.stride), math.ceil(size[1] / s.stride)), (f.shape, s)
    strides = [s.stride for s in backbone.out_specs]
    assert strides == sorted(strides) and all(b == 2 * a for a, b in itertools.pairwise(strides))
    return feats


@pytest.mark.parametrize("levels", [(2, 5), (3, 5), (3, 4), (5, 5)])
@pytest.mark.parametrize("size", [ODD, (64, 64), (33, 47)])
def test_tiny_backbone_specs_match_outputs(levels: tuple[int, int], size: tuple[int, int]) -> None:
    b = TinyBackbone(width=8, levels=levels)
    assert b.levels == levels
    assert [s.stride for s in b.out_specs] == [2**lv for lv in range(levels[0], levels[1] + 1)]
    assert [s.channels for s in b.out_specs] == [8 * 2 ** (lv - 2) for lv in range(levels[0], levels[1] + 1)]
    _check(b, size)


@pytest.mark.parametrize("depth,channels", [(18, (64, 128, 256, 512)), (50, (256, 512, 1024, 2048))])
def test_torchvision_resnet_specs_match_outputs(depth: int, channels: tuple[int, ...]) -> None:
    b = torchvision_resnet(depth, levels=(2, 5))
    assert isinstance(b, TorchvisionResNet)
    assert b.out_specs == tuple(FeatureSpec(c, 2**lv) for c, lv in zip(channels, range(2, 6), strict=True))
    _check(b)


def test_torchvision_resnet_bn_choice() -> None:
    from torchvision.ops import FrozenBatchNorm2d

    assert isinstance(torchvision_resnet(18).model.bn1, torch.nn.BatchNorm2d)  # random init: trainable BN
    assert isinstance(torchvision_resnet(18, frozen_bn=True).model.bn1, FrozenBatchNorm2d)


@pytest.mark.parametrize(
    "name,levels", [("resnet10t", (3, 5)), ("resnet10t", (2, 4)), ("mobilenetv3_small_050", (3, 5))]
)
def test_timm_backbone_specs_match_outputs(name: str, levels: tuple[int, int]) -> None:
    b = timm_backbone(name, pretrained=False, levels=levels)
    assert isinstance(b, TimmBackbone)
    assert b.levels == levels
    _check(b)


def test_timm_backbone_drops_unneeded_stages() -> None:
    b = timm_backbone("resnet10t", levels=(2, 3))
    assert not hasattr(b.model, "layer4")  # rebuilt with out_indices, later stages not built
    _check(b)


def test_timm_patchify_stem_strides_are_right() -> None:
    b = timm_backbone("convnext_atto", levels=(2, 5))
    assert [s.stride for s in b.out_specs] == [4, 8, 16, 32]
    feats = b(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_build_backbone_names() -> None:
    assert isinstance(build_backbone("tiny", width=8), TinyBackbone)
    assert isinstance(build_backbone("resnet18"), TorchvisionResNet)
    assert isinstance(build_backbone("tv:resnet34", levels=(3, 5)), TorchvisionResNet)
    assert isinstance(build_backbone("timm:resnet10t"), TimmBackbone)
    assert build_backbone("resnet10t", levels=(4, 5)).out_specs == (FeatureSpec(256, 16), FeatureSpec(512, 32))


def test_any_neck_attaches_to_any_backbone() -> None:
    for b in (TinyBackbone(width=8, levels=(2, 5)), timm_backbone("resnet10t")):
        neck = build_neck("pafpn", b.out_specs, width=16)
        outs = neck(b(torch.randn(1, 3, *ODD)))
        for o, s in zip(outs, neck.out_specs, strict=True):
            assert tuple(o.shape[-2:]) == s.size_for(*ODD)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: TinyBackbone(levels=(1, 5)), r"P1 \(stride 2\).*only has levels \[2, 3, 4, 5\]"),
        (lambda: TinyBackbone(levels=(5, 3)), "min_level 5 is above max_level 3"),
        (lambda: TinyBackbone(levels=3), r"\(min_level, max_level\) pair"),
        (lambda: TinyBackbone(width=0), "width must be a positive int"),
        (lambda: torchvision_resnet(101), r"depth must be one of \[18, 34, 50\]"),
        (lambda: torchvision_resnet(18, levels=(2, 6)), r"P6 \(stride 64\)"),
        (lambda: timm_backbone("convnext_atto", levels=(1, 3)), r"P1.*reductions: \[4, 8, 16, 32\]"),
        (lambda: timm_backbone("resnet10t", out_indices=(1,)), "sets out_indices itself"),
        (lambda: build_backbone("tv:vgg16"), "unknown torchvision backbone"),
        (lambda: build_backbone("tiny", pretrained=True), "no pretrained weights"),
    ],
)
def test_backbone_errors(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_backbone_rejects_unbatched_image() -> None:
    with pytest.raises(ValueError, match=r"\[N, C, H, W\], got \(3, 32, 32\)"):
        TinyBackbone()(torch.randn(3, 32, 32))
