"""`necklace compare`: results.json / report.md / pictures of a tiny sweep, resuming an interrupted sweep, the
noise rule on hand-made numbers, the Pareto front, and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from necklace.cli import main
from necklace.detection import compare as compare_mod
from necklace.detection.compare import (
    CompareConfig,
    NeckChoice,
    compare,
    pareto_front,
    significance,
    welch_t_test,
)
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
    assert other["vs_best"]["rule"] == "2std" and isinstance(other["vs_best"]["exceeds_noise"], bool)
    assert other["vs_best"]["diff"] >= 0  # best minus other


def test_report_has_table_verdict_and_how_it_ran(swept: Any) -> None:
    text = swept.files["report"].read_text()
    assert "| neck | AP | AP50 | AP_small | AP_medium | AP_large | neck params |" in text
    assert "| `fpn` |" in text and "| `pafpn` |" in text and "**best**" in text
    assert "## Verdict" in text and "seed noise" in text and "Learning signal" in text
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
    real_train = compare_mod.train
    calls: list[tuple[str, bool]] = []
    interrupt = [True]

    def interrupted_on_second_run(config: TrainConfig, resume: Any = False, progress: bool = True) -> Any:
        calls.append((Path(config.output).relative_to(tmp_path).as_posix(), bool(resume)))
        if interrupt[0] and len(calls) == 2:  # Ctrl-C after step 1 of the second run: checkpoint, then raise
            result = real_train(config, resume=resume, progress=False, stop_at=1)
            raise TrainingInterrupted("SIGINT", result.steps, result.total_steps, result.checkpoint)
        return real_train(config, resume=resume, progress=False)

    monkeypatch.setattr(compare_mod, "train", interrupted_on_second_run)
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


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="appear twice"):
        CompareConfig(necks=("fpn", "fpn"))
    with pytest.raises(ValueError, match=r"unknown neck 'fpm'.*Did you mean 'fpn'"):
        CompareConfig(necks=("fpm",))
    with pytest.raises(ValueError, match="distinct non-negative"):
        CompareConfig(seeds=(0, 0))
    with pytest.raises(ValueError, match="metric"):
        CompareConfig(metric="map")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            compare(CompareConfig(gpu_latency=True, output="never-written"), progress=False)
    variants = CompareConfig(necks=(NeckChoice("bifpn", {"repeats": 1}, "b1"), NeckChoice("bifpn", label="b3")))
    assert [n.label for n in variants.necks] == ["b1", "b3"]
    assert variants.run_dir(variants.necks[0], 2).parts[-2:] == ("b1", "seed2")


# ------------------------------------------------------------------------------------------------ statistics
def test_two_seed_rule_on_hand_made_numbers() -> None:
    clear = significance([0.40, 0.42], [0.30, 0.31])  # stds 0.0141, 0.0071 -> threshold 2 * 0.0158 = 0.0316
    assert clear.rule == "2std" and clear.exceeds_noise is True
    assert clear.diff == pytest.approx(0.105) and clear.threshold == pytest.approx(2 * math.sqrt(0.0002 + 0.00005))
    noisy = significance([0.40, 0.46], [0.38, 0.41])  # diff 0.035, threshold 2 * sqrt(0.0018 + 0.00045) = 0.095
    assert noisy.exceeds_noise is False and noisy.threshold == pytest.approx(0.0949, abs=1e-4)
    one = significance([0.4], [0.3])
    assert one.rule == "none" and one.exceeds_noise is None


def test_welch_rule_with_three_or_more_seeds() -> None:
    # reference values from scipy.stats.ttest_ind(a, b, equal_var=False)
    t, df, p = welch_t_test([0.31, 0.33, 0.32, 0.35], [0.28, 0.30, 0.29, 0.27])
    assert t == pytest.approx(3.970345, abs=1e-6) and df == pytest.approx(5.584615, abs=1e-6)
    assert p == pytest.approx(0.0085129, abs=1e-7)
    s = significance([0.31, 0.33, 0.32, 0.35], [0.28, 0.30, 0.29, 0.27])
    assert s.rule == "welch" and s.exceeds_noise is True
    s = significance([0.31, 0.36, 0.29], [0.30, 0.28, 0.33])
    assert s.rule == "welch" and s.exceeds_noise is False and s.p == pytest.approx(0.5513179, abs=1e-7)
    # Student t quantiles: p = 0.05 at t = 2.228 (df 10, equal variances and sizes -> Welch df 10)
    a = [2.228 * math.sqrt(0.4) + v for v in (-1, 1, -1, 1, -1, 1)]  # standard error sqrt(2 * 1.2 / 6)
    _, df, p = welch_t_test(a, [-1, 1, -1, 1, -1, 1])
    assert df == pytest.approx(10) and p == pytest.approx(0.05, abs=2e-4)


def test_welch_agrees_with_scipy_when_installed() -> None:
    stats = pytest.importorskip("scipy.stats")
    for a, b in (([1.0, 2.5, 3.1], [0.2, 0.4, 0.3, 0.9]), ([5.0, 5.1, 4.9, 5.3, 5.2], [4.0, 4.8, 5.5])):
        t, _, p = welch_t_test(a, b)
        ref = stats.ttest_ind(a, b, equal_var=False)
        assert t == pytest.approx(ref.statistic, rel=1e-9) and p == pytest.approx(ref.pvalue, rel=1e-7)


def test_pareto_front() -> None:
    pts = [(1.0, 0.30), (2.0, 0.35), (3.0, 0.33), (2.5, 0.40), (2.5, 0.40)]
    assert pareto_front(pts) == [0, 1, 3, 4]  # equal points do not dominate each other
    assert pareto_front([(1.0, 0.5)]) == [0]
    assert pareto_front([(2.0, 0.3), (1.0, 0.4)]) == [1]


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


def test_default_and_quick_configs() -> None:
    import argparse

    from necklace.detection.commands import add_compare_parser, compare_config_from_args

    p = argparse.ArgumentParser()
    add_compare_parser(p.add_subparsers(dest="command"))
    default = compare_config_from_args(p.parse_args(["compare"]))
    assert default == CompareConfig()
    assert [n.label for n in default.necks] == ["fpn", "pafpn", "bifpn"] and default.seeds == (0, 1)
    assert default.base.eval and default.base.data == "synthetic" and default.output == "runs/compare"
    quick = compare_config_from_args(p.parse_args(["compare", "--quick"]))
    assert quick.output == "runs/compare-quick" and quick.base.steps < default.base.steps
    coco = compare_config_from_args(p.parse_args(["compare", "--data", "coco:imgs,ann.json"]))
    assert coco.base.data_options == {} and coco.base.detector_options == default.base.detector_options
    fcos = compare_config_from_args(p.parse_args(["compare", "--detector", "fcos"]))
    assert fcos.base.detector == "fcos" and fcos.base.detector_options == {}
    resnet = compare_config_from_args(p.parse_args(["compare", "--backbone", "resnet18"]))
    assert resnet.base.backbone_options == {} and resnet.base.detector_options == default.base.detector_options


def test_verdict_and_pictures_from_hand_made_numbers(tmp_path: Path) -> None:
    result = compare_mod._example_result()  # fpn 31.0 ± 1.4 vs pafpn 20.5 ± 0.7 over 2 seeds
    lines = compare_mod.verdict_lines(result)
    assert lines[0] == "**`fpn`** has the highest mean AP: 31.0 ± 1.4 (2 seeds)."
    assert lines[1] == (
        "`pafpn`: 20.5 ± 0.7, 10.5 AP below `fpn`: larger than the seed noise (needs > 3.2 to exceed the seed spread)."
    )
    assert "+" not in result.table().splitlines()[3].split("|")[-2] and "-10.5 (beyond noise)" in result.table()
    for plot in (compare_mod.plot_ap_by_size, compare_mod.plot_ap_vs_latency):
        path = plot(result, tmp_path / f"{plot.__name__}.png")
        with Image.open(path) as im:
            assert im.format == "PNG"
