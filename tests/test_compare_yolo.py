"""`necklace compare --detector yolov8n`: necks compared inside an Ultralytics YOLO detector, trained by Ultralytics.

The configuration and the command line (flags, defaults, errors before any training); necklace's COCO evaluation of
a YOLO model on letterboxed images (perfect predictions score AP 100 overall and per size; a conversion that forgets
the letterbox does not); a tiny end-to-end comparison (results.json, report.md, profile) whose second call reuses
every finished run, and an interrupted run that resumes. The network is blocked for the whole module.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

ultralytics = pytest.importorskip("ultralytics")

from PIL import Image  # noqa: E402
from tests.helpers import block_network  # noqa: E402

from necklace.cli import main  # noqa: E402
from necklace.cli.compare import add_compare_parser, compare_config_from_args  # noqa: E402
from necklace.detection.compare import CompareConfig, NeckChoice, YoloTrainConfig, compare  # noqa: E402
from necklace.detection.compare import yolo as compare_yolo  # noqa: E402
from necklace.detection.evaluate import coco_metrics, targets_to_coco  # noqa: E402
from necklace.detection.train import TrainConfig, TrainingInterrupted  # noqa: E402
from necklace.integrations.ultralytics import compat  # noqa: E402
from necklace.integrations.ultralytics.evaluate import (  # noqa: E402
    Letterbox,
    coco_evaluate,
    detections_to_coco,
    read_split,
)

#: the tiny comparison every training test shares: YOLOv8n, 8 train / 4 val images of 64 px, 1 epoch of 2 steps
TINY = YoloTrainConfig(
    data_options={"num_images": 8, "val_images": 4}, image_size=64, batch_size=4, epochs=1, device="cpu"
)
NECKS = (NeckChoice("yolo_pafpn"), NeckChoice("pafpn", {"width": 16}))


@pytest.fixture(scope="module", autouse=True)
def no_network() -> Iterator[list[str]]:
    """Refuse every non-local connection (Ultralytics' online check and font download) for the whole module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YOLO_OFFLINE", "1")
        attempts = block_network(mp)
        yield attempts


def _parse(*argv: str) -> CompareConfig:
    import argparse

    parser = argparse.ArgumentParser()
    add_compare_parser(parser.add_subparsers(dest="command"))
    return compare_config_from_args(parser.parse_args(["compare", *argv]))


# ------------------------------------------------------------------------------------------------ configuration
def test_cli_defaults_for_yolov8n_and_yolo11s() -> None:
    cfg = _parse("--detector", "yolov8n")
    assert isinstance(cfg.base, YoloTrainConfig) and cfg.yolo and cfg.base.detector == "yolov8n"
    assert [(n.name, n.options) for n in cfg.necks] == [
        ("yolo_pafpn", {}),
        ("pafpn", {"width": 64}),
        ("bifpn", {"width": 64, "repeats": 2}),
    ]
    assert cfg.output == "runs/compare-yolov8n" and cfg.seeds == (0, 1) and cfg.base.levels == (3, 5)
    assert (
        cfg.base.data == "synthetic"
        and cfg.run_dir(cfg.necks[2], 1).as_posix() == "runs/compare-yolov8n/runs/bifpn/seed1"
    )
    eleven = _parse("--detector", "yolo11s", "--quick")
    assert [n.name for n in eleven.necks] == ["yolo11_pafpn", "pafpn", "bifpn"]
    assert eleven.necks[1].options == {"width": 128} and eleven.output == "runs/compare-yolo11s-quick"
    assert eleven.base.epochs == 1 and eleven.base.image_size == 96


def test_cli_flags_map_onto_ultralytics_arguments() -> None:
    cfg = _parse(
        "--detector", "yolov8s", "--necks", "fpn,bifpn", "-o", "bifpn.repeats=1", "--epochs", "3",
        "--image-size", "96", "--batch-size", "8", "--lr", "0.02", "--levels", "2,5", "--seeds", "4,5",
        "--detector-option", "optimizer=SGD", "--detector-option", "warmup_epochs=0", "--data-option",
        "num_images=16", "--device", "cpu", "--workers", "2",
    )  # fmt: skip
    base = cfg.base
    assert isinstance(base, YoloTrainConfig) and base.levels == (2, 5) and cfg.seeds == (4, 5)
    assert [(n.name, n.options) for n in cfg.necks] == [
        ("fpn", {"width": 128}),
        ("bifpn", {"width": 128, "repeats": 1}),
    ]
    args = cfg.run_config(cfg.necks[1], 5).ultralytics_args()
    want = {"epochs": 3, "imgsz": 96, "batch": 8, "seed": 5, "lr0": 0.02, "workers": 2, "device": "cpu"}
    assert {k: args[k] for k in want} == want
    assert args["optimizer"] == "SGD" and args["warmup_epochs"] == 0 and args["deterministic"] is True
    assert base.synthetic["num_images"] == 16 and base.synthetic["val_images"] == 48
    data_file = _parse("--detector", "yolov8n", "--data", "yolo:shapes/data.yaml").base
    assert data_file.data == "yolo:shapes/data.yaml" and data_file.data_options == {}  # synthetic sizes dropped
    assert CompareConfig.from_dict(cfg.to_dict()) == cfg  # results.json round trip, with the YOLO base


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--detector", "yolov9n"], "unknown detector 'yolov9n' (did you mean 'yolov8n'?); choose one of fcos"),
        (["--detector", "yolov8n", "--steps", "10"], "--steps does not apply to YOLO detectors: Ultralytics trains in"),
        (["--detector", "yolov8n", "--backbone", "resnet18"], "--backbone does not apply to YOLO detectors"),
        (["--detector", "yolov8n", "--detector-option", "imgsz=320"], "['imgsz'] are set by compare itself (imgsz: --"),
        (["--detector", "yolov8n", "--levels", "3"], "--levels '3': expected LO,HI such as 3,5"),
        (["--detector", "yolov8n", "--data", "coco:a,b"], "YOLO detectors train on 'synthetic' or an Ultralytics data"),
        (["--levels", "2,5"], "--levels applies to YOLO detectors"),
        (["--detector", "yolov8n", "--data-option", "num_classes=9"], "must be 1..6 (shapes), got 9"),
    ],
)
def test_cli_errors_are_one_line(argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["compare", *argv, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_bad_necks_and_arguments_are_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["compare", "--detector", "yolov8n", "--necks", "pafpn,yolo_pafpn", "--levels", "3,6", "--output"]
    assert main([*argv, str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "compare: neck 'yolo_pafpn' in yolov8n: yolo_pafpn built on the backbone maps P3-P5" in err
    assert "asks for levels 3..6" in err and "Fix: ask for levels=(3, 5)" in err
    assert not (tmp_path / "a" / "runs").exists() and not (tmp_path / "a" / "data").exists()
    assert (
        main(["compare", "--detector", "yolov8n", "--detector-option", "mozaic=0", "--output", str(tmp_path / "b")])
        == 2
    )
    assert "['mozaic'] are not Ultralytics training arguments" in capsys.readouterr().err
    assert not (tmp_path / "b" / "runs").exists()


def test_missing_ultralytics_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "ultralytics_version", lambda: None)  # as if Ultralytics were not installed
    with pytest.raises(
        ImportError, match=r"needs ultralytics>=8\.3\.150,<8\.5\.0: pip install 'necklace\[ultralytics\]'"
    ):
        compare(CompareConfig(necks=NECKS, base=TINY, output=str(tmp_path)), progress=False)
    assert not any(tmp_path.iterdir())


def test_configs_round_trip_and_data_files_are_for_yolo_only() -> None:
    cfg = YoloTrainConfig(detector="yolo11n", levels=(2, 5), train_args={"mosaic": 0.0}, data="yolo:d/data.yaml")
    assert YoloTrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="is a torchvision detector; use TrainConfig"):
        YoloTrainConfig(detector="fcos")
    with pytest.raises(ValueError, match="Ultralytics data file is read by the YOLO detectors"):
        TrainConfig(data="yolo:d/data.yaml")


# ------------------------------------------------------------------------------------------------ COCO evaluation
#: (image height, width, [(class, x1, y1, x2, y2) in pixels]): non-square images, objects of all three COCO sizes
IMAGES = [
    (150, 200, [(0, 10, 20, 30, 40), (1, 60, 40, 110, 90), (2, 70, 30, 190, 140)]),  # small, medium, large
    (180, 90, [(1, 5, 10, 25, 26), (0, 20, 60, 80, 170)]),  # small, large (60 x 110)
    (100, 100, []),  # no objects, no label file
]


def _write_dataset(root: Path) -> Path:
    names = ["a", "b", "c"]
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i, (h, w, objs) in enumerate(IMAGES):
            Image.new("RGB", (w, h), (30 * i, 90, 200)).save(root / "images" / split / f"im{i}.png")
            if objs:
                lines = [
                    f"{c} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}"
                    for c, x1, y1, x2, y2 in objs
                ]
                (root / "labels" / split / f"im{i}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: {names}\n")
    return data


def _perfect(size: int, drop_padding: bool = False) -> list[tuple[int, torch.Tensor, Letterbox]]:
    """NMS-style outputs (letterbox pixels, score, class) that are exactly the ground truth of :data:`IMAGES`."""
    out = []
    for i, (h, w, objs) in enumerate(IMAGES):
        lb = Letterbox.fit(h, w, size)
        boxes = torch.tensor([o[1:] for o in objs], dtype=torch.float32).reshape(-1, 4)
        inside = lb.from_original(boxes)
        if drop_padding:  # a conversion that forgets the letterbox offset
            inside -= torch.tensor([lb.left, lb.top, lb.left, lb.top], dtype=torch.float32)
        rows = [[*b, 0.9, float(o[0])] for b, o in zip(inside.tolist(), objs, strict=True)]
        out.append((i, torch.tensor(rows, dtype=torch.float32).reshape(-1, 6), lb))
    return out


def test_perfect_letterboxed_predictions_score_ap_100_per_size(tmp_path: Path) -> None:
    split = read_split(_write_dataset(tmp_path))
    assert [p.name for p in split.images] == ["im0.png", "im1.png", "im2.png"] and split.names == ("a", "b", "c")
    gt = targets_to_coco([split.target(i, h, w) for i, (h, w, _) in enumerate(IMAGES)], [(h, w) for h, w, _ in IMAGES])
    assert [a["bbox"] for a in gt["annotations"]][1] == pytest.approx([60, 40, 50, 50])  # pixels of the original
    for size in (64, 160):  # letterboxed down and up
        m = coco_metrics(gt, detections_to_coco(_perfect(size)))
        assert (m.ap, m.ap50, m.ap_small, m.ap_medium, m.ap_large) == pytest.approx((1.0,) * 5, abs=1e-9)
        wrong = coco_metrics(gt, detections_to_coco(_perfect(size, drop_padding=True)))
        assert wrong.ap < 0.6  # the test can fail: forgetting the letterbox padding loses most of the AP
    shuffled = [(i, d[:, [0, 1, 2, 3, 4, 5]].clone(), lb) for i, d, lb in _perfect(64)]
    shuffled[0][1][:, 5] = (shuffled[0][1][:, 5] + 1) % 3  # wrong classes on image 0
    assert coco_metrics(gt, detections_to_coco(shuffled)).ap < 0.7


class _Oracle(nn.Module):
    """Stands in for a YOLO model: for each batch it outputs Ultralytics' decoded eval tensor (B, 4 + nc, anchors)
    whose anchors are exactly the ground truth boxes (xywh in letterbox pixels) of the next images."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size, self.seen, self.p = size, 0, nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        out = torch.zeros(x.shape[0], 4 + 3, 8)
        for b in range(x.shape[0]):
            h, w, objs = IMAGES[self.seen + b]
            lb = Letterbox.fit(h, w, self.size)
            for k, (c, *box) in enumerate(objs):
                x1, y1, x2, y2 = lb.from_original(torch.tensor([box], dtype=torch.float32))[0].tolist()
                out[b, :4, k] = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
                out[b, 4 + c, k] = 0.95
        self.seen += x.shape[0]
        return out, None


def test_coco_evaluate_end_to_end_on_letterboxed_images(tmp_path: Path) -> None:
    data = _write_dataset(tmp_path)
    m = coco_evaluate(_Oracle(96), data, imgsz=96, batch=2)  # letterbox, Ultralytics' NMS, back to the originals
    assert (m.ap, m.ap_small, m.ap_medium, m.ap_large, m.num_images) == (1.0, 1.0, 1.0, 1.0, 3)
    assert m.num_predictions == 5


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("yolo_compare")
    cfg = CompareConfig(necks=NECKS, base=TINY, seeds=(0, 1), output=str(out), latency_repeats=2, latency_warmup=1)
    return compare(cfg, progress=False, command="necklace compare --detector yolov8n --tiny")


@pytest.mark.train
def test_results_json_has_coco_ap_by_size_and_the_profile(swept: Any) -> None:
    data = json.loads(swept.files["results"].read_text())
    assert CompareConfig.from_dict(data["config"]) == swept.config and data["config"]["base"]["detector"] == "yolov8n"
    assert [n["label"] for n in data["necks"]] == ["yolo_pafpn", "pafpn"] and data["rule"] == "2std"
    for neck in data["necks"]:
        assert [r["seed"] for r in neck["runs"]] == [0, 1]
        for run in neck["runs"]:
            out = Path(run["output"])
            assert run["status"] == "trained" and run["steps"] == 2 and (out / "weights" / "last.pt").is_file()
            assert set(run["metrics"]) >= {"ap", "ap50", "ap_small", "ap_medium", "ap_large"}
            assert run["metrics"]["num_images"] == 4 and run["metrics"]["backend"] == "faster_coco_eval"
            assert "metrics/mAP50-95(B)" in run["trainer_metrics"] and math.isfinite(run["loss_first"])
            assert json.loads((out / "metrics.json").read_text()) == run["metrics"]
        assert set(neck["stats"]["ap_small"]) == {"mean", "std", "min", "max", "n", "values"}
        prof = neck["profile"]
        assert 0 < prof["neck_params"] < prof["detector_params"] and 0 < prof["neck_gflops"] < prof["detector_gflops"]
        assert prof["neck_cpu_ms"]["median_ms"] > 0 and prof["detector_cpu_ms"]["repeats"] == 2
        assert prof["image_size"] == 64
    yolo, pafpn = (n["profile"] for n in data["necks"])
    assert yolo["neck_params"] > 10 * pafpn["neck_params"]  # YOLOv8n's own neck vs a 16-wide PAFPN
    report = swept.files["report"].read_text()
    assert "yolov8n (Ultralytics' backbone, Detect head, trainer, loss and schedule; P3-P5) on `synthetic`" in report
    assert "| Ultralytics mAP50-95 / mAP50 |" in report and "1 epochs of batch 4" in report
    assert "its latency includes Ultralytics' NMS" in report and swept.table() in report
    assert sorted(p.name for p in swept.files.values()) == [
        "ap_by_size.png",
        "ap_vs_latency.png",
        "report.md",
        "results.json",
    ]


@pytest.mark.train
def test_a_second_call_reuses_every_finished_run(swept: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    out = Path(swept.config.output)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed*/*") if p.is_file()}
    stamps.update({p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed*/weights/*.pt")})

    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(compare_yolo.YoloSession, "_train", no_training)
    again = compare(swept.config, progress=False)
    assert [r.status for n in again.necks for r in n.runs] == ["reused"] * 4
    assert [r.metrics for n in again.necks for r in n.runs] == [r.metrics for n in swept.necks for r in n.runs]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # no run file was rewritten
    assert "4 reused from an earlier call" in again.files["report"].read_text()


@pytest.mark.train
def test_an_interrupted_run_resumes_from_its_last_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ultralytics.engine.trainer import BaseTrainer

    cfg = CompareConfig(
        necks=NECKS[1:], base=TINY.replace(epochs=2), seeds=(0,), output=str(tmp_path), latency_repeats=1
    )
    save = BaseTrainer.save_model

    def save_then_interrupt(self: Any) -> Any:  # Ctrl-C right after the first epoch's checkpoint
        save(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(BaseTrainer, "save_model", save_then_interrupt)
    with pytest.raises(TrainingInterrupted, match=r"after step 2/4; checkpoint .*last\.pt"):
        compare(cfg, progress=False)
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "runs/pafpn/seed0/metrics.json").exists()
    monkeypatch.setattr(BaseTrainer, "save_model", save)
    result = compare(cfg, progress=False)
    (run,) = result.necks[0].runs
    assert run.status == "resumed" and run.steps == 4
    rows = (tmp_path / "runs/pafpn/seed0/results.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + both epochs: the first from before the interruption, the second resumed
