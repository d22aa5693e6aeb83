"""What a :class:`~necklace.detection.train.TrainConfig` builds: its datasets and its detector; a trained model
read back from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from necklace.detection.backbones import build_backbone
from necklace.detection.checkpoint import load_checkpoint
from necklace.detection.data import CocoDetection, SyntheticShapes, YoloDetection
from necklace.detection.detectors import build_detector
from necklace.detection.train.config import _FILE_OPTIONS, _SYNTHETIC_OPTIONS, DataSpec, TrainConfig
from necklace.registry import neck_info

__all__ = ["build_dataset", "build_datasets", "build_model", "load_model"]


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
    try:
        backbone = build_backbone(config.backbone, pretrained=config.pretrained, **config.backbone_options)
    except TypeError as e:
        raise TypeError(
            f"TrainConfig.backbone_options {config.backbone_options} do not fit backbone {config.backbone!r}: {e}."
        ) from e
    try:
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
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):  # build_detector's own errors name the option already
            raise
        knobs = neck_info(config.neck).knobs
        raise TypeError(
            f"TrainConfig.neck_options {config.neck_options} do not fit neck {config.neck!r}: {e}."
            + (f" Options of {config.neck}: {', '.join(knobs)}." if knobs else "")
        ) from e


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The trained model (``eval()`` mode, on ``device``) and config stored in a :func:`train` checkpoint.

    ``model.class_names`` holds the class names of the training data (label ``k`` is ``class_names[k - 1]``).

    Example:
        >>> import tempfile
        >>> from necklace.detection.train import train
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
