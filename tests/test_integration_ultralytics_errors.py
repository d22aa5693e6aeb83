"""necklace.integrations.ultralytics: the errors a user gets (unsupported Ultralytics versions, levels the backbone
cannot give, bad arguments, stock models where a necklace one is needed), with the network blocked."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import necklace

ultralytics = pytest.importorskip("ultralytics")

import PIL.Image  # noqa: E402  (after ultralytics, which replaces PIL.Image.open at import; restored below)
from tests.helpers import block_network  # noqa: E402
from ultralytics.nn.tasks import DetectionModel, yaml_model_load  # noqa: E402

from necklace.integrations.ultralytics import (  # noqa: E402
    NecklaceDetectionTrainer,
    NecklaceYOLO,
    build_yolo,
    check_ultralytics_version,
    compat,
    from_ultralytics,
)


@pytest.fixture(scope="module", autouse=True)
def network() -> Iterator[list[str]]:
    """Refuse every non-local connection for the whole module (an error path must not download either)."""
    pil_open = PIL.Image.open
    with pytest.MonkeyPatch.context() as mp:
        attempts = block_network(mp)
        yield attempts
    PIL.Image.open = pil_open  # type: ignore[assignment]
    assert set(attempts) <= {"one.one.one.one", "dns.google", "github.com"}, attempts  # (Ultralytics' own probes)


def test_unsupported_ultralytics_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_ultralytics_version() == ultralytics.__version__
    for version in ("8.2.103", "8.3.0", "8.5.0", "9.0.0", "nightly"):
        with pytest.raises(ImportError, match=rf"supports ultralytics>=8\.3\.150,<8\.5\.0, found {version}\. "):
            check_ultralytics_version(version)
    monkeypatch.setattr(compat, "ultralytics_version", lambda: "8.2.0")  # as if 8.2.0 were installed
    with pytest.raises(ImportError, match=r"supports ultralytics>=8\.3\.150,<8\.5\.0, found 8\.2\.0.*pip install"):
        build_yolo("yolov8n.yaml", "fpn")
    with pytest.raises(ImportError, match=r"found 8\.2\.0"):
        NecklaceYOLO({"backbone": [], "necklace": {}})


def test_neck_levels_that_cannot_match_the_backbone() -> None:
    # yolo_pafpn makes no extra level: P3-P6 cannot come out of a P3-P5 backbone
    with pytest.raises(
        ValueError,
        match=r"yolo_pafpn built on the backbone maps P3-P5 .* outputs levels \[3, 4, 5\] .*asks for levels 3\.\.6 "
        r".*Fix: ask for levels=\(3, 5\), or use a neck that makes levels above the backbone's",
    ):
        build_yolo("yolov8n.yaml", "yolo_pafpn", levels=(3, 6))
    # a neck option that adds a level the detector did not ask for (csp_pan's extra P6)
    with pytest.raises(ValueError, match=r"csp_pan .* outputs levels \[3, 4, 5, 6\].*asks for levels 3\.\.5.*extra"):
        build_yolo("yolov8n.yaml", "csp_pan", levels=(3, 5))
    # no stride-1 map in the backbone
    with pytest.raises(ValueError, match=r"need 1 <= finest"):
        build_yolo("yolov8n.yaml", "fpn", levels=(0, 5))
    with pytest.raises(ValueError, match=r"levels must be a \(finest, coarsest\) pair"):
        build_yolo("yolov8n.yaml", "fpn", levels=(3, 4, 5))
    # a graph made for another backbone
    graph = necklace.build_neck("fpn", [(32, 8), (64, 16), (128, 32)], width=16, levels=(3, 5)).graph
    with pytest.raises(ValueError, match=r"graph's in_specs \[\(32, 8\).*do not match the backbone's .*\[\(64, 8\)"):
        build_yolo("yolov8n.yaml", graph)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: build_yolo("yolov8n.yaml", "bifpm"), ValueError, r"unknown neck 'bifpn?m'.*Did you mean 'bifpn'"),
        (lambda: build_yolo("nowhere/yolov8n.pt", "fpn"), ValueError, r"not found\. necklace never downloads"),
        (lambda: build_yolo("yolov8n-seg.yaml", "fpn"), ValueError, r"not an Ultralytics detection model.*Segment"),
        (lambda: build_yolo("yolov8n.yaml", "fpn", act=torch.nn.ReLU), TypeError, r"type values cannot be stored"),
        (lambda: build_yolo("yolov8n.yaml", 3), TypeError, r"neck must be a registered neck name"),
        (lambda: build_yolo(3.5, "fpn"), TypeError, r"model must be an Ultralytics YOLO"),
        (lambda: build_yolo("yolov8n.yaml", "fpn", nc=0), ValueError, r"nc \(number of classes\) must be a positive"),
        (lambda: NecklaceYOLO("yolov8n.yaml"), ValueError, r"no 'necklace' section.*build_yolo"),
        (lambda: from_ultralytics(build_yolo("yolov8n.yaml", "fpn")), ValueError, r"already has a necklace neck"),
        (lambda: from_ultralytics("yolov8n.yaml", neck="bifpn"), ValueError, r"converts to yolo_pafpn .*got 'bifpn'"),
    ],
)
def test_bad_input_errors(call: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


def test_trainer_refuses_a_stock_model() -> None:
    trainer = SimpleNamespace(data={"nc": 3, "channels": 3})  # get_model refuses before it reads anything else
    with pytest.raises(ValueError, match=r"got yolov8n\.yaml, which has no 'necklace' section.*ultralytics\.YOLO"):
        NecklaceDetectionTrainer.get_model(trainer, cfg=yaml_model_load("yolov8n.yaml"))  # type: ignore[arg-type]


def test_stock_detection_model_cannot_rebuild_the_yaml() -> None:
    cfg = build_yolo("yolov8n.yaml", "fpn", width=16).model.yaml
    with pytest.raises(KeyError, match="NecklaceYOLO"):
        DetectionModel(cfg, verbose=False)  # what Ultralytics' own DetectionTrainer.get_model does
