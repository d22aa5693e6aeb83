"""`necklace search --detector yolov8n`: the search inside an Ultralytics YOLO detector.

The configuration and the command line (defaults, flags, one-line errors before anything is written); the frozen YOLO
backbone as a necklace Backbone (its maps are YOLO's own on the un-normalised image, at the levels build_yolo reads);
searched necks that build_yolo builds after YoloTrainConfig's JSON round trip; a tiny end-to-end search (latency on
the YOLO backbone's maps, proxy short trainings, a verdict trained by Ultralytics, report and winner.yaml); latency
rejection against YOLO's own neck; the whole YOLO detector as what is timed; resume after an interruption. The
network is blocked for the whole module.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

ultralytics = pytest.importorskip("ultralytics")
pytest.importorskip("optuna")

from tests.helpers import assert_search_resumes, block_network  # noqa: E402

from necklace.cli import main  # noqa: E402
from necklace.cli.search import add_search_parser, search_config_from_args  # noqa: E402
from necklace.detection.compare import YoloTrainConfig  # noqa: E402
from necklace.detection.search import (  # noqa: E402
    CPU_YOLO_BASE,
    Candidate,
    SearchConfig,
    SearchSpace,
    TrialRecord,
    YoloBackbone,
    finalist_label,
    search,
    tiny_shapes_yolo,
    verdict_config,
)
from necklace.detection.search.yolo import IMAGENET_MEAN, IMAGENET_STD, yolo_handmade, yolo_space  # noqa: E402
from necklace.graph import NeckGraph  # noqa: E402
from necklace.integrations.ultralytics import build_yolo, read_split  # noqa: E402

#: the tiny verdict recipe: YOLOv8n on 16 tiny_shapes images of 64 px (4 for validation), 1 epoch of batch 4
TINY = YoloTrainConfig(
    data_options={"num_images": 16, "val_images": 4}, image_size=64, batch_size=4, epochs=1, device="cpu"
)


@pytest.fixture(scope="module", autouse=True)
def no_network() -> Iterator[list[str]]:
    """Refuse every non-local connection (Ultralytics' online check and font download) for the whole module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YOLO_OFFLINE", "1")
        attempts = block_network(mp)
        yield attempts


def _parse(*argv: str) -> SearchConfig:
    parser = argparse.ArgumentParser()
    add_search_parser(parser.add_subparsers(dest="command"))
    return search_config_from_args(parser.parse_args(["search", *argv]))  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------------ configuration
def test_cli_defaults_inside_yolov8n_and_flags_inside_yolo11s() -> None:
    cfg = _parse("--detector", "yolov8n")
    assert isinstance(cfg.base, YoloTrainConfig) and cfg.yolo and cfg.base == CPU_YOLO_BASE
    assert cfg.handmade == ("yolo_pafpn", "pafpn", "bifpn") and cfg.warmup_epochs == 30
    assert cfg.preset == "tiny_shapes" and cfg.output == "runs/search-yolov8n" and cfg.base.levels == (3, 5)
    cfg = _parse(
        "--detector", "yolo11s", "--levels", "2,5", "--epochs", "3", "--warmup-epochs", "2", "--handmade", "bifpn",
        "--image-size", "96", "--batch-size", "8", "--device", "cpu", "--detector-option", "optimizer=SGD",
        "--data-option", "num_images=32", "--latency-budget", "1.5x", "--trials", "5", "--output", "x",
    )  # fmt: skip
    base = cfg.base
    assert isinstance(base, YoloTrainConfig) and base.detector == "yolo11s" and base.levels == (2, 5)
    assert (base.epochs, base.image_size, base.batch_size, base.device) == (3, 96, 8, "cpu")
    assert base.train_args["optimizer"] == "SGD" and base.synthetic["num_images"] == 32
    assert cfg.handmade == ("yolo11_pafpn", "bifpn")  # the family's own neck is always in, first (the reference)
    assert (cfg.warmup_epochs, cfg.latency_budget, cfg.n_trials, cfg.device) == (2, "1.5x", 5, "cpu")
    assert SearchConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # results.json round trip
    data_file = _parse("--detector", "yolov8n", "--data", "yolo:shapes/data.yaml")
    assert data_file.preset is None and data_file.base.data == "yolo:shapes/data.yaml"
    assert data_file.base.data_options == {}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--detector", "yolov8n", "--steps", "10"], "--steps does not apply to YOLO detectors: Ultralytics trains in"),
        (["--detector", "yolov8n", "--warmup-steps", "10"], "--warmup-steps does not apply to YOLO detectors: the"),
        (["--detector", "yolov8n", "--backbone", "resnet18"], "--backbone does not apply to YOLO detectors"),
        (["--detector", "yolov8n", "--pretrained"], "--pretrained does not apply to YOLO detectors"),
        (["--detector", "yolov8n", "--levels", "3"], "--levels '3': expected LO,HI such as 3,5"),
        (["--detector", "yolov8n", "--levels", "4,4"], "needs at least two levels, got base.levels (4, 4)"),
        (["--detector", "yolov8n", "--data", "coco:a,b"], "YOLO detectors train on 'synthetic' or an Ultralytics data"),
        (["--detector", "yolov8n", "--warmup-epochs", "0"], "SearchConfig.warmup_epochs must be an int >= 1, got 0"),
        (["--detector", "yolov9n"], "unknown detector 'yolov9n' (did you mean 'yolov8n'?)"),
        (["--levels", "2,5"], "--levels applies to YOLO detectors (--detector yolov8n, ...); set the backbone's"),
        (["--epochs", "3"], "--epochs applies to YOLO detectors (--detector yolov8n, ...); the verdict's recipe is"),
        (["--warmup-epochs", "3"], "--warmup-epochs applies to YOLO detectors"),
    ],
)
def test_cli_errors_are_one_line(argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["search", *argv, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_library_config_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"warmup_steps=5 applies to torchvision detectors; .* give warmup_epochs"):
        SearchConfig(base=TINY, warmup_steps=5)
    with pytest.raises(ValueError, match=r"warmup_epochs=2 applies to YOLO detectors .* warmup_steps steps"):
        SearchConfig(warmup_epochs=2)
    with pytest.raises(ValueError, match=r"outputs the detector's levels \(3, 5\).*min_levels=\(3,\), max_levels"):
        SearchConfig(base=TINY, space=SearchSpace(min_levels=(2, 3), max_levels=(5,)))
    with pytest.raises(ValueError, match="nasfpn template spans five levels"):
        SearchConfig(base=TINY, space=SearchSpace(templates=("nasfpn",), min_levels=(3,), max_levels=(5,)))
    assert "warmup_epochs" not in SearchConfig().identity()  # torchvision studies journaled before YOLO resume
    assert "warmup_steps" not in SearchConfig(base=TINY).identity() and SearchConfig().handmade[0] == "fpn"


# ------------------------------------------------------------------------------------------------ the backbone
def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_the_yolo_backbone_returns_yolos_own_maps_of_the_unnormalised_image() -> None:
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", verbose=False).eval()
    image = torch.rand(1, 3, 64, 96)
    seen: dict[int, torch.Tensor] = {}
    hooks = [model.model[i].register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, o)) for i in (2, 4, 6, 9)]
    with torch.no_grad():
        model(image)  # Ultralytics' own forward on RGB in [0, 1]
    for h in hooks:
        h.remove()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    normalised = (image - mean) / std  # what torchvision's detection transform hands the backbone
    for levels, layers in (((3, 5), (4, 6, 9)), ((2, 5), (2, 4, 6, 9))):
        bb = YoloBackbone.from_model(model, levels)
        with torch.no_grad():
            maps = bb(normalised)
        assert bb.take == layers and [s.level for s in bb.out_specs] == list(range(levels[0], 6))
        for m, i in zip(maps, layers, strict=True):  # random weights: tiny maps, so compare relative to their size
            assert m.shape == seen[i].shape and _relative_error(m, seen[i]) < 1e-4
        neck_specs = build_yolo("yolov8n.yaml", "yolo_pafpn", levels=levels).model.neck_layer.in_specs
        assert tuple(neck_specs) == bb.out_specs  # the maps build_yolo hands its neck
    with torch.no_grad():
        assert _relative_error(YoloBackbone.from_model(model, (3, 5))(image)[0], seen[4]) > 0.05  # undo needed


