"""Detection data: a seeded procedural multi-scale dataset, COCO JSON and YOLO txt loaders, annotation checks.

Every dataset here returns ``(image, target)`` in torchvision's detection format: ``image`` a float tensor
``[3, H, W]`` in ``[0, 1]``; ``target`` a dict with ``boxes`` (``float32 [N, 4]``, ``x1, y1, x2, y2`` in pixels),
``labels`` (``int64 [N]``, ``1..K``; 0 is background), ``image_id`` (int), ``area`` (``float32 [N]``) and
``iscrowd`` (``int64 [N]``). :func:`collate_fn` batches them as lists for a ``DataLoader``.

- :class:`SyntheticShapes`: procedural images of textured shapes over cluttered backgrounds, objects spread
  over COCO's small (< 32^2), medium and large (> 96^2) areas, partial occlusion with boxes taken from the
  *visible* pixels; deterministic per index from the seed, optionally cached to disk.
- :class:`CocoDetection` / :class:`YoloDetection`: the two formats users have. Both check every annotation
  when built (:func:`validate_annotations`): boxes outside the image, zero/negative sizes, unknown class ids,
  missing or unreadable image files, malformed lines. ``on_error="raise"`` stops with a summary (what, where, how
  many); ``"drop"`` skips the bad annotations (and images whose file is missing); ``"clip"`` clips boxes to the
  image and drops what cannot be repaired. Whatever is dropped or clipped is in ``dataset.report`` and announced
  with an :class:`AnnotationWarning`, so problems surface before training, never mid-epoch and never silently.
- :func:`to_coco` / :func:`to_yolo` write any of these datasets out (COCO annotation ids start at 1).

``area`` is the box area ``w * h`` (COCO's ``area`` field when a COCO file gives one), and :func:`size_split`
buckets objects by it with COCO's thresholds.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "LARGE_AREA",
    "ON_ERROR",
    "SHAPES",
    "SMALL_AREA",
    "AnnotationProblem",
    "AnnotationReport",
    "AnnotationWarning",
    "CocoDetection",
    "ImageRecord",
    "SizeSplit",
    "SyntheticShapes",
    "YoloDetection",
    "collate_fn",
    "size_split",
    "to_coco",
    "to_yolo",
    "validate_annotations",
]

SMALL_AREA = 32**2  #: COCO: area < 32^2 is small
LARGE_AREA = 96**2  #: COCO: area > 96^2 is large (medium in between)
ON_ERROR = ("raise", "drop", "clip")
#: Shapes of :class:`SyntheticShapes`; class ``k`` (label ``k + 1``) is ``SHAPES[k]``.
SHAPES = ("rectangle", "ellipse", "triangle", "diamond", "ring", "cross")
_TEXTURES = ("solid", "stripes", "checker", "gradient", "noise")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_TOL = 1e-2  # pixels: coordinates this far outside the image are rounding, clamped without a report
Target = dict[str, Any]


# ----------------------------------------------------------------------------------------------------------- common
def _image_to_tensor(arr: np.ndarray) -> Tensor:
    arr = np.array(arr, dtype=np.uint8, copy=True)  # PIL arrays are read-only
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)  # [3, H, W] in [0, 1]


def _tensor_to_uint8(image: Tensor) -> np.ndarray:
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image tensor [3, H, W], got shape {tuple(image.shape)}.")
    arr = (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return arr if arr.shape[2] == 3 else np.repeat(arr, 3, axis=2)


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


# ------------------------------------------------------------------------------------------------- synthetic data
@dataclass(frozen=True)
class _Obj:
    label: int  # 1..K
    x0: float
    y0: float
    w: float
    h: float
    params: tuple[float, ...]  # shape parameters (triangle apex, ring hole, cross bar)


def _shape_mask(shape: str, obj: _Obj, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Boolean mask of ``shape`` at the pixel centres ``(ys, xs)`` (broadcastable grids)."""
    u = (xs + 0.5 - obj.x0) / obj.w  # 0..1 across the box
    v = (ys + 0.5 - obj.y0) / obj.h
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    du, dv = 2 * u - 1, 2 * v - 1  # -1..1
    if shape == "rectangle":
        return inside
    if shape == "ellipse":
        return du**2 + dv**2 <= 1
    if shape == "diamond":
        return np.abs(du) + np.abs(dv) <= 1
    if shape == "ring":
        r2 = du**2 + dv**2
        return (r2 <= 1) & (r2 >= obj.params[0] ** 2)
    if shape == "cross":
        t = obj.params[0]
        return inside & ((np.abs(du) <= t) | (np.abs(dv) <= t))
    # triangle A=(a, 0), B=(0, 1), C=(1, b) in box units: inside when on the same side of all three edges
    a, b = obj.params[0], obj.params[1]
    pts = ((a, 0.0), (0.0, 1.0), (1.0, b))
    signs = []
    for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1], strict=True):
        signs.append((x2 - x1) * (v - y1) - (y2 - y1) * (u - x1))
    s = np.stack(np.broadcast_arrays(*signs))
    return inside & ((s >= 0).all(0) | (s <= 0).all(0))


