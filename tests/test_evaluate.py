"""COCO evaluation: faster-coco-eval agrees with pycocotools, perfect predictions score 1, ids and categories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from necklace.detection import AnnotationWarning, CocoDetection, SyntheticShapes, to_coco
from necklace.detection.evaluate import (
    CocoMetrics,
    coco_metrics,
    evaluate,
    ground_truth,
    predictions_to_coco,
    targets_to_coco,
)

pytest.importorskip("faster_coco_eval")
pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def gt() -> dict:
    return ground_truth(SyntheticShapes(12, image_size=(128, 128), num_classes=3, seed=3))


def _perturbed(gt: dict, seed: int) -> list[dict]:
    """Jittered copies of most ground-truth boxes, some with a wrong class, plus false positives."""
    rng = np.random.default_rng(seed)
    preds = []
    for ann in gt["annotations"]:
        if rng.random() < 0.15:
            continue  # missed object
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0.0, 0.12, 4) * [w, h, w, h]
        cat = ann["category_id"] if rng.random() > 0.1 else int(rng.integers(1, 4))
        box = [x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0), max(h + jitter[3], 1.0)]
        preds.append({"image_id": ann["image_id"], "category_id": cat, "bbox": box, "score": float(rng.random())})
    for img in gt["images"]:
        for _ in range(int(rng.integers(0, 6))):  # false positives of every size
            x, y = rng.uniform(0, 100, 2)
            w, h = rng.uniform(3, 60, 2)
            preds.append(
                {
                    "image_id": img["id"],
                    "category_id": int(rng.integers(1, 4)),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "score": float(rng.random() * 0.8),
                }
            )
    return preds


@pytest.mark.parametrize("seed", [0, 1])
def test_faster_coco_eval_agrees_with_pycocotools(gt: dict, seed: int) -> None:
    preds = _perturbed(gt, seed)
    fast = coco_metrics(gt, preds, backend="faster_coco_eval")
    ref = coco_metrics(gt, preds, backend="pycocotools")
    assert fast.num_predictions == ref.num_predictions == len(preds) > 50
    diffs = np.abs(np.array(fast.stats) - np.array(ref.stats))
    assert diffs.max() <= 1e-6, dict(zip(("fast", "ref"), (fast.stats, ref.stats), strict=True))
    assert 0.05 < ref.ap < 0.95  # a non-trivial case: partly right, partly wrong
    assert all(v >= 0 for v in ref.stats)  # every size range has objects in this ground truth


def test_inputs_are_not_modified(gt: dict) -> None:
    preds = _perturbed(gt, 2)
    before_gt, before_preds = json.dumps(gt), json.dumps(preds)
    coco_metrics(gt, preds, "faster_coco_eval")
    coco_metrics(gt, preds, "pycocotools")
    assert json.dumps(gt) == before_gt and json.dumps(preds) == before_preds


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_perfect_predictions_score_one(gt: dict, backend: str) -> None:
    preds = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
    ]
    m = coco_metrics(gt, preds, backend)
    expected = {**{name: 1.0 for name in m.to_dict() if name.startswith(("ap", "ar"))}, "ar1": m.ar1}
    assert {k: getattr(m, k) for k in expected} == pytest.approx(expected)
    assert 0.2 < m.ar1 < 1.0  # several objects of a class per image: one detection cannot recall them all


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_no_predictions(gt: dict, backend: str) -> None:
    m = coco_metrics(gt, [], backend)
    assert m.stats == (0.0,) * 12 and m.num_predictions == 0 and m.num_images == 12


def test_annotation_ids_start_at_one(gt: dict) -> None:
    assert [a["id"] for a in gt["annotations"]] == list(range(1, len(gt["annotations"]) + 1))
    t = {"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "labels": torch.tensor([1]), "image_id": 0}
    assert targets_to_coco([t])["annotations"][0]["id"] == 1
    assert to_coco(SyntheticShapes(1, image_size=(64, 64)))["annotations"][0]["id"] == 1
    bad = json.loads(json.dumps(gt))
    bad["annotations"][0]["id"] = 0
    with pytest.raises(ValueError, match="ids must be integers >= 1"):
        coco_metrics(bad, [])


def test_errors(gt: dict) -> None:
    with pytest.raises(ValueError, match="unknown COCO backend 'detectron'"):
        coco_metrics(gt, [], backend="detectron")
    with pytest.raises(ValueError, match=r"image ids \[999\]"):
        coco_metrics(gt, [{"image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}])
    with pytest.raises(ValueError, match="needs a 'images' list"):
        coco_metrics({"annotations": []}, [])
    with pytest.raises(ValueError, match=r"labels 1\.\.2"):
        predictions_to_coco([(0, {"boxes": [[0, 0, 1, 1]], "labels": [3], "scores": [0.5]})], cat_ids=[5, 9])


class _Replay(torch.nn.Module):
    """A 'detector' that returns given detections in order (what evaluate() sees from a model)."""

    def __init__(self, outputs: list[dict]) -> None:
        super().__init__()
        self.outputs = list(outputs)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        return [self.outputs.pop(0) for _ in images]


def _perfect_outputs(dataset) -> list[dict]:
    outs = []
    for i in range(len(dataset)):
        t = dataset[i][1]
        outs.append({"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))})
    return outs


def test_evaluate_maps_labels_to_the_files_category_ids(tmp_path: Path) -> None:
    """COCO category ids 3, 7, 11 become labels 1..3; predictions go back to 3, 7, 11."""
    synth = SyntheticShapes(4, image_size=(96, 96), num_classes=3, seed=5)
    coco = to_coco(synth, tmp_path / "images")
    remap = {1: 3, 2: 7, 3: 11}
    for c in coco["categories"]:
        c["id"] = remap[c["id"]]
    for a in coco["annotations"]:
        a["category_id"] = remap[a["category_id"]]
        a["id"] += 100  # ids from the file are kept when valid
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    ds = CocoDetection(tmp_path / "images", tmp_path / "ann.json")
    assert ds.cat_ids == (3, 7, 11)
    gt = ground_truth(ds)
    assert sorted({a["category_id"] for a in gt["annotations"]}) == [3, 7, 11]
    assert gt["annotations"][0]["id"] == 101
    for backend in ("faster_coco_eval", "pycocotools"):
        m = evaluate(_Replay(_perfect_outputs(ds)), ds, batch_size=3, backend=backend)
        assert m.ap == pytest.approx(1.0) and m.num_images == 4 and m.backend == backend
    # the same detections reported with the raw labels (1..3) as category ids would be wrong
    preds = predictions_to_coco([(int(ds[i][1]["image_id"]), o) for i, o in enumerate(_perfect_outputs(ds))])
    gt_ids = {a["category_id"] for a in gt["annotations"]}
    assert {p["category_id"] for p in preds} - gt_ids  # labels are not category ids
    assert coco_metrics(gt, preds).ap < 0.5


def test_evaluate_synthetic_perfect_and_model() -> None:
    ds = SyntheticShapes(3, image_size=(64, 64), num_classes=2, seed=1)
    m = evaluate(_Replay(_perfect_outputs(ds)), ds, batch_size=2)
    assert m.ap == pytest.approx(1.0) and m.num_predictions == sum(len(ds[i][1]["labels"]) for i in range(3))
    gt = ground_truth(ds)
    assert [c["name"] for c in gt["categories"]] == ["rectangle", "ellipse"]


def test_metrics_dataclass() -> None:
    m = CocoMetrics.from_stats([0.25] * 5 + [-1.0] + [0.5] * 6, num_images=3, num_predictions=9, backend="x")
    assert CocoMetrics.from_dict(m.to_dict()) == m
    table = m.table()
    assert "AP @[IoU=0.50:0.95 | area=large | maxDets=100]" in table and "n/a" in table and "9 predictions" in table
    with pytest.raises(ValueError, match="12 COCOeval stats"):
        CocoMetrics.from_stats([0.0] * 3)
    with pytest.raises(ValueError, match="unknown keys"):
        CocoMetrics.from_dict({**m.to_dict(), "map": 1.0})


class _ByImage(torch.nn.Module):
    """A 'detector' that answers each image with the detections stored for it (keyed by the pixel sum)."""

    def __init__(self, dataset) -> None:
        super().__init__()
        outputs = _perfect_outputs(dataset)
        self.answers = {round(float(im.sum()), 2): out for (im, _), out in zip(dataset, outputs, strict=True)}
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        return [self.answers[round(float(im.sum()), 2)] for im in images]


def test_an_image_dropped_during_evaluation_counts_neither_as_missed_nor_twice(tmp_path: Path) -> None:
    to_coco(SyntheticShapes(4, image_size=(64, 64), seed=3), tmp_path / "images", tmp_path / "ann.json")
    ds = CocoDetection(tmp_path / "images", tmp_path / "ann.json", on_error="drop")
    model = _ByImage([ds[i] for i in range(len(ds))])
    path = tmp_path / "images" / "000002.png"
    path.write_bytes(path.read_bytes()[:200])  # breaks after the data set was checked
    with pytest.warns(AnnotationWarning, match="000002.png"):
        m = evaluate(model, ds, batch_size=4)
    assert m.num_images == 3 and m.ap == pytest.approx(1.0)  # image 3 stood in for 2 once, and was counted once
