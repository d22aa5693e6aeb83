"""What to train and how: :class:`TrainConfig` (frozen; round-trips through dicts and YAML/JSON files) and
:class:`DataSpec` (the ``--data`` text)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from necklace.detection.data import ON_ERROR, SHAPES
from necklace.detection.detectors import DETECTOR_KINDS
from necklace.detection.evaluate import BACKENDS
from necklace.registry import neck_info

__all__ = ["CHECKPOINT_NAME", "DATA_KINDS", "OPTIMIZERS", "RESUMABLE_CHANGES", "SCHEDULES", "DataSpec", "TrainConfig"]

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


# ------------------------------------------------------------------------------------------------ data spec
@dataclass(frozen=True)
class DataSpec:
    """Where data comes from, parsed from the ``--data`` text.

    - ``"synthetic"``: :class:`~necklace.detection.SyntheticShapes` (sizes from ``TrainConfig.data_options``);
    - ``"coco:IMAGES_DIR,ANN_FILE"``: :class:`~necklace.detection.CocoDetection`;
    - ``"yolo:IMAGES_DIR,LABELS_DIR,NAME1,NAME2,..."``: :class:`~necklace.detection.YoloDetection`;
    - ``"yolo:PATH/data.yaml"``: an Ultralytics data file (train / val folders and class names), read by the
      YOLO detectors of ``necklace compare --detector yolov8n`` (:attr:`data_yaml`).

    Example:
        >>> DataSpec.parse("yolo:imgs,labels,cat,dog")
        DataSpec(kind='yolo', paths=('imgs', 'labels'), class_names=('cat', 'dog'))
        >>> DataSpec.parse("yolo:datasets/shapes/data.yaml").data_yaml
        'datasets/shapes/data.yaml'
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
            if len(parts) == 1 and parts[0].lower().endswith((".yaml", ".yml")):
                return cls("yolo", (parts[0],))  # an Ultralytics data file
            if len(parts) < 3 or not all(parts):
                raise ValueError(
                    f"data {text!r}: write YOLO data as yolo:IMAGES_DIR,LABELS_DIR,NAME1,NAME2,... "
                    "(class names in class-id order), or yolo:PATH/data.yaml (an Ultralytics data file)."
                )
            return cls("yolo", (parts[0], parts[1]), tuple(parts[2:]))
        hint = difflib.get_close_matches(kind, DATA_KINDS, n=1)
        raise ValueError(
            f"unknown data kind {kind!r} in {text!r}; choose one of {list(DATA_KINDS)}"
            + (f" (did you mean {hint[0]!r}?)." if hint else ".")
        )

    def __str__(self) -> str:
        return self.kind if self.kind == "synthetic" else f"{self.kind}:" + ",".join(self.paths + self.class_names)

    @property
    def data_yaml(self) -> str | None:
        """The Ultralytics data file of ``yolo:PATH/data.yaml``; ``None`` for every other form."""
        if self.kind == "yolo" and len(self.paths) == 1 and not self.class_names:
            return self.paths[0]
        return None


