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
from typing import Any

import torch
from torch import nn

from necklace.bench import count_flops, count_params, measure_latency
from necklace.detection.compare.results import NeckProfile
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


def _to(value: Any, device: torch.device) -> Any:
    """``value`` (a tensor, or a list / tuple of them) on ``device``."""
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, device) for v in value)
    return value.to(device)


def _measure_profile(
    *,
    label: str,
    size: int,
    model: nn.Module,
    neck: nn.Module,
    feats: Any,
    detector: nn.Module,
    detector_input: Any,
    warmup: int,
    repeats: int,
    gpu: bool | None,
    threads: int | None,
    progress: bool,
) -> NeckProfile:
    """Params, FLOPs and latency of ``neck`` on ``feats`` and of ``detector`` on ``detector_input`` (``model`` is
    what ``detector`` runs: its params and FLOPs are the detector's), on CPU at ``threads`` threads (``None``: the
    current count) and on CUDA when ``gpu`` is true or, with ``None``, when CUDA is there."""
    kw: dict[str, Any] = {"warmup": warmup, "repeats": repeats}
    if threads is not None:
        kw["threads"] = threads
    neck_cpu = measure_latency(neck, feats, **kw)
    det_cpu = measure_latency(detector, detector_input, **kw)
    neck_gpu = det_gpu = None
    gpu_name = None
    if gpu or (gpu is None and torch.cuda.is_available()):
        dev = torch.device("cuda")
        model.to(dev)
        neck_gpu = measure_latency(neck, _to(feats, dev), **kw)
        det_gpu = measure_latency(detector, _to(detector_input, dev), **kw)
        gpu_name = torch.cuda.get_device_name(dev)
        model.to("cpu")
    profile = NeckProfile(
        image_size=size,
        neck_params=count_params(neck),
        neck_gflops=count_flops(neck, feats) / 1e9,
        detector_params=count_params(model),
        detector_gflops=count_flops(model, detector_input) / 1e9,
        neck_cpu=neck_cpu,
        detector_cpu=det_cpu,
        threads=threads if threads is not None else torch.get_num_threads(),
        neck_gpu=neck_gpu,
        detector_gpu=det_gpu,
        gpu_name=gpu_name,
    )
    _say(
        progress,
        f"profile {label}: neck {profile.neck_params:,} params, {profile.neck_gflops:.3g} GFLOPs, "
        f"{neck_cpu.median_ms:.2f} ms CPU; detector {det_cpu.median_ms:.1f} ms CPU at {size} px",
    )
    return profile
