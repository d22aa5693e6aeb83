"""``necklace.deploy(runtime=...)`` beyond torch: ONNX Runtime and OpenVINO sessions behind the neck contract, and
``runtime="auto"`` picking the fastest runtime whose outputs match, with every timing and error reported."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from tests.helpers import pyramid, randomize_bn

import necklace
from necklace import DeployReport, FeatureSpec
from necklace.deploy.sessions import SessionNeck

SPECS = (FeatureSpec(16, 8), FeatureSpec(32, 16), FeatureSpec(64, 32))


def _neck(name: str = "fpn") -> torch.nn.Module:
    neck = necklace.build_neck(name, SPECS, width=16, norm="bn")
    randomize_bn(neck, 0)
    return neck.eval()


def _max_rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_session_runtime_keeps_the_neck_contract_at_any_size(runtime: str) -> None:
    pytest.importorskip(runtime)
    neck = _neck()
    deployed = necklace.deploy(neck, runtime=runtime)
    report = DeployReport.of(deployed)
    assert isinstance(deployed, SessionNeck) and report.runtime == runtime and report.folded_bn > 0
    assert report.max_rel_diff is not None and report.max_rel_diff <= 1e-3
    assert deployed.in_specs == neck.in_specs and deployed.out_specs == neck.out_specs
    for size, batch in (((64, 80), 1), ((161, 97), 3)):  # dynamic batch, height and width
        feats = pyramid(SPECS, size, batch=batch)
        with torch.no_grad():
            ref = neck(feats)
        out = deployed(feats)
        assert [o.shape for o in out] == [r.shape for r in ref]
        assert _max_rel(out, ref) <= 1e-3
    clone = pickle.loads(pickle.dumps(deployed))  # the session is rebuilt from the ONNX bytes
    twin = copy.deepcopy(deployed)
    feats = pyramid(SPECS, (64, 64), batch=1)
    for other in (clone, twin):
        assert all(torch.equal(a, b) for a, b in zip(other(feats), deployed(feats), strict=True))


def test_session_runtime_rejects_what_it_cannot_run() -> None:
    pytest.importorskip("onnxruntime")
    deployed = necklace.deploy(_neck(), runtime="onnxruntime")
    feats = pyramid(SPECS, (64, 64), batch=1)
    with pytest.raises(ValueError, match=r"expected a list of 3 feature maps \(c3, c4, c5\).*got 2 maps"):
        deployed(feats[:2])
    with pytest.raises(TypeError, match=r"input c4 must be a float32 CPU .*torch.float64.*\.float\(\)"):
        deployed([feats[0], feats[1].double(), feats[2]])


def test_auto_times_every_runtime_and_keeps_a_matching_one() -> None:
    pytest.importorskip("onnxruntime")
    neck = _neck()
    feats = pyramid(SPECS, (64, 64), batch=1)
    chosen = necklace.deploy(neck, feats, runtime="auto", candidates=("torch", "native", "onnxruntime"), rounds=3)
    report = DeployReport.of(chosen)
    assert report.latency_ms is not None and set(report.latency_ms) == {"torch", "native", "onnxruntime"}
    assert report.runtime == min(report.latency_ms, key=report.latency_ms.__getitem__)
    assert report.errors == {}
    with torch.no_grad():
        assert _max_rel(chosen(feats), neck(feats)) <= 1e-3


def test_auto_reports_a_runtime_that_fails_and_goes_on() -> None:
    neck = _neck()
    feats = pyramid(SPECS, (64, 64), batch=1)
    chosen = necklace.deploy(neck, feats, runtime="auto", candidates=("torch", "tensorrt"), rounds=3)
    report = DeployReport.of(chosen)
    assert report.runtime == "torch" and set(report.latency_ms or {}) == {"torch"}
    assert report.errors is not None and "tensorrt" in report.errors and report.errors["tensorrt"]
    text = str(report)  # the readable form names the runtime kept, its time and why the other was not kept
    assert text.startswith("runtime torch;") and f"torch {report.latency_ms['torch']:.1f}" in text  # type: ignore[index]
    assert f"not kept: tensorrt: {report.errors['tensorrt']}" in text
    with pytest.raises(ValueError, match=r"candidates \['tvm'\] must be some of"):
        necklace.deploy(neck, feats, runtime="auto", candidates=("tvm",))
    with pytest.raises(ValueError, match="pass example_inputs"):
        necklace.deploy(torch.nn.Conv2d(3, 3, 1).eval(), runtime="auto")
