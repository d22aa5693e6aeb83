"""The native GEMM (gemm.c via necklace.deploy.native.cgemm): parts read in place with any strides, packed panels,
the bias / sum / upsampled initial values, the ReLU / SiLU epilogue, and its users (concat_pointwise's native path,
1x1 convs and CSP blocks of a deployed neck)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import necklace
from necklace.deploy.native import loader as native
from necklace.deploy.native.cgemm import gemm_into, pack_panels, packed_columns
from necklace.deploy.native.gemm import concat_pointwise
from necklace.deploy.native.modules import NativeCSPBlock, native_module, pointwise_act
from necklace.layers.blocks import CSPBlock
from necklace.layers.conv import ConvCfg, ConvNormAct

CL = torch.channels_last
ACTS = {"none": lambda y: y, "relu": torch.relu, "swish": F.silu}


@pytest.fixture(autouse=True)
def _loaded() -> None:
    assert native.build().loaded, native.status().error  # these tests are about the library: it must be there


def _close(got: torch.Tensor, ref: torch.Tensor, tol: float = 2e-6) -> None:
    scale = max(ref.abs().max().item(), 1.0)
    assert torch.allclose(got, ref, rtol=0, atol=tol * scale), (got - ref).abs().max().item()


@pytest.mark.parametrize("act", ["none", "relu", "swish"])
@pytest.mark.parametrize(("m", "ks", "n"), [(1, [1], 1), (7, [5], 3), (13, [3, 4, 5], 17), (100, [16, 32], 40)])
def test_parts_with_any_strides_match_the_matmul(act: str, m: int, ks: list[int], n: int) -> None:
    g = torch.Generator().manual_seed(m * 100 + n)
    # a row-major part, a transposed one (an NCHW map's pixel matrix) and a column slice of a wider one
    parts = [torch.randn(m, ks[0], generator=g)]
    if len(ks) > 1:
        parts.append(torch.randn(ks[1], m, generator=g).t())
    if len(ks) > 2:
        parts.append(torch.randn(m, ks[2] + 7, generator=g)[:, 3 : 3 + ks[2]])
    w, b = torch.randn(n, sum(ks), generator=g), torch.randn(n, generator=g)
    ref = ACTS[act](torch.cat(parts, 1) @ w.t() + b)
    out = torch.full((m, n + 5), float("nan"))[:, 2 : 2 + n]  # an output with a row stride of its own
    assert gemm_into(out, parts, pack_panels(w), b, act=act) is out
    _close(out, ref)
    # the sum into the values already in out, without a bias
    init = torch.randn(m, n, generator=g)
    out2 = init.clone()
    gemm_into(out2, parts, pack_panels(w), None, init_out=True, act=act)
    _close(out2, ACTS[act](init + torch.cat(parts, 1) @ w.t()))


@pytest.mark.parametrize(("low", "size", "n"), [((2, 3), (4, 6), 2), ((3, 2), (9, 4), 1), ((5, 5), (5, 5), 1)])
def test_initial_values_read_through_a_nearest_upsampling(low: tuple[int, int], size: tuple[int, int], n: int) -> None:
    g = torch.Generator().manual_seed(3)
    o, c = 20, 9
    z = torch.randn(n, o, *low, generator=g).contiguous(memory_format=CL)
    x = torch.randn(n * size[0] * size[1], c, generator=g)
    w = torch.randn(o, c, generator=g)
    up = F.interpolate(z, size=size, mode="nearest").permute(0, 2, 3, 1).reshape(-1, o)
    got = gemm_into(torch.empty(x.shape[0], o), [x], pack_panels(w), act="swish", upsampled=(z, *size))
    _close(got, F.silu(up + x @ w.t()))


def test_silu_epilogue_keeps_torchs_special_values() -> None:
    v = torch.tensor([float("nan"), float("inf"), -float("inf"), -100.0, 100.0, 0.0, 1e-40, -3.0, 88.9, -88.9])
    x = torch.cat([v, torch.linspace(-30, 30, 999)]).view(-1, 1)
    got = gemm_into(torch.empty(x.shape[0], 1), [x], pack_panels(torch.ones(1, 1)), act="swish")[:, 0]
    ref = F.silu(x[:, 0])
    assert torch.isnan(got[0]) and got[1] == float("inf") and torch.isnan(got[2])  # -inf / inf is NaN, as torch's
    assert got[3] == 0 and got[4] == 100 and got[5] == 0
    finite = torch.isfinite(ref)
    assert torch.allclose(got[finite], ref[finite], rtol=2e-6, atol=1e-30)


def test_bad_shapes_are_refused_with_the_expected_layout() -> None:
    w = pack_panels(torch.randn(4, 6))
    with pytest.raises(ValueError, match=r"packed panels \(ceil\(N/16\), sum K_i, 16\)"):
        gemm_into(torch.empty(5, 4), [torch.randn(5, 5)], w)  # 5 != 6 input channels
    with pytest.raises(ValueError, match="unit column stride"):
        gemm_into(torch.empty(4, 5).t(), [torch.randn(5, 6)], w)
    with pytest.raises(ValueError, match="float32 parts"):
        gemm_into(torch.empty(5, 4), [torch.randn(5, 6, dtype=torch.float64)], w)
    with pytest.raises(ValueError, match="integer factors"):
        gemm_into(torch.empty(5 * 7, 4), [torch.randn(35, 6)], w, upsampled=(torch.randn(1, 4, 2, 3), 5, 7))
    with pytest.raises(ValueError, match="float32 parts"):  # a float64 bias would be read as float32 memory
        gemm_into(torch.empty(5, 4), [torch.randn(5, 6)], w, torch.randn(4, dtype=torch.float64))


def test_packed_weights_follow_in_place_changes() -> None:
    conv = torch.nn.Conv2d(6, 3, 1)
    first = packed_columns(conv, ((0, 6),))[0]
    assert packed_columns(conv, ((0, 6),))[0] is first  # cached
    with torch.no_grad():
        conv.weight.mul_(2)  # (what BatchNorm folding does)
    again = packed_columns(conv, ((0, 6),))[0]
    assert again is not first and torch.equal(again, 2 * first)


@pytest.mark.parametrize("act", ["none", "swish"])
@pytest.mark.parametrize(
    ("lows", "size"),
    [
        ([(3, 4)], (6, 8)),  # the usual 2x top-down part, read through the upsampling
        ([(5, 7)], (9, 13)),  # a fractional factor: resized, then summed into
        ([(3, 4), (2, 2)], (6, 8)),  # two upsampled parts
    ],
)
def test_concat_pointwise_native_path(act: str, lows: list[tuple[int, int]], size: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(5)
    n = 2
    smalls = [torch.randn(n, 6, *lo, generator=g).contiguous(memory_format=CL) for lo in lows]
    a = torch.randn(n, 3, *size, generator=g).contiguous(memory_format=CL)
    c = torch.randn(n, 10, *size, generator=g).contiguous(memory_format=CL)[:, 4:9]  # a channel slice
    parts, up = [*smalls, a, c], [True] * len(smalls) + [False, False]
    w = torch.randn(21, sum(p.shape[1] for p in parts), 1, 1, generator=g)
    b = torch.randn(21, generator=g)
    full = [F.interpolate(p, size=size, mode="nearest") if u else p for p, u in zip(parts, up, strict=True)]
    ref = ACTS[act](F.conv2d(torch.cat(full, 1), w, b))
    with torch.no_grad():
        y = concat_pointwise(parts, w, b, upsample=up, size=size, act=act)
        only_low = concat_pointwise(smalls[:1], w[:, :6], b, upsample=[True], size=size, act=act)
    assert y is not None and y.is_contiguous(memory_format=CL)
    _close(y, ref)
    assert only_low is not None
    _close(only_low, ACTS[act](F.conv2d(F.interpolate(smalls[0], size=size, mode="nearest"), w[:, :6], b)))


def test_pointwise_conv_on_channels_last_maps_and_csp_block() -> None:
    torch.manual_seed(0)
    block = ConvNormAct(24, 40, 1, cfg=ConvCfg(norm="bn", act="silu")).eval()
    fast = native_module(block)
    x = torch.randn(2, 24, 7, 9).contiguous(memory_format=CL)
    with torch.no_grad():
        assert pointwise_act(fast, x) is None  # BatchNorm not folded yet: the modules run
        folded = necklace.deploy(block, runtime="native", example_inputs=x)
        ref = block(x)
        got = pointwise_act(folded, x)
        assert pointwise_act(folded, x.contiguous()) is None  # NCHW: its output keeps that layout, by the conv
    assert got is not None and got.is_contiguous(memory_format=CL)
    _close(got, ref, 1e-5)
    csp = CSPBlock(32, 32, n=1, cfg=ConvCfg(norm="bn", act="silu")).eval()
    y = torch.randn(1, 32, 10, 10).contiguous(memory_format=CL)
    deployed = necklace.deploy(csp, runtime="native", example_inputs=y)
    assert isinstance(deployed, NativeCSPBlock)
    with torch.no_grad():
        _close(deployed(y), csp(y), 1e-5)
    cats: list[int] = []
    real = torch.cat

    def spy(tensors, *args, **kwargs):  # type: ignore[no-untyped-def]
        cats.append(len(tensors))
        return real(tensors, *args, **kwargs)

    torch.cat = spy  # type: ignore[assignment]
    try:
        with torch.no_grad():
            deployed(y)
        grad = deployed(y)  # autograd: the block as written (its concatenation)
    finally:
        torch.cat = real  # type: ignore[assignment]
    assert cats == [2]  # only the autograd call concatenated
    _close(grad.detach(), csp(y).detach(), 1e-5)


def test_bottleneck_shortcut_added_in_the_winograd_output_transform() -> None:
    from necklace.deploy.native import winograd as wg
    from necklace.deploy.native.modules import NativeBottleneck
    from necklace.layers.blocks import Bottleneck

    torch.manual_seed(1)
    block = Bottleneck(32, 32, cfg=ConvCfg(norm="bn", act="silu")).eval()
    wide = torch.randn(1, 64, 24, 20).contiguous(memory_format=CL)
    x = wide[:, 32:]  # a chunk of a C2f's first conv: a channel slice, read in place
    fast = necklace.deploy(block, runtime="native", example_inputs=x)
    assert isinstance(fast, NativeBottleneck)
    seen: list[bool] = []
    real = wg._wino_run  # (the library call every native Winograd conv makes)

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(args[8] is not None)  # its residual
        return real(*args, **kwargs)

    wg._wino_run = spy  # type: ignore[assignment]
    try:
        with torch.no_grad():
            got = fast(x)
    finally:
        wg._wino_run = real  # type: ignore[assignment]
    assert seen == [False, True]  # the second conv took the shortcut
    with torch.no_grad():
        _close(got, block(x), 1e-5)
        hooked: list[int] = []
        handle = fast.cv2.register_forward_hook(lambda m, i, o: hooked.append(1))
        _close(fast(x), block(x), 1e-5)  # a hook on the conv block: the modules run, the hook fires
        handle.remove()
    assert hooked == [1]
    with pytest.raises(ValueError, match="residual must be a float32 map of the output's shape"):
        wg.winograd_conv3x3_native(x, torch.zeros(36, 32, 32), residual=torch.zeros(1, 32, 3, 3))


@pytest.mark.parametrize("flags", [("-O3", "-mavx2", "-mfma", "-fopenmp"), ("-O3",)], ids=["avx2", "portable"])
def test_library_built_without_avx512_or_simd_computes_the_same(
    flags: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """The kernels' other code paths (AVX2 without AVX-512; plain C, no OpenMP), built by the loader's own fallback
    flag sets, give the same results as torch."""
    from necklace.deploy.native import winograd as wg

    monkeypatch.setenv("NECKLACE_NATIVE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_FLAG_SETS", (flags,))
    native.reset()
    try:
        report = native.build()
        assert report.loaded and report.flags == " ".join(flags), report
        g = torch.Generator().manual_seed(7)
        parts = [torch.randn(50, 20, generator=g), torch.randn(13, 50, generator=g).t()]
        w, b = torch.randn(21, 33, generator=g), torch.randn(21, generator=g)
        for act in ("none", "relu", "swish"):
            out = gemm_into(torch.empty(50, 21), parts, pack_panels(w), b, act=act)
            _close(out, ACTS[act](torch.cat(parts, 1) @ w.t() + b))
        # the initial values read through an upsampling (a last panel of 5 columns: masked loads and stores)
        low = torch.randn(1, 21, 5, 5, generator=g).contiguous(memory_format=CL)
        up = F.interpolate(low, size=(10, 5), mode="nearest").permute(0, 2, 3, 1).reshape(50, 21)
        out = gemm_into(torch.empty(50, 21), parts, pack_panels(w), act="swish", upsampled=(low, 10, 5))
        _close(out, F.silu(up + torch.cat(parts, 1) @ w.t()))
        x = torch.randn(1, 24, 13, 11, generator=g).contiguous(memory_format=CL)
        wt, bt = torch.randn(20, 24, 3, 3, generator=g), torch.randn(20, generator=g)
        ut = wg.winograd_filter(wt).transpose(1, 2).contiguous()
        y = wg.winograd_conv3x3_native(x, ut, bt, "swish", residual=x[:, :20])
        _close(y, x[:, :20] + F.silu(F.conv2d(x, wt, bt, padding=1)), 1e-4)
    finally:
        monkeypatch.undo()
        native.reset()
        assert native.build().loaded  # (the other tests run on the library from the usual cache)


@pytest.mark.parametrize("act", ["silu", "relu"])
def test_strided_conv_activation_by_the_native_loop(act: str) -> None:
    from necklace.deploy.native.modules import conv_then_act

    torch.manual_seed(2)
    block = ConvNormAct(16, 24, 3, stride=2, cfg=ConvCfg(norm="bn", act=act)).eval()
    x = torch.randn(1, 16, 21, 17).contiguous(memory_format=CL)
    fast = necklace.deploy(block, runtime="native", example_inputs=x)
    with torch.no_grad():
        got = conv_then_act(fast, x)
        assert got is not None
        _close(got, block(x), 1e-5)
        _close(fast(x), block(x), 1e-5)
    assert conv_then_act(fast, x) is None  # autograd on: the modules run
