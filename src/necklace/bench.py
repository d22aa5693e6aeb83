"""Measure necks: parameters, FLOPs and latency, returned as frozen dataclasses (nothing is printed here).

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode`, which counts convolutions and matrix
multiplies as ``2 x MACs`` and ignores element-wise ops, pooling and resizing (so a fused sum or a max-pool
costs 0). Latency is wall-clock time of ``module(inputs)`` in ``eval()`` mode under ``torch.no_grad()``.

Example:
    >>> r = bench_neck("fpn", image_size=(64, 64), options={"width": 16}, warmup=0, repeats=1)
    >>> r.params > 0 and r.flops > 0 and r.latency.median_ms > 0
    True
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from necklace.registry import RESNET50_C3_C5 as RESNET50_C3_C5  # (re-exported: peers, benchmarks)
from necklace.registry import build_neck, neck_info
from necklace.spec import FeatureSpec, as_feature_specs, validate_in_specs

__all__ = [
    "BENCH_MODES",
    "BenchResult",
    "LatencyStats",
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

#: What :func:`bench_neck` can time: the neck as built (``eager``), deployed to a runtime of :func:`necklace.deploy`
#: (``deployed`` is the torch runtime; ``auto`` the fastest verified runtime), or traced (``torchscript``).
BENCH_MODES = ("eager", "deployed", "torchscript", "torch", "native", "onnxruntime", "openvino", "inductor", "auto")

#: ``progress(done, total)``: called with the number of timed repeats done so far.
Progress = Callable[[int, int], None]

#: Backbone feature widths used when no ``in_specs`` are given (strides 8, 16, 32); the registry entries carry
#: each neck's own default (:meth:`necklace.registry.NeckInfo.in_specs_for`).
EFFICIENTNET_B0_C3_C5 = (FeatureSpec(40, 8), FeatureSpec(112, 16), FeatureSpec(320, 32))
YOLOV8N_C3_C5 = (FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32))
DEFAULT_IMAGE_SIZE = 640


@dataclass(frozen=True)
class LatencyStats:
    """Wall-clock latency of one forward pass, in milliseconds, over ``repeats`` timed runs.

    Example:
        >>> s = LatencyStats.from_seconds([0.003, 0.001, 0.002])
        >>> s.median_ms, s.min_ms, s.max_ms, s.repeats
        (2.0, 1.0, 3.0, 3)
    """

    median_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float
    repeats: int

    @classmethod
    def from_seconds(cls, times_s: Sequence[float]) -> LatencyStats:
        """Summarise per-run times given in seconds."""
        if not times_s:
            raise ValueError("LatencyStats needs at least one timing; run with repeats >= 1.")
        ms = [t * 1e3 for t in times_s]
        return cls(
            median_ms=statistics.median(ms),
            min_ms=min(ms),
            max_ms=max(ms),
            mean_ms=statistics.fmean(ms),
            repeats=len(ms),
        )

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict (JSON-ready)."""
        return {
            "median_ms": self.median_ms,
            "min_ms": self.min_ms,
            "max_ms": self.max_ms,
            "mean_ms": self.mean_ms,
            "repeats": self.repeats,
        }


