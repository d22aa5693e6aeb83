"""The reading step the file-backed loaders (COCO, YOLO) share: image file -> tensor, record -> target."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from necklace.detection.data.common import Target, _make_target
from necklace.detection.data.images import _image_to_tensor
from necklace.detection.data.validate import AnnotationReport, AnnotationWarning, ImageRecord


class _FileDetection(Dataset[tuple[Tensor, Target]]):
    """Shared ``__getitem__`` of the file-based loaders: read the image with PIL, build the target."""

    report: AnnotationReport
    records: list[ImageRecord]
    class_names: tuple[str, ...]

    def _finish(self, report: AnnotationReport, transforms: Callable[..., Any] | None) -> None:
        self.report = report
        self.records = report.records
        self.transforms = transforms
        if not report.ok:
            warnings.warn(report.summary(), AnnotationWarning, stacklevel=3)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def file_name(self, index: int) -> str:
        return self.records[index].path.name

    def target(self, index: int) -> Target:
        rec = self.records[index]
        return _make_target(rec.boxes, rec.labels, rec.image_id, rec.areas)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        from PIL import Image

        rec = self.records[index]
        try:
            with Image.open(rec.path) as im:
                arr = np.asarray(im.convert("RGB"))
        except OSError as e:
            raise RuntimeError(
                f"{type(self).__name__}: cannot read {rec.path} (image {rec.image_id}): {e}. It passed the header "
                "check when the dataset was built; the file may be truncated or was changed since."
            ) from e
        image, target = _image_to_tensor(arr), self.target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
