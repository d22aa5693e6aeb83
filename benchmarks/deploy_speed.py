"""Light necks before and after ``necklace.deploy()``, and against the standard neck they lighten, in one run.

For every config: the neck in its training form (``eval()``, BN and RepConv branches still separate), the same
neck after :func:`necklace.deploy` (re-parameterised, Conv+BN folded, fusion weights frozen, memory format chosen
by deploy), and the corresponding standard neck, all timed interleaved (float32, batch 1, ``--threads``,
``no_grad``). Reports params, GMACs, median ms and the per-round ratio ``train-form / deployed`` (the speed-up;
target >= 1.3x) and ``deployed / standard``. The deployed outputs are checked against the training form first.

Run (from the repository root)::

    .venv/bin/python benchmarks/deploy_speed.py --repeats 20

Writes ``<out>/deploy_speed.json`` and the ``deploy_speed`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

import necklace
from necklace import FeatureSpec
from necklace.bench import count_flops, count_params, random_features


@dataclass(frozen=True)
class LightCase:
    """A light neck, its options and the standard neck it is compared with (same backbone specs and size)."""

    label: str
    neck: str
    options: dict[str, Any]
    standard: str
    standard_options: dict[str, Any]
    in_specs: tuple[FeatureSpec, ...]
    image_size: tuple[int, int]
    notes: list[str] = field(default_factory=list)


YOLO_N = (FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32))
YOLO_N4 = (FeatureSpec(32, 4), *YOLO_N)
R18 = (FeatureSpec(128, 8), FeatureSpec(256, 16), FeatureSpec(512, 32))
B0 = (FeatureSpec(40, 8), FeatureSpec(112, 16), FeatureSpec(320, 32))
ESNET_S = (FeatureSpec(96, 8), FeatureSpec(192, 16), FeatureSpec(384, 32))

CASES: dict[str, LightCase] = {
    "rep_pafpn_n": LightCase(
        "rep_pafpn n (YOLOv6-N RepPAN)", "rep_pafpn", {"preset": "n"}, "yolo_pafpn", {"preset": "n"}, YOLO_N, (640, 640)
    ),
    "rep_bifpan_n": LightCase(
        "rep_bifpan n (YOLOv6-N v3)", "rep_bifpan", {"preset": "n"}, "yolo_pafpn", {"preset": "n"}, YOLO_N4, (640, 640)
    ),
    "csp_pan_s": LightCase(
        "csp_pan s (PicoDet-S)", "csp_pan", {"preset": "s"}, "pafpn", {"width": 96}, ESNET_S, (416, 416)
    ),
    "pafpn_lite": LightCase(
        "pafpn lite (R18, 128 ch, BN + ReLU)",
        "pafpn",
        {"width": 128, "lite": True, "norm": "bn", "act": "relu"},
        "pafpn",
        {"width": 128, "norm": "bn", "act": "relu"},
        R18,
        (640, 640),
    ),
    "bifpn_lite": LightCase(
        "bifpn lite d0 (EfficientDet-Lite0 style)", "bifpn", {"lite": True}, "bifpn", {}, B0, (512, 512)
    ),
    "yolo_pafpn_n": LightCase(
        "yolo_pafpn n (YOLOv8n, C2f)", "yolo_pafpn", {"preset": "n"}, "yolo_pafpn", {"preset": "n"}, YOLO_N, (640, 640)
    ),
    "tiny": LightCase(
        "rep_pafpn tiny (smoke test)", "rep_pafpn", {"preset": "n"}, "yolo_pafpn", {"preset": "n"}, YOLO_N, (64, 64)
    ),
}


_randomize_bn = common.randomize_bn


def run_case(case: LightCase, repeats: int, warmup: int, threads: int, compile_backend: str = "") -> dict[str, Any]:
    """Build, deploy, check and time one case; returns a JSON-ready dict."""
    torch.manual_seed(0)
    feats = random_features(case.in_specs, case.image_size)
    light = _randomize_bn(necklace.build_neck(case.neck, case.in_specs, **case.options))
    standard = _randomize_bn(necklace.build_neck(case.standard, case.in_specs, **case.standard_options))
    with common.threads(threads):
        deployed = necklace.deploy(light, feats, runtime="native")
    report = necklace.DeployReport.of(deployed)
    with torch.no_grad():
        ref, out = light(feats), deployed(feats)
    abs_diff, scale = common.max_abs_diff(out, ref)
    rel_diff = abs_diff / max(scale, 1e-12)
    if rel_diff > 1e-3:  # (the native runtime: Winograd rounding, as deploy checks it)
        raise RuntimeError(f"{case.label}: deployed outputs differ from the training form (rel {rel_diff:.2e})")

    def call(m: torch.nn.Module):
        def run() -> object:
            with torch.no_grad():
                return m(feats)

        return run

    with common.threads(threads):
        times = common.interleaved(
            {"train_form": call(light), "deployed": call(deployed), "standard": call(standard)}, repeats, warmup
        )
    compiled_result: dict[str, Any] | None = None
    if compile_backend:
        # timed after the eager rounds and in rounds of their own: compiled kernels run their own OpenMP pool,
        # which would disturb the eager timings if interleaved with them
        with common.threads(threads):
            compiled = necklace.compile_model(
                light, (feats,), backend=compile_backend, channels_last=report.channels_last
            )
            creport = necklace.CompileReport.of(compiled)
            ctimes = common.interleaved({"train_form": call(light), "compiled": call(compiled)}, repeats, warmup)
        compiled_result = {
            "backend": compile_backend,
            "compile_s": creport.compile_s,
            "max_rel_diff": creport.max_rel_diff,
            "latency": {k: common.stats_ms(v) for k, v in ctimes.items()},
            "speedup_train_form_over_compiled": common.ratio_stats(ctimes["train_form"], ctimes["compiled"]),
        }
    return {
        "compiled": compiled_result,
        "label": case.label,
        "neck": case.neck,
        "options": case.options,
        "standard": {"neck": case.standard, "options": case.standard_options},
        "in_specs": [s.to_dict() for s in case.in_specs],
        "image_size": list(case.image_size),
        "params": {
            "train_form": count_params(light),
            "deployed": count_params(deployed),
            "standard": count_params(standard),
        },
        "gmacs": {
            "train_form": count_flops(light, feats) / 2e9,
            "deployed": count_flops(deployed, feats) / 2e9,
            "standard": count_flops(standard, feats) / 2e9,
        },
        "deploy": {
            "channels_last": report.channels_last,
            "reparameterized": report.reparameterized,
            "folded_bn": report.folded_bn,
            "frozen_fusions": report.frozen_fusions,
            "max_abs_diff": abs_diff,
            "max_rel_diff": rel_diff,
        },
        "latency": {k: common.stats_ms(v) for k, v in times.items()},
        "speedup_train_form_over_deployed": common.ratio_stats(times["train_form"], times["deployed"]),
        "ratio_deployed_over_standard": common.ratio_stats(times["deployed"], times["standard"]),
    }


def markdown(results: Sequence[dict[str, Any]], env: dict[str, Any]) -> str:
    """The ``deploy_speed`` section of RESULTS.md."""
    lines = [
        "## Light necks: training form vs `necklace.deploy()` vs the standard neck",
        "",
        f"{env['date_utc']}, {env['cpu'].get('model', '?')}, {env['threads']} threads, torch "
        f"{env['versions'].get('torch', '?')}, load average {env['load_avg_1_5_15']}. float32, batch 1, eval, "
        "no_grad; median of interleaved rounds. Speed-up = median over rounds of train-form / deployed. malloc "
        f"{env.get('allocator', {}).get('mode', 'default')} (see `benchmarks/common.py`).",
        "",
        "| neck | image | params train -> deployed | GMACs | train-form ms | deployed ms | speed-up | standard neck"
        " | standard ms | deployed / standard | deploy check (rel) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lat, p = r["latency"], r["params"]
        std = r["standard"]
        lines.append(
            f"| {r['label']} | {r['image_size'][0]}x{r['image_size'][1]} | {p['train_form']:,} -> {p['deployed']:,}"
            f" | {r['gmacs']['train_form']:.2f} -> {r['gmacs']['deployed']:.2f}"
            f" | {lat['train_form']['median_ms']:.1f} | {lat['deployed']['median_ms']:.1f}"
            f" | **{r['speedup_train_form_over_deployed']['median']:.2f}x** | `{std['neck']}` {std['options']}"
            f" | {lat['standard']['median_ms']:.1f} | {r['ratio_deployed_over_standard']['median']:.2f}"
            f" | {r['deploy']['max_rel_diff']:.1e} |"
        )
    compiled = [r for r in results if r.get("compiled")]
    if compiled:
        backend = compiled[0]["compiled"]["backend"]
        lines += [
            "",
            f"Optional compiled path: `necklace.compile_model(neck, backend={backend!r})` (deploy, then compile), "
            "timed after the rounds above in rounds of its own against the training form again; compile time "
            "(deploy + compilation + 2 first calls) reported apart.",
            "",
            "| neck | train-form ms | compiled ms | speed-up | compile s | check (rel) |",
            "|---|---|---|---|---|---|",
        ]
        for r in compiled:
            c = r["compiled"]
            lines.append(
                f"| {r['label']} | {c['latency']['train_form']['median_ms']:.1f} | "
                f"{c['latency']['compiled']['median_ms']:.1f} | "
                f"**{c['speedup_train_form_over_compiled']['median']:.2f}x** | {c['compile_s']:.1f} | "
                f"{c['max_rel_diff']:.1e} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="rep_pafpn_n,rep_bifpan_n,csp_pan_s,pafpn_lite,bifpn_lite,yolo_pafpn_n")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--compile",
        choices=("inductor", "torchscript"),
        default="",
        help="also time necklace.compile_model(neck, backend=...) (compile time reported apart)",
    )
    common.add_malloc_arg(parser)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--markdown", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    args = parser.parse_args(argv)
    names = [c for c in args.configs.split(",") if c]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        print(f"unknown config(s) {unknown}; choose from {sorted(CASES)}", file=sys.stderr)
        return 2
    env = common.environment(args.threads)
    env["allocator"] = common.apply_malloc(args.malloc)
    results = []
    for name in names:
        print(f"[deploy_speed] {name} ...", file=sys.stderr, flush=True)
        r = run_case(CASES[name], args.repeats, args.warmup, args.threads, args.compile)
        print(
            f"[deploy_speed] {name}: {r['latency']['train_form']['median_ms']:.1f} ms -> "
            f"{r['latency']['deployed']['median_ms']:.1f} ms deployed "
            f"({r['speedup_train_form_over_deployed']['median']:.2f}x)",
            file=sys.stderr,
            flush=True,
        )
        results.append(r)
    env["load_avg_end"] = common.load_average()
    common.atomic_write_json(Path(args.out) / "deploy_speed.json", {"environment": env, "results": results})
    md = markdown(results, env)
    common.update_markdown_section(args.markdown, "deploy_speed", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
