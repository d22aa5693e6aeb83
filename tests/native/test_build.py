"""The native runtime's C library (necklace.deploy.native.loader) and winograd_conv3x3_native: an explicit build,
a verified cache that a damaged file cannot crash, the fallbacks, and equality with the direct conv over shapes,
layouts, strides, activations and accumulation."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import necklace
from necklace.deploy.native import loader as native
from necklace.deploy.native import winograd as wg
from necklace.deploy.native.modules import conv_act, native_module
from necklace.deploy.native.winograd import (
    WinogradConv2d,
    native_winograd_ok,
    winograd_conv3x3_native,
    winograd_filter,
    winograd_pays,
)
from necklace.layers.conv import ConvCfg, ConvNormAct
from necklace.layers.rep import RepConv

CL = torch.channels_last


@pytest.fixture
def fresh_native(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A cache folder of its own and a forgotten library; the process-wide state is restored afterwards."""
    monkeypatch.setenv("NECKLACE_NATIVE_DIR", str(tmp_path / "cache"))
    native.reset()
    yield tmp_path / "cache"
    monkeypatch.undo()
    native.reset()
    assert native.build().loaded  # (the other tests run on the library from the usual cache)


def _ut(w: torch.Tensor) -> torch.Tensor:
    return winograd_filter(w).transpose(1, 2).contiguous()


def _ref(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, act: str) -> torch.Tensor:
    y = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=1)
    return {"none": y, "relu": y.relu(), "swish": F.silu(y)}[act]


def _close(got: torch.Tensor, ref: torch.Tensor, rel: float = 2e-5) -> None:
    scale = max(ref.abs().max().item(), 1e-6)
    err = (got.double() - ref).abs().max().item()
    assert err <= rel * scale, f"max error {err:.3g} > {rel} x {scale:.3g}"


def test_the_library_builds_and_loads_here() -> None:
    # CI machines have a C compiler: the native path must be what the other tests exercise, not the fallback
    info = native.status()
    assert info.loaded, info
    assert info.source in ("cache", "built") and info.path is not None and Path(info.path).is_file()
    assert info.flags is not None and "-O3" in info.flags
    assert native.build() is info  # already loaded: the same report, no second look at the disk


@pytest.mark.parametrize(
    ("n", "c", "o", "h", "w"),
    [
        (1, 64, 64, 40, 40),
        (2, 17, 33, 13, 9),  # channel counts off the 16-block, odd sizes, a batch
        (1, 5, 3, 1, 1),
        (1, 16, 16, 3, 5),
        (1, 8, 24, 90, 30),  # several bands (tile rows split by TILES_PER_BAND)
        (3, 32, 16, 7, 22),
    ],
)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("act", ["none", "relu", "swish"])
def test_equals_the_direct_conv(n: int, c: int, o: int, h: int, w: int, layout: str, act: str) -> None:
    g = torch.Generator().manual_seed(n * 1000 + c * 10 + o + h)
    x = torch.randn(n, c, h, w, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    wt = torch.randn(o, c, 3, 3, generator=g) / (3 * c**0.5)
    b = torch.randn(o, generator=g)
    y = winograd_conv3x3_native(x, _ut(wt), b, act)
    assert y.shape == (n, o, h, w)
    assert y.is_contiguous(memory_format=CL if layout == "channels_last" and c > 1 else torch.contiguous_format)
    _close(y, _ref(x, wt, b, act))


def test_strided_views_without_bias_and_accumulation() -> None:
    big = torch.randn(2, 40, 19, 23).contiguous(memory_format=CL)
    x = big[:, 4:36]  # a channel slice: neither NCHW- nor channels_last-contiguous
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=CL)
    wt = torch.randn(24, 32, 3, 3) / 17
    ref = _ref(x, wt, None, "none")
    _close(winograd_conv3x3_native(x, _ut(wt), None), ref)
    start = torch.randn(2, 24, 19, 23).contiguous(memory_format=CL)
    out = start.clone()
    got = winograd_conv3x3_native(x, _ut(wt), None, "relu", out=out)
    assert got is out
    _close(out, (start.double() + ref).relu())


def test_silu_over_a_wide_range_and_nan_propagation() -> None:
    # a centred-1 kernel makes the conv an identity, so the activation sees the input values themselves
    c = 16
    wt = torch.zeros(c, c, 3, 3)
    wt[torch.arange(c), torch.arange(c), 1, 1] = 1.0
    x = torch.linspace(-120, 120, c * 12 * 12).reshape(1, c, 12, 12).contiguous(memory_format=CL)
    y = winograd_conv3x3_native(x, _ut(wt), None, "swish")
    ref = F.silu(x.double())
    assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5)
    x[0, 3, 5, 5] = float("nan")
    for act in ("relu", "swish"):
        y = winograd_conv3x3_native(x, _ut(wt), None, act)
        # NaN spreads to every channel of its tile (0 x NaN in the channel sum, like the direct conv's 3x3
        # neighbourhood), never to tiles whose 6x6 windows do not hold it (output rows 0-3 read input rows 0-4)
        assert torch.isnan(y[0, :, 5, 5]).all() and not torch.isnan(y[0, :, :4]).any()


