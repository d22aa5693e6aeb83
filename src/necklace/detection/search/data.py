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

from necklace.detection.data import SyntheticShapes, to_coco

__all__ = ["PRESETS", "TinyShapes", "tiny_shapes"]

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
    for name, value, low in (
        ("num_images", num_images, 1),
        ("val_images", val_images, 1),
        ("image_size", image_size, 32),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"tiny_shapes: {name} must be an int >= {low}, got {value!r}.")
    preset = TinyShapes(num_images, val_images, image_size, seed=seed)
    folder = Path(root) / f"tiny_shapes-{preset.key()}"
    folder.mkdir(parents=True, exist_ok=True)
    specs = []
    for name, n, s in (("train", num_images, seed), ("val", val_images, seed + 1)):
        ds = SyntheticShapes(
            n,
            (image_size, image_size),
            preset.num_classes,
            seed=s,
            objects=preset.objects,
            size_weights=preset.size_weights,
        )
        ann = _write_split(folder, name, ds)
        specs.append(f"coco:{folder / name},{ann}")
    return specs[0], specs[1]
