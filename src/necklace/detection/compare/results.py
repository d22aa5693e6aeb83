"""What a comparison produced: one run (:class:`RunResult`), a neck's profile (:class:`NeckProfile`), a neck
over its seeds (:class:`NeckResult`) and the whole comparison (:class:`CompareResult`, with its table)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from necklace.bench import LatencyStats
from necklace.detection.compare.config import METRIC_LABELS, METRICS, CompareConfig, NeckChoice
from necklace.detection.compare.stats import NO_VERDICT_TEXT, RULE_TEXT, Significance, Stat, significance
from necklace.detection.evaluate import CocoMetrics

__all__ = ["CompareResult", "NeckProfile", "NeckResult", "RunResult"]


@dataclass(frozen=True)
class RunResult:
    """One ``(neck, seed)`` training run.

    Example:
        >>> run = RunResult("fpn", 0, Path("runs/fpn/seed0"), CocoMetrics.from_stats([0.3] * 12), train_time=60.0,
        ...                 steps=100, loss_first=2.5, loss_last=1.2, status="trained")
        >>> run.to_dict()["metrics"]["ap50"], run.to_dict()["status"]
        (0.3, 'trained')
    """

    label: str
    seed: int
    output: Path
    metrics: CocoMetrics
    train_time: float  # seconds of training (without evaluation), over all resumptions
    steps: int
    loss_first: float  # mean total loss of the first 10 % of steps (at most 20)
    loss_last: float  # ... of the last 10 %
    status: str  # "trained" | "resumed" | "reused"
    #: what the detector's own trainer measured, when it is not necklace's (Ultralytics' final mAP50-95 / mAP50)
    trainer_metrics: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        extra = {} if self.trainer_metrics is None else {"trainer_metrics": dict(self.trainer_metrics)}
        return {
            "label": self.label,
            "seed": self.seed,
            "output": str(self.output),
            "metrics": self.metrics.to_dict(),
            "train_time_s": self.train_time,
            "steps": self.steps,
            "loss_first": self.loss_first,
            "loss_last": self.loss_last,
            "status": self.status,
            **extra,
        }


@dataclass(frozen=True)
class NeckProfile:
    """Size and speed of one neck inside its detector, at ``image_size`` x ``image_size``, batch 1, eval mode.

    Example:
        >>> ms = LatencyStats.from_seconds([0.001, 0.002])
        >>> p = NeckProfile(128, 35_008, 0.0071, 559_627, 0.088, neck_cpu=ms, detector_cpu=ms, threads=2)
        >>> p.to_dict()["neck_cpu_ms"]["median_ms"], p.to_dict()["detector_gpu_ms"]
        (1.5, None)
    """

    image_size: int
    neck_params: int
    neck_gflops: float
    detector_params: int
    detector_gflops: float
    neck_cpu: LatencyStats
    detector_cpu: LatencyStats
    threads: int
    neck_gpu: LatencyStats | None = None
    detector_gpu: LatencyStats | None = None
    gpu_name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "neck_params": self.neck_params,
            "neck_gflops": self.neck_gflops,
            "detector_params": self.detector_params,
            "detector_gflops": self.detector_gflops,
            "neck_cpu_ms": self.neck_cpu.to_dict(),
            "detector_cpu_ms": self.detector_cpu.to_dict(),
            "cpu_threads": self.threads,
            "neck_gpu_ms": self.neck_gpu.to_dict() if self.neck_gpu else None,
            "detector_gpu_ms": self.detector_gpu.to_dict() if self.detector_gpu else None,
            "gpu": self.gpu_name,
        }


@dataclass(frozen=True)
class NeckResult:
    """Everything about one neck: its runs, the per-metric statistics over seeds, its profile, the verdict.

    Example:
        >>> pafpn = _example_result().neck("pafpn")
        >>> pafpn.label, round(pafpn.stats["ap"].mean, 3), pafpn.vs_best.exceeds_noise
        ('pafpn', 0.205, True)
    """

    choice: NeckChoice
    runs: tuple[RunResult, ...]
    stats: dict[str, Stat]
    profile: NeckProfile
    vs_best: Significance | None  # None for the best neck itself
    learned: bool = True  # every run reached the learning floor (CompareConfig.learned_ap50)

    @property
    def label(self) -> str:
        return self.choice.label

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.choice.to_dict(),
            "runs": [r.to_dict() for r in self.runs],
            "stats": {k: s.to_dict() for k, s in self.stats.items()},
            "profile": self.profile.to_dict(),
            "vs_best": self.vs_best.to_dict() if self.vs_best else None,
            "learned": self.learned,
        }


@dataclass(frozen=True)
class CompareResult:
    """What :func:`compare` returns (``results.json`` holds the same, via :meth:`to_dict`).

    Example:
        >>> result = _example_result()  # two necks, hand-made numbers
        >>> result.best, result.rule, result.to_dict()["necks"][1]["vs_best"]["exceeds_noise"]
        ('fpn', '2std', True)
        >>> print(result.table().splitlines()[2])
        | `fpn` | 31.0 ± 1.4 | 50.0 ± 0.0 | ... | 30,000 | 7 | 0.55 | 6.0 | **best** |
    """

    config: CompareConfig
    necks: tuple[NeckResult, ...]
    best: str
    wall_time: float
    files: dict[str, Path]
    environment: dict[str, Any]
    notes: tuple[str, ...] = ()

    def neck(self, label: str) -> NeckResult:
        for n in self.necks:
            if n.label == label:
                return n
        raise KeyError(f"no neck labelled {label!r}; labels: {[n.label for n in self.necks]}")

    @property
    def ranked(self) -> bool:
        """Whether the best neck learned, so that comparing the others with it means something (see
        :attr:`CompareConfig.learned_ap50`); each neck's :attr:`NeckResult.vs_best` says whether it has a verdict."""
        return self.neck(self.best).learned

    @property
    def rule(self) -> str:
        rules = {n.vs_best.rule for n in self.necks if n.vs_best is not None}
        return next(iter(rules)) if len(rules) == 1 else ("none" if not rules else "mixed")

    def to_dict(self) -> dict[str, Any]:
        from necklace import __version__

        return {
            "necklace_version": __version__,
            "config": self.config.to_dict(),
            "metric": self.config.metric,
            "best": self.best,
            "ranked": self.ranked,
            "rule": self.rule,
            "rule_text": {k: v for k, v in RULE_TEXT.items() if k in {self.rule, "none"} or self.rule == "mixed"},
            "no_verdict_text": NO_VERDICT_TEXT,
            "wall_time_s": self.wall_time,
            "environment": self.environment,
            "necks": [n.to_dict() for n in self.necks],
            "files": {k: str(v) for k, v in self.files.items()},
            "notes": list(self.notes),
        }

    def table(self) -> str:
        """The Markdown table of the report."""
        return _table(self)


