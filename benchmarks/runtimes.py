"""necklace's runtimes against each other on the same necks and weights: ``necklace.deploy(neck, runtime=...)``.

For every config the neck is built with random weights (random BatchNorm statistics), deployed to each runtime
(``torch``, ``native``, ``onnxruntime``, ``openvino`` with the f32 precision hint, optionally ``inductor``), each
checked against the plain neck, then all are timed *interleaved* in this process (``necklace.bench.interleaved``:
balanced round orders; each timed call right after an untimed call of the same runtime, ``settle=1``, since the
runtimes' thread pools keep the cores busy for a while after a call and would otherwise slow the next runtime by up to
2-3x), float32, batch 1, ``--threads`` threads, together with the plain (eager, not deployed) neck. Reported per
config: median ms of each runtime, the per-round ratios ``native / best of ONNX Runtime and OpenVINO`` (the #19
target: <= 0.8 on FPN, PAFPN, NAS-FPN and the YOLO necks), ``auto / best of the others`` (<= 1.0 by construction:
``runtime="auto"`` keeps the fastest), and what ``runtime="auto"`` picked when deployed on the same inputs.

Run (from the repository root)::

    .venv/bin/python benchmarks/runtimes.py --repeats 20
    .venv/bin/python benchmarks/runtimes.py --configs yolov8n,fpn_r50 --repeats 10 --out /tmp/rt

Writes ``<out>/runtimes.json`` and the ``runtimes`` section of ``--results-md`` (default
``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

import necklace
from necklace.bench import interleaved, random_features, ratio_stats, stats_ms
from necklace.spec import FeatureSpec

HERE = Path(__file__).resolve().parent
R50 = (FeatureSpec(512, 8), FeatureSpec(1024, 16), FeatureSpec(2048, 32))
R50_C2 = (FeatureSpec(256, 4), *R50)
SESSION = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class Config:
    name: str
    neck: str
    in_specs: tuple[FeatureSpec, ...]
    image_size: tuple[int, int]
    options: dict[str, Any] = field(default_factory=dict)
    target: float | None = 0.8  # native / best session runtime; None: reported only


CONFIGS = {
    "fpn_r50": Config("fpn_r50", "fpn", R50, (640, 640), {"width": 256}),
    "pafpn_r50": Config("pafpn_r50", "pafpn", R50, (640, 640), {"width": 256}),
    "nasfpn_r50": Config("nasfpn_r50", "nasfpn", R50_C2, (640, 640), {"width": 256, "stack_times": 7}),
    "yolov8n": Config(
        "yolov8n",
        "yolo_pafpn",
        (FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)),
        (640, 640),
        {"preset": "n"},
    ),
    "yolo11n": Config(
        "yolo11n",
        "yolo11_pafpn",
        (FeatureSpec(128, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)),
        (640, 640),
        {"preset": "n"},
    ),
    "yolov6n": Config(
        "yolov6n",
        "rep_pafpn",
        (FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)),
        (640, 640),
        {"preset": "n"},
        None,
    ),
    "bifpn_d0": Config(
        "bifpn_d0",
        "bifpn",
        (FeatureSpec(40, 8), FeatureSpec(112, 16), FeatureSpec(320, 32)),
        (512, 512),
        {"preset": "d0"},
        None,
    ),
}


def _randomized(cfg: Config) -> torch.nn.Module:
    return common.randomize_bn(necklace.build_neck(cfg.neck, cfg.in_specs, **cfg.options))


def run_config(cfg: Config, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    feats = random_features(cfg.in_specs, cfg.image_size, batch=1, seed=0)
    neck = _randomized(cfg)
    entry: dict[str, Any] = {
        "config": cfg.name,
        "neck": cfg.neck,
        "options": cfg.options,
        "image_size": list(cfg.image_size),
        "target_native_over_session": cfg.target,
        "deployed": {},
        "errors": {},
    }
    calls: dict[str, Any] = {"eager": neck}
    for rt in args.runtimes:
        t0 = time.perf_counter()
        try:
            d = necklace.deploy(neck, feats, runtime=rt)
        except Exception as e:  # a runtime that cannot run here is reported, not fatal
            entry["errors"][rt] = f"{type(e).__name__}: {e}"
            log(f"  [{cfg.name}] {rt}: {entry['errors'][rt]}")
            continue
        r = necklace.DeployReport.of(d)
        entry["deployed"][rt] = {"deploy_s": time.perf_counter() - t0, "max_rel_diff": r.max_rel_diff}
        if r.native is not None:
            entry["deployed"][rt]["native_library"] = r.native.build.loaded
        calls[rt] = d
        log(f"  [{cfg.name}] {rt}: deployed in {time.perf_counter() - t0:.1f} s, max rel diff {r.max_rel_diff:.2g}")
    fns = {k: (lambda m=m: m(feats)) for k, m in calls.items()}
    with torch.no_grad():
        times = interleaved(fns, repeats=args.repeats, warmup=args.warmup, settle=1)
    entry["ms"] = {k: stats_ms(v) for k, v in times.items()}
    sessions = [k for k in SESSION if k in times]
    if "native" in times and sessions:
        best = min(sessions, key=lambda k: entry["ms"][k]["median_ms"])
        entry["best_session"] = best
        entry["native_over_best_session"] = ratio_stats(times["native"], times[best])
    others = [k for k in times if k not in ("eager",)]
    if others:
        fastest = min(others, key=lambda k: entry["ms"][k]["median_ms"])
        entry["fastest"] = fastest
    if "torch" in times:
        entry["eager_over_torch"] = ratio_stats(times["eager"], times["torch"])
    auto = necklace.deploy(neck, feats, runtime="auto", candidates=[k for k in args.runtimes if k in calls])
    entry["auto"] = {"picked": auto.deploy_report.runtime, "latency_ms": dict(auto.deploy_report.latency_ms or {})}
    line = ", ".join(f"{k} {entry['ms'][k]['median_ms']:.2f}" for k in times)
    log(f"  [{cfg.name}] ms: {line}; auto picked {entry['auto']['picked']}")
    if "native_over_best_session" in entry:
        r = entry["native_over_best_session"]
        log(f"  [{cfg.name}] native / {entry['best_session']}: {r['median']:.3f} [{r['p25']:.3f}-{r['p75']:.3f}]")
    return entry


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        "## necklace's runtimes against each other (`benchmarks/runtimes.py`)",
        "",
        f"`{result.get('command', 'benchmarks/runtimes.py')}`. "
        f"Measured {result['measured_utc']} on {env.get('cpu', {}).get('model', '?')} "
        f"({result['threads']} threads, load {env.get('load_avg_1_5_15')}), {result['repeats']} interleaved rounds "
        "(each timed call after an untimed call of the same runtime); "
        "median ms, batch 1, float32. Ratio: median of per-round ratios [IQR].",
        "",
        "| config | eager | torch | native | onnxruntime | openvino | native / best session | target | auto picked "
        "(fastest here) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for c in result["configs"]:
        ms = c["ms"]

        def cell(k: str, ms: dict[str, Any] = ms) -> str:
            return f"{ms[k]['median_ms']:.2f}" if k in ms else "-"

        r = c.get("native_over_best_session")
        ratio = f"{r['median']:.3f} [{r['p25']:.2f}-{r['p75']:.2f}] ({c['best_session']})" if r else "-"
        target = f"<= {c['target_native_over_session']}" if c["target_native_over_session"] else "report"
        lines.append(
            f"| {c['config']} | {cell('eager')} | {cell('torch')} | {cell('native')} | {cell('onnxruntime')} | "
            f"{cell('openvino')} | {ratio} | {target} | {c['auto']['picked']} ({c.get('fastest', '-')}) |"
        )
    errors = [f"{c['config']} {k}: {v}" for c in result["configs"] for k, v in c["errors"].items()]
    if errors:
        lines += ["", "Not run:", *[f"- {e}" for e in errors]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {list(CONFIGS)}")
    ap.add_argument("--runtimes", default="torch,native,onnxruntime,openvino", help="comma list of runtimes")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=0, help="override every config's square image size")
    common.add_malloc_arg(ap)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--results-md", default=str(HERE / "RESULTS.md"), help="Markdown file to update ('' = none)")
    args = ap.parse_args(argv)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    args.runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    malloc = common.apply_malloc(args.malloc)
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    result: dict[str, Any] = {
        "measured_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "threads": args.threads,
        "repeats": args.repeats,
        "command": "benchmarks/runtimes.py " + " ".join(sys.argv[1:]),
        "malloc": malloc,
        "environment": common.environment(args.threads),
        "configs": [],
    }
    for name in names:
        cfg = CONFIGS[name]
        if args.image_size:
            cfg = Config(cfg.name, cfg.neck, cfg.in_specs, (args.image_size, args.image_size), cfg.options, cfg.target)
        log(f"== {name}: {cfg.neck} {cfg.options} at {cfg.image_size}")
        result["configs"].append(run_config(cfg, args, log))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common.atomic_write_json(out / "runtimes.json", result)
    md = markdown(result)
    print(md)
    if args.results_md:
        common.update_markdown_section(args.results_md, "runtimes", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
