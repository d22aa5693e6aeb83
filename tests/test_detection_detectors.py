"""torchvision FCOS / RetinaNet / Faster R-CNN with necklace necks: training steps, loss decrease, eval, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torchvision.ops import MultiScaleRoIAlign

from necklace import FeatureSpec, build_neck
from necklace.detection import (
    DETECTOR_KINDS,
    NeckAdapter,
    SyntheticShapes,
    TinyBackbone,
    anchor_generator_for,
    build_detector,
    collate_fn,
    timm_backbone,
)

SIZE = 128
#: Faster R-CNN settings that keep a CPU step in the tens of milliseconds.
SMALL_FRCNN = {
    "representation_size": 64,
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 64,
    "rpn_pre_nms_top_n_train": 300,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 100,
}
#: SGD learning rate per detector for the loss-decrease check.
LR = {"fcos": 0.01, "retinanet": 0.1, "faster_rcnn": 0.05}


@pytest.fixture(scope="module")
def batch() -> tuple[list[torch.Tensor], list[dict]]:
    ds = SyntheticShapes(2, image_size=(SIZE, SIZE), num_classes=3, seed=0)
    return collate_fn([ds[0], ds[1]])


def _model(kind: str, neck: str = "fpn", **kwargs: object) -> torch.nn.Module:
    extra: dict = dict(SMALL_FRCNN) if kind == "faster_rcnn" else {}
    extra.update(kwargs)
    extra.setdefault("neck_options", {"width": 32})
    return build_detector(kind, TinyBackbone(width=8), neck, num_classes=3, min_size=SIZE, max_size=SIZE, **extra)


def _train_step(model: torch.nn.Module, images: list, targets: list) -> dict[str, torch.Tensor]:
    model.train()
    losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    neck_grads = [p.grad for p in model.backbone.neck.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in neck_grads)
    return losses


@pytest.mark.parametrize("neck", ["fpn", "pafpn", "bifpn"])
@pytest.mark.parametrize("kind", DETECTOR_KINDS)
def test_training_step_each_detector_and_neck(kind: str, neck: str, batch) -> None:
    torch.manual_seed(0)
    model = _model(kind, neck)
    losses = _train_step(model, *batch)
    expected = {
        "fcos": {"classification", "bbox_regression", "bbox_ctrness"},
        "retinanet": {"classification", "bbox_regression"},
        "faster_rcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"},
    }[kind]
    assert set(losses) == expected


@pytest.mark.parametrize("kind", DETECTOR_KINDS)
def test_sgd_steps_reduce_the_loss(kind: str, batch) -> None:
    torch.manual_seed(0)
    model = _model(kind)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LR[kind], momentum=0.9)
    history = []
    for _ in range(15):
        total = sum(model(*batch).values())
        history.append(total.item())
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
    assert all(math.isfinite(v) for v in history)
    last = sum(history[-3:]) / 3
    assert last < 0.95 * history[0], f"{kind}: loss {history[0]:.3f} -> {last:.3f} ({[round(v, 3) for v in history]})"


@pytest.mark.parametrize("kind", DETECTOR_KINDS)
def test_eval_returns_boxes_labels_scores(kind: str, batch) -> None:
    torch.manual_seed(0)
    model = _model(kind, score_thresh=0.0) if kind != "faster_rcnn" else _model(kind, box_score_thresh=0.0)
    model.eval()
    with torch.no_grad():
        out = model(batch[0])
    assert len(out) == 2
    for det in out:
        assert set(det) == {"boxes", "labels", "scores"}
        n = det["boxes"].shape[0]
        assert det["boxes"].shape == (n, 4) and det["scores"].shape == (n,) and det["labels"].dtype == torch.int64
        assert n > 0
        assert det["labels"].min() >= 1 and det["labels"].max() <= 3  # labels 1..K, never background
        assert (det["boxes"][:, 2:] >= det["boxes"][:, :2]).all() and det["boxes"].max() <= SIZE


@pytest.mark.parametrize("roi_pool", ["multilevel", "adaptive", "soft"])
def test_faster_rcnn_with_necklace_roi_poolers(roi_pool: str, batch) -> None:
    from necklace import roi

    torch.manual_seed(0)
    model = _model("faster_rcnn", roi_pool=roi_pool)
    cls = {"multilevel": roi.MultiLevelRoIPool, "adaptive": roi.AdaptiveFeaturePooling, "soft": roi.SoftRoISelection}
    assert isinstance(model.roi_heads.box_roi_pool, cls[roi_pool])
    _train_step(model, *batch)
    model.eval()
    with torch.no_grad():
        assert set(model(batch[0])[0]) == {"boxes", "labels", "scores"}


def test_faster_rcnn_roi_levels_stop_at_stride_32() -> None:
    model = _model("faster_rcnn")  # fpn over P3..P5 adds P6
    assert model.backbone.names == ("P3", "P4", "P5", "P6")
    pool = model.roi_heads.box_roi_pool
    assert isinstance(pool, MultiScaleRoIAlign) and pool.featmap_names == ["P3", "P4", "P5"]
    wide = _model("faster_rcnn", roi_max_stride=64)
    assert wide.roi_heads.box_roi_pool.featmap_names == ["P3", "P4", "P5", "P6"]
    ml = _model("faster_rcnn", roi_pool="multilevel")
    assert ml.roi_heads.box_roi_pool.strides == (8, 16, 32)


def test_anchors_follow_the_neck_levels() -> None:
    torch.manual_seed(0)
    # a RetinaNet-style neck over P3..P7: anchors on all five levels, 4 * stride * 2**(k/3), 3 ratios
    model = _model("retinanet", neck_options={"width": 32, "levels": (3, 7), "extra": "conv", "extra_source": "input"})
    gen = model.anchor_generator
    assert [s[0] for s in gen.sizes] == [32.0, 64.0, 128.0, 256.0, 512.0]
    assert gen.sizes[0] == pytest.approx((32.0, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3)))
    assert gen.num_anchors_per_location() == [9] * 5
    assert model.head.classification_head.num_anchors == 9
    specs = [FeatureSpec(32, 4), FeatureSpec(32, 8), FeatureSpec(32, 16)]
    assert anchor_generator_for("fcos", specs).sizes == ((4.0,), (8.0,), (16.0,))
    assert anchor_generator_for("fcos", specs).num_anchors_per_location() == [1, 1, 1]
    frcnn = anchor_generator_for("faster_rcnn", specs)
    assert frcnn.sizes == ((16.0,), (32.0,), (64.0,)) and frcnn.num_anchors_per_location() == [3, 3, 3]
    assert anchor_generator_for("faster_rcnn", specs, anchor_scale=8).sizes[0] == (32.0,)


def test_num_classes_convention(batch) -> None:
    fcos, frcnn = _model("fcos"), _model("faster_rcnn")
    assert fcos.head.classification_head.num_classes == 3  # K sigmoid outputs, labels shifted to 0..K-1 inside
    assert isinstance(fcos, torchvision.models.detection.FCOS)
    assert frcnn.roi_heads.box_predictor.cls_score.out_features == 4  # K + background
    assert fcos.num_object_classes == frcnn.num_object_classes == 3
    images, targets = batch
    before = [t["labels"].clone() for t in targets]
    fcos.train()
    fcos(images, targets)
    assert all(torch.equal(a, t["labels"]) for a, t in zip(before, targets, strict=True))  # caller's targets intact
    bad = [{**targets[0], "labels": torch.zeros_like(targets[0]["labels"])}, targets[1]]
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\] = \[0, .*must lie in 1..3"):
        fcos(images, bad)


def test_odd_sizes_and_mixed_batch() -> None:
    torch.manual_seed(0)
    model = build_detector(
        "fcos", TinyBackbone(width=8), "bifpn", num_classes=2, neck_options={"width": 16}, min_size=97, max_size=160
    )
    images = [torch.rand(3, 97, 131), torch.rand(3, 120, 90)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[5.0, 5.0, 40.0, 100.0]]), "labels": torch.tensor([2])},
    ]
    _train_step(model, images, targets)
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2


def test_timm_backbone_in_a_detector(batch) -> None:
    torch.manual_seed(0)
    model = build_detector(
        "fcos",
        timm_backbone("resnet10t", levels=(3, 5)),
        "pafpn",
        num_classes=3,
        neck_options={"width": 32},
        min_size=SIZE,
        max_size=SIZE,
        head_convs=1,
    )
    _train_step(model, *batch)


def test_neck_adapter_output_and_prebuilt_neck() -> None:
    bb = TinyBackbone(width=8, levels=(2, 5))
    neck = build_neck("pafpn", bb.out_specs, width=16)
    adapter = NeckAdapter(bb, neck)
    out = adapter(torch.zeros(2, 3, 97, 131))
    assert list(out) == ["P2", "P3", "P4", "P5", "P6"] and adapter.out_channels == 16
    for spec, t in zip(adapter.out_specs, out.values(), strict=True):
        assert tuple(t.shape) == (2, 16, *spec.size_for(97, 131))
    model = build_detector("retinanet", bb, neck, num_classes=2, min_size=64, max_size=64)
    assert model.backbone.neck is neck


def test_neck_adapter_errors() -> None:
    bb = TinyBackbone(width=8)
    with pytest.raises(ValueError, match=r"widths \[16, 32\].*one width"):
        NeckAdapter(bb, build_neck("fpn", bb.out_specs, width=[16, 32, 32, 32]))
    other = build_neck("fpn", [FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)], width=16)
    with pytest.raises(
        ValueError, match=r"built for in_specs \[64ch /8.*backbone returns \[16ch /8.*backbone.out_specs"
    ):
        NeckAdapter(bb, other)
    with pytest.raises(TypeError, match="has no 'out_specs'"):
        NeckAdapter(torch.nn.Conv2d(3, 3, 1), other)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"kind": "yolo"}, ValueError, r"unknown detector kind 'yolo'.*'fcos', 'retinanet', 'faster_rcnn'"),
        ({"num_classes": 0}, ValueError, "number of object classes"),
        ({"kind": "fcos", "roi_pool": "soft"}, ValueError, "Faster R-CNN option"),
        ({"kind": "faster_rcnn", "roi_pool": "magic"}, ValueError, "unknown roi_pool 'magic'"),
        ({"kind": "faster_rcnn", "roi_max_stride": 4}, ValueError, "leaves no neck level"),
        ({"kind": "fcos", "anchor_scale": 4}, ValueError, "size == stride"),
        ({"neck": "fpnn"}, ValueError, "Did you mean 'fpn'"),
        ({"backbone": torch.nn.Conv2d(3, 8, 3)}, TypeError, "has no out_specs"),
    ],
)
def test_build_detector_errors(kwargs: dict, exc: type, match: str) -> None:
    args = {"kind": "retinanet", "backbone": TinyBackbone(width=8), "neck": "fpn", "num_classes": 3}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        build_detector(args.pop("kind"), args.pop("backbone"), neck_options={"width": 16}, **args)


def test_neck_options_with_a_built_neck_is_an_error() -> None:
    bb = TinyBackbone(width=8)
    with pytest.raises(ValueError, match="neck_options only apply"):
        build_detector("fcos", bb, build_neck("fpn", bb.out_specs, width=16), neck_options={"width": 32})
