"""1x1 convs over concatenations without building them (native runtime): ``concat_pointwise``, the native C2f and the
native nodes' routes, and that the plain layers keep torch's ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import necklace
from necklace.deploy.native.gemm import add_pointwise_, concat_pointwise
from necklace.deploy.native.modules import native_module
from necklace.layers.blocks import C2f


def _ref(parts: list[torch.Tensor], w: torch.Tensor, b: torch.Tensor | None, up: list[bool], size) -> torch.Tensor:
    full = [F.interpolate(p, size=size, mode="nearest") if u else p for p, u in zip(parts, up, strict=True)]
    return F.conv2d(torch.cat(full, 1), w, b)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("low", "size"), [((3, 4), (6, 8)), ((5, 7), (9, 13)), ((1, 1), (3, 2))])
def test_matches_conv_of_the_concatenation(channels_last: bool, bias: bool, low, size) -> None:
    g = torch.Generator().manual_seed(0)
    n = 2 if channels_last else 1  # a batch works in channels_last; NCHW needs single maps
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    a = torch.randn(n, 3, *size, generator=g, dtype=torch.float64).contiguous(memory_format=fmt)
    wide = torch.randn(n, 10, *size, generator=g, dtype=torch.float64).contiguous(memory_format=fmt)
    c = wide[:, 4:9]  # a channel slice: read in place
    small = torch.randn(n, 6, *low, generator=g, dtype=torch.float64).contiguous(memory_format=fmt)
    w = torch.randn(7, 14, 1, 1, generator=g, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64) if bias else None
    parts, up = [small, a, c], [True, False, False]
    y = concat_pointwise(parts, w, b, upsample=up, size=size)
    assert y is not None
    assert y.is_contiguous(memory_format=fmt)
    assert torch.allclose(y, _ref(parts, w, b, up, size), rtol=0, atol=1e-12)
    y2 = concat_pointwise([a, c], w[:, :8], b)  # nothing upsampled
    assert y2 is not None and torch.allclose(y2, _ref([a, c], w[:, :8], b, [False, False], size), atol=1e-12)


def test_layouts_it_cannot_read_give_none() -> None:
    w = torch.randn(4, 6, 1, 1)
    batch = [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)]
    assert concat_pointwise(batch, w, None) is None  # a batch of NCHW maps is not one matrix
    batches = [torch.randn(1, 3, 4, 4), torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)]
    assert concat_pointwise(batches, w, None) is None
    assert concat_pointwise([torch.randn(1, 3, 4, 4), torch.randn(1, 2, 4, 4)], w, None) is None  # 5 != 6 channels
    assert concat_pointwise([torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 5)], w, None) is None  # sizes differ


def _count_cats(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = torch.cat

    def spy(tensors, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(tensors))
        return real(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "cat", spy)
    return calls


def test_c2f_inference_skips_the_concatenation(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    block = C2f(24, 32, n=2, cfg=necklace.ConvCfg(norm="bn", act="silu")).eval()
    x = torch.randn(1, 24, 9, 11)
    with torch.no_grad():
        ref = block(x)
    fast = native_module(block)
    assert type(fast).__name__ == "NativeC2f" and fast.cv2 is block.cv2
    cats = _count_cats(monkeypatch)
    with torch.no_grad():
        block(x)
        assert cats == [3]  # the plain block concatenates in every mode: [cv1 output, m_1, m_2]
        y = fast(x)
    assert cats == [3] and torch.allclose(y, ref, atol=1e-5)
    y_grad = fast(x)  # autograd on: the concatenation, as written
    assert cats == [3, 3] and torch.allclose(y_grad, ref, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_yolo_neck_never_concatenates_in_inference(monkeypatch: pytest.MonkeyPatch, channels_last: bool) -> None:
    specs = [necklace.FeatureSpec(64, 8), necklace.FeatureSpec(128, 16), necklace.FeatureSpec(256, 32)]
    neck = necklace.build_neck("yolo_pafpn", specs, preset="n").eval()
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(1, s.channels, -(-203 // s.stride), -(-157 // s.stride), generator=g) for s in specs]
    dep = necklace.deploy(neck, runtime="native", channels_last=channels_last)
    with torch.no_grad():
        ref = neck(feats)
    cats = _count_cats(monkeypatch)
    with torch.no_grad():
        out = dep(feats)
    assert cats == []  # every C2f and every concat node ran as accumulated GEMMs
    for a, b in zip(out, ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_yolo_neck_batch_of_nchw_maps_falls_back_to_the_concatenation(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = [necklace.FeatureSpec(64, 8), necklace.FeatureSpec(128, 16), necklace.FeatureSpec(256, 32)]
    neck = necklace.build_neck("yolo_pafpn", specs, preset="n").eval()
    feats = [torch.randn(2, s.channels, 64 // s.stride, 96 // s.stride) for s in specs]
    with torch.no_grad():
        ref = neck(feats)
    twin = necklace.deploy(neck, runtime="native", channels_last=False)
    cats = _count_cats(monkeypatch)
    with torch.no_grad():
        out = twin(feats)
    assert cats  # NCHW batches are not one matrix: concatenated as written
    for a, b in zip(out, ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("acc_cl", "x_cl"), [(False, False), (True, True), (True, False), (False, True)])
def test_add_pointwise_any_layout_pair(acc_cl: bool, x_cl: bool) -> None:
    g = torch.Generator().manual_seed(5)
    n = 2 if acc_cl and x_cl else 1
    cl = torch.channels_last
    acc = torch.randn(n, 4, 5, 3, generator=g, dtype=torch.float64)
    x = torch.randn(n, 6, 5, 3, generator=g, dtype=torch.float64)
    w = torch.randn(4, 6, 1, 1, generator=g, dtype=torch.float64)
    ref = acc + F.conv2d(x, w)
    acc = acc.contiguous(memory_format=cl) if acc_cl else acc
    x = x.contiguous(memory_format=cl) if x_cl else x
    assert add_pointwise_(acc, x, w)
    assert torch.allclose(acc, ref, rtol=0, atol=1e-12)
    wide = torch.randn(2, 8, 5, 3)
    part = wide[:, :4]  # a channel slice of an NCHW batch: neither one matrix nor one per image
    before = wide.clone()
    assert not add_pointwise_(part, torch.randn(2, 6, 5, 3), w.float())
    assert torch.equal(wide, before)  # untouched
    batch, xb = torch.randn(3, 4, 5, 3, dtype=torch.float64), torch.randn(3, 6, 5, 3, dtype=torch.float64)
    ref_b = batch + F.conv2d(xb, w)
    assert add_pointwise_(batch, xb, w) and torch.allclose(batch, ref_b, rtol=0, atol=1e-12)  # image by image


@pytest.mark.parametrize("channels_last", [None, True])
def test_fpn_lateral_goes_into_the_upsampled_map(monkeypatch: pytest.MonkeyPatch, channels_last: bool | None) -> None:
    from necklace.deploy.native import nodes

    calls: list[tuple[int, ...]] = []
    real = nodes.add_pointwise_

    def spy(acc: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> bool:
        calls.append(tuple(acc.shape))
        return real(acc, x, w)

    monkeypatch.setattr(nodes, "add_pointwise_", spy)
    specs = [necklace.FeatureSpec(32, 8), necklace.FeatureSpec(64, 16), necklace.FeatureSpec(128, 32)]
    plain = necklace.build_neck("fpn", specs, width=16).eval()
    neck = necklace.deploy(plain, runtime="native", channels_last=bool(channels_last))
    assert calls  # deploy's own check ran the path (a batch of 2 maps)
    calls.clear()
    g = torch.Generator().manual_seed(2)
    feats = [torch.randn(1, s.channels, -(-99 // s.stride), -(-131 // s.stride), generator=g) for s in specs]
    with torch.no_grad():
        ref = plain(feats)
    assert calls == []
    with torch.no_grad():
        out = neck(feats)
    assert calls == [(1, 16, 7, 9), (1, 16, 13, 17)]  # L4 = lat(C4) + up(L5), then L3
    for a, b in zip(out, ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    out_grad = neck(feats)  # autograd: the sum as written
    assert len(calls) == 2 and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(out_grad, ref, strict=True))


@pytest.mark.parametrize("low_cl", [False, True])
def test_mixed_layouts_give_channels_last(low_cl: bool) -> None:
    g = torch.Generator().manual_seed(9)
    cl = torch.channels_last
    a = torch.randn(1, 3, 6, 8, generator=g, dtype=torch.float64)  # a backbone map left NCHW
    b = torch.randn(1, 4, 6, 8, generator=g, dtype=torch.float64).contiguous(memory_format=cl)
    small = torch.randn(1, 5, 3, 4, generator=g, dtype=torch.float64)
    small = small.contiguous(memory_format=cl) if low_cl else small
    w, bias = torch.randn(2, 12, 1, 1, generator=g, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    parts, up = [small, a, b], [True, False, False]
    y = concat_pointwise(parts, w, bias, upsample=up, size=(6, 8))
    assert y is not None and y.is_contiguous(memory_format=cl)
    assert torch.allclose(y, _ref(parts, w, bias, up, (6, 8)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["pafpn", "nasfpn", "bifpn"])
def test_inference_sums_into_fresh_maps_leave_the_inputs_intact(name: str) -> None:
    specs = [necklace.FeatureSpec(16, 8), necklace.FeatureSpec(32, 16), necklace.FeatureSpec(64, 32)]
    opts = {"width": 16} if name != "bifpn" else {}
    neck = necklace.deploy(necklace.build_neck(name, specs, **opts).eval(), runtime="native", channels_last=False)
    g = torch.Generator().manual_seed(4)
    feats = [torch.randn(1, s.channels, -(-130 // s.stride), -(-97 // s.stride), generator=g) for s in specs]
    before = [f.clone() for f in feats]
    with torch.no_grad():
        out = neck(feats)
        again = neck(feats)
    ref = neck(feats)  # autograd on: the sums as written
    assert all(torch.equal(a, b) for a, b in zip(feats, before, strict=True))  # inputs untouched
    for a, b, c in zip(out, again, ref, strict=True):
        assert torch.equal(a, b) and torch.allclose(a, c, rtol=1e-5, atol=1e-5)


def test_custom_graph_sum_of_an_input_and_a_conv_under_autocast() -> None:
    """A sum of a backbone map (float32) and a conv output (bfloat16 under CPU autocast) promotes like ``+``."""
    from necklace import Edge, GraphNeck, NeckGraph, Node

    graph = NeckGraph(
        in_specs=(necklace.FeatureSpec(8, 8), necklace.FeatureSpec(8, 16)),
        nodes=(
            Node("A", 3, (Edge("C4", align="always"), "C3"), channels=8, fuse="sum"),
            Node("B", 4, ("C4",), channels=8),
        ),
        outputs=("A", "B"),
    )
    neck = necklace.deploy(GraphNeck(graph).eval(), runtime="native", channels_last=False)
    feats = [torch.randn(1, 8, 12, 10), torch.randn(1, 8, 6, 5)]
    with torch.no_grad():
        plain = neck(feats)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = neck(feats)
    assert mixed[0].dtype == torch.float32  # bfloat16 conv output + float32 input, promoted as written
    assert torch.allclose(mixed[0], plain[0], atol=0.1)


def test_channels_last_output_from_nchw_parts() -> None:
    g = torch.Generator().manual_seed(11)
    cl = torch.channels_last
    a = torch.randn(1, 3, 6, 8, generator=g, dtype=torch.float64)  # backbone maps left NCHW
    small = torch.randn(1, 5, 3, 4, generator=g, dtype=torch.float64)
    w, bias = torch.randn(2, 8, 1, 1, generator=g, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    parts, up = [small, a], [True, False]
    plain = concat_pointwise(parts, w, bias, upsample=up, size=(6, 8))
    forced = concat_pointwise(parts, w, bias, upsample=up, size=(6, 8), channels_last=True)
    assert plain is not None and plain.is_contiguous() and not plain.is_contiguous(memory_format=cl)
    assert forced is not None and forced.is_contiguous(memory_format=cl)
    ref = _ref(parts, w, bias, up, (6, 8))
    assert torch.allclose(forced, ref, rtol=0, atol=1e-12) and torch.allclose(plain, ref, rtol=0, atol=1e-12)


def test_channels_last_yolo_neck_keeps_its_c2f_nodes_channels_last() -> None:
    # the first top-down C2f reads two NCHW backbone maps (C5 upsampled, C4) through its GEMMs: in a channels_last
    # neck its output (and so its 3x3 convs) must be channels_last too, not follow the NCHW inputs
    specs = [necklace.FeatureSpec(64, 8), necklace.FeatureSpec(128, 16), necklace.FeatureSpec(256, 32)]
    neck = necklace.build_neck("yolo_pafpn", specs, preset="n").eval()
    dep = necklace.deploy(neck, runtime="native", channels_last=True)
    feats = [torch.randn(1, s.channels, 160 // s.stride, 192 // s.stride) for s in specs]
    layouts: list[bool] = []
    handles = [
        m.register_forward_hook(lambda mod, i, o: layouts.append(o.is_contiguous(memory_format=torch.channels_last)))
        for m in dep.nodes.values()
    ]
    with torch.no_grad():
        out = dep(feats)
        for h in handles:
            h.remove()
        ref = neck(feats)
    assert layouts and all(layouts)
    for a, b in zip(out, ref, strict=True):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()
