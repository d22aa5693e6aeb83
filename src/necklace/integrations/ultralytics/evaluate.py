"""COCO box metrics of an Ultralytics YOLO model, overall and per object size, computed by necklace's evaluator.

Ultralytics' own validation reports mAP50-95 and mAP50 but no small / medium / large split. :func:`coco_evaluate`
runs the model over a split of an Ultralytics data file (its images and YOLO labels, found the way Ultralytics
finds them) and scores the detections with :func:`necklace.detection.evaluate.coco_metrics`, so the numbers (and
the COCO size ranges, in pixels of the original image) are computed exactly as for necklace's torchvision
detectors. The steps:

1. each image (RGB, 0..1) is letterboxed to ``imgsz x imgsz`` as Ultralytics letterboxes: scaled by
   ``min(imgsz / h, imgsz / w)``, centred, padded with grey 114 (:class:`Letterbox`);
2. the model's decoded boxes go through Ultralytics' own NMS with its validation settings (``conf=0.001``,
   ``iou=0.7``, ``max_det=100`` here to match COCO's ``maxDets``, multi-label);
3. boxes are mapped back to the original image (:meth:`Letterbox.to_original`: padding removed, the scale of each
   axis undone, clipped to the image); class ``c`` becomes label / category ``c + 1`` in ground truth and
   predictions alike.

Example:
    >>> lb = Letterbox.fit(height=60, width=120, size=64)  # a wide image: scaled by 64/120, padded top and bottom
    >>> (lb.new_height, lb.new_width), (lb.top, lb.left)
    ((32, 64), (16, 0))
    >>> [round(v, 3) for v in lb.to_original(lb.from_original(torch.tensor([[10.0, 5.0, 50.0, 45.0]])))[0].tolist()]
    [10.0, 5.0, 50.0, 45.0]
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image
from torch import Tensor, nn

from necklace.detection.evaluate import CocoMetrics, coco_metrics, predictions_to_coco, targets_to_coco

try:
    from ultralytics.data.utils import IMG_FORMATS, img2label_paths
    from ultralytics.engine.model import Model
    from ultralytics.utils import DATASETS_DIR
except ImportError as e:  # pragma: no cover - the package __init__ checks the version first
    raise ImportError(f"necklace's Ultralytics integration cannot import Ultralytics' data helpers: {e}") from e

try:  # Ultralytics keeps NMS in ultralytics.utils.nms since 8.3.1xx, in ultralytics.utils.ops before
    _nms_module = importlib.import_module("ultralytics.utils.nms")
except ImportError:  # pragma: no cover - older supported versions
    _nms_module = importlib.import_module("ultralytics.utils.ops")
#: Ultralytics' ``non_max_suppression`` (x1y1x2y2, score, class per kept box)
non_max_suppression: Any = _nms_module.non_max_suppression

__all__ = ["Letterbox", "YoloSplit", "coco_evaluate", "detections_to_coco", "read_split"]

#: grey of Ultralytics' letterbox padding (114 / 255)
PAD_VALUE = 114 / 255


# ------------------------------------------------------------------------------------------------ letterbox
@dataclass(frozen=True)
class Letterbox:
    """How an ``height x width`` image sits in a ``size x size`` letterbox: resized to ``new_height x new_width``
    (the long side to ``size``, aspect kept, as Ultralytics does), placed at ``(top, left)``, padded with grey.

    Example:
        >>> lb = Letterbox.fit(100, 50, 64)
        >>> lb.new_height, lb.new_width, lb.top, lb.left
        (64, 32, 0, 16)
        >>> tuple(lb.image(torch.rand(3, 100, 50)).shape)
        (3, 64, 64)
    """

    height: int
    width: int
    size: int
    new_height: int
    new_width: int
    top: int
    left: int

    @classmethod
    def fit(cls, height: int, width: int, size: int) -> Letterbox:
        """The letterbox of an ``height x width`` image in ``size x size`` (Ultralytics' ``LetterBox`` geometry:
        ``round`` of the scaled sides, the padding split as ``round(d - 0.1)`` before and the rest after)."""
        if min(height, width, size) < 1:
            raise ValueError(f"Letterbox.fit: sizes must be positive, got {height}x{width} into {size}.")
        r = min(size / height, size / width)
        new_w, new_h = max(1, round(width * r)), max(1, round(height * r))
        dw, dh = (size - new_w) / 2, (size - new_h) / 2
        return cls(height, width, size, new_h, new_w, round(dh - 0.1), round(dw - 0.1))

    @property
    def scale(self) -> tuple[float, float]:
        """``(sx, sy)``: letterbox pixels per original pixel along x and y."""
        return self.new_width / self.width, self.new_height / self.height

    def image(self, image: Tensor) -> Tensor:
        """``image`` (C, H, W), values 0..1, letterboxed to (C, size, size)."""
        if tuple(image.shape[-2:]) != (self.height, self.width):
            raise ValueError(
                f"Letterbox for {self.height}x{self.width} images got an image of {tuple(image.shape[-2:])}."
            )
        resized = nn.functional.interpolate(
            image[None].float(),
            size=(self.new_height, self.new_width),
            mode="bilinear",
            align_corners=False,
            antialias=self.new_height < self.height,
        )[0]
        out = torch.full((image.shape[0], self.size, self.size), PAD_VALUE, dtype=resized.dtype)
        out[:, self.top : self.top + self.new_height, self.left : self.left + self.new_width] = resized
        return out

    def from_original(self, boxes: Tensor) -> Tensor:
        """x1y1x2y2 boxes in original pixels -> letterbox pixels."""
        sx, sy = self.scale
        factor = boxes.new_tensor([sx, sy, sx, sy])
        offset = boxes.new_tensor([self.left, self.top, self.left, self.top])
        return boxes * factor + offset

    def to_original(self, boxes: Tensor) -> Tensor:
        """x1y1x2y2 boxes in letterbox pixels -> original pixels, clipped to the image."""
        sx, sy = self.scale
        offset = boxes.new_tensor([self.left, self.top, self.left, self.top])
        out = (boxes - offset) / boxes.new_tensor([sx, sy, sx, sy])
        out[:, 0::2] = out[:, 0::2].clamp(0, self.width)
        out[:, 1::2] = out[:, 1::2].clamp(0, self.height)
        return out


# ------------------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class YoloSplit:
    """One split of an Ultralytics data file: its images, their label files (where Ultralytics looks for them:
    the last ``images`` folder of the path replaced by ``labels``) and the class names.

    Example:
        >>> import tempfile
        >>> from necklace.integrations.ultralytics import synthetic_yolo_dataset
        >>> split = read_split(synthetic_yolo_dataset(tempfile.mkdtemp(), num_train=1, num_val=2, image_size=64))
        >>> len(split.images), split.labels[0].suffix, split.target(0, 64, 64)["boxes"].shape[1]
        (2, '.txt', 4)
    """

    data: Path
    split: str
    images: tuple[Path, ...]
    labels: tuple[Path, ...]
    names: tuple[str, ...]

    def target(self, index: int, height: int, width: int) -> dict[str, Any]:
        """Image ``index``'s ground truth: x1y1x2y2 boxes in pixels, labels ``class + 1``, ``image_id`` ``index``.

        A missing label file means no objects; a polygon line (Ultralytics' segment format) gives its bounding box.
        ``ValueError`` naming the file and line when a line is not a class id and coordinates."""
        path = self.labels[index]
        boxes: list[list[float]] = []
        labels: list[int] = []
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        for n, line in enumerate(lines, start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                cls, coords = int(float(parts[0])), [float(v) for v in parts[1:]]
            except ValueError:
                cls, coords = -1, []
            if not 0 <= cls < len(self.names) or len(coords) < 4 or (len(coords) > 4 and len(coords) % 2):
                raise ValueError(
                    f"{path}, line {n}: {line.strip()!r} is not a YOLO label (class id 0..{len(self.names) - 1}, "
                    "then cx cy w h normalised to 0..1, or a polygon x1 y1 x2 y2 ...). Fix or remove that line."
                )
            if len(coords) == 4:
                cx, cy, w, h = coords
                x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            else:
                xs, ys = coords[0::2], coords[1::2]
                x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
            box = [min(max(x1, 0.0), 1.0) * width, min(max(y1, 0.0), 1.0) * height]
            box += [min(max(x2, 0.0), 1.0) * width, min(max(y2, 0.0), 1.0) * height]
            if box[2] > box[0] and box[3] > box[1]:
                boxes.append(box)
                labels.append(cls + 1)
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": index,
        }


def _names(raw: Any, data: Path) -> tuple[str, ...]:
    names = raw.get("names")
    if isinstance(names, Mapping):
        keys = sorted(int(k) for k in names)
        if keys != list(range(len(keys))):
            raise ValueError(f"{data}: 'names' ids must be 0..{len(keys) - 1}, got {keys}.")
        return tuple(str(names[k] if k in names else names[str(k)]) for k in keys)
    if isinstance(names, list) and names:
        return tuple(str(n) for n in names)
    nc = raw.get("nc")
    if isinstance(nc, int) and nc > 0:
        return tuple(str(i) for i in range(nc))
    raise ValueError(f"{data}: an Ultralytics data file needs 'names' (a list or {{id: name}}) or 'nc'.")


def read_split(data: str | Path, split: str = "val") -> YoloSplit:
    """The images, label files and class names of ``split`` in the Ultralytics data file ``data``, resolved as
    Ultralytics resolves them (``path`` relative to the working directory, else to Ultralytics' datasets folder;
    a missing ``path``: the file's folder; each entry a folder searched recursively, an image list ``.txt``, or a
    list of those). Nothing is downloaded: a missing folder is a ``FileNotFoundError``.

    Example:
        >>> import tempfile
        >>> from necklace.integrations.ultralytics import synthetic_yolo_dataset
        >>> s = read_split(synthetic_yolo_dataset(tempfile.mkdtemp(), num_train=2, num_val=3, image_size=64))
        >>> len(s.images), s.labels[0].parent.name, s.names
        (3, 'val', ('rectangle', 'ellipse', 'triangle'))
    """
    data = Path(data)
    if not data.is_file():
        raise FileNotFoundError(f"Ultralytics data file {str(data)!r} not found; give the path of a data.yaml.")
    raw = yaml.safe_load(data.read_text(encoding="utf-8"))
    if not isinstance(raw, Mapping):
        raise ValueError(f"{data}: an Ultralytics data file is a YAML mapping (path, train, val, names).")
    entry = raw.get(split) if split != "val" else raw.get("val", raw.get("validation"))
    if not entry:
        raise ValueError(f"{data} has no {split!r} entry; Ultralytics data files name 'train' and 'val' images.")
    root = Path(raw.get("path") or data.resolve().parent)
    if not root.exists() and not root.is_absolute():
        root = (DATASETS_DIR / root).resolve()
    images: list[str] = []
    for item in entry if isinstance(entry, list) else [entry]:
        p = (root / str(item)).resolve()
        if not p.exists() and str(item).startswith("../"):
            p = (root / str(item)[3:]).resolve()
        if p.is_dir():
            images += [str(f) for f in p.rglob("*.*")]
        elif p.is_file():
            lines = p.read_text(encoding="utf-8-sig").strip().splitlines()
            images += [x.replace("./", str(p.parent) + os.sep, 1) if x.startswith("./") else x for x in lines]
        else:
            raise FileNotFoundError(f"{data}: {split} images {str(p)!r} not found (from {split}: {item!r}).")
    files = sorted(f for f in images if f.rpartition(".")[-1].lower() in IMG_FORMATS)
    if not files:
        raise FileNotFoundError(f"{data}: no images found for {split!r} ({entry!r} under {root}).")
    paths: list[str | Path] = list(files)
    labels = img2label_paths(paths)
    return YoloSplit(data, split, tuple(Path(f) for f in files), tuple(Path(f) for f in labels), _names(raw, data))


def _load_image(path: Path) -> Tensor:
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        t = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
        return t.view(rgb.height, rgb.width, 3).permute(2, 0, 1).float() / 255.0


# ------------------------------------------------------------------------------------------------ scoring
def detections_to_coco(
    detections: Sequence[tuple[int, Tensor, Letterbox]],
) -> list[dict[str, Any]]:
    """COCO results from Ultralytics NMS outputs: ``(image_id, (n, 6) x1y1x2y2-score-class tensor in letterbox
    pixels, the image's Letterbox)`` -> boxes in original pixels, category ``class + 1``.

    Example:
        >>> lb = Letterbox.fit(50, 100, 64)  # scale 0.64, 16 px of padding on top
        >>> det = torch.tensor([[6.4, 22.4, 32.0, 48.0, 0.9, 2.0]])
        >>> r = detections_to_coco([(7, det, lb)])[0]
        >>> r["image_id"], r["category_id"], [round(v, 3) for v in r["bbox"]], round(r["score"], 3)
        (7, 3, [10.0, 10.0, 40.0, 40.0], 0.9)
    """
    pairs = []
    for image_id, det, lb in detections:
        det = det.detach().float().cpu()
        boxes = lb.to_original(det[:, :4].clone())
        pairs.append((image_id, {"boxes": boxes, "labels": det[:, 5].long() + 1, "scores": det[:, 4]}))
    return predictions_to_coco(pairs)


def _model_classes(model: nn.Module) -> int | None:
    head = getattr(model, "model", None)
    last = head[-1] if isinstance(head, nn.Sequential) and len(head) else None
    nc = getattr(last, "nc", None)
    return int(nc) if isinstance(nc, int) else None


@torch.no_grad()
def coco_evaluate(
    model: nn.Module | Any,
    data: str | Path,
    imgsz: int = 640,
    split: str = "val",
    batch: int = 16,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 100,
    device: str | torch.device = "cpu",
    backend: str = "faster_coco_eval",
) -> CocoMetrics:
    """COCO box metrics (AP, AP50, AP75, AP by object size, AR) of an Ultralytics detection model on ``split`` of
    the data file ``data``, computed by :func:`necklace.detection.evaluate.coco_metrics` (see the module docs).

    ``model``: a ``YOLO`` / :class:`~necklace.integrations.ultralytics.NecklaceYOLO` (its ``.model``) or a
    ``DetectionModel``; it runs in eval mode in float32 on ``device`` and its mode is restored. ``ValueError``
    when the model's number of classes is not the data's.

    Example:
        >>> import tempfile
        >>> from necklace.integrations.ultralytics import build_yolo, synthetic_yolo_dataset
        >>> data = synthetic_yolo_dataset(tempfile.mkdtemp(), num_train=1, num_val=2, image_size=64)
        >>> m = coco_evaluate(build_yolo("yolov8n.yaml", "fpn", width=16, nc=3), data, imgsz=64)
        >>> m.num_images, 0.0 <= m.ap <= 1.0
        (2, True)
    """
    net: Any = model.model if isinstance(model, Model) else model  # a YOLO (itself an nn.Module): its model
    if not isinstance(net, nn.Module) or isinstance(net, Model):
        raise TypeError(f"coco_evaluate needs an Ultralytics YOLO or DetectionModel, got {type(model).__name__}.")
    s = read_split(data, split)
    nc = _model_classes(net)
    if nc is not None and nc != len(s.names):
        raise ValueError(
            f"coco_evaluate: the model predicts {nc} classes but {s.data} has {len(s.names)} ({list(s.names)}); "
            "evaluate a model trained on this data."
        )
    dev = torch.device(device)
    was_training = net.training
    first = next(net.parameters())
    dtype, home = first.dtype, first.device
    net.float().eval().to(dev)
    targets, sizes, detections = [], [], []
    try:
        for start in range(0, len(s.images), batch):
            chunk = range(start, min(start + batch, len(s.images)))
            images, boxes = [], []
            for i in chunk:
                image = _load_image(s.images[i])
                h, w = int(image.shape[-2]), int(image.shape[-1])
                lb = Letterbox.fit(h, w, imgsz)
                targets.append(s.target(i, h, w))
                sizes.append((h, w))
                images.append(lb.image(image))
                boxes.append(lb)
            out = net(torch.stack(images).to(dev))
            preds = out[0] if isinstance(out, (list, tuple)) else out
            kept = non_max_suppression(preds, conf, iou, multi_label=True, max_det=max_det, nc=len(s.names))
            detections += [(i, det, lb) for i, det, lb in zip(chunk, kept, boxes, strict=True)]
    finally:
        net.to(home, dtype).train(was_training)
    gt = targets_to_coco(targets, sizes, class_names=s.names)
    return coco_metrics(gt, detections_to_coco(detections), backend)
