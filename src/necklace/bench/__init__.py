"""Measure necks: parameters, FLOPs and latency, returned as frozen dataclasses (nothing is printed here).

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode`, which counts convolutions and matrix
multiplies as ``2 x MACs`` and ignores element-wise ops, pooling and resizing (so a fused sum or a max-pool
costs 0). Latency is wall-clock time of ``module(inputs)`` in ``eval()`` mode under ``torch.no_grad()``.

Example:
    >>> r = bench_neck("fpn", image_size=(64, 64), options={"width": 16}, warmup=0, repeats=1)
    >>> r.params > 0 and r.flops > 0 and r.latency.median_ms > 0
    True
"""

from necklace.bench.counting import count_call_flops, count_flops, count_macs, count_params
from necklace.bench.memory import peak_memory_bytes, train_step
from necklace.bench.neck import (
    BENCH_MODES,
    DEFAULT_IMAGE_SIZE,
    EFFICIENTNET_B0_C3_C5,
    RESNET50_C3_C5,
    YOLOV8N_C3_C5,
    BenchResult,
    bench_neck,
    default_image_size,
    default_in_specs,
    random_features,
)
from necklace.bench.timing import (
    LatencyStats,
    Progress,
    interleaved,
    measure_latency,
    minor_faults,
    ratio_stats,
    round_orders,
    stats_ms,
)

__all__ = [
    "BENCH_MODES",
    "DEFAULT_IMAGE_SIZE",
    "EFFICIENTNET_B0_C3_C5",
    "RESNET50_C3_C5",
    "YOLOV8N_C3_C5",
    "BenchResult",
    "LatencyStats",
    "Progress",
    "bench_neck",
    "count_call_flops",
    "count_flops",
    "count_macs",
    "count_params",
    "default_image_size",
    "default_in_specs",
    "interleaved",
    "measure_latency",
    "minor_faults",
    "peak_memory_bytes",
    "random_features",
    "ratio_stats",
    "round_orders",
    "stats_ms",
    "train_step",
]
