"""necklace.bench.peers.compare and ``necklace bench NAME --vs PEER``: same weights, equal outputs, interleaved
timing."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import necklace
from necklace import FeatureSpec
from necklace.bench import peers
from necklace.bench.peers import PeerComparison, compare
from necklace.cli import main

FAST = {"repeats": 2, "warmup": 0}


def _require(*modules: str) -> None:
    """Skip unless the peer is installed, *without importing it* (ultralytics patches PIL.Image.open and
    torch.save when imported; necklace.bench.peers restores both, a bare import here would not)."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install -e '.[parity]' / '.[parity-mmdet]')")


def _checked(r: PeerComparison, name: str, peer: str) -> None:
    assert (r.neck, r.peer) == (name, peer)
    assert r.equal is True and r.ok and r.max_abs_diff <= r.tolerance and r.max_abs_output > 0
    assert r.macs_necklace == r.macs_peer > 0 and r.gmacs_necklace == r.gmacs_peer
    assert r.params_necklace == r.params_peer > 0
    assert r.ratio > 0 and r.ratio_p25 <= r.ratio <= r.ratio_p75
    assert r.necklace_ms > 0 and r.peer_ms > 0 and r.gmac_per_s_necklace > 0 and r.gmac_per_s_peer > 0
    assert r.times["necklace"]["repeats"] == r.times["peer"]["repeats"] == r.repeats
    json.dumps(r.to_dict())  # JSON-ready


def test_fpn_vs_torchvision() -> None:
    threads = torch.get_num_threads()
    rounds: list[tuple[int, int]] = []
    r = compare(
        "fpn",
        "torchvision",
        image_size=(64, 96),
        options={"width": 32},
        threads=1,
        progress=lambda done, total: rounds.append((done, total)),
        **FAST,
    )
    _checked(r, "fpn", "torchvision")
    assert torch.get_num_threads() == threads and r.threads == 1  # restored
    assert rounds == [(0, 2), (1, 2), (2, 2)]
    assert r.peer_module == "torchvision FeaturePyramidNetwork" and r.weights == "necklace.convert.fpn_from_torchvision"
    assert r.image_size == (64, 96) and r.out_shapes == ((1, 32, 8, 12), (1, 32, 4, 6), (1, 32, 2, 3))
    assert [s.channels for s in r.in_specs] == [512, 1024, 2048]  # R50 C3-C5 by default
    assert r.deployed is False and r.deployed_ms is None and "eval_deployed" not in r.to_dict()


def test_fpn_vs_torchvision_deployed_and_custom_inputs() -> None:
    specs = [FeatureSpec(16, 8), FeatureSpec(32, 16), FeatureSpec(64, 32)]
    r = compare("fpn", "torchvision", image_size=64, options={"width": 16}, in_specs=specs, deployed=True, **FAST)
    _checked(r, "fpn", "torchvision")
    assert r.in_specs == tuple(specs)
    # torchvision has no deploy form: its eager form stands in, and the deployed necklace neck is checked against it
    assert r.deployed_equal is True and r.deployed_max_abs_diff is not None
    assert r.peer_deploy is None and r.peer_deploy_equal is None
    assert r.ratio_deployed is not None and r.ratio_deployed > 0 and r.deployed_ms is not None
    assert r.peer_deployed_ms == r.peer_ms  # the eager peer's times
    assert r.to_dict()["eval_deployed"]["peer_deploy_note"] == peers.NO_PEER_DEPLOY


def test_bifpn_vs_effdet() -> None:
    _require("effdet")
    r = compare("bifpn", "effdet", image_size=64, **FAST)
    _checked(r, "bifpn", "effdet")
    assert [s.channels for s in r.in_specs] == [40, 112, 320] and r.options == {"preset": "d0"}
    assert "tf_efficientdet_d0" in r.peer_module and len(r.out_shapes) == 5


