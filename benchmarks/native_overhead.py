"""How much of a native neck's forward is Python: ``necklace.deploy(neck, runtime="native")`` timed as it runs, then
with its compute stubbed out (the C library's kernels replaced by functions that return at once, torch's convs by an
``empty`` of the output's shape), which leaves what the Python side costs: routing, checks, allocations, ctypes
calls. Torch ops outside ``nn.Conv2d`` modules still run (input layout conversions, YOLOv6's folded transposed-conv
upsample: ``F.conv2d`` and an add), so for necks that have them the "Python" time is an upper bound (YOLOv6-N: about
1.3 of its 2.1 ms are those ops). Batch 1, float32, ``--threads`` threads, median of ``--repeats`` rounds of
``--number`` forwards each.

The stubbed forward computes nothing (its outputs are garbage); it is timed only. The real forward is checked
against the plain neck first.

Run (from the repository root)::

    .venv/bin/python benchmarks/native_overhead.py
    .venv/bin/python benchmarks/native_overhead.py --configs yolo11n --repeats 5

Writes ``<out>/native_overhead.json`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from runtimes import CONFIGS

import necklace
from necklace.bench import random_features
from necklace.deploy.native import loader

#: the library's entry points a forward calls (each stubbed to return 0 at once)
KERNELS = ("nk_gemm", "nk_wino_conv", "nk_act")


class _Stubbed:
    """The loaded library with its kernels replaced by no-ops (every other attribute passed through)."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib

    def __getattr__(self, name: str) -> Any:
        if name in KERNELS:
            return lambda *args: 0
        return getattr(self._lib, name)


@contextmanager
def stubbed_compute() -> Iterator[None]:
    """Inside: the native kernels and torch's conv forwards do no work (outputs of the right shape, uninitialised)."""
    real_lib, real_conv = loader._state["lib"], nn.Conv2d._conv_forward

    def empty_conv(self: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        size = ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
        fmt = torch.channels_last if x.stride(1) == 1 and x.shape[1] > 1 else torch.contiguous_format
        return torch.empty((n, self.out_channels, *size), dtype=x.dtype, memory_format=fmt)

    loader._state["lib"] = _Stubbed(real_lib)
    nn.Conv2d._conv_forward = empty_conv  # type: ignore[method-assign]
    try:
        yield
    finally:
        loader._state["lib"] = real_lib
        nn.Conv2d._conv_forward = real_conv  # type: ignore[method-assign]


def _median_ms(call: Callable[[], object], repeats: int, number: int) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            call()
        times.append((time.perf_counter() - start) / number * 1e3)
    return statistics.median(times)


def run_config(name: str, repeats: int, number: int) -> dict[str, Any]:
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    neck = necklace.build_neck(cfg.neck, cfg.in_specs, **cfg.options).eval()
    feats = random_features(cfg.in_specs, cfg.image_size)
    fast = necklace.deploy(neck, runtime="native", example_inputs=feats)
    with torch.inference_mode():
        ref, out = neck(feats), fast(feats)
        err = max(((o - r).abs().max() / r.abs().max()).item() for o, r in zip(out, ref, strict=True))
        real_ms = _median_ms(lambda: fast(feats), repeats, number)
        with stubbed_compute():
            python_ms = _median_ms(lambda: fast(feats), repeats, number)
    return {
        "config": name,
        "forward_ms": real_ms,
        "python_ms": python_ms,
        "python_share": python_ms / real_ms,
        "max_rel_diff": err,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="yolov8n,yolo11n,yolov6n", help=f"comma-separated, of {sorted(CONFIGS)}")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--number", type=int, default=20, help="forwards per timed round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    names = [c for c in args.configs.split(",") if c]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)}")
    report = loader.build()
    if not report.loaded:
        print(f"the native library is not loaded: {report.error}", file=sys.stderr)
        return 1
    results = []
    with common.threads(args.threads):
        for name in names:
            res = run_config(name, args.repeats, args.number)
            results.append(res)
            print(
                f"{name}: forward {res['forward_ms']:.2f} ms, of which Python {res['python_ms']:.2f} ms "
                f"({100 * res['python_share']:.0f} %); max rel diff {res['max_rel_diff']:.1e}"
            )
    env = {**common.environment(args.threads), "repeats": args.repeats, "number": args.number}
    common.atomic_write_json(Path(args.out) / "native_overhead.json", {"environment": env, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
