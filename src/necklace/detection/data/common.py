"""What every detection dataset shares: the target format, batching (:func:`collate_fn`), COCO's size buckets
(:class:`SizeSplit`, :func:`size_split`) and the naming helpers of the exporters."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["LARGE_AREA", "SMALL_AREA", "SizeSplit", "Target", "check_same_classes", "collate_fn", "size_split"]

SMALL_AREA = 32**2  #: COCO: area < 32^2 is small
LARGE_AREA = 96**2  #: COCO: area > 96^2 is large (medium in between)
Target = dict[str, Any]


def _make_target(boxes: Sequence[Sequence[float]], labels: Sequence[int], image_id: int, areas: Any = None) -> Target:
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    if areas is not None:
        area = torch.tensor([float(a) if a is not None else float(x) for a, x in zip(areas, area, strict=True)])
    return {
        "boxes": b,
        "labels": torch.tensor(list(labels), dtype=torch.int64),
        "image_id": int(image_id),
        "area": area.to(torch.float32).reshape(-1),
        "iscrowd": torch.zeros(len(b), dtype=torch.int64),
    }


def collate_fn(batch: Sequence[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """Batch ``(image, target)`` pairs as ``(list of images, list of targets)`` (images may differ in size).

    Example:
        >>> from necklace.detection.data import SyntheticShapes
        >>> ds = SyntheticShapes(2, image_size=(64, 64))
        >>> images, targets = collate_fn([ds[0], ds[1]])
        >>> len(images), sorted(targets[0])
        (2, ['area', 'boxes', 'image_id', 'iscrowd', 'labels'])
    """
    images, targets = [], []
    for image, target in batch:
        images.append(image)
        targets.append(target)
    return images, targets


# ------------------------------------------------------------------------------------------------------ size split
@dataclass(frozen=True)
class SizeSplit:
    """How many objects are small / medium / large by COCO's area thresholds (32^2, 96^2).

    Example:
        >>> s = SizeSplit(small=2, medium=1, large=1)
        >>> s.total, s.fractions["small"]
        (4, 0.5)
    """

    small: int
    medium: int
    large: int

    @property
    def total(self) -> int:
        return self.small + self.medium + self.large

    @property
    def fractions(self) -> dict[str, float]:
        n = max(self.total, 1)
        return {"small": self.small / n, "medium": self.medium / n, "large": self.large / n}

    def __str__(self) -> str:
        f = self.fractions
        return (
            f"{self.total} objects: small {self.small} ({f['small']:.0%}), medium {self.medium} ({f['medium']:.0%}), "
            f"large {self.large} ({f['large']:.0%})"
        )


def size_split(targets: Iterable[Target]) -> SizeSplit:
    """Count objects per COCO size bucket from targets' ``area`` (box area when a target has none).

    Example:
        >>> t = {"boxes": torch.tensor([[0, 0, 10, 10.], [0, 0, 50, 50], [0, 0, 100, 100]])}
        >>> size_split([t])
        SizeSplit(small=1, medium=1, large=1)
    """
    counts = Counter[str]()
    for t in targets:
        area = t.get("area")
        if area is None:
            b = t["boxes"]
            area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        for a in torch.as_tensor(area).reshape(-1).tolist():
            counts["small" if a < SMALL_AREA else "large" if a > LARGE_AREA else "medium"] += 1
    return SizeSplit(counts["small"], counts["medium"], counts["large"])


def _class_names(dataset: Any, targets: Sequence[Target]) -> tuple[str, ...]:
    names = getattr(dataset, "class_names", None)
    if names:
        return tuple(names)
    k = max((int(t["labels"].max()) for t in targets if len(t["labels"])), default=0)
    return tuple(f"class_{i}" for i in range(1, k + 1))


def _file_name(dataset: Any, index: int, image_id: int) -> str:
    fn = getattr(dataset, "file_name", None)
    return str(fn(index)) if callable(fn) else f"{image_id:06d}.png"


def check_same_classes(expected: Sequence[str], got: Sequence[str], expected_what: str, got_what: str) -> None:
    """Raise ``ValueError`` unless two class-name lists are equal (same names, same order).

    Labels are positions in the class list (label ``k`` is ``class_names[k - 1]``), so a model trained on one list
    can only be trained further or evaluated on data with the same list; the message names both lists, the first
    difference and the fix.

    Example:
        >>> check_same_classes(["cat", "dog"], ["cat", "dog"], "the checkpoint", "the data")  # same: no error
        >>> check_same_classes(["cat", "dog"], ["dog", "cat"], "the training data", "the validation data")
        Traceback (most recent call last):
        ...
        ValueError: the validation data has other classes than the training data: ['dog', 'cat'] where ... (label 1
        is 'cat' there, 'dog' here). ...
    """
    a, b = [str(n) for n in expected], [str(n) for n in got]
    if a == b:
        return
    if len(a) != len(b):
        diff = f"{len(b)} classes instead of {len(a)}"
    else:
        k = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
        diff = f"label {k + 1} is {a[k]!r} there, {b[k]!r} here"
    raise ValueError(
        f"{got_what} has other classes than {expected_what}: {b} where {expected_what} has {a} ({diff}). Labels "
        f"are positions in the class list, so use data with the same class names in the same order (YOLO: the same "
        "NAME list after the directories in --data; COCO: the same categories), or train a new model on this data."
    )
