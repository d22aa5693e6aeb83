"""`necklace compare` without training: configuration checks, the noise rule and Welch's test on hand-made numbers,
the Pareto front, the verdict and the pictures of constructed results (no ranking of runs that did not learn, zero
spread as unknown noise), the command line's configs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from necklace.detection import compare as compare_mod
from necklace.detection.compare import (
    DEFAULT_BASE,
    CompareConfig,
    CompareResult,
    NeckChoice,
    RunResult,
    compare,
    judge,
    pareto_front,
    significance,
    verdict_lines,
    welch_t_test,
)
from necklace.detection.compare.results import _example_result
from necklace.detection.evaluate import CocoMetrics


# ------------------------------------------------------------------------------------------------ config
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


def test_default_and_quick_configs() -> None:
    import argparse

    from necklace.cli.compare import add_compare_parser, compare_config_from_args

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


# ------------------------------------------------------------------------------------------------ verdict
def test_verdict_and_pictures_from_hand_made_numbers(tmp_path: Path) -> None:
    result = _example_result()  # fpn 31.0 ± 1.4 vs pafpn 20.5 ± 0.7 over 2 seeds
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


# ------------------------------------------------------------------------------------------------ no ranking
def _judged(aps: dict[str, list[float]], ap50s: dict[str, list[float]], **base: Any) -> CompareResult:
    """A comparison of hand-made runs (AP and AP50 per seed) judged as compare() judges real ones."""
    template = _example_result()
    config = CompareConfig(necks=tuple(NeckChoice(n) for n in aps), seeds=(0, 1), base=DEFAULT_BASE.replace(**base))
    runs: dict[str, list[RunResult]] = {label: [] for label in aps}
    for label in aps:
        for seed, (ap, ap50) in enumerate(zip(aps[label], ap50s[label], strict=True)):
            metrics = CocoMetrics.from_stats([ap, ap50, *[ap] * 10])
            runs[label].append(RunResult(label, seed, Path(label), metrics, 60.0, 60, 2.5, 2.4, "trained"))
    best, necks = judge(config, runs, {label: template.necks[0].profile for label in aps})
    return CompareResult(config, necks, best, 1.0, {}, {})


def test_runs_that_did_not_learn_are_not_ranked() -> None:
    # the user's case: every AP <= 0.3 (x 100); 0.0 +/- 0.0 was called "beyond the seed noise" of 0.2 +/- 0.1
    result = _judged(
        {"fpn": [0.003, 0.001], "bifpn": [0.0, 0.0]}, {"fpn": [0.012, 0.008], "bifpn": [0.0, 0.0]}, steps=60,
        image_size=96,
    )  # fmt: skip
    assert not result.ranked and result.to_dict()["ranked"] is False
    assert result.neck("bifpn").vs_best.exceeds_noise is None and result.neck("bifpn").vs_best.reason == "not_learned"
    lines = verdict_lines(result)
    assert lines[0].startswith("**No ranking is possible: no neck learned at this setting.**")
    assert "below the learning floor of AP50 5.0" in lines[0]
    assert (
        "train longer (--steps; now 60 steps of batch 4), larger images (--image-size; now 96 px) or a pretrained"
        in (lines[0])
    )
    assert not any("beyond" in line or "larger than the seed noise" in line for line in lines)
    assert "highest (not ranked: did not learn)" in result.table() and "(not ranked: did not learn)" in result.table()


def test_a_neck_that_did_not_learn_is_left_out_of_the_ranking() -> None:
    result = _judged(
        {"fpn": [0.30, 0.32], "pafpn": [0.28, 0.29], "bifpn": [0.001, 0.002]},
        {"fpn": [0.5, 0.52], "pafpn": [0.48, 0.5], "bifpn": [0.01, 0.02]},
    )
    assert result.ranked and result.best == "fpn" and not result.neck("bifpn").learned
    lines = verdict_lines(result)
    assert lines[0].startswith("**`fpn`** has the highest mean AP")
    assert any(line.startswith("`bifpn`: 0.1 ± 0.1, AP50 1.5 ± 0.7: did not learn") for line in lines)
    assert lines[-1].endswith("Not ranked: `bifpn`.")
    assert result.neck("pafpn").vs_best.exceeds_noise is not None  # the two that learned are still compared


def test_a_zero_spread_is_unknown_noise_not_a_verdict() -> None:
    result = _judged({"fpn": [0.31, 0.33], "pafpn": [0.25, 0.25]}, {"fpn": [0.5, 0.5], "pafpn": [0.45, 0.45]})
    s = result.neck("pafpn").vs_best
    assert result.ranked and s.exceeds_noise is None and s.reason == "no_spread"
    assert "(zero spread: no verdict)" in result.table()
    assert any(
        "identical over the seeds, so the seed noise is unknown (not zero)" in line for line in verdict_lines(result)
    )
    assert significance([0.3, 0.3, 0.3], [0.2, 0.21, 0.22]).reason == "no_spread"  # with 3+ seeds (Welch) too
    assert significance([0.3, float("nan")], [0.2, 0.21]).reason == "no_spread"  # undefined spread