def test_yolo_pafpn_vs_ultralytics_deployed() -> None:
    _require("ultralytics")
    import PIL.Image

    before = (PIL.Image.open, torch.save)
    r = compare("yolo_pafpn", "ultralytics", image_size=64, deployed=True, **FAST)
    assert (PIL.Image.open, torch.save) == before  # ultralytics' import patches are not kept
    _checked(r, "yolo_pafpn", "ultralytics")
    assert r.weights.endswith("ultralytics_to_necklace)")
    assert r.peer_deploy is not None and "BaseModel.fuse()" in r.peer_deploy and r.peer_deploy_equal is True
    assert r.deployed_equal is True and r.ratio_deployed is not None and r.ratio_deployed > 0
    assert sorted(r.times) == ["deployed", "necklace", "peer", "peer_deployed"]


@pytest.mark.parametrize("preset", ["n", "m"])
def test_yolo11_pafpn_vs_ultralytics(preset: str) -> None:
    _require("ultralytics")
    # n: C3k blocks only in the last bottom-up node; m: in every node (ultralytics' rule for m / l / x)
    r = compare("yolo11_pafpn", "ultralytics", image_size=64, options={"preset": preset}, deployed=True, **FAST)
    _checked(r, "yolo11_pafpn", "ultralytics")
    assert "YOLO11" in r.peer_module and r.peer_deploy_equal is True and r.deployed_equal is True
    assert [s.channels for s in r.in_specs] == ([128, 128, 256] if preset == "n" else [512, 512, 512])
    neck = necklace.build_neck("yolo11_pafpn", r.in_specs, preset=preset)
    c3k = [type(n.block.m[0]).__name__ == "CSPBlock" for n in neck.nodes.values()]
    assert c3k == ([False, False, False, True] if preset == "n" else [True] * 4)


def test_ultralytics_neck_reads_its_layers_off_the_model() -> None:
    _require("ultralytics")
    v8, v11 = peers.UltralyticsNeck("yolov8n.yaml"), peers.UltralyticsNeck("yolo11n.yaml")
    assert (v8.first, v8.in_layers, v8.out_layers) == (10, (4, 6, 9), (15, 18, 21))
    assert (v11.first, v11.in_layers, v11.out_layers) == (11, (4, 6, 10), (16, 19, 22))
    wrong = necklace.build_neck("yolo_pafpn", [FeatureSpec(128, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)])
    with pytest.raises(ValueError, match="no matching"):
        peers.ultralytics_to_necklace(v11, wrong)  # a YOLOv8 neck cannot take YOLO11 weights


@pytest.mark.parametrize("name", ["fpn", "pafpn"])
def test_fpn_pafpn_vs_mmdet(name: str) -> None:
    _require("mmcv", "mmdet")
    r = compare(name, "mmdet", image_size=64, options={"width": 32}, **FAST)
    _checked(r, name, "mmdet")
    assert r.peer_module == f"mmdet {name.upper()}" and r.weights == "necklace.convert.neck_from_mmdet"


def test_nasfpn_vs_mmdet_small() -> None:
    _require("mmcv", "mmdet")
    r = compare("nasfpn", "mmdet", image_size=128, options={"width": 32, "stack_times": 1}, **FAST)
    _checked(r, "nasfpn", "mmdet")
    assert [s[-1] for s in r.out_shapes] == [16, 8, 4, 2, 1]  # P3-P7 from C2-C5 (C2 unused)


def test_rep_pafpn_vs_mmyolo_deployed() -> None:
    _require("mmcv", "mmdet", "mmyolo")
    r = compare("rep_pafpn", "mmyolo", image_size=64, deployed=True, **FAST)
    _checked(r, "rep_pafpn", "mmyolo")
    assert [s.channels for s in r.in_specs] == [64, 128, 256]
    assert r.peer_deploy is not None and "switch_to_deploy()" in r.peer_deploy and r.peer_deploy_equal is True
    assert r.deployed_equal is True and r.ratio_deployed is not None and r.ratio_deployed > 0


# ----------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "bifpn", "peer": "torchvision"}, "no torchvision counterpart of neck 'bifpn'.*compared with: effdet"),
        ({"name": "fpn", "peer": "detectron2"}, "unknown peer 'detectron2'; choose one of torchvision, mmdet"),
        ({"name": "fpn", "peer": "torchvision", "options": {"levels": [3, 7]}}, "unsupported option.*levels.*width"),
        ({"name": "yolo_pafpn", "peer": "ultralytics", "options": {"preset": "z"}}, "preset 'z' not in n, s, m"),
        (
            {"name": "rep_pafpn", "peer": "mmyolo", "in_specs": [(32, 8), (64, 16), (128, 32)]},
            "inputs are fixed by the preset",
        ),
        ({"name": "rep_pafpn", "peer": "mmyolo", "image_size": 48}, "divisible by 32"),
        ({"name": "nasfpn", "peer": "mmdet", "image_size": 192}, "divisible by 128"),
        ({"name": "fpn", "peer": "torchvision", "repeats": 0}, "repeats must be an int >= 1"),
    ],
)
def test_compare_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compare(**kwargs)


