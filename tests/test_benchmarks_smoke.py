"""Smoke test of benchmarks/vs_peers.py: one tiny config in-process, JSON fields and the equality check."""

from __future__ import annotations

import importlib.util
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
    # the plain necklace neck runs the peer's arithmetic (torch's ops): equal at the tight tolerance
    assert eq["tolerance"] <= 1e-4 * max(1.0, eq["max_abs_output"])
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
    ed = pair["eval_deployed"]  # necklace.deploy kept the outputs equal and was timed
    assert ed["ratio_deployed_over_peer"]["median"] > 0 and ed["equality_vs_peer"]["equal"] is True
    # torchvision has no deploy form: the necklace deployed neck is compared with the eager peer, and says so
    assert ed["peer_deploy"] == {"what": None, "has_deploy_form": False, "note": vs_peers.NO_PEER_DEPLOY}
    assert ed["peer_deployed"] == pair["eval"]["peer"]
    assert ed["ratio_deployed_over_peer_deployed"] == ed["ratio_deployed_over_peer"]
    assert "peer has no deploy form: compared with its eager form" in md.read_text()


def _run_tiny(vs_peers, tmp_path: Path, *argv: str) -> tuple[int, dict, str]:
    """One run with one timed round and no warm-up; returns (exit status, JSON, Markdown)."""
    md = tmp_path / "RESULTS.md"
    # the allocator as it comes: the steady one would hold the test process's freed memory (its own test below)
    fast = ["--repeats", "1", "--warmup", "0", "--threads", "1", "--roofline-hw", "16", "--malloc", "default"]
    rc = vs_peers.main([*argv, *fast, "--out", str(tmp_path), "--results-md", str(md)])
    return rc, json.loads((tmp_path / "vs_peers.json").read_text()), md.read_text()


def _checked_equal(pair: dict) -> None:
    assert pair["status"] == "ok", pair
    eq = pair["equality"]
    assert eq["equal"] is True and eq["max_abs_diff"] <= eq["tolerance"] and eq["max_abs_output"] > 0
    # the plain necklace neck runs the peer's arithmetic (torch's ops): equal at the tight tolerance
    assert eq["tolerance"] <= 1e-4 * max(1.0, eq["max_abs_output"])
    assert pair["params"]["necklace"] == pair["params"]["peer"] > 0


def _peer_deployed_checked(pair: dict, what: str) -> dict:
    """The peer's own deploy form was built, checked equal to its eager form, and timed against necklace's."""
    ed = pair["eval_deployed"]
    pd = ed["peer_deploy"]
    assert pd["has_deploy_form"] is True and "note" not in pd and what in pd["what"], pd
    assert pd["equality_vs_peer_eager"]["equal"] is True
    assert pd["params"] < pair["params"]["peer"]  # BN folded / branches merged: fewer parameters
    assert 0 < pd["macs"] <= pair["macs"]["peer"]
    assert ed["peer_deployed"]["median_ms"] > 0 and ed["peer_deployed"]["repeats"] == 1
    assert ed["necklace_deployed"]["median_ms"] > 0 and ed["equality_vs_peer"]["equal"] is True
    assert ed["ratio_deployed_over_peer_deployed"]["median"] > 0 and ed["ratio_deployed_over_peer_deployed"]["n"] == 1
    assert ed["ratio_peer_deployed_over_peer"]["median"] > 0
    return ed


def _require_ultralytics() -> None:
    """Skip without ultralytics (the CI installs it: the ``parity`` extra) *without importing it*: importing it
    patches PIL.Image.open and torch.save process-wide; vs_peers imports it and restores both."""
    if importlib.util.find_spec("ultralytics") is None:
        pytest.skip("ultralytics is not installed (pip install -e '.[parity]')")


def test_vs_peers_yolov8n_peer_deployed(vs_peers, tmp_path: Path) -> None:
    _require_ultralytics()
    argv = ["--configs", "yolov8n", "--image-size", "64", "--no-train", "--deployed", "auto"]
    rc, data, md = _run_tiny(vs_peers, tmp_path, *argv)
    assert rc == 0
    (pair,) = data["configs"][0]["pairs"]
    _checked_equal(pair)
    _peer_deployed_checked(pair, "BaseModel.fuse()")
    assert "ratio necklace deployed / peer deployed" in md and "| ratio deployed nk / deployed peer |" in md
    assert "necklace.deploy(neck, runtime='auto' -> " in md  # 'auto': deploy's own choice, reported
    assert pair["eval_deployed"]["runtime"] in ("torch", "native", "onnxruntime", "openvino")