@dataclass(frozen=True)
class BenchResult:
    """Everything :func:`bench_neck` measured for one neck, plus the settings it ran under.

    ``flops``/``macs`` are exact counts for one forward pass of the whole batch (``flops = 2 * macs``);
    ``gflops``/``gmacs`` are the same in units of 1e9. ``out_shapes`` are the shapes the neck returned.

    Example:
        >>> r = bench_neck("yolo_pafpn", image_size=(64, 96), warmup=0, repeats=1)
        >>> r.out_shapes
        ((1, 64, 8, 12), (1, 128, 4, 6), (1, 256, 2, 3))
        >>> r.gflops > 0, list(r.to_row())[:5]
        (True, ['name', 'options', 'in_specs', 'out_shapes', 'params'])
    """

    name: str
    options: dict[str, Any]
    in_specs: tuple[FeatureSpec, ...]
    out_specs: tuple[FeatureSpec, ...]
    out_shapes: tuple[tuple[int, ...], ...]
    params: int
    flops: int
    latency: LatencyStats
    image_size: tuple[int, int]
    batch: int
    threads: int
    device: str = "cpu"
    torch_version: str = field(default_factory=lambda: torch.__version__)
    #: what was timed: ``eager`` (the built neck), ``deployed`` (:func:`necklace.deploy`), ``inductor`` or
    #: ``torchscript`` (:func:`necklace.compile_model`)
    mode: str = "eager"
    #: seconds spent deploying / compiling before timing (0 for eager), reported apart from the latency
    prepare_s: float = 0.0

    @property
    def macs(self) -> int:
        """Multiply-accumulates (``flops // 2``)."""
        return self.flops // 2

    @property
    def gflops(self) -> float:
        """FLOPs in units of 1e9."""
        return self.flops / 1e9

    @property
    def gmacs(self) -> float:
        """MACs in units of 1e9."""
        return self.macs / 1e9

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (JSON-ready): settings, counts and latency statistics."""
        return {
            "name": self.name,
            "options": dict(self.options),
            "in_specs": [s.to_dict() for s in self.in_specs],
            "out_specs": [s.to_dict() for s in self.out_specs],
            "out_shapes": [list(s) for s in self.out_shapes],
            "params": self.params,
            "flops": self.flops,
            "macs": self.macs,
            "gflops": self.gflops,
            "gmacs": self.gmacs,
            "latency": self.latency.to_dict(),
            "image_size": list(self.image_size),
            "batch": self.batch,
            "threads": self.threads,
            "device": self.device,
            "torch_version": self.torch_version,
            "mode": self.mode,
            "prepare_s": self.prepare_s,
        }

    def to_row(self) -> dict[str, str | int | float]:
        """Flat dict of scalars (one CSV row); specs, shapes and options are compact strings."""
        return {
            "name": self.name,
            "options": ";".join(f"{k}={v}" for k, v in self.options.items()),
            "in_specs": " ".join(f"{s.channels}@{s.stride}" for s in self.in_specs),
            "out_shapes": " ".join("x".join(map(str, s)) for s in self.out_shapes),
            "params": self.params,
            "flops": self.flops,
            "macs": self.macs,
            "gflops": self.gflops,
            "median_ms": self.latency.median_ms,
            "min_ms": self.latency.min_ms,
            "max_ms": self.latency.max_ms,
            "mean_ms": self.latency.mean_ms,
            "repeats": self.latency.repeats,
            "image_h": self.image_size[0],
            "image_w": self.image_size[1],
            "batch": self.batch,
            "threads": self.threads,
            "device": self.device,
            "torch_version": self.torch_version,
            "mode": self.mode,
            "prepare_s": self.prepare_s,
        }


# ----------------------------------------------------------------------------------------------- counting
def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (shared parameters counted once).

    Example:
        >>> count_params(nn.Conv2d(3, 4, 3))  # 3*4*9 weights + 4 biases
        112
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _forward(module: nn.Module, inputs: Any) -> Any:
    return module(inputs)


def count_flops(module: nn.Module, inputs: Any) -> int:
    """FLOPs of one ``module(inputs)`` call as torch counts them: ``2 x MACs`` of convs and matmuls.

    ``inputs`` is passed as the single positional argument (a tensor, or a list of maps for a neck).
    Element-wise ops, pooling and interpolation are not counted. Runs under ``no_grad`` in the module's
    current train/eval mode. Convs count their nominal (direct) MACs, so GMAC/s compares algorithms on the same
    work (count a plain or torch-deployed model: a native-deployed one counts what its kernels run).

    Example:
        >>> conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        >>> count_flops(conv, torch.zeros(1, 8, 10, 12)) == 2 * 8 * 16 * 9 * 10 * 12
        True
    """
    return count_call_flops(lambda: _forward(module, inputs))


def count_call_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one ``fn()`` call under ``no_grad``, as :func:`count_flops` counts them (convs and matmuls).

    For callables that are not ``module(inputs)``, e.g. a peer library's neck called with its own input type.

    Example:
        >>> conv = nn.Conv2d(8, 16, 1, bias=False)
        >>> count_call_flops(lambda: conv(torch.zeros(1, 8, 4, 4))) == 2 * 8 * 16 * 4 * 4
        True
    """
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    return int(counter.get_total_flops())


def count_macs(module: nn.Module, inputs: Any) -> int:
    """Multiply-accumulates of one ``module(inputs)`` call: ``count_flops(...) // 2``."""
    return count_flops(module, inputs) // 2


