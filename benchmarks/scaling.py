"""Scaling of the standard necks: latency and peak memory against input size and batch size.

For every neck (standard configuration, random weights, ``eval()`` + ``no_grad``, float32, ``--threads``
threads) two sweeps are measured:

- size sweep: square images of ``--sizes`` pixels a side (default 320..1280 in steps of 160), batch 1;
- batch sweep: ``--batch-size-image`` (default 640) square images, batch ``--batches`` (default 1, 2, 4, 8, 16).

At each point: median latency of ``--repeats`` timed calls after ``--warmup`` untimed ones
(``common.interleaved``), the peak of new tensor memory during one eval forward (``common.peak_memory_bytes``:
torch's CPU allocator, so it includes the outputs but not the inputs or parameters), GMACs (torch's
FlopCounterMode / 2, convs and matmuls only) and, with ``--train``, the peak memory of one train-mode
forward + backward of ``sum(out.sum())`` with inputs requiring grad.

Linearity: for each neck, sweep and metric a least-squares line ``y = a * MPix + b`` (MPix = H * W * batch / 1e6)
with its R^2, the exponent ``k`` of a log-log fit ``y ~ MPix^k`` (1 = linear) and the ratio of the per-MPix cost
at the largest point to that at the smallest one (1 = linear through the origin; < 1 when a fixed overhead is
amortised; > 1 when the cost per pixel grows, e.g. by falling out of cache). Cost growing linearly with pixels
shows as R^2 close to 1, k close to 1 and a ratio close to 1.

Time budget: at the defaults the largest point is PAFPN at 640x640 batch 16 (~1.5 s per call on 2 cores); the
whole default run (4 necks, 12 points each, 1 warm-up + 5 timed calls + one profiled and one FLOP-counting call
per point) takes a few minutes on a 2-core CPU. As a guard (e.g. for ``--necks nasfpn`` or bigger sizes),
``--max-seconds-per-point`` (default 10) lowers the repeats of a point whose warm-up call shows that
``--repeats`` calls would take longer, down to ``--min-repeats`` (default 3); the repeats used are recorded
with every point.

Run (from the repository root)::

    .venv/bin/python benchmarks/scaling.py
    .venv/bin/python benchmarks/scaling.py --necks fpn,pafpn,bifpn,yolo_pafpn,nasfpn --train

Writes ``<out>/scaling.json`` (after every neck, so an interrupted run keeps what it measured),
``<out>/scaling.png`` (matplotlib, the ``viz`` extra; skipped with a message when it is missing) and the
``scaling`` section of ``benchmarks/RESULTS.md``. Progress goes to stderr, one line per point.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling module common.py

import common

import necklace
from necklace import FeatureSpec
from necklace.bench import count_flops, count_params, random_features

HERE = Path(__file__).resolve().parent
MB = 2**20  # "MB" in the tables and the plot is 2^20 bytes, as in vs_peers.py

R50 = (FeatureSpec(512, 8), FeatureSpec(1024, 16), FeatureSpec(2048, 32))
B0 = (FeatureSpec(40, 8), FeatureSpec(112, 16), FeatureSpec(320, 32))
YOLO_N = (FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32))


@dataclass(frozen=True)
class NeckCase:
    """A standard neck configuration: registered name, options and the backbone maps it is built for."""

    label: str
    neck: str
    options: dict[str, Any]
    in_specs: tuple[FeatureSpec, ...]


NECKS: dict[str, NeckCase] = {
    "fpn": NeckCase("FPN, R50 C3-C5 -> 256", "fpn", {"width": 256}, R50),
    "pafpn": NeckCase("PAFPN, R50 C3-C5 -> 256", "pafpn", {"width": 256}, R50),
    "bifpn": NeckCase("BiFPN d0, EfficientNet-B0 C3-C5", "bifpn", {"preset": "d0"}, B0),
    "yolo_pafpn": NeckCase("YOLOv8 PAFPN n, P3-P5 64/128/256", "yolo_pafpn", {"preset": "n"}, YOLO_N),
    "nasfpn": NeckCase("NAS-FPN, R50 C3-C5 -> 256", "nasfpn", {"width": 256}, R50),
}
DEFAULT_NECKS = ("fpn", "pafpn", "bifpn", "yolo_pafpn")
SWEEPS = ("size", "batch")
METRICS = ("latency_ms", "peak_mb", "gmacs", "train_peak_mb")


# ----------------------------------------------------------------------------------------------- fits
def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, Any]:
    """Least-squares ``y = slope * x + intercept`` with R^2, the log-log exponent and the per-x cost ratio.

    ``per_x_ratio_largest_smallest`` = ``(y / x)`` at the largest ``x`` over ``(y / x)`` at the smallest.
    ``loglog_exponent`` is the slope of ``log y`` against ``log x`` (None when some value is not positive).
    R^2 is 1 when every residual is 0 (also for a constant ``y``). Needs at least two distinct ``x``; with fewer,
    slope, intercept, R^2 and exponent are None.

    Example:
        >>> f = linear_fit([1.0, 2.0, 4.0], [3.0, 5.0, 9.0])
        >>> [round(f[k], 4) for k in ("slope", "intercept", "r2", "per_x_ratio_largest_smallest")]
        [2.0, 1.0, 1.0, 0.75]
    """
    if len(xs) != len(ys) or not xs:
        raise ValueError(f"need two equally long, non-empty series; got {len(xs)} and {len(ys)}.")
    pts = sorted(zip(xs, ys, strict=True))
    (x0, y0), (x1, y1) = pts[0], pts[-1]
    ratio = (y1 / x1) / (y0 / x0) if x0 > 0 and x1 > 0 and y0 != 0 else None
    out: dict[str, Any] = {
        "n": len(pts),
        "slope": None,
        "intercept": None,
        "r2": None,
        "loglog_exponent": None,
        "per_x_ratio_largest_smallest": ratio,
    }
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx <= 0:
        return out
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    intercept = my - slope * mx
    ss_res = sum((y - (slope * x + intercept)) ** 2 for x, y in pts)
    ss_tot = sum((y - my) ** 2 for _, y in pts)
    scale = max(1.0, sum(y * y for _, y in pts))
    if ss_tot > 1e-24 * scale:
        r2 = 1.0 - ss_res / ss_tot
    else:  # constant y: the fit is exact
        r2 = 1.0
    out.update(slope=slope, intercept=intercept, r2=r2)
    if all(x > 0 and y > 0 for x, y in pts):
        lx = [math.log(x) for x, _ in pts]
        ly = [math.log(y) for _, y in pts]
        mlx, mly = sum(lx) / n, sum(ly) / n
        slxx = sum((v - mlx) ** 2 for v in lx)
        if slxx > 0:
            out["loglog_exponent"] = sum((a - mlx) * (b - mly) for a, b in zip(lx, ly, strict=True)) / slxx
    return out


def fits_for(points: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Fits of every metric present in ``points`` against their megapixels."""
    out: dict[str, dict[str, Any]] = {}
    for metric in METRICS:
        pts = [p for p in points if p.get(metric) is not None]
        if pts:
            out[metric] = linear_fit([p["megapixels"] for p in pts], [float(p[metric]) for p in pts])
    return out


