"""Train a torchvision detector with a necklace neck: one process (CPU/GPU) or many under ``torchrun`` (DDP).

:class:`TrainConfig` says what to train and how (frozen; round-trips through dicts and YAML/JSON files);
:func:`train` runs it and returns a :class:`TrainResult`. What it does:

- **Reproducible.** The model is initialised from ``seed``; the data order comes from a
  ``DistributedSampler`` seeded with ``seed`` (``set_epoch`` every epoch, one shard per process), the data
  loader has its own generator, and each process's training RNG stream is ``seed + rank``. On CPU two runs of
  the same config give bit-identical weights.
- **Checkpoints** (``<output>/checkpoint.pt``) hold the model, optimizer, LR scheduler, AMP grad scaler, step,
  epoch, every process's RNG states and the loss history. They are written atomically (temporary file +
  ``os.replace``, rank 0 only) every ``checkpoint_every`` steps, at the end, and when a SIGINT/SIGTERM arrives
  (the step in flight finishes, the checkpoint is written, then :class:`TrainingInterrupted` is raised).
- **Resume** (``train(config, resume=True)`` or a checkpoint path) restores all of that and continues the same
  step sequence, skipping the batches of a partly consumed epoch: on CPU an interrupted and resumed run ends
  with exactly the weights and loss history of an uninterrupted one.
- **DDP** when launched by ``torchrun`` (``WORLD_SIZE`` > 1): ``gloo`` on CPU, ``nccl`` on CUDA, one GPU per
  process (``LOCAL_RANK``). ``batch_size`` is per process. Evaluation gathers predictions on rank 0. DDP runs
  with ``find_unused_parameters=True`` (necks with branches a detector leaves unused still train; torch notes
  once per process when none are unused). Across machines, ``output`` must be a shared directory to resume.
- **AMP** (float16 autocast + ``GradScaler``) on CUDA unless ``amp=False``; cosine LR schedule with linear
  warm-up; optional gradient clipping; SGD (momentum) or AdamW, no weight decay on norms and biases.
- **Logs** on rank 0: ``log.csv`` (a row every ``log_every`` steps and at the end: step, epoch, lr, each loss
  and total as means over the steps since the previous row, seconds of training), TensorBoard events in
  ``tensorboard/`` when ``tensorboard`` is installed, a tqdm bar (plain lines without tqdm), ``config.yaml``
  and, with ``eval=True``, ``metrics.json``.

Example:
    >>> import tempfile
    >>> cfg = TrainConfig(detector="fcos", backbone_options={"width": 4}, neck_options={"width": 16},
    ...                   detector_options={"head_convs": 1}, data_options={"num_images": 4}, image_size=64,
    ...                   batch_size=2, steps=2, output=tempfile.mkdtemp(), tensorboard=False)
    >>> result = train(cfg, progress=False)
    >>> result.steps, len(result.losses), result.checkpoint.name
    (2, 2, 'checkpoint.pt')
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import json
import math
import os
import random
import signal
import sys
import threading
import time
import types
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from necklace.detection.backbones import build_backbone
from necklace.detection.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from necklace.detection.data import CocoDetection, SyntheticShapes, YoloDetection, collate_fn
from necklace.detection.detectors import DETECTOR_KINDS, build_detector
from necklace.detection.evaluate import BACKENDS, CocoMetrics, evaluate

__all__ = [
    "CHECKPOINT_NAME",
    "DATA_KINDS",
    "OPTIMIZERS",
    "SCHEDULES",
    "DataSpec",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "build_dataset",
    "build_datasets",
    "build_model",
    "load_model",
    "lr_factor",
    "train",
]

CHECKPOINT_NAME = "checkpoint.pt"
DATA_KINDS = ("synthetic", "coco", "yolo")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
#: Config fields that may change between a run and its resumption (they do not change the step sequence).
RESUMABLE_CHANGES = (
    "output",
    "device",
    "num_workers",
    "log_every",
    "checkpoint_every",
    "eval",
    "eval_backend",
    "eval_batch_size",
    "tensorboard",
)
_DEFAULT_LR: dict[str, Any] = {"sgd": {"fcos": 0.01, "retinanet": 0.01, "faster_rcnn": 0.02}, "adamw": 1e-3}
_SYNTHETIC_OPTIONS: dict[str, Any] = {
    "num_images": 64,
    "val_images": 16,
    "num_classes": 3,
    "seed": 0,
    "cache_dir": None,
}
_FILE_OPTIONS: dict[str, Any] = {"on_error": "raise"}
_WARMUP_START = 0.001  # warm-up starts at this fraction of the learning rate


# ------------------------------------------------------------------------------------------------ data spec
@dataclass(frozen=True)
class DataSpec:
    """Where data comes from, parsed from the ``--data`` text.

    - ``"synthetic"``: :class:`~necklace.detection.SyntheticShapes` (sizes from ``TrainConfig.data_options``);
    - ``"coco:IMAGES_DIR,ANN_FILE"``: :class:`~necklace.detection.CocoDetection`;
    - ``"yolo:IMAGES_DIR,LABELS_DIR,NAME1,NAME2,..."``: :class:`~necklace.detection.YoloDetection`.

    Example:
        >>> DataSpec.parse("yolo:imgs,labels,cat,dog")
        DataSpec(kind='yolo', paths=('imgs', 'labels'), class_names=('cat', 'dog'))
        >>> str(DataSpec.parse("coco:val2017,instances_val2017.json"))
        'coco:val2017,instances_val2017.json'
    """

    kind: str
    paths: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> DataSpec:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"data must be 'synthetic', 'coco:IMAGES_DIR,ANN_FILE' or 'yolo:...', got {text!r}.")
        kind, _, rest = text.strip().partition(":")
        kind = kind.strip().lower()
        parts = [p.strip() for p in rest.split(",")] if rest.strip() else []
        if kind == "synthetic":
            if parts:
                raise ValueError(f"data {text!r}: 'synthetic' takes no paths (sizes go in data_options).")
            return cls("synthetic")
        if kind == "coco":
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"data {text!r}: write COCO data as coco:IMAGES_DIR,ANN_FILE.")
            return cls("coco", (parts[0], parts[1]))
        if kind == "yolo":
            if len(parts) < 3 or not all(parts):
                raise ValueError(
                    f"data {text!r}: write YOLO data as yolo:IMAGES_DIR,LABELS_DIR,NAME1,NAME2,... "
                    "(class names in class-id order)."
                )
            return cls("yolo", (parts[0], parts[1]), tuple(parts[2:]))
        hint = difflib.get_close_matches(kind, DATA_KINDS, n=1)
        raise ValueError(
            f"unknown data kind {kind!r} in {text!r}; choose one of {list(DATA_KINDS)}"
            + (f" (did you mean {hint[0]!r}?)." if hint else ".")
        )

    def __str__(self) -> str:
        return self.kind if self.kind == "synthetic" else f"{self.kind}:" + ",".join(self.paths + self.class_names)


# ------------------------------------------------------------------------------------------------ config
def _plain(value: Any, where: str) -> Any:
    """JSON-like copy (tuples -> lists) so a config round-trips through YAML/JSON unchanged."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"TrainConfig.{where}: keys must be strings, got {k!r}.")
            out[k] = _plain(v, where)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"TrainConfig.{where}: values must be plain data (numbers, strings, lists, dicts) so the config can be "
        f"saved, got {type(value).__name__}."
    )


