"""Winograd F(4x4, 3x3) against the direct conv, over channel counts and map sizes, in one run.

For every (channels, side) cell: a ``channels -> channels`` 3x3 stride-1 conv with bias on
``1 x channels x side x side``, timed interleaved as torch's direct conv (``F.conv2d``, mkldnn) and as
:func:`necklace.deploy.native.winograd.winograd_conv3x3` (``--path torch``) or
:func:`necklace.deploy.native.winograd.winograd_conv3x3_native` (``--path native``: the transforms in C) (float32, batch
1, ``--threads``, ``no_grad``). On channels_last maps the direct conv is also timed the way a deployed necklace
neck runs it otherwise: oneDNN's conv with a weight packed once (``torch.ops.mkldnn._convolution_pointwise``).
Reports the median of the per-round ratios ``winograd / direct`` (lower is better; for channels_last against the
faster of the two direct forms), the error of both against a float64 conv (max |err| / max |ref|), and whether
:func:`winograd_pays` picks Winograd for the cell, so the thresholds in ``necklace/deploy/native/winograd.py`` can be
checked against the measurement.

Run (from the repository root)::

    .venv/bin/python benchmarks/winograd.py --repeats 12
    .venv/bin/python benchmarks/winograd.py --path native --channels 16,24,32,48,64,96,128,256 \
        --sides 8,10,14,20,28,40,80,160 --markdown-section winograd_native

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
from necklace.deploy.native import loader as native
from necklace.deploy.native.cgemm import pack_panels
from necklace.deploy.native.winograd import (
    _AT,
    _input_matrix,
    _kron,
    winograd_conv3x3,
    winograd_conv3x3_native,
    winograd_filter,
    winograd_pays,
)


def _packed_direct(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> Any:
    """oneDNN's conv with the weight packed once for ``x``'s shape (the fastest direct form oneDNN has), or
    ``None`` where this torch build has no such op."""
    if not hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        return None
    packed = torch._C._nn.mkldnn_reorder_conv2d_weight(  # type: ignore[call-arg]
        w.contiguous().to_mkldnn(), [1, 1], [1, 1], [1, 1], 1, list(x.shape)
    )
    return lambda: torch.ops.mkldnn._convolution_pointwise(x, packed, b, [1, 1], [1, 1], [1, 1], 1, "none", [], "")


def run_cell(
    channels: int, side: int, repeats: int, warmup: int, channels_last: bool = False, path: str = "torch"
) -> dict[str, Any]:
    g = torch.Generator().manual_seed(channels * 1000 + side)
    x = torch.randn(1, channels, side, side, generator=g)
    w = torch.randn(channels, channels, 3, 3, generator=g) * (2.0 / (9 * channels)) ** 0.5
    b = torch.randn(channels, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        w = w.contiguous(memory_format=torch.channels_last)
    u, kin, at = winograd_filter(w), _input_matrix(w.dtype, w.device), _kron(_AT, w.dtype, w.device)
    ut = u.transpose(1, 2).contiguous()
    with torch.no_grad():
        ref = F.conv2d(x.double(), w.double(), b.double(), padding=1)
        scale = ref.abs().max().item()
        if path == "native":
            pk = pack_panels(u)  # (as WinogradConv2d caches it)
            wino_call = lambda: winograd_conv3x3_native(x, ut, b, packed=pk)  # noqa: E731
        else:
            wino_call = lambda: winograd_conv3x3(x, u, b, kin, at)  # noqa: E731
        direct, wino = F.conv2d(x, w, b, padding=1), wino_call()
        calls = {"direct": lambda: F.conv2d(x, w, b, padding=1), "winograd": wino_call}
        packed = _packed_direct(x, w, b) if channels_last else None
        if packed is not None:
            calls["packed"] = packed
        times = interleaved(calls, repeats, warmup)
    r = ratio_stats(times["winograd"], times["direct"])
    best = "direct"
    if "packed" in times:
        r_packed = ratio_stats(times["winograd"], times["packed"])
        if r_packed["median"] > r["median"]:  # the faster direct form sets the bar
            r, best = r_packed, "packed"
    return {
        "channels": channels,
        "side": side,
        "channels_last": channels_last,
        "path": path,
        "direct_ms": stats_ms(times["direct"])["median_ms"],
        "packed_ms": stats_ms(times["packed"])["median_ms"] if "packed" in times else None,
        "winograd_ms": stats_ms(times["winograd"])["median_ms"],
        "ratio": r,
        "ratio_against": best,
        "direct_rel_err": (direct.double() - ref).abs().max().item() / scale,
        "winograd_rel_err": (wino.double() - ref).abs().max().item() / scale,
        "same_layout": wino.is_contiguous(memory_format=torch.channels_last) == channels_last,
        "picked": winograd_pays(channels, channels, side, side, channels_last, native=path == "native"),
    }


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", default="64,96,128,192,256,512")
    parser.add_argument("--sides", default="10,14,16,20,28,40,80,160")
    parser.add_argument("--layouts", default="nchw,channels_last", help="comma list of nchw, channels_last")
    parser.add_argument("--path", choices=("torch", "native"), default="torch", help="which Winograd to time")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    common.add_malloc_arg(parser)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--markdown", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    parser.add_argument("--markdown-section", default="", help="RESULTS.md section (default: winograd[_native])")
    args = parser.parse_args(argv)
    if args.path == "native" and not native.build().loaded:
        parser.error(f"--path native: the native library is not available ({native.status().error})")
    env = common.environment(args.threads)
    env["allocator"] = common.apply_malloc(args.malloc)
    layouts = [v.strip() for v in args.layouts.split(",") if v.strip()]
    if not layouts or any(v not in ("nchw", "channels_last") for v in layouts):
        parser.error(f"--layouts takes nchw and/or channels_last, got {args.layouts!r}")
    cells = [(c, s, cl == "channels_last") for cl in layouts for c in _ints(args.channels) for s in _ints(args.sides)]
    results = []
    with common.threads(args.threads):
        for i, (c, s, cl) in enumerate(cells):
            r = run_cell(c, s, args.repeats, args.warmup, cl, args.path)
            results.append(r)
            print(
                f"[{i + 1}/{len(cells)}] C={c:4d} side={s:4d}{' cl' if cl else '   '}  direct {r['direct_ms']:8.2f} ms"
                f"  winograd {r['winograd_ms']:8.2f} ms  ratio {r['ratio']['median']:.3f}"
                f"  err {r['winograd_rel_err']:.1e} (direct {r['direct_rel_err']:.1e})  picked {r['picked']}",
                flush=True,
            )
    stem = "winograd" if args.path == "torch" else "winograd_native"
    section = args.markdown_section or stem
    env["native"] = native.status().to_dict() if args.path == "native" else None
    common.atomic_write_json(Path(args.out) / f"{stem}.json", {"environment": env, "results": results})
    sides = _ints(args.sides)
    cpu = env["cpu"].get("model", "") if isinstance(env.get("cpu"), dict) else str(env.get("cpu", ""))
    what = "the transforms in C (`winograd_conv3x3_native`)" if args.path == "native" else "pure torch"
    lines = [
        f"## Winograd F(4x4, 3x3), {what}, vs direct 3x3 conv (`benchmarks/winograd.py --path {args.path}`)",
        "",
        f"{env.get('date_utc', '')}, {cpu}, {args.threads} threads, float32, batch 1, C -> C "
        f"channels with bias, malloc {env.get('allocator', {}).get('mode', 'default')}. "
        "Cell: median of per-round ratios winograd / direct (lower is better; channels_last: against the faster of "
        "`F.conv2d` and oneDNN's conv with a pre-packed weight); **bold** where `winograd_pays` picks Winograd.",
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
    common.update_markdown_section(args.markdown, section, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