def test_searched_necks_survive_the_json_round_trip_and_build_in_yolo() -> None:
    space = yolo_space(TINY, free_cells=True)
    assert space.min_levels == (3,) and space.max_levels == (5,) and "cells" in space.templates
    rng = __import__("random").Random(0)
    drawn = [space.suggest(lambda name, choices: rng.choice(list(choices))) for _ in range(6)]
    drawn += [Candidate("yolo_pan", (3, 5), 48, "concat", block="c2f", repeats=2), Candidate("bifpn", (3, 5), 32)]
    records = [TrialRecord(k, "searched", c.label, "searched", c.to_options(), "complete") for k, c in enumerate(drawn)]
    verdict = verdict_config(TINY, records, None, (0,), "out", "ap")  # the compare run the verdict makes
    for cand, neck in zip(drawn, verdict.necks, strict=True):
        cfg = verdict.run_config(neck, 0)
        back = YoloTrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))  # its JSON round trip (results.json)
        assert back == cfg and back.neck == "searched"
        assert Candidate.from_options({**back.neck_options, "levels": list(back.levels)}) == cand
        model = build_yolo(back.model_yaml, back.neck, levels=back.levels, **back.neck_options).model
        assert model.stride.tolist() == [8.0, 16.0, 32.0], cand.label
        assert tuple(model.neck.graph.out_specs) == tuple(cand.graph(model.neck_layer.in_specs).out_specs)
    with pytest.raises(ValueError, match=r"has levels \(3, 6\), but the detector's are \(3, 5\)"):
        verdict_config(TINY, [TrialRecord(9, "searched", "x", "searched", {"levels": [3, 6]}, "complete")],
                       None, (0,), "out", "ap")  # fmt: skip
    hand = yolo_handmade(("pafpn", "bifpn"), TINY)
    assert [(c.name, c.options) for c in hand] == [
        ("yolo_pafpn", {"preset": "n"}),
        ("pafpn", {"width": 64, "levels": [3, 5]}),
        ("bifpn", {"width": 64, "repeats": 2, "levels": [3, 5]}),
    ]


