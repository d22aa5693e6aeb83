"""Statistics over seeds: :class:`Stat` (mean, std, range), Welch's t-test, the noise rule of
:func:`significance` and the Pareto front of cost against accuracy."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["NO_VERDICT_TEXT", "RULE_TEXT", "Significance", "Stat", "pareto_front", "significance", "welch_t_test"]


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

    ``exceeds_noise`` is ``None`` when no verdict is possible; ``reason`` says why: ``"one_seed"`` (no spread to
    compare with), ``"no_spread"`` (a neck's values are identical over its seeds, or not finite: its noise is
    unknown, not zero) or ``"not_learned"`` (set by :func:`~necklace.detection.compare.compare` when a neck's runs
    did not learn; see :data:`~necklace.detection.compare.verdict.LEARNED_AP50`).

    Example:
        >>> s = significance([0.30, 0.32], [0.20, 0.21])
        >>> s.rule, s.exceeds_noise, round(s.diff, 3), s.to_dict()["p"], s.reason
        ('2std', True, 0.105, None, None)
    """

    diff: float  # mean(a) - mean(b)
    threshold: float | None  # 2-seed rule: the |diff| needed; nan/None otherwise
    t: float | None
    df: float | None
    p: float | None
    rule: str  # "welch" | "2std" | "none"
    exceeds_noise: bool | None  # None: cannot tell (see reason)
    reason: str | None = None  # why there is no verdict: "one_seed" | "no_spread" | "not_learned"

    def to_dict(self) -> dict[str, Any]:
        return {
            "diff": _num(self.diff),
            "threshold": _num(self.threshold),
            "t": _num(self.t),
            "df": _num(self.df),
            "p": _num(self.p),
            "rule": self.rule,
            "exceeds_noise": self.exceeds_noise,
            "reason": self.reason,
        }


RULE_TEXT = {
    "welch": "Welch's two-sided t-test over the seeds, p < 0.05 (both necks have 3+ seeds)",
    "2std": "|difference of means| > 2 x sqrt(std_a^2 + std_b^2), std = sample standard deviation over the seeds "
    "(2 seeds: a heuristic, not a formal test; the stds of 2 values are themselves rough)",
    "none": "no verdict with a single seed (no spread to compare with); run with more --seeds",
}
#: Why a pair of necks gets no verdict (:attr:`Significance.reason`), in the report's words.
NO_VERDICT_TEXT = {
    "one_seed": "a single seed has no spread to compare with: run more --seeds",
    "no_spread": "the values are identical over the seeds (or undefined), so the seed noise is unknown, not zero: "
    "run more seeds, or train longer so that seeds differ",
    "not_learned": "the runs did not learn (AP50 below the learning floor), so their differences are noise around zero",
}


def significance(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> Significance:
    """Compare the per-seed values of two necks.

    - a side with one seed: no verdict (``exceeds_noise is None``, ``reason="one_seed"``);
    - a side whose values are all equal, or not finite: no verdict (``reason="no_spread"``): a zero spread says the
      noise is unknown (typically runs that all scored the same, often 0), not that it is zero;
    - both 3+ seeds: Welch's t-test, the difference exceeds the noise when ``p < alpha``;
    - otherwise (2+ seeds each): ``|mean(a) - mean(b)| > 2 * sqrt(std(a)**2 + std(b)**2)``.

    Example:
        >>> significance([0.30, 0.32], [0.20, 0.21]).exceeds_noise  # 0.105 apart, threshold 2*0.016
        True
        >>> s = significance([0.30, 0.32], [0.29, 0.33])
        >>> s.exceeds_noise, s.rule, round(s.threshold, 4)
        (False, '2std', 0.0632)
        >>> significance([0.3, 0.31, 0.32], [0.2, 0.21, 0.22]).rule, significance([0.3], [0.2]).exceeds_noise
        ('welch', None)
        >>> z = significance([0.002, 0.001], [0.0, 0.0])  # 0.0 ± 0.0 is not "beyond the noise" of 0.2 ± 0.1
        >>> z.exceeds_noise, z.reason
        (None, 'no_spread')
    """
    diff = statistics.fmean(a) - statistics.fmean(b) if a and b else math.nan
    if len(a) < 2 or len(b) < 2:
        return Significance(diff, None, None, None, None, "none", None, "one_seed")
    rule = "welch" if len(a) >= 3 and len(b) >= 3 else "2std"
    if any(not all(math.isfinite(v) for v in side) or max(side) == min(side) for side in (a, b)):
        return Significance(diff, None, None, None, None, rule, None, "no_spread")
    if rule == "welch":
        t, df, p = welch_t_test(a, b)
        return Significance(diff, None, t, df, p, "welch", bool(p < alpha))
    threshold = 2.0 * math.sqrt(statistics.variance(a) + statistics.variance(b))
    return Significance(diff, threshold, None, None, None, "2std", bool(abs(diff) > threshold))


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


def _num(value: float | None) -> float | None:
    """JSON-safe number: ``None`` for nan/inf."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)
