"""YOLOv6's transposed-conv upsample folded into the next 3x3 conv (native runtime): kernel algebra, node route."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import spy_shapes
from torch import nn

import necklace
from necklace import FeatureSpec
from necklace.deploy.native import nodes as graph
from necklace.deploy.native import winograd
from necklace.deploy.native.fold import (
    add_transposed_conv3x3_,
    compose_transposed_conv3x3,
    transposed_conv3x3_constant,
    transposed_conv3x3_into,
)
from necklace.deploy.native.nodes import NativeNode


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (5, 4), (7, 9)])
@pytest.mark.parametrize("bias", [True, False])
def test_composed_kernel_equals_the_pair_in_float64(hw: tuple[int, int], bias: bool) -> None:
    g = torch.Generator().manual_seed(hw[0] * 10 + hw[1])
    up = nn.ConvTranspose2d(5, 6, 2, 2, bias=bias).double()
    with torch.no_grad():
        for p in up.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    w = torch.randn(4, 6, 3, 3, generator=g, dtype=torch.float64)
    a = torch.randn(2, 5, *hw, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ref = F.conv2d(up(a), w, padding=1)  # zero padding around the upsampled map, bias inside it only
        y = add_transposed_conv3x3_(torch.zeros_like(ref), a, compose_transposed_conv3x3(up, w))
    assert torch.allclose(y, ref, rtol=0, atol=1e-12 * float(ref.abs().max()))


def test_adds_into_a_channels_last_map() -> None:
    up, w = nn.ConvTranspose2d(8, 6, 2, 2), torch.randn(5, 6, 3, 3)
    a = torch.randn(1, 8, 4, 6).contiguous(memory_format=torch.channels_last)
    base = torch.randn(1, 5, 8, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = base + F.conv2d(up(a), w, padding=1)
        y = add_transposed_conv3x3_(base.clone(), a, compose_transposed_conv3x3(up, w))
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.allclose(y, ref, atol=1e-5)


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="2x2 stride-2"):
        compose_transposed_conv3x3(nn.ConvTranspose2d(4, 4, 3, 2), torch.zeros(2, 4, 3, 3))
    with pytest.raises(ValueError, match=r"\(O, 4, 3, 3\).*\(2, 5, 3, 3\)"):
        compose_transposed_conv3x3(nn.ConvTranspose2d(4, 4, 2, 2), torch.zeros(2, 5, 3, 3))
    k = compose_transposed_conv3x3(nn.ConvTranspose2d(4, 4, 2, 2), torch.zeros(2, 4, 3, 3))
    with pytest.raises(ValueError, match=r"y \(1, 2, 5, 6\).*expected y .*\(1, 2, 6, 6\)"):
        add_transposed_conv3x3_(torch.zeros(1, 2, 5, 6), torch.zeros(1, 4, 3, 3), k)


@pytest.fixture
def folded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Records the low-resolution input of every folded transposed conv the native nodes run."""
    return spy_shapes(monkeypatch, graph, "transposed_conv3x3_into", arg=1)


def _rep_pafpn(name: str = "rep_pafpn") -> tuple[nn.Module, list[FeatureSpec]]:
    torch.manual_seed(0)
    specs = [FeatureSpec(32, 8), FeatureSpec(64, 16), FeatureSpec(128, 32)]
    neck = necklace.build_neck(name, specs, preset="n").eval()
    with torch.no_grad():
        for m in neck.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    return neck, specs


def _rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("batch", [1, 2])
def test_deployed_rep_pafpn_folds_both_top_down_nodes(
    folded: list[tuple[int, ...]], channels_last: bool, batch: int
) -> None:
    neck, specs = _rep_pafpn()
    general = necklace.deploy(neck)  # the torch runtime: upsample, concatenate, conv
    deployed = necklace.deploy(neck, runtime="native", channels_last=channels_last)
    folded.clear()  # (deploy's own check)
    feats = [torch.randn(batch, s.channels, *s.size_for(128, 96)) for s in specs]
    with torch.no_grad():
        ref = neck(feats)
        general_out = general(feats)
        assert folded == []
        got = deployed(feats)
    # T4 reads R5 (2 x 4x3 at stride 32), N3 reads R4 (stride 16)
    assert folded == [(batch, 64, 4, 3), (batch, 32, 8, 6)]
    assert _rel(got, general_out) < 1e-5 and _rel(got, ref) < 1e-5
    assert not all(torch.equal(a, b) for a, b in zip(got, general_out, strict=True))  # it really ran another way


