"""The native GEMM (``necklace.deploy.native.cgemm.gemm_into``) against torch on the 1x1 convs of the YOLO necks.

For every case, a 1x1 conv with bias and SiLU over one or two parts (the concatenation a C2f head reads, never
built), channels_last pixel matrices ``(pixels, channels)``, float32, ``--threads``: timed interleaved as torch runs
it (``addmm`` of the first part with the bias, ``addmm_`` of the others, then ``silu_``) and as one call of the
native kernel with the bias and SiLU fused. Reports the median ms of each, the median of the per-round ratios
``native / torch`` and the native GFLOP/s, and checks both give the same values (max |diff| / max |ref|).

Run (from the repository root)::

    .venv/bin/python benchmarks/native_gemm.py --repeats 50

Writes ``<out>/native_gemm.json`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from necklace.bench import interleaved, ratio_stats, stats_ms
from necklace.deploy.native import loader as native
from necklace.deploy.native.cgemm import gemm_into, pack_panels

#: (pixels, input channels of each part, output channels): the heads and merges of YOLOv8n / YOLO11n at 640
CASES: tuple[tuple[int, tuple[int, ...], int], ...] = (
    (1600, (128, 64), 128),
    (6400, (64, 32), 64),
    (400, (256, 128), 256),
    (1600, (192,), 128),
    (6400, (96,), 64),
    (400, (384,), 256),
)


def run_case(m: int, ks: tuple[int, ...], n: int, repeats: int, warmup: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(m + n)
    parts = [torch.randn(m, k, generator=g) for k in ks]
    w, b = torch.randn(n, sum(ks), generator=g) / sum(ks) ** 0.5, torch.randn(n, generator=g)
    starts = [sum(ks[:i]) for i in range(len(ks))]
    weights = [w[:, s : s + k].t() for s, k in zip(starts, ks, strict=True)]
    packed, out = pack_panels(w), torch.empty(m, n)

    def torch_call() -> torch.Tensor:
        y = torch.addmm(b, parts[0], weights[0])
        for p, wt in zip(parts[1:], weights[1:], strict=True):
            y.addmm_(p, wt)
        return F.silu(y, inplace=True)

    def native_call() -> torch.Tensor:
        return gemm_into(out, parts, packed, b, act="swish")

    with torch.no_grad():
        ref = torch_call().clone()
        err = ((native_call() - ref).abs().max() / ref.abs().max()).item()
        times = interleaved({"torch": torch_call, "native": native_call}, repeats, warmup)
    r = ratio_stats(times["native"], times["torch"])
    native_ms = stats_ms(times["native"])["median_ms"]
    return {
        "pixels": m,
        "parts": list(ks),
        "out_channels": n,
        "torch": stats_ms(times["torch"]),
        "native": stats_ms(times["native"]),
        "ratio": r,
        "native_gflops": 2 * m * sum(ks) * n / (native_ms * 1e6),
        "max_rel_diff": err,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    common.add_malloc_arg(parser)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    malloc = common.apply_malloc(args.malloc)
    report = native.build()
    if not report.loaded:
        print(f"the native library is not loaded: {report.error}", file=sys.stderr)
        return 1
    results = []
    with common.threads(args.threads):
        for m, ks, n in CASES:
            res = run_case(m, ks, n, args.repeats, args.warmup)
            results.append(res)
            print(
                f"{m:5d} x {'+'.join(map(str, ks)):>8} -> {n:3d}: torch {res['torch']['median_ms']:.3f} ms, native "
                f"{res['native']['median_ms']:.3f} ms, native / torch {res['ratio']['median']:.3f} "
                f"[{res['ratio']['p25']:.3f}-{res['ratio']['p75']:.3f}], {res['native_gflops']:.0f} GFLOP/s, "
                f"max rel diff {res['max_rel_diff']:.1e}"
            )
    env = {**common.environment(args.threads), "malloc": malloc, "repeats": args.repeats}
    common.atomic_write_json(Path(args.out) / "native_gemm.json", {"environment": env, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