class SyntheticShapes(Dataset[tuple[Tensor, Target]]):
    """A seeded procedural detection dataset spanning COCO's small, medium and large object sizes.

    Image ``i`` is a cluttered background (colour gradient, low-frequency noise, thin lines, specks, faint blobs)
    with 4..10 textured shapes (``SHAPES[:num_classes]``: rectangle, ellipse, triangle, diamond, ring, cross;
    class = shape, colour and texture are nuisances). Object areas are drawn in roughly equal thirds from the small
    (< 32^2), medium and large (> 96^2) COCO ranges; larger objects lie underneath, so objects overlap partially.
    Each box is the extent of the object's *visible* pixels after occlusion, and a placement that would leave an
    object less than ``min_visible`` visible is rejected, so no box describes a mostly hidden object.

    Deterministic: ``ds[i]`` depends only on ``(seed, i)`` and the constructor arguments. With ``cache_dir`` the
    images (PNG) and targets (JSON) are written on first access and read back afterwards (identical tensors).

    Example:
        >>> ds = SyntheticShapes(4, image_size=(128, 128), num_classes=3, seed=0)
        >>> image, target = ds[0]
        >>> image.shape, image.dtype, target["boxes"].dtype, target["labels"].min().item() >= 1
        (torch.Size([3, 128, 128]), torch.float32, torch.float32, True)
        >>> bool(torch.equal(ds[1][0], SyntheticShapes(4, image_size=(128, 128), seed=0)[1][0]))
        True
    """

    #: default weights of (small, medium, large) when drawing an object's area; they compensate for the
    #: placements of large objects that fail and for visible boxes shrinking under occlusion and truncation.
    SIZE_WEIGHTS = (0.3, 0.33, 0.37)
    VERSION = 1  # bump when the generator changes (part of the cache key)

    def __init__(
        self,
        num_images: int,
        image_size: tuple[int, int] = (256, 256),
        num_classes: int = 3,
        seed: int = 0,
        cache_dir: str | Path | None = None,
        objects: tuple[int, int] = (4, 10),
        min_visible: float = 0.5,
        size_weights: Sequence[float] | None = None,
    ) -> None:
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 0:
            raise ValueError(f"SyntheticShapes: num_images must be a non-negative int, got {num_images!r}.")
        if len(image_size) != 2 or min(image_size) < 32:
            raise ValueError(f"SyntheticShapes: image_size must be (H, W) with both >= 32, got {image_size!r}.")
        if not 1 <= num_classes <= len(SHAPES):
            raise ValueError(
                f"SyntheticShapes: num_classes must be 1..{len(SHAPES)} (one class per shape: {list(SHAPES)}), "
                f"got {num_classes!r}."
            )
        if len(objects) != 2 or not 1 <= objects[0] <= objects[1]:
            raise ValueError(f"SyntheticShapes: objects must be a (min, max) count pair, got {objects!r}.")
        if not 0 < min_visible <= 1:
            raise ValueError(f"SyntheticShapes: min_visible must be in (0, 1], got {min_visible!r}.")
        weights = tuple(float(w) for w in (size_weights or self.SIZE_WEIGHTS))
        if len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"SyntheticShapes: size_weights must be 3 non-negative numbers, got {size_weights!r}.")
        self.num_images = num_images
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.num_classes = num_classes
        self.class_names: tuple[str, ...] = SHAPES[:num_classes]
        self.seed = int(seed)
        self.objects = (int(objects[0]), int(objects[1]))
        self.min_visible = float(min_visible)
        self.size_weights = weights
        self.cache_dir: Path | None = None
        if cache_dir is not None:
            config = json.dumps(
                [self.VERSION, self.image_size, num_classes, self.seed, self.objects, self.min_visible, weights]
            )
            key = hashlib.sha256(config.encode()).hexdigest()[:16]
            self.cache_dir = Path(cache_dir) / f"synthetic_shapes-{key}"
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return self.num_images

    def file_name(self, index: int) -> str:
        """File name used when the dataset is written out (:func:`to_coco`, :func:`to_yolo`, the cache)."""
        return f"{index:06d}.png"

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        index = self._check_index(index)
        if self.cache_dir is not None:
            img_path = self.cache_dir / self.file_name(index)
            tgt_path = img_path.with_suffix(".json")
            if img_path.exists() and tgt_path.exists():
                from PIL import Image

                with Image.open(img_path) as im:
                    arr = np.asarray(im.convert("RGB"))
                data = json.loads(tgt_path.read_text())
                return _image_to_tensor(arr), _make_target(data["boxes"], data["labels"], index)
        arr, boxes, labels = self._generate(index, paint=True)
        if self.cache_dir is not None:
            self._write_cache(index, arr, boxes, labels)
        return _image_to_tensor(arr), _make_target(boxes, labels, index)

    def target(self, index: int) -> Target:
        """The target of image ``index`` without rendering the image (cheap; used by :meth:`size_split`)."""
        index = self._check_index(index)
        _, boxes, labels = self._generate(index, paint=False)
        return _make_target(boxes, labels, index)

    def size_split(self) -> SizeSplit:
        """Counts of small / medium / large objects over the whole dataset (see :func:`size_split`)."""
        return size_split(self.target(i) for i in range(len(self)))

    # ------------------------------------------------------------------------------------------------ internals
    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"SyntheticShapes index {index} out of range for {len(self)} images.")
        return index % len(self)

    def _write_cache(self, index: int, arr: np.ndarray, boxes: list[list[float]], labels: list[int]) -> None:
        from PIL import Image

        assert self.cache_dir is not None
        img_path = self.cache_dir / self.file_name(index)
        tmp = img_path.with_name(img_path.stem + ".tmp.png")
        Image.fromarray(arr).save(tmp)
        tmp.replace(img_path)
        tgt = img_path.with_suffix(".json")
        tmp_t = tgt.with_name(tgt.stem + ".tmp.json")
        tmp_t.write_text(json.dumps({"boxes": boxes, "labels": labels}))
        tmp_t.replace(tgt)

    def _area_ranges(self) -> list[tuple[float, float]]:
        h, w = self.image_size
        biggest = (0.9 * h) * (0.9 * w)
        return [(8.0**2, SMALL_AREA), (SMALL_AREA, LARGE_AREA), (LARGE_AREA * 1.02, min(biggest, 200.0**2))]

    def _layout(self, rng: np.random.Generator) -> list[_Obj]:
        h, w = self.image_size
        ranges = self._area_ranges()
        weights = np.array(self.size_weights)
        weights = np.where([hi > lo for lo, hi in ranges], weights, 0.0)
        weights = weights / weights.sum()
        n = int(rng.integers(self.objects[0], self.objects[1] + 1))
        objs = []
        for _ in range(n):
            lo, hi = ranges[int(rng.choice(3, p=weights))]
            area = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            ratio = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
            bw, bh = min(math.sqrt(area * ratio), 0.95 * w), min(math.sqrt(area / ratio), 0.95 * h)
            label = int(rng.integers(self.num_classes)) + 1
            params: tuple[float, ...] = (float(rng.uniform(0.0, 1.0)), float(rng.uniform(0.6, 1.0)))
            if SHAPES[label - 1] == "ring":
                params = (float(rng.uniform(0.45, 0.65)),)
            elif SHAPES[label - 1] == "cross":
                params = (float(rng.uniform(0.25, 0.45)),)
            objs.append(_Obj(label, 0.0, 0.0, bw, bh, params))
        # larger objects underneath: sort by area, jittered so similar sizes interleave
        jitter = rng.lognormal(0.0, 0.3, size=len(objs))
        order = np.argsort([-o.w * o.h * j for o, j in zip(objs, jitter, strict=True)], kind="stable")
        return [objs[i] for i in order]

    def _generate(self, index: int, paint: bool) -> tuple[np.ndarray, list[list[float]], list[int]]:
        h, w = self.image_size
        layout_rng = np.random.default_rng([self.seed, index, 0])
        ids = np.full((h, w), -1, dtype=np.int16)  # which object owns each pixel (last painted wins)
        totals: list[int] = []
        placed: list[_Obj] = []
        regions: list[tuple[slice, slice, np.ndarray]] = []
        for proto in self._layout(layout_rng):
            for _ in range(20):  # try positions until every object stays >= min_visible visible
                x0 = float(layout_rng.uniform(-0.15 * proto.w, w - 0.85 * proto.w))
                y0 = float(layout_rng.uniform(-0.15 * proto.h, h - 0.85 * proto.h))
                obj = _Obj(proto.label, x0, y0, proto.w, proto.h, proto.params)
                r0, r1 = max(math.floor(y0), 0), min(math.ceil(y0 + obj.h), h)
                c0, c1 = max(math.floor(x0), 0), min(math.ceil(x0 + obj.w), w)
                if r1 - r0 < 2 or c1 - c0 < 2:
                    continue
                ys, xs = np.mgrid[r0:r1, c0:c1]
                mask = _shape_mask(SHAPES[obj.label - 1], obj, ys.astype(np.float64), xs.astype(np.float64))
                if mask.sum() < 16:
                    continue
                under = ids[r0:r1, c0:c1][mask]
                lost = np.bincount(under[under >= 0], minlength=len(placed))
                ok = all(
                    (ids == j).sum() - lost[j] >= self.min_visible * totals[j] for j in np.nonzero(lost)[0].tolist()
                )
                if not ok:
                    continue
                ids[r0:r1, c0:c1][mask] = len(placed)
                totals.append(int(mask.sum()))
                placed.append(obj)
                regions.append((slice(r0, r1), slice(c0, c1), mask))
                break
        boxes, labels, keep = [], [], []
        for j, obj in enumerate(placed):
            rows, cols = np.nonzero(ids == j)
            if rows.size < self.min_visible * totals[j] or rows.size == 0:
                continue  # defensive: placements above never leave an object mostly hidden
            x1, y1, x2, y2 = float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            boxes.append([x1, y1, x2, y2])
            labels.append(obj.label)
            keep.append(j)
        if not paint:
            return np.zeros((0, 0, 3), np.uint8), boxes, labels
        return self._paint(index, placed, regions), boxes, labels

    def _paint(self, index: int, placed: list[_Obj], regions: list[tuple[slice, slice, np.ndarray]]) -> np.ndarray:
        h, w = self.image_size
        rng = np.random.default_rng([self.seed, index, 1])
        img = _background(rng, h, w)
        _clutter(rng, img)
        for rs, cs, mask in regions:
            bg = img[rs, cs].reshape(-1, 3).mean(0)
            colour = rng.uniform(0, 255, 3)
            for _ in range(10):  # keep objects distinguishable from what lies under them
                if np.linalg.norm(colour - bg) >= 90:
                    break
                colour = rng.uniform(0, 255, 3)
            tex = _texture(rng, mask.shape, colour)
            region = img[rs, cs]
            region[mask] = tex[mask]
        img += rng.normal(0.0, 3.0, img.shape)
        return np.clip(img, 0, 255).round().astype(np.uint8)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c1, c2 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    t = (np.cos(angle) * xs / w + np.sin(angle) * ys / h + 1) / 2
    img = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    coarse = torch.from_numpy(rng.normal(0.0, 18.0, (1, 3, h // 16 + 2, w // 16 + 2)))
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return img + smooth[0].permute(1, 2, 0).numpy()  # low-frequency blotches


def _clutter(rng: np.random.Generator, img: np.ndarray) -> None:
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(2, 7))):  # thin lines
        p, q = rng.uniform(0, [w, h]), rng.uniform(0, [w, h])
        n = int(np.abs(q - p).max()) + 1
        pts = np.linspace(p, q, n).round().astype(int)
        thick = int(rng.integers(1, 3))
        colour = rng.uniform(0, 255, 3)
        for dy in range(thick):
            ys, xs = np.clip(pts[:, 1] + dy, 0, h - 1), np.clip(pts[:, 0], 0, w - 1)
            img[ys, xs] = colour
    for _ in range(int(rng.integers(5, 21))):  # specks, much smaller than the smallest object
        y, x, r = int(rng.integers(0, h)), int(rng.integers(0, w)), int(rng.integers(1, 3))
        img[max(y - r, 0) : y + r, max(x - r, 0) : x + r] = rng.uniform(0, 255, 3)
    for _ in range(int(rng.integers(0, 4))):  # faint blobs
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.05, 0.3) * h, rng.uniform(0.05, 0.3) * w
        ys, xs = np.ogrid[0:h, 0:w]
        m = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
        img[m] = 0.75 * img[m] + 0.25 * rng.uniform(0, 255, 3)


