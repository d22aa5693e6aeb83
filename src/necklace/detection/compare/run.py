"""Running a comparison: train (or reuse / resume) every ``(neck, seed)``, profile every neck, assemble the
result and write ``results.json``, ``report.md`` and the pictures."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from necklace.detection.checkpoint import load_checkpoint
from necklace.detection.compare.common import _loss_ends, _measure_profile, _read_metrics, _say, _write_text
from necklace.detection.compare.config import CompareConfig, NeckChoice
from necklace.detection.compare.plots import plot_ap_by_size, plot_ap_vs_latency
from necklace.detection.compare.report import _report
from necklace.detection.compare.results import CompareResult, NeckProfile, RunResult
from necklace.detection.compare.verdict import judge
from necklace.detection.compare.yolo import YoloSession
from necklace.detection.rundir import RunLock, prepare_output_dir
from necklace.detection.train import (
    CHECKPOINT_NAME,
    RESUMABLE_CHANGES,
    TrainConfig,
    build_dataset,
    build_model,
    load_model,
    train,
)

__all__ = ["compare"]


def _config_diffs(saved: Mapping[str, Any], config: TrainConfig) -> list[str]:
    now = config.to_dict()
    return [
        f"{k}: {saved.get(k)!r} there, {now[k]!r} now"
        for k in now
        if k not in RESUMABLE_CHANGES and saved.get(k, now[k]) != now[k]
    ]


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
    return _measure_profile(
        label=run.label,
        size=size,
        model=model,
        neck=adapter.neck,
        feats=feats,
        detector=model,
        detector_input=[image],
        warmup=config.latency_warmup,
        repeats=config.latency_repeats,
        gpu=config.gpu_latency,
        threads=None,
        progress=progress,
    )


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
    session = YoloSession(config) if config.yolo else None  # ImportError naming the pip command: before any file
    out = prepare_output_dir(config.output, "compare output")
    with RunLock(out, "compare output"):
        if session is not None:
            session.check()
            session.data(progress)
        else:
            _check_necks(config)
        return _compare(config, progress, command, on_run, t0, session)


def _check_necks(config: CompareConfig) -> None:
    """Build every contender's detector once (no weights loaded) so a bad neck option fails before any training."""
    for neck in config.necks:
        rc = config.run_config(neck, config.seeds[0]).replace(pretrained=False)
        try:
            build_model(rc, num_classes=1)
        except (ValueError, TypeError) as e:
            raise type(e)(f"compare: neck {neck.label!r}: {e}") from e


def _compare(
    config: CompareConfig,
    progress: bool,
    command: str | None,
    on_run: Callable[[RunResult], None] | None,
    t0: float,
    session: YoloSession | None = None,
) -> CompareResult:
    out = Path(config.output)
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
            where = f"[{k}/{total}]"
            run = session.run(neck, seed, progress, where) if session else _run_one(config, neck, seed, progress, where)
            runs.setdefault(neck.label, []).append(run)
            if on_run is not None:
                on_run(run)
    profiles = {
        n.label: session.profile(runs[n.label][0], progress)
        if session
        else _profile(config, runs[n.label][0], progress)
        for n in config.necks
    }
    result = _assemble(config, runs, profiles, time.perf_counter() - t0, command)
    if session is not None:
        result = dataclasses.replace(result, notes=(session.chance_note(progress),))
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
    best, necks = judge(config, runs, profiles)
    return CompareResult(config, necks, best, wall, {}, _environment())


# ------------------------------------------------------------------------------------------------ writing
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
