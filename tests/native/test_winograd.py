"""Winograd F(4x4, 3x3) inference convs: equality with the direct conv, when the path runs, and its cache."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import necklace
from necklace.deploy.native import winograd as wg
from necklace.deploy.native.gemm import PointwiseConv2d, PointwiseToChannelsLast
from necklace.deploy.native.modules import native_module
from necklace.deploy.native.winograd import (
    WinogradConv2d,
    winograd_conv3x3,
    winograd_eligible,
    winograd_filter,
    winograd_pays,
)
from necklace.layers.conv import ConvNormAct
from necklace.layers.rep import RepConv


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (4, 4), (5, 7), (9, 13), (16, 17), (33, 8)])
@pytest.mark.parametrize("batch", [1, 3])
def test_matches_direct_conv_in_float64_any_size(hw: tuple[int, int], batch: int) -> None:
    g = torch.Generator().manual_seed(hw[0] * 31 + hw[1] + batch)
    x = torch.randn(batch, 5, *hw, generator=g, dtype=torch.float64)
    w = torch.randn(6, 5, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    y = winograd_conv3x3(x, winograd_filter(w), b)
    ref = F.conv2d(x, w, b, padding=1)
    assert y.shape == ref.shape and y.is_contiguous()
    assert torch.allclose(y, ref, rtol=0, atol=1e-11 * float(ref.abs().max())), _rel_err(y, ref)


def test_float32_error_is_about_1e5_of_the_output() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 256, 40, 40, generator=g)
    w = torch.randn(256, 256, 3, 3, generator=g) / 48
    b = torch.randn(256, generator=g)
    ref64 = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    err = _rel_err(winograd_conv3x3(x, winograd_filter(w), b), ref64)
    direct_err = _rel_err(F.conv2d(x, w, b, padding=1), ref64)
    assert err < 5e-5  # the module docstring's claim (~1e-5)
    assert err > direct_err  # and it is not the direct conv in disguise


@pytest.mark.parametrize("hw", [(1, 1), (5, 7), (9, 13), (33, 8)])
def test_channels_last_matches_direct_conv_in_float64_any_size(hw: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(hw[0] * 7 + hw[1])
    x = torch.randn(2, 5, *hw, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(6, 5, 3, 3, generator=g, dtype=torch.float64)
    y = winograd_conv3x3(x, winograd_filter(w))
    ref = F.conv2d(x, w, padding=1)
    assert torch.allclose(y, ref, rtol=0, atol=1e-11 * float(ref.abs().max())), _rel_err(y, ref)


def test_channels_last_input_gives_channels_last_output() -> None:
    x = torch.randn(2, 8, 11, 12).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(4, 8, 3, 3), torch.randn(4)
    y = winograd_conv3x3(x, winograd_filter(w), b)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y, F.conv2d(x, w, b, padding=1), atol=1e-4)


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match=r"u \(36, O, C\).*\(1, 8, 5, 5\).*\(36, 4, 7\)"):
        winograd_conv3x3(torch.zeros(1, 8, 5, 5), torch.zeros(36, 4, 7))
    with pytest.raises(ValueError, match=r"\(O, C, 3, 3\).*\(4, 8, 5, 5\)"):
        winograd_filter(torch.zeros(4, 8, 5, 5))


def test_eligibility_and_threshold() -> None:
    assert winograd_eligible(nn.Conv2d(8, 8, 3, padding=1))
    for conv in (
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.Conv2d(8, 8, 3, padding=0),
        nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(8, 8, 1),
    ):
        assert not winograd_eligible(conv), conv
    c, s = wg.MIN_CHANNELS, wg.MIN_SIDE
    assert winograd_pays(c, c, s, s)
    assert not winograd_pays(c - 1, c, s, s) and not winograd_pays(c, c - 1, s, s)
    assert not winograd_pays(c, c, s - 1, s) and not winograd_pays(c, c, s, s - 1)
    # every rule's corner, per layout: pays on it, not one channel or one pixel below (unless another rule holds)
    for channels_last, rules in ((False, wg.PAYS_NCHW), (True, wg.PAYS_CHANNELS_LAST)):
        for c, s in rules:
            assert winograd_pays(c, c, s, s, channels_last)
            below = [(c - 1, s), (c, s - 1)]
            for cc, ss in below:
                others = any(cc >= c2 and ss >= s2 for c2, s2 in rules if (c2, s2) != (c, s))
                assert winograd_pays(cc, cc, ss, ss, channels_last) == others, (channels_last, cc, ss)
    # channels_last maps pay from narrower convs (the gather reads contiguous channel runs)
    assert winograd_pays(128, 128, 40, 40, channels_last=True) and not winograd_pays(128, 128, 40, 40)


def _big_conv() -> tuple[WinogradConv2d, torch.Tensor]:
    c, s = wg.MIN_CHANNELS, wg.MIN_SIDE + 3
    torch.manual_seed(0)
    return WinogradConv2d(c, c, 3, padding=1).eval(), torch.randn(1, c, s, s + 2)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Input shapes of every Winograd call, either path (pure torch, or the native library's call that every native
    conv makes)."""
    seen: list[tuple[int, ...]] = []
    real_torch, real_native = wg.winograd_conv3x3, wg._wino_run

    def spy_torch(x: torch.Tensor, *args: object, **kwargs: object) -> object:
        seen.append(tuple(x.shape))
        return real_torch(x, *args, **kwargs)  # type: ignore[arg-type]

    def spy_native(lib: object, x: torch.Tensor, *args: object) -> object:
        seen.append(tuple(x.shape))
        return real_native(lib, x, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(wg, "winograd_conv3x3", spy_torch)
    monkeypatch.setattr(wg, "_wino_run", spy_native)
    return seen


def test_module_runs_winograd_only_in_inference(calls: list[tuple[int, ...]]) -> None:
    conv, x = _big_conv()
    ref = F.conv2d(x, conv.weight, conv.bias, padding=1)
    with torch.no_grad():
        y = conv(x)
    assert calls == [tuple(x.shape)]
    assert _rel_err(y, ref) < 5e-5 and not torch.equal(y, ref.detach())
    # autograd on: the plain conv, bit for bit, and gradients flow
    y_train = conv(x)
    assert len(calls) == 1 and torch.equal(y_train, ref)
    y_train.sum().backward()
    assert conv.weight.grad is not None
    with torch.inference_mode():
        conv(x)
    assert len(calls) == 2


def test_module_skips_small_shapes_other_dtypes_and_when_switched_off(calls: list[tuple[int, ...]]) -> None:
    conv, x = _big_conv()
    conv.native = False  # the pure-torch path's rules (the native path's: tests/test_native.py)
    with torch.no_grad():
        small = x[:, :, : wg.MIN_SIDE - 1]
        assert torch.equal(conv(small), F.conv2d(small, conv.weight, conv.bias, padding=1))
        assert calls == []
        half = conv.to(torch.bfloat16)
        half(x.to(torch.bfloat16))
        assert calls == []
        conv = conv.float()
        conv.winograd = False
        assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
        assert calls == []
        conv.winograd = True
        conv(x)
        assert len(calls) == 1


def test_module_picks_by_the_input_layout(calls: list[tuple[int, ...]]) -> None:
    torch.manual_seed(0)
    conv = WinogradConv2d(128, 128, 3, padding=1).eval()
    conv.native = False  # the pure-torch path's rules (the native path pays on both layouts here)
    x = torch.randn(1, 128, 40, 40)
    with torch.no_grad():
        assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))  # NCHW: 128 ch do not pay
        assert calls == []
        xl = x.contiguous(memory_format=torch.channels_last)
        y = conv(xl)
    assert calls == [tuple(x.shape)] and y.is_contiguous(memory_format=torch.channels_last)
    assert _rel_err(y, F.conv2d(x, conv.weight, conv.bias, padding=1)) < 5e-5


