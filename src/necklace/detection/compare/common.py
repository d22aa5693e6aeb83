"""Small helpers every kind of comparison run shares (torchvision detectors trained by necklace, YOLO detectors
trained by Ultralytics): progress lines, loss summaries, metric files, atomic writes."""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from necklace.detection.evaluate import CocoMetrics

__all__: list[str] = []


def _say(progress: bool, text: str) -> None:
    """One progress line on stderr (when ``progress``)."""
    if progress:
        print(text, file=sys.stderr, flush=True)


def _loss_ends(history: Sequence[Mapping[str, float]]) -> tuple[float, float]:
    """Mean ``total`` loss of the first and of the last 10 % of ``history`` (at least 1, at most 20 rows).

    Example:
        >>> _loss_ends([{"total": 3.0}, {"total": 2.0}, {"total": 1.0}])
        (3.0, 1.0)
    """
    losses = [float(h["total"]) for h in history]
    if not losses:
        return math.nan, math.nan
    n = max(1, min(20, len(losses) // 10))
    return statistics.fmean(losses[:n]), statistics.fmean(losses[-n:])


def _read_metrics(path: Path) -> CocoMetrics | None:
    """The :class:`CocoMetrics` a run wrote to ``path``; ``None`` when it is missing or unreadable."""
    try:
        return CocoMetrics.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file, then a rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