@pytest.mark.parametrize(
    ("name", "image", "expected"),
    [
        # a 650 px image: C4 is 41 high, the 2x upsample of R5 (21) is 42 and cropped, so T4 runs the general path;
        # N3's upsample of R4 (41 -> 82) fits C3 (82) and folds
        ("rep_pafpn", (650, 96), [(1, 32, 41, 6)]),
        # YOLOv6 v3: the BiFusion node B4 concatenates up(R5) with two laterals into a 1x1 conv (not folded); N3 is
        # RepPAN's top-down node (folded)
        ("rep_bifpan", (128, 96), [(1, 32, 8, 6)]),
    ],
    ids=["odd-size-falls-back-where-cropped", "rep-bifpan-folds-only-into-rep-blocks"],
)
def test_folds_exactly_where_it_applies(
    folded: list[tuple[int, ...]], name: str, image: tuple[int, int], expected: list[tuple[int, ...]]
) -> None:
    neck, specs = _rep_pafpn(name)
    deployed = necklace.deploy(neck, runtime="native")
    folded.clear()  # (deploy's own check)
    feats = [torch.randn(1, s.channels, *s.size_for(*image)) for s in specs]
    with torch.no_grad():
        ref, got = neck(feats), deployed(feats)
    assert folded == expected and _rel(got, ref) < 1e-5


def test_training_form_and_autograd_never_fold(folded: list[tuple[int, ...]]) -> None:
    neck, specs = _rep_pafpn()
    feats = [torch.randn(1, s.channels, *s.size_for(64, 64)) for s in specs]
    with torch.no_grad():
        neck(feats)  # RepConvs not re-parameterised: no single conv to fold into
    deployed = necklace.deploy(neck, runtime="native")
    folded.clear()  # (deploy's own check)
    sum(o.sum() for o in deployed(feats)).backward()  # autograd on: the plain modules
    assert folded == []


def test_folded_weights_follow_weight_changes() -> None:
    neck, specs = _rep_pafpn()
    deployed = necklace.deploy(neck, runtime="native")
    plain = necklace.deploy(neck)
    feats = [torch.randn(1, s.channels, *s.size_for(64, 64)) for s in specs]
    node = deployed.nodes["T4"]
    assert isinstance(node, NativeNode) and node._up_head is not None
    with torch.no_grad():
        deployed(feats)
        assert node._up_cache is not None
        for model in (deployed, plain):
            model.nodes["T4"].edges[0].ops[0].weight.mul_(2.0)  # the transposed conv, modified in place
            model.nodes["T4"].block.blocks[0].conv.weight.add_(0.1)  # and the conv that reads it
        got = deployed(feats)
        ref = plain(feats)
    assert _rel(got, ref) < 1e-5


def test_rest_conv_follows_the_winograd_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = spy_shapes(monkeypatch, winograd, "winograd_conv3x3")
    seen_native = spy_shapes(monkeypatch, winograd, "winograd_conv3x3_native")
    torch.manual_seed(0)
    # wide enough that the conv on C4 (the concatenation's non-upsampled part) runs Winograd
    specs = [FeatureSpec(64, 8), FeatureSpec(256, 16), FeatureSpec(256, 32)]
    neck = necklace.build_neck("rep_pafpn", specs, channels=(64, 256, 256), repeats=1).eval()
    deployed = necklace.deploy(neck, runtime="native")
    feats = [torch.randn(1, s.channels, *s.size_for(512, 512)) for s in specs]
    with torch.no_grad():
        ref = neck(feats)
        got = deployed(feats)
        assert (1, 256, 32, 32) in seen + seen_native  # T4's conv on C4 alone
        seen.clear()
        seen_native.clear()
        for m in deployed.modules():
            if isinstance(m, winograd.WinogradConv2d):
                m.winograd = False
        off = deployed(feats)
    assert seen == seen_native == [] and _rel(got, ref) < 1e-5 and _rel(off, ref) < 1e-5


