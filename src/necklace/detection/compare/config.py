"""What a comparison runs: the contenders (:class:`NeckChoice`), what they share and the seeds
(:class:`CompareConfig`), and the built-in CPU-sized comparison (:data:`DEFAULT_BASE`, :data:`DEFAULT_NECKS`)."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from necklace.detection.compare.yolo_config import YoloTrainConfig, is_yolo_detector, yolo_neck_options
from necklace.detection.train import TrainConfig
from necklace.detection.train.config import _plain
from necklace.registry import neck_info

__all__ = ["DEFAULT_BASE", "DEFAULT_NECKS", "METRICS", "CompareConfig", "NeckChoice", "default_neck_options"]

#: Metrics aggregated over seeds (fields of :class:`~necklace.detection.CocoMetrics`), in table order.
METRICS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
METRIC_LABELS = {
    "ap": "AP",
    "ap50": "AP50",
    "ap75": "AP75",
    "ap_small": "AP_small",
    "ap_medium": "AP_medium",
    "ap_large": "AP_large",
}
#: Options each built-in pyramid neck gets in a comparison unless overridden: one width, the same levels (P3-P6),
#: so the necks differ only in how they mix the levels. Other necks use their own defaults.
#: Faster R-CNN settings that keep a CPU step short (smaller box head, fewer proposals and sampled boxes).
_CPU_FASTER_RCNN = {
    "representation_size": 128,
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 64,
    "rpn_pre_nms_top_n_train": 300,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 100,
}
#: The built-in comparison: a CPU-sized Faster R-CNN on the tiny backbone, 256 synthetic 128 px images (48 for
#: evaluation), 1200 steps of 4 images: about 10 minutes on 2 CPU cores for 3 necks x 2 seeds.
DEFAULT_BASE = TrainConfig(
    detector="faster_rcnn",
    backbone="tiny",
    backbone_options={"width": 16},
    detector_options=_CPU_FASTER_RCNN,
    data="synthetic",
    data_options={"num_images": 256, "val_images": 48},
    image_size=128,
    batch_size=4,
    epochs=None,
    steps=1200,
    log_every=50,
    checkpoint_every=200,
    tensorboard=False,
    eval=True,
)
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_RUN_FIELDS = ("neck", "neck_options", "seed", "output", "eval")  # set per run by CompareConfig.run_config


def default_neck_options(name: str) -> dict[str, Any]:
    """Options a neck gets in a comparison unless overridden: its registry entry's ``compare_options``
    (``fpn``/``pafpn``/``augfpn``: width 32, P3-P6; ``bifpn``: the same, 2 cells; others ``{}``, their own defaults).

    Example:
        >>> default_neck_options("bifpn"), default_neck_options("yolo_pafpn")
        ({'width': 32, 'levels': [3, 6], 'repeats': 2}, {})
    """
    options = neck_info(name).compare_options  # unknown names fail here, with the known ones listed
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in (options or {}).items()}


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class NeckChoice:
    """One contender: a registered neck, its options, and the label it is reported (and stored) under.

    Example:
        >>> NeckChoice("bifpn", {"repeats": 3}, label="bifpn3")
        NeckChoice(name='bifpn', options={'repeats': 3}, label='bifpn3')
        >>> NeckChoice("fpn").label
        'fpn'
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"NeckChoice: name must be a registered neck name such as 'fpn', got {self.name!r}.")
        neck_info(self.name)
        if not isinstance(self.label, str):
            raise TypeError(f"NeckChoice {self.name!r}: label must be a string, got {self.label!r}.")
        if not isinstance(self.options, Mapping):
            raise TypeError(f"NeckChoice {self.name!r}: options must be a dict, got {type(self.options).__name__}.")
        # the plain-data copy TrainConfig makes (tuples -> lists), so configs compare equal after a round trip
        object.__setattr__(self, "options", _plain(self.options, "neck_options"))
        label = self.label or self.name
        if not _LABEL.match(label):
            raise ValueError(
                f"NeckChoice label {label!r}: use letters, digits and '_.+-' (it names the run directory)."
            )
        object.__setattr__(self, "label", label)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options), "label": self.label}


