"""The reading step the file-backed loaders (COCO, YOLO) share: image file -> tensor, record -> target.

Images are decoded in full when a data set is built (:func:`~necklace.detection.data.validate_annotations`), so a
damaged file is reported before training. One that breaks later anyway (changed on disk, or a data set built with
``check_images="header"``) follows the data set's ``on_error``: ``"raise"`` stops with a message naming the file
and the fix; ``"drop"`` / ``"clip"`` drop that image for the rest of the run, serve the next readable image in its
place, add the problem to ``dataset.report`` and warn (:class:`~necklace.detection.AnnotationWarning`), so a run
never dies at one bad file mid-epoch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset

from necklace.detection.data.common import Target, _make_target
from necklace.detection.data.images import _READ_ERRORS, _decode, _reason
from necklace.detection.data.validate import AnnotationProblem, AnnotationReport, AnnotationWarning, ImageRecord


class _FileDetection(Dataset[tuple[Tensor, Target]]):
    """Shared ``__getitem__`` of the file-based loaders: decode the image, build the target."""

    report: AnnotationReport
    records: list[ImageRecord]
    class_names: tuple[str, ...]

    def _finish(self, report: AnnotationReport, transforms: Callable[..., Any] | None) -> None:
        self.report = report
        self.records = report.records
        self.transforms = transforms
        self.dropped_image_ids: set[int] = set()  # images found unreadable while iterating (on_error != "raise")
        self._unreadable: set[int] = set()  # their record indices
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
        n = len(self.records)
        for attempt in range(n):
            i = (index + attempt) % n
            if i in self._unreadable:
                continue
            rec = self.records[i]
            try:
                image = _decode(rec.path)
            except _READ_ERRORS as e:
                self._unreadable_now(i, e, served_for=index)
                continue
            target = self.target(i)
            if self.transforms is not None:
                image, target = self.transforms(image, target)
            return image, target
        raise ValueError(
            f"{type(self).__name__}: none of the {n} images can be decoded any more (each one was dropped as "
            f"unreadable; see dataset.report.problems). Check that the image directory is still in place."
        )

    def _unreadable_now(self, i: int, error: BaseException, served_for: int) -> None:
        rec = self.records[i]
        reason = _reason(error)
        if self.report.policy == "raise":
            raise ValueError(
                f"{type(self).__name__}: cannot decode {rec.path} (image {rec.image_id}): {reason}. It was readable "
                "when the data set was built, so the file changed since (or the data set was built with "
                "check_images='header'). Replace the file, or load with on_error='drop' to skip such images."
            ) from error
        self._unreadable.add(i)
        self.dropped_image_ids.add(rec.image_id)
        problem = AnnotationProblem("unreadable_image", str(rec.path), rec.image_id, None, reason, "dropped image")
        self.report.problems.append(problem)
        self.report.kept_images -= 1
        self.report.kept_annotations -= len(rec.boxes)
        warnings.warn(
            f"{type(self).__name__}: {problem} while reading item {served_for}; it is skipped from now on and the "
            "next readable image is used in its place (see dataset.report).",
            AnnotationWarning,
            stacklevel=3,
        )
