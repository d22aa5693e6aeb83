"""What a search writes: every trial in a table (``trials.md``, ``trials.csv``), the picture of the metric
against latency with the Pareto front and the budget line (``search.png``, matplotlib's Agg backend), and
``report.md`` (the verdict first, then how it was reached).

Example:
    >>> rec = [TrialRecord(0, "hand-made", "fpn", "fpn", {"width": 32}, "complete", latency_ms=0.5,
    ...                    rungs=({"rung": 0, "step": 40, "ap": 0.1, "ap_small": 0.1},), value=0.1, finest_stride=8),
    ...        TrialRecord(1, "searched", "bifpn P3-P7", "searched", {}, "rejected", latency_ms=3.0)]
    >>> print(trials_table(rec, "ap").splitlines()[2])
    | 0 | hand-made | `fpn` | /8 | 0.500 | 10.0 | 10.0 | complete |
    >>> counts(rec)["rejected"], counts(rec)["trained"]
    (1, 1)
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from necklace.detection.compare import pareto_front
from necklace.detection.compare.config import METRIC_LABELS
from necklace.detection.search.trials import TrialRecord

__all__ = ["counts", "plot_search", "trials_csv", "trials_table", "write_text"]


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def counts(records: Sequence[TrialRecord]) -> dict[str, int]:
    """Trials started, rejected on latency, trained (complete + pruned), complete, pruned, reused, failed."""
    c = {k: 0 for k in ("started", "rejected", "trained", "complete", "pruned", "reused", "failed", "running")}
    for r in records:
        c["started"] += 1
        if r.duplicate_of is not None:
            c["reused"] += 1
            continue
        if r.status in ("complete", "pruned"):
            c["trained"] += 1
        c[r.status if r.status in c else "failed"] += 1
    return c


def _cell(v: float | None, scale: float = 100.0, fmt: str = ".1f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(scale * v, fmt)


def trials_table(records: Sequence[TrialRecord], metric: str) -> str:
    """Markdown table: trial, kind, neck, finest stride, latency (ms), the metric and AP_small after the last rung
    (x 100), outcome (complete / pruned at which rung / rejected / failed / reused)."""
    name = METRIC_LABELS[metric]
    small = "AP_small" if metric != "ap_small" else "AP"
    head = ["#", "kind", "neck", "finest", "latency ms", f"{name} (last rung)", small, "outcome"]
    lines = ["| " + " | ".join(head) + " |", "|--:|---|---|--:|--:|--:|--:|---|"]
    for r in records:
        outcome = r.outcome + (f" (same as #{r.duplicate_of})" if r.duplicate_of is not None else "")
        other = r.metric("ap_small" if metric != "ap_small" else "ap")
        row = [
            str(r.number),
            r.kind,
            f"`{r.label}`",
            f"/{r.finest_stride}" if r.finest_stride else "-",
            _cell(r.latency_ms, 1.0, ".3f"),
            _cell(r.metric(metric)),
            _cell(other),
            outcome,
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def trials_csv(records: Sequence[TrialRecord], metric: str) -> str:
    """Every trial as CSV: the table's columns plus the rung-by-rung metric, seconds and the neck's options."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        ["trial", "kind", "label", "neck", "status", "outcome", "finest_stride", "latency_ms", "latency_ratio",
         f"{metric}_last", "ap_small_last", "rungs", "seconds", "duplicate_of", "options"]
    )  # fmt: skip
    for r in records:
        rungs = ";".join(f"{d['step']}:{max(float(d.get(metric, -1)), 0):.4f}" for d in r.rungs)
        w.writerow(
            [r.number, r.kind, r.label, r.neck, r.status, r.outcome, r.finest_stride,
             "" if r.latency_ms is None else f"{r.latency_ms:.4f}", r.latency.get("ratio", ""),
             "" if r.metric(metric) is None else f"{r.metric(metric):.4f}",
             "" if r.metric("ap_small") is None else f"{r.metric('ap_small'):.4f}",
             rungs, f"{r.seconds:.1f}", "" if r.duplicate_of is None else r.duplicate_of, json.dumps(r.options)]
        )  # fmt: skip
    return buf.getvalue()


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the search picture needs matplotlib: pip install 'necklace[viz]'") from e
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_search(
    records: Sequence[TrialRecord],
    limit_ms: float,
    metric: str,
    path: str | Path,
    scope: str = "neck",
    highlight: Sequence[int] = (),
) -> Path:
    """The metric after each trial's last rung against its latency (log scale): filled = finished every rung,
    hollow = pruned (at its last rung), crosses in the band below zero = rejected on latency (never trained);
    colour = finest stride, stars = hand-made necks (labelled), ``highlight`` trials (the finalists) ringed, the
    Pareto front of the finished trials dashed, the budget a vertical line."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    name = METRIC_LABELS[metric]
    fig, ax = plt.subplots(figsize=(10, 5.4))
    shown = [r for r in records if r.latency_ms is not None and r.duplicate_of is None]
    strides = sorted({r.finest_stride for r in shown if r.finest_stride})
    cmap = plt.get_cmap("plasma")
    colour = {s: cmap(0.85 * i / max(len(strides) - 1, 1)) for i, s in enumerate(strides)}
    top = max([100 * (r.metric(metric) or 0.0) for r in shown] + [1.0])
    band = -0.06 * top  # rejected trials sit in a band below zero
    for r in shown:
        c = colour.get(r.finest_stride, "grey")
        if r.status == "rejected":
            ax.scatter([r.latency_ms], [band], marker="x", color=c, s=28, alpha=0.8)
            continue
        y = r.metric(metric)
        if y is None:
            continue
        hand = r.kind == "hand-made"
        ax.scatter([r.latency_ms], [100 * y], s=110 if hand else 38, marker="*" if hand else "o",
                   facecolors=c if r.status == "complete" else "none", edgecolors=c, linewidths=1.3,
                   zorder=3)  # fmt: skip
        if hand:
            ax.annotate(r.label, (r.latency_ms, 100 * y), textcoords="offset points", xytext=(-8, 8), fontsize=8,
                        ha="right")  # fmt: skip
        if r.number in highlight:
            ax.scatter([r.latency_ms], [100 * y], s=230, facecolors="none", edgecolors="black", zorder=4)
            if not hand:
                ax.annotate(f"#{r.number}", (r.latency_ms, 100 * y), textcoords="offset points", xytext=(-8, -13),
                            fontsize=8, ha="right")  # fmt: skip
    done = [r for r in shown if r.status == "complete"]
    pts = [(r.latency_ms or 0.0, r.metric(metric) or 0.0) for r in done]
    front = pareto_front(pts)
    if len(front) > 1:
        ax.step([pts[i][0] for i in front], [100 * pts[i][1] for i in front], where="post", ls="--", color="black",
                lw=1, alpha=0.6)  # fmt: skip
    ax.axvline(limit_ms, color="crimson", ls="-.", lw=1.2)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xscale("log")
    ax.set_ylim(2 * band, top * 1.12)
    ax.text(0.01, band, "rejected (over budget)", transform=ax.get_yaxis_transform(), fontsize=7, color="grey",
            va="center")  # fmt: skip
    handles = [Line2D([], [], ls="", marker="s", color=colour[s], label=f"finest stride {s}") for s in strides]
    handles += [
        Line2D([], [], ls="", marker="*", color="grey", ms=10, label="hand-made neck"),
        Line2D([], [], ls="", marker="o", color="grey", label="finished every rung"),
        Line2D(
            [], [], ls="", marker="o", markerfacecolor="none", color="grey", label="pruned (value at its last rung)"
        ),
        Line2D([], [], ls="", marker="x", color="grey", label="rejected: over the budget"),
        Line2D([], [], ls="", marker="o", ms=12, markerfacecolor="none", color="black", label="finalist (verdict)"),
        Line2D([], [], ls="--", color="black", alpha=0.6, label="Pareto front (finished trials)"),
        Line2D([], [], ls="-.", color="crimson", label=f"budget {limit_ms:.3g} ms"),
    ]
    ax.legend(handles=handles, fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_xlabel(f"{scope} latency, ms, log scale (lower quartile, timed against the reference neck)")
    ax.set_ylabel(f"{name} x 100 after the trial's last rung (held-out images)")
    ax.set_title(f"necklace search: {name} vs latency, {len(records)} trials", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    tmp.replace(path)
    return path