def test_filter_cache_follows_weight_changes() -> None:
    conv, x = _big_conv()
    with torch.no_grad():
        conv(x)
        conv.weight.mul_(2)  # in place (what BN folding does)
        assert _rel_err(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1)) < 5e-5
        conv.weight = nn.Parameter(torch.randn_like(conv.weight))  # replaced
        assert _rel_err(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1)) < 5e-5
        twin = copy.deepcopy(conv)
        twin.weight.zero_()
        assert twin(x).abs().max() <= conv.bias.abs().max() + 1e-6  # the copy's own (zero) filter
        assert _rel_err(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1)) < 5e-5  # original untouched
        dbl = conv.double()
        assert _rel_err(dbl(x.double()), F.conv2d(x.double(), dbl.weight, dbl.bias, padding=1)) < 1e-12


def test_same_parameters_and_state_dict_as_conv2d() -> None:
    plain = nn.Conv2d(8, 16, 3, padding=1)
    fast = WinogradConv2d.from_conv(plain)
    assert fast.weight is plain.weight and fast.bias is plain.bias
    assert list(fast.state_dict()) == list(plain.state_dict())
    fresh = WinogradConv2d(8, 16, 3, padding=1)
    fresh.load_state_dict(plain.state_dict())
    assert torch.equal(fresh.weight, plain.weight)


