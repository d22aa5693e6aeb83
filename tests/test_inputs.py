"""Forward inputs a neck refuses with a clear error (dtype, device, empty sizes, BatchNorm on one value) and the
precisions it runs in (float64 end to end, half / bfloat16 under autocast or after .half() / .to(dtype))."""

from __future__ import annotations

import math

import pytest
import torch
from tests.helpers import SPEC_SETS, pyramid

import necklace
from necklace import GraphNeck

SPECS = SPEC_SETS["c3c5"]
NECKS = necklace.list_necks()


def _small(name: str) -> GraphNeck:
    torch.manual_seed(0)
    info = necklace.neck_info(name)
    return necklace.build_neck(name, SPECS, **info.small_options)


@pytest.fixture(scope="module")
def fpn() -> GraphNeck:
    return necklace.build_neck("fpn", SPECS, width=16).eval()


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_and_bool_maps_are_a_type_error(fpn: GraphNeck, dtype: torch.dtype) -> None:
    feats = [f.to(dtype) for f in pyramid(SPECS, (64, 64))]
    with pytest.raises(TypeError, match=rf"feature map 0 \(stride 8\) has dtype {dtype}; necks take floating-point"):
        fpn(feats)


def test_mixed_dtypes_name_every_map(fpn: GraphNeck) -> None:
    feats = pyramid(SPECS, (64, 64))
    feats[1] = feats[1].double()
    with pytest.raises(TypeError, match=r"mixed dtypes \['torch.float32', 'torch.float64', 'torch.float32'\]"):
        fpn(feats)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_float32_neck_refuses_other_precisions_without_autocast(fpn: GraphNeck, dtype: torch.dtype) -> None:
    feats = [f.to(dtype) for f in pyramid(SPECS, (64, 64))]
    name = str(dtype).replace("torch.", "")
    with pytest.raises(
        TypeError,
        match=rf"maps are {dtype} but the neck's weights are torch.float32 \(no silent conversion\)\. Either convert "
        rf"the neck, neck.to\(torch.{name}\).*torch.autocast\('cpu', dtype=torch.{name}\)",
    ):
        fpn(feats)


@pytest.mark.parametrize("name", NECKS)
def test_float64_end_to_end(name: str) -> None:
    neck = _small(name).double()
    feats = [f.double() for f in pyramid(SPECS, (61, 67))]
    for mode in (neck.train, neck.eval):
        mode()
        with torch.set_grad_enabled(neck.training):
            outs = neck(feats)
        assert all(o.dtype == torch.float64 for o in outs)
        ref = [s.size_for(61, 67) for s in neck.out_specs]
        assert [tuple(o.shape[-2:]) for o in outs] == ref


