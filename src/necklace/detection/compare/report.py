"""``report.md``: the table, the verdict, the runs, the cost of each neck and how the comparison was run."""

from __future__ import annotations

import json
from typing import Any

from necklace.bench import LatencyStats
from necklace.detection.compare.config import _RUN_FIELDS, METRIC_LABELS
from necklace.detection.compare.results import CompareResult, _pct
from necklace.detection.compare.stats import RULE_TEXT
from necklace.detection.compare.verdict import _learning_line, verdict_lines
from necklace.detection.compare.yolo_config import RESUMABLE_YOLO_CHANGES, YoloTrainConfig
from necklace.detection.train import RESUMABLE_CHANGES, TrainConfig


def _report(result: CompareResult, command: str | None) -> str:
    cfg, base = result.config, result.config.base
    env = result.environment
    m = METRIC_LABELS[cfg.metric]
    p0 = result.necks[0].profile
    lines = [
        f"# necklace compare: {', '.join(n.label for n in result.necks)}",
        "",
        f"{_setting(base)} at {base.image_size} px, "
        f"{_length(base)}, seeds {list(cfg.seeds)}; AP values are COCO box AP x 100, mean ± std over seeds. "
        f"Latency: median of {cfg.latency_repeats} forward passes, batch 1 at {p0.image_size} px, "
        f"{p0.threads} CPU threads" + (f", GPU {p0.gpu_name}" if p0.gpu_name else "") + ".",
        "",
        result.table(),
        "",
        "## Verdict",
        "",
        *[f"- {line}" for line in verdict_lines(result)],
        f"- {_learning_line(result)}",
        "",
        f"Rule for 'beyond / within noise' ({m}, each neck against the best): "
        + "; ".join(RULE_TEXT[r] for r in sorted({n.vs_best.rule for n in result.necks if n.vs_best}) or ["none"])
        + ".",
        "",
        "![AP by object size](ap_by_size.png)",
        "",
        "![AP vs latency](ap_vs_latency.png)",
        "",
        "## Runs",
        "",
        *_runs_table(result),
    ]
    lines += ["", *_cost_table(result)]
    lines += [
        "",
        "## How it was run",
        "",
        f"- command: `{command}`" if command else "- called from Python: `necklace.detection.compare.compare(config)`",
        f"- wall time: {result.wall_time / 60:.1f} min ({result.wall_time:.0f} s) for "
        f"{sum(len(n.runs) for n in result.necks)} runs "
        f"({sum(1 for n in result.necks for r in n.runs if r.status == 'reused')} reused from an earlier call)",
        f"- machine: {env.get('cpu_count')} CPUs, torch {env.get('torch')} with {env.get('torch_threads')} threads"
        + (f", load average {env['load_average']}" if env.get("load_average") else "")
        + (f", GPU {env['cuda']}" if env.get("cuda") else ""),
        "- necks: "
        + "; ".join(f"`{n.label}` = `{n.choice.name}` {json.dumps(n.choice.options)}" for n in result.necks),
        f"- shared training config: `{json.dumps(_shared(base))}`",
        "- every number is in `results.json`; "
        + (
            "each run's Ultralytics directory (`weights/last.pt`, `results.csv`, `args.yaml`) is `runs/<neck>/seed<k>/`"
            if cfg.yolo
            else "each run's checkpoint and `log.csv` are under `runs/<neck>/seed<k>/`"
        ),
    ]
    lines += [f"- note: {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


def _ms(stats: LatencyStats | None) -> str:
    return "-" if stats is None else f"{stats.median_ms:.2f} ({stats.min_ms:.2f}-{stats.max_ms:.2f})"


def _cost_table(result: CompareResult) -> list[str]:
    """The whole profile of each neck: params, FLOPs and latency (median (min-max)) of neck and detector."""
    p0 = result.necks[0].profile
    gpu = any(n.profile.detector_gpu is not None for n in result.necks)
    head = ["neck", "neck params", "neck GFLOPs", "neck CPU ms", "detector params", "detector GFLOPs"]
    head += ["detector CPU ms"] + (["neck GPU ms", "detector GPU ms"] if gpu else [])
    lines = [
        "## Cost",
        "",
        f"Batch 1 at {p0.image_size} x {p0.image_size} px, eval mode; latency = median (min-max) of "
        f"{result.config.latency_repeats} passes after {result.config.latency_warmup} untimed ones; GFLOPs = 2 x "
        "multiply-adds of convolutions and matrix products (torch FlopCounterMode); "
        + (
            "the detector's include the Detect head but not NMS; its latency includes Ultralytics' NMS (confidence "
            "0.001, IoU 0.7, 100 boxes, as in the evaluation)."
            if result.config.yolo
            else "the detector's include the RoI/box head but not NMS."
        ),
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "--:|" * (len(head) - 1),
    ]
    for n in result.necks:
        p = n.profile
        row = [f"`{n.label}`", f"{p.neck_params:,}", f"{p.neck_gflops:.4g}", _ms(p.neck_cpu)]
        row += [f"{p.detector_params:,}", f"{p.detector_gflops:.4g}", _ms(p.detector_cpu)]
        if gpu:
            row += [_ms(p.neck_gpu), _ms(p.detector_gpu)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _runs_table(result: CompareResult) -> list[str]:
    """One row per run; a YOLO comparison adds what Ultralytics' own validation measured (mAP50-95 / mAP50 of the
    final model, its interpolation and 300 boxes per image) next to necklace's COCO evaluation."""
    yolo = result.config.yolo
    head = "| neck | seed | AP | AP50 | AP_small | AP_medium | AP_large |"
    head += " Ultralytics mAP50-95 / mAP50 |" if yolo else ""
    lines = [head + " loss first -> last | train s | status |", "|---|--:|" + "--:|" * (6 + yolo) + "--:|---|"]
    for n in result.necks:
        for r in n.runs:
            mt = r.metrics
            vals = [_pct(v) if v >= 0 else "n/a" for v in (mt.ap, mt.ap50, mt.ap_small, mt.ap_medium, mt.ap_large)]
            if yolo:
                tm = r.trainer_metrics or {}
                keys = ("metrics/mAP50-95(B)", "metrics/mAP50(B)")
                vals.append(" / ".join(_pct(tm[k]) for k in keys) if all(k in tm for k in keys) else "-")
            lines.append(
                f"| `{n.label}` | {r.seed} | {' | '.join(vals)} | {r.loss_first:.3f} -> {r.loss_last:.3f} | "
                f"{r.train_time:.0f} | {r.status} |"
            )
    return lines


def _setting(base: TrainConfig | YoloTrainConfig) -> str:
    if isinstance(base, YoloTrainConfig):
        return (
            f"{base.detector} (Ultralytics' backbone, Detect head, trainer, loss and schedule; P{base.levels[0]}-"
            f"P{base.levels[1]}) on `{base.data}` data"
        )
    return f"{base.detector} + `{base.backbone}` backbone on `{base.data}` data"


def _length(base: TrainConfig | YoloTrainConfig) -> str:
    if isinstance(base, YoloTrainConfig):
        return f"{base.epochs} epochs of batch {base.batch_size}"
    return f"{base.steps} steps of batch {base.batch_size}" if base.steps else f"{base.epochs} epochs"


def _shared(base: TrainConfig | YoloTrainConfig) -> dict[str, Any]:
    d = base.to_dict()
    for k in (*_RUN_FIELDS, *(RESUMABLE_YOLO_CHANGES if isinstance(base, YoloTrainConfig) else RESUMABLE_CHANGES)):
        d.pop(k, None)
    return d