def _as_choice(value: Any, base: Any = None) -> NeckChoice:
    if isinstance(value, NeckChoice):
        return value
    if isinstance(value, str):
        if isinstance(base, YoloTrainConfig):
            return NeckChoice(value, yolo_neck_options(value, base.detector))
        return NeckChoice(value, default_neck_options(value))
    if isinstance(value, Mapping):
        return NeckChoice(**dict(value))
    raise TypeError(f"CompareConfig.necks: give names, NeckChoice or dicts, got {type(value).__name__}.")


DEFAULT_NECKS = tuple(NeckChoice(n, default_neck_options(n)) for n in ("fpn", "pafpn", "bifpn"))


@dataclass(frozen=True)
class CompareConfig:
    """What :func:`compare` runs.

    Args:
        necks: the contenders: :class:`NeckChoice` objects, dicts of their fields, or names (a name gets
            :func:`default_neck_options`, or :func:`~necklace.detection.compare.yolo_config.yolo_neck_options`
            inside a YOLO detector). Labels must be unique.
        base: everything the runs share (detector, backbone, data, schedule, ...): a :class:`TrainConfig`
            (torchvision detectors trained by necklace), or a :class:`~necklace.detection.compare.YoloTrainConfig`
            (an Ultralytics YOLO detector trained by Ultralytics); its ``neck``, ``neck_options``, ``seed`` and
            ``output`` are replaced per run (and a TrainConfig's ``eval`` is switched on).
        seeds: one run per neck and seed.
        output: directory for the runs and the results.
        metric: the metric necks are ranked and tested on (one of :data:`METRICS`).
        latency_image_size: image side for the latency/FLOPs profile (default ``base.image_size``).
        latency_repeats, latency_warmup: timed and untimed (first) forward passes per measurement.
        gpu_latency: also time on CUDA; ``None``: when CUDA is available.
        learned_ap50: the learning floor: a neck whose runs do not all reach this AP50 (0..1; default 0.05, i.e.
            5 on the report's x 100 scale, where an untrained detector scores about 0) did not learn at this
            setting and is not ranked: differences between runs that learned nothing are noise around zero.

    Example:
        >>> cfg = CompareConfig(necks=("fpn", {"name": "bifpn", "options": {"width": 16}}), seeds=(0,))
        >>> CompareConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    necks: tuple[NeckChoice, ...] = DEFAULT_NECKS
    base: TrainConfig | YoloTrainConfig = DEFAULT_BASE
    seeds: tuple[int, ...] = (0, 1)
    output: str = "runs/compare"
    metric: str = "ap"
    latency_image_size: int | None = None
    latency_repeats: int = 30
    latency_warmup: int = 10
    gpu_latency: bool | None = None
    learned_ap50: float = 0.05

    def __post_init__(self) -> None:
        if isinstance(self.necks, (str, NeckChoice, Mapping)) or not isinstance(self.necks, Sequence):
            raise TypeError("CompareConfig.necks must be a sequence of neck names / NeckChoice, e.g. ('fpn', 'pafpn').")
        necks = tuple(_as_choice(n, self.base) for n in self.necks)
        if not necks:
            raise ValueError("CompareConfig.necks is empty; give at least one neck, e.g. ('fpn', 'pafpn').")
        labels = [n.label for n in necks]
        dup = sorted({lb for lb in labels if labels.count(lb) > 1})
        if dup:
            raise ValueError(
                f"CompareConfig.necks: labels {dup} appear twice; give the variants distinct labels "
                "(NeckChoice(name, options, label=...))."
            )
        object.__setattr__(self, "necks", necks)
        if not isinstance(self.base, (TrainConfig, YoloTrainConfig)):
            raise TypeError(
                f"CompareConfig.base must be a TrainConfig (torchvision detectors) or a YoloTrainConfig (Ultralytics "
                f"YOLO), got {type(self.base).__name__}."
            )
        if isinstance(self.seeds, (str, bytes)) or not isinstance(self.seeds, Sequence) or not self.seeds:
            raise ValueError(
                f"CompareConfig.seeds must be a non-empty sequence of ints, e.g. (0, 1), got {self.seeds!r}."
            )
        seeds = tuple(self.seeds)
        ints = all(isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_)) for s in seeds)
        if not ints or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"CompareConfig.seeds must be distinct non-negative ints, got {list(seeds)}.")
        object.__setattr__(self, "seeds", tuple(int(s) for s in seeds))
        if not isinstance(self.output, (str, os.PathLike)) or not str(self.output).strip():
            raise TypeError(
                f"CompareConfig.output must be a directory path (str or Path), got {self.output!r}; "
                "e.g. output='runs/x'."
            )
        object.__setattr__(self, "output", os.fspath(self.output))
        if self.metric not in METRICS:
            raise ValueError(f"CompareConfig.metric {self.metric!r}: choose one of {list(METRICS)}.")
        for name, value, low in (
            ("latency_image_size", self.latency_image_size, 32),
            ("latency_repeats", self.latency_repeats, 1),
            ("latency_warmup", self.latency_warmup, 0),
        ):
            if value is None and name == "latency_image_size":
                continue
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"CompareConfig.{name} must be an int >= {low}, got {value!r}.")
            object.__setattr__(self, name, int(value))
        if self.gpu_latency is not None and not isinstance(self.gpu_latency, bool):
            raise TypeError(f"CompareConfig.gpu_latency must be True, False or None (auto), got {self.gpu_latency!r}.")
        floor = self.learned_ap50
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0.0 <= floor < 1.0:
            raise ValueError(
                f"CompareConfig.learned_ap50 must be a number in [0, 1) (AP50 as a fraction, e.g. 0.05), got {floor!r}."
            )
        object.__setattr__(self, "learned_ap50", float(floor))

    # -------------------------------------------------------------------------------------------- runs
    def run_dir(self, neck: NeckChoice, seed: int) -> Path:
        """``<output>/runs/<label>/seed<seed>``."""
        return Path(self.output) / "runs" / neck.label / f"seed{seed}"

    @property
    def yolo(self) -> bool:
        """Whether the detector is an Ultralytics YOLO model (``base`` is a :class:`YoloTrainConfig`)."""
        return isinstance(self.base, YoloTrainConfig)

    def run_config(self, neck: NeckChoice, seed: int) -> Any:
        """The config of one run: ``base`` with this neck, seed and run directory (a :class:`TrainConfig` with
        ``eval=True``, or a :class:`YoloTrainConfig`)."""
        if isinstance(self.base, YoloTrainConfig):
            return self.base.replace(
                neck=neck.name, neck_options=dict(neck.options), seed=seed, output=str(self.run_dir(neck, seed))
            )
        return self.base.replace(
            neck=neck.name,
            neck_options=dict(neck.options),
            seed=seed,
            output=str(self.run_dir(neck, seed)),
            eval=True,
        )

    @property
    def profile_image_size(self) -> int:
        return int(self.latency_image_size or self.base.image_size)

    # -------------------------------------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready); ``base`` as :meth:`TrainConfig.to_dict`."""
        return {
            "necks": [n.to_dict() for n in self.necks],
            "base": self.base.to_dict(),
            "seeds": list(self.seeds),
            "output": self.output,
            "metric": self.metric,
            "latency_image_size": self.latency_image_size,
            "latency_repeats": self.latency_repeats,
            "latency_warmup": self.latency_warmup,
            "gpu_latency": self.gpu_latency,
            "learned_ap50": self.learned_ap50,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompareConfig:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"CompareConfig: unknown keys {unknown}; expected some of {sorted(names)}.")
        kw = dict(data)
        if "base" in kw and isinstance(kw["base"], Mapping):
            yolo = is_yolo_detector(kw["base"].get("detector"))
            kw["base"] = (YoloTrainConfig if yolo else TrainConfig).from_dict(kw["base"])
        if "necks" in kw:
            kw["necks"] = tuple(kw["necks"])
        if "seeds" in kw:
            kw["seeds"] = tuple(kw["seeds"])
        return cls(**kw)

    def replace(self, **changes: Any) -> CompareConfig:
        return dataclasses.replace(self, **changes)
