"""What a search runs: :class:`SearchConfig` (frozen, round-trips through plain dicts) and its CPU-sized default.

Example:
    >>> cfg = SearchConfig(latency_budget="1.5x", n_trials=12)
    >>> SearchConfig.from_dict(cfg.to_dict()) == cfg
    True
    >>> cfg.budget.relative, cfg.rung_schedule()
    (True, [60, 180, 540])
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from necklace.detection.compare import DEFAULT_BASE, METRICS
from necklace.detection.compare.yolo_config import (
    DEFAULT_YOLO_BASE,
    YOLO_FAMILIES,
    YoloTrainConfig,
    default_yolo_necks,
    is_yolo_detector,
)
from necklace.detection.detectors import DETECTOR_KINDS
from necklace.detection.search.data import PRESETS
from necklace.detection.search.latency import LATENCY_SCOPES, LatencyBudget
from necklace.detection.search.space import DEFAULT_HANDMADE, SearchSpace
from necklace.detection.train import TrainConfig

__all__ = ["CPU_BASE", "CPU_YOLO_BASE", "PRUNERS", "YOLO_PROXY", "YOLO_WARMUP_EPOCHS", "SearchConfig", "parse_duration"]

PRUNERS = ("successive_halving", "hyperband", "none")
#: The full recipe of the CPU-sized default (what the verdict retrains, end to end, over seeds): ``necklace
#: compare``'s CPU Faster R-CNN on the tiny backbone, its maps from stride 4 (C2..C5) so that a neck can use N2,
#: 500 steps of 4 images at 128 px.
CPU_BASE = DEFAULT_BASE.replace(
    backbone_options={"width": 16, "levels": [2, 5]},
    steps=500,
    checkpoint_every=100,
    log_every=50,
)
#: The verdict's recipe of a search inside an Ultralytics YOLO detector (``necklace search --detector yolov8n``):
#: ``necklace compare``'s built-in YOLO comparison (YOLOv8n trained by Ultralytics from random weights at 128 px,
#: batch 16, ``nbs`` 16 and one warm-up epoch, 30 epochs: it learns on tiny_shapes, AP 21-35 in docs/search.md's
#: run), on the CPU.
CPU_YOLO_BASE = DEFAULT_YOLO_BASE.replace(device="cpu", output="runs/search-yolo")
#: Epochs of the warm-up training (Ultralytics, the stock YOLO model, this data) whose backbone the short trainings
#: of a YOLO search freeze, unless ``SearchConfig.warmup_epochs`` says otherwise (30 on tiny_shapes gave the proxy
#: a backbone to learn from; 5 did not: docs/search.md).
YOLO_WARMUP_EPOCHS = 30
#: The proxy head of a YOLO search's short trainings: the torchvision path's own CPU recipe (:data:`CPU_BASE`:
#: Faster R-CNN on cached maps, its batch, optimizer and learning rate), on the YOLO data at the YOLO image size.
#: Only the verdict trains inside YOLO, with Ultralytics' Detect head and loss.
YOLO_PROXY = CPU_BASE
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(s|sec|m|min|h)?\s*$", re.IGNORECASE)


def parse_duration(text: str | float | None) -> float | None:
    """Seconds from ``"30m"``, ``"1.5h"``, ``"90s"`` or a number of seconds; ``None`` stays ``None``.

    Example:
        >>> parse_duration("30m"), parse_duration("1.5h"), parse_duration(45)
        (1800.0, 5400.0, 45.0)
    """
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"a time budget must be positive, got {text!r}.")
        return float(text)
    m = _DURATION.match(str(text))
    if m is None or not float(m.group(1)) > 0:
        raise ValueError(f"time budget {text!r}: write e.g. '30m', '1.5h', '90s' or a number of seconds.")
    unit = (m.group(2) or "s").lower()
    return float(m.group(1)) * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[unit]


def _int(owner: str, value: Any, low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        extra = " or None" if allow_none else ""
        raise ValueError(f"SearchConfig.{owner} must be an int >= {low}{extra}, got {value!r}.")


@dataclass(frozen=True)
class SearchConfig:
    """Everything :func:`~necklace.detection.search.search` needs. Defaults are the CPU-sized search (about 30
    minutes on 2 cores): ``tiny_shapes`` data, the tiny backbone, Faster R-CNN, a budget of three times the
    reference neck's latency.

    Args:
        base: the full training recipe (detector, backbone, data, schedule) the verdict retrains over seeds; the
            search's short trainings share its detector, backbone, data, batch size and optimizer. A
            :class:`~necklace.detection.compare.YoloTrainConfig` (e.g. :data:`CPU_YOLO_BASE`) searches inside that
            Ultralytics YOLO detector: candidates output its ``levels`` and are timed on its backbone's maps at its
            image size, the short trainings (a proxy: :data:`YOLO_PROXY`'s head on cached maps of the frozen YOLO
            backbone) rank them, and the verdict retrains the finalists inside YOLO with Ultralytics' trainer.
        preset: built-in data (``"tiny_shapes"``) replacing ``base.data`` / ``base.val_data``; ``None``: use them.
        latency_budget: ``"5ms"`` / ``5`` (milliseconds) or ``"3x"`` (times the reference = first hand-made neck).
        runtime, device, latency_scope, latency_threads, latency_repeats: where and how candidates are timed
            (rounds interleaved with the reference, fewer for slow necks; :mod:`~necklace.detection.search.latency`).
        time_budget: wall-clock seconds for the whole search, verdict included; the number of trials is sized to
            it after the first (baseline) trial. ``None``: ``n_trials`` (default 24).
        n_trials: fixed number of trials (hand-made ones included); wins over ``time_budget``.
        min_trials, max_trials: bounds of the sized study.
        space: the search space (``None``: :meth:`SearchSpace.for_backbone` on the backbone's maps);
            ``free_cells``: add the mutated merging-cell space.
        handmade: registered necks always in the race (with ``necklace compare``'s default options); ``None``: the
            detector's defaults (fpn, pafpn, bifpn, yolo_pafpn; inside YOLO: its family's own neck, pafpn, bifpn).
            Inside YOLO the family's own neck (``yolo_pafpn`` / ``yolo11_pafpn``) is always in, first (the
            reference).
        anchors: also enqueue the plainest candidate at every finest level (:meth:`SearchSpace.anchors`).
        metric: what is maximised and tested (one of compare's ``METRICS``).
        rung_steps, reduction_factor, rungs: the short training: evaluations after ``rung_steps * factor**k``
            steps, ``k < rungs``; a trial goes on past a rung only when in the top ``1 / factor`` there.
        pruner: ``"successive_halving"``, ``"hyperband"`` or ``"none"``.
        warmup_steps: steps of the one end-to-end training that gives the frozen backbone when
            ``base.pretrained`` is off (nothing is downloaded); 0 with ``pretrained``. Torchvision detectors only.
        warmup_epochs: YOLO detectors only: epochs of the one Ultralytics training of the stock YOLO model (from
            random weights, on the same data) whose backbone the short trainings freeze; ``None``:
            :data:`YOLO_WARMUP_EPOCHS`.
        holdout: fraction of the training images the short trainings are evaluated on (never trained on by
            them; the verdict evaluates on the validation data).
        fidelity_images: at most this many training images are cached for the short trainings.
        seed: sampler, short trainings and warm-up.
        verdict, verdict_top, verdict_seeds: retrain the best ``verdict_top`` searched necks and the best hand-made
            neck at the full recipe over these seeds through ``compare``.
        output: the folder of everything (study journal, runs, report); run the same call again to resume.

    Example:
        >>> SearchConfig(metric="ap_small", verdict_seeds=(0, 1, 2)).verdict_seeds
        (0, 1, 2)
        >>> SearchConfig(pruner="median")
        Traceback (most recent call last):
        ...
        ValueError: SearchConfig.pruner 'median': choose one of ['successive_halving', 'hyperband', 'none'].
    """

    base: TrainConfig | YoloTrainConfig = CPU_BASE
    preset: str | None = "tiny_shapes"
    latency_budget: str | float = "3x"
    runtime: str = "torch"
    device: str = "cpu"
    latency_scope: str = "neck"
    latency_threads: int | None = None
    latency_repeats: int = 60
    time_budget: float | None = None
    n_trials: int | None = None
    min_trials: int = 8
    max_trials: int = 80
    space: SearchSpace | None = None
    free_cells: bool = False
    handmade: tuple[str, ...] | None = None
    anchors: bool = True
    metric: str = "ap"
    rung_steps: int = 60
    reduction_factor: int = 3
    rungs: int = 3
    pruner: str = "successive_halving"
    warmup_steps: int = 300
    warmup_epochs: int | None = None
    holdout: float = 0.2
    fidelity_images: int | None = 1024
    seed: int = 0
    verdict: bool = True
    verdict_top: int = 2
    verdict_seeds: tuple[int, ...] = (0, 1, 2)
    output: str = "runs/search"

    def __post_init__(self) -> None:
        if not isinstance(self.base, (TrainConfig, YoloTrainConfig)):
            raise TypeError(
                f"SearchConfig.base must be a TrainConfig (torchvision detectors) or a YoloTrainConfig (Ultralytics "
                f"YOLO), got {type(self.base).__name__}."
            )
        if isinstance(self.base, TrainConfig) and self.base.detector not in DETECTOR_KINDS:  # pragma: no cover
            raise ValueError(f"SearchConfig.base.detector {self.base.detector!r}: choose one of {DETECTOR_KINDS}.")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"SearchConfig.preset {self.preset!r}: choose one of {list(PRESETS)} or None.")
        LatencyBudget.parse(self.latency_budget)
        if isinstance(self.latency_budget, str):
            object.__setattr__(self, "latency_budget", LatencyBudget.parse(self.latency_budget).to_text())
        if not isinstance(self.runtime, str) or not self.runtime:
            raise ValueError(f"SearchConfig.runtime must be a runtime name such as 'torch', got {self.runtime!r}.")
        if self.latency_scope not in LATENCY_SCOPES:
            raise ValueError(
                f"SearchConfig.latency_scope {self.latency_scope!r}: choose one of {list(LATENCY_SCOPES)}."
            )
        if self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"SearchConfig.device {self.device!r}: use 'cpu', 'cuda' or 'cuda:N'.")
        _int("latency_threads", self.latency_threads, 1, allow_none=True)
        _int("latency_repeats", self.latency_repeats, 1)
        object.__setattr__(self, "time_budget", parse_duration(self.time_budget))
        _int("n_trials", self.n_trials, 1, allow_none=True)
        _int("min_trials", self.min_trials, 1)
        _int("max_trials", self.max_trials, self.min_trials)
        if self.space is not None and not isinstance(self.space, SearchSpace):
            raise TypeError(f"SearchConfig.space must be a SearchSpace or None, got {type(self.space).__name__}.")
        if self.handmade is not None and (isinstance(self.handmade, str) or not isinstance(self.handmade, Sequence)):
            raise TypeError(f"SearchConfig.handmade must be a list of neck names, got {self.handmade!r}.")
        object.__setattr__(self, "handmade", self._handmade())
        if self.metric not in METRICS:
            raise ValueError(f"SearchConfig.metric {self.metric!r}: choose one of {list(METRICS)}.")
        _int("rung_steps", self.rung_steps, 1)
        _int("reduction_factor", self.reduction_factor, 2)
        _int("rungs", self.rungs, 1)
        if self.pruner not in PRUNERS:
            raise ValueError(f"SearchConfig.pruner {self.pruner!r}: choose one of {list(PRUNERS)}.")
        _int("warmup_steps", self.warmup_steps, 0)
        if isinstance(self.base, YoloTrainConfig):
            self._check_yolo()
        elif self.warmup_epochs is not None:
            raise ValueError(
                f"SearchConfig.warmup_epochs={self.warmup_epochs!r} applies to YOLO detectors (Ultralytics trains in "
                "epochs); torchvision detectors warm their backbone up for warmup_steps steps."
            )
        elif self.warmup_steps == 0 and not self.base.pretrained:
            raise ValueError(
                "SearchConfig.warmup_steps=0 needs base.pretrained=True: the short trainings use a frozen backbone, "
                "and a random one teaches them nothing. Give warmup_steps (e.g. 300) or a pretrained backbone."
            )
        if not 0 < self.holdout < 1:
            raise ValueError(f"SearchConfig.holdout must be a fraction in (0, 1), got {self.holdout!r}.")
        _int("fidelity_images", self.fidelity_images, 4, allow_none=True)
        _int("seed", self.seed, 0)
        _int("verdict_top", self.verdict_top, 1)
        seeds = tuple(self.verdict_seeds)
        if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
            raise ValueError(f"SearchConfig.verdict_seeds must be non-negative ints, got {self.verdict_seeds!r}.")
        object.__setattr__(self, "verdict_seeds", seeds)
        object.__setattr__(self, "output", str(self.output))

    def _handmade(self) -> tuple[str, ...]:
        """The hand-made necks: given or the detector's defaults; inside YOLO its family's own neck first."""
        if not isinstance(self.base, YoloTrainConfig):
            return DEFAULT_HANDMADE if self.handmade is None else tuple(self.handmade)
        names = default_yolo_necks(self.base.detector) if self.handmade is None else tuple(self.handmade)
        return tuple(dict.fromkeys([YOLO_FAMILIES[self.base.detector[:6]], *names]))

    def _check_yolo(self) -> None:
        """What a search inside a YOLO detector needs: levels a neck can span, a space that outputs them, epochs."""
        assert isinstance(self.base, YoloTrainConfig)
        lo, hi = self.base.levels
        if hi <= lo:
            raise ValueError(
                f"SearchConfig: a search inside {self.base.detector} needs at least two levels, got base.levels "
                f"{(lo, hi)}; use e.g. (3, 5) or (2, 5)."
            )
        default = {f.name: f.default for f in dataclasses.fields(self)}["warmup_steps"]
        if self.warmup_steps != default:
            raise ValueError(
                f"SearchConfig.warmup_steps={self.warmup_steps} applies to torchvision detectors; inside "
                f"{self.base.detector} the backbone warm-up is an Ultralytics training: give warmup_epochs instead."
            )
        if self.warmup_epochs is None:
            object.__setattr__(self, "warmup_epochs", YOLO_WARMUP_EPOCHS)
        _int("warmup_epochs", self.warmup_epochs, 1)
        space = self.space
        if space is not None and (space.min_levels != (lo,) or space.max_levels != (hi,)):
            raise ValueError(
                f"SearchConfig.space: inside {self.base.detector} every candidate outputs the detector's levels "
                f"{(lo, hi)} (its Detect head's), but the space has min_levels {space.min_levels} and max_levels "
                f"{space.max_levels}; give min_levels=({lo},), max_levels=({hi},) or change base.levels."
            )
        if space is not None and "nasfpn" in space.templates and hi - lo != 4:
            raise ValueError(
                f"SearchConfig.space: the nasfpn template spans five levels but {self.base.detector}'s are {(lo, hi)}; "
                "drop nasfpn from the templates or use five levels."
            )

    @property
    def yolo(self) -> bool:
        """Whether the search runs inside an Ultralytics YOLO detector (``base`` is a YoloTrainConfig)."""
        return isinstance(self.base, YoloTrainConfig)

    @property
    def budget(self) -> LatencyBudget:
        return LatencyBudget.parse(self.latency_budget)

    @property
    def out(self) -> Path:
        return Path(self.output)

    def rung_schedule(self) -> list[int]:
        """The steps at which a short training is evaluated (and may be pruned); the last is its length."""
        return [self.rung_steps * self.reduction_factor**k for k in range(self.rungs)]

    # ------------------------------------------------------------------ plain data
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "base":
                v = v.to_dict()
            elif f.name == "space":
                v = v.to_dict() if v is not None else None
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"SearchConfig: unknown keys {unknown}; expected some of {sorted(names)}.")
        kw = dict(data)
        if isinstance(kw.get("base"), Mapping):
            yolo = is_yolo_detector(kw["base"].get("detector"))
            kw["base"] = (YoloTrainConfig if yolo else TrainConfig).from_dict(kw["base"])
        if isinstance(kw.get("space"), Mapping):
            kw["space"] = SearchSpace.from_dict(kw["space"])
        for key in ("handmade", "verdict_seeds"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    def replace(self, **changes: Any) -> SearchConfig:
        return dataclasses.replace(self, **changes)

    def identity(self) -> dict[str, Any]:
        """The fields that define a search's trials (a resumed search must match them): everything but the
        output folder, the time budget and the verdict settings (a finished study may be judged again)."""
        d = self.to_dict()
        for k in ("output", "time_budget", "verdict", "verdict_top", "verdict_seeds", "max_trials", "latency_repeats"):
            d.pop(k, None)
        base = dict(d["base"])
        for k in ("output", "device", "num_workers", "log_every", "checkpoint_every", "tensorboard", "seed", "steps"):
            base.pop(k, None)
        if self.yolo:
            base.pop("epochs", None)  # the verdict's; the warm-up has its own (warmup_epochs)
            d.pop("warmup_steps", None)
        else:
            d.pop("warmup_epochs", None)  # YOLO only (None): older studies have no such key
        d["base"] = base
        return d