# ----------------------------------------------------------------------------------------------- timing
@contextlib.contextmanager
def _num_threads(threads: int | None) -> Iterator[int]:
    previous = torch.get_num_threads()
    if threads is None:
        yield previous
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int (or None for torch's current {previous}), got {threads!r}.")
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)


def _device_of(module: nn.Module, inputs: Any) -> torch.device:
    for p in module.parameters():
        return p.device
    if isinstance(inputs, torch.Tensor):
        return inputs.device
    if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], torch.Tensor):
        return inputs[0].device
    return torch.device("cpu")


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return value


def measure_latency(
    module: nn.Module,
    inputs: Any,
    warmup: int = 2,
    repeats: int = 10,
    threads: int | None = None,
    progress: Progress | None = None,
) -> LatencyStats:
    """Time ``module(inputs)`` ``repeats`` times after ``warmup`` untimed runs, in eval mode under no_grad.

    ``threads`` sets ``torch.set_num_threads`` for the measurement only. On CUDA the device is synchronised
    around each run. The module's train/eval mode is restored afterwards. ``progress(done, repeats)`` is
    called before the first and after every timed run.

    Example:
        >>> s = measure_latency(nn.Conv2d(3, 8, 3), torch.zeros(1, 3, 16, 16), warmup=1, repeats=3, threads=1)
        >>> s.repeats, s.min_ms <= s.median_ms <= s.max_ms
        (3, True)
    """
    _check_count("warmup", warmup, 0)
    _check_count("repeats", repeats, 1)
    sync = _synchronizer(_device_of(module, inputs))
    was_training = getattr(module, "training", False)  # a frozen TorchScript module has no train/eval mode
    if was_training:
        module.eval()
    times: list[float] = []
    try:
        with _num_threads(threads), torch.no_grad():
            for _ in range(warmup):
                _forward(module, inputs)
            sync()
            if progress is not None:
                progress(0, repeats)
            for i in range(repeats):
                start = time.perf_counter()
                _forward(module, inputs)
                sync()
                times.append(time.perf_counter() - start)
                if progress is not None:
                    progress(i + 1, repeats)
    finally:
        if was_training:
            module.train(True)
    return LatencyStats.from_seconds(times)


def round_orders(n: int) -> list[list[int]]:
    """Call orders for :func:`interleaved`'s rounds: a balanced Latin square (Williams design) over ``n`` callables.

    Every order is a permutation of ``range(n)``; over one cycle of the orders (``n`` of them for even ``n``,
    ``2 n`` for odd ``n``) every callable is in every position equally often and **runs right after every other
    callable equally often**. A fixed cyclic order merely rotated from round to round keeps each callable's
    predecessor (``a, b, c`` -> ``b, c, a``: ``c`` always runs after ``b``), and the predecessor sets the cache
    state a call starts in: the maps and weights it left behind (measured here, YOLOv6-N RepPAN deployed: 2-3 %
    slower right after mmyolo's neck than right after itself), so a rotation biases every ratio by its
    neighbours.

    Example:
        >>> round_orders(4)
        [[0, 1, 3, 2], [1, 2, 0, 3], [2, 3, 1, 0], [3, 0, 2, 1]]
        >>> len(round_orders(3)), round_orders(1)
        (6, [[0]])
    """
    if n < 1:
        raise ValueError(f"round_orders needs at least one callable, got n={n}.")
    first, lo, hi = [0], 1, n - 1  # 0, 1, n-1, 2, n-2, ...: consecutive differences all distinct mod n
    while len(first) < n:
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    orders = [[(f + r) % n for f in first] for r in range(n)]
    if n % 2 and n > 1:  # odd n: the mirrored orders balance the predecessors
        orders += [list(reversed(o)) for o in orders]
    return orders


