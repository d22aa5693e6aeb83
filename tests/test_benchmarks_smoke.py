"""Smoke test of benchmarks/vs_peers.py: one tiny config in-process, JSON fields and the equality check."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def vs_peers():
    pytest.importorskip("torchvision")
    sys.path.insert(0, str(BENCH))
    try:
        import vs_peers as module
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_vs_peers_tiny_config(vs_peers, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    md = tmp_path / "RESULTS.md"
    md.write_text("# results\n\nkept text\n")
    argv = ["--configs", "tiny_fpn", "--repeats", "2", "--warmup", "1", "--threads", "1", "--roofline-hw", "16"]
    assert vs_peers.main([*argv, "--out", str(tmp_path), "--results-md", str(md)]) == 0
    assert torch.get_num_threads() == threads  # restored

    data = json.loads((tmp_path / "vs_peers.json").read_text())
    assert {"env", "settings", "configs"} <= set(data)
    env = data["env"]
    assert env["date_utc"] and env["cpu"]["model"] and env["cpu"]["logical_cpus"] >= 1
    assert env["versions"]["torch"] == torch.__version__.split("+")[0]
    assert data["settings"]["repeats"] == 2 and data["settings"]["threads"] == 1

    (config,) = data["configs"]
    assert config["config"] == "tiny_fpn" and config["image_size"] == [64, 64]
    assert config["roofline"]["gmac_per_s"] > 0
    (pair,) = config["pairs"]
    assert pair["status"] == "ok", pair
    eq = pair["equality"]  # the equality check ran, with converted weights
    assert eq["equal"] is True and eq["max_abs_diff"] <= eq["tolerance"] and eq["max_abs_output"] > 0
    assert pair["params"]["necklace"] == pair["params"]["peer"] > 0
    assert pair["macs"]["necklace"] == pair["macs"]["peer"] > 0
    ev = pair["eval"]
    assert ev["necklace"]["repeats"] == ev["peer"]["repeats"] == 2
    assert ev["ratio_necklace_over_peer"]["median"] > 0 and ev["ratio_necklace_over_peer"]["n"] == 2
    assert 0 < ev["roofline_share"]["necklace"] and 0 < ev["gmac_per_s"]["peer"]
    assert pair["train"]["necklace"]["median_ms"] > 0 and pair["train"]["ratio_necklace_over_peer"]["median"] > 0
    train = pair["train"]  # train-mode gradients w.r.t. the inputs agree too
    assert train["input_grad_max_abs_diff"] <= 1e-4 * max(1.0, train["input_grad_max_abs"])
    assert pair["memory"]["train_step"]["necklace"]["peak_bytes"] > 0
    assert pair["memory"]["eval_forward"]["peer"]["peak_bytes"] > 0

    text = md.read_text()
    assert text.startswith("# results") and "kept text" in text  # other content kept
    assert "<!-- vs_peers:start -->" in text and "| tiny_fpn (64x64) |" in text

    # a second run replaces the section instead of appending another one
    assert vs_peers.main([*argv, "--no-train", "--deployed", "--out", str(tmp_path), "--results-md", str(md)]) == 0
    assert md.read_text().count("<!-- vs_peers:start -->") == 1
    (pair,) = json.loads((tmp_path / "vs_peers.json").read_text())["configs"][0]["pairs"]
    assert "train" not in pair
    if "eval_deployed" in pair:  # necklace.deploy exists and kept the outputs equal
        assert pair["eval_deployed"]["ratio_deployed_over_peer"]["median"] > 0


def test_ratio_and_interleaving_helpers(vs_peers) -> None:
    common = vs_peers.common
    calls: list[str] = []
    times = common.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then the start rotates each round
    assert [len(v) for v in times.values()] == [3, 3]
    assert common.ratio_stats([2.0, 4.0, 9.0], [1.0, 1.0, 3.0])["median"] == 3.0


def test_missing_peer_is_skipped_with_a_note(vs_peers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_mmdet():
        raise ImportError("No module named 'mmdet'")

    monkeypatch.setattr(vs_peers.common, "import_mmdet_necks", no_mmdet)
    md = tmp_path / "RESULTS.md"
    argv = ["--configs", "r50_pafpn", "--repeats", "1", "--out", str(tmp_path), "--results-md", str(md)]
    assert vs_peers.main(argv) == 0
    (pair,) = json.loads((tmp_path / "vs_peers.json").read_text())["configs"][0]["pairs"]
    assert pair["status"] == "skipped" and "not importable" in pair["note"] and "mmdet" in pair["note"]
    assert "skipped: mmdet" in md.read_text()


def test_deploy_speed_tiny_config(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import deploy_speed
    finally:
        sys.path.remove(str(BENCH))
    md = tmp_path / "RESULTS.md"
    argv = ["--configs", "tiny", "--repeats", "2", "--warmup", "1", "--threads", "1"]
    assert deploy_speed.main([*argv, "--out", str(tmp_path), "--markdown", str(md)]) == 0
    (result,) = json.loads((tmp_path / "deploy_speed.json").read_text())["results"]
    assert result["params"]["deployed"] < result["params"]["train_form"]  # RepConv branches and BN folded away
    assert result["deploy"]["folded_bn"] > 0 and result["deploy"]["reparameterized"] > 0
    assert result["deploy"]["max_rel_diff"] <= 1e-4
    assert result["latency"]["deployed"]["repeats"] == 2
    assert "deploy_speed:start" in md.read_text()
    assert deploy_speed.main(["--configs", "nope"]) == 2
