"""``search(config)``: data -> frozen backbone -> cached maps -> latency-first, pruned study -> verdict -> report.

Every phase leaves its state in ``config.output`` (the data, the warm-up run, the cached maps, the Optuna
journal, the trials' rung checkpoints, compare's runs), so running the same search again after an interruption
continues where it stopped and, with the same seeds, ends with the same trials and the same result.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from necklace.detection.backbones import Backbone
from necklace.detection.compare import YoloTrainConfig, compare
from necklace.detection.detectors import build_detector
from necklace.detection.search.config import SearchConfig
from necklace.detection.search.data import tiny_shapes
from necklace.detection.search.fidelity import FeatureCache, RungResult, frozen_backbone
from necklace.detection.search.latency import LatencyProbe
from necklace.detection.search.report import plot_search, trials_csv, trials_table, write_text
from necklace.detection.search.result import SearchResult, report_markdown
from necklace.detection.search.space import Candidate, SearchSpace, handmade_choices
from necklace.detection.search.trials import TrialRecord
from necklace.detection.search.verdict import Verdict, decide, finalist_label, finalists, verdict_config
from necklace.detection.train import DataSpec, TrainConfig
from necklace.registry import build_neck
from necklace.spec import FeatureSpec

__all__ = ["DEFAULT_TRIALS", "search"]

#: trials (hand-made ones included) of a search with neither ``n_trials`` nor ``time_budget``
DEFAULT_TRIALS = 24


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def _data(config: SearchConfig) -> tuple[TrainConfig, str]:
    """The base recipe on its data (a preset written to ``output/data`` first) and a description of the data."""
    base = config.base
    assert isinstance(base, TrainConfig)
    if config.preset is None:
        return base, base.data
    opts = base.data_options
    train_spec, val_spec = tiny_shapes(
        config.out / "data",
        num_images=int(opts.get("num_images", 256)),
        val_images=int(opts.get("val_images", 64)),
        image_size=base.image_size,
        seed=int(opts.get("seed", 0)),
    )
    base = base.replace(data=train_spec, val_data=val_spec, data_options={})
    DataSpec.parse(train_spec)
    return base, f"tiny_shapes ({opts.get('num_images', 256)} training images, every object COCO-small)"


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _graph_of(record: TrialRecord, specs: tuple[FeatureSpec, ...]) -> Any:
    if record.neck == "searched":
        return Candidate.from_options(record.options).graph(specs)
    neck = build_neck(record.neck, specs, **record.options)
    graph = getattr(neck, "graph", None)
    if graph is None:
        raise TypeError(f"the hand-made neck {record.neck!r} is not a graph neck; it has no graph to save.")
    return graph


class _Sizer:
    """How many trials to train: fixed, stored, or sized to the time budget once the baseline trial has run."""

    def __init__(
        self, config: SearchConfig, t0: float, step_seconds: float, progress: bool, verdict_steps: int
    ) -> None:
        self.config, self.t0, self.step_seconds, self.progress = config, t0, step_seconds, progress
        self.verdict_steps = verdict_steps
        self.info: dict[str, Any] = {}

    def verdict_estimate(self, val_images: int) -> float:
        cfg = self.config
        if not cfg.verdict:
            return 0.0
        steps = self.verdict_steps
        step_s = self.step_seconds if math.isfinite(self.step_seconds) else 0.5
        runs = (cfg.verdict_top + 1) * len(cfg.verdict_seeds)
        # x1.5: the finalists' necks (often with a stride-4 level) and a busier machine make steps slower than the
        # warm-up's, and evaluation + profiling come on top
        return runs * (1.5 * steps * step_s + 0.1 * val_images) + 60.0

    def __call__(self, study: Any, val_images: int) -> int:
        cfg = self.config
        if cfg.n_trials is not None:
            return cfg.n_trials
        stored = study.user_attrs.get("n_trials")
        if stored is not None:
            self.info = dict(study.user_attrs.get("sizing", {}))
            return int(stored)
        if cfg.time_budget is None:
            return DEFAULT_TRIALS
        from necklace.detection.search.study import expected_trial_fraction

        base_trials = [
            t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and "rungs" in t.user_attrs
        ]
        if not base_trials:  # no trial has finished every rung yet: keep going until one has (the baseline)
            return cfg.max_trials
        full = float(base_trials[0].user_attrs.get("seconds", 60.0))
        fraction = max(expected_trial_fraction(cfg.rung_schedule(), cfg.reduction_factor), 1 / cfg.rungs)
        per_trial = full * fraction + 3.5  # + timing it and, say, one rejected candidate per trained one
        verdict = self.verdict_estimate(val_images)
        left = cfg.time_budget - (time.perf_counter() - self.t0) - verdict - 30.0
        n = int(min(cfg.max_trials, max(cfg.min_trials, left // per_trial)))
        self.info = {
            "baseline trial s": full,
            "expected s per trial": per_trial,
            "verdict estimate s": verdict,
            "search time left s": left,
            "trials": n,
        }
        study.set_user_attr("n_trials", n)
        study.set_user_attr("sizing", self.info)
        _say(
            self.progress,
            f"search: the baseline trial took {full:.0f} s; {left / 60:.1f} min left for trials after the verdict "
            f"estimate ({verdict / 60:.1f} min): {n} trained trials",
        )
        return n

    def out_of_time(self, val_images: int) -> bool:
        """Whether the time budget left is only enough for the verdict."""
        cfg = self.config
        if cfg.time_budget is None or cfg.n_trials is not None:
            return False
        left = cfg.time_budget - (time.perf_counter() - self.t0) - self.verdict_estimate(val_images) - 30.0
        return left <= 0


def search(
    config: SearchConfig | None = None,
    progress: bool = True,
    command: str | None = None,
    on_trial: Callable[[TrialRecord], None] | None = None,
    on_rung: Callable[[int, RungResult], None] | None = None,
) -> SearchResult:
    """Find the neck for ``config``'s data under its latency budget and judge it against the hand-made necks.

    Args:
        config: what to search (default :class:`~necklace.detection.search.SearchConfig` ``()``: the CPU-sized
            search on ``tiny_shapes``).
        progress: a line per phase, trial and rung on stderr.
        command: the command line to record in the report (the CLI passes it).
        on_trial: called with each finished trial; on_rung: with ``(trial number, rung result)`` after every rung
            (after its checkpoint: raising there interrupts the search as Ctrl-C would).

    Run the same call again after an interruption to resume; see :mod:`necklace.detection.search` for what is
    written. Raises ``ValueError`` when ``config.output`` holds a search with another configuration.
    """
    from necklace.detection.search.study import TrialRunner, open_study, run_study, study_records

    config = SearchConfig() if config is None else config
    if not isinstance(config, SearchConfig):
        raise TypeError(f"search expects a SearchConfig, got {type(config).__name__}.")
    t0 = time.perf_counter()
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    phases: dict[str, float] = {}
    notes: list[str] = []
    _say(progress, f"necklace search -> {out} (budget {config.budget}, runtime {config.runtime}, {config.device})")
    study = open_study(config)  # first: a folder of another search is an error before any work

    tick = time.perf_counter()
    verdict_base: TrainConfig | YoloTrainConfig
    backbone: Backbone
    if isinstance(config.base, YoloTrainConfig):  # inside a YOLO detector: search/yolo.py
        from necklace.detection.search import yolo

        verdict_base, data_yaml, data_text = yolo.yolo_data(config, progress)
        base = yolo.proxy_config(verdict_base, data_yaml)  # the short trainings' (proxy) recipe
        phases["data"] = time.perf_counter() - tick
        tick = time.perf_counter()
        assert config.warmup_epochs is not None
        backbone, bb_info = yolo.yolo_warmup(
            verdict_base, data_yaml, config.warmup_epochs, out / "backbone", config.seed, progress
        )
        verdict_steps = verdict_base.epochs * math.ceil(yolo.train_images(data_yaml) / verdict_base.batch_size)
    else:
        base, data_text = _data(config)
        verdict_base = base
        phases["data"] = time.perf_counter() - tick
        tick = time.perf_counter()
        backbone, bb_info = frozen_backbone(base, config.warmup_steps, out / "backbone", config.seed, progress)
        verdict_steps = base.steps or (base.epochs or 1) * 64
    phases["backbone warm-up"] = time.perf_counter() - tick

    tick = time.perf_counter()
    specs: tuple[FeatureSpec, ...] = tuple(backbone.out_specs)
    key = _key(config.identity(), bb_info.get("steps"))
    cache = FeatureCache.load(out / "features.pt", key)
    if cache is None:
        _say(progress, "search: caching the frozen backbone's maps")
        cache = FeatureCache.build(
            base, backbone, config.holdout, config.fidelity_images, config.seed, key, config.device, progress
        )
        cache.save(out / "features.pt")
    phases["feature cache"] = time.perf_counter() - tick

    handmade = {}
    assert config.handmade is not None
    if isinstance(verdict_base, YoloTrainConfig):
        space = config.space or yolo.yolo_space(verdict_base, config.free_cells)
        choices = yolo.yolo_handmade(config.handmade, verdict_base)
    else:
        space = config.space or SearchSpace.for_backbone(specs, free_cells=config.free_cells)
        choices = handmade_choices(config.handmade, uniform_width=space.uniform_width)
    for choice in choices:
        try:
            build_neck(choice.name, specs, **choice.options)
        except (ValueError, TypeError) as e:
            notes.append(f"hand-made `{choice.label}` left out: it does not build on this backbone ({e})")
            continue
        handmade[choice.label] = choice
    ref_label = next(iter(handmade), "fpn")
    reference = (
        build_neck(handmade[ref_label].name, specs, **handmade[ref_label].options)
        if handmade
        else build_neck("fpn", specs, width=32)
    )
    make_detector: Callable[[nn.Module], nn.Module] | None = None
    if config.latency_scope == "detector" and isinstance(verdict_base, YoloTrainConfig):
        make_detector = yolo.yolo_detector_factory(verdict_base, cache.num_classes)
        reference = make_detector(reference)
    elif config.latency_scope == "detector":

        def make_detector(neck: nn.Module) -> nn.Module:
            return build_detector(
                base.detector,
                backbone,
                neck,
                cache.num_classes,
                min_size=base.image_size,
                max_size=base.image_size,
                **base.detector_options,
            )

        reference = make_detector(reference)
    tick = time.perf_counter()
    probe = LatencyProbe(
        specs,
        base.image_size,
        reference,
        runtime=config.runtime,
        device=config.device,
        scope=config.latency_scope,
        threads=config.latency_threads,
        repeats=config.latency_repeats,
        reference_ms=study.user_attrs.get("reference_ms"),
    )
    if "reference_ms" not in study.user_attrs:
        study.set_user_attr("reference_ms", probe.reference_ms)
    limit_ms = config.budget.limit_ms(probe.reference_ms)
    _say(progress, f"search: reference `{ref_label}` {probe.reference_ms:.3g} ms; budget {limit_ms:.3g} ms")

    runner = TrialRunner(
        config, specs, space, cache, probe, handmade, limit_ms, progress, make_detector, on_rung, short_base=base
    )
    sizer = _Sizer(config, t0, float(bb_info.get("step_seconds", math.nan)), progress, verdict_steps)
    n_val = len(cache.hold_maps)
    run_study(study, runner, lambda s: sizer(s, n_val), on_trial, out_of_time=lambda: sizer.out_of_time(n_val))
    phases["trials"] = time.perf_counter() - tick
    records = tuple(study_records(study))

    verdict: Verdict | None = None
    cmp = None
    tick = time.perf_counter()
    searched, best_hand = finalists(records, config.verdict_top)
    if config.verdict and (searched or best_hand):
        vcfg = verdict_config(
            verdict_base, searched, best_hand, config.verdict_seeds, str(out / "verdict"), config.metric
        )
        _say(progress, f"search: verdict: {', '.join(n.label for n in vcfg.necks)} x seeds {list(vcfg.seeds)}")
        cmp = compare(vcfg, progress=progress)
        verdict = decide(
            cmp,
            [finalist_label(r) for r in searched],
            finalist_label(best_hand) if best_hand else None,
            config.metric,
        )
        phases["verdict"] = time.perf_counter() - tick
    elif config.verdict:
        notes.append("no trial finished its short training, so there was nothing to retrain")

    files: dict[str, Path] = {}
    by_label = {finalist_label(r): r for r in records if r.duplicate_of is None}
    pick = by_label.get(verdict.recommended) if verdict is not None else None  # no verdict: no winner file
    if pick is not None:
        _graph_of(pick, specs).save(out / "winner.yaml")
        files["winner"] = out / "winner.yaml"
    if searched:
        _graph_of(searched[0], specs).save(out / "best_searched.yaml")
        files["best_searched"] = out / "best_searched.yaml"
    files["trials_md"] = write_text(out / "trials.md", trials_table(records, config.metric) + "\n")
    files["trials_csv"] = write_text(out / "trials.csv", trials_csv(records, config.metric))
    try:
        highlight = [r.number for r in searched] + ([best_hand.number] if best_hand else [])
        files["plot"] = plot_search(
            records, limit_ms, config.metric, out / "search.png", config.latency_scope, highlight
        )
    except ImportError as e:
        notes.append(f"picture skipped: {e}")
    fidelity = {
        "backbone": bb_info.get("text")
        or (f"{bb_info['source']}, {bb_info['steps']} end-to-end steps" if bb_info["steps"] else "pretrained"),
        "head": base.detector,
        "in_specs": [[s.channels, s.stride] for s in specs],  # the maps every candidate is built, timed, trained on
        "train_images": len(cache.train_maps),
        "holdout_images": len(cache.hold_maps),
        "cache_seconds": cache.seconds,
        "key": cache.key,
    }
    result = SearchResult(
        config=config,
        records=records,
        verdict=verdict,
        compare=cmp,
        limit_ms=limit_ms,
        reference_label=ref_label,
        reference_ms=probe.reference_ms,
        wall_time=time.perf_counter() - t0,
        phases=phases,
        sizing=sizer.info,
        fidelity=fidelity,
        files={**files, "report": out / "report.md", "results": out / "results.json"},
        notes=tuple(notes),
        data=data_text,
        command=command,
    )
    write_text(out / "results.json", json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    write_text(out / "report.md", report_markdown(result))
    _say(progress, f"search done in {result.wall_time / 60:.1f} min; report {out / 'report.md'}")
    return result