# ------------------------------------------------------------------------------------------------ config
def _known_fields(cls: type, data: Any) -> dict[str, Any]:
    """``data`` as a dict of ``cls``'s dataclass fields: a ``TypeError`` for a non-mapping, a ``ValueError`` naming
    the closest field for an unknown key (the ``from_dict`` of the training configs).

    Example:
        >>> _known_fields(DataSpec, {"kind": "synthetic"})
        {'kind': 'synthetic'}
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"{cls.__name__}.from_dict expects a mapping, got {type(data).__name__}.")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1)
            raise ValueError(
                f"unknown {cls.__name__} field {key!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
                + f" Fields: {', '.join(names)}."
            )
    return dict(data)


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


def _positive_int(name: str, value: Any, allow_none: bool = False, allow_zero: bool = False) -> int | None:
    """``value`` as an int (numpy integers accepted) when it is one, >= 1 (>= 0 with ``allow_zero``)."""
    if value is None and allow_none:
        return None
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, np.integer))
        or value < (0 if allow_zero else 1)
    ):
        need = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"TrainConfig.{name} must be {need} int{' or None' if allow_none else ''}, got {value!r}.")
    return int(value)


def _number(name: str, value: Any, allow_none: bool = False) -> float | None:
    """``value`` as a finite float (ints and numpy numbers accepted; bools and strings are not)."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        hint = (
            " (a string: in YAML write 1.0e-3 or 0.001, since YAML reads 1e-3 as text)"
            if isinstance(value, str)
            else ""
        )
        raise TypeError(f"TrainConfig.{name} must be a number{' or None' if allow_none else ''}, got {value!r}{hint}.")
    if not math.isfinite(value):
        raise ValueError(f"TrainConfig.{name} must be finite, got {value!r}.")
    return float(value)


def _flag(name: str, value: Any, allow_none: bool = False) -> bool | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, (bool, np.bool_)):
        choices = "True, False or None" if allow_none else "True or False"
        raise TypeError(f"TrainConfig.{name} must be {choices}, got {value!r}.")
    return bool(value)


def _choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        hint = difflib.get_close_matches(value, list(choices), n=1) if isinstance(value, str) else []
        raise ValueError(
            f"TrainConfig.{name} {value!r}: choose one of {list(choices)}"
            + (f" (did you mean {hint[0]!r}?)." if hint else ".")
        )
    return value


