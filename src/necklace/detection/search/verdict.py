"""A verdict, not a leaderboard: the finalists retrained at the full recipe over seeds through ``compare``.

:func:`finalists` picks the best searched trials (finished all rungs, distinct necks) and the best hand-made neck
within the budget; :func:`verdict_config` makes the :class:`~necklace.detection.compare.CompareConfig` that
retrains them end to end (a searched neck goes in as the registered ``searched`` neck with its candidate's
options, so every run, checkpoint and ``load_model`` works as for any neck); :func:`decide` reads the
:class:`~necklace.detection.compare.CompareResult`: a searched neck **wins** only when its mean beats the best
hand-made neck's by more than the seed noise (compare's :func:`~necklace.detection.compare.significance`:
Welch's t-test with 3+ seeds, the 2-std rule with 2); otherwise the hand-made neck stands.

Example:
    >>> from necklace.detection.compare import Stat
    >>> v = decide_from_stats({"s7": Stat.of([0.30, 0.31, 0.32]), "fpn": Stat.of([0.20, 0.21, 0.22])},
    ...                       searched=["s7"], handmade="fpn", metric="ap")
    >>> v.winner, v.significance.rule, v.significance.exceeds_noise
    ('s7', 'welch', True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from necklace.detection.compare import (
    METRICS,
    RULE_TEXT,
    CompareConfig,
    CompareResult,
    NeckChoice,
    Significance,
    Stat,
    YoloTrainConfig,
    significance,
)
from necklace.detection.compare.config import METRIC_LABELS
from necklace.detection.search.trials import TrialRecord
from necklace.detection.train import TrainConfig

__all__ = ["Verdict", "decide", "decide_from_stats", "finalist_label", "finalists", "verdict_config"]


def finalist_label(record: TrialRecord) -> str:
    """The label a trial's neck gets in the verdict: the hand-made neck's own, ``s<trial>-<template>-p<lo>p<hi>``
    for a searched one.

    Example:
        >>> r = TrialRecord(12, "searched", "x", "searched", {"template": "fpn", "levels": [2, 6]}, "complete")
        >>> finalist_label(r)
        's12-fpn-p2p6'
    """
    if record.kind == "hand-made":
        return record.label
    lo, hi = record.options.get("levels", (0, 0))
    return f"s{record.number}-{record.options.get('template', 'neck')}-p{lo}p{hi}"


def _rank(r: TrialRecord) -> tuple[int, float, float]:
    last = r.rungs[-1] if r.rungs else {}
    return (1 if r.status == "complete" else 0, float(last.get("step", 0)), r.value if r.value is not None else -1.0)


def finalists(records: Sequence[TrialRecord], top: int) -> tuple[list[TrialRecord], TrialRecord | None]:
    """The ``top`` best searched trials that finished every rung (one per distinct neck, best value first) and the
    best hand-made neck that trained (within the budget; finished trials before pruned ones).

    Example:
        >>> rec = [TrialRecord(0, "hand-made", "fpn", "fpn", {}, "complete", value=0.2),
        ...        TrialRecord(1, "searched", "a", "searched", {"levels": [2, 6]}, "complete", value=0.3),
        ...        TrialRecord(2, "searched", "b", "searched", {"levels": [3, 6]}, "pruned", value=0.4, pruned_at=0)]
        >>> [r.number for r in finalists(rec, 2)[0]], finalists(rec, 2)[1].label
        ([1], 'fpn')
    """
    searched = [r for r in records if r.kind == "searched" and r.status == "complete" and r.duplicate_of is None]
    searched.sort(key=lambda r: (-(r.value or 0.0), r.number))
    seen: set[str] = set()
    picked = []
    for r in searched:
        key = repr(sorted(r.options.items()))
        if key not in seen:
            seen.add(key)
            picked.append(r)
    hand = [r for r in records if r.kind == "hand-made" and r.trained and r.duplicate_of is None]
    best_hand = max(hand, key=_rank) if hand else None
    return picked[:top], best_hand


def verdict_config(
    base: TrainConfig | YoloTrainConfig,
    searched: Sequence[TrialRecord],
    handmade: TrialRecord | None,
    seeds: Sequence[int],
    output: str,
    metric: str,
    latency_repeats: int = 20,
) -> CompareConfig:
    """The ``compare`` run of the verdict: the finalists on ``base`` (the full recipe), over ``seeds``; inside a
    YOLO detector (a :class:`~necklace.detection.compare.YoloTrainConfig`) each run is Ultralytics' training of the
    YOLO model with that neck (``build_yolo``), a searched one as the registered ``searched`` neck; ``levels`` leave
    the options there (``build_yolo`` gives a neck the detector's levels itself, ``base.levels``).

    Example:
        >>> from necklace.detection.search.config import CPU_YOLO_BASE
        >>> opts = {"template": "fpn", "levels": [3, 5], "width": 32}
        >>> r = TrialRecord(4, "searched", "x", "searched", opts, "complete")
        >>> verdict_config(CPU_YOLO_BASE, [r], None, (0,), "out", "ap").necks[0].options
        {'template': 'fpn', 'width': 32}
    """

    necks: list[NeckChoice] = [_choice(r, base) for r in searched]
    if handmade is not None:
        necks.append(_choice(handmade, base))
    if not necks:
        raise ValueError("the verdict needs at least one finalist; no trial finished its short training.")
    return CompareConfig(
        necks=tuple(necks), base=base, seeds=tuple(seeds), output=output, metric=metric, latency_repeats=latency_repeats
    )


def _choice(record: TrialRecord, base: TrainConfig | YoloTrainConfig) -> NeckChoice:
    """The trial's neck for ``compare`` on ``base``: inside a YOLO detector without its ``levels`` option (the
    search built it at the detector's levels; ``build_yolo`` passes those itself and refuses them twice)."""
    choice = record.choice(finalist_label(record))
    if not isinstance(base, YoloTrainConfig) or "levels" not in choice.options:
        return choice
    options = dict(choice.options)
    levels = tuple(options.pop("levels"))
    if levels != tuple(base.levels):
        raise ValueError(
            f"the verdict inside {base.detector}: trial {record.number} ({record.label}) has levels {levels}, but the "
            f"detector's are {tuple(base.levels)}; every candidate of a YOLO search outputs the detector's levels."
        )
    return NeckChoice(choice.name, options, label=choice.label)


@dataclass(frozen=True)
class Verdict:
    """What the verdict says: ``winner`` (a searched neck's label, or ``None``), the neck to use
    (``recommended``), the best searched and hand-made labels, the test on ``metric`` and one sentence per point.

    Example:
        >>> v = Verdict(None, "fpn", "s3", "fpn", "ap", None, ("The hand-made neck stands.",))
        >>> v.to_dict()["recommended"], v.declared
        ('fpn', False)
    """

    winner: str | None
    recommended: str
    best_searched: str | None
    best_handmade: str | None
    metric: str
    significance: Significance | None
    lines: tuple[str, ...]
    means: dict[str, float] = field(default_factory=dict)
    other_metrics: dict[str, Significance] = field(default_factory=dict)

    @property
    def declared(self) -> bool:
        return self.winner is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "winner": self.winner,
            "recommended": self.recommended,
            "best_searched": self.best_searched,
            "best_handmade": self.best_handmade,
            "metric": self.metric,
            "significance": self.significance.to_dict() if self.significance else None,
            "lines": list(self.lines),
            "means": self.means,
            "other_metrics": {k: v.to_dict() for k, v in self.other_metrics.items()},
        }


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.1f}"