def test_bad_arguments_name_what_was_expected() -> None:
    x = torch.randn(1, 8, 6, 6)
    with pytest.raises(ValueError, match=r"ut \(36, C, O\) with C = 8"):
        winograd_conv3x3_native(x, _ut(torch.randn(4, 6, 3, 3)))
    with pytest.raises(TypeError, match="float32 only"):
        winograd_conv3x3_native(x.double(), _ut(torch.randn(4, 8, 3, 3)).double())
    with pytest.raises(ValueError, match="out must be a dense"):
        winograd_conv3x3_native(x, _ut(torch.randn(4, 8, 3, 3)), out=torch.empty(1, 4, 6, 5))


def test_modules_take_the_native_path_and_the_switch_turns_it_off() -> None:
    conv = WinogradConv2d(64, 64, 3, padding=1)
    x = torch.randn(1, 64, 40, 40).contiguous(memory_format=CL)
    with torch.no_grad():
        assert conv._winograd_path(x) == "native"
        ref = F.conv2d(x, conv.weight, conv.bias, padding=1)
        _close(conv(x), ref.double())
        conv.native = False
        assert conv._winograd_path(x) == ("torch" if winograd_pays(64, 64, 40, 40, True) else None)
        assert conv.forward_act(x, "relu") is None
        conv.native = True
        _close(conv.forward_act(x, "relu"), ref.relu().double())
    # autograd on: never the native path (training sees the plain conv)
    assert conv._winograd_path(x) is None
    # below the pay rules: the direct conv
    assert WinogradConv2d(16, 16, 3, padding=1)._winograd_path(torch.randn(1, 16, 40, 40)) is None


def test_hooks_keep_the_modules() -> None:
    conv, act = WinogradConv2d(64, 64, 3, padding=1), nn.ReLU()
    x = torch.randn(1, 64, 20, 20)
    seen: list[int] = []
    handle = act.register_forward_hook(lambda m, i, o: seen.append(1))
    with torch.no_grad():
        assert conv_act(conv, act, x) is None  # the caller runs conv and act, so the hook fires
        handle.remove()
        y = conv_act(conv, act, x)
    assert y is not None and not seen
    _close(y, F.conv2d(x, conv.weight, conv.bias, padding=1).relu().double())


@pytest.mark.parametrize("act", ["relu", "silu"])
def test_deployed_blocks_fuse_the_activation(act: str) -> None:
    cfg = ConvCfg(norm="bn", act=act)
    cna = ConvNormAct(48, 64, 3, cfg=cfg).eval()
    cna.fuse()
    cna = native_module(cna)
    rep = RepConv(64, 64, cfg=cfg).eval()
    for m in rep.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 48, 28, 28).contiguous(memory_format=CL)
    with torch.no_grad():
        a = cna(x)
        ref_a = cna.act(cna.conv(x))
        before = rep(a)
        rep.reparameterize()
        rep = native_module(rep)
        assert isinstance(rep.conv, WinogradConv2d) and rep.conv._winograd_path(a) == "native"
        after = rep(a)
    _close(a, ref_a.double(), 1e-4)
    _close(after, before.double(), 1e-4)


def test_deploy_true_builds_a_plain_conv_that_the_native_runtime_speeds_up() -> None:
    rep = RepConv(32, 32, cfg=ConvCfg(norm="bn"), deploy=True)
    assert type(rep.conv) is nn.Conv2d
    assert isinstance(native_module(rep).conv, WinogradConv2d)
    assert not isinstance(
        native_module(RepConv(32, 32, stride=2, cfg=ConvCfg(norm="bn"), deploy=True)).conv, WinogradConv2d
    )


def _target(compiler: list[str]) -> Path:
    return native.cache_dir() / native._key(compiler, native._FLAG_SETS[0]) / "libnecklace_native.so"


def test_nothing_is_built_or_loaded_before_the_explicit_step(fresh_native: Path) -> None:
    assert native.library() is None and not native.status().loaded
    assert "not built yet" in str(native.status().error)
    conv = WinogradConv2d(64, 64, 3, padding=1)
    x = torch.randn(1, 64, 40, 40).contiguous(memory_format=CL)
    with torch.no_grad():
        conv(x)  # a forward never builds: the pure-torch forms run
    assert native.library() is None and not fresh_native.exists()
    report = native.build()
    assert report.loaded and report.source == "built" and report.seconds > 0
    files = sorted(p.name for p in Path(report.path).parent.iterdir())
    assert files == ["libnecklace_native.so", "manifest.json"]  # no temporary left behind