# ----------------------------------------------------------------------------------------------- measuring
def _eval_call(neck: nn.Module, feats: list[Tensor]) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return neck(feats)

    return run


def _train_peak_bytes(neck: nn.Module, feats: list[Tensor]) -> int:
    """Peak new tensor memory of one train-mode forward + backward (on a copy: BN statistics stay untouched)."""
    model = copy.deepcopy(neck).train()
    inputs = [f.detach().clone().requires_grad_(True) for f in feats]

    def step() -> None:
        for p in model.parameters():
            p.grad = None
        for x in inputs:
            x.grad = None
        out = model(inputs)
        sum(o.sum() for o in out).backward()

    step()  # warm-up: lazily created buffers and the first allocations are not part of the step
    return int(common.peak_memory_bytes(step)["peak_bytes"])


def measure_point(
    neck: nn.Module,
    case: NeckCase,
    sweep: str,
    size: int,
    batch: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Latency, peak memory and GMACs of ``neck`` on ``batch`` square ``size x size`` images."""
    start = time.perf_counter()
    feats = random_features(case.in_specs, (size, size), batch=batch)
    fn = _eval_call(neck, feats)
    repeats = args.repeats
    warm = time.perf_counter()
    for _ in range(max(1, args.warmup)):
        fn()
    per_call = (time.perf_counter() - warm) / max(1, args.warmup)
    if args.max_seconds_per_point > 0 and per_call * repeats > args.max_seconds_per_point:
        repeats = max(min(args.min_repeats, args.repeats), int(args.max_seconds_per_point / per_call))
    times = common.interleaved({"eval": fn}, repeats, warmup=0)["eval"]
    latency = common.stats_ms(times)
    mem = common.peak_memory_bytes(fn)
    gmacs = count_flops(neck, feats) / 2e9
    mpix = size * size * batch / 1e6
    point: dict[str, Any] = {
        "sweep": sweep,
        "image_size": [size, size],
        "batch": batch,
        "megapixels": mpix,
        "latency_ms": latency["median_ms"],
        "ms_per_mpix": latency["median_ms"] / mpix,
        "latency": latency,
        "peak_bytes": mem["peak_bytes"],
        "retained_bytes": mem["retained_bytes"],
        "peak_mb": mem["peak_bytes"] / MB,
        "mb_per_mpix": mem["peak_bytes"] / MB / mpix,
        "gmacs": gmacs,
        "gmacs_per_mpix": gmacs / mpix,
        "train_peak_mb": None,
    }
    if args.train:
        point["train_peak_bytes"] = _train_peak_bytes(neck, feats)
        point["train_peak_mb"] = point["train_peak_bytes"] / MB
    point["elapsed_s"] = time.perf_counter() - start
    return point


def run_neck(name: str, args: argparse.Namespace, log: Callable[[str], None], t0: float) -> dict[str, Any]:
    """Both sweeps of one neck; returns its JSON entry."""
    case = NECKS[name]
    torch.manual_seed(0)
    neck = necklace.build_neck(case.neck, case.in_specs, **case.options).eval()
    entry: dict[str, Any] = {
        "neck": case.neck,
        "label": case.label,
        "options": case.options,
        "in_specs": [s.to_dict() for s in case.in_specs],
        "params": count_params(neck),
        "points": {"size": [], "batch": []},
    }
    plan = [("size", s, 1) for s in args.size_list] + [("batch", args.batch_size_image, b) for b in args.batch_list]
    for sweep, size, batch in plan:
        p = measure_point(neck, case, sweep, size, batch, args)
        entry["points"][sweep].append(p)
        train = f", train peak {p['train_peak_mb']:.1f} MB" if p["train_peak_mb"] is not None else ""
        log(
            f"[scaling] {name:10s} {sweep:5s} {size}x{size} b{batch:<2d}: {p['latency_ms']:8.1f} ms "
            f"({p['ms_per_mpix']:.1f} ms/MPix, {p['latency']['repeats']} calls), peak {p['peak_mb']:.1f} MB"
            f"{train}, {p['gmacs']:.2f} GMACs  [{p['elapsed_s']:.1f} s, total {time.perf_counter() - t0:.0f} s]"
        )
    entry["fits"] = {sweep: fits_for(entry["points"][sweep]) for sweep in SWEEPS}
    return entry


# ----------------------------------------------------------------------------------------------- outputs
def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None or not math.isfinite(v) else format(v, spec)


def markdown(data: dict[str, Any], image: str | None) -> str:
    """The ``scaling`` section of RESULTS.md."""
    env, s = data["env"], data["settings"]
    cpu = env["cpu"]
    train = s["train"]
    lines = [
        "## Scaling with input size and batch size (`benchmarks/scaling.py`)",
        "",
        f"- date: {env['date_utc']}; git {env.get('git', {}).get('commit', '?')}"
        f"{' (uncommitted changes)' if env.get('git', {}).get('dirty') else ''}",
        f"- machine: {cpu.get('model', '?')}, {cpu.get('physical_cores')} physical cores / "
        f"{cpu.get('logical_cpus')} logical ({cpu.get('usable_cpus')} usable); load average at start "
        f"{env['load_avg_1_5_15']}, at end {env.get('load_avg_end', '?')}",
        f"- torch {env['versions'].get('torch', '?')}, float32, {s['threads']} threads, eval + no_grad, random "
        f"weights; {s['warmup']} warm-up call(s), median of {s['repeats']} calls per point (fewer where "
        f"{s['repeats']} calls would exceed {s['max_seconds_per_point']} s, at least {s['min_repeats']}); "
        f"command `{s['command']}`",
        "- peak MB = peak of new tensor memory in torch's CPU allocator during one eval forward (outputs included, "
        "inputs and parameters not; MB = 2^20 bytes)"
        + ("; train peak = the same for one train() forward + backward" if train else ""),
        "- MPix = H x W x batch / 1e6; GMACs from torch's FlopCounterMode (convs and matmuls only); malloc "
        f"{env.get('allocator', {}).get('mode', 'default')} (see `benchmarks/common.py`)",
        "",
    ]
    necks = data["necks"]
    for sweep, title, key in (
        ("size", "Size sweep (batch 1)", "image"),
        ("batch", f"Batch sweep ({s['batch_size_image']}x{s['batch_size_image']} images)", "batch"),
    ):
        lines += [f"### {title}", ""]
        head = f"| neck | {key} | MPix | GMACs | ms | ms / MPix | peak MB | MB / MPix |"
        rule = "|---|---|---|---|---|---|---|---|"
        if train:
            head += " train peak MB |"
            rule += "---|"
        lines += [head, rule]
        for name, e in necks.items():
            for p in e["points"][sweep]:
                where = f"{p['image_size'][0]}x{p['image_size'][1]}" if sweep == "size" else str(p["batch"])
                row = (
                    f"| {name} | {where} | {p['megapixels']:.3f} | {p['gmacs']:.2f} | {p['latency_ms']:.1f}"
                    f" | {p['ms_per_mpix']:.1f} | {p['peak_mb']:.1f} | {p['mb_per_mpix']:.1f} |"
                )
                if train:
                    row += f" {_fmt(p.get('train_peak_mb'), '.1f')} |"
                lines.append(row)
        lines.append("")
    lines += [
        "### Linearity: least-squares fit y = a x MPix + b",
        "",
        "R^2 of the line; exponent k of the log-log fit y ~ MPix^k (1 = linear); per-MPix ratio = cost per MPix at "
        "the largest point / at the smallest (1 = proportional to pixels; < 1: a fixed cost being amortised; > 1: "
        "the cost per pixel grows).",
        "",
        "| neck | sweep | metric | a (per MPix) | b | R^2 | k | per-MPix ratio largest / smallest |",
        "|---|---|---|---|---|---|---|---|",
    ]
    units = {"latency_ms": "ms", "peak_mb": "peak MB", "train_peak_mb": "train peak MB", "gmacs": "GMACs"}
    for name, e in necks.items():
        for sweep in SWEEPS:
            for metric, f in e["fits"][sweep].items():
                lines.append(
                    f"| {name} | {sweep} | {units[metric]} | {_fmt(f['slope'], '.2f')} | {_fmt(f['intercept'], '.2f')}"
                    f" | {_fmt(f['r2'], '.4f')} | {_fmt(f['loglog_exponent'], '.3f')}"
                    f" | {_fmt(f['per_x_ratio_largest_smallest'], '.2f')} |"
                )
    if image:
        lines += ["", f"![scaling]({image})"]
    return "\n".join(lines)


def _plain_log_ticks(axis: Any, ticker: Any) -> None:
    """Ticks at 1, 2, 5 x 10^k labelled as plain numbers (``%g``) on a log axis."""
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def plot(data: dict[str, Any], path: Path) -> Path | None:
    """2x2 panels (latency / peak MB against MPix for the size sweep, against batch for the batch sweep), log-log;
    one line per neck, its least-squares line dashed. Returns None (with a message) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError as e:
        print(f"[scaling] matplotlib not importable ({e}); no plot (install the 'viz' extra)", file=sys.stderr)
        return None
    s = data["settings"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    panels = (
        (axes[0][0], "size", "latency_ms", "latency (ms)", "size sweep, batch 1"),
        (axes[0][1], "size", "peak_mb", "peak MB (eval forward)", "size sweep, batch 1"),
        (axes[1][0], "batch", "latency_ms", "latency (ms)", f"batch sweep, {s['batch_size_image']}px"),
        (axes[1][1], "batch", "peak_mb", "peak MB (eval forward)", f"batch sweep, {s['batch_size_image']}px"),
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, sweep, metric, ylabel, title in panels:
        for i, (name, entry) in enumerate(data["necks"].items()):
            pts = entry["points"][sweep]
            if not pts:
                continue
            color = colors[i % len(colors)]
            mpix = [p["megapixels"] for p in pts]
            xs = mpix if sweep == "size" else [p["batch"] for p in pts]
            ax.plot(xs, [p[metric] for p in pts], "o-", color=color, label=name)
            fit = entry["fits"][sweep].get(metric, {})
            if fit.get("slope") is not None:
                lo, hi = min(mpix), max(mpix)
                grid = [lo + (hi - lo) * k / 50 for k in range(51)]
                fx = grid if sweep == "size" else [g / mpix[0] * pts[0]["batch"] for g in grid]
                fy = [fit["slope"] * g + fit["intercept"] for g in grid]
                keep = [(a, b) for a, b in zip(fx, fy, strict=True) if b > 0]
                if keep:
                    ax.plot(*zip(*keep, strict=True), "--", color=color, alpha=0.7, linewidth=1)
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis, ticker)
        if sweep == "size":
            ax.set_xscale("log")
            _plain_log_ticks(ax.xaxis, ticker)
        else:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(ticker.FixedLocator(s["batches"]))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("megapixels (H x W x batch)" if sweep == "size" else "batch size")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel.split(' (')[0]} - {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"necklace necks: scaling with pixels (float32, {s['threads']} threads, eval; dashed: least-squares line)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path


# ----------------------------------------------------------------------------------------------- main
def _int_list(text: str, what: str, ap: argparse.ArgumentParser) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        ap.error(f"{what}: expected comma-separated integers, got {text!r}")
    if not values or any(v < 1 for v in values):
        ap.error(f"{what}: expected positive integers, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--necks", default=",".join(DEFAULT_NECKS), help=f"comma-separated, from {list(NECKS)}")
    ap.add_argument("--sizes", default="320,480,640,800,960,1120,1280", help="size sweep: square image sides")
    ap.add_argument("--batches", default="1,2,4,8,16", help="batch sweep: batch sizes")
    ap.add_argument("--batch-size-image", type=int, default=640, help="image side of the batch sweep (640)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per point (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls per point first (default 1)")
    ap.add_argument(
        "--max-seconds-per-point",
        type=float,
        default=10.0,
        help="lower the repeats of a point whose timed calls would take longer (0 = never; default 10)",
    )
    ap.add_argument("--min-repeats", type=int, default=3, help="repeats never lowered below this (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--train", action="store_true", help="also measure train forward + backward peak memory")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG")
    common.add_malloc_arg(ap)
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for scaling.json and scaling.png")
    ap.add_argument("--results-md", default=str(HERE / "RESULTS.md"), help="Markdown file to update ('' = none)")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1 or args.min_repeats < 1 or args.batch_size_image < 1:
        ap.error("need --repeats >= 1, --warmup >= 0, --threads >= 1, --min-repeats >= 1, --batch-size-image >= 1")
    args.neck_list = [n.strip() for n in args.necks.split(",") if n.strip()]
    unknown = [n for n in args.neck_list if n not in NECKS]
    if unknown or not args.neck_list:
        ap.error(f"unknown or no necks {unknown}; choose from {list(NECKS)}")
    args.size_list = _int_list(args.sizes, "--sizes", ap)
    args.batch_list = _int_list(args.batches, "--batches", ap)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    out_dir = Path(args.out)
    json_path, png_path = out_dir / "scaling.json", out_dir / "scaling.png"
    env = common.environment(args.threads)
    env["allocator"] = common.apply_malloc(args.malloc)
    data: dict[str, Any] = {
        "env": env,
        "settings": {
            "necks": args.neck_list,
            "sizes": args.size_list,
            "batches": args.batch_list,
            "batch_size_image": args.batch_size_image,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "max_seconds_per_point": args.max_seconds_per_point,
            "min_repeats": args.min_repeats,
            "threads": args.threads,
            "train": args.train,
            "dtype": "float32",
            "mode": "eval + no_grad",
            "mb": MB,
            "command": "benchmarks/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        },
        "necks": {},
    }
    log(f"[scaling] {env['date_utc']} | {env['cpu']['model']} | {args.threads} threads | load {env['load_avg_1_5_15']}")
    load = env["load_avg_1_5_15"]
    if load and load[0] > 0.5:
        log(f"[scaling] warning: 1-minute load average {load[0]} > 0.5: other processes share the cores; latencies")
        log("[scaling]          (with 2 threads on 2 cores, especially) may be inflated many times over")
    t0 = time.perf_counter()
    with common.threads(args.threads):
        for name in args.neck_list:
            data["necks"][name] = run_neck(name, args, log, t0)
            env["load_avg_end"] = common.load_average()
            data["elapsed_s"] = time.perf_counter() - t0
            common.atomic_write_json(json_path, data)
    log(f"[scaling] wrote {json_path} ({time.perf_counter() - t0:.0f} s)")
    image = None if args.no_plot else plot(data, png_path)
    if image is not None:
        log(f"[scaling] wrote {image}")
    if args.results_md:
        md_path = Path(args.results_md)
        rel = None
        if image is not None:
            rel = Path(os.path.relpath(image.resolve(), md_path.resolve().parent)).as_posix()
        md = markdown(data, rel)
        common.update_markdown_section(md_path, "scaling", md)
        log(f"[scaling] updated the 'scaling' section of {md_path}")
        print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
