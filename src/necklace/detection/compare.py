"""Compare necks on one detection task: same backbone, head, data, schedule and seeds; train, evaluate, profile.

:class:`CompareConfig` says which necks (each with its own options) and what they share (a base
:class:`~necklace.detection.train.TrainConfig`, the seeds); :func:`compare` runs every ``(neck, seed)`` pair with
:func:`~necklace.detection.train.train` (COCO evaluation on the validation data), profiles every neck once (params
and GFLOPs of the neck and of the whole detector, CPU latency of both, GPU latency when CUDA is there) and writes
into ``config.output``:

- ``runs/<neck>/seed<k>/``: each training run (checkpoint, ``log.csv``, ``metrics.json``);
- ``results.json``: every number (per run, per neck: mean, std, min, max over seeds; profile; verdict);
- ``report.md``: the table, one verdict line per neck, how it was run and how long it took;
- ``ap_by_size.png`` (AP / AP_small / AP_medium / AP_large per neck, error bars = seed std, dots = seeds) and
  ``ap_vs_latency.png`` (mean AP against neck and detector latency, the Pareto front marked); needs matplotlib.

**Resumable.** A finished run (complete checkpoint + ``metrics.json``) is reused, an interrupted one (Ctrl-C,
SIGTERM, a crash) is resumed from its checkpoint, so re-running the same command after an interruption loses at
most the steps since the last checkpoint. A run directory trained with a different config is an error.

**Noise.** Seeds change the model initialisation and the data order (the data set itself stays the same), so the
spread over seeds is the training noise a user would see. Each neck is compared with the best one (highest mean of
``config.metric``, AP by default) by :func:`significance`: with 3+ seeds per neck, Welch's t-test (two-sided,
5 %); with 2 seeds, the heuristic ``|difference of means| > 2 x sqrt(std_a^2 + std_b^2)`` (std over seeds); with one
seed there is no spread and no verdict. The rule used is written into the report.

Example:
    >>> cfg = CompareConfig(necks=("fpn", "pafpn"), seeds=(0, 1))
    >>> [n.label for n in cfg.necks], cfg.run_dir(cfg.necks[1], 1).as_posix()
    (['fpn', 'pafpn'], 'runs/compare/runs/pafpn/seed1')
    >>> cfg.run_config(cfg.necks[1], 1).neck, cfg.run_config(cfg.necks[1], 1).seed
    ('pafpn', 1)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from necklace.bench import LatencyStats, count_flops, count_params, measure_latency
from necklace.detection.checkpoint import load_checkpoint
from necklace.detection.evaluate import CocoMetrics
from necklace.detection.train import (
    CHECKPOINT_NAME,
    RESUMABLE_CHANGES,
    TrainConfig,
    _plain,
    build_dataset,
    load_model,
    train,
)
from necklace.registry import neck_info

__all__ = [
    "DEFAULT_BASE",
    "DEFAULT_NECKS",
    "METRICS",
    "RULE_TEXT",
    "CompareConfig",
    "CompareResult",
    "NeckChoice",
    "NeckProfile",
    "NeckResult",
    "RunResult",
    "Significance",
    "Stat",
    "compare",
    "default_neck_options",
    "pareto_front",
    "plot_ap_by_size",
    "plot_ap_vs_latency",
    "significance",
    "verdict_lines",
    "welch_t_test",
]

#: Metrics aggregated over seeds (fields of :class:`~necklace.detection.CocoMetrics`), in table order.
METRICS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
_METRIC_LABELS = {
    "ap": "AP",
    "ap50": "AP50",
    "ap75": "AP75",
    "ap_small": "AP_small",
    "ap_medium": "AP_medium",
    "ap_large": "AP_large",
}
#: Options each built-in pyramid neck gets in a comparison unless overridden: one width, the same levels (P3-P6),
#: so the necks differ only in how they mix the levels. Other necks use their own defaults.
_SHARED = {"width": 32, "levels": [3, 6]}
_DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "fpn": dict(_SHARED),
    "pafpn": dict(_SHARED),
    "bifpn": {**_SHARED, "repeats": 2},
    "augfpn": dict(_SHARED),
}
#: Faster R-CNN settings that keep a CPU step short (smaller box head, fewer proposals and sampled boxes).
_CPU_FASTER_RCNN = {
    "representation_size": 128,
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 64,
    "rpn_pre_nms_top_n_train": 300,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 100,
}
#: The built-in comparison: a CPU-sized Faster R-CNN on the tiny backbone, 256 synthetic 128 px images (48 for
#: evaluation), 1200 steps of 4 images: about 10 minutes on 2 CPU cores for 3 necks x 2 seeds.
DEFAULT_BASE = TrainConfig(
    detector="faster_rcnn",
    backbone="tiny",
    backbone_options={"width": 16},
    detector_options=_CPU_FASTER_RCNN,
    data="synthetic",
    data_options={"num_images": 256, "val_images": 48},
    image_size=128,
    batch_size=4,
    epochs=None,
    steps=1200,
    log_every=50,
    checkpoint_every=200,
    tensorboard=False,
    eval=True,
)
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_RUN_FIELDS = ("neck", "neck_options", "seed", "output", "eval")  # set per run by CompareConfig.run_config


def default_neck_options(name: str) -> dict[str, Any]:
    """Options a neck gets in a comparison unless overridden (``fpn``/``pafpn``/``augfpn``: width 32, P3-P6;
    ``bifpn``: the same, 2 cells); other necks: ``{}`` (their own defaults).

    Example:
        >>> default_neck_options("bifpn"), default_neck_options("yolo_pafpn")
        ({'width': 32, 'levels': [3, 6], 'repeats': 2}, {})
    """
    neck_info(name)  # unknown names fail here, with the known ones listed
    return {k: list(v) if isinstance(v, list) else v for k, v in _DEFAULT_OPTIONS.get(name, {}).items()}


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class NeckChoice:
    """One contender: a registered neck, its options, and the label it is reported (and stored) under.

    Example:
        >>> NeckChoice("bifpn", {"repeats": 3}, label="bifpn3")
        NeckChoice(name='bifpn', options={'repeats': 3}, label='bifpn3')
        >>> NeckChoice("fpn").label
        'fpn'
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        neck_info(self.name)
        if not isinstance(self.options, Mapping):
            raise TypeError(f"NeckChoice {self.name!r}: options must be a dict, got {type(self.options).__name__}.")
        # the plain-data copy TrainConfig makes (tuples -> lists), so configs compare equal after a round trip
        object.__setattr__(self, "options", _plain(self.options, "neck_options"))
        label = self.label or self.name
        if not _LABEL.match(label):
            raise ValueError(
                f"NeckChoice label {label!r}: use letters, digits and '_.+-' (it names the run directory)."
            )
        object.__setattr__(self, "label", label)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options), "label": self.label}


