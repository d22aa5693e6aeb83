"""Built-in data for searches: ``tiny_shapes``, a synthetic set of mostly tiny objects, written as COCO files.

:class:`~necklace.detection.SyntheticShapes` draws objects over COCO's small / medium / large areas; with
``size_weights=(1, 0, 0)`` every object is COCO-small (8 to 32 pixels a side), the case where a neck's stride-4
level matters. :func:`tiny_shapes` writes such a training and a validation set (different seeds) as COCO
images + JSON under a folder, once (a later call with the same settings reuses the files), and returns the
``coco:IMAGES_DIR,ANN_FILE`` data specs that :class:`~necklace.detection.train.TrainConfig` and
:func:`~necklace.detection.compare.compare` read.

Example:
    >>> import tempfile
    >>> train_spec, val_spec = tiny_shapes(tempfile.mkdtemp(), num_images=2, val_images=1, image_size=64)
    >>> train_spec.startswith("coco:") and train_spec.endswith("train.json")
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from necklace.detection.data import SyntheticShapes, to_coco, to_yolo

__all__ = ["PRESETS", "TinyShapes", "tiny_shapes", "tiny_shapes_yolo"]

#: data presets a search can name instead of a data spec
PRESETS = ("tiny_shapes",)


@dataclass(frozen=True)
class TinyShapes:
    """Settings of the ``tiny_shapes`` preset (see :func:`tiny_shapes`).

    Example:
        >>> TinyShapes().objects, TinyShapes().size_weights
        ((6, 14), (1.0, 0.0, 0.0))
    """

    num_images: int = 256
    val_images: int = 64
    image_size: int = 128
    num_classes: int = 3
    objects: tuple[int, int] = (6, 14)
    size_weights: tuple[float, float, float] = (1.0, 0.0, 0.0)
    seed: int = 0

    def key(self) -> str:
        text = json.dumps([SyntheticShapes.VERSION, *map(str, self.__dict__.values())])
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _write_split(root: Path, name: str, dataset: SyntheticShapes) -> Path:
    ann = root / f"{name}.json"
    if ann.is_file():
        return ann
    tmp = root / f".{name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    to_coco(dataset, tmp / name, tmp / f"{name}.json")
    shutil.rmtree(root / name, ignore_errors=True)
    (tmp / name).replace(root / name)
    (tmp / f"{name}.json").replace(ann)  # the JSON last: its presence means the split is complete
    shutil.rmtree(tmp, ignore_errors=True)
    return ann


def _check_sizes(owner: str, num_images: int, val_images: int, image_size: int) -> None:
    for name, value, low in (
        ("num_images", num_images, 1),
        ("val_images", val_images, 1),
        ("image_size", image_size, 32),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{owner}: {name} must be an int >= {low}, got {value!r}.")


def _shapes(preset: TinyShapes, n: int, seed: int) -> SyntheticShapes:
    size = (preset.image_size, preset.image_size)
    return SyntheticShapes(
        n, size, preset.num_classes, seed=seed, objects=preset.objects, size_weights=preset.size_weights
    )


def tiny_shapes(
    root: str | Path,
    num_images: int = 256,
    val_images: int = 64,
    image_size: int = 128,
    seed: int = 0,
) -> tuple[str, str]:
    """Write (once) the ``tiny_shapes`` training and validation sets under ``root`` and return their data specs.

    Every object is COCO-small (``SyntheticShapes(size_weights=(1, 0, 0), objects=(6, 14))``); the validation
    set uses seed ``seed + 1``. The folder name carries a hash of the settings, so other settings never reuse it.
    """
    _check_sizes("tiny_shapes", num_images, val_images, image_size)
    preset = TinyShapes(num_images, val_images, image_size, seed=seed)
    folder = Path(root) / f"tiny_shapes-{preset.key()}"
    folder.mkdir(parents=True, exist_ok=True)
    specs = []
    for name, n, s in (("train", num_images, seed), ("val", val_images, seed + 1)):
        ann = _write_split(folder, name, _shapes(preset, n, s))
        specs.append(f"coco:{folder / name},{ann}")
    return specs[0], specs[1]


def tiny_shapes_yolo(
    root: str | Path,
    num_images: int = 256,
    val_images: int = 64,
    image_size: int = 128,
    seed: int = 0,
) -> Path:
    """Write (once) the same ``tiny_shapes`` images as :func:`tiny_shapes` as an Ultralytics YOLO dataset under
    ``root`` (``images/{train,val}``, ``labels/{train,val}``) and return its ``data.yaml`` (what a search inside
    a YOLO detector trains on: ``yolo:PATH/data.yaml``). ``data.yaml`` is written last: its presence means the
    dataset is complete.

    Example:
        >>> import tempfile
        >>> data = tiny_shapes_yolo(tempfile.mkdtemp(), num_images=2, val_images=1, image_size=64)
        >>> data.read_text().splitlines()[1:5]
        ['train: images/train', 'val: images/val', 'names:', '  0: rectangle']
        >>> sorted(p.name for p in (data.parent / "labels" / "train").iterdir())
        ['000000.txt', '000001.txt']
    """
    _check_sizes("tiny_shapes_yolo", num_images, val_images, image_size)
    preset = TinyShapes(num_images, val_images, image_size, seed=seed)
    folder = (Path(root) / f"tiny_shapes-yolo-{preset.key()}").resolve()
    data = folder / "data.yaml"
    if data.is_file():
        return data
    for name, n, s in (("train", num_images, seed), ("val", val_images, seed + 1)):
        shutil.rmtree(folder / "images" / name, ignore_errors=True)
        shutil.rmtree(folder / "labels" / name, ignore_errors=True)
        to_yolo(_shapes(preset, n, s), folder / "images" / name, folder / "labels" / name)
    names = "".join(f"  {i}: {c}\n" for i, c in enumerate(_shapes(preset, 0, seed).class_names))
    tmp = folder / f".data.{os.getpid()}.tmp"
    tmp.write_text(f"path: {folder}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    tmp.replace(data)
    return data
