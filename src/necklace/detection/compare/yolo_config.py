"""What a comparison inside an Ultralytics YOLO detector shares: :class:`YoloTrainConfig` (the detector, data and
Ultralytics schedule), the YOLO detector names and the built-in CPU-sized YOLO comparison.

Plain data: nothing here imports Ultralytics (the runs do, in :mod:`necklace.detection.compare.yolo`), so a
configuration can be written, read and checked where Ultralytics is not installed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from necklace.detection.detectors import DETECTOR_KINDS
from necklace.detection.train.config import DataSpec, _known_fields, _plain
from necklace.registry import neck_info

__all__ = [
    "DEFAULT_YOLO_BASE",
    "RESUMABLE_YOLO_CHANGES",
    "YOLO_DETECTORS",
    "YoloTrainConfig",
    "check_detector",
    "default_yolo_necks",
    "is_yolo_detector",
    "yolo_neck_options",
]

#: YOLO family -> its hand-made neck in necklace (equal to Ultralytics' own neck layers)
YOLO_FAMILIES = {"yolov8": "yolo_pafpn", "yolo11": "yolo11_pafpn"}
_SCALES = ("n", "s", "m", "l", "x")
#: Detector names ``necklace compare --detector`` takes for Ultralytics YOLO models (the model YAMLs it ships)
YOLO_DETECTORS = tuple(f"{family}{scale}" for family in YOLO_FAMILIES for scale in _SCALES)
#: Width of the single-width necks (fpn, pafpn, bifpn, ...) per model scale: the P3 width of YOLOv8's own neck
_WIDTH = {"n": 64, "s": 128, "m": 192, "l": 256, "x": 320}
_WIDTH_NECKS = ("fpn", "pafpn", "bifpn", "augfpn", "nasfpn")
#: ``YoloTrainConfig`` fields that may change between a run and its resumption (they change no result)
RESUMABLE_YOLO_CHANGES = ("output", "device", "num_workers")
#: Ultralytics training arguments that compare sets itself (from the config's own fields, or per run)
RESERVED_TRAIN_ARGS = {
    "data": "--data",
    "epochs": "--epochs",
    "imgsz": "--image-size",
    "batch": "--batch-size",
    "seed": "--seeds",
    "lr0": "--lr",
    "device": "--device",
    "workers": "--workers",
    "project": "--output",
    "name": "--output",
    "exist_ok": "--output",
    "resume": "(compare resumes interrupted runs itself)",
    "model": "--detector",
    "pretrained": "(compare trains from random weights: nothing is downloaded)",
    "save_dir": "--output",
}
_SYNTHETIC_OPTIONS = {"num_images": 128, "val_images": 48, "num_classes": 3, "seed": 0}


def is_yolo_detector(name: object) -> bool:
    """Whether ``name`` is one of :data:`YOLO_DETECTORS` (an Ultralytics YOLOv8 / YOLO11 model).

    Example:
        >>> is_yolo_detector("yolov8n"), is_yolo_detector("yolo11s"), is_yolo_detector("fcos")
        (True, True, False)
    """
    return isinstance(name, str) and name in YOLO_DETECTORS


def check_detector(name: object) -> str:
    """``name`` when it is a torchvision detector kind or a YOLO detector, else a ``ValueError`` listing both.

    Example:
        >>> check_detector("yolo11n")
        'yolo11n'
        >>> check_detector("yolov9n")
        Traceback (most recent call last):
        ...
        ValueError: unknown detector 'yolov9n' (did you mean 'yolov8n'?); choose one of ...
    """
    if isinstance(name, str) and (name in DETECTOR_KINDS or name in YOLO_DETECTORS):
        return name
    hint = difflib.get_close_matches(name, [*DETECTOR_KINDS, *YOLO_DETECTORS], n=1) if isinstance(name, str) else []
    raise ValueError(
        f"unknown detector {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") + "; choose one of "
        f"{', '.join(DETECTOR_KINDS)} (torchvision heads on a necklace backbone) or {', '.join(YOLO_DETECTORS)} "
        "(Ultralytics YOLO, trained by Ultralytics: pip install 'necklace[ultralytics]')."
    )


def _scale(detector: str) -> str:
    return detector[-1] if detector[-1] in _SCALES else "n"


def yolo_neck_options(name: str, detector: str = "yolov8n") -> dict[str, Any]:
    """Options a neck gets in a comparison inside ``detector`` unless overridden: the single-width necks
    (fpn, pafpn, bifpn, augfpn, nasfpn) get the P3 width of YOLOv8's own neck at the model's scale (n: 64, s: 128,
    m: 192, l: 256, x: 320), bifpn 2 cells; every other neck its own defaults (``yolo_pafpn`` / ``yolo11_pafpn``
    take the model's scale as preset). Levels are the detector's (:attr:`YoloTrainConfig.levels`).

    Example:
        >>> yolo_neck_options("bifpn"), yolo_neck_options("pafpn", "yolo11s"), yolo_neck_options("yolo_pafpn")
        ({'width': 64, 'repeats': 2}, {'width': 128}, {})
    """
    neck_info(name)  # unknown names fail here, with the known ones listed
    if name not in _WIDTH_NECKS:
        return {}
    options: dict[str, Any] = {"width": _WIDTH[_scale(check_detector(detector))]}
    if name == "bifpn":
        options["repeats"] = 2
    return options


def default_yolo_necks(detector: str) -> tuple[str, ...]:
    """The necks compared by default inside ``detector``: its family's hand-made YOLO neck, pafpn and bifpn.

    Example:
        >>> default_yolo_necks("yolov8n"), default_yolo_necks("yolo11s")[0]
        (('yolo_pafpn', 'pafpn', 'bifpn'), 'yolo11_pafpn')
    """
    if not is_yolo_detector(detector):
        raise ValueError(f"default_yolo_necks: {detector!r} is not a YOLO detector; choose one of {YOLO_DETECTORS}.")
    return (YOLO_FAMILIES[detector[:6]], "pafpn", "bifpn")


def _int(name: str, value: Any, low: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"YoloTrainConfig.{name} must be an int >= {low}, got {value!r}.")
    return int(value)


@dataclass(frozen=True)
class YoloTrainConfig:
    """One Ultralytics YOLO training in a comparison: the shared part of :class:`~necklace.detection.compare.
    CompareConfig` when its detector is a YOLO model (its ``neck``, ``neck_options``, ``seed`` and ``output`` are
    set per run).

    Args:
        detector: one of :data:`YOLO_DETECTORS` (``yolov8n`` ... ``yolo11x``): the backbone and ``Detect`` head of
            that model YAML (shipped with Ultralytics; random weights, nothing downloaded).
        neck, neck_options: a registered neck and its options (:func:`~necklace.integrations.ultralytics.
            build_yolo`).
        levels: ``(finest, coarsest)`` pyramid levels of the neck's outputs and of ``Detect`` (P3-P5 as the stock
            model; ``(2, 5)`` adds the stride-4 map).
        data: ``"synthetic"`` (necklace's synthetic shapes, written once as a YOLO dataset) or
            ``"yolo:PATH/data.yaml"`` (an Ultralytics data file).
        data_options: synthetic only: ``num_images`` (128), ``val_images`` (48), ``num_classes`` (3), ``seed`` (0).
        image_size, batch_size, epochs: Ultralytics' ``imgsz``, ``batch``, ``epochs``.
        lr: Ultralytics' ``lr0`` (``None``: Ultralytics' default, with its ``optimizer="auto"`` choice).
        train_args: other Ultralytics training arguments (``optimizer``, ``warmup_epochs``, ``mosaic``, ``amp``,
            ...), passed unchanged; those compare sets itself (:data:`RESERVED_TRAIN_ARGS`) are refused.
        seed: Ultralytics' ``seed`` (training is ``deterministic``).
        output: the run's directory (Ultralytics' ``save_dir``).
        device: ``"auto"`` (Ultralytics' choice), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. num_workers: data loaders.

    Example:
        >>> cfg = YoloTrainConfig(detector="yolo11n", neck="bifpn", neck_options={"width": 32}, epochs=3)
        >>> cfg.levels, YoloTrainConfig.from_dict(cfg.to_dict()) == cfg
        ((3, 5), True)
        >>> cfg.ultralytics_args()["imgsz"], cfg.ultralytics_args()["deterministic"]
        (128, True)
    """

    detector: str = "yolov8n"
    neck: str = "yolo_pafpn"
    neck_options: dict[str, Any] = field(default_factory=dict)
    levels: tuple[int, int] = (3, 5)
    data: str = "synthetic"
    data_options: dict[str, Any] = field(default_factory=dict)
    image_size: int = 128
    batch_size: int = 16
    epochs: int = 10
    lr: float | None = None
    train_args: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    output: str = "runs/compare-yolo"
    device: str = "auto"
    num_workers: int = 0

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if not is_yolo_detector(self.detector):
            check_detector(self.detector)  # unknown: the list of both kinds
            raise ValueError(
                f"YoloTrainConfig.detector {self.detector!r} is a torchvision detector; use TrainConfig for it, or "
                f"a YOLO model: {', '.join(YOLO_DETECTORS)}."
            )
        if not isinstance(self.neck, str):
            raise TypeError(f"YoloTrainConfig.neck must be a registered neck name such as 'bifpn', got {self.neck!r}.")
        neck_info(self.neck)
        for name in ("neck_options", "data_options", "train_args"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise TypeError(f"YoloTrainConfig.{name} must be a dict, got {type(value).__name__}.")
            put(name, _plain(value, name))
        reserved = sorted(set(self.train_args) & set(RESERVED_TRAIN_ARGS))
        if reserved:
            fixes = "; ".join(f"{k}: {RESERVED_TRAIN_ARGS[k]}" for k in reserved)
            raise ValueError(f"YoloTrainConfig.train_args {reserved} are set by compare itself ({fixes}).")
        levels = self.levels
        if isinstance(levels, (str, bytes)) or not hasattr(levels, "__len__") or len(levels) != 2:
            raise ValueError(
                f"YoloTrainConfig.levels must be a (finest, coarsest) pair such as (3, 5), got {levels!r}."
            )
        lo, hi = (_int("levels", v, 1) for v in levels)
        assert lo is not None and hi is not None
        if lo > hi:
            raise ValueError(
                f"YoloTrainConfig.levels {tuple(levels)}: the finest level {lo} is above the coarsest {hi}."
            )
        put("levels", (lo, hi))
        spec = DataSpec.parse(self.data)
        if spec.kind == "synthetic":
            unknown = sorted(set(self.data_options) - set(_SYNTHETIC_OPTIONS))
            if unknown:
                raise ValueError(
                    f"YoloTrainConfig.data_options {unknown} do not apply to synthetic data; known: "
                    f"{sorted(_SYNTHETIC_OPTIONS)}."
                )
            for key, value in self.data_options.items():
                _int(f"data_options[{key!r}]", value, 0 if key == "seed" else 1)
            classes = self.data_options.get("num_classes", 3)
            if classes > 6:
                raise ValueError(f"YoloTrainConfig.data_options['num_classes'] must be 1..6 (shapes), got {classes}.")
        elif spec.kind == "yolo" and spec.data_yaml is not None:
            if self.data_options:
                raise ValueError(
                    f"YoloTrainConfig.data_options {sorted(self.data_options)} apply to synthetic data only; an "
                    "Ultralytics data file carries its own settings."
                )
        else:
            raise ValueError(
                f"YoloTrainConfig.data {self.data!r}: YOLO detectors train on 'synthetic' or an Ultralytics data file "
                "'yolo:PATH/data.yaml' (train / val image folders and class names, as Ultralytics reads them)."
            )
        put("data", str(spec))
        for name, low in (("image_size", 32), ("batch_size", 1), ("epochs", 1), ("num_workers", 0)):
            put(name, _int(name, getattr(self, name), low))
        if isinstance(self.seed, (bool, np.bool_)) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"YoloTrainConfig.seed must be a non-negative int, got {self.seed!r}.")
        put("seed", int(self.seed))
        if self.lr is not None:
            lr = self.lr
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
                raise ValueError(f"YoloTrainConfig.lr must be a positive number or None, got {lr!r}.")
            put("lr", float(lr))
        if not isinstance(self.output, (str, os.PathLike)) or not str(self.output).strip():
            raise TypeError(f"YoloTrainConfig.output must be a directory path, got {self.output!r}.")
        put("output", os.fspath(self.output))
        dev = self.device
        if not isinstance(dev, str) or (dev != "auto" and dev.split(":")[0] not in ("cpu", "cuda")):
            raise ValueError(f"YoloTrainConfig.device {dev!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'.")

    # -------------------------------------------------------------------------------------------- derived
    @property
    def scale(self) -> str:
        """The model scale (``n`` / ``s`` / ``m`` / ``l`` / ``x``)."""
        return _scale(self.detector)

    @property
    def model_yaml(self) -> str:
        """The Ultralytics model YAML (``yolov8n.yaml``)."""
        return f"{self.detector}.yaml"

    @property
    def synthetic(self) -> dict[str, int]:
        """The synthetic data's sizes (defaults filled in); empty for a data file."""
        if DataSpec.parse(self.data).kind != "synthetic":
            return {}
        return {**_SYNTHETIC_OPTIONS, **self.data_options}

    def ultralytics_args(self) -> dict[str, Any]:
        """The keyword arguments of Ultralytics' ``model.train`` for this run (without ``data``, ``project`` and
        ``name``, which depend on where the run lives): the schedule, ``deterministic=True``, ``plots=False``,
        ``val=False`` (Ultralytics validates the final epoch only) and ``amp=False`` (Ultralytics' AMP check
        downloads a model on CUDA; pass ``train_args={"amp": True}`` to allow it), then ``train_args``."""
        args: dict[str, Any] = {
            "epochs": self.epochs,
            "imgsz": self.image_size,
            "batch": self.batch_size,
            "seed": self.seed,
            "workers": self.num_workers,
            "deterministic": True,
            "plots": False,
            "val": False,
            "amp": False,
        }
        if self.lr is not None:
            args["lr0"] = self.lr
        if self.device != "auto":
            args["device"] = self.device.replace("cuda:", "").replace("cuda", "0")
        return {**args, **self.train_args}

    # -------------------------------------------------------------------------------------------- round trips
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        d = dataclasses.asdict(self)
        d["levels"] = list(self.levels)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> YoloTrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming the closest field."""
        kw = _known_fields(cls, data)
        if "levels" in kw and isinstance(kw["levels"], list):
            kw["levels"] = tuple(kw["levels"])
        return cls(**kw)

    def replace(self, **changes: Any) -> YoloTrainConfig:
        return dataclasses.replace(self, **changes)


#: Ultralytics arguments of the built-in YOLO comparison: one optimizer step per batch of 16 (Ultralytics' nominal
#: batch ``nbs`` is 64, which would accumulate 4 batches per step: too few steps to learn on a CPU budget) and one
#: warm-up epoch instead of 3
CPU_TRAIN_ARGS: dict[str, Any] = {"nbs": 16, "warmup_epochs": 1}
#: The built-in YOLO comparison (``necklace compare --detector yolov8n``): YOLOv8n trained by Ultralytics on 128
#: synthetic 128 px images (48 for evaluation), 30 epochs of batch 16; see docs/ultralytics.md for its measured time.
DEFAULT_YOLO_BASE = YoloTrainConfig(epochs=30, train_args=dict(CPU_TRAIN_ARGS))