def _as_choice(value: Any) -> NeckChoice:
    if isinstance(value, NeckChoice):
        return value
    if isinstance(value, str):
        return NeckChoice(value, default_neck_options(value))
    if isinstance(value, Mapping):
        return NeckChoice(**dict(value))
    raise TypeError(f"CompareConfig.necks: give names, NeckChoice or dicts, got {type(value).__name__}.")


DEFAULT_NECKS = tuple(NeckChoice(n, default_neck_options(n)) for n in ("fpn", "pafpn", "bifpn"))


@dataclass(frozen=True)
class CompareConfig:
    """What :func:`compare` runs.

    Args:
        necks: the contenders: :class:`NeckChoice` objects, dicts of their fields, or names (a name gets
            :func:`default_neck_options`). Labels must be unique.
        base: everything the runs share (detector, backbone, data, schedule, ...); its ``neck``,
            ``neck_options``, ``seed`` and ``output`` are replaced per run and ``eval`` is switched on.
        seeds: one run per neck and seed.
        output: directory for the runs and the results.
        metric: the metric necks are ranked and tested on (one of :data:`METRICS`).
        latency_image_size: image side for the latency/FLOPs profile (default ``base.image_size``).
        latency_repeats, latency_warmup: timed and untimed (first) forward passes per measurement.
        gpu_latency: also time on CUDA; ``None``: when CUDA is available.

    Example:
        >>> cfg = CompareConfig(necks=("fpn", {"name": "bifpn", "options": {"width": 16}}), seeds=(0,))
        >>> CompareConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    necks: tuple[NeckChoice, ...] = DEFAULT_NECKS
    base: TrainConfig = DEFAULT_BASE
    seeds: tuple[int, ...] = (0, 1)
    output: str = "runs/compare"
    metric: str = "ap"
    latency_image_size: int | None = None
    latency_repeats: int = 30
    latency_warmup: int = 10
    gpu_latency: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.necks, (str, NeckChoice, Mapping)) or not isinstance(self.necks, Sequence):
            raise TypeError("CompareConfig.necks must be a sequence of neck names / NeckChoice, e.g. ('fpn', 'pafpn').")
        necks = tuple(_as_choice(n) for n in self.necks)
        if not necks:
            raise ValueError("CompareConfig.necks is empty; give at least one neck, e.g. ('fpn', 'pafpn').")
        labels = [n.label for n in necks]
        dup = sorted({lb for lb in labels if labels.count(lb) > 1})
        if dup:
            raise ValueError(
                f"CompareConfig.necks: labels {dup} appear twice; give the variants distinct labels "
                "(NeckChoice(name, options, label=...))."
            )
        object.__setattr__(self, "necks", necks)
        if not isinstance(self.base, TrainConfig):
            raise TypeError(f"CompareConfig.base must be a TrainConfig, got {type(self.base).__name__}.")
        if isinstance(self.seeds, int) or not isinstance(self.seeds, Sequence) or not self.seeds:
            raise ValueError(f"CompareConfig.seeds must be a non-empty sequence of ints, got {self.seeds!r}.")
        seeds = tuple(self.seeds)
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"CompareConfig.seeds must be distinct non-negative ints, got {list(seeds)}.")
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "output", str(self.output))
        if self.metric not in METRICS:
            raise ValueError(f"CompareConfig.metric {self.metric!r}: choose one of {list(METRICS)}.")
        for name, value, low in (
            ("latency_image_size", self.latency_image_size, 32),
            ("latency_repeats", self.latency_repeats, 1),
            ("latency_warmup", self.latency_warmup, 0),
        ):
            if value is None and name == "latency_image_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"CompareConfig.{name} must be an int >= {low}, got {value!r}.")

    # -------------------------------------------------------------------------------------------- runs
    def run_dir(self, neck: NeckChoice, seed: int) -> Path:
        """``<output>/runs/<label>/seed<seed>``."""
        return Path(self.output) / "runs" / neck.label / f"seed{seed}"

    def run_config(self, neck: NeckChoice, seed: int) -> TrainConfig:
        """The :class:`TrainConfig` of one run: ``base`` with this neck, seed and run directory, ``eval=True``."""
        return self.base.replace(
            neck=neck.name,
            neck_options=dict(neck.options),
            seed=seed,
            output=str(self.run_dir(neck, seed)),
            eval=True,
        )

    @property
    def profile_image_size(self) -> int:
        return int(self.latency_image_size or self.base.image_size)

    # -------------------------------------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready); ``base`` as :meth:`TrainConfig.to_dict`."""
        return {
            "necks": [n.to_dict() for n in self.necks],
            "base": self.base.to_dict(),
            "seeds": list(self.seeds),
            "output": self.output,
            "metric": self.metric,
            "latency_image_size": self.latency_image_size,
            "latency_repeats": self.latency_repeats,
            "latency_warmup": self.latency_warmup,
            "gpu_latency": self.gpu_latency,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompareConfig:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"CompareConfig: unknown keys {unknown}; expected some of {sorted(names)}.")
        kw = dict(data)
        if "base" in kw and isinstance(kw["base"], Mapping):
            kw["base"] = TrainConfig.from_dict(kw["base"])
        if "necks" in kw:
            kw["necks"] = tuple(kw["necks"])
        if "seeds" in kw:
            kw["seeds"] = tuple(kw["seeds"])
        return cls(**kw)

    def replace(self, **changes: Any) -> CompareConfig:
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (0 for one value), min and max of a metric over seeds.

    Example:
        >>> s = Stat.of([0.30, 0.34, 0.32])
        >>> round(s.mean, 3), round(s.std, 3), s.min, s.max, s.n
        (0.32, 0.02, 0.3, 0.34, 3)
    """

    mean: float
    std: float
    min: float
    max: float
    n: int
    values: tuple[float, ...] = ()

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        vals = tuple(float(v) for v in values)
        if not vals:
            return cls(math.nan, math.nan, math.nan, math.nan, 0, ())
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return cls(statistics.fmean(vals), std, min(vals), max(vals), len(vals), vals)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": _num(self.mean),
            "std": _num(self.std),
            "min": _num(self.min),
            "max": _num(self.max),
            "n": self.n,
            "values": list(self.values),
        }


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln) * _betacf(b, a, 1.0 - x) / b


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Welch's two-sample t-test: ``(t, degrees of freedom, two-sided p)`` for ``mean(a) - mean(b)``.

    Needs 2+ values per side; equal constant samples give ``(0, nan, 1)``.

    Example:
        >>> t, df, p = welch_t_test([1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0])
        >>> round(t, 3), round(df, 1), round(p, 4)
        (-2.191, 6.0, 0.071)
    """
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"welch_t_test needs 2+ values per sample, got {len(a)} and {len(b)}.")
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se2 = va + vb
    if se2 == 0.0:
        return (0.0, math.nan, 1.0) if ma == mb else (math.copysign(math.inf, ma - mb), math.nan, 0.0)
    t = (ma - mb) / math.sqrt(se2)
    df = se2**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    p = _betainc(df / 2.0, 0.5, df / (df + t * t))
    return t, df, min(1.0, max(0.0, p))


