"""A seeded procedural detection dataset: textured shapes over cluttered backgrounds, spanning COCO's small,
medium and large object sizes (:class:`SyntheticShapes`)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from necklace.detection.data.common import LARGE_AREA, SMALL_AREA, SizeSplit, Target, _make_target, size_split
from necklace.detection.data.images import _image_to_tensor

__all__ = ["SHAPES", "SyntheticShapes"]

#: Shapes of :class:`SyntheticShapes`; class ``k`` (label ``k + 1``) is ``SHAPES[k]``.
SHAPES = ("rectangle", "ellipse", "triangle", "diamond", "ring", "cross")
_TEXTURES = ("solid", "stripes", "checker", "gradient", "noise")


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
