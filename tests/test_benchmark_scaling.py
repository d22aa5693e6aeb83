"""Smoke test of benchmarks/scaling.py: tiny sweeps in-process, JSON points and fits, Markdown section, plot."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
# the allocator as it comes: the steady one would hold the test process's freed memory
ARGV = ["--sizes", "64,96", "--batches", "1,2", "--batch-size-image", "64", "--repeats", "1", "--threads", "1"]
ARGV += ["--malloc", "default"]


@pytest.fixture(scope="module")
def scaling():
    sys.path.insert(0, str(BENCH))
    try:
        import scaling as module
    finally:
        sys.path.remove(str(BENCH))
    return module


@pytest.fixture(scope="module")
def tiny_run(scaling, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One run of the default necks on the tiny sweeps (shared by the tests below: it is the slow part)."""
    tmp = tmp_path_factory.mktemp("scaling")
    md = tmp / "RESULTS.md"
    md.write_text("# results\n\nkept text\n")
    threads = torch.get_num_threads()
    assert scaling.main([*ARGV, "--out", str(tmp), "--results-md", str(md)]) == 0
    assert torch.get_num_threads() == threads  # restored
    return tmp, json.loads((tmp / "scaling.json").read_text())


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def test_json_has_every_neck_point_and_fit(scaling, tiny_run) -> None:
    _, data = tiny_run
    assert {"env", "settings", "necks"} <= set(data)
    assert data["env"]["threads"] == 1 and data["env"]["versions"]["torch"]
    s = data["settings"]
    assert s["sizes"] == [64, 96] and s["batches"] == [1, 2] and s["batch_size_image"] == 64 and s["repeats"] == 1
    assert list(data["necks"]) == list(scaling.DEFAULT_NECKS) == ["fpn", "pafpn", "bifpn", "yolo_pafpn"]
    for name, e in data["necks"].items():
        assert e["neck"] == name and e["params"] > 0
        size_pts, batch_pts = e["points"]["size"], e["points"]["batch"]
        assert [(p["image_size"], p["batch"]) for p in size_pts] == [([64, 64], 1), ([96, 96], 1)]
        assert [(p["image_size"], p["batch"]) for p in batch_pts] == [([64, 64], 1), ([64, 64], 2)]
        for p in size_pts + batch_pts:
            assert p["latency"]["repeats"] == 1 and p["latency_ms"] > 0
            assert p["megapixels"] == pytest.approx(p["image_size"][0] * p["image_size"][1] * p["batch"] / 1e6)
            assert p["ms_per_mpix"] == pytest.approx(p["latency_ms"] / p["megapixels"])
            assert p["peak_bytes"] > 0 and p["peak_mb"] == pytest.approx(p["peak_bytes"] / 2**20)
            assert p["gmacs"] > 0 and p["train_peak_mb"] is None
        # convs dominate the MACs: they are proportional to the batch exactly
        assert batch_pts[1]["gmacs"] == pytest.approx(2 * batch_pts[0]["gmacs"], rel=1e-6)
        for sweep in ("size", "batch"):
            fits = e["fits"][sweep]
            assert {"latency_ms", "peak_mb", "gmacs"} <= set(fits) and "train_peak_mb" not in fits
            for f in fits.values():
                assert f["n"] == 2
                for key in ("slope", "intercept", "r2", "loglog_exponent", "per_x_ratio_largest_smallest"):
                    assert _finite(f[key]), (name, sweep, key, f)


def test_markdown_section_written_between_markers(tiny_run) -> None:
    tmp, _ = tiny_run
    text = (tmp / "RESULTS.md").read_text()
    assert text.startswith("# results") and "kept text" in text  # other content kept
    start, end = text.index("<!-- scaling:start -->"), text.index("<!-- scaling:end -->")
    section = text[start:end]
    assert "### Size sweep" in section and "### Batch sweep" in section and "### Linearity" in section
    assert "| fpn | 96x96 |" in section and "| yolo_pafpn | 2 |" in section
    assert "| bifpn | size | ms |" in section


def test_plot_written(tiny_run) -> None:
    pytest.importorskip("matplotlib")
    tmp, _ = tiny_run
    png = tmp / "scaling.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![scaling](scaling.png)" in (tmp / "RESULTS.md").read_text()  # relative to the Markdown file


def test_train_memory_and_second_run_replaces_section(scaling, tmp_path: Path) -> None:
    md = tmp_path / "RESULTS.md"
    argv = [
        "--necks",
        "yolo_pafpn",
        "--sizes",
        "64,96",
        "--batches",
        "1",
        "--batch-size-image",
        "64",
        "--malloc",
        "default",
    ]
    argv += ["--repeats", "1", "--threads", "1", "--train", "--no-plot", "--out", str(tmp_path)]
    assert scaling.main([*argv, "--results-md", str(md)]) == 0
    assert scaling.main([*argv, "--results-md", str(md)]) == 0
    text = md.read_text()
    assert text.count("<!-- scaling:start -->") == 1 and "![scaling]" not in text
    data = json.loads((tmp_path / "scaling.json").read_text())
    assert list(data["necks"]) == ["yolo_pafpn"] and not (tmp_path / "scaling.png").exists()
    pts = data["necks"]["yolo_pafpn"]["points"]["size"]
    assert all(p["train_peak_mb"] > p["peak_mb"] > 0 for p in pts)  # activations kept for backward
    assert _finite(data["necks"]["yolo_pafpn"]["fits"]["size"]["train_peak_mb"]["r2"])
    assert data["necks"]["yolo_pafpn"]["fits"]["batch"]["latency_ms"]["slope"] is None  # one point: no line


def test_linear_fit(scaling) -> None:
    f = scaling.linear_fit([1.0, 2.0, 4.0], [3.0, 5.0, 9.0])
    assert f["slope"] == pytest.approx(2.0) and f["intercept"] == pytest.approx(1.0) and f["r2"] == pytest.approx(1.0)
    assert f["per_x_ratio_largest_smallest"] == pytest.approx((9 / 4) / 3)
    g = scaling.linear_fit([1.0, 2.0, 4.0, 8.0], [5.0, 10.0, 20.0, 40.0])  # proportional: exponent 1, ratio 1
    assert g["loglog_exponent"] == pytest.approx(1.0) and g["per_x_ratio_largest_smallest"] == pytest.approx(1.0)
    assert g["intercept"] == pytest.approx(0.0, abs=1e-9)
    noisy = scaling.linear_fit([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0])
    assert 0 < noisy["r2"] < 1
    assert scaling.linear_fit([2.0, 2.0], [1.0, 3.0])["r2"] is None  # no spread in x
    assert scaling.linear_fit([1.0, 2.0], [7.0, 7.0])["r2"] == 1.0  # constant y


def test_bad_arguments(scaling) -> None:
    for argv in (["--necks", "nope"], ["--sizes", "64,x"], ["--batches", "0"], ["--repeats", "0"]):
        with pytest.raises(SystemExit) as e:
            scaling.main(argv)
        assert e.value.code == 2
