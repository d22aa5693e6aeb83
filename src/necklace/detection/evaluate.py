"""COCO box metrics for the detectors of :mod:`necklace.detection`, with faster-coco-eval or pycocotools.

- :func:`coco_metrics` is the pure function: a COCO ground-truth dict and a list of COCO results
  (``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``) in, a :class:`CocoMetrics` out. The two backends
  implement the same algorithm; ``tests/test_evaluate.py`` checks that they agree to 1e-6.
- :func:`evaluate` runs a detector over a dataset (``eval()`` mode, ``no_grad``), turns its outputs into COCO
  results with the dataset's category ids (labels ``1..K`` -> ``dataset.cat_ids[label - 1]`` for a
  :class:`~necklace.detection.CocoDetection`, the label itself otherwise) and calls :func:`coco_metrics`. Under
  ``torch.distributed`` each process predicts a shard of the images and the predictions are gathered on rank 0;
  every rank returns the same metrics.
- :func:`targets_to_coco` / :func:`predictions_to_coco` are the conversions it uses (annotation ids start at 1:
  pycocotools treats an id of 0 as "no match").

Ground truth: the targets the dataset returns (after its transforms), so boxes are in the frame the model saw;
for a :class:`~necklace.detection.CocoDetection` without transforms, the annotation file itself (restricted to
the dataset's images), so crowd regions are ignored as in the official evaluation. A metric that is undefined
(no ground-truth object in that size range) is ``-1.0``, as in COCO's own summary.

Example:
    >>> gt = {"images": [{"id": 1, "width": 64, "height": 64}], "categories": [{"id": 1, "name": "a"}],
    ...       "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 8, 40, 40], "area": 1600,
    ...                        "iscrowd": 0}]}
    >>> m = coco_metrics(gt, [{"image_id": 1, "category_id": 1, "bbox": [8, 8, 40, 40], "score": 0.9}])
    >>> m.ap, m.ap_medium, m.ap_small
    (1.0, 1.0, -1.0)
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from necklace.detection.data import check_same_classes, collate_fn

__all__ = [
    "BACKENDS",
    "CocoMetrics",
    "coco_metrics",
    "evaluate",
    "ground_truth",
    "predict",
    "predictions_to_coco",
    "targets_to_coco",
]

BACKENDS = ("faster_coco_eval", "pycocotools")
Target = dict[str, Any]

#: (field, COCO summary line) in the order of COCOeval.stats
_STATS = (
    ("ap", "AP @[IoU=0.50:0.95 | area=all | maxDets=100]"),
    ("ap50", "AP @[IoU=0.50 | area=all | maxDets=100]"),
    ("ap75", "AP @[IoU=0.75 | area=all | maxDets=100]"),
    ("ap_small", "AP @[IoU=0.50:0.95 | area=small | maxDets=100]"),
    ("ap_medium", "AP @[IoU=0.50:0.95 | area=medium | maxDets=100]"),
    ("ap_large", "AP @[IoU=0.50:0.95 | area=large | maxDets=100]"),
    ("ar1", "AR @[IoU=0.50:0.95 | area=all | maxDets=1]"),
    ("ar10", "AR @[IoU=0.50:0.95 | area=all | maxDets=10]"),
    ("ar100", "AR @[IoU=0.50:0.95 | area=all | maxDets=100]"),
    ("ar_small", "AR @[IoU=0.50:0.95 | area=small | maxDets=100]"),
    ("ar_medium", "AR @[IoU=0.50:0.95 | area=medium | maxDets=100]"),
    ("ar_large", "AR @[IoU=0.50:0.95 | area=large | maxDets=100]"),
)


@dataclass(frozen=True)
class CocoMetrics:
    """COCO box metrics (the 12 numbers of ``COCOeval.summarize()``) plus what they were computed on.

    Values are fractions in ``[0, 1]``; ``-1.0`` means undefined (no ground truth in that size range).

    Example:
        >>> m = CocoMetrics.from_stats([0.5] * 12, num_images=2, num_predictions=7, backend="pycocotools")
        >>> m.ap50, m.ar100, m.num_predictions
        (0.5, 0.5, 7)
        >>> CocoMetrics.from_dict(m.to_dict()) == m
        True
    """

    ap: float
    ap50: float
    ap75: float
    ap_small: float
    ap_medium: float
    ap_large: float
    ar1: float
    ar10: float
    ar100: float
    ar_small: float
    ar_medium: float
    ar_large: float
    num_images: int = 0
    num_predictions: int = 0
    backend: str = ""

    @classmethod
    def from_stats(
        cls, stats: Sequence[float], num_images: int = 0, num_predictions: int = 0, backend: str = ""
    ) -> CocoMetrics:
        """Build from ``COCOeval.stats`` (its first 12 values, in COCO's order)."""
        if len(stats) < len(_STATS):
            raise ValueError(f"CocoMetrics.from_stats needs the 12 COCOeval stats, got {len(stats)} values.")
        values = {name: float(v) for (name, _), v in zip(_STATS, stats, strict=False)}
        return cls(**values, num_images=int(num_images), num_predictions=int(num_predictions), backend=backend)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CocoMetrics:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"CocoMetrics: unknown keys {unknown}; expected {sorted(names)}.")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        return asdict(self)

    @property
    def stats(self) -> tuple[float, ...]:
        """The 12 values in ``COCOeval.stats`` order."""
        return tuple(getattr(self, name) for name, _ in _STATS)

    def table(self) -> str:
        """COCO's summary lines, one metric per line (``n/a`` for undefined)."""
        lines = []
        for name, label in _STATS:
            v = getattr(self, name)
            lines.append(f"{label:<48} {name:>9}  " + ("  n/a" if v < 0 else f"{v:.3f}"))
        lines.append(f"{self.num_images} images, {self.num_predictions} predictions ({self.backend or 'coco'})")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ conversions
