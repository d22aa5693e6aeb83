"""`necklace compare` without training: configuration checks, the noise rule and Welch's test on hand-made numbers,
the Pareto front, the verdict and the pictures of constructed results, the command line's configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from necklace.detection import compare as compare_mod
from necklace.detection.compare import CompareConfig, NeckChoice, compare, pareto_front, significance, welch_t_test
from necklace.detection.compare.results import _example_result


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
