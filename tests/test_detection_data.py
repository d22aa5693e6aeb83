"""Detection data: synthetic dataset determinism and size split, COCO/YOLO round trips, malformed annotations."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from necklace.detection import (
    LARGE_AREA,
    SMALL_AREA,
    AnnotationWarning,
    CocoDetection,
    ImageRecord,
    SizeSplit,
    SyntheticShapes,
    YoloDetection,
    collate_fn,
    size_split,
    to_coco,
    to_yolo,
    validate_annotations,
)

SMALL = (96, 128)  # odd aspect on purpose


def _same(a: tuple, b: tuple) -> bool:
    (ia, ta), (ib, tb) = a, b
    return torch.equal(ia, ib) and all(
        torch.equal(ta[k], tb[k]) if isinstance(ta[k], torch.Tensor) else ta[k] == tb[k] for k in ta
    )


# ----------------------------------------------------------------------------------------------------- synthetic
def test_synthetic_format() -> None:
    ds = SyntheticShapes(3, image_size=SMALL, num_classes=4, seed=1)
    assert len(ds) == 3 and ds.class_names == ("rectangle", "ellipse", "triangle", "diamond")
    image, t = ds[0]
    assert image.shape == (3, *SMALL) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert set(t) == {"boxes", "labels", "image_id", "area", "iscrowd"}
    n = len(t["boxes"])
    assert n >= 1 and t["boxes"].shape == (n, 4) and t["boxes"].dtype == torch.float32
    assert t["labels"].dtype == torch.int64 and t["labels"].min() >= 1 and t["labels"].max() <= 4
    assert t["image_id"] == 0 and t["iscrowd"].tolist() == [0] * n
    b = t["boxes"]
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert b[:, 0].min() >= 0 and b[:, 1].min() >= 0 and b[:, 2].max() <= SMALL[1] and b[:, 3].max() <= SMALL[0]
    assert torch.allclose(t["area"], (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))


def test_synthetic_is_deterministic_per_seed_and_index() -> None:
    a = SyntheticShapes(4, image_size=SMALL, seed=7)
    b = SyntheticShapes(4, image_size=SMALL, seed=7)
    for i in (3, 0, 2):  # any access order
        assert _same(a[i], b[i])
        assert _same(a[i], a[i])
    c = SyntheticShapes(4, image_size=SMALL, seed=8)
    assert not torch.equal(a[0][0], c[0][0])
    assert not torch.equal(a[0][0], a[1][0])
    assert torch.equal(a.target(2)["boxes"], a[2][1]["boxes"])  # cheap targets agree with rendered ones


def test_synthetic_cache_round_trip(tmp_path: Path) -> None:
    fresh = SyntheticShapes(3, image_size=SMALL, seed=3)
    cached = SyntheticShapes(3, image_size=SMALL, seed=3, cache_dir=tmp_path)
    first = [cached[i] for i in range(3)]  # generates and writes
    assert len(list(cached.cache_dir.glob("*.png"))) == 3  # type: ignore[union-attr]
    again = SyntheticShapes(3, image_size=SMALL, seed=3, cache_dir=tmp_path)
    for i in range(3):
        assert _same(again[i], fresh[i]) and _same(first[i], fresh[i])
    other = SyntheticShapes(3, image_size=SMALL, seed=4, cache_dir=tmp_path)
    assert other.cache_dir != cached.cache_dir  # the key covers the seed and settings


def test_size_split_is_roughly_thirds() -> None:
    split = SyntheticShapes(60, image_size=(256, 256), seed=0).size_split()
    assert split.total > 250
    for name, frac in split.fractions.items():
        assert 0.2 <= frac <= 0.5, f"{name}: {split}"


def test_size_split_counts_coco_thresholds() -> None:
    edge = {"area": torch.tensor([SMALL_AREA - 1.0, SMALL_AREA, LARGE_AREA, LARGE_AREA + 1.0])}
    assert size_split([edge]) == SizeSplit(small=1, medium=2, large=1)
    assert "4 objects: small 1 (25%)" in str(size_split([edge]))


def test_objects_overlap_and_boxes_are_visible_extents() -> None:
    ds = SyntheticShapes(30, image_size=(256, 256), seed=0)
    overlapping = 0
    for i in range(len(ds)):
        b = ds.target(i)["boxes"]
        lt = torch.max(b[:, None, :2], b[None, :, :2])
        rb = torch.min(b[:, None, 2:], b[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        overlapping += int((inter.triu(1) > 0).sum())
        assert (b[:, 2:] - b[:, :2]).min() >= 2
    assert overlapping > 10  # partial overlap is common


def test_synthetic_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"num_classes must be 1..6"):
        SyntheticShapes(2, num_classes=7)
    with pytest.raises(ValueError, match="image_size"):
        SyntheticShapes(2, image_size=(16, 16))
    with pytest.raises(IndexError, match="out of range for 2 images"):
        SyntheticShapes(2, image_size=SMALL)[5]


def test_dataloader_with_collate_fn() -> None:
    ds = SyntheticShapes(4, image_size=SMALL)
    images, targets = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_fn)))
    assert len(images) == len(targets) == 3 and [t["image_id"] for t in targets] == [0, 1, 2]


# --------------------------------------------------------------------------------------------------- round trips
@pytest.fixture(scope="module")
def synthetic() -> SyntheticShapes:
    return SyntheticShapes(4, image_size=SMALL, num_classes=3, seed=5)


def test_to_coco_ids_and_fields(synthetic: SyntheticShapes) -> None:
    coco = to_coco(synthetic)
    ids = [a["id"] for a in coco["annotations"]]
    assert ids == list(range(1, len(ids) + 1))
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    assert coco["images"][0] == {"id": 0, "file_name": "000000.png", "width": SMALL[1], "height": SMALL[0]}
    first = synthetic[0][1]
    x1, y1, x2, y2 = first["boxes"][0].tolist()
    assert coco["annotations"][0]["bbox"] == [x1, y1, x2 - x1, y2 - y1]


def test_coco_round_trip(tmp_path: Path, synthetic: SyntheticShapes) -> None:
    to_coco(synthetic, tmp_path / "images", tmp_path / "ann.json")
    ds = CocoDetection(tmp_path / "images", tmp_path / "ann.json")
    assert ds.report.ok and len(ds) == len(synthetic)
    assert ds.class_names == synthetic.class_names and ds.label_to_cat_id == {1: 1, 2: 2, 3: 3}
    for i in range(len(ds)):
        assert _same(ds[i], synthetic[i])


def test_coco_round_trip_through_pycocotools(tmp_path: Path, synthetic: SyntheticShapes) -> None:
    pycocotools = pytest.importorskip("pycocotools.coco")
    to_coco(synthetic, ann_file=tmp_path / "ann.json")
    api = pycocotools.COCO(str(tmp_path / "ann.json"))
    assert len(api.getAnnIds()) == sum(len(synthetic[i][1]["boxes"]) for i in range(len(synthetic)))


def test_yolo_round_trip(tmp_path: Path, synthetic: SyntheticShapes) -> None:
    to_yolo(synthetic, tmp_path / "images", tmp_path / "labels")
    ds = YoloDetection(tmp_path / "images", tmp_path / "labels", class_names=synthetic.class_names)
    assert ds.report.ok and len(ds) == len(synthetic)
    for i in range(len(ds)):
        (ia, ta), (ib, tb) = ds[i], synthetic[i]
        assert torch.equal(ia, ib) and torch.equal(ta["labels"], tb["labels"]) and ta["image_id"] == tb["image_id"]
        assert torch.allclose(ta["boxes"], tb["boxes"], atol=1e-3)


def test_noncontiguous_coco_category_ids(tmp_path: Path, synthetic: SyntheticShapes) -> None:
    coco = to_coco(synthetic, tmp_path / "images")
    remap = {1: 5, 2: 17, 3: 90}
    for c in coco["categories"]:
        c["id"] = remap[c["id"]]
    for a in coco["annotations"]:
        a["category_id"] = remap[a["category_id"]]
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    ds = CocoDetection(tmp_path / "images", tmp_path / "ann.json")
    assert ds.cat_ids == (5, 17, 90) and ds.label_to_cat_id == {1: 5, 2: 17, 3: 90}
    assert torch.equal(ds[0][1]["labels"], synthetic[0][1]["labels"])


# ----------------------------------------------------------------------------------------------- malformed COCO
def _coco_dir(tmp_path: Path, n: int = 3) -> tuple[Path, Path, dict]:
    """Three tiny 64x48 images with one good box each; returns (images_dir, ann_file, coco dict)."""
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    coco: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    for i in range(n):
        Image.new("RGB", (64, 48), (i * 40, 0, 0)).save(images_dir / f"{i}.png")
        coco["images"].append({"id": i + 1, "file_name": f"{i}.png", "width": 64, "height": 48})
        coco["annotations"].append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [4, 4, 20, 20]})
    return images_dir, tmp_path / "ann.json", coco


def _add(coco: dict, image_id: int, bbox: object, category_id: int = 1) -> None:
    coco["annotations"].append(
        {"id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": category_id, "bbox": bbox}
    )


def _load_coco(images_dir: Path, ann: Path, coco: dict, on_error: str) -> CocoDetection:
    ann.write_text(json.dumps(coco))
    return CocoDetection(images_dir, ann, on_error=on_error)


COCO_CASES = {
    # kind: (mutation, expected count, value shown in the message)
    "box_outside_image": (
        lambda c: [_add(c, 1, [50, 30, 30, 30]), _add(c, 2, [-10, 0, 20, 10])],
        2,
        "[50, 30, 30, 30]",
    ),
    "degenerate_box": (
        lambda c: [_add(c, 1, [5, 5, 0, 10]), _add(c, 2, [5, 5, 10, -3]), _add(c, 3, [1, 1, 0, 0])],
        3,
        "[5, 5, 0, 10]",
    ),
    "unknown_class": (lambda c: _add(c, 2, [1, 1, 10, 10], category_id=7), 1, "category_id 7"),
    "malformed_annotation": (lambda c: [_add(c, 1, [1, 2, 3]), _add(c, 1, "oops")], 2, "[1, 2, 3]"),
    "unknown_image_id": (lambda c: _add(c, 99, [1, 1, 10, 10]), 1, "image 99"),
}


@pytest.mark.parametrize("kind", list(COCO_CASES))
def test_coco_malformed_raise_reports_kind_where_and_count(tmp_path: Path, kind: str) -> None:
    images_dir, ann, coco = _coco_dir(tmp_path)
    mutate, count, shown = COCO_CASES[kind]
    mutate(coco)
    with pytest.raises(ValueError) as err:
        _load_coco(images_dir, ann, coco, "raise")
    msg = str(err.value)
    assert f"{count} annotation problem(s) in {ann} ({count} {kind})" in msg
    assert shown in msg and "ann.json" in msg and "on_error='drop'" in msg


@pytest.mark.parametrize("kind", list(COCO_CASES))
def test_coco_malformed_drop_keeps_the_good_ones_and_warns(tmp_path: Path, kind: str) -> None:
    images_dir, ann, coco = _coco_dir(tmp_path)
    mutate, count, _ = COCO_CASES[kind]
    mutate(coco)
    with pytest.warns(AnnotationWarning, match=rf"{count} {kind}"):
        ds = _load_coco(images_dir, ann, coco, "drop")
    assert ds.report.counts == {kind: count}
    assert all(p.action == "dropped" for p in ds.report.problems)
    assert [len(ds.target(i)["boxes"]) for i in range(len(ds))] == [1, 1, 1]  # only the original good boxes
    assert ds.report.kept_annotations == 3 and ds.report.num_annotations == 3 + count
    for i in range(len(ds)):  # a whole epoch runs
        ds[i]


def test_coco_clip_policy(tmp_path: Path) -> None:
    images_dir, ann, coco = _coco_dir(tmp_path)
    _add(coco, 1, [50, 30, 30, 30])  # partly outside: clipped to [50, 30, 64, 48]
    _add(coco, 2, [70, 60, 10, 10])  # entirely outside: nothing left to keep
    _add(coco, 3, [5, 5, 0, 10])  # degenerate: dropped under every policy
    with pytest.warns(AnnotationWarning, match="on_error='clip'"):
        ds = _load_coco(images_dir, ann, coco, "clip")
    actions = [(p.kind, p.action) for p in ds.report.problems]
    assert actions == [
        ("box_outside_image", "clipped"),
        ("box_outside_image", "dropped"),
        ("degenerate_box", "dropped"),
    ]
    assert ds.target(0)["boxes"].tolist() == [[4, 4, 24, 24], [50, 30, 64, 48]]
    assert ds.target(0)["area"].tolist() == [400.0, 14 * 18]
    assert [len(ds.target(i)["boxes"]) for i in range(3)] == [2, 1, 1]


def test_coco_missing_image_file(tmp_path: Path) -> None:
    images_dir, ann, coco = _coco_dir(tmp_path)
    (images_dir / "1.png").unlink()
    coco["images"].append({"id": 10, "file_name": "gone.png", "width": 64, "height": 48})
    with pytest.raises(ValueError, match=r"2 annotation problem\(s\).*\(2 missing_image\)") as err:
        _load_coco(images_dir, ann, coco, "raise")
    assert "1.png" in str(err.value) and "gone.png" in str(err.value) and "file not found" in str(err.value)
    with pytest.warns(AnnotationWarning, match="kept 2/4 images"):
        ds = _load_coco(images_dir, ann, coco, "drop")
    assert [p.action for p in ds.report.problems] == ["dropped image", "dropped image"]
    assert [ds.target(i)["image_id"] for i in range(len(ds))] == [1, 3]
    for i in range(len(ds)):
        ds[i]


def test_coco_unreadable_and_wrong_size_images(tmp_path: Path) -> None:
    images_dir, ann, coco = _coco_dir(tmp_path)
    (images_dir / "0.png").write_bytes(b"not an image")
    Image.new("RGB", (32, 32)).save(images_dir / "2.png")
    with pytest.raises(ValueError, match=r"\(1 unreadable_image, 1 image_size_mismatch\)") as err:
        _load_coco(images_dir, ann, coco, "raise")
    assert "annotations say 64x48, the file is 32x32" in str(err.value)


def test_coco_report_lists_many_problems_briefly(tmp_path: Path) -> None:
    images_dir, ann, coco = _coco_dir(tmp_path)
    for k in range(12):
        _add(coco, 1, [1, 1, 0, k])
    with pytest.raises(ValueError, match=r"\(12 degenerate_box\)") as err:
        _load_coco(images_dir, ann, coco, "raise")
    assert "... and 7 more" in str(err.value)
    assert str(err.value).count("degenerate_box: ") == 5  # first five examples, with file and index
    assert re.search(r"degenerate_box: .*ann\.json, image 1, annotation 3: \[1, 1, 0, 0\] \(error\)", str(err.value))


def test_coco_structural_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CocoDetection(tmp_path, tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match=r"missing or not a list: \['annotations', 'categories'\]"):
        CocoDetection(tmp_path, tmp_path / "partial.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CocoDetection(tmp_path, tmp_path / "nope.json")
    with pytest.raises(ValueError, match="on_error must be one of"):
        CocoDetection(tmp_path, tmp_path / "bad.json", on_error="ignore")


# ----------------------------------------------------------------------------------------------- malformed YOLO
def _yolo_dir(tmp_path: Path) -> tuple[Path, Path]:
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for i in range(3):
        Image.new("RGB", (100, 50)).save(images / f"im{i}.png")
        (labels / f"im{i}.txt").write_text("0 0.5 0.5 0.2 0.4\n")
    return images, labels


def _append(labels: Path, name: str, *lines: str) -> None:
    with open(labels / name, "a") as f:
        f.write("".join(line + "\n" for line in lines))


YOLO_CASES = {
    "box_outside_image": (("0 0.95 0.5 0.2 0.2", "1 0.5 -0.1 0.1 0.1"), 2, "'0 0.95 0.5 0.2 0.2'"),
    "degenerate_box": (("0 0.5 0.5 0 0.2", "1 0.5 0.5 0.2 -0.1"), 2, "'0 0.5 0.5 0 0.2'"),
    "unknown_class": (("2 0.5 0.5 0.1 0.1", "-1 0.5 0.5 0.1 0.1", "7 0.5 0.5 0.1 0.1"), 3, "'7 0.5 0.5 0.1 0.1'"),
    "malformed_line": (("0 0.5 0.5 0.1", "a b c d e", "0.5 0.5 0.5 0.1 0.1", "0 nan 0.5 0.1 0.1"), 4, "'a b c d e'"),
}


@pytest.mark.parametrize("kind", list(YOLO_CASES))
def test_yolo_malformed(tmp_path: Path, kind: str) -> None:
    images, labels = _yolo_dir(tmp_path)
    lines, count, shown = YOLO_CASES[kind]
    _append(labels, "im1.txt", *lines)
    with pytest.raises(ValueError) as err:
        YoloDetection(images, labels, class_names=["a", "b"])
    msg = str(err.value)
    assert f"{count} annotation problem(s) in {labels} ({count} {kind})" in msg
    assert shown in msg and "im1.txt, image 1, line 2" in msg
    with pytest.warns(AnnotationWarning, match=rf"{count} {kind}"):
        ds = YoloDetection(images, labels, class_names=["a", "b"], on_error="drop")
    assert ds.report.counts == {kind: count}
    assert [len(ds.target(i)["boxes"]) for i in range(3)] == [1, 1, 1]
    for i in range(len(ds)):
        ds[i]


def test_yolo_clip_and_pixel_boxes(tmp_path: Path) -> None:
    images, labels = _yolo_dir(tmp_path)
    _append(labels, "im0.txt", "1 0.95 0.5 0.2 0.2")  # x from 85 to 105 on a 100-px-wide image
    with pytest.warns(AnnotationWarning, match="1 box_outside_image"):
        ds = YoloDetection(images, labels, class_names=["a", "b"], on_error="clip")
    t = ds.target(0)
    assert torch.allclose(t["boxes"], torch.tensor([[40.0, 15.0, 60.0, 35.0], [85.0, 20.0, 100.0, 30.0]]))
    assert t["labels"].tolist() == [1, 2]


def test_yolo_missing_image_and_unlabelled_image(tmp_path: Path) -> None:
    images, labels = _yolo_dir(tmp_path)
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (labels / "im2.txt").unlink()  # an image without labels is a background image, not a problem
    with pytest.raises(ValueError, match=r"\(1 missing_image\)") as err:
        YoloDetection(images, labels, class_names=["a"])
    assert "orphan.txt" in str(err.value) and "no image named orphan.*" in str(err.value)
    with pytest.warns(AnnotationWarning, match="1 missing_image"):
        ds = YoloDetection(images, labels, class_names=["a"], on_error="drop")
    assert len(ds) == 3 and len(ds.target(2)["boxes"]) == 0
    assert ds[2][1]["boxes"].shape == (0, 4)


def test_yolo_unreadable_image(tmp_path: Path) -> None:
    images, labels = _yolo_dir(tmp_path)
    (images / "im1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=r"(?s)\(1 unreadable_image\).*im1\.png"):
        YoloDetection(images, labels, class_names=["a"])
    with pytest.warns(AnnotationWarning, match="kept 2/3 images"):
        ds = YoloDetection(images, labels, class_names=["a"], on_error="drop")
    assert len(ds) == 2


def test_yolo_structural_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"images_dir .* is not a directory"):
        YoloDetection(tmp_path / "nope", tmp_path, class_names=["a"])
    with pytest.raises(ValueError, match="class_names must be a non-empty list"):
        YoloDetection(tmp_path, tmp_path, class_names=[])


# ---------------------------------------------------------------------------------------- validate_annotations
def test_validate_annotations_on_records(tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    Image.new("RGB", (40, 30)).save(img)
    rec = ImageRecord(img, 7, None, None, boxes=[[0, 0, 10, 10], [35, 0, 45, 10], [1, 1, 1, 5]], labels=[1, 2, 1])
    report = validate_annotations([rec], num_classes=2, on_error="clip")
    assert report.counts == {"box_outside_image": 1, "degenerate_box": 1}
    assert report.records[0].width == 40 and report.records[0].boxes[1] == [35.0, 0.0, 40.0, 10.0]
    assert rec.boxes[1] == [35, 0, 45, 10]  # the input is not modified
    clean = validate_annotations([rec], num_classes=2, on_error="drop")
    assert clean.kept_annotations == 1 and "kept 1/1 images and 1/3 annotations" in clean.summary()
    with pytest.raises(ValueError, match="on_error must be one of"):
        validate_annotations([rec], 2, on_error="skip")
    assert validate_annotations([rec], num_classes=1, on_error="drop").counts["unknown_class"] == 1
    ok = validate_annotations([ImageRecord(img, 0, 40, 30, [[0, 0, 5, 5]], [1])], 1)
    assert ok.ok and "no annotation problems" in ok.summary()


def test_loader_problems_copy_with_shutil(tmp_path: Path, synthetic: SyntheticShapes) -> None:
    """A dataset written once and then damaged: dropping keeps training possible, and the report says what."""
    to_coco(synthetic, tmp_path / "images", tmp_path / "ann.json")
    shutil.copy(tmp_path / "images" / "000001.png", tmp_path / "spare.png")
    (tmp_path / "images" / "000001.png").unlink()
    with pytest.warns(AnnotationWarning, match="1 missing_image"):
        ds = CocoDetection(tmp_path / "images", tmp_path / "ann.json", on_error="drop")
    images, targets = next(iter(DataLoader(ds, batch_size=len(ds), collate_fn=collate_fn)))
    assert len(images) == 3 and [t["image_id"] for t in targets] == [0, 2, 3]


def test_coco_crowd_annotations_are_counted_not_loaded(tmp_path: Path) -> None:
    images_dir, ann, coco = _coco_dir(tmp_path)
    coco["annotations"].append({"id": 9, "image_id": 1, "category_id": 1, "bbox": [0, 0, 30, 30], "iscrowd": 1})
    ds = _load_coco(images_dir, ann, coco, "raise")
    assert ds.skipped_crowd == 1 and len(ds.target(0)["boxes"]) == 1 and ds.report.ok