@dataclass(frozen=True)
class Significance:
    """Is the difference between two necks' metric larger than the seed noise? See :func:`significance`.

    Example:
        >>> s = significance([0.30, 0.32], [0.20, 0.21])
        >>> s.rule, s.exceeds_noise, round(s.diff, 3), s.to_dict()["p"]
        ('2std', True, 0.105, None)
    """

    diff: float  # mean(a) - mean(b)
    threshold: float | None  # 2-seed rule: the |diff| needed; nan/None otherwise
    t: float | None
    df: float | None
    p: float | None
    rule: str  # "welch" | "2std" | "none"
    exceeds_noise: bool | None  # None: cannot tell (one seed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "diff": _num(self.diff),
            "threshold": _num(self.threshold),
            "t": _num(self.t),
            "df": _num(self.df),
            "p": _num(self.p),
            "rule": self.rule,
            "exceeds_noise": self.exceeds_noise,
        }


RULE_TEXT = {
    "welch": "Welch's two-sided t-test over the seeds, p < 0.05 (both necks have 3+ seeds)",
    "2std": "|difference of means| > 2 x sqrt(std_a^2 + std_b^2), std = sample standard deviation over the seeds "
    "(2 seeds: a heuristic, not a formal test; the stds of 2 values are themselves rough)",
    "none": "no verdict with a single seed (no spread to compare with); run with more --seeds",
}