def _check_data_options(kind: str, options: Mapping[str, Any]) -> None:
    """Types and ranges of ``data_options`` (no silent int("10") or int(2.5))."""
    for key, value in options.items():
        if key in ("num_images", "val_images", "num_classes"):
            low = 1 if key == "num_classes" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"TrainConfig.data_options[{key!r}] must be an int >= {low}, got {value!r}.")
        elif key == "seed" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"TrainConfig.data_options['seed'] must be an int, got {value!r}.")
        elif key == "cache_dir" and value is not None and not isinstance(value, str):
            raise TypeError(f"TrainConfig.data_options['cache_dir'] must be a directory path or None, got {value!r}.")
        elif key == "on_error" and value not in ON_ERROR:
            raise ValueError(f"TrainConfig.data_options['on_error'] must be one of {list(ON_ERROR)}, got {value!r}.")
    if kind == "synthetic" and "num_classes" in options and not 1 <= options["num_classes"] <= len(SHAPES):
        raise ValueError(
            f"TrainConfig.data_options['num_classes'] must be 1..{len(SHAPES)} for synthetic data (one class per "
            f"shape: {list(SHAPES)}), got {options['num_classes']!r}."
        )


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
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        for name in ("backbone_options", "neck_options", "detector_options", "data_options"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise TypeError(f"TrainConfig.{name} must be a dict, got {type(value).__name__}.")
            put(name, _plain(value, name))
        if not isinstance(self.output, (str, os.PathLike)) or not str(self.output).strip():
            raise TypeError(
                f"TrainConfig.output must be a directory path (str or Path), got {self.output!r}; e.g. output='runs/x'."
            )
        put("output", os.fspath(self.output))
        _choice("detector", self.detector, DETECTOR_KINDS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("eval_backend", self.eval_backend, BACKENDS)
        for name in ("backbone", "neck"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                example = (
                    "'tiny', 'resnet18' or 'timm:<model>'" if name == "backbone" else "'fpn' (see `necklace list`)"
                )
                raise TypeError(f"TrainConfig.{name} must be a name such as {example}, got {value!r}.")
        neck_info(self.neck)  # an unknown neck fails here, with the known ones listed
        spec = DataSpec.parse(self.data)
        for text in (self.data, self.val_data):
            if text is not None and DataSpec.parse(text).data_yaml is not None:
                raise ValueError(
                    f"TrainConfig data {text!r}: an Ultralytics data file is read by the YOLO detectors of necklace "
                    "compare (--detector yolov8n, ...); for fcos / retinanet / faster_rcnn write YOLO data as "
                    "yolo:IMAGES_DIR,LABELS_DIR,NAME1,NAME2,..."
                )
        allowed = _SYNTHETIC_OPTIONS if spec.kind == "synthetic" else _FILE_OPTIONS
        unknown = sorted(set(self.data_options) - set(allowed))
        if unknown:
            raise ValueError(
                f"TrainConfig.data_options {unknown} do not apply to {spec.kind} data; known: {sorted(allowed)}."
            )
        _check_data_options(spec.kind, self.data_options)
        put("image_size", _positive_int("image_size", self.image_size))
        put("batch_size", _positive_int("batch_size", self.batch_size))
        put("epochs", _positive_int("epochs", self.epochs, allow_none=True))
        put("steps", _positive_int("steps", self.steps, allow_none=True))
        if self.epochs is None and self.steps is None:
            raise ValueError("TrainConfig: give epochs or steps.")
        put("warmup_steps", _positive_int("warmup_steps", self.warmup_steps, allow_none=True, allow_zero=True))
        put("log_every", _positive_int("log_every", self.log_every))
        put("checkpoint_every", _positive_int("checkpoint_every", self.checkpoint_every, allow_zero=True))
        put("num_workers", _positive_int("num_workers", self.num_workers, allow_zero=True))
        put("eval_batch_size", _positive_int("eval_batch_size", self.eval_batch_size, allow_none=True))
        if isinstance(self.seed, (bool, np.bool_)) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"TrainConfig.seed must be an int, got {self.seed!r}.")
        put("seed", int(self.seed))
        for name in ("momentum", "weight_decay", "min_lr_ratio"):
            put(name, _number(name, getattr(self, name)))
        put("lr", _number("lr", self.lr, allow_none=True))
        put("grad_clip", _number("grad_clip", self.grad_clip, allow_none=True))
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr!r}.")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(
                "TrainConfig: need weight_decay >= 0, 0 <= momentum < 1, 0 <= min_lr_ratio <= 1; got "
                f"{self.weight_decay!r}, {self.momentum!r}, {self.min_lr_ratio!r}."
            )
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"TrainConfig.grad_clip must be positive or None, got {self.grad_clip!r}.")
        put("pretrained", _flag("pretrained", self.pretrained))
        put("eval", _flag("eval", self.eval))
        put("amp", _flag("amp", self.amp, allow_none=True))
        put("tensorboard", _flag("tensorboard", self.tensorboard, allow_none=True))
        if not isinstance(self.device, str) or (
            self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda")
        ):
            raise ValueError(f"TrainConfig.device {self.device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'.")

    # -------------------------------------------------------------------------------------------- round trips
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (every value JSON/YAML-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming the closest field."""
        return cls(**_known_fields(cls, data))

    def save(self, path: str | Path) -> Path:
        """Write as YAML (``.yaml``/``.yml``) or JSON (anything else), atomically."""
        path = Path(path)
        data = self.to_dict()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(data, sort_keys=False)
        else:
            text = json.dumps(data, indent=2) + "\n"
        if path.is_dir():
            raise ValueError(f"cannot save the config as {str(path)!r}: it is a directory; give a file name (.yaml).")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            tmp.replace(path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise ValueError(f"cannot save the config as {str(path)!r}: {e.strerror or e}.") from e
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
            raise FileNotFoundError(
                f"config file {str(path)!r} not found" + (" (it is a directory)." if path.is_dir() else ".")
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"config file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                where = getattr(e, "problem_mark", None)
                at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
                what = getattr(e, "problem", None) or str(e).splitlines()[0]
                raise ValueError(f"config file {str(path)!r} is not valid YAML{at}: {what}.") from None
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"config file {str(path)!r} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                    "name YAML files .yaml."
                ) from None
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