def test_tiny_shapes_reach_ultralytics_as_a_yolo_dataset(tmp_path: Path) -> None:
    data = tiny_shapes_yolo(tmp_path, num_images=3, val_images=2, image_size=64)
    train, val = read_split(data, "train"), read_split(data, "val")
    assert (len(train.images), len(val.images)) == (3, 2) and train.names == ("rectangle", "ellipse", "triangle")
    boxes = [line.split() for p in train.labels for line in p.read_text().splitlines()]
    assert boxes and all(float(w) * float(h) * 64**2 < 32.5**2 for _, _, _, w, h in boxes)  # COCO-small
    stamp = data.stat().st_mtime_ns
    assert tiny_shapes_yolo(tmp_path, num_images=3, val_images=2, image_size=64) == data
    assert data.stat().st_mtime_ns == stamp  # written once


def test_a_users_data_file_feeds_both_phases(tmp_path: Path) -> None:
    from necklace.detection.search.yolo import proxy_config, yolo_data
    from necklace.detection.train import build_dataset

    data = tiny_shapes_yolo(tmp_path / "mine", num_images=5, val_images=2, image_size=64)
    cfg = SearchConfig(base=TINY.replace(data=f"yolo:{data}", data_options={}), preset=None, output=str(tmp_path / "o"))
    verdict_base, path, text = yolo_data(cfg)
    assert path == data and verdict_base.data == f"yolo:{data}" and str(data) in text  # the verdict's data file
    proxy = proxy_config(verdict_base, path)  # the short trainings read its train split
    train = build_dataset(proxy, "train")
    assert len(train) == 5 and tuple(train.class_names) == ("rectangle", "ellipse", "triangle")
    assert proxy.detector == "faster_rcnn" and proxy.image_size == 64
    lines = (data.parent / "labels" / "train" / "000000.txt").read_text().splitlines()
    assert train[0][1]["boxes"].shape[0] == len(lines) > 0  # the same objects Ultralytics reads
    two = data.with_name("two.yaml")
    two.write_text(data.read_text().replace("train: images/train", "train: [images/train, images/val]"))
    with pytest.raises(ValueError, match="spans 2 image folders"):
        proxy_config(verdict_base, two)
    missing = SearchConfig(base=TINY.replace(data="yolo:nowhere/data.yaml", data_options={}), preset=None)
    with pytest.raises(ValueError, match=r"Ultralytics data file 'nowhere/data\.yaml' not found"):
        yolo_data(missing)


