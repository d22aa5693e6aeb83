"""necklace.bench: parameter / FLOP counts against hand formulas, latency statistics, defaults, errors."""

from __future__ import annotations

import json
import math
from collections import Counter
from itertools import pairwise

import pytest
import torch
from torch import nn

from necklace import FeatureSpec, build_neck, list_necks
from necklace.bench import (
    BenchResult,
    LatencyStats,
    bench_neck,
    count_flops,
    count_macs,
    count_params,
    default_image_size,
    default_in_specs,
    interleaved,
    measure_latency,
    random_features,
    round_orders,
)

SMALL = (FeatureSpec(16, 8), FeatureSpec(32, 16), FeatureSpec(64, 32))


def test_count_params_conv() -> None:
    assert count_params(nn.Conv2d(3, 4, 3)) == 3 * 4 * 9 + 4
    frozen = nn.Sequential(nn.Linear(5, 6), nn.Linear(6, 7))
    frozen[0].requires_grad_(False)
    assert count_params(frozen) == 5 * 6 + 6 + 6 * 7 + 7
    assert count_params(frozen, trainable_only=True) == 6 * 7 + 7


@pytest.mark.parametrize(("cin", "cout", "h", "w"), [(8, 16, 10, 12), (3, 5, 7, 9)])
def test_flops_of_3x3_conv_match_formula(cin: int, cout: int, h: int, w: int) -> None:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    x = torch.zeros(1, cin, h, w)
    assert count_flops(conv, x) == 2 * cin * cout * 9 * h * w
    assert count_macs(conv, x) == cin * cout * 9 * h * w


def test_flops_of_neck_is_sum_of_convs() -> None:
    # fpn at width 8 on one level: 1x1 lateral (16->8) + 3x3 output conv (8->8), at 8x8; no extra level.
    neck = build_neck("fpn", [FeatureSpec(16, 8)], width=8, levels=(3, 3))
    feats = random_features(neck.in_specs, (64, 64))
    assert count_flops(neck, feats) == 2 * (16 * 8 + 8 * 8 * 9) * 8 * 8


def test_measure_latency_stats_and_restores_state() -> None:
    conv = nn.Conv2d(3, 4, 3).train()
    calls: list[tuple[int, int]] = []
    before = torch.get_num_threads()
    stats = measure_latency(
        conv, torch.zeros(1, 3, 8, 8), warmup=1, repeats=3, threads=1, progress=lambda d, t: calls.append((d, t))
    )
    assert isinstance(stats, LatencyStats)
    assert stats.repeats == 3
    assert 0 < stats.min_ms <= stats.median_ms <= stats.max_ms
    assert stats.min_ms <= stats.mean_ms <= stats.max_ms
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert conv.training, "measure_latency must restore train mode"
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7, 8])
def test_round_orders_balance_positions_and_predecessors(n: int) -> None:
    orders = round_orders(n)
    assert len(orders) == (n if n % 2 == 0 else 2 * n)
    assert all(sorted(o) == list(range(n)) for o in orders)  # every round calls each callable once
    positions = Counter((x, i) for o in orders for i, x in enumerate(o))
    assert len(positions) == n * n and len(set(positions.values())) == 1
    # every callable runs right after every other one, and equally often (a rotation keeps one predecessor)
    follows = Counter((a, b) for o in orders for a, b in pairwise(o))
    assert len(follows) == n * (n - 1) and len(set(follows.values())) == 1


