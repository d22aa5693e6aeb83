"""What `necklace train` / `eval` / `compare` check before any work: class names of training data, validation data
and checkpoint; config values (strict types, numpy integers accepted); options that would be ignored; and bad
command lines, each a one-line error naming what was given, what was expected and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from necklace.cli import main
from necklace.detection import SyntheticShapes, TinyBackbone, build_detector, to_yolo
from necklace.detection.train import CHECKPOINT_NAME, TrainConfig, train

FLAGS = [
    "--steps", "1", "--batch-size", "2", "--image-size", "64", "--backbone-option", "width=4", "--width", "8",
    "--detector-option", "head_convs=1", "--no-tensorboard", "-q",
]  # fmt: skip


@pytest.fixture(scope="module")
def yolo_pets(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three classes, like the synthetic data, but other names."""
    root = tmp_path_factory.mktemp("yolo")
    to_yolo(SyntheticShapes(2, image_size=(64, 64)), root / "images", root / "labels")
    return f"yolo:{root / 'images'},{root / 'labels'},cat,dog,bird"


def test_validation_data_with_other_classes_fails_before_training(tmp_path: Path, yolo_pets: str) -> None:
    cfg = TrainConfig(val_data=yolo_pets, data_options={"num_images": 2}, batch_size=2, steps=1, output=str(tmp_path))
    with pytest.raises(ValueError, match=r"the validation data has other classes than the training data: \['cat'"):
        train(cfg, progress=False)
    assert not (tmp_path / CHECKPOINT_NAME).exists()  # refused at set-up: nothing trained, nothing saved


@pytest.mark.train
def test_eval_compares_class_names_not_only_their_number(
    tmp_path: Path, yolo_pets: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["train", *FLAGS, "--data-option", "num_images=2", "--output", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / CHECKPOINT_NAME), "--data", yolo_pets, "-q"]) == 2
    err = capsys.readouterr().err
    assert "the evaluation data has other classes than the model (its training data): ['cat', 'dog', 'bird']" in err
    assert "label 1 is 'rectangle' there, 'cat' here" in err and err.count("\n") == 1


def test_config_values_are_strict_and_numpy_integers_welcome() -> None:
    cfg = TrainConfig(steps=np.int64(3), batch_size=np.int32(2), seed=np.int64(7), lr=np.float32(0.5))
    assert (cfg.steps, cfg.batch_size, cfg.seed) == (3, 2, 7) and type(cfg.steps) is int and type(cfg.lr) is float
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(TypeError, match=r"lr must be a number or None, got '1e-3' \(a string: in YAML write 1.0e-3"):
        TrainConfig(lr="1e-3")
    with pytest.raises(TypeError, match=r"TrainConfig.eval must be True or False, got 'yes'"):
        TrainConfig(eval="yes")
    with pytest.raises(ValueError, match=r"data_options\['num_images'\] must be an int >= 0, got 2.5"):
        TrainConfig(data_options={"num_images": 2.5})
    with pytest.raises(ValueError, match=r"TrainConfig.grad_clip must be finite, got inf"):
        TrainConfig(grad_clip=float("inf"))
    with pytest.raises(TypeError, match=r"TrainConfig.output must be a directory path .*got None"):
        TrainConfig(output=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown neck 'fpm'"):
        TrainConfig(neck="fpm")


def test_detector_options_that_torchvision_would_ignore_are_refused() -> None:
    with pytest.raises(TypeError, match=r"fcos has no option 'score_thres' \(did you mean 'score_thresh'\?\)"):
        build_detector("fcos", TinyBackbone(width=4), "fpn", neck_options={"width": 8}, score_thres=0.5)
    with pytest.raises(ValueError, match=r"head_convs \(FCOS tower depth\) must be an int >= 0, got -1"):
        build_detector("fcos", TinyBackbone(width=4), "fpn", neck_options={"width": 8}, head_convs=-1)


@pytest.mark.parametrize(
    "files,argv,message",
    [
        ({"bad.yaml": "lr: [1, 2\n"}, ["train", "--config", "bad.yaml"], "'bad.yaml' is not valid YAML at line 2"),
        ({"c.json": "{'steps': 1}"}, ["train", "--config", "c.json"], "'c.json' is not valid JSON (line 1, column 2"),
        ({}, ["train", "-o", "widht=8"], "'widht'"),
        ({}, ["train", "--data-option", "num_classes=9"], "must be 1..6 for synthetic data (one class per shape"),
        ({}, ["train", "--save-config", "."], "cannot save the config as '.': it is a directory"),
        ({"run/checkpoint.pt": ""}, ["eval", "--checkpoint", "run"], "it is a directory: give 'run/checkpoint.pt'"),
        ({"e.pt": ""}, ["eval", "--checkpoint", "e.pt", "--output", "."], "--output '.' is a directory"),
        ({"e.pt": ""}, ["eval", "--checkpoint", "e.pt"], "checkpoint 'e.pt' is empty (0 bytes)"),
        ({"f": "x"}, ["compare", "--output", "f"], "compare output 'f' is a file, not a directory"),
        ({}, ["compare", "--necks", "fpn", "-o", "fpn.widht=8"], "compare: neck 'fpn': TrainConfig.neck_options"),
    ],
)
def test_bad_command_lines_are_one_line_errors(
    files: dict[str, str],
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text(text)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Errno" not in err and "internal error" not in err, err
