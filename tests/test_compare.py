"""`necklace compare`: results.json / report.md / pictures of a tiny sweep, resuming an interrupted sweep, the
noise rule on hand-made numbers, the Pareto front, and the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from necklace.cli import main
from necklace.detection.compare import CompareConfig, NeckChoice, compare
from necklace.detection.compare import run as compare_run
from necklace.detection.train import TrainConfig, TrainingInterrupted

BASE = TrainConfig(
    backbone_options={"width": 4},
    detector_options={"head_convs": 1},
    data_options={"num_images": 6, "val_images": 3},
    image_size=96,
    batch_size=2,
    steps=3,
    log_every=1,
    checkpoint_every=1,
    tensorboard=False,
)
NECKS = (NeckChoice("fpn", {"width": 8}), NeckChoice("pafpn", {"width": 8}))
pytestmark = pytest.mark.train  # every test here trains (hand-made numbers: test_compare_report.py)


def tiny(output: Path, **changes: Any) -> CompareConfig:
    kw: dict[str, Any] = {
        "necks": NECKS,
        "base": BASE,
        "seeds": (0, 1),
        "output": str(output),
        "latency_repeats": 1,
        "latency_warmup": 0,
    }
    kw.update(changes)
    return CompareConfig(**kw)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return compare(tiny(tmp_path_factory.mktemp("compare")), progress=False, command="necklace compare --tiny")


# ------------------------------------------------------------------------------------------------ outputs
def test_results_json_has_every_number(swept: Any) -> None:
    data = json.loads(swept.files["results"].read_text())
    assert data["best"] in ("fpn", "pafpn") and data["metric"] == "ap" and data["rule"] == "2std"
    assert data["wall_time_s"] > 0 and data["environment"]["torch_threads"] >= 1
    assert CompareConfig.from_dict(data["config"]) == swept.config
    assert [n["label"] for n in data["necks"]] == ["fpn", "pafpn"]
    for neck in data["necks"]:
        assert [r["seed"] for r in neck["runs"]] == [0, 1]
        for run in neck["runs"]:
            assert run["steps"] == 3 and run["status"] == "trained" and "ap50" in run["metrics"]
            assert Path(run["output"], "checkpoint.pt").is_file() and Path(run["output"], "metrics.json").is_file()
        for metric in ("ap", "ap50", "ap_small", "ap_medium", "ap_large"):
            stat = neck["stats"][metric]
            assert set(stat) == {"mean", "std", "min", "max", "n", "values"}
            if stat["n"]:
                assert stat["min"] <= stat["mean"] <= stat["max"]
        prof = neck["profile"]
        assert prof["neck_params"] > 0 and prof["detector_params"] > prof["neck_params"]
        assert 0 < prof["neck_gflops"] < prof["detector_gflops"]
        assert prof["neck_cpu_ms"]["median_ms"] > 0 and prof["detector_cpu_ms"]["repeats"] == 1
        assert prof["image_size"] == 96
        assert (neck["vs_best"] is None) == (neck["label"] == data["best"])
    other = next(n for n in data["necks"] if n["label"] != data["best"])
    # 3 steps learn nothing (AP50 far below CompareConfig.learned_ap50): the rule is known, but no verdict is given
    assert other["vs_best"]["rule"] == "2std" and other["vs_best"]["exceeds_noise"] is None
    assert other["vs_best"]["reason"] == "not_learned" and data["ranked"] is False
    assert not any(n["learned"] for n in data["necks"])
    assert other["vs_best"]["diff"] >= 0  # best minus other


def test_report_has_table_verdict_and_how_it_ran(swept: Any) -> None:
    text = swept.files["report"].read_text()
    assert "| neck | AP | AP50 | AP_small | AP_medium | AP_large | neck params |" in text
    assert "| `fpn` |" in text and "| `pafpn` |" in text and "highest (not ranked: did not learn)" in text
    assert "## Verdict" in text and "No ranking is possible" in text and "Learning signal" in text
    assert "train longer (--steps; now 3 steps of batch 2)" in text
    assert "larger images (--image-size; now 96 px)" in text
    assert "Rule for 'beyond / within noise'" in text and "2 x sqrt(std_a^2 + std_b^2)" in text
    assert "command: `necklace compare --tiny`" in text and "wall time:" in text
    assert "![AP by object size](ap_by_size.png)" in text
    assert swept.table() in text


def test_pictures_are_valid_pngs(swept: Any) -> None:
    for key in ("ap_by_size", "ap_vs_latency"):
        path = swept.files[key]
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 400 and im.height > 200
    assert not list(Path(swept.config.output).glob(".*.tmp"))  # atomic writes leave nothing behind


# ------------------------------------------------------------------------------------------------ resume
def test_an_interrupted_sweep_resumes_and_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_train = compare_run.train
    calls: list[tuple[str, bool]] = []
    interrupt = [True]

    def interrupted_on_second_run(config: TrainConfig, resume: Any = False, progress: bool = True) -> Any:
        calls.append((Path(config.output).relative_to(tmp_path).as_posix(), bool(resume)))
        if interrupt[0] and len(calls) == 2:  # Ctrl-C after step 1 of the second run: checkpoint, then raise
            result = real_train(config, resume=resume, progress=False, stop_at=1)
            raise TrainingInterrupted("SIGINT", result.steps, result.total_steps, result.checkpoint)
        return real_train(config, resume=resume, progress=False)

    monkeypatch.setattr(compare_run, "train", interrupted_on_second_run)
    with pytest.raises(TrainingInterrupted):
        compare(tiny(tmp_path), progress=False)
    assert calls == [("runs/fpn/seed0", False), ("runs/fpn/seed1", False)]
    assert not (tmp_path / "results.json").exists()

    calls.clear()
    interrupt[0] = False
    result = compare(tiny(tmp_path), progress=False)
    assert calls == [("runs/fpn/seed1", True), ("runs/pafpn/seed0", False), ("runs/pafpn/seed1", False)]
    statuses = [r.status for n in result.necks for r in n.runs]
    assert statuses == ["reused", "resumed", "trained", "trained"]
    assert all(r.steps == 3 for n in result.necks for r in n.runs)
    assert "1 reused from an earlier call" in result.files["report"].read_text()

    calls.clear()
    again = compare(tiny(tmp_path), progress=False)  # everything finished: nothing retrained, same numbers
    assert calls == [] and [r.metrics for n in again.necks for r in n.runs] == [
        r.metrics for n in result.necks for r in n.runs
    ]


def test_a_run_of_another_config_is_refused(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, necks=(NECKS[0],), seeds=(0,))
    compare(cfg, progress=False)
    with pytest.raises(ValueError, match=r"another configuration.*steps"):
        compare(cfg.replace(base=BASE.replace(steps=4)), progress=False)


# ------------------------------------------------------------------------------------------------ command line
def test_cli_compare_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compare", "--necks", "fpn", "--seeds", "0", "--steps", "2", "--image-size", "64", "--batch-size", "2"]
    argv += ["--backbone-option", "width=4", "--detector-option", "head_convs=1", "--data-option", "num_images=4"]
    argv += ["--data-option", "val_images=2", "-o", "width=8", "-o", "fpn.levels=3,5", "--latency-repeats", "1"]
    argv += ["--output", str(tmp_path), "-q"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| `fpn` |" in out and "one seed" not in out and "report:" in out and "wall time:" in out
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["necks"][0]["options"] == {"width": 8, "levels": [3, 5]}
    assert data["config"]["base"]["steps"] == 2 and data["config"]["seeds"] == [0]
    report = (tmp_path / "report.md").read_text()
    assert "command: `necklace compare --necks fpn --option width=8 --option fpn.levels=3,5" not in report
    assert "command: `necklace compare --necks fpn" in report and "-o fpn.levels=3,5" in report


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--necks", "fpn,fpm"], "unknown neck 'fpm'"),
        (["-o", "bifpn.repeats=2", "--necks", "fpn"], "'bifpn' is not one of --necks fpn"),
        (["--seeds", "0,x"], "--seeds '0,x'"),
        (["-o", "width"], "bad option 'width'"),
    ],
)
def test_cli_compare_errors_are_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", *argv, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