def test_missing_peer_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_mmdet() -> None:
        raise ImportError("No module named 'mmdet'")

    monkeypatch.setattr(peers.pairs, "import_mmdet_necks", no_mmdet)  # (where the pair builders look it up)
    with pytest.raises(ImportError, match=r"mmdet .*not importable.*pip install -e '\.\[parity-mmdet\]'"):
        compare("pafpn", "mmdet", image_size=64)


def test_supported_pairs() -> None:
    assert peers.supported_pairs() == [
        ("fpn", "torchvision"),
        ("fpn", "mmdet"),
        ("pafpn", "mmdet"),
        ("nasfpn", "mmdet"),
        ("bifpn", "effdet"),
        ("yolo_pafpn", "ultralytics"),
        ("yolo11_pafpn", "ultralytics"),
        ("rep_pafpn", "mmyolo"),
    ]
    assert set(peers.PEERS) == {peer for _, peer in peers.supported_pairs()}


# ----------------------------------------------------------------------------------------------- CLI
def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


TINY = ("--image-size", "64", "64", "--repeats", "1", "--warmup", "0")


def test_cli_bench_vs_torchvision_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "bench", "fpn", "--vs", "torchvision", *TINY, "--format", "json")
    assert rc == 0, err
    (row,) = json.loads(out)
    assert row["neck"] == "fpn" and row["peer"] == "torchvision" and row["image_size"] == [64, 64]
    assert row["equality"]["equal"] is True and row["macs"]["necklace"] == row["macs"]["peer"] > 0
    assert row["eval"]["ratio_necklace_over_peer"]["median"] > 0 and row["settings"]["repeats"] == 1
    assert "fpn vs torchvision: 1/1 runs done" in err  # progress on stderr


def test_cli_bench_vs_table_deployed_and_csv_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "vs.csv"
    argv = ("bench", "fpn", "--vs", "torchvision", "--width", "16", *TINY, "--mode", "deployed", "-q")
    rc, out, err = _run(capsys, *argv, "--output", str(target))
    assert rc == 0, err
    header = out.splitlines()[0].split()
    assert header[:4] == ["neck", "peer", "image", "max"] and "ratio" in header and "deployed" in header
    assert out.splitlines()[2].startswith("fpn   torchvision  64x64")
    assert "(eager)" in out and "(weights: necklace.convert.fpn_from_torchvision)" in out
    (row,) = csv.DictReader(target.read_text().splitlines())
    assert row["equal"] == "True" and float(row["ratio"]) > 0 and float(row["ratio_deployed"]) > 0
    assert row["options"] == "width=16" and f"wrote {target}" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("bifpn", "--vs", "torchvision"), "no torchvision counterpart of neck 'bifpn'"),
        (("nope", "--vs", "torchvision"), "nope"),
        (("fpn", "--vs", "torchvision", "--mode", "torchscript"), "--mode torchscript is not supported"),
        (("fpn", "--vs", "torchvision", "--runtime", "native"), "drop --runtime"),
        (("fpn", "--mode", "deployed", "--runtime", "native"), "give one"),
        (("fpn", "--vs", "torchvision", "--batch", "2"), "batch 1"),
        (("fpn", "--vs", "torchvision", "--levels", "3-7"), "unsupported option(s) levels"),
    ],
)
def test_cli_bench_vs_errors(argv: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "bench", *argv, *TINY)
    assert rc == 2 and out == ""
    assert err.startswith("necklace: error:") and message in err and len(err.strip().splitlines()) == 1


def test_cli_bench_vs_unknown_peer(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "bench", "fpn", "--vs", "detectron2")
    assert rc == 2 and "invalid choice: 'detectron2'" in err
