"""COCO JSON: :class:`CocoDetection` reads a data set (every annotation checked), :func:`to_coco` writes one."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset

from necklace.detection.data.common import Target, _class_names, _file_name
from necklace.detection.data.files import _FileDetection
from necklace.detection.data.images import _write_image
from necklace.detection.data.validate import AnnotationProblem, ImageRecord, _check_on_error, validate_annotations

__all__ = ["CocoDetection", "to_coco"]


class CocoDetection(_FileDetection):
    """A COCO-JSON detection dataset read with PIL; every annotation is checked when it is built.

    Category ids are mapped to contiguous labels ``1..K`` in increasing id order (``cat_ids[label - 1]`` is the
    original id); ``class_names`` follows the same order. Crowd annotations (``iscrowd=1``) are skipped, as
    torchvision's reference training does (their number is ``skipped_crowd``). See :func:`validate_annotations`
    for ``on_error`` and ``check_images``.

    Example:
        >>> import tempfile
        >>> tmp = Path(tempfile.mkdtemp())
        >>> from necklace.detection.data import SyntheticShapes
        >>> _ = to_coco(SyntheticShapes(2, image_size=(64, 64)), tmp / "images", tmp / "ann.json")
        >>> ds = CocoDetection(tmp / "images", tmp / "ann.json")
        >>> len(ds), ds.class_names, ds[0][0].shape
        (2, ('rectangle', 'ellipse', 'triangle'), torch.Size([3, 64, 64]))
    """

    def __init__(
        self,
        images_dir: str | Path,
        ann_file: str | Path,
        on_error: str = "raise",
        check_images: bool = True,
        transforms: Callable[[Tensor, Target], tuple[Tensor, Target]] | None = None,
    ) -> None:
        _check_on_error(on_error)
        self.images_dir, self.ann_file = Path(images_dir), Path(ann_file)
        if not self.ann_file.is_file():
            what = "is a directory" if self.ann_file.is_dir() else "does not exist"
            raise FileNotFoundError(
                f"CocoDetection: annotation file {self.ann_file} {what}; give the COCO JSON file "
                "(e.g. coco:IMAGES_DIR,annotations/instances_val2017.json)."
            )
        try:
            data = json.loads(self.ann_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"CocoDetection: {self.ann_file} is not valid JSON: {e}.") from None
        except UnicodeDecodeError as e:
            raise ValueError(
                f"CocoDetection: {self.ann_file} is not UTF-8 text ({e.reason} at byte {e.start}); a COCO annotation "
                "file is JSON text: check that you passed the annotation file, not an image or archive."
            ) from None
        except OSError as e:
            raise ValueError(f"CocoDetection: cannot read {self.ann_file}: {e.strerror or e}.") from None
        if not self.images_dir.is_dir():
            raise FileNotFoundError(
                f"CocoDetection: images_dir {self.images_dir} is not a directory; give the folder holding the "
                "images named in the annotation file."
            )
        missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
        if not isinstance(data, dict) or missing:
            raise ValueError(
                f"CocoDetection: {self.ann_file} must be a COCO object with 'images', 'annotations' and 'categories' "
                f"lists; missing or not a list: {missing}."
            )
        try:
            cats = sorted(data["categories"], key=lambda c: int(c["id"]))
            self.cat_ids: tuple[int, ...] = tuple(int(c["id"]) for c in cats)
            self.class_names = tuple(str(c.get("name", c["id"])) for c in cats)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"CocoDetection: {self.ann_file}: every category needs an integer 'id' ({e!r}).") from None
        label_of = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        src = str(self.ann_file)
        problems: list[AnnotationProblem] = []
        records: dict[int, ImageRecord] = {}
        for i, img in enumerate(data["images"]):
            try:
                image_id, file_name = int(img["id"]), str(img["file_name"])
                width = int(img["width"]) if img.get("width") is not None else None
                height = int(img["height"]) if img.get("height") is not None else None
            except (KeyError, TypeError, ValueError):
                problems.append(AnnotationProblem("malformed_annotation", src, None, None, f"images[{i}] = {img!r}"))
                continue
            if image_id in records:
                problems.append(AnnotationProblem("duplicate_image_id", src, image_id, None, f"images[{i}] = {img!r}"))
                continue
            records[image_id] = ImageRecord(self.images_dir / file_name, image_id, width, height, [], [], [], [])
            records[image_id].sources = []
        n_bad = 0
        self.skipped_crowd = 0  # iscrowd=1 regions: valid COCO, not training targets
        for i, ann in enumerate(data["annotations"]):
            raw_id = ann.get("image_id") if isinstance(ann, dict) else None
            bbox = ann.get("bbox") if isinstance(ann, dict) else None
            value = json.dumps(bbox) if bbox is not None else repr(ann)
            if not isinstance(ann, dict) or not _is_box(bbox) or "category_id" not in ann:
                problems.append(AnnotationProblem("malformed_annotation", src, _int_or_none(raw_id), i, value))
                n_bad += 1
                continue
            if ann.get("iscrowd", 0):
                self.skipped_crowd += 1
                continue
            rec = records.get(_int_or_none(raw_id))  # type: ignore[arg-type]
            if rec is None:
                problems.append(AnnotationProblem("unknown_image_id", src, _int_or_none(raw_id), i, value))
                n_bad += 1
                continue
            cat = _int_or_none(ann["category_id"])
            label = label_of.get(cat, 0) if cat is not None else 0
            x, y, w, h = (float(v) for v in bbox)  # type: ignore[union-attr]
            rec.boxes.append([x, y, x + w, y + h])
            rec.labels.append(label)  # 0 (unknown) is reported by validate_annotations
            rec.areas.append(float(ann["area"]) if isinstance(ann.get("area"), (int, float)) else None)
            rec.sources.append((src, i, value if label else f"category_id {ann['category_id']!r}, bbox {value}"))
        report = validate_annotations(
            list(records.values()),
            len(self.cat_ids),
            on_error,
            problems=problems,
            check_images=check_images,
            source=src,
            num_annotations=n_bad,
        )
        self.label_to_cat_id = {i + 1: cid for i, cid in enumerate(self.cat_ids)}
        self._finish(report, transforms)


def _int_or_none(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _is_box(bbox: object) -> bool:
    return (
        isinstance(bbox, (list, tuple))
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
    )


def to_coco(
    dataset: Dataset[tuple[Tensor, Target]],
    images_dir: str | Path | None = None,
    ann_file: str | Path | None = None,
) -> dict[str, Any]:
    """Export a detection dataset to a COCO dict; optionally write the images (``images_dir``) and the JSON.

    Image ids are the targets' ``image_id``; annotation ids start at 1 (pycocotools treats id 0 as "no match");
    category ids are the labels ``1..K``, named from ``dataset.class_names``; ``bbox`` is ``[x, y, w, h]``.

    Example:
        >>> from necklace.detection.data import SyntheticShapes
        >>> coco = to_coco(SyntheticShapes(2, image_size=(64, 64)))
        >>> coco["annotations"][0]["id"], [c["name"] for c in coco["categories"]]
        (1, ['rectangle', 'ellipse', 'triangle'])
    """
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    targets: list[Target] = []
    out_dir = Path(images_dir) if images_dir is not None else None
    for index in range(len(dataset)):  # type: ignore[arg-type]
        image, target = dataset[index]
        targets.append(target)
        image_id = int(target["image_id"])
        name = _file_name(dataset, index, image_id)
        if out_dir is not None:
            _write_image(image, out_dir / name)
        images.append(
            {"id": image_id, "file_name": name, "width": int(image.shape[-1]), "height": int(image.shape[-2])}
        )
        areas = target.get("area")
        for j, (box, label) in enumerate(zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True)):
            x1, y1, x2, y2 = box
            area = float(areas[j]) if areas is not None else (x2 - x1) * (y2 - y1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": area,
                    "iscrowd": 0,
                }
            )
    names = _class_names(dataset, targets)
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
    }
    if ann_file is not None:
        path = Path(ann_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(coco))
    return coco