def targets_to_coco(
    targets: Sequence[Target],
    image_sizes: Sequence[tuple[int, int]] | None = None,
    class_names: Sequence[str] | None = None,
    cat_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """A COCO ground-truth dict from detection targets (``boxes`` x1y1x2y2, ``labels`` 1..K, ``image_id``).

    ``image_sizes[i]`` is ``(H, W)`` of image ``i`` (0 when unknown; box evaluation does not use it). Category
    ``k`` gets id ``cat_ids[k - 1]`` (default ``k``) and name ``class_names[k - 1]``. Annotation ids start at 1;
    ``area`` is the target's ``area`` when it has one, else the box area; ``iscrowd`` comes from the target.

    Example:
        >>> t = {"boxes": torch.tensor([[0., 0., 10., 20.]]), "labels": torch.tensor([2]), "image_id": 5}
        >>> gt = targets_to_coco([t], [(32, 32)], class_names=["a", "b"], cat_ids=[7, 9])
        >>> gt["annotations"][0]["id"], gt["annotations"][0]["category_id"], gt["annotations"][0]["bbox"]
        (1, 9, [0.0, 0.0, 10.0, 20.0])
    """
    if class_names:
        k = len(class_names)
    elif cat_ids:
        k = len(cat_ids)
    else:
        k = max((int(lbl) for t in targets for lbl in _as_list(t["labels"])), default=0)
    names = list(class_names) if class_names else [f"class_{i}" for i in range(1, k + 1)]
    ids = [int(c) for c in cat_ids] if cat_ids else list(range(1, k + 1))
    if len(ids) != len(names):
        raise ValueError(f"targets_to_coco: {len(names)} class names but {len(ids)} category ids.")
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    seen: set[int] = set()
    for i, t in enumerate(targets):
        image_id = int(t["image_id"])
        if image_id in seen:
            raise ValueError(f"targets_to_coco: image_id {image_id} occurs twice; COCO needs unique image ids.")
        seen.add(image_id)
        h, w = image_sizes[i] if image_sizes is not None else (0, 0)
        images.append({"id": image_id, "width": int(w), "height": int(h)})
        boxes, labels = _as_list(t["boxes"]), _as_list(t["labels"])
        areas = _as_list(t["area"]) if t.get("area") is not None else None
        crowd = _as_list(t["iscrowd"]) if t.get("iscrowd") is not None else None
        for j, (box, label) in enumerate(zip(boxes, labels, strict=True)):
            label = int(label)
            if not 1 <= label <= len(ids):
                raise ValueError(f"targets_to_coco: image {image_id} has label {label}; labels must lie in 1..{k}.")
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": ids[label - 1],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": float(areas[j]) if areas is not None else (x2 - x1) * (y2 - y1),
                    "iscrowd": int(crowd[j]) if crowd is not None else 0,
                }
            )
    categories = [{"id": c, "name": str(n)} for c, n in zip(ids, names, strict=True)]
    return {"images": images, "annotations": annotations, "categories": categories}


