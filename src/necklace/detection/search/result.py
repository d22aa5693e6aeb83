"""What :func:`~necklace.detection.search.search` returns (:class:`SearchResult`) and its ``report.md``.

Example:
    >>> r = SearchResult(SearchConfig(n_trials=4), records=(), verdict=None, compare=None, limit_ms=1.0,
    ...                  reference_label="fpn", reference_ms=0.5, wall_time=60.0)
    >>> r.to_dict()["counts"]["started"], r.winner_path is None
    (0, True)
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from necklace.detection.compare import CompareResult, YoloTrainConfig
from necklace.detection.compare.config import METRIC_LABELS
from necklace.detection.search.config import SearchConfig
from necklace.detection.search.report import counts, trials_table
from necklace.detection.search.trials import TrialRecord
from necklace.detection.search.verdict import Verdict, finalist_label

__all__ = ["SearchResult", "report_markdown"]


@dataclass(frozen=True)
class SearchResult:
    """Everything a search found: every trial, the verdict (``None`` when skipped or nothing trained), the
    ``compare`` result behind it, the budget in ms, the reference neck, phase timings, files and notes.

    Example:
        >>> r = SearchResult(SearchConfig(), records=(), verdict=None, compare=None, limit_ms=1.2,
        ...                  reference_label="fpn", reference_ms=0.4, wall_time=1.0)
        >>> r.counts["trained"], "## Verdict" in report_markdown(r)
        (0, True)
    """

    config: SearchConfig
    records: tuple[TrialRecord, ...]
    verdict: Verdict | None
    compare: CompareResult | None
    limit_ms: float
    reference_label: str
    reference_ms: float
    wall_time: float
    phases: dict[str, float] = field(default_factory=dict)
    sizing: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    data: str = ""
    command: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        return counts(self.records)

    @property
    def winner_path(self) -> Path | None:
        """``winner.yaml``: the graph of the neck to use (the winner, or the neck that stands)."""
        return self.files.get("winner")

    def record(self, label: str) -> TrialRecord:
        """The trial of a verdict label (``s12-fpn-p2p6``, ``fpn``)."""
        for r in self.records:
            if finalist_label(r) == label and r.duplicate_of is None:
                return r
        raise KeyError(f"no trial labelled {label!r}")

    def to_dict(self) -> dict[str, Any]:
        from necklace import __version__

        return {
            "necklace_version": __version__,
            "config": self.config.to_dict(),
            "data": self.data,
            "budget": self.config.latency_budget,
            "limit_ms": self.limit_ms,
            "reference": {"label": self.reference_label, "ms": self.reference_ms},
            "counts": self.counts,
            "verdict": self.verdict.to_dict() if self.verdict else None,
            "compare": self.compare.to_dict() if self.compare else None,
            "trials": [r.to_dict() for r in self.records],
            "wall_time_s": self.wall_time,
            "phases_s": self.phases,
            "sizing": self.sizing,
            "fidelity": self.fidelity,
            "files": {k: str(v) for k, v in self.files.items()},
            "notes": list(self.notes),
            "command": self.command,
        }


def _minutes(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def _phase_line(phases: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {_minutes(v)}" for k, v in phases.items())


def report_markdown(result: SearchResult) -> str:
    """The search's ``report.md``."""
    cfg, base = result.config, result.config.base
    c = result.counts
    m = METRIC_LABELS[cfg.metric]
    yolo = isinstance(base, YoloTrainConfig)
    if isinstance(base, YoloTrainConfig):
        lo, hi = base.levels
        maps = ", ".join(f"{c}ch /{st}" for c, st in result.fidelity.get("in_specs", []))
        model = (
            f"{base.detector} (Ultralytics YOLO: its own backbone and Detect head on levels P{lo}-P{hi}; every "
            f"candidate outputs those levels and is built on the backbone's maps [{maps}])"
        )
    else:
        model = f"{base.detector} + `{base.backbone}` backbone"
    lines = [
        f"# necklace search: {result.data or base.data} under a latency budget of {cfg.budget}",
        "",
        f"{model} at {base.image_size} px; latency of the {cfg.latency_scope} "
        f"at {base.image_size} px (batch 1) on `{cfg.runtime}` / {cfg.device}, budget **{result.limit_ms:.3g} ms** "
        f"(reference neck `{result.reference_label}`: {result.reference_ms:.3g} ms); optimised metric: {m}.",
        "",
    ]
    if yolo:
        head = result.fidelity.get("head", "torchvision")
        lines += [
            "**Read the trials as a proxy**: the early rounds (every trial below) rank necks on the maps of the "
            f"frozen {base.detector} backbone with necklace's proxy head ({head}, "
            "trained on cached maps); only the verdict trains inside YOLO, with Ultralytics' trainer, Detect head "
            "and loss.",
            "",
        ]
    lines += [
        "## Verdict",
        "",
    ]
    if result.verdict is not None:
        lines += [f"- {line}" for line in result.verdict.lines]
        rec = result.verdict.recommended
        if isinstance(base, YoloTrainConfig):
            use = f"`build_yolo('{base.model_yaml}', 'winner.yaml', levels={tuple(base.levels)})`"
        else:
            use = "`necklace.GraphNeck.from_file('winner.yaml')`"
        lines.append(f"- The neck to use: `{rec}`, its graph in `winner.yaml` ({use}).")
    else:
        lines.append("- No verdict: " + ("it was switched off." if not cfg.verdict else "nothing finished training."))
    lines += [
        "",
        f"**Trials**: {c['started']} started: {c['rejected']} rejected on latency (never trained), {c['trained']} "
        f"trained ({c['complete']} finished every rung, {c['pruned']} pruned), {c['reused']} identical to an earlier "
        f"trial (result reused), {c['failed']} failed. **Wall time**: {_minutes(result.wall_time)} "
        f"({_phase_line(result.phases)}).",
        "",
        "![metric vs latency](search.png)",
        "",
    ]
    if result.compare is not None:
        vc = result.compare.config
        if isinstance(base, YoloTrainConfig):
            recipe = (
                f"Inside {base.detector}: {base.epochs} epochs of batch {base.batch_size} by Ultralytics' trainer "
                "(its Detect head, loss and schedule), end to end from random weights"
            )
        else:
            recipe = (
                f"{base.steps or base.epochs} {'steps' if base.steps else 'epochs'} of batch {base.batch_size}, end "
                "to end (backbone included, from scratch)"
            )
        lines += [
            "## The finalists at the full recipe (`compare`)",
            "",
            f"{recipe}, seeds {list(vc.seeds)}, evaluated on the validation data "
            "(never seen by the search); mean ± std over seeds. Every run is under `verdict/` "
            "(`verdict/report.md` has compare's own report).",
            "",
            result.compare.table(),
            "",
            "compare's latency columns time the eager neck (BatchNorm not folded) and take the median under this "
            "machine's load; the budget was judged on the deployed neck (`necklace.deploy`, runtime "
            f"`{cfg.runtime}`) against the reference, as in the trials table.",
            "",
        ]
    lines += [
        "## Every trial",
        "",
        f"Latency: lower quartile of timings interleaved with the reference neck's, as a ratio x the reference's "
        f"latency ({cfg.latency_scope}, `{cfg.runtime}`). {m} and AP_small: COCO AP x 100 on the held-out training "
        f"images after the trial's last rung{' (proxy head on the frozen YOLO backbone)' if yolo else ''} "
        f"(rungs at steps {cfg.rung_schedule()}; a trial continues past a "
        f"rung only when in the top 1/{cfg.reduction_factor} there: {cfg.pruner.replace('_', ' ')}).",
        "",
        trials_table(result.records, cfg.metric),
        "",
        "## How it was run",
        "",
        f"- command: `{result.command}`"
        if result.command
        else "- called from Python: `necklace.detection.search.search(config)`",
    ]
    f = result.fidelity
    if f and yolo:
        lines.append(
            f"- fidelity (a proxy): neck + necklace's proxy head ({f.get('head')}, torchvision) trained on cached "
            f"maps of the frozen YOLO backbone ({f.get('backbone', '')}); images reach it through torchvision's "
            "transform with the ImageNet normalisation undone (YOLO reads RGB in [0, 1]); necks whose outputs differ "
            "in width get a 1x1 projection to one width there (torchvision's heads are shared across levels); "
            f"{f.get('train_images')} training images, evaluated on {f.get('holdout_images')} held-out ones; "
            f"cache built in {_minutes(float(f.get('cache_seconds', 0)))}. Only the verdict trains inside YOLO"
        )
    elif f:
        lines.append(
            f"- fidelity: neck + head trained on cached maps of a frozen backbone ({f.get('backbone', '')}); "
            f"{f.get('train_images')} training images, evaluated on {f.get('holdout_images')} held-out ones; "
            f"cache built in {_minutes(float(f.get('cache_seconds', 0)))}"
        )
    s = result.sizing
    if s:
        lines.append(
            "- study size: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items())
        )
    hand = [f"`{r.label}` {json.dumps(r.options)}" for r in result.records if r.kind == "hand-made"]
    lines += [
        f"- hand-made necks: {', '.join(dict.fromkeys(hand))}",
        f"- machine: {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"{platform.platform()}"
        + (f", load average {[round(v, 2) for v in os.getloadavg()]}" if hasattr(os, "getloadavg") else ""),
        "- files: `trials.csv` / `trials.md` (every trial), `results.json` (every number), `study.journal` (the Optuna "
        "study: run the same command again to resume), `winner.yaml`",
    ]
    lines += [f"- note: {n}" for n in result.notes]
    return "\n".join(lines) + "\n"