def test_tracing_sees_the_plain_conv(calls: list[tuple[int, ...]]) -> None:
    conv, x = _big_conv()
    with torch.no_grad():
        traced = torch.jit.trace(conv, (x,), check_trace=False)
    kinds = {n.kind() for n in traced.graph.nodes()}
    assert "aten::_convolution" in kinds and "aten::bmm" not in kinds
    assert calls == []


def test_plain_blocks_are_plain_and_their_native_forms_pick_the_conv() -> None:
    plain = [ConvNormAct(8, 8, 3), ConvNormAct(8, 8, 1), ConvNormAct(8, 8, 3, stride=2)]
    assert all(type(m.conv) is nn.Conv2d for m in plain)  # the layers compute what torch computes
    assert isinstance(native_module(ConvNormAct(8, 8, 3)).conv, WinogradConv2d)
    for block in (ConvNormAct(8, 8, 3, stride=2), ConvNormAct(8, 8, 3, groups=8), ConvNormAct(8, 8, 3, dilation=2)):
        assert type(native_module(block).conv) is nn.Conv2d
    assert type(native_module(ConvNormAct(8, 8, 1)).conv) is PointwiseConv2d
    assert type(native_module(ConvNormAct(8, 8, 1, stride=2)).conv) is nn.Conv2d
    rep = RepConv(8, 8).eval()
    assert native_module(rep) is rep  # training branches: nothing native until re-parameterised
    rep.reparameterize()
    assert type(rep.conv) is nn.Conv2d and isinstance(native_module(rep).conv, WinogradConv2d)