def test_vs_peers_yolov6n_vs_mmyolo(vs_peers, tmp_path: Path) -> None:
    pytest.importorskip("mmcv")
    pytest.importorskip("mmyolo")
    rc, data, md = _run_tiny(vs_peers, tmp_path, "--configs", "yolov6n", "--image-size", "64", "--deployed")
    assert rc == 0
    (config,) = data["configs"]
    assert config["input_shapes"] == [[1, 64, 8, 8], [1, 128, 4, 4], [1, 256, 2, 2]]
    (pair,) = config["pairs"]
    _checked_equal(pair)
    assert pair["weights"] == "necklace.convert.from_mmyolo_reppafpn"
    train = pair["train"]  # train step included: same input gradients
    assert train["input_grad_max_abs_diff"] <= 1e-4 * max(1.0, train["input_grad_max_abs"])
    _peer_deployed_checked(pair, "switch_to_deploy()")
    assert "| yolov6n (64x64) | mmyolo YOLOv6RepPAFPN (n) |" in md


@pytest.mark.slow
def test_vs_peers_nasfpn_vs_mmdet(vs_peers, tmp_path: Path) -> None:
    pytest.importorskip("mmcv")
    pytest.importorskip("mmdet")
    # 256: divisible by 128 (mmdet floors odd P6/P7 sizes) and P7 2x2, so train-mode BN has > 1 value per channel
    rc, data, md = _run_tiny(vs_peers, tmp_path, "--configs", "nasfpn", "--image-size", "256")
    assert rc == 0
    (config,) = data["configs"]
    assert [s[1] for s in config["input_shapes"]] == [256, 512, 1024, 2048]  # C2-C5, C2 unused (start_level 1)
    (pair,) = config["pairs"]
    _checked_equal(pair)
    assert [s[-1] for s in pair["equality"]["out_shapes"]] == [32, 16, 8, 4, 2]  # P3-P7
    assert pair["macs"]["necklace"] == pair["macs"]["peer"] > 0
    train = pair["train"]  # the train step runs unless --no-train
    assert train["necklace"]["repeats"] == 1 and train["ratio_necklace_over_peer"]["median"] > 0
    assert train["input_grad_max_abs_diff"] <= 1e-4 * max(1.0, train["input_grad_max_abs"])
    assert pair["memory"]["train_step"]["peer"]["peak_bytes"] > 0
    assert "| nasfpn (256x256) | mmdet NASFPN (stack_times 7) |" in md


def test_vs_peers_size_checks(vs_peers, tmp_path: Path) -> None:
    rc, data, md = _run_tiny(vs_peers, tmp_path, "--configs", "nasfpn,yolov6n", "--image-size", "48", "--no-train")
    assert rc == 1  # the builders refuse sizes their peer cannot match, before building anything
    errors = {c["config"]: c["error"] for c in data["configs"]}
    assert "divisible by 128" in errors["nasfpn"] and "divisible by 32" in errors["yolov6n"]
    assert "nasfpn: failed: ValueError: nasfpn needs an image size divisible by 128" in md


def test_ratio_and_interleaving_helpers(vs_peers) -> None:
    common = vs_peers.common
    calls: list[str] = []
    times = common.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then the balanced orders: ab, ba
    assert [len(v) for v in times.values()] == [3, 3]
    assert common.ratio_stats([2.0, 4.0, 9.0], [1.0, 1.0, 3.0])["median"] == 3.0


def test_interleaved_counts_page_faults_per_callable(vs_peers) -> None:
    common = vs_peers.common
    faults: dict[str, int] = {"stale": 7}
    times = common.interleaved({"a": lambda: None, "b": lambda: torch.ones(2**22)}, repeats=4, warmup=1, faults=faults)
    assert sorted(faults) == ["a", "b"] and all(v >= 0 for v in faults.values())  # refilled, one count each
    assert [len(v) for v in times.values()] == [4, 4]


_MALLOC_SCRIPT = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
import common
info = common.apply_malloc(sys.argv[2])
def step():  # two 40 MiB blocks (above glibc's largest mmap threshold, 32 MiB) held at once, then freed
    xs = [torch.ones(10 * 2**20) for _ in range(2)]
    del xs
for _ in range(3):
    step()
counts = []
for _ in range(8):
    before = common.minor_faults()
    step()
    counts.append(common.minor_faults() - before)
