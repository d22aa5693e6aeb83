"""Training configuration without training: TrainConfig / DataSpec round trips and errors, the LR schedule."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from necklace.detection.train import DataSpec, TrainConfig, lr_factor


def test_config_round_trips_and_errors(tmp_path: Path) -> None:
    cfg = TrainConfig(neck="bifpn", neck_options={"width": 32, "levels": (3, 6)}, steps=7, lr=0.02, amp=False)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.load(cfg.save(tmp_path / "c.yaml")) == cfg
    assert TrainConfig.load(cfg.save(tmp_path / "c.json")) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig field 'epoch'; did you mean 'epochs'"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="choose one of"):
        TrainConfig(detector="yolo")
    with pytest.raises(ValueError, match="did you mean 'coco'"):
        TrainConfig(data="cocco:a,b")
    with pytest.raises(ValueError, match=r"data_options \['on_error'\] do not apply to synthetic"):
        TrainConfig(data_options={"on_error": "drop"})
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        TrainConfig(batch_size=0)
    with pytest.raises(TypeError, match="plain data"):
        TrainConfig(neck_options={"act": torch.nn.ReLU})
    assert DataSpec.parse("yolo:a,b,cat,dog").class_names == ("cat", "dog")
    with pytest.raises(ValueError, match="yolo:IMAGES_DIR,LABELS_DIR,NAME1"):
        DataSpec.parse("yolo:a,b")


def test_lr_schedule() -> None:
    factors = [lr_factor(s, 100, 10) for s in range(100)]
    assert factors[0] == pytest.approx(0.001) and factors[10] == 1.0
    assert all(a < b for a, b in itertools.pairwise(factors[:11]))  # warm-up rises
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))  # cosine falls
    assert factors[-1] < 0.001
    assert lr_factor(99, 100, 10, min_ratio=0.1) == pytest.approx(0.1, abs=1e-3)
    assert lr_factor(50, 100, 10, schedule="constant") == 1.0
