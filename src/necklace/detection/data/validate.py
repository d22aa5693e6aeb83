"""Annotation checks shared by the file loaders: what a problem is (:class:`AnnotationProblem`), the format-neutral
image record (:class:`ImageRecord`), the report (:class:`AnnotationReport`) and :func:`validate_annotations`."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from necklace.detection.data.images import probe_image

__all__ = [
    "CHECK_IMAGES",
    "ON_ERROR",
    "AnnotationProblem",
    "AnnotationReport",
    "AnnotationWarning",
    "ImageRecord",
    "validate_annotations",
]

ON_ERROR = ("raise", "drop", "clip")
#: ``check_images`` values: decode every image in full (``True``), read only headers, or trust the annotations.
CHECK_IMAGES = (True, "header", False)
_TOL = 1e-2  # pixels: coordinates this far outside the image are rounding, clamped without a report


class AnnotationWarning(UserWarning):
    """Emitted when a loader drops or clips annotations (``on_error='drop'``/``'clip'``); the text summarises them.

    Example:
        >>> issubclass(AnnotationWarning, UserWarning)
        True
    """


@dataclass(frozen=True)
class AnnotationProblem:
    """One problem in a dataset's annotations.

    ``kind``: ``missing_image``, ``unreadable_image``, ``image_size_mismatch``, ``unknown_image_id``,
    ``duplicate_image_id``, ``malformed_annotation``, ``malformed_line``, ``unreadable_labels``, ``unknown_class``,
    ``degenerate_box`` (zero or negative width/height), ``box_outside_image``. ``file``: the annotation file (COCO JSON,
    YOLO txt) or the image file; ``image_id``; ``index``: position in the COCO ``annotations`` list, or the 1-based line
    number in a YOLO file (``None`` for image-level problems); ``value``: the offending value as written; ``action``:
    ``"error"``, ``"dropped"``, ``"clipped"`` or ``"dropped image"``.

    Example:
        >>> p = AnnotationProblem("degenerate_box", "ann.json", 3, 7, "[10, 10, 0, 5]", "dropped")
        >>> str(p)
        'degenerate_box: ann.json, image 3, annotation 7: [10, 10, 0, 5] (dropped)'
    """

    kind: str
    file: str
    image_id: int | None
    index: int | None
    value: str
    action: str = "error"

    def __str__(self) -> str:
        where = [self.file]
        if self.image_id is not None:
            where.append(f"image {self.image_id}")
        if self.index is not None:
            where.append(("line " if self.file.endswith(".txt") else "annotation ") + str(self.index))
        return f"{self.kind}: {', '.join(where)}: {self.value} ({self.action})"


@dataclass
class ImageRecord:
    """One image and its annotations in a format-neutral form (boxes ``x1, y1, x2, y2`` in pixels).

    ``sources[i]`` is ``(file, index, value)`` of annotation ``i`` as written, for reports. ``width``/``height``
    are ``None`` when unknown (they are then read from the image file).

    Example:
        >>> r = ImageRecord(Path("a.png"), 0, 64, 48, boxes=[[1, 2, 30, 40]], labels=[1])
        >>> len(r.boxes), r.sources
        (1, [('a.png', 0, '[1, 2, 30, 40]')])
    """

    path: Path
    image_id: int
    width: int | None
    height: int | None
    boxes: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    areas: list[float | None] = field(default_factory=list)
    sources: list[tuple[str, int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.areas:
            self.areas = [None] * len(self.boxes)
        if not self.sources:
            self.sources = [(str(self.path), i, str(b)) for i, b in enumerate(self.boxes)]
        if not len(self.boxes) == len(self.labels) == len(self.areas) == len(self.sources):
            raise ValueError(
                f"ImageRecord {self.path}: boxes, labels, areas and sources must have the same length, got "
                f"{len(self.boxes)}, {len(self.labels)}, {len(self.areas)}, {len(self.sources)}."
            )


@dataclass
class AnnotationReport:
    """What :func:`validate_annotations` found: every problem (with the action taken) and the counts.

    ``records`` holds the images and annotations that were kept (after dropping/clipping); ``counts`` maps each
    problem kind to how many times it occurred. ``str(report)`` is the summary the loaders raise or warn with.

    Example:
        >>> rec = ImageRecord(Path("a.png"), 0, 64, 64, boxes=[[0, 0, 10, 10], [50, 50, 80, 60], [5, 5, 5, 9]],
        ...                   labels=[1, 1, 9])
        >>> report = validate_annotations([rec], num_classes=2, on_error="clip", check_images=False)
        >>> report.counts
        {'box_outside_image': 1, 'unknown_class': 1}
        >>> report.kept_annotations, report.records[0].boxes
        (2, [[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 64.0, 60.0]])
    """

    policy: str
    problems: list[AnnotationProblem]
    num_images: int
    num_annotations: int
    kept_images: int
    kept_annotations: int
    records: list[ImageRecord] = field(default_factory=list, repr=False, compare=False)
    source: str = ""

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    @property
    def counts(self) -> dict[str, int]:
        """Problem kind -> number of occurrences (in order of first occurrence)."""
        return dict(Counter(p.kind for p in self.problems))

    def summary(self, examples: int = 5) -> str:
        """Counts per kind, what was done, and the first ``examples`` problems."""
        where = f" in {self.source}" if self.source else ""
        if self.ok:
            return f"no annotation problems{where} ({self.num_images} images, {self.num_annotations} annotations)."
        counts = ", ".join(f"{n} {k}" for k, n in self.counts.items())
        lines = [
            f"{len(self.problems)} annotation problem(s){where} ({counts}) among {self.num_images} images and "
            f"{self.num_annotations} annotations."
        ]
        if self.policy == "raise":
            lines.append(
                "Fix the annotations, or load with on_error='drop' (skip bad annotations and images whose file is "
                "missing) or on_error='clip' (also clip boxes that leave the image)."
            )
        else:
            lines.append(
                f"on_error={self.policy!r}: kept {self.kept_images}/{self.num_images} images and "
                f"{self.kept_annotations}/{self.num_annotations} annotations."
            )
        lines.append("First problems:")
        lines += [f"  {p}" for p in self.problems[:examples]]
        if len(self.problems) > examples:
            lines.append(f"  ... and {len(self.problems) - examples} more (see dataset.report.problems).")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {list(ON_ERROR)}, got {on_error!r}.")


def _check_check_images(check_images: object) -> None:
    if not (check_images is True or check_images is False or check_images == "header"):
        raise ValueError(
            f"check_images must be True (decode every image), 'header' (headers only) or False, got {check_images!r}."
        )


def _probe_all(records: Sequence[ImageRecord], check_images: bool | str) -> list[tuple[int, int] | str | None]:
    """Per record: its ``(width, height)``, the reason it cannot be read, or ``None`` (missing file / not needed)."""

    def probe(rec: ImageRecord) -> tuple[int, int] | str | None:
        if not (check_images or rec.width is None or rec.height is None):
            return None
        if not rec.path.is_file():
            return None
        return probe_image(rec.path, full=check_images is True)

    if check_images is not True or len(records) < 16:
        return [probe(r) for r in records]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # Pillow decodes without the GIL
        return list(pool.map(probe, records))


def validate_annotations(
    records: Sequence[ImageRecord],
    num_classes: int,
    on_error: str = "raise",
    *,
    problems: Sequence[AnnotationProblem] = (),
    check_images: bool | str = True,
    source: str = "",
    num_annotations: int | None = None,
) -> AnnotationReport:
    """Check images and annotations; apply ``on_error``; return the report (with the kept ``records``).

    Checks, per image: the file exists and decodes in full (``check_images=True``, the default: a file cut short after
    an intact header is caught here, not mid-epoch; decoded on several threads), or only its header (``"header"``:
    faster on very large sets) or nothing (``False``: sizes still come from the headers when the annotations lack them),
    and its size matches ``width``/``height`` when those are given; per annotation: the label is in ``1..num_classes``,
    the box has positive width and height, and it lies inside the image. ``problems`` are problems a loader already
    found while parsing (malformed lines, unknown image ids), merged into the report.

    ``on_error``: ``"raise"`` raises ``ValueError`` with :meth:`AnnotationReport.summary` when anything is wrong;
    ``"drop"`` removes each bad annotation (and images whose file is missing or unreadable); ``"clip"`` clips boxes
    that leave the image to its bounds and drops the rest. ``records`` passed in are not modified.

    Example:
        >>> rec = ImageRecord(Path("a.png"), 0, 64, 64, boxes=[[0, 0, 10, 10], [8, 8, 4, 20]], labels=[1, 1])
        >>> validate_annotations([rec], 1, on_error="raise", check_images=False)
        Traceback (most recent call last):
        ...
        ValueError: 1 annotation problem(s) (1 degenerate_box) among 1 images and 2 annotations. ...
    """
    _check_on_error(on_error)
    _check_check_images(check_images)
    action = "error" if on_error == "raise" else "dropped"
    found: list[AnnotationProblem] = [  # parse-time problems: "dropped image" marks image-level ones
        AnnotationProblem(p.kind, p.file, p.image_id, p.index, p.value, "error" if action == "error" else p.action)
        if p.action == "dropped image"
        else AnnotationProblem(p.kind, p.file, p.image_id, p.index, p.value, action)
        for p in problems
    ]
    kept: list[ImageRecord] = []
    total = sum(len(r.boxes) for r in records) + (0 if num_annotations is None else num_annotations)
    sizes = _probe_all(records, check_images)
    for rec, size in zip(records, sizes, strict=True):
        width, height = rec.width, rec.height
        if check_images or width is None or height is None:
            kind = "missing_image" if size is None else "unreadable_image" if isinstance(size, str) else None
            if kind is not None:
                value = "file not found" if size is None else str(size)
                img_action = "error" if on_error == "raise" else "dropped image"
                found.append(AnnotationProblem(kind, str(rec.path), rec.image_id, None, value, img_action))
                continue
            assert isinstance(size, tuple)
            if width is not None and height is not None and (width, height) != size:
                found.append(
                    AnnotationProblem(
                        "image_size_mismatch",
                        str(rec.path),
                        rec.image_id,
                        None,
                        f"annotations say {width}x{height}, the file is {size[0]}x{size[1]}",
                        "error" if on_error == "raise" else "dropped image",
                    )
                )
                continue
            width, height = size
        out = ImageRecord(rec.path, rec.image_id, width, height, [], [], [], [])
        out.sources = []
        for box, label, area, src in zip(rec.boxes, rec.labels, rec.areas, rec.sources, strict=True):
            file, index, value = src
            if not 1 <= label <= num_classes:
                found.append(AnnotationProblem("unknown_class", file, rec.image_id, index, value, action))
                continue
            x1, y1, x2, y2 = (float(v) for v in box)
            if not x2 > x1 or not y2 > y1:
                found.append(AnnotationProblem("degenerate_box", file, rec.image_id, index, value, action))
                continue
            outside = x1 < -_TOL or y1 < -_TOL or x2 > width + _TOL or y2 > height + _TOL
            cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
            if outside:
                if on_error == "clip" and cx2 > cx1 and cy2 > cy1:
                    found.append(AnnotationProblem("box_outside_image", file, rec.image_id, index, value, "clipped"))
                    area = None  # recomputed from the clipped box
                else:
                    found.append(AnnotationProblem("box_outside_image", file, rec.image_id, index, value, action))
                    continue
            out.boxes.append([cx1, cy1, cx2, cy2])  # within _TOL of the image: rounding, clamped
            out.labels.append(label)
            out.areas.append(area)
            out.sources.append(src)
        kept.append(out)
    report = AnnotationReport(
        policy=on_error,
        problems=found,
        num_images=len(records),
        num_annotations=total,
        kept_images=len(kept),
        kept_annotations=sum(len(r.boxes) for r in kept),
        records=kept,
        source=source,
    )
    if found and on_error == "raise":
        raise ValueError(report.summary())
    return report