def test_interleaved_varies_the_predecessor() -> None:
    calls: list[str] = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    times = interleaved(fns, 6, warmup=0)
    assert [len(t) for t in times.values()] == [6, 6, 6]
    rounds = [calls[i : i + 3] for i in range(0, 18, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    before_a = {r[r.index("a") - 1] for r in rounds if r.index("a") > 0}
    assert before_a == {"b", "c"}
    with pytest.raises(ValueError, match="at least one"):
        round_orders(0)


def test_interleaved_settles_each_callable_before_timing_it() -> None:
    calls: list[str] = []
    times = interleaved({k: (lambda k=k: calls.append(k)) for k in "ab"}, 4, warmup=0, settle=2)
    assert [len(t) for t in times.values()] == [4, 4]
    # every timed call comes right after two untimed calls of the same callable: runs of 3
    assert calls == ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3 + ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3
    with pytest.raises(ValueError, match="settle must be an int >= 0"):
        interleaved({"a": lambda: None}, 1, settle=-1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"repeats": 0}, "repeats must be an int >= 1"), ({"warmup": -1}, "warmup"), ({"threads": 0}, "threads")],
)
def test_measure_latency_rejects_bad_counts(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        measure_latency(nn.Identity(), torch.zeros(1), **kwargs)


def test_bench_neck_small_fpn() -> None:
    r = bench_neck("fpn", in_specs=SMALL, image_size=(64, 96), options={"width": 32}, warmup=0, repeats=2)
    assert isinstance(r, BenchResult)
    assert r.params == count_params(build_neck("fpn", SMALL, width=32))
    assert r.flops > 0 and r.gflops == r.flops / 1e9 and r.macs == r.flops // 2
    assert r.latency.repeats == 2 and r.latency.median_ms > 0
    assert r.out_shapes == tuple((1, 32, math.ceil(64 / s), math.ceil(96 / s)) for s in (8, 16, 32, 64))
    assert [s.stride for s in r.out_specs] == [8, 16, 32, 64]
    assert r.image_size == (64, 96) and r.batch == 1 and r.threads >= 1
    data = json.loads(json.dumps(r.to_dict()))
    assert data["params"] == r.params and data["latency"]["repeats"] == 2
    row = r.to_row()
    assert row["out_shapes"].startswith("1x32x8x12") and all(isinstance(v, (str, int, float)) for v in row.values())


def test_bench_neck_batch_scales_flops() -> None:
    one = bench_neck("yolo_pafpn", image_size=64, warmup=0, repeats=1)
    two = bench_neck("yolo_pafpn", image_size=64, batch=2, warmup=0, repeats=1)
    assert two.flops == 2 * one.flops
    assert two.out_shapes[0][0] == 2


def test_default_specs_and_sizes() -> None:
    assert [s.channels for s in default_in_specs("fpn")] == [512, 1024, 2048]
    assert [s.channels for s in default_in_specs("pafpn")] == [512, 1024, 2048]
    assert [s.stride for s in default_in_specs("fpn", {"levels": [2, 6]})] == [4, 8, 16, 32]
    assert [s.channels for s in default_in_specs("bifpn")] == [40, 112, 320]
    assert [s.channels for s in default_in_specs("yolo_pafpn")] == [64, 128, 256]
    assert [s.channels for s in default_in_specs("yolo_pafpn", {"preset": "m"})] == [192, 384, 576]
    assert [s.channels for s in default_in_specs("yolo11_pafpn")] == [128, 128, 256]  # YOLO11n's P3-P5
    assert [s.channels for s in default_in_specs("yolo11_pafpn", {"preset": "x"})] == [768, 768, 768]
    assert default_image_size("fpn") == (640, 640)
    assert default_image_size("bifpn") == (512, 512)
    assert default_image_size("bifpn", {"preset": "d7"}) == (1536, 1536)
    for name in list_necks():  # every registered neck builds on its defaults
        build_neck(name, default_in_specs(name))


def test_bench_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown neck 'fpm'.*Did you mean 'fpn'"):
        bench_neck("fpm", repeats=1)
    with pytest.raises(ValueError, match="image_size must be"):
        bench_neck("fpn", in_specs=SMALL, image_size=(0, 64), repeats=1)
    with pytest.raises(ValueError, match="batch must be"):
        bench_neck("fpn", in_specs=SMALL, image_size=64, batch=0, repeats=1)
