"""The verdict of a comparison: which neck leads, whether each gap exceeds the seed noise, and when no ranking is
possible at all.

A ranking needs runs that learned: a neck whose runs do not all reach the learning floor
(:attr:`~necklace.detection.compare.CompareConfig.learned_ap50`, AP50 0.05 by default, i.e. 5 on the report's
x 100 scale, where an untrained detector scores about 0) is not ranked, and when no neck learned the report says
that no ranking is possible and what to change (more steps, larger images, a pretrained backbone). A gap also
gets no verdict when a neck's values are identical over its seeds (the noise is unknown, not zero) or come from a
single seed (:func:`~necklace.detection.compare.significance`).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence

from necklace.detection.compare.config import METRIC_LABELS, METRICS, CompareConfig
from necklace.detection.compare.results import CompareResult, NeckProfile, NeckResult, RunResult, _pm
from necklace.detection.compare.stats import Stat, significance
from necklace.detection.compare.yolo_config import YoloTrainConfig

__all__ = ["judge", "verdict_lines"]


def judge(
    config: CompareConfig, runs: Mapping[str, Sequence[RunResult]], profiles: Mapping[str, NeckProfile]
) -> tuple[str, tuple[NeckResult, ...]]:
    """The best neck's label and every neck's result: statistics over seeds, whether it learned, its verdict.

    The best is the highest mean of ``config.metric`` among the necks that learned (among all necks when none
    did). A neck is compared with the best by :func:`~necklace.detection.compare.significance`, except that the
    gap gets no verdict (``reason="not_learned"``) when either of the two did not learn.

    Example:
        >>> from necklace.detection.compare.results import _example_result
        >>> ex = _example_result()  # fpn ahead of pafpn; make pafpn's runs score AP50 0.01
        >>> runs = {n.label: list(n.runs) for n in ex.necks}
        >>> runs["pafpn"] = [dataclasses.replace(r, metrics=dataclasses.replace(r.metrics, ap50=0.01))
        ...                  for r in runs["pafpn"]]
        >>> best, necks = judge(ex.config, runs, {n.label: n.profile for n in ex.necks})
        >>> best, necks[1].learned, necks[1].vs_best.exceeds_noise, necks[1].vs_best.reason
        ('fpn', False, None, 'not_learned')
    """
    stats: dict[str, dict[str, Stat]] = {}
    learned: dict[str, bool] = {}
    for label, rs in runs.items():
        stats[label] = {}
        for m in METRICS:
            vals = [getattr(r.metrics, m) for r in rs]
            stats[label][m] = Stat.of([v for v in vals if v >= 0])  # -1: undefined (no objects of that size)
        learned[label] = bool(rs) and all(r.metrics.ap50 >= config.learned_ap50 for r in rs)
    metric = config.metric

    def score(label: str) -> float:
        v = stats[label][metric].mean
        return -math.inf if math.isnan(v) else v

    labels = [n.label for n in config.necks]
    best = max([lb for lb in labels if learned[lb]] or labels, key=score)
    best_vals = stats[best][metric].values
    necks = []
    for n in config.necks:
        vs = None
        if n.label != best:
            vs = significance(best_vals, stats[n.label][metric].values)
            if not (learned[best] and learned[n.label]):
                vs = dataclasses.replace(vs, exceeds_noise=None, reason="not_learned")
        necks.append(NeckResult(n, tuple(runs[n.label]), stats[n.label], profiles[n.label], vs, learned[n.label]))
    return best, tuple(necks)


def verdict_lines(result: CompareResult) -> list[str]:
    """One sentence per neck on how it compares with the best, plus a summary sentence; when no neck learned, the
    reason no ranking is possible and what to change.

    Example:
        >>> from necklace.detection.compare.results import _example_result
        >>> verdict_lines(_example_result())[-1]
        'Every other neck is behind `fpn` by more than the seed noise.'
    """
    m = METRIC_LABELS[result.config.metric]
    metric = result.config.metric
    best = result.neck(result.best)
    floor = 100 * result.config.learned_ap50
    if not result.ranked:
        lines = [
            f"**No ranking is possible: no neck learned at this setting.** Every neck has runs below the learning "
            f"floor of AP50 {floor:.1f} (an untrained detector scores about 0), so the differences between them are "
            f"noise around zero, whatever their spread. {_advice(result)}"
        ]
        lines += [f"`{n.label}`: {_pm(n.stats[metric])} {m}, AP50 {_pm(n.stats['ap50'])}." for n in result.necks]
        return lines
    nseeds = best.stats[metric].n
    lines = [f"**`{best.label}`** has the highest mean {m}: {_pm(best.stats[metric])} ({nseeds} seeds)."]
    beyond: list[str] = []
    within: list[str] = []
    unranked: list[str] = []
    for n in result.necks:
        s = n.vs_best
        if s is None:
            continue
        st = n.stats[metric]
        gap = f"{100 * s.diff:.1f} {m} below `{best.label}`"
        if s.exceeds_noise is None:
            unranked.append(n.label)
            if s.reason == "not_learned":
                lines.append(
                    f"`{n.label}`: {_pm(st)}, AP50 {_pm(n.stats['ap50'])}: did not learn at this setting (runs below "
                    f"AP50 {floor:.1f}), so it is not ranked. {_advice(result)}"
                )
            elif s.reason == "no_spread":
                lines.append(
                    f"`{n.label}`: {_pm(st)}, {gap}; no verdict: the values of `{best.label}` or `{n.label}` are "
                    "identical over the seeds, so the seed noise is unknown (not zero); run more seeds."
                )
            else:
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
        lines.append(_summary(best.label, beyond, within, unranked))
    return lines


def _summary(best: str, beyond: list[str], within: list[str], unranked: list[str]) -> str:
    def names(labels: list[str]) -> str:
        return ", ".join(f"`{x}`" for x in labels)

    if not beyond and not within:
        return "No verdict for any neck: " + (
            "run more than one seed per neck." if not unranked else f"{names(unranked)} cannot be ranked (see above)."
        )
    if within and not beyond:
        summary = f"No neck is distinguishable from `{best}` here: every difference is within the seed noise."
    elif beyond and not within:
        summary = f"Every other neck is behind `{best}` by more than the seed noise."
    else:
        summary = f"Behind `{best}` by more than the seed noise: {names(beyond)}; within the noise: {names(within)}."
    if unranked:
        summary = summary.replace("Every other neck is", "Every ranked neck is") + f" Not ranked: {names(unranked)}."
    return summary


def _advice(result: CompareResult) -> str:
    """What to change so that the runs learn, with the current values."""
    base = result.config.base
    if isinstance(base, YoloTrainConfig):
        items = [f"train longer (--epochs; now {base.epochs} epochs of batch {base.batch_size})"]
        items.append(f"larger images (--image-size; now {base.image_size} px)")
        if base.synthetic:
            items.append(f"more training images (--data-option num_images=...; now {base.synthetic['num_images']})")
        return "To get a ranking: " + ", ".join(items[:-1]) + " or " + items[-1] + "."
    length = f"now {base.steps} steps" if base.steps else f"now {base.epochs} epochs"
    items = [f"train longer (--steps; {length} of batch {base.batch_size})"]
    items.append(f"larger images (--image-size; now {base.image_size} px)")
    if not base.pretrained:
        items.append("a pretrained backbone (e.g. --backbone resnet18 --pretrained)")
    return "To get a ranking: " + ", ".join(items[:-1]) + " or " + items[-1] + "."


def _learning_line(result: CompareResult) -> str:
    runs = [r for n in result.necks for r in n.runs]
    first = statistics.fmean(r.loss_first for r in runs)
    last = statistics.fmean(r.loss_last for r in runs)
    ap50 = statistics.fmean(r.metrics.ap50 for r in runs)
    lo = min(r.metrics.ap50 for r in runs)
    return (
        f"Learning signal: the training loss fell from {first:.2f} to {last:.2f} on average (first vs last 10 % of "
        f"the {'epochs' if result.config.yolo else 'steps'}); AP50 is {100 * ap50:.1f} on average (lowest run "
        f"{100 * lo:.1f}), where a detector that has learnt nothing scores about 0"
        + (" (the chance level of this YOLO model, measured, is in the notes below)" if result.config.yolo else "")
        + f"; runs below AP50 {100 * result.config.learned_ap50:.1f} count as not learned and are not ranked."
    )
