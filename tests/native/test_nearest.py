"""upsample_nearest: F.interpolate's nearest values by strided copies on NCHW maps in inference."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import necklace
from necklace import FeatureSpec
from necklace.deploy.native import nearest
from necklace.deploy.native.nearest import upsample_nearest


@pytest.fixture
def interpolate_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, ...]]]:
    """Input shapes of every ``F.interpolate`` call made while the test runs."""
    calls: list[tuple[int, ...]] = []
    real = F.interpolate

    def spy(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(F, "interpolate", spy)
    yield calls


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((1, 256, 20, 20), (40, 40)),
        ((2, 3, 5, 7), (10, 14)),
        ((1, 4, 3, 5), (12, 5)),  # 4x rows, 1x columns
        ((1, 4, 6, 4), (18, 8)),  # 3x, 2x
        ((2, 1, 2, 2), (8, 8)),  # one channel, factor 4
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_equals_interpolate_by_copies(
    shape: tuple[int, ...], size: tuple[int, int], dtype: torch.dtype, interpolate_calls: list
) -> None:
    x = torch.randn(shape).to(dtype)
    with torch.no_grad():
        y = upsample_nearest(x, size)
    assert interpolate_calls == []  # the copy path ran
    ref = F.interpolate(x, size=size, mode="nearest")
    assert torch.equal(y, ref) and y.dtype == dtype and y.stride() == ref.stride()


@pytest.mark.parametrize(
    ("shape", "size", "why"),
    [
        ((1, 4, 5, 5), (11, 11), "not an integer factor"),
        ((1, 4, 4, 4), (20, 20), "factor 5 > MAX_COPY_FACTOR"),
        ((1, 4, 1, 6), (2, 12), "a one-pixel axis"),
        ((1, 4, 6, 6), (6, 6), "factor 1"),
        ((1, 4, 6, 6), (3, 3), "downsampling"),
    ],
)
def test_other_sizes_use_interpolate(
    shape: tuple[int, ...], size: tuple[int, int], why: str, interpolate_calls: list
) -> None:
    x = torch.randn(shape)
    with torch.no_grad():
        y = upsample_nearest(x, size)
    assert len(interpolate_calls) == 1, why
    assert torch.equal(y, F.interpolate(x, size=size, mode="nearest"))


def test_channels_last_autograd_and_autocast_use_interpolate(interpolate_calls: list) -> None:
    x = torch.randn(1, 8, 6, 6)
    xcl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = upsample_nearest(xcl, (12, 12))
    assert y.is_contiguous(memory_format=torch.channels_last) and len(interpolate_calls) == 1
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        upsample_nearest(x, (12, 12))
    assert len(interpolate_calls) == 2
    xg = x.clone().requires_grad_(True)
    upsample_nearest(xg, (12, 12)).square().sum().backward()
    assert len(interpolate_calls) == 3
    assert xg.grad is not None and torch.allclose(xg.grad, 8 * x)  # 4 copies of each pixel, d(y^2)/dy = 2y


def test_strided_input_uses_interpolate(interpolate_calls: list) -> None:
    x = torch.randn(1, 4, 6, 12)[..., ::2]  # not contiguous
    with torch.no_grad():
        y = upsample_nearest(x, (12, 12))
    assert len(interpolate_calls) == 1 and torch.equal(y, F.interpolate(x, size=(12, 12), mode="nearest"))


@pytest.mark.parametrize("name", ["fpn", "pafpn", "bifpn"])
def test_necks_are_bit_identical_with_and_without_copies(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    specs = (FeatureSpec(16, 8), FeatureSpec(32, 16), FeatureSpec(64, 32))
    plain = necklace.build_neck(name, specs, width=16).eval()
    neck = necklace.deploy(plain, runtime="native", channels_last=False)
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, s.channels, 64 // s.stride, 64 // s.stride, generator=g) for s in specs]
    with torch.no_grad():
        fast = neck(feats)
        monkeypatch.setattr(nearest, "MAX_COPY_FACTOR", 0)  # every upsample through F.interpolate
        ref = neck(feats)
    assert len(fast) == len(ref) and all(torch.equal(a, b) for a, b in zip(fast, ref, strict=True))
