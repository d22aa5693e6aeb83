"""NAS-FPN: the ``gp`` fusion, ``maxpool2`` resampling, the graph, and weight-for-weight parity with mmdet ``NASFPN``.

The parity tests need mmdet (installed without compiled ops, see ``_mmdet_shim``) and are skipped without it.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import randomize_weights as _randomize
from torch import Tensor, nn

from necklace import FeatureSpec, NeckGraph, build_neck
from necklace.convert.mmdet import from_mmdet_nasfpn
from necklace.layers.conv import ConvCfg, ConvNormAct
from necklace.layers.fuse import Fuse
from necklace.layers.resample import Resample
from necklace.necks.nasfpn import nasfpn_graph

WIDTH = 32
CH4 = (8, 16, 32, 64)  # C2..C5
SPECS4 = [FeatureSpec(c, s) for c, s in zip(CH4, (4, 8, 16, 32), strict=True)]
SPECS3 = SPECS4[1:]


# ----------------------------------------------------------------------------- layers
def test_gp_fuse_formula() -> None:
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(2, 5, 6, 7, generator=g), torch.randn(2, 5, 6, 7, generator=g)
    out = Fuse("gp", 2)([x1, x2])
    expected = x2 + torch.sigmoid(F.adaptive_avg_pool2d(x2, 1)) * x1
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert not list(Fuse("gp", 2).parameters())
    with pytest.raises(ValueError, match="exactly 2 inputs"):
        Fuse("gp", 3)


def test_gp_fuse_half_precision_gate_is_computed_in_fp32() -> None:
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(1, 4, 64, 64, generator=g)
    x2 = 3000 + 100 * torch.randn(1, 4, 64, 64, generator=g)  # sum over the map overflows fp16 (max 65504)
    out = Fuse("gp", 2)([x1.half(), x2.half()])
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), x2 + torch.sigmoid(x2.mean((2, 3), keepdim=True)) * x1, rtol=1e-3, atol=4)


def test_maxpool2_matches_mmcv_ratio_pool_and_is_ceil_sized() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 48, generator=g)
    for steps in (1, 2, 3):
        r = 2**steps
        size = (32 // r, 48 // r)
        out = Resample(3, 3, steps=steps, down="maxpool2")(x, size)
        assert torch.equal(out, F.max_pool2d(x, kernel_size=r, stride=r))  # mmcv merge cell on divisible sizes
    odd = torch.randn(1, 3, 13, 17, generator=g)
    assert Resample(3, 3, steps=2, down="maxpool2")(odd, (4, 5)).shape[-2:] == (4, 5)
    assert Resample(3, 3, steps=4, down="maxpool2")(odd, (1, 2)).shape[-2:] == (1, 2)
    torch.testing.assert_close(Resample(3, 3, steps=1, down="maxpool2")(odd, (7, 9))[..., -1, -1], odd[..., 12, 16])


def test_conv_act_first_is_relu_conv_norm_and_not_in_place() -> None:
    m = ConvNormAct(4, 6, 3, cfg=ConvCfg(norm="bn", act="relu", bias=True), act_first=True).eval()
    assert m.conv.bias is not None
    x = torch.randn(1, 4, 5, 5)
    x0 = x.clone()
    assert torch.equal(m(x), m.norm(m.conv(torch.relu(x0))))
    assert torch.equal(x, x0)


# ------------------------------------------------------------------------------ graph
def test_graph_levels_and_roundtrip() -> None:
    g = nasfpn_graph(SPECS3, width=WIDTH, stack_times=2)
    assert [s.stride for s in g.out_specs] == [8, 16, 32, 64, 128]
    assert NeckGraph.from_dict(g.to_dict()) == g
    assert sum(n.name.startswith("s1_") for n in g.nodes) == 9
    assert [s.stride for s in nasfpn_graph(SPECS4, width=WIDTH, stack_times=1).out_specs] == [4, 8, 16, 32, 64]
    with pytest.raises(ValueError, match="five levels"):
        nasfpn_graph(SPECS3, levels=(3, 6))
    with pytest.raises(ValueError, match="stack_times"):
        nasfpn_graph(SPECS3, stack_times=0)


@pytest.mark.parametrize("size", [(97, 131), (33, 65), (1, 1)])
def test_any_size_gives_ceil_sizes(size: tuple[int, int]) -> None:
    neck = build_neck("nasfpn", SPECS4, width=WIDTH, stack_times=2, levels=(3, 7)).eval()
    h, w = size
    feats = [torch.randn(1, s.channels, math.ceil(h / s.stride), math.ceil(w / s.stride)) for s in SPECS4]
    with torch.no_grad():
        outs = neck(feats)
    assert [tuple(o.shape[-2:]) for o in outs] == [(math.ceil(h / 2**k), math.ceil(w / 2**k)) for k in range(3, 8)]


# ----------------------------------------------------------------------------- parity
def _mmdet_necks() -> Any:
    pytest.importorskip("mmdet")
    pytest.importorskip("mmcv")
    from _mmdet_shim import import_mmdet_necks  # after the skips: the shim patches mmcv

    return import_mmdet_necks()


def _pair(n_inputs: int, stack_times: int, norm: bool = True) -> tuple[nn.Module, nn.Module, list[FeatureSpec]]:
    necks = _mmdet_necks()
    specs = SPECS4 if n_inputs == 4 else SPECS3
    ref = necks.NASFPN(
        in_channels=[s.channels for s in specs],
        out_channels=WIDTH,
        num_outs=5,
        stack_times=stack_times,
        start_level=1 if n_inputs == 4 else 0,
        norm_cfg=dict(type="BN") if norm else None,
    )
    _randomize(ref)
    neck = build_neck(
        "nasfpn", specs, width=WIDTH, stack_times=stack_times, levels=(3, 7), norm="bn" if norm else None
    ).eval()
    neck.load_state_dict(from_mmdet_nasfpn(ref.state_dict(), neck), strict=True)
    from_mmdet_nasfpn(ref, neck)  # the module form also checks the options
    return ref, neck, specs


def _features(specs: list[FeatureSpec], size: tuple[int, int], seed: int = 1) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = size
    return [torch.randn(2, s.channels, math.ceil(h / s.stride), math.ceil(w / s.stride), generator=g) for s in specs]


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("stack_times", [2, 7])
@pytest.mark.parametrize("n_inputs", [4, 3])
def test_parity_with_mmdet(n_inputs: int, stack_times: int, norm: bool) -> None:
    ref, neck, specs = _pair(n_inputs, stack_times, norm)
    for size in ((256, 256), (256, 384)):  # divisible by 128, as mmdet's NAS-FPN config pads
        feats = _features(specs, size)
        with torch.no_grad():
            ours, theirs = neck(feats), ref(feats)
        assert [o.shape for o in ours] == [t.shape for t in theirs]
        scale = max(1.0, max(float(t.abs().max()) for t in theirs))
        diff = max(float((o - t).abs().max()) for o, t in zip(ours, theirs, strict=True))
        assert diff <= 1e-5 * scale, (size, diff, scale)


def test_odd_size_mmdet_floors_p6_p7_necklace_ceils() -> None:
    ref, neck, specs = _pair(4, 2)
    feats = _features(specs, (97, 131))
    with torch.no_grad():
        ours, theirs = neck(feats), ref(feats)
    assert [tuple(o.shape[-2:]) for o in ours] == [(13, 17), (7, 9), (4, 5), (2, 3), (1, 2)]
    assert [tuple(t.shape[-2:]) for t in theirs] == [(13, 17), (7, 9), (4, 5), (2, 2), (1, 1)]  # MaxPool2d(2, 2)


def test_parameter_count_equals_mmdet_reference_config() -> None:
    necks = _mmdet_necks()
    channels = [256, 512, 1024, 2048]
    ref = necks.NASFPN(channels, 256, num_outs=5, stack_times=7, start_level=1, norm_cfg=dict(type="BN"))
    specs = [FeatureSpec(c, s) for c, s in zip(channels, (4, 8, 16, 32), strict=True)]
    neck = build_neck("nasfpn", specs, width=256, stack_times=7, levels=(3, 7))
    n_ref = sum(p.numel() for p in ref.parameters())
    assert sum(p.numel() for p in neck.parameters()) == n_ref == 29_990_144
    assert len(from_mmdet_nasfpn(ref, neck)) == len(neck.state_dict())


def test_converter_mismatch_errors() -> None:
    ref, _, specs = _pair(4, 2)
    sd = ref.state_dict()
    with pytest.raises(ValueError, match="fpn_stages"):
        from_mmdet_nasfpn(sd, build_neck("nasfpn", specs, width=WIDTH, stack_times=3, levels=(3, 7)))
    with pytest.raises(ValueError, match="lateral_convs"):
        from_mmdet_nasfpn(sd, build_neck("nasfpn", specs, width=WIDTH, stack_times=2))  # levels (2, 6)
    with pytest.raises(ValueError, match=r"bn\.weight"):
        from_mmdet_nasfpn(sd, build_neck("nasfpn", specs, width=WIDTH, stack_times=2, levels=(3, 7), norm=None))
    with pytest.raises(ValueError, match="not a necklace nasfpn"):
        from_mmdet_nasfpn(sd, build_neck("fpn", specs, width=WIDTH))
    with pytest.raises(ValueError, match="does not compute"):
        from_mmdet_nasfpn(
            ref, build_neck("nasfpn", specs, width=WIDTH, stack_times=2, levels=(3, 7), upsample="bilinear")
        )