# ------------------------------------------------------------------------------------------------ end to end
def tiny(output: Path, **changes: Any) -> SearchConfig:
    kw: dict[str, Any] = {
        "base": TINY,
        "warmup_epochs": 1,
        "rung_steps": 2,
        "rungs": 2,
        "reduction_factor": 2,
        "pruner": "none",  # every trial finishes: the verdict has a searched neck to judge
        "n_trials": 4,
        "latency_budget": "1000x",
        "latency_repeats": 6,
        "handmade": ("pafpn",),
        "fidelity_images": 16,
        "verdict": False,
        "output": str(output),
    }
    kw.update(changes)
    return SearchConfig(**kw)


def _reuse_warmup(searched: Any, output: Path) -> None:
    """Start ``output`` with the fixture's finished warm-up run (the search reuses a finished warm-up, as on a rerun):
    the same backbone, without training it again."""
    shutil.copytree(Path(searched.config.output) / "backbone", output / "backbone")


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("yolo_search")
    cfg = tiny(out, verdict=True, verdict_top=1, verdict_seeds=(0, 1))
    return search(cfg, progress=False, command="necklace search --detector yolov8n --tiny")


@pytest.mark.train
def test_a_tiny_search_inside_yolov8n_ends_with_a_verdict_trained_by_ultralytics(searched: Any) -> None:
    out = Path(searched.config.output)
    records = searched.records
    assert [r.label for r in records[:2]] == ["yolo_pafpn", "pafpn"] and records[0].options == {"preset": "n"}
    assert searched.reference_label == "yolo_pafpn" and searched.counts["trained"] == 4
    assert all(r.status == "complete" for r in records[:2])  # YOLO's own neck trains behind the 1x1 projection
    assert searched.fidelity["in_specs"] == [[64, 8], [128, 16], [256, 32]]  # yolov8n's P3-P5 maps
    assert searched.fidelity["head"] == "faster_rcnn"
    assert "stock yolov8n trained 1 epochs" in searched.fidelity["backbone"]
    warm = json.loads((out / "backbone" / "warmup.json").read_text())
    assert warm["epochs"] == 1 and (out / "backbone" / "weights" / "last.pt").is_file()
    data = read_split(out / "data" / next(p.name for p in (out / "data").iterdir()) / "data.yaml", "train")
    assert len(data.images) == 16
    # the verdict: compare inside yolov8n (Ultralytics' trainer), the best searched neck and the best hand-made one
    verdict = searched.verdict
    assert verdict is not None and searched.compare is not None and searched.compare.config.yolo
    labels = [n.label for n in searched.compare.config.necks]
    assert labels == [verdict.best_searched, verdict.best_handmade] and verdict.best_handmade in ("yolo_pafpn", "pafpn")
    for neck in searched.compare.necks:
        assert [r.seed for r in neck.runs] == [0, 1]
        assert all((Path(r.output) / "weights" / "last.pt").is_file() and r.steps == 4 for r in neck.runs)
    assert ("Winner" in verdict.lines[0]) or ("stands" in verdict.lines[0])
    winner = NeckGraph.load(out / "winner.yaml")
    rec = searched.record(verdict.recommended)
    assert finalist_label(rec) == verdict.recommended
    model = build_yolo("yolov8n.yaml", out / "winner.yaml", levels=(3, 5)).model  # the winner goes into YOLO as is
    assert model.stride.tolist() == [8.0, 16.0, 32.0] and tuple(winner.in_specs) == tuple(model.neck_layer.in_specs)
    report = (out / "report.md").read_text()
    assert "**Read the trials as a proxy**" in report and "only the verdict trains inside YOLO" in report
    assert "Inside yolov8n: 1 epochs of batch 4 by Ultralytics' trainer" in report
    assert "[64ch /8, 128ch /16, 256ch /32]" in report and "build_yolo('yolov8n.yaml', 'winner.yaml'" in report
    for name in ("results.json", "trials.md", "trials.csv", "search.png", "verdict/results.json", "verdict/report.md"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert SearchConfig.from_dict(saved["config"]) == searched.config


@pytest.mark.train
def test_over_budget_candidates_are_rejected_on_the_yolo_backbone_maps(searched: Any, tmp_path: Path) -> None:
    _reuse_warmup(searched, tmp_path)
    result = search(tiny(tmp_path, latency_budget="0.75x", n_trials=2, handmade=("yolo_pafpn",)), progress=False)
    assert result.reference_label == "yolo_pafpn" and result.fidelity["in_specs"] == [[64, 8], [128, 16], [256, 32]]
    yolo = result.records[0]
    assert yolo.label == "yolo_pafpn" and yolo.status == "rejected" and not yolo.rungs
    assert yolo.latency_ms is not None and yolo.latency_ms > result.limit_ms
    rejected = [r for r in result.records if r.status == "rejected"]
    assert all(r.latency_ms > result.limit_ms and not r.rungs and r.seconds < 30 for r in rejected)
    trained = [r for r in result.records if r.trained]
    assert trained and all(r.latency_ms <= result.limit_ms for r in trained)
    assert result.verdict is None and result.winner_path is None


@pytest.mark.train
def test_the_whole_yolo_detector_can_be_what_is_timed(searched: Any, tmp_path: Path) -> None:
    _reuse_warmup(searched, tmp_path)
    cfg = tiny(tmp_path, latency_scope="detector", n_trials=2, handmade=("pafpn",), anchors=False)
    result = search(cfg, progress=False)
    hand = [r for r in result.records if r.kind == "hand-made"]
    assert [r.label for r in hand] == ["yolo_pafpn", "pafpn"]
    assert all(r.latency["runtime"] == "torch (eager detector)" for r in hand)
    assert hand[0].latency["ratio"] == pytest.approx(1, rel=0.5)  # the reference against itself
    assert result.reference_ms > searched.reference_ms  # a whole YOLO model with NMS, not its neck alone


@pytest.mark.train
def test_resume_after_an_interruption_gives_the_same_trials(searched: Any, tmp_path: Path) -> None:
    _reuse_warmup(searched, tmp_path)
    cfg = tiny(tmp_path)
    assert_search_resumes(search, cfg, searched, 2, tmp_path)  # Ctrl-C in trial 2, after its first rung


@pytest.mark.train
def test_an_interrupted_warmup_resumes_from_its_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ultralytics.engine.trainer import BaseTrainer

    from necklace.detection.compare import yolo as compare_yolo

    cfg = tiny(tmp_path, warmup_epochs=2, n_trials=1, handmade=(), anchors=False)
    save = BaseTrainer.save_model
    calls = {"n": 0}

    def save_then_interrupt(self: Any) -> Any:  # Ctrl-C right after the first epoch's checkpoint
        save(self)
        calls["n"] += 1
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(BaseTrainer, "save_model", save_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            search(cfg, progress=False)
    last = tmp_path / "backbone" / "weights" / "last.pt"
    assert calls["n"] == 1 and compare_yolo._checkpoint_state(last) == ("resumable", 1)
    assert not (tmp_path / "backbone" / "warmup.json").exists()  # not finished: no record yet
    result = search(cfg, progress=False)  # the same call again: the warm-up resumes at epoch 2, then the search runs
    assert compare_yolo._checkpoint_state(last)[0] == "finished"
    assert json.loads((tmp_path / "backbone" / "warmup.json").read_text())["epochs"] == 2
    assert [r.label for r in result.records] == ["yolo_pafpn"] and result.records[0].status == "complete"
    assert "stock yolov8n trained 2 epochs (8 steps)" in result.fidelity["backbone"]
