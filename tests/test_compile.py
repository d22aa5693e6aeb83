"""``necklace.compile_model`` (deploy + torch.compile / frozen TorchScript) and the compiled ``bench`` modes."""

from __future__ import annotations

import json

import pytest
import torch
from tests.helpers import pyramid, randomize_bn
from torch import nn

import necklace
from necklace import CompileReport, FeatureSpec, compile_model
from necklace.bench import bench_neck
from necklace.cli import main

SPECS = (FeatureSpec(16, 8), FeatureSpec(32, 16), FeatureSpec(64, 32))


def _neck(name: str = "yolo_pafpn", **options: object) -> nn.Module:
    neck = necklace.build_neck(name, SPECS, **options)
    randomize_bn(neck)
    return neck.eval()


def test_torchscript_backend_matches_and_runs_other_sizes() -> None:
    neck = _neck("rep_pafpn", preset="n")
    feats = pyramid(SPECS, (97, 131), batch=1)
    compiled = compile_model(neck, (feats,), backend="torchscript")
    report = CompileReport.of(compiled)
    assert report.backend == "torchscript" and report.compile_s > 0 and report.warmup_calls == 2
    assert report.deploy is not None and report.deploy.reparameterized > 0  # compiled the deployed form
    assert report.max_rel_diff is not None and report.max_rel_diff <= 1e-4
    assert isinstance(compiled, torch.jit.ScriptModule)
    other = pyramid(SPECS, (64, 80), batch=2, seed=3)  # a different size and batch than traced
    with torch.no_grad():
        ref, got = neck(other), compiled(other)
    for r, g in zip(ref, got, strict=True):
        assert r.shape == g.shape
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4 * r.abs().max().item())


def test_inductor_backend_matches_and_reports_compile_time() -> None:
    pytest.importorskip("torch._inductor")
    neck = _neck("fpn", width=8)
    feats = pyramid(SPECS, (64, 64), batch=1)
    compiled = compile_model(neck, (feats,), backend="inductor")
    report = CompileReport.of(compiled)
    assert report.backend == "inductor" and report.compile_s > 0 and not report.dynamic
    assert report.max_rel_diff is not None and report.max_rel_diff <= 1e-4
    with torch.no_grad():
        for r, g in zip(neck(feats), compiled(feats), strict=True):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "options"), [("bifpn", {"width": 16, "repeats": 1}), ("fpn", {"width": 8}), ("rep_pafpn", {"preset": "n"})]
)
def test_deployed_necks_compile_to_one_graph(name: str, options: dict) -> None:
    """No graph break in the engine: each one would cut the compiled graph and cost a recompile per node (a
    closure over the fused inputs once did: BiFPN-D0 compiled 12.1 ms instead of 6.2)."""
    neck = necklace.deploy(_neck(name, **options))
    feats = pyramid(SPECS, (64, 64), batch=1)
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(neck)(feats)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compile_model_errors() -> None:
    neck = _neck("fpn", width=8)
    with pytest.raises(ValueError, match=r"unknown compile backend 'tvm'.*inductor"):
        compile_model(neck, backend="tvm")
    with pytest.raises(ValueError, match="training mode"):
        compile_model(necklace.build_neck("fpn", SPECS, width=8).train())
    with pytest.raises(ValueError, match="pass example_inputs"):
        compile_model(nn.Sequential(nn.Conv2d(3, 3, 1)).eval())
    with pytest.raises(ValueError, match=r"not produced by necklace\.compile_model"):
        CompileReport.of(neck)


def test_compile_refuses_a_model_whose_compiled_outputs_differ() -> None:
    class Drifting(nn.Module):  # eager and traced disagree: tracing freezes a Python-side counter
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return x * self.calls

    with pytest.raises(RuntimeError, match="torchscript model differs from the original"):
        compile_model(Drifting().eval(), torch.ones(1, 2), backend="torchscript", deploy_first=False)


def test_bench_modes_time_the_prepared_model() -> None:
    common = dict(in_specs=SPECS, image_size=(64, 64), options={"preset": "n"}, warmup=0, repeats=2)
    eager = bench_neck("rep_pafpn", **common)  # type: ignore[arg-type]
    deployed = bench_neck("rep_pafpn", mode="deployed", **common)  # type: ignore[arg-type]
    scripted = bench_neck("rep_pafpn", mode="torchscript", **common)  # type: ignore[arg-type]
    assert eager.mode == "eager" and eager.prepare_s == 0.0
    assert deployed.mode == "deployed" and deployed.prepare_s > 0 and scripted.prepare_s > 0
    assert eager.out_shapes == deployed.out_shapes == scripted.out_shapes
    assert deployed.to_row()["mode"] == "deployed" and scripted.to_dict()["prepare_s"] > 0
    with pytest.raises(ValueError, match="unknown bench mode 'fused'"):
        bench_neck("fpn", mode="fused", **common)  # type: ignore[arg-type]


def test_cli_bench_mode(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "fpn", "--in-channels", "16,32,64", "--width", "16", "--image-size", "64", "64"]
    code = main([*argv, "--repeats", "1", "--warmup", "0", "--mode", "torchscript", "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (row,) = json.loads(captured.out)
    assert row["mode"] == "torchscript" and row["prepare_s"] > 0
    code = main([*argv, "--repeats", "1", "--warmup", "0", "--mode", "deployed"])
    out = capsys.readouterr().out
    assert code == 0 and "mode deployed: timed after deploy/compile" in out


@pytest.mark.parametrize("runtime", ["native", "onnxruntime"])
def test_cli_bench_runtime(runtime: str, capsys: pytest.CaptureFixture[str]) -> None:
    if runtime == "onnxruntime":
        pytest.importorskip(runtime)
    argv = ["bench", "fpn", "--in-channels", "16,32,64", "--width", "16", "--image-size", "64", "64"]
    code = main([*argv, "--repeats", "1", "--warmup", "0", "--runtime", runtime, "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (row,) = json.loads(captured.out)
    assert row["mode"] == runtime and row["prepare_s"] > 0 and row["latency"]["median_ms"] > 0