def test_a_damaged_cached_file_is_rebuilt_never_loaded(fresh_native: Path) -> None:
    compiler, _ = native._compiler()
    assert compiler is not None
    assert native.build().source == "built"
    target = _target(compiler)
    good = target.read_bytes()
    for damage in (good[: len(good) // 2], good[:100] + b"\0" * (len(good) - 100), b""):
        target.write_bytes(damage)  # truncated by a crash, overwritten, emptied: would SIGBUS if mapped
        native.reset()
        report = native.build()
        assert report.loaded and report.source == "built", report
        assert target.read_bytes() == good
    native.reset()
    assert native.build().source == "cache"  # verified against the manifest: loaded from the cache
    x = torch.randn(1, 8, 5, 5)
    wt = torch.randn(8, 8, 3, 3)
    _close(winograd_conv3x3_native(x, _ut(wt)), _ref(x, wt, None, "none"))


def test_a_damaged_file_in_another_process_is_reported_not_fatal(fresh_native: Path) -> None:
    """The SIGBUS class: a process that loads the cache while its file is damaged must live and say so."""
    import subprocess
    import sys

    compiler, _ = native._compiler()
    assert compiler is not None and native.build().loaded
    target = _target(compiler)
    target.write_bytes(target.read_bytes()[:4096])
    code = "from necklace.deploy.native import loader; r = loader.build(); print('ok', r.loaded, r.source)"
    env = {**os.environ, "NECKLACE_NATIVE_DIR": str(fresh_native)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "True", "built"]


def test_disabled_falls_back_quietly(fresh_native: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NECKLACE_NATIVE", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = native.build()
    assert native.library() is None and not report.loaded
    assert str(report.error).startswith("disabled")
    x = torch.randn(1, 64, 40, 40).contiguous(memory_format=CL)
    assert not native_winograd_ok(x)
    conv = WinogradConv2d(64, 64, 3, padding=1)
    with torch.no_grad():
        assert conv._winograd_path(x) != "native"
        _close(conv(x), F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1))
    with pytest.raises(RuntimeError, match="not loaded"):
        winograd_conv3x3_native(x, _ut(conv.weight.detach()))


def test_no_compiler_is_reported_and_the_runtime_still_deploys(
    fresh_native: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", os.path.join(str(fresh_native), "no-such-cc"))
    report = native.build()
    assert not report.loaded and "no-such-cc" in str(report.error) and "not an executable" in str(report.error)
    neck = necklace.build_neck("yolo_pafpn", [(64, 8), (128, 16), (256, 32)]).eval()
    fast = necklace.deploy(neck, runtime="native")
    assert fast.deploy_report.native.build.loaded is False  # deployed on the pure-torch forms, and says so
    assert fast.deploy_report.max_rel_diff < 1e-3


def test_cc_with_arguments_is_a_command(fresh_native: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc is not None
    monkeypatch.setenv("CC", f"env NECKLACE_TEST=1 {cc}")  # a wrapper + arguments, like "ccache gcc"
    report = native.build()
    assert report.loaded and report.compiler is not None and report.compiler.endswith(cc), report


def test_a_compiler_that_writes_nothing_leaves_no_files(fresh_native: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fresh_native.parent / "fakecc"
    fake.write_text("#!/bin/sh\nexit 0\n")  # "succeeds" and writes nothing
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    report = native.build()
    assert not report.loaded and "wrote an empty file" in str(report.error)
    left = [p for p in fresh_native.rglob("*") if p.is_file()]
    assert left == []


def test_native_pay_rules_corners_and_the_nchw_size_cap() -> None:
    for channels_last, rules in ((False, wg.PAYS_NATIVE_NCHW), (True, wg.PAYS_NATIVE_CHANNELS_LAST)):
        for rule in rules:
            c, s = rule[0], rule[1]
            assert winograd_pays(c, c, s, s, channels_last, native=True)
            for cc, ss in ((c - 1, s), (c, s - 1)):
                others = any(cc >= r[0] and r[1] <= ss <= (r[2] if len(r) > 2 else ss) for r in rules if r != rule)
                assert winograd_pays(cc, cc, ss, ss, channels_last, native=True) == others, (channels_last, cc, ss)
            if len(rule) > 2:  # capped: one pixel beyond the largest side it covers is left to the direct conv
                big = rule[2] + 1
                others = any(c >= r[0] and r[1] <= big <= (r[2] if len(r) > 2 else big) for r in rules if r != rule)
                assert winograd_pays(c, c, big, big, channels_last, native=True) == others
    # the narrowest convs on large maps (the channel planes far apart) keep the direct conv; wider ones do not
    assert not winograd_pays(16, 16, 160, 160, False, native=True)
    assert not winograd_pays(16, 16, 160, 160, True, native=True)
    assert winograd_pays(16, 16, 80, 80, False, native=True)
    assert winograd_pays(64, 64, 160, 160, False, native=True)
    assert winograd_pays(32, 32, 160, 160, True, native=True)