@pytest.mark.parametrize("name", NECKS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_float32_neck_runs_half_maps_under_autocast(name: str, dtype: torch.dtype) -> None:
    neck = _small(name).eval()
    feats = [f.to(dtype) for f in pyramid(SPECS, (64, 64))]
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        outs = neck(feats)
    assert [o.shape[1] for o in outs] == [s.channels for s in neck.out_specs]
    assert all(o.dtype == dtype and torch.isfinite(o.float()).all() for o in outs)


def test_half_neck_runs_half_maps() -> None:
    neck = _small("bifpn").eval().to(torch.bfloat16)
    outs = neck([f.to(torch.bfloat16) for f in pyramid(SPECS, (64, 64))])
    assert all(o.dtype == torch.bfloat16 for o in outs)


def test_maps_on_another_device_than_the_weights(fpn: GraphNeck) -> None:
    feats = [torch.empty(2, s.channels, 8 // (s.stride // 8), 8 // (s.stride // 8), device="meta") for s in SPECS]
    with pytest.raises(ValueError, match=r"maps are on meta but the neck's weights are on cpu; move one to the other"):
        fpn(feats)
    mixed = pyramid(SPECS, (64, 64))
    mixed[2] = mixed[2].to("meta")
    with pytest.raises(ValueError, match=r"different devices \['cpu', 'cpu', 'meta'\]"):
        fpn(mixed)


@pytest.mark.parametrize("size", [(0, 64), (64, 0)])
def test_empty_spatial_size(fpn: GraphNeck, size: tuple[int, int]) -> None:
    feats = [torch.randn(1, s.channels, math.ceil(size[0] / s.stride), math.ceil(size[1] / s.stride)) for s in SPECS]
    with pytest.raises(ValueError, match=r"feature map 0 \(stride 8\) has an empty spatial size"):
        fpn(feats)


@pytest.mark.parametrize("name", NECKS)
def test_empty_batch_gives_empty_outputs(name: str) -> None:
    neck = _small(name).eval()
    outs = neck(pyramid(SPECS, (64, 64), batch=0))
    assert [tuple(o.shape) for o in outs] == [(0, s.channels, *s.size_for(64, 64)) for s in neck.out_specs]


@pytest.mark.parametrize("name", NECKS)
def test_batchnorm_on_a_single_value_is_refused_in_training_only(name: str) -> None:
    neck = _small(name).train()
    feats = pyramid(SPECS, (32, 32), batch=1)  # the stride-32 map is 1x1
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in neck.modules())
    if has_bn:
        with pytest.raises(ValueError, match=r"training forward with batch 1 whose level \d \(stride \d+\) map is 1x1"):
            neck(feats)
    else:
        assert len(neck(feats)) == len(neck.out_specs)
    neck(pyramid(SPECS, (32, 32), batch=2))  # two values per channel: fine
    neck.eval()
    assert [tuple(o.shape[-2:]) for o in neck(feats)] == [s.size_for(32, 32) for s in neck.out_specs]


def test_batchnorm_check_names_the_node_and_the_fix() -> None:
    neck = necklace.build_neck("bifpn", SPECS, width=16, repeats=1).train()
    with pytest.raises(
        ValueError, match=r"level 6 \(stride 64\) map is 1x1 .*BatchNorm in node 'r0_P6_td'.*at least 65 pixels"
    ):
        neck(pyramid(SPECS, (64, 64), batch=1))  # P6 of a 64x64 image is 1x1


def test_batch_one_training_without_batchnorm_runs() -> None:
    neck = necklace.build_neck("fpn", SPECS, width=8).train()  # FPN: no norm layers
    outs = neck(pyramid(SPECS, (8, 8), batch=1))
    assert [tuple(o.shape) for o in outs] == [(1, 8, 1, 1)] * 4


@pytest.mark.parametrize(("autocast", "dtype"), [(torch.bfloat16, torch.float16), (torch.bfloat16, torch.float64)])
def test_autocast_takes_float32_or_its_own_dtype(fpn: GraphNeck, autocast: torch.dtype, dtype: torch.dtype) -> None:
    feats = [f.to(dtype) for f in pyramid(SPECS, (64, 64))]
    with (
        torch.autocast("cpu", dtype=autocast),
        pytest.raises(TypeError, match=rf"maps are {dtype} inside torch.autocast\(dtype={autocast}\).*x.float\(\)"),
    ):
        fpn(feats)
    with torch.no_grad(), torch.autocast("cpu", dtype=autocast):
        assert all(o.dtype == autocast for o in fpn(pyramid(SPECS, (64, 64))))  # float32 maps: autocast's own case


def test_group_norm_with_one_channel_per_group_on_a_1x1_map() -> None:
    # PANet's GroupNorm(32 groups) at width 16: one channel per group; on a 1x1 level each group is one value
    neck = necklace.build_neck("pafpn", SPECS, width=16, variant="panet").eval()
    with pytest.raises(ValueError, match=r"GroupNorm in node '\w+' has one channel per group \(16 channels, 16 groups"):
        neck(pyramid(SPECS, (32, 32), batch=2))
    assert len(neck(pyramid(SPECS, (64, 64), batch=2))) == 4  # P6 is 1x1 but only the subsample edge reads it