def minor_faults() -> int | None:
    """This process's minor page faults so far (``getrusage``), ``None`` where the platform has no count.

    A page fault is the kernel mapping (and zeroing) a fresh page: when the allocator has returned freed memory
    to the system, the next large allocation faults on every page it touches, a cost that depends on what ran
    before, not on the callable itself.

    Example:
        >>> n = minor_faults()
        >>> n is None or n >= 0
        True
    """
    try:
        import resource
    except ImportError:  # not Unix
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def interleaved(
    callables: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int = 2,
    progress: Progress | None = None,
    faults: dict[str, int] | None = None,
) -> dict[str, list[float]]:
    """Time every callable ``repeats`` times, interleaved; returns ``{name: [seconds per call, ...]}``.

    Each round calls every callable once, in the order :func:`round_orders` gives for that round: over a cycle
    of rounds each callable takes every position and follows every other callable equally often, so neither
    slow phases of a noisy machine nor the cache state a neighbour leaves behind favour one of them (pass a
    ``repeats`` that is a multiple of ``len(round_orders(len(callables)))`` for a whole number of cycles).
    ``warmup`` untimed rounds come first. The garbage collector runs once before the timed rounds and is
    paused during them (like ``timeit``), so a collection never lands inside a timed call.
    ``progress(done, repeats)`` is called before the first and after every timed round. A ``faults`` dict is
    filled with each callable's minor page faults over its timed calls (:func:`minor_faults`, counted outside
    the timed region; left empty where the platform has no count).

    Example:
        >>> calls = []
        >>> times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, warmup=0)
        >>> calls, [len(t) for t in times.values()]
        (['a', 'b', 'b', 'a', 'a', 'b'], [3, 3])
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    names = list(callables)
    fns = [callables[n] for n in names]
    for _ in range(warmup):
        for fn in fns:
            fn()
    orders = round_orders(len(fns)) if fns else [[]]
    times: dict[str, list[float]] = {n: [] for n in names}
    counts = faults if faults is not None and minor_faults() is not None else None
    if faults is not None:
        faults.clear()
    if counts is not None:
        counts.update(dict.fromkeys(names, 0))
    if progress is not None:
        progress(0, repeats)
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for i in range(repeats):
            for j in orders[i % len(orders)]:
                before = minor_faults() if counts is not None else None
                start = time.perf_counter()
                fns[j]()
                times[names[j]].append(time.perf_counter() - start)
                if counts is not None:
                    counts[names[j]] += cast(int, minor_faults()) - cast(int, before)
            if progress is not None:
                progress(i + 1, repeats)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def _quantile(values: Sequence[float], q: float) -> float:
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def stats_ms(times_s: Sequence[float]) -> dict[str, float | int]:
    """Median, min, max, mean and quartiles of per-call times given in seconds, in milliseconds.

    Example:
        >>> s = stats_ms([0.001, 0.002, 0.003, 0.004, 0.005])
        >>> s["median_ms"], s["p25_ms"], s["p75_ms"], s["repeats"]
        (3.0, 2.0, 4.0, 5)
    """
    ms = [t * 1e3 for t in times_s]
    return {
        "median_ms": statistics.median(ms),
        "min_ms": min(ms),
        "max_ms": max(ms),
        "mean_ms": statistics.fmean(ms),
        "p25_ms": _quantile(ms, 0.25),
        "p75_ms": _quantile(ms, 0.75),
        "repeats": len(ms),
    }


def ratio_stats(a_s: Sequence[float], b_s: Sequence[float]) -> dict[str, float | int]:
    """Per-round ratios ``a[i] / b[i]`` of two interleaved series: median (the reported ratio) and quartiles.

    The median of per-round ratios is more robust to drift of the machine's speed than the ratio of medians.

    Example:
        >>> r = ratio_stats([2.0, 4.0, 9.0], [1.0, 1.0, 3.0])
        >>> r["median"], r["p25"], r["p75"], r["n"]
        (3.0, 2.5, 3.5, 3)
    """
    if len(a_s) != len(b_s) or not a_s:
        raise ValueError(f"need two equally long, non-empty series; got {len(a_s)} and {len(b_s)}.")
    r = [a / b for a, b in zip(a_s, b_s, strict=True)]
    return {
        "median": statistics.median(r),
        "p25": _quantile(r, 0.25),
        "p75": _quantile(r, 0.75),
        "min": min(r),
        "max": max(r),
        "n": len(r),
    }


# ----------------------------------------------------------------------------------------------- defaults
def default_in_specs(name: str, options: Mapping[str, Any] | None = None) -> tuple[FeatureSpec, ...]:
    """Typical backbone ``in_specs`` for neck ``name`` (strides 8/16/32), honouring a ``preset`` option: the
    registry entry's default (:meth:`necklace.registry.NeckInfo.in_specs_for`).

    ``fpn``/``pafpn``: ResNet-50 C3-C5 (plus C2 = 256@4 when ``levels`` starts at 2); ``bifpn``: the
    EfficientNet-B0..B6 of EfficientDet D0..D7; ``yolo_pafpn``: the YOLOv8 backbone of the same preset (n:
    64/128/256); ``yolo11_pafpn``: the YOLO11 backbone (n: 128/128/256). Other registered necks get ResNet-50
    C3-C5.

    Example:
        >>> [s.channels for s in default_in_specs("bifpn", {"preset": "d3"})]
        [48, 136, 384]
        >>> [s.channels for s in default_in_specs("yolo_pafpn", {"preset": "s"})]
        [128, 256, 512]
        >>> [s.channels for s in default_in_specs("yolo11_pafpn", {"preset": "m"})]
        [512, 512, 512]
    """
    return neck_info(name).in_specs_for(options)


def default_image_size(name: str, options: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """Image size ``(H, W)`` to benchmark ``name`` at: the registry entry's (640, or a BiFPN preset's own size).

    Example:
        >>> default_image_size("fpn"), default_image_size("bifpn"), default_image_size("bifpn", {"preset": "d4"})
        ((640, 640), (512, 512), (1024, 1024))
    """
    return neck_info(name).image_size_for(options)


def _check_image_size(image_size: Sequence[int] | int) -> tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    if (
        not isinstance(image_size, Sequence)
        or len(image_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in image_size)
    ):
        raise ValueError(f"image_size must be (H, W) with two positive ints, e.g. (640, 640); got {image_size!r}.")
    return (int(image_size[0]), int(image_size[1]))


def random_features(
    in_specs: Sequence[FeatureSpec],
    image_size: tuple[int, int],
    batch: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[torch.Tensor]:
    """Random backbone maps for an ``H x W`` image: level ``i`` is ``(batch, C_i, ceil(H/s_i), ceil(W/s_i))``.

    Example:
        >>> [tuple(f.shape) for f in random_features([FeatureSpec(8, 8), FeatureSpec(16, 16)], (97, 131))]
        [(1, 8, 13, 17), (1, 16, 7, 9)]
    """
    gen = torch.Generator().manual_seed(seed)
    h, w = _check_image_size(image_size)
    return [torch.randn(batch, s.channels, *s.size_for(h, w), generator=gen).to(device) for s in in_specs]


def bench_neck(
    name: str,
    in_specs: Sequence[FeatureSpec | tuple[int, int]] | None = None,
    image_size: tuple[int, int] | int | None = None,
    batch: int = 1,
    options: Mapping[str, Any] | None = None,
    warmup: int = 2,
    repeats: int = 10,
    threads: int | None = None,
    progress: Progress | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    mode: str = "eager",
) -> BenchResult:
    """Build neck ``name`` with ``options`` and measure params, FLOPs and latency on random backbone maps.

    Defaults: ``in_specs`` from :func:`default_in_specs`, ``image_size`` from :func:`default_image_size`.
    Inputs are random maps of ``ceil(H / stride)`` per level; FLOPs are for the whole batch.

    ``mode`` picks what is timed (one of :data:`BENCH_MODES`): ``eager`` the neck as built, ``deployed``
    :func:`necklace.deploy` of it (BN folded, re-parameterised, memory format timed), ``inductor`` /
    ``torchscript`` :func:`necklace.compile_model`. Deploy/compile time is ``prepare_s``, not part of the latency.

    Example:
        >>> r = bench_neck("bifpn", in_specs=[(16, 8), (32, 16), (64, 32)], image_size=(64, 64),
        ...                options={"width": 16, "repeats": 1}, warmup=0, repeats=2)
        >>> [s.stride for s in r.out_specs], r.latency.repeats
        ([8, 16, 32, 64, 128], 2)
    """
    options = dict(options or {})
    specs = validate_in_specs(as_feature_specs(in_specs)) if in_specs is not None else default_in_specs(name, options)
    size = _check_image_size(image_size if image_size is not None else default_image_size(name, options))
    _check_count("batch", batch, 1)
    _check_count("warmup", warmup, 0)
    _check_count("repeats", repeats, 1)
    if mode not in BENCH_MODES:
        raise ValueError(f"unknown bench mode {mode!r}; choose one of {list(BENCH_MODES)}.")
    dev = torch.device(device)
    module = build_neck(name, specs, **options).to(dev).eval()
    feats = random_features(specs, size, batch=batch, seed=seed, device=dev)
    with torch.no_grad():
        outs = _forward(module, feats)
    out_shapes = tuple(tuple(int(d) for d in o.shape) for o in outs)
    out_specs = tuple(getattr(module, "out_specs", ()))
    flops = count_flops(module, feats)
    with _num_threads(threads) as used_threads:
        timed, prepare_s = _prepare(module, feats, mode)
        latency = measure_latency(timed, feats, warmup=warmup, repeats=repeats, progress=progress)
    return BenchResult(
        name=name,
        options=options,
        in_specs=tuple(specs),
        out_specs=out_specs,
        out_shapes=out_shapes,
        params=count_params(module),
        flops=flops,
        latency=latency,
        image_size=size,
        batch=batch,
        threads=used_threads,
        device=str(dev),
        mode=mode,
        prepare_s=prepare_s,
    )


def _prepare(module: nn.Module, feats: list[torch.Tensor], mode: str) -> tuple[Any, float]:
    """The callable to time for ``mode`` and the seconds it took to make it."""
    if mode == "eager":
        return module, 0.0
    start = time.perf_counter()
    if mode == "torchscript":
        from necklace.deploy.compiled import CompileReport, compile_model

        compiled = compile_model(module, feats, backend=mode)
        return compiled, CompileReport.of(compiled).compile_s
    from necklace.deploy import deploy

    return deploy(module, feats, runtime="torch" if mode == "deployed" else mode), time.perf_counter() - start


# ----------------------------------------------------------------------------------------------- memory
def peak_memory_bytes(fn: Callable[[], object]) -> dict[str, int]:
    """Peak bytes of tensors that one ``fn()`` allocates and holds at once in torch's CPU allocator.

    Read from ``torch.profiler`` (``profile_memory=True``) allocation/free events, matched by address: only
    blocks allocated during this call count, so the number is the peak of *new* tensor memory (activations
    kept for backward, temporaries, gradients, outputs) on top of whatever existed before (parameters, inputs;
    a train step that starts by setting ``.grad`` to None frees the old gradients first, so this is its peak
    beyond parameters + inputs). Memory that oneDNN or the Python heap allocate outside torch's allocator is
    not seen. ``retained_bytes``: what the call left allocated (e.g. its outputs, new ``.grad`` tensors);
    ``events``: how many allocation events were read (0 means nothing was measured).

    Example:
        >>> peak_memory_bytes(lambda: torch.zeros(1024, 256))["peak_bytes"]  # 1 MiB of float32
        1048576
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    fd, tmp = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(tmp)
        trace = json.loads(Path(tmp).read_text())
    finally:
        os.unlink(tmp)
    events = [
        e["args"]
        for e in trace.get("traceEvents", [])
        if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0  # 0: CPU
    ]
    events.sort(key=lambda a: a.get("Ev Idx", 0))
    live: dict[int, int] = {}
    current = peak = 0
    for a in events:
        addr, nbytes = int(a["Addr"]), int(a["Bytes"])
        if nbytes > 0:
            live[addr] = nbytes
            current += nbytes
            peak = max(peak, current)
        elif addr in live:  # a free of a block allocated before this call is not ours
            current -= live.pop(addr)
    return {"peak_bytes": peak, "retained_bytes": current, "events": len(events)}


def train_step(
    module: nn.Module,
    feats: Sequence[torch.Tensor],
    call: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]] | None = None,
) -> Callable[[], None]:
    """A callable running one training step of a neck: grads set to None, ``module(feats)`` (or ``call(feats)``),
    backward of ``sum(out.sum())``. Inputs that require grad get gradients too, as backbone maps do.

    Example:
        >>> neck = build_neck("fpn", [(8, 8), (16, 16)], width=8)
        >>> feats = [torch.randn(1, 8, 8, 8, requires_grad=True), torch.randn(1, 16, 4, 4, requires_grad=True)]
        >>> train_step(neck, feats)()
        >>> feats[0].grad.shape
        torch.Size([1, 8, 8, 8])
    """
    params = [p for p in module.parameters() if p.requires_grad]

    def step() -> None:
        for p in params:
            p.grad = None
        for f in feats:
            f.grad = None
        outs = module(list(feats)) if call is None else call(list(feats))
        loss = outs[0].sum()
        for o in outs[1:]:
            loss = loss + o.sum()
        loss.backward()

    return step