def significance(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> Significance:
    """Compare the per-seed values of two necks.

    - both 3+ seeds: Welch's t-test, the difference exceeds the noise when ``p < alpha``;
    - otherwise, both 2+ seeds: ``|mean(a) - mean(b)| > 2 * sqrt(std(a)**2 + std(b)**2)``;
    - a side with one seed: no verdict (``exceeds_noise is None``).

    Example:
        >>> significance([0.30, 0.32], [0.20, 0.21]).exceeds_noise  # 0.105 apart, threshold 2*0.016
        True
        >>> s = significance([0.30, 0.32], [0.29, 0.33])
        >>> s.exceeds_noise, s.rule, round(s.threshold, 4)
        (False, '2std', 0.0632)
        >>> significance([0.3, 0.31, 0.32], [0.2, 0.21, 0.22]).rule, significance([0.3], [0.2]).exceeds_noise
        ('welch', None)
    """
    diff = statistics.fmean(a) - statistics.fmean(b) if a and b else math.nan
    if len(a) >= 3 and len(b) >= 3:
        t, df, p = welch_t_test(a, b)
        return Significance(diff, None, t, df, p, "welch", bool(p < alpha))
    if len(a) >= 2 and len(b) >= 2:
        threshold = 2.0 * math.sqrt(statistics.variance(a) + statistics.variance(b))
        return Significance(diff, threshold, None, None, None, "2std", bool(abs(diff) > threshold))
    return Significance(diff, None, None, None, None, "none", None)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points ``(cost, value)`` no other point beats (lower-or-equal cost and higher-or-equal
    value, one of them strictly), sorted by cost.

    Example:
        >>> pareto_front([(1.0, 0.30), (2.0, 0.35), (3.0, 0.33), (2.5, 0.40)])
        [0, 1, 3]
    """
    front = []
    for i, (ci, vi) in enumerate(points):
        dominated = any((cj <= ci and vj >= vi) and (cj < ci or vj > vi) for j, (cj, vj) in enumerate(points) if j != i)
        if not dominated and not (math.isnan(ci) or math.isnan(vi)):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


# ------------------------------------------------------------------------------------------------ results
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

    def to_dict(self) -> dict[str, Any]:
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
            "rule": self.rule,
            "rule_text": {k: v for k, v in RULE_TEXT.items() if k in {self.rule, "none"} or self.rule == "mixed"},
            "wall_time_s": self.wall_time,
            "environment": self.environment,
            "necks": [n.to_dict() for n in self.necks],
            "files": {k: str(v) for k, v in self.files.items()},
            "notes": list(self.notes),
        }

    def table(self) -> str:
        """The Markdown table of the report."""
        return _table(self)


def _num(value: float | None) -> float | None:
    """JSON-safe number: ``None`` for nan/inf."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


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


# ------------------------------------------------------------------------------------------------ running
def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def _config_diffs(saved: Mapping[str, Any], config: TrainConfig) -> list[str]:
    now = config.to_dict()
    return [
        f"{k}: {saved.get(k)!r} there, {now[k]!r} now"
        for k in now
        if k not in RESUMABLE_CHANGES and saved.get(k, now[k]) != now[k]
    ]


def _read_metrics(path: Path) -> CocoMetrics | None:
    try:
        return CocoMetrics.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _loss_ends(history: Sequence[Mapping[str, float]]) -> tuple[float, float]:
    losses = [float(h["total"]) for h in history]
    if not losses:
        return math.nan, math.nan
    n = max(1, min(20, len(losses) // 10))
    return statistics.fmean(losses[:n]), statistics.fmean(losses[-n:])


def _run_one(config: CompareConfig, neck: NeckChoice, seed: int, progress: bool, where: str) -> RunResult:
    rc = config.run_config(neck, seed)
    out = Path(rc.output)
    ckpt_path = out / CHECKPOINT_NAME
    status, metrics, done = "trained", None, 0
    if ckpt_path.is_file():
        saved = load_checkpoint(ckpt_path)
        diffs = _config_diffs(saved["config"], rc)
        if diffs:
            raise ValueError(
                f"{str(out)!r} holds a run of another configuration ({'; '.join(diffs)}); compare into another "
                "--output directory, or delete that one to start afresh."
            )
        metrics = _read_metrics(out / "metrics.json") if saved.get("complete") else None
        status, done = ("reused" if metrics is not None else "resumed"), int(saved["step"])
    if metrics is None:
        what = f"resuming at step {done}" if status == "resumed" else "training"
        _say(progress, f"{where} {neck.label} seed {seed}: {what} -> {out}")
        result = train(rc, resume=status == "resumed", progress=progress)
        if result.metrics is None:  # pragma: no cover - train always evaluates with eval=True
            raise RuntimeError(f"training {out} returned no metrics")
        metrics = result.metrics
    state = load_checkpoint(ckpt_path)
    first, last = _loss_ends(state["history"])
    run = RunResult(
        label=neck.label,
        seed=seed,
        output=out,
        metrics=metrics,
        train_time=float(state.get("train_time", math.nan)),
        steps=int(state["step"]),
        loss_first=first,
        loss_last=last,
        status=status,
    )
    _say(
        progress,
        f"{where} {neck.label} seed {seed}: {'reused finished run, ' if status == 'reused' else ''}"
        f"AP {metrics.ap:.3f} AP50 {metrics.ap50:.3f}, loss {first:.3f} -> {last:.3f}, "
        f"{run.train_time:.0f} s of training",
    )
    return run


def _profile_image(config: CompareConfig, rc: TrainConfig) -> Tensor:
    """A validation image at the profile size (realistic post-processing load for the detector timing)."""
    dataset: Any = build_dataset(rc, "val")
    image = dataset[0][0] if len(dataset) else torch.rand(3, rc.image_size, rc.image_size)
    size = config.profile_image_size
    return nn.functional.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def _profile(config: CompareConfig, run: RunResult, progress: bool) -> NeckProfile:
    model, rc = load_model(Path(run.output) / CHECKPOINT_NAME, "cpu")
    size = config.profile_image_size
    transform: Any = model.transform
    transform.min_size, transform.max_size = (size,), size  # the detector resizes to this side
    image = _profile_image(config, rc)
    adapter: Any = model.backbone
    with torch.no_grad():
        batch = transform([image])[0].tensors  # normalised, padded: what the backbone sees
        feats = adapter.backbone(batch)
    neck: nn.Module = adapter.neck
    kw: dict[str, Any] = {"warmup": config.latency_warmup, "repeats": config.latency_repeats}
    neck_cpu = measure_latency(neck, feats, **kw)
    det_cpu = measure_latency(model, [image], **kw)
    neck_gpu = det_gpu = None
    gpu_name = None
    if config.gpu_latency or (config.gpu_latency is None and torch.cuda.is_available()):
        dev = torch.device("cuda")
        model.to(dev)
        neck_gpu = measure_latency(neck, [f.to(dev) for f in feats], **kw)
        det_gpu = measure_latency(model, [image.to(dev)], **kw)
        gpu_name = torch.cuda.get_device_name(dev)
        model.to("cpu")
    profile = NeckProfile(
        image_size=size,
        neck_params=count_params(neck),
        neck_gflops=count_flops(neck, feats) / 1e9,
        detector_params=count_params(model),
        detector_gflops=count_flops(model, [image]) / 1e9,
        neck_cpu=neck_cpu,
        detector_cpu=det_cpu,
        threads=torch.get_num_threads(),
        neck_gpu=neck_gpu,
        detector_gpu=det_gpu,
        gpu_name=gpu_name,
    )
    _say(
        progress,
        f"profile {run.label}: neck {profile.neck_params:,} params, {profile.neck_gflops:.3g} GFLOPs, "
        f"{neck_cpu.median_ms:.2f} ms CPU; detector {det_cpu.median_ms:.1f} ms CPU at {size} px",
    )
    return profile


def _environment() -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if hasattr(os, "getloadavg"):
        env["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return env


def compare(
    config: CompareConfig | None = None,
    progress: bool = True,
    command: str | None = None,
    on_run: Callable[[RunResult], None] | None = None,
) -> CompareResult:
    """Train, evaluate and profile every neck of ``config`` over its seeds; write the results (see the module
    docstring) and return them.

    Args:
        config: what to compare (default: :class:`CompareConfig` ``()``, the built-in CPU-sized comparison).
        progress: a line per run and the training progress bars on stderr.
        command: the command line to record in the report (the CLI passes it).
        on_run: called with each finished (or reused) run, e.g. to log or stop early.

    Raises:
        TrainingInterrupted: after Ctrl-C / SIGTERM during a run (its checkpoint is written; run again to resume).

    Example:
        >>> import tempfile
        >>> base = TrainConfig(backbone_options={"width": 4}, detector_options={"head_convs": 1}, image_size=64,
        ...                    data_options={"num_images": 4, "val_images": 2}, batch_size=2, steps=2,
        ...                    tensorboard=False)
        >>> cfg = CompareConfig(necks=[NeckChoice("fpn", {"width": 8})], base=base, seeds=(0,),
        ...                     output=tempfile.mkdtemp(), latency_repeats=1, latency_warmup=0)
        >>> result = compare(cfg, progress=False)
        >>> result.best, sorted(p.name for p in result.files.values())
        ('fpn', ['ap_by_size.png', 'ap_vs_latency.png', 'report.md', 'results.json'])
    """
    config = CompareConfig() if config is None else config
    if not isinstance(config, CompareConfig):
        raise TypeError(f"compare expects a CompareConfig, got {type(config).__name__}.")
    if config.gpu_latency and not torch.cuda.is_available():
        raise ValueError("CompareConfig.gpu_latency=True but CUDA is not available; use gpu_latency=None or False.")
    t0 = time.perf_counter()
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    total = len(config.necks) * len(config.seeds)
    _say(
        progress,
        f"necklace compare: {', '.join(n.label for n in config.necks)} x seeds {list(config.seeds)} "
        f"({total} runs) -> {out}",
    )
    runs: dict[str, list[RunResult]] = {}
    k = 0
    for neck in config.necks:
        for seed in config.seeds:
            k += 1
            run = _run_one(config, neck, seed, progress, f"[{k}/{total}]")
            runs.setdefault(neck.label, []).append(run)
            if on_run is not None:
                on_run(run)
    profiles = {n.label: _profile(config, runs[n.label][0], progress) for n in config.necks}
    result = _assemble(config, runs, profiles, time.perf_counter() - t0, command)
    files, notes = _write_outputs(result, command)
    wall = time.perf_counter() - t0
    result = dataclasses.replace(result, files=files, notes=result.notes + tuple(notes), wall_time=wall)
    # results.json and report.md carry the final wall time (the pictures do not show it)
    _write_text(files["results"], json.dumps(result.to_dict(), indent=2) + "\n")
    _write_text(files["report"], _report(result, command))
    _say(progress, f"done in {wall / 60:.1f} min: best {result.best}; report {files['report']}")
    return result


def _assemble(
    config: CompareConfig,
    runs: Mapping[str, Sequence[RunResult]],
    profiles: Mapping[str, NeckProfile],
    wall: float,
    command: str | None,
) -> CompareResult:
    stats: dict[str, dict[str, Stat]] = {}
    for label, rs in runs.items():
        stats[label] = {}
        for m in METRICS:
            vals = [getattr(r.metrics, m) for r in rs]
            stats[label][m] = Stat.of([v for v in vals if v >= 0])  # -1: undefined (no objects of that size)
    metric = config.metric

    def score(label: str) -> float:
        v = stats[label][metric].mean
        return -math.inf if math.isnan(v) else v

    best = max((n.label for n in config.necks), key=score)
    best_vals = stats[best][metric].values
    necks = []
    for n in config.necks:
        vs = None if n.label == best else significance(best_vals, stats[n.label][metric].values)
        necks.append(NeckResult(n, tuple(runs[n.label]), stats[n.label], profiles[n.label], vs))
    return CompareResult(config, tuple(necks), best, wall, {}, _environment())


# ------------------------------------------------------------------------------------------------ writing
def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def _write_outputs(result: CompareResult, command: str | None) -> tuple[dict[str, Path], list[str]]:
    out = Path(result.config.output)
    files = {"results": out / "results.json", "report": out / "report.md"}
    notes: list[str] = []
    try:
        files["ap_by_size"] = plot_ap_by_size(result, out / "ap_by_size.png")
        files["ap_vs_latency"] = plot_ap_vs_latency(result, out / "ap_vs_latency.png")
    except ImportError as e:
        notes.append(f"pictures skipped: {e}")
    return files, notes


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}"


def _pm(stat: Stat) -> str:
    if stat.n == 0:
        return "n/a"
    return _pct(stat.mean) if stat.n == 1 else f"{_pct(stat.mean)} ± {_pct(stat.std)}"


def _verdict_cell(n: NeckResult) -> str:
    s = n.vs_best
    if s is None:
        return "**best**"
    gap = f"{-100 * s.diff:+.1f}" if round(100 * s.diff, 1) != 0 else "0.0"
    if s.exceeds_noise is None:
        return f"{gap} (one seed: no verdict)"
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
    head.append(f"{_METRIC_LABELS[result.config.metric]} vs best")
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
        row.append(_verdict_cell(n))
        rows.append(row)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "--:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def verdict_lines(result: CompareResult) -> list[str]:
    """One sentence per neck on how it compares with the best, plus a summary sentence."""
    m = _METRIC_LABELS[result.config.metric]
    best = result.neck(result.best)
    nseeds = best.stats[result.config.metric].n
    lines = [f"**`{best.label}`** has the highest mean {m}: {_pm(best.stats[result.config.metric])} ({nseeds} seeds)."]
    beyond: list[str] = []
    within: list[str] = []
    for n in result.necks:
        s = n.vs_best
        if s is None:
            continue
        st = n.stats[result.config.metric]
        gap = f"{100 * s.diff:.1f} {m} below `{best.label}`"
        if s.exceeds_noise is None:
            lines.append(f"`{n.label}`: {_pm(st)}, {gap}; one seed, so no verdict.")
            continue
        if s.rule == "welch":
            why = f"Welch t = {s.t:.2f}, df = {s.df:.1f}, p = {s.p:.3f}"
        else:
            why = f"needs > {100 * (s.threshold or 0):.1f} to exceed the seed spread"
        verdict = "larger than the seed noise" if s.exceeds_noise else "within the seed noise"
        lines.append(f"`{n.label}`: {_pm(st)}, {gap}: {verdict} ({why}).")
        (beyond if s.exceeds_noise else within).append(n.label)
    if len(result.necks) > 1:
        if within and not beyond:
            summary = f"No neck is distinguishable from `{best.label}` here: every difference is within the seed noise."
        elif beyond and not within:
            summary = f"Every other neck is behind `{best.label}` by more than the seed noise."
        elif beyond:
            summary = (
                f"Behind `{best.label}` by more than the seed noise: {', '.join(f'`{x}`' for x in beyond)}; "
                f"within the noise: {', '.join(f'`{x}`' for x in within)}."
            )
        else:
            summary = "No verdict: run more than one seed per neck."
        lines.append(summary)
    return lines


def _learning_line(result: CompareResult) -> str:
    runs = [r for n in result.necks for r in n.runs]
    first = statistics.fmean(r.loss_first for r in runs)
    last = statistics.fmean(r.loss_last for r in runs)
    ap50 = statistics.fmean(r.metrics.ap50 for r in runs)
    lo = min(r.metrics.ap50 for r in runs)
    return (
        f"Learning signal: the training loss fell from {first:.2f} to {last:.2f} on average (first vs last 10 % of "
        f"the steps); AP50 is {100 * ap50:.1f} on average (lowest run {100 * lo:.1f}), where a detector that has "
        "learnt nothing scores about 0."
    )


def _report(result: CompareResult, command: str | None) -> str:
    cfg, base = result.config, result.config.base
    env = result.environment
    m = _METRIC_LABELS[cfg.metric]
    p0 = result.necks[0].profile
    lines = [
        f"# necklace compare: {', '.join(n.label for n in result.necks)}",
        "",
        f"{base.detector} + `{base.backbone}` backbone on `{base.data}` data at {base.image_size} px, "
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
        "| neck | seed | AP | AP50 | AP_small | AP_medium | AP_large | loss first -> last | train s | status |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for n in result.necks:
        for r in n.runs:
            mt = r.metrics
            vals = [_pct(v) if v >= 0 else "n/a" for v in (mt.ap, mt.ap50, mt.ap_small, mt.ap_medium, mt.ap_large)]
            lines.append(
                f"| `{n.label}` | {r.seed} | {' | '.join(vals)} | {r.loss_first:.3f} -> {r.loss_last:.3f} | "
                f"{r.train_time:.0f} | {r.status} |"
            )
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
        "- every number is in `results.json`; each run's checkpoint and `log.csv` are under `runs/<neck>/seed<k>/`",
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
        "multiply-adds of convolutions and matrix products (torch FlopCounterMode); the detector's include the "
        "RoI/box head but not NMS.",
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


def _length(base: TrainConfig) -> str:
    return f"{base.steps} steps of batch {base.batch_size}" if base.steps else f"{base.epochs} epochs"


def _shared(base: TrainConfig) -> dict[str, Any]:
    d = base.to_dict()
    for k in (*_RUN_FIELDS, *RESUMABLE_CHANGES):
        d.pop(k, None)
    return d


# ------------------------------------------------------------------------------------------------ pictures
def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the pictures need matplotlib: pip install 'necklace[viz]'") from e
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    tmp.replace(path)
    return path


def _colours(n: int) -> list[Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def plot_ap_by_size(result: CompareResult, path: str | Path) -> Path:
    """Grouped bars: AP, AP_small, AP_medium, AP_large (x 100) per neck; error bars = std over seeds, dots = the
    seeds."""
    plt = _pyplot()
    groups = ("ap", "ap_small", "ap_medium", "ap_large")
    names = ("all sizes", "small\n(< 32² px)", "medium", "large\n(> 96² px)")
    necks = result.necks
    width = 0.8 / len(necks)
    fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * len(groups) * max(1, len(necks)) / 2), 4.2))
    colours = _colours(len(necks))
    top = 0.0
    for i, n in enumerate(necks):
        xs = [g + (i - (len(necks) - 1) / 2) * width for g in range(len(groups))]
        means = [100 * n.stats[m].mean if n.stats[m].n else 0.0 for m in groups]
        errs = [100 * n.stats[m].std if n.stats[m].n > 1 else 0.0 for m in groups]
        ax.bar(xs, means, width * 0.92, yerr=errs, capsize=3, color=colours[i], label=n.label, alpha=0.85)
        for x, m in zip(xs, groups, strict=True):
            vals = [100 * v for v in n.stats[m].values]
            if not vals:  # undefined: no ground-truth object of that size in the evaluation data
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, color="grey")
            ax.scatter([x] * len(vals), vals, s=12, color="black", zorder=3, linewidths=0)
            top = max([top, *vals])
        top = max([top, *(a + b for a, b in zip(means, errs, strict=True))])
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(names)
    ax.set_ylabel("COCO AP x 100")
    ax.set_ylim(0, max(1.0, top * 1.15))
    nseeds = len(result.config.seeds)
    ax.set_title(f"AP by object size ({nseeds} seeds: bars = mean, whiskers = std, dots = seeds)", fontsize=10)
    ax.legend(title="neck", fontsize=9, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def plot_ap_vs_latency(result: CompareResult, path: str | Path) -> Path:
    """Mean AP (error bars = std over seeds) against CPU latency of the neck (left) and of the whole detector
    (right); the Pareto front (no neck both faster and better) is drawn as a dashed line and its necks ringed."""
    plt = _pyplot()
    metric = result.config.metric
    label = _METRIC_LABELS[metric]
    necks = result.necks
    colours = _colours(len(necks))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    size = necks[0].profile.image_size
    for ax, which, title in (
        (axes[0], "neck", "neck alone"),
        (axes[1], "detector", "whole detector (backbone + neck + head + post-processing)"),
    ):
        pts = []
        for n in necks:
            lat = getattr(n.profile, f"{which}_cpu").median_ms
            pts.append((lat, n.stats[metric].mean))
        front = pareto_front(pts)
        for i, n in enumerate(necks):
            x, y = pts[i]
            st = n.stats[metric]
            ax.errorbar(
                [x], [100 * y], yerr=[100 * st.std if st.n > 1 else 0.0], fmt="o", color=colours[i], capsize=4, ms=7
            )
            if i in front:
                ax.scatter([x], [100 * y], s=220, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4)
            ax.annotate(n.label, (x, 100 * y), textcoords="offset points", xytext=(11, 9), fontsize=9)
        if len(front) > 1:
            fx = [pts[i][0] for i in front]
            fy = [100 * pts[i][1] for i in front]
            ax.step(fx, fy, where="post", ls="--", color="black", lw=1, alpha=0.6, label="Pareto front")
            ax.legend(fontsize=8, frameon=False, loc="lower right")
        xs = [p[0] for p in pts]
        span = max(xs) - min(xs) or max(xs) * 0.2 or 1.0
        ax.set_xlim(max(0.0, min(xs) - 0.25 * span), max(xs) + 0.45 * span)
        ys = [100 * p[1] for p in pts if not math.isnan(p[1])]
        errs = [100 * n.stats[metric].std for n in necks if n.stats[metric].n > 1] or [0.0]
        if ys:
            ypad = max(max(errs), (max(ys) - min(ys)) * 0.3, 0.5)
            ax.set_ylim(max(0.0, min(ys) - 1.5 * ypad), max(ys) + 1.5 * ypad)
        ax.text(0.02, 0.97, "better: up and left", transform=ax.transAxes, fontsize=8, color="grey", va="top")
        ax.set_xlabel(f"CPU latency, ms (median, batch 1, {size} px)")
        ax.set_ylabel(f"{label} x 100 (mean ± std over seeds)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{label} vs latency: ringed necks are on the Pareto front (none is both faster and better)", fontsize=11
    )
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)
