"""Timing: latency of one callable, interleaved series of several (balanced round orders), and their statistics."""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from necklace.bench.counting import _forward

#: ``progress(done, total)``: called with the number of timed repeats done so far.
Progress = Callable[[int, int], None]


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
    settle: int = 0,
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
    the timed region; left empty where the platform has no count). ``settle`` untimed calls of the same callable
    come right before each timed one: use it when the callables run on different thread pools (ONNX Runtime,
    OpenVINO, a native library's OpenMP, torch's), whose workers keep spinning for a while after a call and take
    the cores from the next callable (measured: torch's YOLOv8n neck right after an ONNX Runtime call took
    2-3x its time alone); a real deployment runs one runtime, which ``settle=1`` reproduces.

    Example:
        >>> calls = []
        >>> times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, warmup=0)
        >>> calls, [len(t) for t in times.values()]
        (['a', 'b', 'b', 'a', 'a', 'b'], [3, 3])
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    if isinstance(settle, bool) or not isinstance(settle, int) or settle < 0:
        raise ValueError(f"settle must be an int >= 0 (untimed calls before each timed one), got {settle!r}.")
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
                for _ in range(settle):
                    fns[j]()
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