def _positive_int(name: str, value: Any, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        need = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"TrainConfig.{name} must be {need} int{' or None' if allow_none else ''}, got {value!r}.")


@dataclass(frozen=True)
class TrainConfig:
    """Everything :func:`train` needs; defaults are CPU-sized (tiny backbone, 64 synthetic 128 px images, 8
    epochs: under a minute on 2 cores).

    Args:
        detector: ``"fcos"``, ``"retinanet"`` or ``"faster_rcnn"``.
        backbone, backbone_options, pretrained: :func:`~necklace.detection.build_backbone` arguments.
        neck, neck_options: a registered neck and its options (``build_neck(neck, specs, **neck_options)``).
        detector_options: extra :func:`~necklace.detection.build_detector` keywords (``head_convs``, ...).
        data, val_data: :class:`DataSpec` texts. ``val_data=None``: for synthetic data a separate synthetic set
            (another seed), for files the training data itself.
        data_options: synthetic: ``num_images`` (64), ``val_images`` (16), ``num_classes`` (3), ``seed`` (0),
            ``cache_dir``; COCO/YOLO: ``on_error`` (``"raise"``, ``"drop"``, ``"clip"``).
        image_size: detector resize (``min_size = max_size``) and synthetic image size.
        batch_size: images per step *per process*.
        epochs, steps: length; ``steps`` wins when given (epochs then repeat as needed).
        optimizer, lr, momentum, weight_decay: ``"sgd"`` (momentum) or ``"adamw"``; ``lr=None`` picks a default
            per detector/optimizer (:meth:`resolved_lr`).
        warmup_steps: linear warm-up from 0.1 % of ``lr``; ``None``: ``min(100, total_steps // 10)``.
        schedule, min_lr_ratio: ``"cosine"`` (from ``lr`` down to ``min_lr_ratio * lr``) or ``"constant"``.
        grad_clip: max gradient norm, ``None`` for none.
        amp: float16 autocast + grad scaling; ``None``: on for CUDA.
        seed: model init, data order and training randomness.
        output: directory for checkpoint, logs and config.
        log_every, checkpoint_every: steps between log rows / checkpoints (0: checkpoint only at the end).
        num_workers: data-loader workers. device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``.
        eval, eval_backend, eval_batch_size: COCO evaluation of the final model on the validation data.
        tensorboard: ``None``: log to TensorBoard when installed; ``True``: require it; ``False``: off.

    Example:
        >>> cfg = TrainConfig(neck="bifpn", neck_options={"width": 32, "levels": (3, 5)}, steps=10)
        >>> cfg.neck_options["levels"], TrainConfig.from_dict(cfg.to_dict()) == cfg
        ([3, 5], True)
        >>> cfg.resolved_lr(), cfg.total_steps(steps_per_epoch=16)
        (0.01, 10)
    """

    detector: str = "fcos"
    backbone: str = "tiny"
    backbone_options: dict[str, Any] = field(default_factory=lambda: {"width": 8})
    pretrained: bool = False
    neck: str = "fpn"
    neck_options: dict[str, Any] = field(default_factory=lambda: {"width": 32})
    detector_options: dict[str, Any] = field(default_factory=dict)
    data: str = "synthetic"
    val_data: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    image_size: int = 128
    batch_size: int = 4
    epochs: int | None = 8
    steps: int | None = None
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int | None = None
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 10.0
    amp: bool | None = None
    seed: int = 0
    output: str = "runs/train"
    log_every: int = 10
    checkpoint_every: int = 100
    num_workers: int = 0
    device: str = "auto"
    eval: bool = False
    eval_backend: str = "faster_coco_eval"
    eval_batch_size: int | None = None
    tensorboard: bool | None = None

    def __post_init__(self) -> None:
        for name in ("backbone_options", "neck_options", "detector_options", "data_options"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise TypeError(f"TrainConfig.{name} must be a dict, got {type(value).__name__}.")
            object.__setattr__(self, name, _plain(value, name))
        object.__setattr__(self, "output", str(self.output))
        if self.detector not in DETECTOR_KINDS:
            raise ValueError(f"TrainConfig.detector {self.detector!r}: choose one of {list(DETECTOR_KINDS)}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer {self.optimizer!r}: choose one of {list(OPTIMIZERS)}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule {self.schedule!r}: choose one of {list(SCHEDULES)}.")
        if self.eval_backend not in BACKENDS:
            raise ValueError(f"TrainConfig.eval_backend {self.eval_backend!r}: choose one of {list(BACKENDS)}.")
        spec = DataSpec.parse(self.data)
        if self.val_data is not None:
            DataSpec.parse(self.val_data)
        allowed = _SYNTHETIC_OPTIONS if spec.kind == "synthetic" else _FILE_OPTIONS
        unknown = sorted(set(self.data_options) - set(allowed))
        if unknown:
            raise ValueError(
                f"TrainConfig.data_options {unknown} do not apply to {spec.kind} data; known: {sorted(allowed)}."
            )
        _positive_int("image_size", self.image_size)
        _positive_int("batch_size", self.batch_size)
        _positive_int("epochs", self.epochs, allow_none=True)
        _positive_int("steps", self.steps, allow_none=True)
        if self.epochs is None and self.steps is None:
            raise ValueError("TrainConfig: give epochs or steps.")
        _positive_int("warmup_steps", self.warmup_steps, allow_none=True, allow_zero=True)
        _positive_int("log_every", self.log_every)
        _positive_int("checkpoint_every", self.checkpoint_every, allow_zero=True)
        _positive_int("num_workers", self.num_workers, allow_zero=True)
        _positive_int("eval_batch_size", self.eval_batch_size, allow_none=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"TrainConfig.seed must be an int, got {self.seed!r}.")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr!r}.")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(
                "TrainConfig: need weight_decay >= 0, 0 <= momentum < 1, 0 <= min_lr_ratio <= 1; got "
                f"{self.weight_decay!r}, {self.momentum!r}, {self.min_lr_ratio!r}."
            )
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"TrainConfig.grad_clip must be positive or None, got {self.grad_clip!r}.")
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"TrainConfig.device {self.device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'.")

    # -------------------------------------------------------------------------------------------- round trips
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (every value JSON/YAML-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming the closest field."""
        if not isinstance(data, Mapping):
            raise TypeError(f"TrainConfig.from_dict expects a mapping, got {type(data).__name__}.")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                hint = difflib.get_close_matches(str(key), names, n=1)
                raise ValueError(
                    f"unknown TrainConfig field {key!r}"
                    + (f"; did you mean {hint[0]!r}?" if hint else "")
                    + f" Fields: {', '.join(names)}."
                )
        return cls(**dict(data))

    def save(self, path: str | Path) -> Path:
        """Write as YAML (``.yaml``/``.yml``) or JSON (anything else), atomically."""
        path = Path(path)
        data = self.to_dict()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(data, sort_keys=False)
        else:
            text = json.dumps(data, indent=2) + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a config written by :meth:`save` (or by hand; missing fields take their defaults).

        Example:
            >>> import tempfile
            >>> p = TrainConfig(steps=5).save(Path(tempfile.mkdtemp()) / "train.yaml")
            >>> TrainConfig.load(p) == TrainConfig(steps=5)
            True
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} not found.")
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: expected a mapping of TrainConfig fields, got {type(data).__name__}.")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    # -------------------------------------------------------------------------------------------- derived
    def resolved_lr(self) -> float:
        """``lr``, or the default for this optimizer and detector."""
        if self.lr is not None:
            return float(self.lr)
        default = _DEFAULT_LR[self.optimizer]
        return float(default[self.detector] if isinstance(default, dict) else default)

    def total_steps(self, steps_per_epoch: int) -> int:
        """Steps of the whole run: ``steps``, else ``epochs * steps_per_epoch``."""
        return int(self.steps) if self.steps is not None else int(self.epochs or 0) * int(steps_per_epoch)

    def resolved_warmup(self, total_steps: int) -> int:
        """Warm-up steps: ``warmup_steps``, else ``min(100, total_steps // 10)``."""
        return int(self.warmup_steps) if self.warmup_steps is not None else min(100, total_steps // 10)


def lr_factor(
    step: int, total_steps: int, warmup_steps: int, schedule: str = "cosine", min_ratio: float = 0.0
) -> float:
    """Learning-rate multiplier of step ``step`` (0-based): linear warm-up from 0.001, then cosine or constant.

    Example:
        >>> [round(lr_factor(s, 10, 2), 3) for s in (0, 1, 2, 6, 9)]
        [0.001, 0.5, 1.0, 0.5, 0.038]
    """
    if step < warmup_steps:
        return _WARMUP_START + (1.0 - _WARMUP_START) * step / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


# ------------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    ``history`` has one entry per step of the whole run (also the steps before a resume): ``step`` (1-based),
    ``epoch``, ``lr``, each loss, ``total`` (averaged over processes under DDP). ``wall_time`` is the seconds of
    this call; ``metrics`` is set when ``config.eval``.

    Example:
        >>> r = TrainResult(history=({"step": 1, "total": 2.0}, {"step": 2, "total": 1.5}),
        ...                 checkpoint=Path("ckpt.pt"), metrics=None, wall_time=1.0, total_steps=2)
        >>> r.losses, r.final_loss, r.steps, r.completed
        ((2.0, 1.5), 1.5, 2, True)
    """

    history: tuple[dict[str, float], ...]
    checkpoint: Path | None
    metrics: CocoMetrics | None
    wall_time: float
    total_steps: int
    output: Path = Path(".")
    world_size: int = 1

    @property
    def losses(self) -> tuple[float, ...]:
        """Total loss of every step."""
        return tuple(float(h["total"]) for h in self.history)

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.history else float("nan")

    @property
    def steps(self) -> int:
        return int(self.history[-1]["step"]) if self.history else 0

    @property
    def completed(self) -> bool:
        """True when all ``total_steps`` were run (False after ``stop_at``)."""
        return self.steps >= self.total_steps


class TrainingInterrupted(Exception):
    """Raised by :func:`train` after a SIGINT/SIGTERM, once the checkpoint of the last finished step is written.

    Example:
        >>> e = TrainingInterrupted("SIGTERM", 7, 20, Path("run/checkpoint.pt"))
        >>> e.step, e.exit_code
        (7, 143)
    """

    def __init__(self, signal_name: str, step: int, total_steps: int, checkpoint: Path | None) -> None:
        self.signal_name, self.step, self.total_steps, self.checkpoint = signal_name, step, total_steps, checkpoint
        where = f"; checkpoint {checkpoint}" if checkpoint is not None else ""
        super().__init__(f"training interrupted by {signal_name} after step {step}/{total_steps}{where}")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, the shell's convention."""
        return 128 + int(getattr(signal, self.signal_name, signal.SIGINT))


# ------------------------------------------------------------------------------------------------ builders
class _MemoryCached(Dataset[tuple[Tensor, dict[str, Any]]]):
    """Keeps generated samples in memory (synthetic images are re-rendered otherwise, every epoch)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.class_names = dataset.class_names
        self.num_classes = len(dataset.class_names)
        self._cache: dict[int, tuple[Tensor, dict[str, Any]]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        if index not in self._cache:
            self._cache[index] = self.dataset[index]
        image, target = self._cache[index]
        return image, {k: v.clone() if isinstance(v, Tensor) else v for k, v in target.items()}


def _dataset(spec: DataSpec, config: TrainConfig, val: bool) -> Dataset[Any]:
    opts = dict(_SYNTHETIC_OPTIONS if spec.kind == "synthetic" else _FILE_OPTIONS)
    opts.update(config.data_options)
    if spec.kind == "synthetic":
        n = int(opts["val_images" if val else "num_images"])
        size = (config.image_size, config.image_size)
        seed = int(opts["seed"]) + (1 if val else 0)
        ds = SyntheticShapes(n, size, int(opts["num_classes"]), seed=seed, cache_dir=opts["cache_dir"])
        return ds if val or n * size[0] * size[1] * 12 > 2**30 else _MemoryCached(ds)
    if spec.kind == "coco":
        return CocoDetection(spec.paths[0], spec.paths[1], on_error=str(opts["on_error"]))
    return YoloDetection(spec.paths[0], spec.paths[1], spec.class_names, on_error=str(opts["on_error"]))


def build_dataset(config: TrainConfig, split: str = "train") -> Dataset[Any]:
    """The ``"train"`` or ``"val"`` dataset of ``config``.

    ``val``: ``config.val_data`` when set; otherwise a separate synthetic set (seed + 1, ``val_images`` images)
    for synthetic data, and the training data itself for COCO/YOLO files.

    Example:
        >>> val = build_dataset(TrainConfig(data_options={"val_images": 2}), "val")
        >>> len(val), val.seed
        (2, 1)
    """
    if split not in ("train", "val"):
        raise ValueError(f"build_dataset: split must be 'train' or 'val', got {split!r}.")
    spec = DataSpec.parse(config.data)
    if split == "train":
        return _dataset(spec, config, val=False)
    if config.val_data is not None:
        return _dataset(DataSpec.parse(config.val_data), config, val=True)
    return _dataset(spec, config, val=spec.kind == "synthetic")


def build_datasets(config: TrainConfig) -> tuple[Dataset[Any], Dataset[Any]]:
    """``(train, val)`` datasets of ``config`` (see :func:`build_dataset`); for COCO/YOLO files without
    ``val_data`` both are the same object.

    Example:
        >>> train_ds, val_ds = build_datasets(TrainConfig(data_options={"num_images": 8, "val_images": 2}))
        >>> len(train_ds), len(val_ds)
        (8, 2)
    """
    train_ds = build_dataset(config, "train")
    if config.val_data is None and DataSpec.parse(config.data).kind != "synthetic":
        return train_ds, train_ds
    return train_ds, build_dataset(config, "val")


def _class_names(dataset: Any) -> tuple[str, ...]:
    names = getattr(dataset, "class_names", None)
    if not names:
        raise ValueError(f"{type(dataset).__name__} has no class_names; necklace datasets define them.")
    return tuple(names)


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The detector of ``config`` (backbone + neck + torchvision head) for ``num_classes`` object classes.

    Example:
        >>> m = build_model(TrainConfig(detector="retinanet", neck="pafpn"), num_classes=3)
        >>> type(m).__name__, type(m.backbone.neck).__name__
        ('NecklaceRetinaNet', 'GraphNeck')
    """
    backbone = build_backbone(config.backbone, pretrained=config.pretrained, **config.backbone_options)
    return build_detector(
        config.detector,
        backbone,
        config.neck,
        num_classes,
        neck_options=config.neck_options,
        min_size=config.image_size,
        max_size=config.image_size,
        **config.detector_options,
    )


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The trained model (``eval()`` mode, on ``device``) and config stored in a :func:`train` checkpoint.

    ``model.class_names`` holds the class names of the training data (label ``k`` is ``class_names[k - 1]``).

    Example:
        >>> import tempfile
        >>> cfg = TrainConfig(backbone_options={"width": 4}, neck_options={"width": 16}, image_size=64,
        ...                   data_options={"num_images": 2}, batch_size=2, steps=1, output=tempfile.mkdtemp(),
        ...                   tensorboard=False)
        >>> model, loaded = load_model(train(cfg, progress=False).checkpoint)
        >>> loaded == cfg, model.training, model.class_names
        (True, False, ('rectangle', 'ellipse', 'triangle'))
    """
    ckpt = load_checkpoint(checkpoint)
    config = TrainConfig.from_dict(ckpt["config"])
    model = build_model(config, int(ckpt["num_classes"]))
    model.load_state_dict(ckpt["model"])
    model.class_names = tuple(ckpt.get("class_names", ()))  # type: ignore[assignment]
    return model.to(device).eval(), config


# ------------------------------------------------------------------------------------------------ internals
class _ResumableSampler(DistributedSampler[int]):
    """``DistributedSampler`` that can start partway through an epoch (``start``: samples of this rank to skip)."""

    def __init__(self, dataset: Dataset[Any], num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owned: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup(config: TrainConfig) -> _Dist:
    """Pick the device; under torchrun (WORLD_SIZE > 1) join the process group (gloo on CPU, nccl on CUDA)."""
    want = config.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"TrainConfig.device={config.device!r} but CUDA is not available; use device='cpu'.")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = _Dist()
    is_init = torch.distributed.is_available() and torch.distributed.is_initialized()
    if world > 1 or is_init:
        if not torch.distributed.is_available():
            raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed.")
        d.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if want == "cuda":
            want = f"cuda:{d.local_rank}"
        if want.startswith("cuda"):
            torch.cuda.set_device(torch.device(want))
        if not is_init:
            backend = "nccl" if want.startswith("cuda") else "gloo"
            torch.distributed.init_process_group(backend, device_id=torch.device(want) if backend == "nccl" else None)
            d.owned = True
        d.rank, d.world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    d.device = torch.device(want)
    return d


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)  # norms and biases: no weight decay
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    lr = config.resolved_lr()
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=lr)


class _SignalStop:
    """SIGINT/SIGTERM set a flag (the loop checkpoints and stops); a second one stops at once."""

    def __init__(self) -> None:
        self.name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        if self.name is not None:  # second signal: give up on the graceful stop
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Logs:
    """Rank-0 logging: CSV rows, TensorBoard scalars, tqdm bar or plain lines."""

    def __init__(self, config: TrainConfig, out: Path, start_step: int, total: int, progress: bool, main: bool):
        self.main, self.progress = main, progress and main
        self.csv_path = out / "log.csv"
        self.writer: Any = None
        self.bar: Any = None
        if not main:
            return
        if start_step > 0 and self.csv_path.is_file():  # drop rows written after the checkpoint we resume from
            with open(self.csv_path, newline="") as f:
                rows = list(csv.reader(f))
            keep = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= start_step]
            tmp = self.csv_path.with_name(".log.csv.tmp")
            with open(tmp, "w", newline="") as f:
                csv.writer(f).writerows(keep)
            tmp.replace(self.csv_path)
        elif self.csv_path.exists():
            self.csv_path.unlink()
        if config.tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                if config.tensorboard:
                    raise ImportError(
                        "TrainConfig.tensorboard=True needs tensorboard: pip install tensorboard "
                        "(or set tensorboard=False; log.csv is written either way)"
                    ) from e
                self.note("tensorboard is not installed (pip install tensorboard); writing log.csv only")
            else:
                self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        if self.progress:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def note(self, text: str) -> None:
        if self.progress:
            if self.bar is not None:
                self.bar.write(text, file=sys.stderr)
            else:
                print(text, file=sys.stderr, flush=True)

    def step(self, rec: dict[str, float], window: Sequence[dict[str, float]], total: int, elapsed: float) -> None:
        if not self.main:
            return
        if self.bar is not None:
            self.bar.update(1)
        if not window:
            return
        names = [k for k in rec if k not in ("step", "epoch", "lr")]
        means = {k: sum(w[k] for w in window) / len(window) for k in names}
        header = ["step", "epoch", "lr", *names, "time"]
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(header)
            w.writerow(
                [
                    int(rec["step"]),
                    int(rec["epoch"]),
                    f"{rec['lr']:.6g}",
                    *(f"{means[k]:.6f}" for k in names),
                    f"{elapsed:.2f}",
                ]
            )
        if self.writer is not None:
            for k in names:
                self.writer.add_scalar(f"train/{k}", means[k], int(rec["step"]))
            self.writer.add_scalar("train/lr", rec["lr"], int(rec["step"]))
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{means['total']:.4f}", lr=f"{rec['lr']:.2e}", refresh=False)
        elif self.progress:
            parts = " ".join(f"{k} {means[k]:.4f}" for k in names if k != "total")
            print(
                f"step {int(rec['step'])}/{total} epoch {int(rec['epoch'])} lr {rec['lr']:.3g} "
                f"loss {means['total']:.4f} ({parts}) {elapsed:.1f}s",
                file=sys.stderr,
                flush=True,
            )

    def metrics(self, metrics: CocoMetrics, step: int) -> None:
        if self.writer is not None:
            for k, v in metrics.to_dict().items():
                if isinstance(v, float):
                    self.writer.add_scalar(f"eval/{k}", v, step)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.close_bar()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _check_resume(saved: Mapping[str, Any], config: TrainConfig, path: Path) -> None:
    now = config.to_dict()
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}"
        for k in now
        if k not in RESUMABLE_CHANGES and saved.get(k, now[k]) != now[k]
    ]
    if diffs:
        raise ValueError(
            f"cannot resume from {str(path)!r}: the config differs in {'; '.join(diffs)}. Resuming continues the "
            f"same run; only {', '.join(RESUMABLE_CHANGES)} may change (start a new output directory otherwise)."
        )


def _to_device(targets: Sequence[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [{k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]


# ------------------------------------------------------------------------------------------------ train
def train(
    config: TrainConfig, resume: bool | str | Path = False, progress: bool = True, stop_at: int | None = None
) -> TrainResult:
    """Train ``config``'s detector on its data; see the module docstring for what is logged and saved.

    Args:
        config: what to train.
        resume: ``True``: continue from ``<output>/checkpoint.pt``; a path: continue from that checkpoint. The
            config must match the checkpoint's except for :data:`RESUMABLE_CHANGES`.
        progress: tqdm bar / plain progress lines on rank 0 (``False``: silent).
        stop_at: stop after this global step with a checkpoint, as an interruption would (for time-boxed runs
            and tests); the returned result has ``completed == False``.

    Raises:
        TrainingInterrupted: after SIGINT/SIGTERM (the checkpoint is written first).
        FloatingPointError: when the loss stops being finite (the last checkpoint is left as it was).

    Example:
        >>> import tempfile
        >>> cfg = TrainConfig(detector="retinanet", backbone_options={"width": 4}, neck_options={"width": 16},
        ...                   data_options={"num_images": 4}, image_size=64, batch_size=2, steps=3,
        ...                   output=tempfile.mkdtemp(), tensorboard=False)
        >>> first = train(cfg, progress=False, stop_at=1)
        >>> first.steps, first.completed
        (1, False)
        >>> train(cfg, resume=True, progress=False).steps
        3
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train expects a TrainConfig, got {type(config).__name__}.")
    if stop_at is not None:
        _positive_int("stop_at", stop_at)
    t0 = time.perf_counter()
    dist = _setup(config)
    try:
        return _train(config, dist, resume, progress, stop_at, t0)
    finally:
        if dist.owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(
    config: TrainConfig, dist: _Dist, resume: bool | str | Path, progress: bool, stop_at: int | None, t0: float
) -> TrainResult:
    out = Path(config.output)
    ckpt_path = out / CHECKPOINT_NAME
    device = dist.device
    state: dict[str, Any] | None = None
    if not resume and ckpt_path.exists():
        raise FileExistsError(
            f"{str(out)!r} already holds a training run ({CHECKPOINT_NAME}); resume it (resume=True / --resume), "
            "or pick another output directory (or delete the old one) to start afresh."
        )
    if resume:
        src = ckpt_path if resume is True else Path(resume)
        if not src.is_file():
            raise FileNotFoundError(
                f"nothing to resume: no checkpoint at {str(src)!r}"
                + (" (train without --resume to start a new run)." if resume is True else ".")
            )
        state = load_checkpoint(src)
        _check_resume(state["config"], config, src)
        if int(state.get("world_size", 1)) != dist.world and dist.main:
            warnings.warn(
                f"resuming a run of {state.get('world_size')} processes with {dist.world}: data order and random "
                "streams differ from an uninterrupted run from here on.",
                stacklevel=3,
            )
    _seed_all(config.seed)
    torch.backends.cudnn.benchmark = False
    train_ds, val_ds = build_datasets(config)
    class_names = _class_names(train_ds)
    model = build_model(config, len(class_names)).to(device)
    optimizer = _build_optimizer(model, config)
    sampler = _ResumableSampler(train_ds, dist.world, dist.rank, config.seed)
    steps_per_epoch = sampler.num_samples // config.batch_size
    if steps_per_epoch == 0:
        n_images = len(train_ds)  # type: ignore[arg-type]
        raise ValueError(
            f"the training data has {n_images} images: fewer than batch_size {config.batch_size} x "
            f"{dist.world} processes, so an epoch has no full batch. Lower batch_size or add images."
        )
    total = config.total_steps(steps_per_epoch)
    warmup = config.resolved_warmup(total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, config.schedule, config.min_lr_ratio)
    )
    use_amp = config.amp if config.amp is not None else device.type == "cuda"
    if use_amp and device.type != "cuda":
        raise ValueError("TrainConfig.amp=True needs a CUDA device (float16 autocast); set amp=None or False on CPU.")
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    step, history, elapsed_before = 0, [], 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step, history = int(state["step"]), [dict(h) for h in state["history"]]
        elapsed_before = float(state.get("train_time", 0.0))
        rngs = state["rng"]
        set_rng_state(rngs[min(dist.rank, len(rngs) - 1)])
    else:
        _seed_all(config.seed + dist.rank)
    if dist.main:
        config.save(out / "config.yaml")
        for stale in out.glob(f".{CHECKPOINT_NAME}.*.tmp"):  # left by a run killed while saving
            stale.unlink(missing_ok=True)
    net: nn.Module = model
    if dist.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    model.train()
    logs = _Logs(config, out, step, total, progress, dist.main)
    run_start = time.perf_counter()

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - run_start

    def save(complete: bool) -> Path:
        rngs = [rng_state()]
        if dist.world > 1:
            gathered: list[Any] = [None] * dist.world
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if dist.main:
            save_checkpoint(
                {
                    "config": config.to_dict(),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "step": step,
                    "epoch": step // steps_per_epoch,
                    "batch_in_epoch": step % steps_per_epoch,
                    "steps_per_epoch": steps_per_epoch,
                    "total_steps": total,
                    "history": history,
                    "rng": rngs,
                    "world_size": dist.world,
                    "num_classes": len(class_names),
                    "class_names": list(class_names),
                    "train_time": elapsed(),
                    "complete": complete,
                    "torch_version": str(torch.__version__),
                },
                ckpt_path,
            )
        if dist.world > 1:
            torch.distributed.barrier()
        return ckpt_path

    stopped: str | None = None
    saved_path: Path | None = ckpt_path if state is not None else None
    try:
        with _SignalStop() as stopper:
            while step < total and stopped is None and (stop_at is None or step < stop_at):
                epoch, offset = divmod(step, steps_per_epoch)
                sampler.set_epoch(epoch)
                sampler.start = offset * config.batch_size
                generator = torch.Generator()
                generator.manual_seed(config.seed * 1_000_003 + epoch)
                loader = DataLoader(
                    train_ds,
                    batch_size=config.batch_size,
                    sampler=sampler,
                    drop_last=True,
                    collate_fn=collate_fn,
                    num_workers=config.num_workers,
                    generator=generator,
                    pin_memory=device.type == "cuda",
                )
                for images, targets in loader:
                    lr = float(scheduler.get_last_lr()[0])
                    images = [im.to(device, non_blocking=True) for im in images]
                    with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                        losses = net(images, _to_device(targets, device))
                    loss = sum(losses.values())
                    assert isinstance(loss, Tensor)
                    scaler.scale(loss).backward()
                    if config.grad_clip is not None:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    step += 1
                    flag = torch.tensor(1.0 if stopper.name else 0.0, device=device)
                    vals = torch.stack([*(v.detach().float() for v in losses.values()), loss.detach().float(), flag])
                    if dist.world > 1:
                        torch.distributed.all_reduce(vals)
                    reduced = vals.cpu().tolist()
                    rec = {"step": float(step), "epoch": float(epoch), "lr": lr}
                    rec.update({k: v / dist.world for k, v in zip([*losses, "total"], reduced[:-1], strict=True)})
                    history.append(rec)
                    if not all(math.isfinite(v) for v in reduced[:-1]):
                        values = ", ".join(f"{k} {rec[k]:.4g}" for k in [*losses, "total"])
                        raise FloatingPointError(
                            f"non-finite loss at step {step} ({values}). The last checkpoint "
                            f"({saved_path or 'none yet'}) is unchanged; lower lr, keep grad_clip, or disable amp."
                        )
                    if reduced[-1] > 0:
                        stopped = stopper.name or "SIGTERM"
                    window = []  # the steps since the previous log row: (step - log_every, step], last one shorter
                    if step % config.log_every == 0 or step == total:
                        since = step - (step % config.log_every or config.log_every)
                        window = [h for h in history if h["step"] > since]
                    logs.step(rec, window, total, elapsed())
                    at_stop = stopped is not None or (stop_at is not None and step >= stop_at) or step >= total
                    if at_stop or (config.checkpoint_every and step % config.checkpoint_every == 0):
                        saved_path = save(complete=step >= total)
                    if at_stop:
                        break
            if stopped is not None:
                raise TrainingInterrupted(stopped, step, total, saved_path)
        metrics = None
        logs.close_bar()
        if config.eval and step >= total:
            metrics = evaluate(
                net,
                val_ds,
                batch_size=config.eval_batch_size or config.batch_size,
                device=device,
                backend=config.eval_backend,
                num_workers=config.num_workers,
                amp=use_amp,
                progress=progress and dist.main,
            )
            if dist.main:
                (out / "metrics.json").write_text(json.dumps(metrics.to_dict(), indent=2) + "\n")
                logs.metrics(metrics, step)
    finally:
        logs.close()
    return TrainResult(
        history=tuple(history),
        checkpoint=saved_path,
        metrics=metrics,
        wall_time=time.perf_counter() - t0,
        total_steps=total,
        output=out,
        world_size=dist.world,
    )
