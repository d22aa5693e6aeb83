"""Image files in the loaders: decoded in full before they count as valid, a file that breaks later dropped (never
a dead run), 16-bit and palette images read by their real range, class names checked between data sets."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from necklace.detection import AnnotationWarning, CocoDetection, SyntheticShapes, YoloDetection, collate_fn, to_coco
from necklace.detection.data import check_same_classes, probe_image, read_image
from necklace.detection.features import load_image


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def coco(tmp_path: Path) -> tuple[Path, Path]:
    to_coco(SyntheticShapes(4, image_size=(64, 64)), tmp_path / "images", tmp_path / "ann.json")
    return tmp_path / "images", tmp_path / "ann.json"


# ------------------------------------------------------------------------------------------------ full decoding
def test_a_truncated_image_with_an_intact_header_is_caught_when_the_data_set_is_built(coco: tuple[Path, Path]) -> None:
    images, ann = coco
    _truncate(images / "000001.png")
    assert probe_image(images / "000001.png", full=False) == (64, 64)  # the header alone looks fine
    with pytest.raises(ValueError, match=r"(?s)1 unreadable_image.*000001\.png.*truncated"):
        CocoDetection(images, ann)
    with pytest.warns(AnnotationWarning, match="kept 3/4 images"):
        ds = CocoDetection(images, ann, on_error="drop")
    assert 1 not in [ds.target(i)["image_id"] for i in range(len(ds))]
    batches = list(DataLoader(ds, batch_size=2, collate_fn=collate_fn))  # the epoch runs through
    assert sum(len(b[0]) for b in batches) == 3


def test_a_truncated_jpeg_is_caught_too(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(path)
    assert probe_image(path) == (128, 96)
    _truncate(path)
    assert probe_image(path, full=False) == (128, 96) and "truncated" in str(probe_image(path))
    with pytest.raises(ValueError, match=r"cannot decode image .*x\.jpg.*truncated.*on_error='drop'"):
        read_image(path)


def test_an_image_that_breaks_after_building_is_dropped_mid_epoch(coco: tuple[Path, Path]) -> None:
    images, ann = coco
    ds = CocoDetection(images, ann, on_error="drop")
    strict = CocoDetection(images, ann)
    _truncate(images / "000002.png")  # the file changes after the check
    with pytest.warns(AnnotationWarning, match=r"unreadable_image: .*000002\.png, image 2.*dropped image"):
        batches = list(DataLoader(ds, batch_size=2, collate_fn=collate_fn))
    served = [t["image_id"] for _, targets in batches for t in targets]
    assert len(served) == 4 and 2 not in served  # the next readable image stands in: no dead run
    assert ds.dropped_image_ids == {2} and ds.report.counts == {"unreadable_image": 1} and ds.report.kept_images == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dropped once: no second warning in the next epoch
        assert len(list(DataLoader(ds, batch_size=2, collate_fn=collate_fn))) == 2
    with pytest.raises(ValueError, match=r"cannot decode .*000002\.png \(image 2\).*on_error='drop'"):
        strict[2]


# ------------------------------------------------------------------------------------------------ pixel formats
def test_16_bit_and_palette_images_load_by_their_range(tmp_path: Path) -> None:
    ramp = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)  # 0 .. 64491
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode == "I;16"  # what Pillow hands over; convert("RGB") would clip at 255 (almost white)
    deep = read_image(tmp_path / "deep.png")
    assert deep.shape == (3, 48, 64) and torch.equal(deep[0], deep[2])
    assert torch.allclose(deep[0], torch.from_numpy(ramp / 65535.0).float(), atol=1e-6)
    assert 0.45 < deep.mean().item() < 0.55

    pal = Image.new("P", (8, 4))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "pal.png", transparency=0)
    image = read_image(tmp_path / "pal.png")
    assert image[:, 0, 0].tolist() == [1.0, 0.0, 0.0] and image[:, 0, 1].tolist() == [0.0, 0.0, 1.0]
    assert torch.equal(load_image(tmp_path / "deep.png"), deep)  # `necklace features` reads images the same way


def test_the_loaders_read_16_bit_images_by_their_range(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.full((32, 40), 16384, dtype=np.uint16)).save(tmp_path / "images" / "a.png")
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    image, target = YoloDetection(tmp_path / "images", tmp_path / "labels", ["thing"])[0]
    assert torch.allclose(image, torch.full((3, 32, 40), 16384 / 65535))  # a quarter grey, not white
    assert target["boxes"].tolist() == [[10.0, 8.0, 30.0, 24.0]]


def test_unreadable_annotation_files_name_the_file_and_the_fix(coco: tuple[Path, Path], tmp_path: Path) -> None:
    images = coco[0]
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match=r"bad\.json is not UTF-8 text .*not an image or archive"):
        CocoDetection(images, bad)
    with pytest.raises(FileNotFoundError, match=r"annotation file .* is a directory; give the COCO JSON file"):
        CocoDetection(images, images)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "000000.txt").write_bytes(buf.getvalue())  # an image where a label file should be
    with pytest.raises(ValueError, match=r"unreadable_labels: .*000000\.txt.*expected UTF-8 text lines"):
        YoloDetection(images, labels, ["rectangle", "ellipse", "triangle"])


# ------------------------------------------------------------------------------------------------ class names
def test_class_names_must_match_in_name_and_order() -> None:
    check_same_classes(("a", "b"), ["a", "b"], "x", "y")
    with pytest.raises(ValueError, match=r"the data has other classes than the checkpoint: \['a', 'c'\].*label 2"):
        check_same_classes(["a", "b"], ["a", "c"], "the checkpoint", "the data")
    with pytest.raises(ValueError, match=r"3 classes instead of 2"):
        check_same_classes(["a", "b"], ["a", "b", "c"], "the checkpoint", "the data")


def test_coco_category_names_come_from_the_file(coco: tuple[Path, Path]) -> None:
    images, ann = coco
    data = json.loads(ann.read_text())
    data["categories"][1]["name"] = "oval"
    ann.write_text(json.dumps(data))
    assert CocoDetection(images, ann).class_names == ("rectangle", "oval", "triangle")
