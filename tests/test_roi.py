"""RoI side: FPN level assignment per library, multi-level RoI pooling, PANet AFP, AugFPN soft RoI selection.

Cross-checks: the torchvision rule and :class:`MultiLevelRoIPool` against torchvision's own ``LevelMapper`` and
``MultiScaleRoIAlign``; the mmdet rule against mmdet 3.3's ``SingleRoIExtractor.map_roi_levels`` when mmdet is
installed; detectron2 and AugFPN (legacy mmdet) rules against their formulas copied inline, with explicit expected
levels at the boundaries.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import LevelMapper

from necklace import FeatureSpec
from necklace.roi import RULES, AdaptiveFeaturePooling, MultiLevelRoIPool, SoftRoISelection, assign_levels

STRIDES = (4, 8, 16, 32)
C = 8

# Box sizes s on and around the boundaries 56 * 2**k (= 224 * 2**j).
SIZES = [b + d for b in (56, 112, 224, 448) for d in (-1e-4, -3e-5, 0.0, 3e-5, 1e-4)]
# Expected absolute levels for square boxes [0, 0, s, s] in float64, P2..P5 (k0=4, canonical=224).
EXPECTED_F64 = {
    #              55.9999 .. 56.0001 | 111.9999 .. 112.0001 | 223.9999 .. 224.0001 | 447.9999 .. 448.0001
    "paper": [2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 5, 5, 5],
    "torchvision": [2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5],  # +1e-6 after log lifts 1.5e-4*s/224
    "detectron2": [2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 5, 5, 5],  # +1e-8 in log: as the paper here
    "mmdet": [2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 5, 5, 5, 5],  # +1e-6 in log lifts 5.6e-5 px
}
# With min_level=1 (P1..P5) the 56 boundary is a real one.
EXPECTED_F64_P1 = {
    "paper": [1, 1, 2, 2, 2],
    "torchvision": [1, 2, 2, 2, 2],  # eps after log: 7e-7 * 56 = 3.9e-5 px below lifts
    "detectron2": [1, 1, 2, 2, 2],
    "mmdet": [1, 1, 2, 2, 2],  # finest_scale 28 here: the eps lifts only 2.8e-5 px
}


def square_boxes(sizes: list[float], dtype: torch.dtype = torch.float64, offset: float = 0.0) -> Tensor:
    return torch.tensor([[offset, offset, offset + s, offset + s] for s in sizes], dtype=dtype)


def random_boxes(n: int, size: float, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size * 0.8
    wh = torch.exp(torch.rand(n, 2, generator=g) * math.log(size)) + 1
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


# -- inline copies of the libraries' formulas ---------------------------------------------------------------------
def detectron2_levels(boxes: Tensor, min_level: int = 2, max_level: int = 5) -> Tensor:
    # detectron2 modeling/poolers.py assign_boxes_to_levels (Boxes.area() = (x2 - x1) * (y2 - y1))
    box_sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    level_assignments = torch.floor(4 + torch.log2(box_sizes / 224 + 1e-8))
    level_assignments = torch.clamp(level_assignments, min=min_level, max=max_level)
    return level_assignments.to(torch.int64) - min_level


def mmdet_levels(boxes: Tensor, num_levels: int = 4, finest_scale: float = 56) -> Tensor:
    # mmdet 3.3 SingleRoIExtractor.map_roi_levels (rois are [batch_idx, x1, y1, x2, y2])
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    target_lvls = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return target_lvls.clamp(min=0, max=num_levels - 1).long()


def augfpn_levels(boxes: Tensor, num_levels: int = 4, finest_scale: float = 56) -> Tensor:
    # Gus-Guo/AugFPN roi_extractors/soft_roi_selection.py map_roi_levels (legacy mmdet v0.6, +1 box size)
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1))
    target_lvls = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return target_lvls.clamp(min=0, max=num_levels - 1).long()


# -- level assignment -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", list(EXPECTED_F64))
def test_boundary_levels_float64(rule: str) -> None:
    assert assign_levels(square_boxes(SIZES), rule=rule).tolist() == EXPECTED_F64[rule]
    p1 = assign_levels(square_boxes(SIZES[:5]), min_level=1, rule=rule)
    assert p1.tolist() == EXPECTED_F64_P1[rule]


def test_legacy_rule_adds_one_pixel() -> None:
    # sqrt((w+1)(h+1)): boxes one pixel smaller land where the mmdet rule puts the full-size ones.
    for rule in ("mmdet_legacy", "augfpn"):
        got = assign_levels(square_boxes([s - 1 for s in SIZES]), rule=rule)
        assert got.tolist() == EXPECTED_F64["mmdet"]
    half = square_boxes([111.5, 223.5, 447.5])
    assert assign_levels(half, rule="mmdet").tolist() == [2, 3, 4]
    assert assign_levels(half, rule="augfpn").tolist() == [3, 4, 5]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torchvision_rule_matches_level_mapper(dtype: torch.dtype) -> None:
    boxes = torch.cat([square_boxes(SIZES, dtype), square_boxes(SIZES, dtype, 17.25), random_boxes(500, 900)])
    boxes = boxes.to(dtype)
    for k_min, k_max in ((2, 5), (3, 7), (2, 2)):
        ref = LevelMapper(k_min, k_max)([boxes[:300], boxes[300:]]) + k_min
        assert torch.equal(assign_levels(boxes, min_level=k_min, max_level=k_max), ref)
    ref = LevelMapper(2, 5, canonical_scale=160, canonical_level=3)([boxes]) + 2
    assert torch.equal(assign_levels(boxes, k0=3, canonical=160), ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_detectron2_and_augfpn_rules_match_inline_formulas(dtype: torch.dtype) -> None:
    boxes = torch.cat([square_boxes(SIZES, dtype), square_boxes(SIZES, dtype, 3.5), random_boxes(500, 900, seed=1)])
    boxes = boxes.to(dtype)
    assert torch.equal(assign_levels(boxes, rule="detectron2") - 2, detectron2_levels(boxes))
    assert torch.equal(assign_levels(boxes, rule="mmdet") - 2, mmdet_levels(boxes))
    assert torch.equal(assign_levels(boxes, rule="augfpn") - 2, augfpn_levels(boxes))
    # mmdet counts from its first map: finest_scale=56 with P3..P5
    got = assign_levels(boxes, min_level=3, max_level=5, rule="mmdet", finest_scale=56) - 3
    assert torch.equal(got, mmdet_levels(boxes, num_levels=3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mmdet_rule_matches_single_roi_extractor(dtype: torch.dtype) -> None:
    pytest.importorskip("mmdet")
    pytest.importorskip("mmcv")
    from _mmdet_shim import install_ext_shim

    install_ext_shim()
    from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor

    extractor = SingleRoIExtractor(
        roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0), out_channels=C, featmap_strides=STRIDES
    )
    boxes = torch.cat([square_boxes(SIZES, dtype), random_boxes(500, 900, seed=2).to(dtype)])
    rois = torch.cat([torch.zeros(len(boxes), 1, dtype=dtype), boxes], dim=1)
    assert torch.equal(assign_levels(boxes, rule="mmdet") - 2, extractor.map_roi_levels(rois, 4))
    two_levels = assign_levels(boxes, min_level=2, max_level=3, rule="mmdet") - 2
    assert torch.equal(two_levels, extractor.map_roi_levels(rois, 2))


def test_degenerate_and_nan_boxes_go_to_min_level() -> None:
    boxes = torch.tensor([[10, 10, 5, 500], [0, 0, 0, 0], [3, 3, 900, 2], [float("nan"), 0, 10, 10]])
    for rule in RULES:
        assert assign_levels(boxes, rule=rule, min_level=3, max_level=6).tolist() == [3, 3, 3, 3], rule
    assert assign_levels(torch.zeros(0, 4)).shape == (0,)
    assert assign_levels(torch.tensor([[0, 0, 224, 224]], dtype=torch.int64)).tolist() == [4]
    assert assign_levels(torch.tensor([[0, 0, 224, 224]], dtype=torch.float16)).tolist() == [4]


def test_assign_levels_errors() -> None:
    with pytest.raises(ValueError, match=r"shape \(4,\); expected Tensor\[N, 4\].*unsqueeze\(0\)"):
        assign_levels(torch.tensor([0.0, 0, 10, 10]))
    with pytest.raises(ValueError, match=r"shape \(3, 5\); expected Tensor\[N, 4\].*boxes\[:, 1:\]"):
        assign_levels(torch.zeros(3, 5))
    with pytest.raises(TypeError, match=r"must be a Tensor\[N, 4\].*got list"):
        assign_levels([[0, 0, 1, 1]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"min_level 5 > max_level 2"):
        assign_levels(torch.zeros(1, 4), min_level=5, max_level=2)
    with pytest.raises(ValueError, match=r"unknown level-assignment rule 'detectorn2'.*Did you mean 'detectron2'"):
        assign_levels(torch.zeros(1, 4), rule="detectorn2")
    with pytest.raises(ValueError, match=r"finest_scale is an mmdet knob"):
        assign_levels(torch.zeros(1, 4), finest_scale=56)
    with pytest.raises(ValueError, match=r"canonical box size must be positive"):
        assign_levels(torch.zeros(1, 4), canonical=0)


# -- pooling ----------------------------------------------------------------------------------------------------------
IMAGE_SHAPES = [(200, 160), (190, 150)]


def tv_features(seed: int = 0, channels: int = C, pool: bool = True) -> OrderedDict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats: OrderedDict[str, Tensor] = OrderedDict()
    for i, s in enumerate(STRIDES):
        feats[str(i)] = torch.randn(2, channels, math.ceil(200 / s), math.ceil(160 / s), generator=g)
    if pool:
        feats["pool"] = feats["3"][:, :, ::2, ::2]
    return feats


def image_boxes(seed: int = 0) -> list[Tensor]:
    sizes = [20.0, 55.9999, 56, 111.9999, 112, 223.9999, 224, 150, 460]
    on_boundary = torch.tensor([[5.0, 7.0, 5 + s, 7 + s] for s in sizes])
    return [torch.cat([on_boundary, random_boxes(40, 190, seed)]), random_boxes(25, 150, seed + 1)]


def test_multi_level_pool_equals_torchvision_multiscale_roi_align() -> None:
    feats, boxes = tv_features(), image_boxes()
    ref = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(feats, boxes, IMAGE_SHAPES)
    names = ["0", "1", "2", "3"]
    given = MultiLevelRoIPool(STRIDES, featmap_names=names)(feats, boxes, IMAGE_SHAPES)
    inferred = MultiLevelRoIPool(featmap_names=names)(feats, boxes, IMAGE_SHAPES)
    as_list = MultiLevelRoIPool([FeatureSpec(C, s) for s in STRIDES])([feats[n] for n in names], boxes)
    assert ref.shape == (len(boxes[0]) + len(boxes[1]), C, 7, 7)
    for out in (given, inferred, as_list):
        assert torch.equal(out, ref)
    # other output size and canonical level
    ref = MultiScaleRoIAlign(names, (5, 3), 0, canonical_scale=160, canonical_level=3)(feats, boxes, IMAGE_SHAPES)
    out = MultiLevelRoIPool(STRIDES, (5, 3), 0, k0=3, canonical=160, featmap_names=names)(feats, boxes)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("rule", ["detectron2", "mmdet", "paper"])
def test_multi_level_pool_takes_each_roi_from_its_level(rule: str) -> None:
    feats = list(tv_features(pool=False).values())
    boxes = image_boxes(3)
    pool = MultiLevelRoIPool(STRIDES, 7, 0, aligned=True, rule=rule)
    out = pool(feats, boxes)
    flat = torch.cat(boxes)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    levels = assign_levels(flat, rule=rule)
    assert torch.equal(pool.levels_of(boxes), levels)
    assert len(set(levels.tolist())) >= 3
    for k in range(len(flat)):
        lvl = int(levels[k])
        ref = roi_align(feats[lvl - 2], rois[k : k + 1], 7, 1 / 2**lvl, 0, aligned=True)
        torch.testing.assert_close(out[k : k + 1], ref, rtol=0, atol=0)


def test_empty_and_single_level() -> None:
    feats = list(tv_features(pool=False).values())
    pool = MultiLevelRoIPool(STRIDES)
    assert pool(feats, [torch.zeros(0, 4), torch.zeros(0, 4)]).shape == (0, C, 7, 7)
    one = MultiLevelRoIPool([8])([feats[1]], image_boxes())
    assert one.shape == (74, C, 7, 7)
    rois = torch.cat([torch.zeros(3, 1), image_boxes()[0][:3]], 1)  # Tensor[K, 5] rois are accepted too
    torch.testing.assert_close(pool(feats, rois), pool(feats, [image_boxes()[0][:3], torch.zeros(0, 4)]))


def pooled_all_levels(feats: list[Tensor], boxes: list[Tensor], strides=STRIDES, size: int = 7) -> list[Tensor]:
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    return [roi_align(f, rois, size, 1 / s, 2, aligned=False) for f, s in zip(feats, strides, strict=True)]


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
@pytest.mark.parametrize("level", [0, 2, 3])
def test_soft_selection_saturated_equals_hard_pooling(level: int, gate: str) -> None:
    feats = list(tv_features(pool=False).values())
    boxes = image_boxes()
    soft = SoftRoISelection([FeatureSpec(C, s) for s in STRIDES], gate=gate)
    with torch.no_grad():
        last = soft.spatial_attention_conv[2]
        last.weight.zero_()
        last.bias.fill_(-40.0)
        last.bias[level] = 40.0
    out = soft(feats, boxes)
    hard_one_level = MultiLevelRoIPool([STRIDES[level]])([feats[level]], boxes)
    torch.testing.assert_close(out, hard_one_level, rtol=0, atol=1e-6)
    # boxes that the FPN rule sends to that level: soft selection == MultiLevelRoIPool on the whole pyramid
    s = 224 * 2.0 ** (level + 2 - 4) * 1.3
    boxes_at = [square_boxes([s, s * 1.2], torch.float32, 2.0), square_boxes([s * 1.1], torch.float32, 9.0)]
    pool = MultiLevelRoIPool(STRIDES)
    assert pool.levels_of(boxes_at).unique().tolist() == [level + 2]
    torch.testing.assert_close(soft(feats, boxes_at), pool(feats, boxes_at), rtol=0, atol=1e-6)


def test_soft_selection_matches_augfpn_forward() -> None:
    feats = list(tv_features(pool=False).values())
    boxes = image_boxes(5)
    soft = SoftRoISelection(STRIDES, channels=C)
    with torch.no_grad():
        for p in soft.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    # AugFPN SoftRoIExtractor.forward, inline: sum_i sigmoid(att[:, i]) * roi_feats_i, with its own module/keys
    att = nn.Sequential(nn.Conv2d(4 * C, C, 1), nn.ReLU(), nn.Conv2d(C, 4, 3, padding=1))
    att.load_state_dict({k.removeprefix("spatial_attention_conv."): v for k, v in soft.state_dict().items()})
    pooled = pooled_all_levels(feats, boxes)
    a = att(torch.cat(pooled, 1))
    ref = torch.zeros_like(pooled[0])
    for i in range(4):
        ref += torch.sigmoid(a[:, i, None, :, :]) * pooled[i]
    torch.testing.assert_close(soft(feats, boxes), ref, rtol=1e-5, atol=1e-6)
    assert sorted(soft.state_dict()) == [f"spatial_attention_conv.{i}.{p}" for i in (0, 2) for p in ("bias", "weight")]


def test_adaptive_feature_pooling_identity_layers_is_max() -> None:
    feats = list(tv_features(pool=False).values())
    boxes = image_boxes(7)
    pooled = pooled_all_levels(feats, boxes)
    expected = torch.stack(pooled).amax(0)  # [K, C, 7, 7]
    afp = AdaptiveFeaturePooling(STRIDES, channels=C, layer=nn.Identity)
    assert torch.equal(afp(feats, boxes), expected)
    # conv variant with delta kernels, no norm/act
    conv = AdaptiveFeaturePooling(STRIDES, channels=C, layer="conv", act=None)
    fc = AdaptiveFeaturePooling(STRIDES, channels=C, layer="fc", hidden=C * 49, act=None)
    with torch.no_grad():
        for m in conv.level_layers:
            m.conv.weight.zero_()
            m.conv.weight[:, :, 1, 1] = torch.eye(C)
            m.conv.bias.zero_()
        for m in fc.level_layers:
            m[0].weight.copy_(torch.eye(C * 49))
            m[0].bias.zero_()
    torch.testing.assert_close(conv(feats, boxes), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(fc(feats, boxes), expected.flatten(1), rtol=0, atol=1e-6)
    # default ReLU: max commutes with it
    relu_conv = AdaptiveFeaturePooling(STRIDES, channels=C, layer="conv")
    relu_conv.load_state_dict(conv.state_dict())
    torch.testing.assert_close(relu_conv(feats, boxes), expected.relu(), rtol=0, atol=1e-6)


def test_adaptive_feature_pooling_variants() -> None:
    specs = [FeatureSpec(C, s) for s in STRIDES]
    feats, boxes = list(tv_features(pool=False).values()), image_boxes()
    fc = AdaptiveFeaturePooling(specs, hidden=64, norm="gn")  # (hidden=32: 32 groups of one, refused)
    assert fc(feats, boxes).shape == (74, 64) and fc.out_channels == 64
    assert sorted(fc.state_dict())[:2] == ["level_layers.0.0.bias", "level_layers.0.0.weight"]  # AugFPN fcs.{i}.0
    conv = AdaptiveFeaturePooling(specs, layer="conv", out_channels=12, norm="gn", output_size=(5, 4))
    assert conv(feats, boxes).shape == (74, 12, 5, 4)
    assert conv.level_layers[0].conv.bias is None  # no bias before GN, as official PANet
    assert "AdaptiveFeaturePooling(" in repr(conv) and "level_layers" in repr(conv)


# -- torchvision Faster R-CNN ------------------------------------------------------------------------------------------
class TinyBackbone(nn.Module):
    """Four maps at strides 4..32 in an OrderedDict, with ``out_channels``, as torchvision detectors expect."""

    def __init__(self, channels: int = C) -> None:
        super().__init__()
        self.out_channels = channels
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, 2, 1), nn.ReLU(), nn.Conv2d(channels, channels, 3, 2, 1))
        self.downs = nn.ModuleList(nn.Conv2d(channels, channels, 3, 2, 1) for _ in range(3))

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        x = self.stem(x)
        out = OrderedDict([("0", x)])
        for i, down in enumerate(self.downs):
            x = down(torch.relu(x))
            out[str(i + 1)] = x
        return out


POOLERS: dict[str, Callable[[], tuple[nn.Module, nn.Module | None, int]]] = {
    "hard": lambda: (MultiLevelRoIPool(STRIDES), None, 1024),
    "hard_inferred": lambda: (MultiLevelRoIPool(), TwoMLPHead(C * 49, 32), 32),
    "soft": lambda: (SoftRoISelection(STRIDES, channels=C), None, 1024),
    "afp_fc": lambda: (AdaptiveFeaturePooling(STRIDES, channels=C, hidden=32), TwoMLPHead(32, 32), 32),
    "afp_conv": lambda: (AdaptiveFeaturePooling(STRIDES, channels=C, layer="conv", norm="gn"), None, 1024),
}


@pytest.mark.parametrize("name", list(POOLERS))
def test_faster_rcnn_trains_and_predicts(name: str) -> None:
    torch.manual_seed(0)
    pool, head, rep = POOLERS[name]()
    model = FasterRCNN(
        TinyBackbone(),
        num_classes=3 if head is None else None,
        min_size=128,
        max_size=128,
        rpn_anchor_generator=AnchorGenerator(((16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 4),
        rpn_pre_nms_top_n_train=64,
        rpn_post_nms_top_n_train=32,
        rpn_pre_nms_top_n_test=64,
        rpn_post_nms_top_n_test=32,
        rpn_batch_size_per_image=32,
        box_batch_size_per_image=16,
        box_roi_pool=pool,
        box_head=head,
        box_predictor=FastRCNNPredictor(rep, 3) if head is not None else None,
    )
    images = [torch.rand(3, 128, 128), torch.rand(3, 112, 128)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12, 60, 70], [30, 40, 120, 110]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[5.0, 5, 50, 40]]), "labels": torch.tensor([2])},
    ]
    model.train()
    losses = model(images, targets)
    total = sum(losses.values())
    assert all(torch.isfinite(v) for v in losses.values()), losses
    total.backward()
    grads = [p.grad for p in pool.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and out[0]["boxes"].shape[-1] == 4


# -- errors -----------------------------------------------------------------------------------------------------------
def test_pooler_errors() -> None:
    feats = tv_features()
    listed = [feats[n] for n in ("0", "1", "2", "3")]
    boxes = image_boxes()
    pool = MultiLevelRoIPool(STRIDES)
    with pytest.raises(ValueError, match=r"built for 4 levels .*got 5 feature maps with keys .*'pool'.*featmap_names"):
        pool(feats, boxes)
    with pytest.raises(ValueError, match=r"expects 4 feature maps with strides \[4, 8, 16, 32\], got 3"):
        pool(listed[:3], boxes)
    with pytest.raises(ValueError, match=r"featmap_names \['p2'\] not in the features, whose keys are"):
        MultiLevelRoIPool(STRIDES, featmap_names=["p2", "1", "2", "3"])(feats, boxes)
    with pytest.raises(ValueError, match=r"boxes\[1\] has shape \(3, 5\); expected Tensor\[N, 4\]"):
        pool(listed, [boxes[0], torch.zeros(3, 5)])
    with pytest.raises(ValueError, match=r"boxes\[0\] has shape \(4,\).*unsqueeze\(0\)"):
        pool(listed, [torch.zeros(4), boxes[1]])
    with pytest.raises(TypeError, match=r"pass a list with one Tensor\[N, 4\].*\[boxes\]"):
        pool(listed, boxes[0])
    with pytest.raises(ValueError, match=r"boxes for 1 images but the feature maps hold a batch of 2"):
        pool(listed, boxes[:1])
    with pytest.raises(ValueError, match=r"infers the strides from image_shapes.*featmaps=\[4, 8, 16, 32\]"):
        MultiLevelRoIPool()(listed, boxes)
    with pytest.raises(ValueError, match=r"not successive powers of two.*8 followed by 32"):
        MultiLevelRoIPool([4, 8, 32])
    with pytest.raises(ValueError, match=r"stride 12 is not a power of two"):
        MultiLevelRoIPool([12, 24])
    with pytest.raises(ValueError, match=r"channels \[8, 8, 8, 8\], expected \[16, 16, 16, 16\]"):
        MultiLevelRoIPool([FeatureSpec(16, s) for s in STRIDES])(listed, boxes)
    with pytest.raises(TypeError, match=r"list \(highest resolution first\).*got Tensor of shape"):
        pool(listed[0], boxes)
    with pytest.raises(ValueError, match=r"needs featmaps"):
        SoftRoISelection(None, channels=C)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"needs the feature channels.*channels=C"):
        AdaptiveFeaturePooling(STRIDES)
    with pytest.raises(ValueError, match=r"SoftRoISelection: feature maps have channels \[8, 8, 8, 8\], expected"):
        SoftRoISelection(STRIDES, channels=16)(listed, boxes)
    with pytest.raises(ValueError, match=r"layer must be 'fc', 'conv' or a callable"):
        AdaptiveFeaturePooling(STRIDES, channels=C, layer="mlp")
    with pytest.raises(ValueError, match=r"gate must be 'sigmoid'"):
        SoftRoISelection(STRIDES, channels=C, gate="tanh")
    with pytest.raises(ValueError, match=r"unknown level-assignment rule"):
        MultiLevelRoIPool(STRIDES, rule="tv")
    with pytest.raises(ValueError, match=r"featmap_names \['0'\] name 1 maps but featmaps has 4 strides"):
        MultiLevelRoIPool(STRIDES, featmap_names=["0"])