print(json.dumps({"info": info, "faults": counts}))
"""


def _malloc_run(mode: str) -> dict:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", _MALLOC_SCRIPT, str(BENCH), mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_steady_allocator_stops_page_faults_of_repeated_large_blocks() -> None:
    steady, default = _malloc_run("steady"), _malloc_run("default")
    assert steady["info"]["mode"] == "steady" and default["info"] == {"mode": "default", "mallopt": None}
    assert steady["info"]["mallopt"] == {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 2**30, "M_TOP_PAD": 64 * 2**20}
    # each round writes 80 MiB (20,480 pages): glibc's defaults map such blocks for themselves and unmap them on
    # free, so every round faults on all of them again; the steady heap keeps its pages once it has grown
    assert min(default["faults"]) >= 20000 and sum(steady["faults"][-4:]) < 100, (steady, default)
    sys.path.insert(0, str(BENCH))
    try:
        import common
    finally:
        sys.path.remove(str(BENCH))
    with pytest.raises(ValueError, match="--malloc must be one of"):
        common.apply_malloc("tuned")


def test_missing_peer_is_skipped_with_a_note(vs_peers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from necklace.bench import peers

    def no_mmdet():
        raise ImportError("No module named 'mmdet'")

    monkeypatch.setattr(peers.pairs, "import_mmdet_necks", no_mmdet)  # the pair builders: necklace.bench.peers.pairs
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
    argv = ["--configs", "tiny", "--repeats", "2", "--warmup", "1", "--threads", "1", "--malloc", "default"]
    assert deploy_speed.main([*argv, "--out", str(tmp_path), "--markdown", str(md)]) == 0
    (result,) = json.loads((tmp_path / "deploy_speed.json").read_text())["results"]
    assert result["params"]["deployed"] < result["params"]["train_form"]  # RepConv branches and BN folded away
    assert result["deploy"]["folded_bn"] > 0 and result["deploy"]["reparameterized"] > 0
    assert result["deploy"]["max_rel_diff"] <= 1e-4
    assert result["latency"]["deployed"]["repeats"] == 2
    assert "deploy_speed:start" in md.read_text()
    assert deploy_speed.main(["--configs", "nope"]) == 2


def test_ultralytics_import_leaves_pil_open_and_torch_save_alone() -> None:
    """ultralytics replaces PIL.Image.open (pip-installing pi-heif on an unreadable image) and torch.save when
    imported; the benchmark (and ``necklace bench --vs ultralytics``) must not leak that into the process (the
    data tests open broken images)."""
    _require_ultralytics()
    import PIL.Image

    from necklace.bench import peers

    before = (PIL.Image.open, torch.save)
    tasks = peers.ultralytics._ultralytics_tasks()
    assert hasattr(tasks, "DetectionModel")
    assert PIL.Image.open is before[0] and torch.save is before[1]


def test_vs_peers_compiled_path(vs_peers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``--compile``: necklace.compile_model of the neck, checked equal to the peer and timed against it; the
    compile time is reported apart and the notes line names the backend."""
    rc, data, md = _run_tiny(vs_peers, tmp_path, "--configs", "tiny_fpn", "--no-train", "--compile", "torchscript")
    assert rc == 0
    (pair,) = data["configs"][0]["pairs"]
    c = pair["compiled"]
    assert c["backend"] == "torchscript" and c["compile_s"] > 0 and c["peer_form"] == "eager"
    assert c["max_rel_diff_vs_peer"] <= 1e-3 and c["ratio_compiled_over_peer"]["median"] > 0
    assert c["necklace_compiled"]["median_ms"] > 0
    assert "necklace.compile_model(backend='torchscript')" in md and "compile " in md


def test_native_gemm_benchmark_runs_and_checks_values(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import native_gemm
    finally:
        sys.path.remove(str(BENCH))
    argv = ["--repeats", "2", "--warmup", "1", "--threads", "1", "--malloc", "default", "--out", str(tmp_path)]
    assert native_gemm.main(argv) == 0
    results = json.loads((tmp_path / "native_gemm.json").read_text())["results"]
    assert [(r["pixels"], r["parts"], r["out_channels"]) for r in results] == [
        (m, list(ks), n) for m, ks, n in native_gemm.CASES
    ]
    assert all(r["max_rel_diff"] < 1e-5 and r["ratio"]["median"] > 0 and r["native"]["repeats"] == 2 for r in results)


def test_native_overhead_benchmark_times_the_forward_and_its_python_share(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import native_overhead
    finally:
        sys.path.remove(str(BENCH))
    argv = ["--configs", "yolov8n", "--repeats", "2", "--number", "2", "--threads", "1", "--out", str(tmp_path)]
    assert native_overhead.main(argv) == 0
    (res,) = json.loads((tmp_path / "native_overhead.json").read_text())["results"]
    assert res["config"] == "yolov8n" and res["max_rel_diff"] < 1e-3
    # the stubbed forward does no compute: it must take a fraction of the real one
    assert 0 < res["python_ms"] < res["forward_ms"] and res["python_share"] < 0.8
    with pytest.raises(SystemExit):
        native_overhead.main(["--configs", "nope", "--out", str(tmp_path)])
