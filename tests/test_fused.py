"""conv_act_fused: conv + activation as one oneDNN call (pre-packed weight) on channels_last maps in inference."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import necklace
from necklace import FeatureSpec
from necklace.deploy import SETTINGS
from necklace.layers import conv as conv_mod
from necklace.layers import fused
from necklace.layers.fused import conv_act_fused, packed_weight_count
from necklace.layers.winograd import WinogradConv2d, direct_convs


def test_onednn_is_there() -> None:
    assert fused._available()  # the pinned torch wheels ship oneDNN: every test below really runs it


def _cl(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("act", [nn.ReLU(inplace=True), nn.SiLU(), conv_mod.SiLU(inplace=True), nn.Identity()])
@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "groups", "bias"),
    [(16, 32, 3, 1, 1, True), (32, 16, 3, 2, 1, True), (16, 16, 3, 1, 16, False), (24, 8, 1, 1, 1, True)],
)
def test_equals_the_modules(
    act: nn.Module, cin: int, cout: int, kernel: int, stride: int, groups: int, bias: bool
) -> None:
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias).eval()
    x = _cl(2, cin, 13, 11)
    with torch.no_grad():
        y = conv_act_fused(conv, act, x)
        ref = act(conv(x))
    assert y is not None and y.shape == ref.shape
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_weight_changes_and_copies_repack() -> None:
    conv, act, x = nn.Conv2d(8, 8, 3, padding=1).eval(), nn.ReLU(), _cl(1, 8, 9, 9)
    with torch.no_grad():
        first = conv_act_fused(conv, act, x)
        assert first is not None and packed_weight_count() >= 1
        conv.weight.mul_(-1.0)  # in place: the packed weight is stale
        flipped = conv_act_fused(conv, act, x)
        assert flipped is not None and torch.allclose(flipped, act(conv(x)), atol=1e-5)
        assert not torch.allclose(flipped, first)
        twin = copy.deepcopy(conv)  # a copy packs its own weight, never the original's
        twin.weight.zero_()
        z = conv_act_fused(twin, act, x)
        assert z is not None and torch.allclose(z, act(twin.bias.view(1, -1, 1, 1).expand_as(z)))
        assert torch.allclose(conv_act_fused(conv, act, x), flipped)  # type: ignore[arg-type]


def test_where_the_modules_run(monkeypatch: pytest.MonkeyPatch) -> None:
    conv, act, x = nn.Conv2d(8, 8, 3, padding=1).eval(), nn.ReLU(), _cl(1, 8, 9, 9)
    with torch.no_grad():
        assert conv_act_fused(conv, act, x.contiguous()) is None  # NCHW
        assert conv_act_fused(conv, nn.GELU(), x) is None  # no such post-op here
        assert conv_act_fused(conv.double(), act, x.double()) is None  # float32 only
        conv.float()
        assert conv_act_fused(nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), act, x) is None
        with direct_convs():
            assert conv_act_fused(conv, act, x) is None
        handle = conv.register_forward_hook(lambda *a: None)
        assert conv_act_fused(conv, act, x) is None  # a hook must see its call
        handle.remove()
        wide = WinogradConv2d(256, 256, 3, padding=1).eval()
        assert conv_act_fused(wide, act, _cl(1, 256, 40, 40)) is None  # its Winograd path is faster there
        assert conv_act_fused(wide, act, _cl(1, 256, 8, 8)) is not None  # direct there: fused
        monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
        assert conv_act_fused(conv, act, x) is None
    assert conv_act_fused(conv, act, x) is None  # autograd on


def test_deployed_channels_last_neck_runs_fused_and_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = (FeatureSpec(16, 8), FeatureSpec(32, 16), FeatureSpec(64, 32))
    neck = necklace.build_neck("rep_pafpn", specs, preset="n").eval()
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, s.channels, 96 // s.stride, 96 // s.stride, generator=g) for s in specs]
    deployed = necklace.deploy(neck, (feats,), channels_last=True, fused=True)
    assert necklace.DeployReport.of(deployed).fused_conv_act is True
    calls: list[str] = []
    real = torch.ops.mkldnn._convolution_pointwise

    def spy(*args: object) -> torch.Tensor:
        calls.append(str(args[7]))
        return real(*args)

    monkeypatch.setattr(fused.torch.ops.mkldnn, "_convolution_pointwise", spy)
    with torch.no_grad():
        out = deployed(feats)
        assert calls and set(calls) <= {"relu", "none"}  # RepVGG blocks: conv + ReLU in one call
        n = len(calls)
        switched = necklace.set_fused_conv_act(deployed, False)
        assert switched == len(fused.fused_act_modules(deployed)) > 0
        unfused = deployed(feats)
        assert len(calls) == n  # switched off: not called
        necklace.set_fused_conv_act(deployed, True)
        monkeypatch.setattr(fused, "_available", lambda: False)
        ref = deployed(feats)
        assert len(calls) == n  # no oneDNN: not called
        eager = neck(feats)
    for a, b, c, u in zip(out, ref, eager, unfused, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
        assert torch.equal(u, b)  # switched off = the modules' own calls
        assert torch.allclose(a, c, rtol=1e-4, atol=1e-4 * float(c.abs().max()))


def test_eager_nchw_neck_never_calls_it(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = (FeatureSpec(16, 8), FeatureSpec(32, 16), FeatureSpec(64, 32))
    neck = necklace.deploy(necklace.build_neck("rep_pafpn", specs, preset="n").eval(), channels_last=False)
    calls: list[int] = []
    monkeypatch.setattr(fused.torch.ops.mkldnn, "_convolution_pointwise", lambda *a: calls.append(1))
    feats = [torch.randn(1, s.channels, 64 // s.stride, 64 // s.stride) for s in specs]
    with torch.no_grad():
        neck(feats)
    assert calls == []


def test_deploy_times_fused_and_unfused_and_keeps_the_faster() -> None:
    specs = (FeatureSpec(16, 8), FeatureSpec(32, 16), FeatureSpec(64, 32))
    neck = necklace.build_neck("rep_pafpn", specs, preset="n").eval()
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(1, s.channels, 64 // s.stride, 64 // s.stride, generator=g) for s in specs]
    auto = necklace.deploy(neck, (feats,))
    report = necklace.DeployReport.of(auto)
    assert report.latency_ms is not None and set(report.latency_ms) == set(SETTINGS)
    best = min(report.latency_ms, key=report.latency_ms.__getitem__)
    assert (report.channels_last, report.fused_conv_act) == SETTINGS[best]
    mods = fused.fused_act_modules(auto)
    assert mods and all(m.fused_act is report.fused_conv_act for m in mods)  # the kept setting is applied
    cl_only = necklace.DeployReport.of(necklace.deploy(neck, (feats,), channels_last=True))
    assert cl_only.latency_ms is not None and set(cl_only.latency_ms) == {"channels_last", "channels_last_unfused"}
    forced = necklace.DeployReport.of(necklace.deploy(neck, (feats,), channels_last=True, fused=False))
    assert forced.latency_ms is None and forced.fused_conv_act is False
    plain = necklace.DeployReport.of(
        necklace.deploy(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval(), torch.randn(1, 3, 9, 9))
    )
    assert (
        plain.fused_conv_act is None
        and plain.latency_ms is not None
        and set(plain.latency_ms) == {"contiguous", "channels_last"}
    )


def test_deploy_timing_runs_between_the_round_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    deploy_mod = importlib.import_module("necklace.deploy")  # (the package's ``deploy`` is the function)
    lo, hi = deploy_mod.TUNE_ROUNDS
    assert lo >= 5  # fewer let one slow call on a noisy 2-core CPU decide the setting (seen in a vs_peers run)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    calls: list[int] = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    x = torch.randn(1, 3, 9, 9)
    # two layouts, no fused modules: each round = 2 warm-up calls + 2 timed calls
    deploy_mod._time_settings(model, (x,), ["contiguous", "channels_last"])
    assert len(calls) == 4 * hi  # a fast model: every round fits the budget
    calls.clear()
    monkeypatch.setattr(deploy_mod, "TUNE_BUDGET_S", 0.0)
    deploy_mod._time_settings(model, (x,), ["contiguous", "channels_last"])
    assert len(calls) == 4 * lo  # budget spent at once: only the minimum


def test_weights_are_packed_per_input_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    # oneDNN picks its kernel by the whole problem: a weight packed without the input's size may not be the layout
    # that kernel reads (then reordered on every call: 8.0 vs 1.3 ms for a stride-2 conv, 128 ch at 40x40)
    seen: list[list[int]] = []
    reorder = torch._C._nn.mkldnn_reorder_conv2d_weight

    def spy(*args: object) -> torch.Tensor:
        seen.append(list(args[5]))  # type: ignore[call-overload]
        return reorder(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(torch._C._nn, "mkldnn_reorder_conv2d_weight", spy)
    conv, act = nn.Conv2d(16, 16, 3, stride=2, padding=1).eval(), nn.SiLU()
    shapes = [(1, 16, 20, 20), (1, 16, 20, 20), (2, 16, 13, 9), (1, 16, 20, 20)]
    with torch.no_grad():
        for shape in shapes:
            x = _cl(*shape)
            y = conv_act_fused(conv, act, x)
            assert y is not None and torch.allclose(y, act(conv(x)), atol=1e-5)
        assert seen == [[1, 16, 20, 20], [2, 16, 13, 9]]  # one pack per shape, reused after
        monkeypatch.setattr(fused, "MAX_PACKED_SHAPES", 2)
        y = conv_act_fused(conv, act, _cl(1, 16, 7, 7))  # a third shape: the cache starts over, bounded
    assert y is not None and seen[-1] == [1, 16, 7, 7] and len(fused._PACKED[conv][2]) == 1
