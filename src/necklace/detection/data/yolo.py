"""YOLO txt: :class:`YoloDetection` reads a data set (every label line checked), :func:`to_yolo` writes one."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

from necklace.detection.data.common import Target, _file_name
from necklace.detection.data.files import _FileDetection
from necklace.detection.data.images import IMAGE_EXTS, _write_image, probe_image
from necklace.detection.data.validate import AnnotationProblem, ImageRecord, _check_on_error, validate_annotations

__all__ = ["YoloDetection", "to_yolo"]


class YoloDetection(_FileDetection):
    """A YOLO txt dataset: ``images_dir/<name>.<ext>`` with ``labels_dir/<name>.txt`` lines
    ``class cx cy w h`` (class ids from 0, coordinates normalised to 0..1), read with PIL.

    Labels are ``class + 1`` (``class_names[label - 1]``). An image without a label file has no objects (YOLO's
    convention); a label file without an image is reported as ``missing_image``; a line that is not five numbers
    with an integer class is ``malformed_line``; a label file that cannot be read as text is ``unreadable_labels``
    (its image is dropped under ``on_error="drop"``). Image ids are the positions in sorted file-name order. See
    :func:`validate_annotations` for ``on_error``.

    Example:
        >>> import tempfile
        >>> tmp = Path(tempfile.mkdtemp())
        >>> from necklace.detection.data import SyntheticShapes
        >>> to_yolo(SyntheticShapes(2, image_size=(64, 64)), tmp / "images", tmp / "labels")
        >>> ds = YoloDetection(tmp / "images", tmp / "labels", class_names=["rectangle", "ellipse", "triangle"])
        >>> len(ds), ds[1][1]["labels"].tolist() == SyntheticShapes(2, image_size=(64, 64))[1][1]["labels"].tolist()
        (2, True)
    """

    def __init__(
        self,
        images_dir: str | Path,
        labels_dir: str | Path,
        class_names: Sequence[str],
        on_error: str = "raise",
        transforms: Callable[[Tensor, Target], tuple[Tensor, Target]] | None = None,
        check_images: bool | str = True,
    ) -> None:
        _check_on_error(on_error)
        if isinstance(class_names, str) or not class_names:
            raise ValueError(f"YoloDetection: class_names must be a non-empty list of names, got {class_names!r}.")
        self.images_dir, self.labels_dir = Path(images_dir), Path(labels_dir)
        self.class_names = tuple(class_names)
        for what, d in (("images_dir", self.images_dir), ("labels_dir", self.labels_dir)):
            if not d.is_dir():
                raise FileNotFoundError(f"YoloDetection: {what} {d} is not a directory.")
        images = sorted(p for p in self.images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        stems = {p.stem for p in images}
        problems: list[AnnotationProblem] = []
        for label_file in sorted(self.labels_dir.glob("*.txt")):
            if label_file.stem not in stems:
                problems.append(
                    AnnotationProblem(
                        "missing_image",
                        str(label_file),
                        None,
                        None,
                        f"no image named {label_file.stem}.* in {self.images_dir}",
                        "dropped image",
                    )
                )
        records, n_bad = [], 0
        k = len(self.class_names)
        for image_id, path in enumerate(images):
            rec = ImageRecord(path, image_id, None, None, [], [], [], [])
            rec.sources = []
            label_file = self.labels_dir / f"{path.stem}.txt"
            try:
                lines = label_file.read_text(encoding="utf-8").splitlines() if label_file.exists() else []
            except (OSError, UnicodeDecodeError) as e:  # a directory, no permission, binary junk
                why = f"cannot read the label file ({type(e).__name__}: {e}); expected UTF-8 text lines"
                bad = AnnotationProblem("unreadable_labels", str(label_file), image_id, None, why, "dropped image")
                problems.append(bad)
                continue
            size = probe_image(path, full=False) if lines else None  # the boxes need the size: the header suffices
            if lines and isinstance(size, str):
                records.append(rec)  # validate_annotations reports the unreadable image
                continue
            width, height = size if isinstance(size, tuple) else (1, 1)
            rec.width, rec.height = (width, height) if isinstance(size, tuple) else (None, None)
            for n, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                parsed = _parse_yolo_line(line)
                if parsed is None:
                    problems.append(AnnotationProblem("malformed_line", str(label_file), image_id, n, repr(line)))
                    n_bad += 1
                    continue
                cls, cx, cy, bw, bh = parsed
                label = cls + 1 if 0 <= cls < k else 0  # 0: unknown, reported by validate_annotations
                x1, y1 = (cx - bw / 2) * width, (cy - bh / 2) * height
                rec.boxes.append([x1, y1, x1 + bw * width, y1 + bh * height])
                rec.labels.append(label)
                rec.areas.append(None)
                rec.sources.append((str(label_file), n, repr(line.strip())))
            records.append(rec)
        report = validate_annotations(
            records,
            k,
            on_error,
            problems=problems,
            check_images=check_images,
            source=str(self.labels_dir),
            num_annotations=n_bad,
        )
        self._finish(report, transforms)


def _parse_yolo_line(line: str) -> tuple[int, float, float, float, float] | None:
    parts = line.split()
    if len(parts) != 5:
        return None
    try:
        cls_f = float(parts[0])
        vals = [float(p) for p in parts[1:]]
    except ValueError:
        return None
    if not cls_f.is_integer() or not all(math.isfinite(v) for v in vals):
        return None
    return int(cls_f), vals[0], vals[1], vals[2], vals[3]


def to_yolo(dataset: Dataset[tuple[Tensor, Target]], images_dir: str | Path, labels_dir: str | Path) -> None:
    """Write a detection dataset as YOLO txt: images plus one ``class cx cy w h`` line per box (class = label - 1).

    Example:
        >>> import tempfile
        >>> tmp = Path(tempfile.mkdtemp())
        >>> from necklace.detection.data import SyntheticShapes
        >>> to_yolo(SyntheticShapes(1, image_size=(64, 64)), tmp / "images", tmp / "labels")
        >>> sorted(p.name for p in tmp.rglob("*.*"))
        ['000000.png', '000000.txt']
    """
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    labels_dir.mkdir(parents=True, exist_ok=True)
    for index in range(len(dataset)):  # type: ignore[arg-type]
        image, target = dataset[index]
        name = _file_name(dataset, index, int(target["image_id"]))
        _write_image(image, images_dir / name)
        h, w = image.shape[-2:]
        lines = []
        for (x1, y1, x2, y2), label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
            cx, cy, bw, bh = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h
            lines.append(f"{int(label) - 1} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
        (labels_dir / f"{Path(name).stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