@pytest.mark.parametrize("name", ["fpn", "pafpn"])
def test_native_neck_outputs_match_the_plain_neck(name: str, calls: list[tuple[int, ...]]) -> None:
    specs = [necklace.FeatureSpec(256, 8), necklace.FeatureSpec(512, 16), necklace.FeatureSpec(1024, 32)]
    neck = necklace.build_neck(name, specs, width=wg.MIN_CHANNELS).eval()
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(1, s.channels, -(-227 // s.stride), -(-250 // s.stride), generator=g) for s in specs]
    with torch.no_grad():
        slow = neck(feats)
        assert calls == [], "a plain neck never takes the Winograd path"
        fast = necklace.deploy(neck, feats, runtime="native")(feats)
        assert calls, "the 3x3 output convs of the finest level should take the Winograd path"
    for a, b in zip(fast, slow, strict=True):
        assert a.shape == b.shape
        assert _rel_err(a, b) < 1e-4


def test_plain_convs_count_nominal_macs(calls: list[tuple[int, ...]]) -> None:
    from necklace.bench import count_flops

    plain = nn.Conv2d(wg.MIN_CHANNELS, wg.MIN_CHANNELS, 3, padding=1).eval()
    x = torch.randn(1, wg.MIN_CHANNELS, wg.MIN_SIDE + 3, wg.MIN_SIDE + 5)
    c, h, w = plain.in_channels, x.shape[2], x.shape[3]
    assert count_flops(plain, x) == 2 * c * c * 9 * h * w
    assert calls == []


@pytest.mark.parametrize("tiles_per_band", [1, 3, 8])
@pytest.mark.parametrize("hw", [(4, 4), (9, 13), (16, 17), (17, 16), (24, 8)])
def test_bands_cover_the_map_exactly(monkeypatch: pytest.MonkeyPatch, tiles_per_band: int, hw: tuple[int, int]) -> None:
    monkeypatch.setattr(wg, "TILES_PER_BAND", tiles_per_band)  # bands of 1 / a few tile rows
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, *hw, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
    ref = F.conv2d(x, w, padding=1)
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        y = winograd_conv3x3(inp, winograd_filter(w))
        assert torch.allclose(y, ref, rtol=0, atol=1e-11 * float(ref.abs().max()))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_gemm_matches_conv(batch: int, bias: bool, channels_last: bool) -> None:
    torch.manual_seed(batch)
    conv = PointwiseConv2d(512, 5, 1, bias=bias).double().eval()
    x = torch.randn(batch, 512, 7, 9, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = F.conv2d(x, conv.weight, conv.bias)
    with torch.no_grad():
        y = conv(x)
    assert y.shape == ref.shape
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert torch.allclose(y, ref, rtol=0, atol=1e-12)


def test_pointwise_gemm_only_in_inference(monkeypatch: pytest.MonkeyPatch) -> None:
    conv = PointwiseConv2d(512, 8, 1).eval()
    x = torch.randn(1, 512, 6, 6)
    used: list[str] = []
    real_addmm = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: used.append("addmm") or real_addmm(*a, **k))
    with torch.no_grad():
        conv(x)
        assert used == ["addmm"]
        narrow = PointwiseConv2d(511, 8, 1).eval()
        narrow(torch.randn(1, 511, 6, 6))  # below GEMM_MIN_IN_CHANNELS: mkldnn's conv
        assert used == ["addmm"]
    y = conv(x)  # autograd on: the plain conv
    assert used == ["addmm"] and torch.equal(y, F.conv2d(x, conv.weight, conv.bias))
    y.sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.shape == conv.weight.shape
    with pytest.raises(ValueError, match=r"1x1 stride-1.*kernel \(3, 3\)"):
        PointwiseConv2d.from_conv(nn.Conv2d(4, 4, 3))


def test_channels_last_native_laterals_read_nchw_maps() -> None:
    specs = [necklace.FeatureSpec(8, 8), necklace.FeatureSpec(16, 16)]
    neck = necklace.build_neck("fpn", specs, width=8).eval()
    nchw = necklace.deploy(neck, runtime="native", channels_last=False)
    assert not any(type(m) is PointwiseToChannelsLast for m in nchw.modules())
    assert any(type(m) is PointwiseConv2d for m in nchw.modules())
    cl = necklace.deploy(neck, runtime="native")
    assert any(type(m) is PointwiseToChannelsLast for m in cl.modules())
    assert cl.channels_last_direct == {"C3", "C4"}


@pytest.mark.parametrize("name", ["fpn", "yolo_pafpn"])
def test_cpu_autocast_runs_the_plain_ops(name: str, calls: list[tuple[int, ...]]) -> None:
    """Under CPU autocast the ops would be cast one by one (mixed-dtype GEMMs fail): the native paths step aside."""
    if name == "fpn":
        specs = [necklace.FeatureSpec(512, 8), necklace.FeatureSpec(1024, 16), necklace.FeatureSpec(2048, 32)]
        neck, size = necklace.build_neck("fpn", specs, width=wg.MIN_CHANNELS).eval(), 256
    else:
        specs = [necklace.FeatureSpec(64, 8), necklace.FeatureSpec(128, 16), necklace.FeatureSpec(256, 32)]
        neck, size = necklace.build_neck("yolo_pafpn", specs, preset="n").eval(), 128
    feats = [torch.randn(1, s.channels, size // s.stride, size // s.stride) for s in specs]
    fast = necklace.deploy(neck, feats, runtime="native", channels_last=False)
    plain = necklace.deploy(neck, feats)
    calls.clear()  # (deploy's own check ran the native paths, without autocast)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(feats)
        ref = plain(feats)
    assert calls == []
    for a, b in zip(out, ref, strict=True):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b)