def _texture(rng: np.random.Generator, shape: tuple[int, ...], colour: np.ndarray) -> np.ndarray:
    hh, ww = shape
    kind = _TEXTURES[int(rng.integers(len(_TEXTURES)))]
    other = np.clip(colour + rng.uniform(-80, 80, 3), 0, 255)
    ys, xs = np.mgrid[0:hh, 0:ww].astype(np.float64)
    if kind == "solid":
        return np.broadcast_to(colour, (hh, ww, 3)).copy()
    if kind == "stripes":
        angle, period = rng.uniform(0, math.pi), rng.uniform(3, 10)
        on = ((np.cos(angle) * xs + np.sin(angle) * ys) // (period / 2)) % 2 == 0
    elif kind == "checker":
        cell = rng.uniform(2, 8)
        on = ((xs // cell) + (ys // cell)) % 2 == 0
    elif kind == "gradient":
        t = (xs / max(ww - 1, 1))[..., None]
        return colour * (1 - t) + other * t
    else:  # noise
        return np.clip(colour + rng.normal(0, 25, (hh, ww, 3)), 0, 255)
    return np.where(on[..., None], colour, other)


# ----------------------------------------------------------------------------------------------------- validation
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
    ``duplicate_image_id``, ``malformed_annotation``, ``malformed_line``, ``unknown_class``, ``degenerate_box``
    (zero or negative width/height), ``box_outside_image``. ``file``: the annotation file (COCO JSON, YOLO txt)
    or the image file; ``image_id``; ``index``: position in the COCO ``annotations`` list, or the 1-based line
    number in a YOLO file (``None`` for image-level problems); ``value``: the offending value as written;
    ``action``: ``"error"``, ``"dropped"``, ``"clipped"`` or ``"dropped image"``.

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


def _image_size(path: Path) -> tuple[int, int] | str:
    """``(width, height)`` from the image header, or the reason it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except (OSError, UnidentifiedImageError, ValueError) as e:
        return f"{type(e).__name__}: {e}"


def validate_annotations(
    records: Sequence[ImageRecord],
    num_classes: int,
    on_error: str = "raise",
    *,
    problems: Sequence[AnnotationProblem] = (),
    check_images: bool = True,
    source: str = "",
    num_annotations: int | None = None,
) -> AnnotationReport:
    """Check images and annotations; apply ``on_error``; return the report (with the kept ``records``).

    Checks, per image: the file exists and its header can be read (``check_images``), and its size matches
    ``width``/``height`` when those are given; per annotation: the label is in ``1..num_classes``, the box has
    positive width and height, and it lies inside the image. ``problems`` are problems a loader already found
    while parsing (malformed lines, unknown image ids), merged into the report.

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
    action = "error" if on_error == "raise" else "dropped"
    found: list[AnnotationProblem] = [  # parse-time problems: "dropped image" marks image-level ones
        AnnotationProblem(p.kind, p.file, p.image_id, p.index, p.value, "error" if action == "error" else p.action)
        if p.action == "dropped image"
        else AnnotationProblem(p.kind, p.file, p.image_id, p.index, p.value, action)
        for p in problems
    ]
    kept: list[ImageRecord] = []
    total = sum(len(r.boxes) for r in records) + (0 if num_annotations is None else num_annotations)
    for rec in records:
        width, height = rec.width, rec.height
        if check_images or width is None or height is None:
            size = _image_size(rec.path) if rec.path.exists() else None
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


# --------------------------------------------------------------------------------------------------------- loaders
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


class CocoDetection(_FileDetection):
    """A COCO-JSON detection dataset read with PIL; every annotation is checked when it is built.

    Category ids are mapped to contiguous labels ``1..K`` in increasing id order (``cat_ids[label - 1]`` is the
    original id); ``class_names`` follows the same order. Crowd annotations (``iscrowd=1``) are skipped, as
    torchvision's reference training does (their number is ``skipped_crowd``). See :func:`validate_annotations`
    for ``on_error`` and ``check_images``.

    Example:
        >>> import tempfile
        >>> tmp = Path(tempfile.mkdtemp())
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
        try:
            data = json.loads(self.ann_file.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"CocoDetection: annotation file {self.ann_file} does not exist.") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"CocoDetection: {self.ann_file} is not valid JSON: {e}.") from None
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


class YoloDetection(_FileDetection):
    """A YOLO txt dataset: ``images_dir/<name>.<ext>`` with ``labels_dir/<name>.txt`` lines
    ``class cx cy w h`` (class ids from 0, coordinates normalised to 0..1), read with PIL.

    Labels are ``class + 1`` (``class_names[label - 1]``). An image without a label file has no objects (YOLO's
    convention); a label file without an image is reported as ``missing_image``; a line that is not five numbers
    with an integer class is ``malformed_line``. Image ids are the positions in sorted file-name order. See
    :func:`validate_annotations` for ``on_error``.

    Example:
        >>> import tempfile
        >>> tmp = Path(tempfile.mkdtemp())
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
    ) -> None:
        _check_on_error(on_error)
        if isinstance(class_names, str) or not class_names:
            raise ValueError(f"YoloDetection: class_names must be a non-empty list of names, got {class_names!r}.")
        self.images_dir, self.labels_dir = Path(images_dir), Path(labels_dir)
        self.class_names = tuple(class_names)
        for what, d in (("images_dir", self.images_dir), ("labels_dir", self.labels_dir)):
            if not d.is_dir():
                raise FileNotFoundError(f"YoloDetection: {what} {d} is not a directory.")
        images = sorted(p for p in self.images_dir.iterdir() if p.suffix.lower() in _IMAGE_EXTS)
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
            size = _image_size(path)
            rec = ImageRecord(path, image_id, None, None, [], [], [], [])
            rec.sources = []
            label_file = self.labels_dir / f"{path.stem}.txt"
            lines = label_file.read_text().splitlines() if label_file.exists() else []
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
            check_images=True,
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


# ---------------------------------------------------------------------------------------------------------- export
def _class_names(dataset: Any, targets: Sequence[Target]) -> tuple[str, ...]:
    names = getattr(dataset, "class_names", None)
    if names:
        return tuple(names)
    k = max((int(t["labels"].max()) for t in targets if len(t["labels"])), default=0)
    return tuple(f"class_{i}" for i in range(1, k + 1))


def _file_name(dataset: Any, index: int, image_id: int) -> str:
    fn = getattr(dataset, "file_name", None)
    return str(fn(index)) if callable(fn) else f"{image_id:06d}.png"


def _write_image(image: Tensor, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_tensor_to_uint8(image)).save(path)


def to_coco(
    dataset: Dataset[tuple[Tensor, Target]],
    images_dir: str | Path | None = None,
    ann_file: str | Path | None = None,
) -> dict[str, Any]:
    """Export a detection dataset to a COCO dict; optionally write the images (``images_dir``) and the JSON.

    Image ids are the targets' ``image_id``; annotation ids start at 1 (pycocotools treats id 0 as "no match");
    category ids are the labels ``1..K``, named from ``dataset.class_names``; ``bbox`` is ``[x, y, w, h]``.

    Example:
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


def to_yolo(dataset: Dataset[tuple[Tensor, Target]], images_dir: str | Path, labels_dir: str | Path) -> None:
    """Write a detection dataset as YOLO txt: images plus one ``class cx cy w h`` line per box (class = label - 1).

    Example:
        >>> import tempfile
        >>> tmp = Path(tempfile.mkdtemp())
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