def test_folded_weights_follow_a_memory_format_change() -> None:
    # a neck converted in place keeps its tensors (and versions), only the strides change; a cache keyed without
    # them kept NCHW weights for channels_last maps and every call re-laid them out
    neck, specs = _rep_pafpn()
    deployed = necklace.deploy(neck, runtime="native", channels_last=False)
    feats = [torch.randn(1, s.channels, *s.size_for(64, 64)) for s in specs]
    node = deployed.nodes["T4"]
    assert isinstance(node, NativeNode)
    with torch.no_grad():
        ref = deployed(feats)
        assert node._up_cache is not None and node._up_cache[2].weight.is_contiguous()
        deployed.to(memory_format=torch.channels_last)
        deployed.channels_last_inputs = True
        got = deployed(feats)
    rest_weight, kernel = node._up_cache[2].weight, node._up_cache[3]
    assert rest_weight.is_contiguous(memory_format=torch.channels_last) and not rest_weight.is_contiguous()
    assert kernel.is_contiguous(memory_format=torch.channels_last) and not kernel.is_contiguous()
    assert _rel(got, ref) < 1e-5


@pytest.mark.parametrize("hw", [(1, 1), (3, 4), (7, 9)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_written_into_the_output_phases_with_the_constant_map(hw: tuple[int, int], channels_last: bool) -> None:
    g = torch.Generator().manual_seed(hw[0] * 7 + hw[1])
    up = nn.ConvTranspose2d(5, 6, 2, 2)
    with torch.no_grad():
        for p in up.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    w = torch.randn(4, 6, 3, 3, generator=g)
    a = torch.randn(2, 5, *hw, generator=g)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    k = compose_transposed_conv3x3(up, w)
    constant = transposed_conv3x3_constant(k, *hw)
    y = torch.full((2, 4, 2 * hw[0], 2 * hw[1]), float("nan")).contiguous(memory_format=fmt)  # overwritten
    with torch.no_grad():
        ref = F.conv2d(up(a), w, padding=1)
        got = transposed_conv3x3_into(y, a.contiguous(memory_format=fmt), k[:, :-1].contiguous(), constant)
    assert got is y and y.is_contiguous(memory_format=fmt)
    assert torch.allclose(y, ref, atol=1e-5 * float(ref.abs().max()))
    with pytest.raises(ValueError, match=r"constant \(1, 4, 3, 2\)"):
        transposed_conv3x3_into(y, a, k[:, :-1], torch.zeros(1, 4, 3, 2))


@pytest.mark.parametrize("channels_last", [False, True])
def test_native_winograd_accumulates_into_the_up_part(monkeypatch: pytest.MonkeyPatch, channels_last: bool) -> None:
    # wide and large enough that the conv on the other parts takes the native Winograd path
    into = spy_shapes(monkeypatch, graph, "transposed_conv3x3_into", arg=1)
    accumulated: list[tuple[int, ...]] = []  # native Winograd calls that add into a given output (the up part)
    real = winograd.winograd_conv3x3_native

    def spy(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if kwargs.get("out") is not None or (len(args) >= 4 and args[3] is not None):
            accumulated.append(tuple(x.shape))
        return real(x, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(winograd, "winograd_conv3x3_native", spy)
    torch.manual_seed(1)
    specs = [FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)]
    neck = necklace.build_neck("rep_pafpn", specs, channels=(64, 128, 256), repeats=1).eval()
    for m in neck.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    deployed = necklace.deploy(neck, runtime="native", channels_last=channels_last)
    into.clear()
    accumulated.clear()
    feats = [torch.randn(1, s.channels, *s.size_for(256, 320)) for s in specs]
    with torch.no_grad():
        ref = neck(feats)
        got = deployed(feats)
        again = deployed(feats)  # the cached constant map
    assert into and accumulated
    assert (1, 128, 8, 10) in into  # T3's up part: the reduced P4 map (width 128 here) at stride 16
    assert _rel(got, ref) < 1e-5 and all(torch.equal(a, b) for a, b in zip(got, again, strict=True))