def _example_result() -> CompareResult:
    """A :class:`CompareResult` with hand-made numbers (for the examples): ``fpn`` clearly ahead of ``pafpn``."""
    ms = LatencyStats.from_seconds([0.0005, 0.0006])
    det = LatencyStats.from_seconds([0.006])
    config = CompareConfig(necks=(NeckChoice("fpn"), NeckChoice("pafpn")))
    necks: list[NeckResult] = []
    for label, aps, vs in (
        ("fpn", (0.30, 0.32), None),
        ("pafpn", (0.20, 0.21), significance([0.30, 0.32], [0.20, 0.21])),
    ):
        runs = tuple(
            RunResult(
                label, seed, Path(label), CocoMetrics.from_stats([ap, 0.5, *[ap] * 10]), 60.0, 100, 2.5, 1.2, "trained"
            )
            for seed, ap in enumerate(aps)
        )
        stats = {m: Stat.of([getattr(r.metrics, m) for r in runs]) for m in METRICS}
        profile = NeckProfile(128, 30_000, 0.007, 500_000, 0.09, ms, det, 2)
        necks.append(NeckResult(config.necks[len(necks)], runs, stats, profile, vs))
    return CompareResult(config, tuple(necks), "fpn", 1.0, {}, {})


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}"


def _pm(stat: Stat) -> str:
    if stat.n == 0:
        return "n/a"
    return _pct(stat.mean) if stat.n == 1 else f"{_pct(stat.mean)} ± {_pct(stat.std)}"


def _verdict_cell(n: NeckResult, ranked: bool) -> str:
    s = n.vs_best
    if s is None:
        return "**best**" if ranked else "highest (not ranked: did not learn)"
    gap = f"{-100 * s.diff:+.1f}" if round(100 * s.diff, 1) != 0 else "0.0"
    if s.exceeds_noise is None:
        why = {"one_seed": "one seed", "no_spread": "zero spread"}.get(s.reason or "", "")
        return f"{gap} (not ranked: did not learn)" if s.reason == "not_learned" else f"{gap} ({why}: no verdict)"
    return f"{gap} ({'beyond noise' if s.exceeds_noise else 'within noise'})"


def _flops_unit(result: CompareResult) -> tuple[str, float]:
    """Neck FLOPs in GFLOPs, or MFLOPs when every neck is below 1 GFLOP (CPU-sized comparisons)."""
    small = all(n.profile.neck_gflops < 1 for n in result.necks)
    return ("MFLOPs", 1e3) if small else ("GFLOPs", 1.0)


def _table(result: CompareResult) -> str:
    gpu = any(n.profile.detector_gpu is not None for n in result.necks)
    unit, scale = _flops_unit(result)
    head = ["neck", "AP", "AP50", "AP_small", "AP_medium", "AP_large"]
    head += ["neck params", f"neck {unit}", "neck CPU ms", "detector CPU ms"]
    if gpu:
        head += ["neck GPU ms", "detector GPU ms"]
    head.append(f"{METRIC_LABELS[result.config.metric]} vs best")
    rows = []
    for n in result.necks:
        p = n.profile
        row = [f"`{n.label}`"] + [_pm(n.stats[m]) for m in ("ap", "ap50", "ap_small", "ap_medium", "ap_large")]
        row += [f"{p.neck_params:,}", f"{p.neck_gflops * scale:.3g}", f"{p.neck_cpu.median_ms:.2f}"]
        row.append(f"{p.detector_cpu.median_ms:.1f}")
        if gpu:
            row += [
                f"{p.neck_gpu.median_ms:.2f}" if p.neck_gpu else "-",
                f"{p.detector_gpu.median_ms:.2f}" if p.detector_gpu else "-",
            ]
        row.append(_verdict_cell(n, result.ranked))
        rows.append(row)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "--:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