def _pm(s: Stat) -> str:
    return _pct(s.mean) if s.n < 2 else f"{_pct(s.mean)} ± {_pct(s.std)}"


def decide_from_stats(
    stats: Mapping[str, Stat],
    searched: Sequence[str],
    handmade: str | None,
    metric: str,
    others: Mapping[str, Mapping[str, Stat]] | None = None,
) -> Verdict:
    """The verdict from per-neck statistics over seeds of ``metric`` (``others``: more metrics, reported too).

    A winner needs a higher mean than the hand-made neck *and* a difference beyond the seed noise
    (:func:`~necklace.detection.compare.significance`). Without a hand-made neck in the race (none within the
    budget) the best searched neck is recommended, with no claim that it beats anything.
    """
    if metric not in METRICS:
        raise ValueError(f"decide: metric {metric!r} is not one of {list(METRICS)}.")
    unknown = [s for s in [*searched, *([handmade] if handmade else [])] if s not in stats]
    if unknown:
        raise ValueError(f"decide: no statistics for {unknown}; known necks: {sorted(stats)}.")
    name = METRIC_LABELS[metric]
    means = {k: s.mean for k, s in stats.items()}

    def score(label: str) -> float:
        v = stats[label].mean
        return -math.inf if math.isnan(v) else v

    best_s = max(searched, key=score) if searched else None
    if handmade is None:
        if best_s is None:
            raise ValueError("decide: no searched neck and no hand-made neck: nothing to judge.")
        line = (
            f"No hand-made neck fits the latency budget, so there is nothing to beat: `{best_s}` is the best searched "
            f"neck within it ({name} {_pm(stats[best_s])})."
        )
        return Verdict(None, best_s, best_s, None, metric, None, (line,), means)
    if best_s is None:
        line = f"No searched neck finished its short training; the hand-made `{handmade}` stands."
        return Verdict(None, handmade, None, handmade, metric, None, (line,), means)
    sig = significance(stats[best_s].values, stats[handmade].values)
    extra = {m: significance(v[best_s].values, v[handmade].values) for m, v in (others or {}).items()}
    gap = f"{name} {_pm(stats[best_s])} vs {_pm(stats[handmade])}, a difference of {100 * sig.diff:+.1f}"
    if sig.rule == "welch":
        why = f"Welch t = {sig.t:.2f}, df = {sig.df:.1f}, p = {sig.p:.3f}"
    elif sig.rule == "2std":
        why = f"the seed noise needs > {100 * (sig.threshold or 0):.1f}"
    else:
        why = "one seed, no spread to compare with"
    if sig.exceeds_noise and sig.diff > 0:
        lines = [
            f"**Winner: `{best_s}`**: it beats the best hand-made neck `{handmade}` beyond the seed noise "
            f"({gap}; {why})."
        ]
        winner: str | None = best_s
    elif sig.exceeds_noise is None:
        lines = [f"No verdict: `{best_s}` vs `{handmade}` was run with one seed ({gap}). The hand-made neck stands."]
        winner = None
    elif sig.diff > 0:
        lines = [
            f"**The hand-made neck `{handmade}` stands**: `{best_s}` is ahead but within the seed noise ({gap}; {why})."
        ]
        winner = None
    else:
        lines = [
            f"**The hand-made neck `{handmade}` stands**: the best searched neck `{best_s}` is not ahead "
            f"({gap}; {why})."
        ]
        winner = None
    lines.append(f"Rule: {RULE_TEXT[sig.rule]}.")
    for m, s in extra.items():
        if m == metric:
            continue
        verdict = "beyond" if s.exceeds_noise else ("no verdict" if s.exceeds_noise is None else "within")
        gap = f"{100 * s.diff:+.1f}"
        lines.append(f"On {METRIC_LABELS[m]}: `{best_s}` {gap} vs `{handmade}` ({verdict} the seed noise).")
    return Verdict(winner, winner or handmade, best_s, handmade, metric, sig, tuple(lines), means, extra)


def decide(result: CompareResult, searched: Sequence[str], handmade: str | None, metric: str) -> Verdict:
    """The verdict from a ``compare`` result (its necks labelled ``searched`` and ``handmade``); AP and AP_small
    are tested too when ``metric`` is another one."""
    stats = {n.label: n.stats[metric] for n in result.necks}
    others = {m: {n.label: n.stats[m] for n in result.necks} for m in ("ap", "ap_small") if m != metric}
    others = {m: v for m, v in others.items() if all(s.n for s in v.values())}
    return decide_from_stats(stats, searched, handmade, metric, others)
