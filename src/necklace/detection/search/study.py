"""The study: Optuna trials over the search space, latency first, pruned short trainings, resumable.

- **Storage**: an Optuna journal file (``study.journal``) in the output folder; the search's configuration is
  stored with the study, and reopening it with another configuration is an error (another folder, or delete it).
- **Trials**: the hand-made necks are enqueued first (the first is the baseline that sizes the study), then the
  plainest candidate at every finest level of the space (level anchors: each level measured early), then the
  sampler (TPE, seeded per trial from the number of trials already finished, so a resumed study draws what an
  uninterrupted one would) proposes candidates. Each trial builds its neck, times it
  (:class:`~necklace.detection.search.latency.LatencyProbe`) and is **rejected** when over the budget, in seconds,
  before any training; otherwise a short training (:func:`~necklace.detection.search.fidelity.train_short`)
  reports the metric after each rung and the pruner (successive halving by default) stops the weak ones (never a
  hand-made neck: they are the bar, so they train to the end while their values count in every rung).
  A candidate identical to an earlier trial reuses its result.
- **Resume**: a trial left running by an interruption is continued first (from its last rung checkpoint), under
  the same trial number, so the rest of the study is the one an uninterrupted run makes.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from necklace.detection.compare import NeckChoice
from necklace.detection.search.config import SearchConfig
from necklace.detection.search.fidelity import FeatureCache, RungResult, ShortTraining, train_short, uniform_width
from necklace.detection.search.latency import LatencyProbe
from necklace.detection.search.space import Candidate, SearchSpace, searched_neck
from necklace.detection.search.trials import TrialRecord, records_from_trials
from necklace.detection.train import TrainConfig
from necklace.registry import build_neck
from necklace.spec import FeatureSpec

try:  # optional: the module imports without it (docs, doctests); open_study says how to get it
    import optuna
    from optuna.trial import TrialState

    HAVE_OPTUNA = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_OPTUNA = False

__all__ = ["HAVE_OPTUNA", "STUDY_FILE", "expected_trial_fraction", "open_study", "run_study", "study_records"]

STUDY_FILE = "study.journal"
STUDY_NAME = "necklace-search"


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def _diff(saved: Mapping[str, Any], now: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k), now.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} there, {b!r} now")
    return out


def open_study(config: SearchConfig) -> optuna.Study:
    """Create or reopen the study in ``config.output`` (an error when it was made with another configuration)."""
    if not HAVE_OPTUNA:
        raise ImportError("necklace search needs optuna: pip install 'necklace[search]' (or pip install optuna)")
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(out / STUDY_FILE)))
    study = optuna.create_study(
        storage=storage, study_name=STUDY_NAME, direction="maximize", load_if_exists=True, pruner=_pruner(config)
    )
    identity = json.loads(json.dumps(config.identity()))
    saved = study.user_attrs.get("config")
    if saved is None:
        study.set_user_attr("config", identity)
    elif saved != identity:
        diffs = _diff(saved, identity)
        raise ValueError(
            f"{str(out)!r} holds a search with another configuration ({'; '.join(diffs[:6])}). Run the same search "
            "again to resume it, or search into another --output folder (or delete that one) to start afresh."
        )
    return study


def _pruner(config: SearchConfig) -> optuna.pruners.BasePruner:
    rungs = config.rung_schedule()
    if config.pruner == "none" or len(rungs) == 1:
        return optuna.pruners.NopPruner()
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=rungs[0], max_resource=rungs[-1], reduction_factor=config.reduction_factor
        )
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=rungs[0], reduction_factor=config.reduction_factor, min_early_stopping_rate=0
    )


def _sampler(config: SearchConfig, finished: int, n_trials: int, limit_ms: float) -> optuna.samplers.BaseSampler:
    """TPE seeded from the number of finished trials; a rejected trial is *infeasible* (by how much it is over the
    budget), so the sampler ranks it apart from trained-but-weak ones rather than as the worst of them."""

    def over_budget(t: optuna.trial.FrozenTrial) -> list[float]:
        lat = t.user_attrs.get("latency") or {}
        return [float(lat["ms"]) - limit_ms] if "ms" in lat else [0.0]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate / group TPE and constraints are "experimental" in Optuna
        return optuna.samplers.TPESampler(
            seed=config.seed * 100_003 + finished,
            n_startup_trials=max(4, n_trials // 4),
            multivariate=True,
            group=True,
            warn_independent_sampling=False,
            constraints_func=over_budget,
        )


class _Stop(Exception):
    """A trial ends without a value (pruned, rejected, failed); ``state`` says how."""

    def __init__(self, state: TrialState) -> None:
        super().__init__(state.name)
        self.state = state


@dataclass
class TrialRunner:
    """Runs one trial: draw (or take the enqueued hand-made neck), time, reject or train with pruning.

    ``progress`` lines go to stderr; ``make_detector(neck)`` builds the whole detector for
    ``config.latency_scope == "detector"``; ``short_base``: the recipe of the short trainings (``None``:
    ``config.base``; inside a YOLO detector the proxy's). A neck whose outputs differ in width trains behind a
    1x1 projection to one width (:func:`~necklace.detection.search.fidelity.uniform_width`: torchvision's heads
    are shared across levels); it is timed, and retrained by the verdict, as it is.
    """

    config: SearchConfig
    specs: tuple[FeatureSpec, ...]
    space: SearchSpace
    cache: FeatureCache
    probe: LatencyProbe
    handmade: dict[str, NeckChoice]
    limit_ms: float
    progress: bool = True
    make_detector: Callable[[nn.Module], nn.Module] | None = None
    on_rung: Callable[[int, RungResult], None] | None = None
    short_base: TrainConfig | None = None

    # ------------------------------------------------------------------ drawing
    def _parent_cells(self, study: optuna.Study) -> Callable[[tuple[int, int]], tuple[Any, ...]]:
        def parent(levels: tuple[int, int]) -> tuple[Any, ...]:
            best = None
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                opts = t.user_attrs.get("options", {})
                if opts.get("template") == "cells" and tuple(opts.get("levels", ())) == levels:
                    if best is None or (t.value or 0) > (best.value or 0):
                        best = t
            if best is None:
                return ()
            return tuple(Candidate.from_options(best.user_attrs["options"]).cells)

        return parent

    def _draw(self, trial: optuna.Trial) -> tuple[str, str, dict[str, Any], str, int]:
        """``(kind, neck name, options, label, finest stride)`` of the trial."""
        name = trial.user_attrs.get("handmade")
        if name is not None:
            trial.suggest_categorical("handmade", list(self.handmade))  # fixed by the enqueued trial
            choice = self.handmade[name]
            neck = build_neck(choice.name, self.specs, **choice.options)
            stride = min(s.stride for s in neck.out_specs)  # type: ignore[union-attr]
            return "hand-made", choice.name, dict(choice.options), choice.label, int(stride)
        cand = self.space.suggest(
            lambda n, choices: trial.suggest_categorical(n, list(choices)), self._parent_cells(trial.study)
        )
        label = cand.label + (" (level anchor)" if trial.user_attrs.get("anchor") else "")
        return "searched", "searched", cand.to_options(), label, cand.finest_stride

    def _build(self, neck: str, options: Mapping[str, Any]) -> nn.Module:
        if neck == "searched":
            return searched_neck(self.specs, **options)
        return build_neck(neck, self.specs, **options)

    # ------------------------------------------------------------------ one trial
    def run(self, trial: optuna.Trial, label_prefix: str = "") -> float:
        """The objective: returns the metric after the last rung, or raises :class:`_Stop`."""
        t0 = time.perf_counter()
        kind, neck, options, label, stride = self._draw(trial)
        sig = json.dumps({"neck": neck, "options": options}, sort_keys=True)
        for k, v in (("kind", kind), ("neck", neck), ("options", options), ("label", label)):
            trial.set_user_attr(k, v)
        trial.set_user_attr("finest_stride", stride)
        twin = self._twin(trial, sig)
        if twin is not None:
            return self._copy(trial, twin, label_prefix, label)
        lat = trial.user_attrs.get("latency")  # a resumed trial keeps the latency it was judged by
        if lat is None:
            module = self._build(neck, options)
            timed = self.make_detector(module) if self.make_detector is not None else module
            lat = self.probe.measure(timed).to_dict()
            trial.set_user_attr("latency", lat)
        head = f"{label_prefix} {kind} {label}: {lat['ms']:.3g} ms ({lat['ratio']:.2f}x the reference)"
        if lat["ms"] > self.limit_ms:
            trial.set_user_attr("status", "rejected")
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            _say(self.progress, f"{head} > budget {self.limit_ms:.3g} ms: rejected in {lat['seconds']:.1f} s")
            raise _Stop(TrialState.PRUNED)
        _say(self.progress, f"{head}, within budget: training")
        rungs_done: list[dict[str, Any]] = []
        metric = self.config.metric
        last_rung = self.config.rungs - 1

        def on_rung(r: RungResult) -> None:
            value = max(float(getattr(r.metrics, metric)), 0.0)
            rungs_done.append(r.to_dict())
            trial.set_user_attr("rungs", rungs_done)
            if r.step not in trial.study.get_trials(deepcopy=False)[trial.number].intermediate_values:
                trial.report(value, r.step)  # a resumed trial sees its earlier rungs again: report them once
            _say(self.progress, f"{label_prefix}   step {r.step}: {metric} {value:.4f} ({r.seconds:.0f} s)")
            if self.on_rung is not None:
                self.on_rung(trial.number, r)
            # the hand-made necks are the bar: their values enter every rung's competition (should_prune records
            # them) but they always train to the end, so the verdict's baseline is never a victim of early noise
            if r.rung < last_rung and trial.should_prune() and kind != "hand-made":
                trial.set_user_attr("pruned_at", r.rung)
                raise _Stop(TrialState.PRUNED)

        ckpt = self.config.out / "trials" / f"trial{trial.number}.pt"
        recipe = self.short_base if self.short_base is not None else self.config.base
        assert isinstance(recipe, TrainConfig)
        settings = ShortTraining(recipe, tuple(self.config.rung_schedule()), seed=self.config.seed, checkpoint=ckpt)
        try:
            results = train_short(lambda: uniform_width(self._build(neck, options)), self.cache, settings, on_rung)
        except (_Stop, FloatingPointError, ValueError, RuntimeError):
            ckpt.unlink(missing_ok=True)  # the trial ends here (pruned / failed): its checkpoint is not needed
            raise  # (an interruption, KeyboardInterrupt, leaves it for the rerun)
        finally:
            trial.set_user_attr("seconds", time.perf_counter() - t0)
        ckpt.unlink(missing_ok=True)
        return max(float(getattr(results[-1].metrics, metric)), 0.0)

    def _twin(self, trial: optuna.Trial, sig: str) -> optuna.trial.FrozenTrial | None:
        for t in trial.study.get_trials(deepcopy=False):
            if t.number == trial.number or t.state in (TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL):
                continue
            other = json.dumps(
                {"neck": t.user_attrs.get("neck"), "options": t.user_attrs.get("options")}, sort_keys=True
            )
            if other == sig:
                return t
        return None

    def _copy(self, trial: optuna.Trial, twin: optuna.trial.FrozenTrial, prefix: str, label: str) -> float:
        for k in ("latency", "rungs", "status", "pruned_at"):
            if k in twin.user_attrs:
                trial.set_user_attr(k, twin.user_attrs[k])
        trial.set_user_attr("duplicate_of", twin.number)
        trial.set_user_attr("seconds", 0.0)
        _say(self.progress, f"{prefix} {label}: same neck as trial {twin.number}, its result reused")
        if twin.state == TrialState.COMPLETE:
            return float(twin.value)  # type: ignore[arg-type]
        for step, value in sorted(twin.intermediate_values.items()):
            trial.report(value, step)
        raise _Stop(TrialState.PRUNED)


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))


def _trained(trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    """Trials that cost a training (not rejected, not reused from an identical one)."""
    return sum(
        1
        for t in trials
        if t.user_attrs.get("status") != "rejected"
        and "duplicate_of" not in t.user_attrs
        and t.state != TrialState.FAIL
    )


def _tell(study: optuna.Study, runner: TrialRunner, trial: optuna.Trial, prefix: str) -> None:
    try:
        value = runner.run(trial, prefix)
    except _Stop as stop:
        study.tell(trial, state=stop.state)
    except (FloatingPointError, ValueError, RuntimeError) as e:  # a bad candidate ends its trial, not the search
        trial.set_user_attr("status", "failed")
        trial.set_user_attr("reason", f"{type(e).__name__}: {e}"[:300])
        _say(runner.progress, f"{prefix} failed: {type(e).__name__}: {e}")
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, value)


def run_study(
    study: optuna.Study,
    runner: TrialRunner,
    n_trials: Callable[[optuna.Study], int],
    on_trial: Callable[[TrialRecord], None] | None = None,
    max_attempts: Callable[[int], int] = lambda n: 4 * n + 20,
    out_of_time: Callable[[], bool] | None = None,
) -> None:
    """Run trials until ``n_trials(study)`` of them have trained (rejected and reused trials are cheap and not
    counted; at most ``max_attempts(n)`` trials in all). Enqueues the hand-made necks on a new study and first
    continues any trial an interruption left running. ``on_trial`` is called with each finished trial. When
    ``out_of_time()`` says so, the study stops and its size becomes the trials trained so far (stored: a rerun
    does not add more)."""
    if not study.user_attrs.get("enqueued"):
        for name in runner.handmade:
            study.enqueue_trial({"handmade": name}, user_attrs={"handmade": name}, skip_if_exists=False)
        anchors = runner.space.anchors() if runner.config.anchors else []
        for params in anchors:
            study.enqueue_trial(params, user_attrs={"anchor": True}, skip_if_exists=False)
        study.set_user_attr("enqueued", [*runner.handmade, *(f"anchor P{p['min_level']}" for p in anchors)])

    def done(t: optuna.trial.FrozenTrial) -> None:
        if on_trial is not None:
            on_trial(records_from_trials([study.get_trials(deepcopy=False)[t.number]])[0])

    for ft in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # left by an interruption
        _say(runner.progress, f"[trial {ft.number}] resuming the trial an interruption left running")
        study.sampler = _sampler(runner.config, ft.number, n_trials(study), runner.limit_ms)
        trial = optuna.trial.Trial(study, ft._trial_id)  # the same trial (number, params) continues
        _tell(study, runner, trial, f"[trial {ft.number}]")
        done(ft)
    while True:
        finished = _finished(study)
        target = n_trials(study)
        if _trained(finished) >= target or len(finished) >= max_attempts(target):
            break
        if out_of_time is not None and _trained(finished) >= 1 and out_of_time():
            study.set_user_attr("n_trials", _trained(finished))
            study.set_user_attr("stopped_by_time", True)
            _say(runner.progress, f"search: out of time for trials after {_trained(finished)} trained ones")
            break
        study.sampler = _sampler(runner.config, len(finished), target, runner.limit_ms)
        trial = study.ask()
        _tell(study, runner, trial, f"[trial {trial.number} | {_trained(finished) + 1}/{target}]")
        done(study.get_trials(deepcopy=False)[trial.number])


def study_records(study: optuna.Study) -> list[TrialRecord]:
    """Every trial of the study as a :class:`TrialRecord`."""
    return records_from_trials(study.get_trials(deepcopy=False))


def expected_trial_fraction(rungs: Sequence[int], reduction_factor: int) -> float:
    """Expected cost of a trial under successive halving, as a fraction of a full one (steps only).

    Example:
        >>> round(expected_trial_fraction([40, 120, 360], 3), 3)
        0.259
    """
    cost, prev = 0.0, 0
    for k, r in enumerate(rungs):
        cost += (r - prev) / reduction_factor**k
        prev = r
    return cost / rungs[-1] if rungs else math.nan