def predictions_to_coco(
    predictions: Iterable[tuple[int, Mapping[str, Any]]], cat_ids: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """COCO results from ``(image_id, {"boxes" x1y1x2y2, "labels" 1..K, "scores"})`` pairs.

    Label ``k`` becomes category ``cat_ids[k - 1]`` (default ``k``); boxes become ``[x, y, w, h]``.

    Example:
        >>> det = {"boxes": torch.tensor([[1., 2., 11., 22.]]), "labels": torch.tensor([1]),
        ...        "scores": torch.tensor([0.5])}
        >>> predictions_to_coco([(3, det)], cat_ids=[18])
        [{'image_id': 3, 'category_id': 18, 'bbox': [1.0, 2.0, 10.0, 20.0], 'score': 0.5}]
    """
    results = []
    for image_id, det in predictions:
        boxes, labels, scores = _as_list(det["boxes"]), _as_list(det["labels"]), _as_list(det["scores"])
        for box, label, score in zip(boxes, labels, scores, strict=True):
            label = int(label)
            if cat_ids is not None and not 1 <= label <= len(cat_ids):
                raise ValueError(
                    f"predictions_to_coco: label {label} in image {image_id} has no category; the dataset has "
                    f"{len(cat_ids)} classes (labels 1..{len(cat_ids)})."
                )
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(cat_ids[label - 1]) if cat_ids is not None else label,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    return results


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, Tensor):
        return value.detach().cpu().tolist()
    return list(value)


def _is_plain_coco(dataset: Any) -> bool:
    return (
        hasattr(dataset, "ann_file")
        and hasattr(dataset, "records")
        and hasattr(dataset, "cat_ids")
        and getattr(dataset, "transforms", None) is None
    )


def _coco_file_ground_truth(dataset: Any) -> dict[str, Any]:
    """The dataset's COCO file restricted to its (kept) images; annotation ids renumbered from 1 if needed."""
    data = json.loads(dataset.ann_file.read_text())
    keep = {rec.image_id for rec in dataset.records} - set(getattr(dataset, "dropped_image_ids", ()))
    images = [img for img in data["images"] if isinstance(img, dict) and _int(img.get("id")) in keep]
    cats = set(dataset.cat_ids)
    anns = []
    for ann in data["annotations"]:
        if (
            not isinstance(ann, dict)
            or _int(ann.get("image_id")) not in keep
            or _int(ann.get("category_id")) not in cats
        ):
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            continue
        if bbox[2] <= 0 or bbox[3] <= 0:
            continue
        ann = dict(ann)
        ann.setdefault("area", float(bbox[2]) * float(bbox[3]))
        ann.setdefault("iscrowd", 0)
        anns.append(ann)
    ids = [a.get("id") for a in anns]
    if any(not isinstance(i, int) or i < 1 for i in ids) or len(set(ids)) != len(ids):
        for n, a in enumerate(anns, start=1):
            a["id"] = n
    categories = [c for c in data["categories"] if _int(c.get("id")) in cats]
    return {"images": images, "annotations": anns, "categories": categories}


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def ground_truth(dataset: Dataset[tuple[Tensor, Target]]) -> dict[str, Any]:
    """The COCO ground-truth dict :func:`evaluate` uses for ``dataset`` (reads every sample unless the dataset
    is a :class:`~necklace.detection.CocoDetection` without transforms, whose annotation file is used).

    Example:
        >>> from necklace.detection import SyntheticShapes
        >>> gt = ground_truth(SyntheticShapes(2, image_size=(64, 64)))
        >>> gt["annotations"][0]["id"], [c["id"] for c in gt["categories"]]
        (1, [1, 2, 3])
    """
    if _is_plain_coco(dataset):
        return _coco_file_ground_truth(dataset)
    targets, sizes = [], []
    for i in range(len(dataset)):  # type: ignore[arg-type]
        image, target = dataset[i]
        targets.append(target)
        sizes.append((int(image.shape[-2]), int(image.shape[-1])))
    return targets_to_coco(targets, sizes, getattr(dataset, "class_names", None), getattr(dataset, "cat_ids", None))


