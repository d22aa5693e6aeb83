"""The pictures of a comparison (need matplotlib): AP by object size, AP against latency."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from necklace.detection.compare.config import METRIC_LABELS
from necklace.detection.compare.results import CompareResult
from necklace.detection.compare.stats import pareto_front

__all__ = ["plot_ap_by_size", "plot_ap_vs_latency"]


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
    label = METRIC_LABELS[metric]
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
