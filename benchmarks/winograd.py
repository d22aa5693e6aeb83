"""Winograd F(4x4, 3x3) against the direct conv, over channel counts and map sizes, in one run.

For every (channels, side) cell: a ``channels -> channels`` 3x3 stride-1 conv with bias on
``1 x channels x side x side``, timed interleaved as torch's direct conv (``F.conv2d``, mkldnn) and as
:func:`necklace.layers.winograd.winograd_conv3x3` (float32, batch 1, ``--threads``, ``no_grad``). Reports the
median of the per-round ratios ``winograd / direct`` (lower is better), the error of both against a float64
conv (max |err| / max |ref|), and whether :func:`winograd_pays` picks Winograd for the cell, so the threshold
in ``necklace/layers/winograd.py`` can be checked against the measurement.

Run (from the repository root)::

    .venv/bin/python benchmarks/winograd.py --repeats 12

Writes ``<out>/winograd.json`` and the ``winograd`` section of ``benchmarks/RESULTS.md``.
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
from necklace.layers.winograd import _AT, _input_matrix, _kron, winograd_conv3x3, winograd_filter, winograd_pays


def run_cell(channels: int, side: int, repeats: int, warmup: int, channels_last: bool = False) -> dict[str, Any]:
    g = torch.Generator().manual_seed(channels * 1000 + side)
    x = torch.randn(1, channels, side, side, generator=g)
    w = torch.randn(channels, channels, 3, 3, generator=g) * (2.0 / (9 * channels)) ** 0.5
    b = torch.randn(channels, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        w = w.contiguous(memory_format=torch.channels_last)
    u, kin, at = winograd_filter(w), _input_matrix(w.dtype, w.device), _kron(_AT, w.dtype, w.device)
    with torch.no_grad():
        ref = F.conv2d(x.double(), w.double(), b.double(), padding=1)
        scale = ref.abs().max().item()
        direct, wino = F.conv2d(x, w, b, padding=1), winograd_conv3x3(x, u, b, kin, at)
        times = interleaved(
            {
                "direct": lambda: F.conv2d(x, w, b, padding=1),
                "winograd": lambda: winograd_conv3x3(x, u, b, kin, at),
            },
            repeats,
            warmup,
        )
    r = ratio_stats(times["winograd"], times["direct"])
    return {
        "channels": channels,
        "side": side,
        "channels_last": channels_last,
        "direct_ms": stats_ms(times["direct"])["median_ms"],
        "winograd_ms": stats_ms(times["winograd"])["median_ms"],
        "ratio": r,
        "direct_rel_err": (direct.double() - ref).abs().max().item() / scale,
        "winograd_rel_err": (wino.double() - ref).abs().max().item() / scale,
        "same_layout": wino.is_contiguous(memory_format=torch.channels_last) == channels_last,
        "picked": winograd_pays(channels, channels, side, side, channels_last),
    }


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", default="64,96,128,192,256,512")
    parser.add_argument("--sides", default="10,14,16,20,28,40,80,160")
    parser.add_argument("--layouts", default="nchw,channels_last", help="comma list of nchw, channels_last")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    common.add_malloc_arg(parser)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--markdown", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    args = parser.parse_args(argv)
    env = common.environment(args.threads)
    env["allocator"] = common.apply_malloc(args.malloc)
    layouts = [v.strip() for v in args.layouts.split(",") if v.strip()]
    if not layouts or any(v not in ("nchw", "channels_last") for v in layouts):
        parser.error(f"--layouts takes nchw and/or channels_last, got {args.layouts!r}")
    cells = [(c, s, cl == "channels_last") for cl in layouts for c in _ints(args.channels) for s in _ints(args.sides)]
    results = []
    with common.threads(args.threads):
        for i, (c, s, cl) in enumerate(cells):
            r = run_cell(c, s, args.repeats, args.warmup, cl)
            results.append(r)
            print(
                f"[{i + 1}/{len(cells)}] C={c:4d} side={s:4d}{' cl' if cl else '   '}  direct {r['direct_ms']:8.2f} ms"
                f"  winograd {r['winograd_ms']:8.2f} ms  ratio {r['ratio']['median']:.3f}"
                f"  err {r['winograd_rel_err']:.1e} (direct {r['direct_rel_err']:.1e})  picked {r['picked']}",
                flush=True,
            )
    common.atomic_write_json(Path(args.out) / "winograd.json", {"environment": env, "results": results})
    sides = _ints(args.sides)
    lines = [
        "## Winograd F(4x4, 3x3) vs direct 3x3 conv (`benchmarks/winograd.py`)",
        "",
        f"{env.get('date_utc', '')}, {args.threads} threads, float32, batch 1, C -> C channels with bias, malloc "
        f"{env.get('allocator', {}).get('mode', 'default')}. "
        "Cell: median of per-round ratios winograd / direct (lower is better); "
        "**bold** where `winograd_pays` picks Winograd.",
    ]
    for cl in (False, True):
        if not any(r["channels_last"] == cl for r in results):
            continue
        lines += [
            "",
            f"{'channels_last' if cl else 'NCHW'} maps:",
            "",
            "| C \\ side | " + " | ".join(str(s) for s in sides) + " |",
            "|---" * (len(sides) + 1) + "|",
        ]
        for c in _ints(args.channels):
            row = []
            for s in sides:
                r = next(r for r in results if r["channels"] == c and r["side"] == s and r["channels_last"] == cl)
                v = f"{r['ratio']['median']:.2f}"
                row.append(f"**{v}**" if r["picked"] else v)
            lines.append(f"| {c} | " + " | ".join(row) + " |")
    errs = [r["winograd_rel_err"] for r in results]
    derrs = [r["direct_rel_err"] for r in results]
    lines += [
        "",
        f"Error vs a float64 conv (max |err| / max |ref|): Winograd {min(errs):.1e}..{max(errs):.1e}, "
        f"direct {min(derrs):.1e}..{max(derrs):.1e}.",
    ]
    common.update_markdown_section(args.markdown, "winograd", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