# ------------------------------------------------------------------------------------------------ metrics
def coco_metrics(
    gt: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]], backend: str = "faster_coco_eval"
) -> CocoMetrics:
    """COCO box metrics of ``predictions`` (COCO results) against the ground-truth dict ``gt``.

    ``backend`` is ``"faster_coco_eval"`` (default; ``pip install faster-coco-eval``) or ``"pycocotools"``. The
    inputs are not modified. No predictions gives 0 (or -1 where there is no ground truth).

    Example:
        >>> gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}],
        ...       "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50],
        ...                        "area": 2500, "iscrowd": 0}]}
        >>> coco_metrics(gt, []).ap, coco_metrics(gt, [], backend="pycocotools").ap
        (0.0, 0.0)
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown COCO backend {backend!r}; choose one of {list(BACKENDS)}.")
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise ValueError(f"coco_metrics: the ground truth needs a {key!r} list (a COCO dict).")
    bad = [a.get("id") for a in gt["annotations"] if not isinstance(a.get("id"), int) or a["id"] < 1]
    if bad:
        raise ValueError(
            f"coco_metrics: ground-truth annotation ids must be integers >= 1 (pycocotools treats 0 as 'no match'); "
            f"got {bad[:5]}."
        )
    gt_dict = copy.deepcopy(dict(gt))
    dets = [dict(copy.deepcopy(p)) for p in predictions]
    image_ids = {img["id"] for img in gt_dict["images"]}
    unknown = sorted({d["image_id"] for d in dets} - image_ids)
    if unknown:
        raise ValueError(f"coco_metrics: predictions for image ids {unknown[:5]} that the ground truth lacks.")
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        if backend == "faster_coco_eval":
            stats = _faster_coco_eval(gt_dict, dets)
        else:
            stats = _pycocotools(gt_dict, dets)
    return CocoMetrics.from_stats(stats, len(image_ids), len(dets), backend)


def _quiet(*args: Any, **kwargs: Any) -> None:
    return None


def _faster_coco_eval(gt: dict[str, Any], dets: list[dict[str, Any]]) -> list[float]:
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError as e:
        raise ImportError(
            "the faster_coco_eval backend needs faster-coco-eval: pip install faster-coco-eval "
            "(or use backend='pycocotools')"
        ) from e
    coco_gt = COCO(gt, print_function=_quiet)
    coco_dt = coco_gt.loadRes(dets) if dets else _empty_results(COCO(print_function=_quiet), gt)
    ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=_quiet)
    ev.run()
    return [float(v) for v in ev.stats[: len(_STATS)]]


def _pycocotools(gt: dict[str, Any], dets: list[dict[str, Any]]) -> list[float]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise ImportError("the pycocotools backend needs pycocotools: pip install pycocotools") from e
    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    coco_dt = coco_gt.loadRes(dets) if dets else _empty_results(COCO(), gt)
    ev = COCOeval(coco_gt, coco_dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return [float(v) for v in ev.stats[: len(_STATS)]]


def _empty_results(coco: Any, gt: dict[str, Any]) -> Any:
    """A result COCO object with no detections (``loadRes([])`` fails in pycocotools)."""
    coco.dataset = {"images": list(gt["images"]), "categories": copy.deepcopy(gt["categories"]), "annotations": []}
    coco.createIndex()
    return coco


# ------------------------------------------------------------------------------------------------ running a model
def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset[tuple[Tensor, Target]],
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    indices: Sequence[int] | None = None,
    num_workers: int = 0,
    amp: bool = False,
    progress: bool = False,
) -> list[tuple[int, Target, dict[str, Tensor], tuple[int, int]]]:
    """Run ``model`` (``eval()`` mode) over ``dataset`` (or its ``indices``).

    Returns ``(index, target, detections, (H, W))`` per image, detections on the CPU. The model's train/eval
    mode is restored afterwards.

    Example:
        >>> from necklace.detection import SyntheticShapes, TinyBackbone, build_detector
        >>> model = build_detector("fcos", TinyBackbone(width=4), "fpn", num_classes=3, neck_options={"width": 16},
        ...                        min_size=64, max_size=64, head_convs=1)
        >>> out = predict(model, SyntheticShapes(2, image_size=(64, 64)), batch_size=2)
        >>> [(i, sorted(det)) for i, _, det, _ in out]
        [(0, ['boxes', 'labels', 'scores']), (1, ['boxes', 'labels', 'scores'])]
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"predict: batch_size must be a positive int, got {batch_size!r}.")
    net: nn.Module = getattr(model, "module", model)  # DistributedDataParallel -> the model
    device = torch.device(device)
    order = list(range(len(dataset))) if indices is None else [int(i) for i in indices]  # type: ignore[arg-type]
    loader = DataLoader(
        Subset(dataset, order), batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_fn
    )
    bar = _progress_bar(len(loader), "eval", progress)
    was_training = net.training
    net.eval()
    out: list[tuple[int, Target, dict[str, Tensor], tuple[int, int]]] = []
    pos = 0
    try:
        for images, targets in loader:
            sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
            with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
                dets = net([im.to(device, non_blocking=True) for im in images])
            for target, det, size in zip(targets, dets, sizes, strict=True):
                det = {k: v.detach().float().cpu() if k != "labels" else v.detach().cpu() for k, v in det.items()}
                out.append((order[pos], target, det, size))
                pos += 1
            if bar is not None:
                bar.update(1)
    finally:
        net.train(was_training)
        if bar is not None:
            bar.close()
    return out


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _lite_target(target: Target) -> Target:
    """A target with plain-Python values (cheap to gather across processes)."""
    keep = ("boxes", "labels", "image_id", "area", "iscrowd")
    return {k: (_as_list(v) if isinstance(v, Tensor) else v) for k, v in target.items() if k in keep}


