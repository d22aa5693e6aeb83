"""The verdict of a comparison in words: which neck leads, and whether each gap exceeds the seed noise."""

from __future__ import annotations

import statistics

from necklace.detection.compare.config import _METRIC_LABELS
from necklace.detection.compare.results import CompareResult, _pm

__all__ = ["verdict_lines"]


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
