"""`necklace features`: per-level heatmaps of a trained detector in one PNG grid (one panel per neck output level)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from necklace.cli import main
from necklace.detection import TinyBackbone, build_detector
from necklace.detection.features import draw_feature_heatmaps, feature_heatmaps, load_image
from necklace.detection.train import TrainConfig, train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(
        backbone_options={"width": 4},
        neck="bifpn",
        neck_options={"width": 8, "repeats": 1},
        detector_options={"head_convs": 1},
        data_options={"num_images": 2, "val_images": 2},
        image_size=64,
        batch_size=2,
        steps=1,
        output=str(out),
        tensorboard=False,
    )
    train(cfg, progress=False)
    return out


def _model(neck: str = "fpn", **options: object) -> torch.nn.Module:
    return build_detector(
        "fcos", TinyBackbone(width=4), neck, 3, neck_options={"width": 8, **options}, min_size=64, max_size=64,
        head_convs=1,
    )  # fmt: skip


def test_heatmaps_cover_the_image_per_level() -> None:
    model = _model().train()
    image = torch.rand(3, 50, 70)  # odd size: resized, padded to 32 inside the detector, mapped back
    for reduce in ("l2", "mean_abs"):
        levels = feature_heatmaps(model, image, reduce)
        assert [(lv.name, lv.stride) for lv in levels] == [("P3", 8), ("P4", 16), ("P5", 32), ("P6", 64)]
        for lv in levels:
            assert tuple(lv.heatmap.shape) == (50, 70) and 0 <= lv.heatmap.min() and lv.heatmap.max() <= 1
            assert lv.high >= lv.low >= 0 and lv.channels == 8
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="reduce 'max'"):
        feature_heatmaps(model, image, "max")
    with pytest.raises(ValueError, match=r"one RGB image \[3, H, W\]"):
        feature_heatmaps(model, image[None], "l2")


@pytest.mark.parametrize("neck,options,levels", [("fpn", {}, 4), ("bifpn", {"repeats": 1}, 5)])
def test_one_panel_per_output_level(tmp_path: Path, neck: str, options: dict, levels: int) -> None:
    model = _model(neck, **options)
    target = {"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([2])}
    fig = draw_feature_heatmaps(model, torch.rand(3, 64, 64), tmp_path / "f.png", target=target, score_thresh=0.0)
    assert len(fig.levels) == levels == len(model.backbone.out_specs) and fig.panels == levels + 1
    with Image.open(fig.path) as im:
        assert im.format == "PNG" and im.width > 600


@pytest.mark.train
def test_cli_features_on_a_trained_run(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "heat.png"
    assert main(["features", "--checkpoint", str(run_dir), "--synthetic", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "input + 5 levels: P3 (/8, 8x8), P4 (/16, 4x4), P5 (/32, 2x2), P6 (/64, 1x1), P7 (/128, 1x1)" in text
    with Image.open(out) as im:
        im.verify()
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (90, 60), (200, 120, 40)).save(photo)
    assert tuple(load_image(photo).shape) == (3, 60, 90)
    out2 = tmp_path / "photo_heat.png"
    assert main(["features", str(photo), "--checkpoint", str(run_dir / "checkpoint.pt"), "--out", str(out2)]) == 0
    assert out2.is_file() and "photo" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--checkpoint", "nowhere"], "checkpoint 'nowhere' not found"),
        (["x.png", "--synthetic", "0"], "not both"),
        (["--synthetic", "9"], "--synthetic 9"),
        (["--out", "heat.jpg"], "use a .png name"),
        (["missing.png"], "image 'missing.png' not found"),
    ],
)
@pytest.mark.train
def test_cli_features_errors_are_one_line(
    args: list[str], message: str, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["features", *args]
    if "--checkpoint" not in args:
        argv += ["--checkpoint", str(run_dir)]
    if "--out" not in args:
        argv += ["--out", str(tmp_path / "h.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