def evaluate(
    model: nn.Module,
    dataset: Dataset[tuple[Tensor, Target]],
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    backend: str = "faster_coco_eval",
    num_workers: int = 0,
    amp: bool = False,
    progress: bool = False,
) -> CocoMetrics:
    """COCO box metrics of ``model`` on ``dataset`` (see the module docstring for ground truth and category ids).

    Under ``torch.distributed`` every process evaluates images ``rank::world_size`` and rank 0 computes the
    metrics from all of them; all ranks return the same :class:`CocoMetrics`.

    Example:
        >>> from necklace.detection import SyntheticShapes, TinyBackbone, build_detector
        >>> model = build_detector("retinanet", TinyBackbone(width=4), "fpn", num_classes=3,
        ...                        neck_options={"width": 16}, min_size=64, max_size=64)
        >>> m = evaluate(model, SyntheticShapes(2, image_size=(64, 64)), batch_size=2)
        >>> m.num_images, 0.0 <= m.ap <= 1.0
        (2, True)
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown COCO backend {backend!r}; choose one of {list(BACKENDS)}.")
    rank, world = _dist_info()
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("evaluate: the dataset is empty; give data with at least one image.")
    trained, names = getattr(model, "class_names", None), getattr(dataset, "class_names", None)
    if trained and names:  # load_model() sets model.class_names: labels mean nothing on other classes
        check_same_classes(trained, names, "the model (its training data)", "the evaluation data")
    shard = list(range(rank, n, world))
    local = predict(model, dataset, batch_size, device, shard, num_workers, amp, progress and rank == 0)
    records = [(i, _lite_target(t), {k: _as_list(v) for k, v in d.items()}, s) for i, t, d, s in local]
    if world > 1:
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, records)
        records = [r for part in gathered for r in part]
    metrics: CocoMetrics | None = None
    if rank == 0:
        records.sort(key=lambda r: r[0])
        records = _first_per_image(records)
        cat_ids = getattr(dataset, "cat_ids", None)
        if _is_plain_coco(dataset):
            gt = _coco_file_ground_truth(dataset)
        else:
            gt = targets_to_coco(
                [r[1] for r in records], [r[3] for r in records], getattr(dataset, "class_names", None), cat_ids
            )
        results = predictions_to_coco(
            [(int(r[1]["image_id"]), r[2]) for r in records], cat_ids if cat_ids is not None else _num_ids(dataset)
        )
        metrics = coco_metrics(gt, results, backend)
    if world > 1:
        box: list[Any] = [metrics]
        torch.distributed.broadcast_object_list(box, src=0)
        metrics = box[0]
    assert metrics is not None
    return metrics


def _first_per_image(records: list[Any]) -> list[Any]:
    """One record per image id: an image dropped mid-run as unreadable is served by the next readable one, whose
    predictions must count once (see :mod:`necklace.detection.data.files`)."""
    seen: set[int] = set()
    out = []
    for r in records:
        image_id = int(r[1]["image_id"])
        if image_id not in seen:
            seen.add(image_id)
            out.append(r)
    return out


def _num_ids(dataset: Any) -> list[int] | None:
    names = getattr(dataset, "class_names", None)
    return list(range(1, len(names) + 1)) if names else None
