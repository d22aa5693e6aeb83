"""Contract tests generated from the registry: every neck x input specs x image sizes.

Each neck is built with its entry's ``small_options`` (narrow, shallow: a NAS-FPN of two stages at width 16, not
the paper's seven at 256), on the entry's own default ``in_specs`` and on the shared 3- and 4-level sets.
"""

from __future__ import annotations

import math

import pytest
import torch
from tests.helpers import IMAGE_SIZES, SPEC_SETS, pyramid

import necklace
from necklace import FeatureSpec, GraphNeck

NECKS = necklace.list_necks()
SPEC_KEYS = ("default", *SPEC_SETS)
CASES = [(n, s, i) for n in NECKS for s in SPEC_KEYS for i in IMAGE_SIZES]


def _specs(name: str, spec_key: str) -> tuple[FeatureSpec, ...]:
    info = necklace.neck_info(name)
    return info.in_specs_for(info.small_options) if spec_key == "default" else SPEC_SETS[spec_key]


def _build(name: str, spec_key: str) -> GraphNeck:
    torch.manual_seed(0)
    info = necklace.neck_info(name)
    return necklace.build_neck(name, _specs(name, spec_key), **info.small_options)


def test_registry_has_the_core_necks() -> None:
    assert {"fpn", "pafpn", "bifpn", "yolo_pafpn"} <= set(NECKS)


@pytest.mark.parametrize(("name", "spec_key", "size_key"), CASES)
def test_shapes_strides_channels_and_finite(name: str, spec_key: str, size_key: str) -> None:
    neck = _build(name, spec_key).eval()
    h, w = IMAGE_SIZES[size_key]
    with torch.no_grad():
        outs = neck(pyramid(_specs(name, spec_key), (h, w)))
    assert isinstance(outs, list)
    assert len(outs) == len(neck.out_specs)
    strides = [s.stride for s in neck.out_specs]
    assert strides == sorted(strides) and len(set(strides)) == len(strides)
    for out, spec in zip(outs, neck.out_specs, strict=True):
        assert out.shape == (2, spec.channels, math.ceil(h / spec.stride), math.ceil(w / spec.stride))
        assert torch.isfinite(out).all()
    # the finest output is at a backbone level; the neck never drops the highest-resolution input it uses
    assert neck.out_specs[0].stride in [s.stride for s in _specs(name, spec_key)]


@pytest.mark.parametrize(("name", "spec_key"), [(n, s) for n in NECKS for s in SPEC_KEYS])
def test_gradients_reach_every_parameter(name: str, spec_key: str) -> None:
    neck = _build(name, spec_key).train()
    feats = [f.requires_grad_() for f in pyramid(_specs(name, spec_key), (97, 131))]
    outs = neck(feats)
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in neck.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no/NaN gradient for {missing}"
    zero = [n for n, p in neck.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, f"all-zero gradient for {zero}"
    assert all(f.grad is not None for f in feats if f.shape[1] in [s.channels for s in neck.in_specs])


@pytest.mark.parametrize("name", NECKS)
def test_train_and_eval_differ_only_by_norm_statistics(name: str) -> None:
    neck = _build(name, "c3c5")
    feats = pyramid(SPEC_SETS["c3c5"], (64, 64))
    neck.eval()
    with torch.no_grad():
        a = neck(feats)
        b = neck(feats)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y), "eval forward must be deterministic and side-effect free"


@pytest.mark.parametrize("name", NECKS)
def test_inputs_are_not_modified_in_place(name: str) -> None:
    neck = _build(name, "c3c5").eval()
    feats = pyramid(SPEC_SETS["c3c5"], (97, 131))
    copies = [f.clone() for f in feats]
    with torch.no_grad():
        neck(feats)
    assert all(torch.equal(a, b) for a, b in zip(feats, copies, strict=True))


@pytest.mark.parametrize("name", NECKS)
def test_jit_trace_matches_eager(name: str) -> None:
    neck = _build(name, "c3c5").eval()
    feats = pyramid(SPEC_SETS["c3c5"], (97, 131))
    with torch.no_grad():
        traced = torch.jit.trace(neck, (feats,), check_trace=False)
        expected = neck(feats)
        for a, b in zip(traced(feats), expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NECKS)
def test_torch_export_matches_eager(name: str) -> None:
    neck = _build(name, "c2c5").eval()
    feats = pyramid(SPEC_SETS["c2c5"], (97, 131))
    program = torch.export.export(neck, (feats,))
    with torch.no_grad():
        for a, b in zip(program.module()(feats), neck(feats), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NECKS)
def test_onnx_export_runs_in_onnxruntime(name: str, tmp_path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    neck = _build(name, "c3c5").eval()
    feats = pyramid(SPEC_SETS["c3c5"], (97, 131), batch=1)
    path = tmp_path / f"{name}.onnx"
    names = [f"c{s.level}" for s in neck.in_specs]
    torch.onnx.export(neck, (feats,), str(path), dynamo=True, input_names=names)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {i.name: f.numpy() for i, f in zip(sess.get_inputs(), feats, strict=True)})
    with torch.no_grad():
        ref = neck(feats)
    assert len(outs) == len(ref)
    for o, r in zip(outs, ref, strict=True):
        torch.testing.assert_close(torch.from_numpy(o), r, rtol=1e-4, atol=1e-4)


def test_out_specs_are_feature_specs() -> None:
    for name in NECKS:
        neck = _build(name, "c3c5")
        assert all(isinstance(s, FeatureSpec) for s in neck.out_specs)
        assert neck.in_specs == SPEC_SETS["c3c5"]


@pytest.mark.parametrize("name", NECKS)
def test_small_options_keep_the_neck_small(name: str) -> None:
    # the contract tests run on small necks: every registered neck must say how to build one
    neck = _build(name, "default")
    assert necklace.neck_info(name).small_options
    assert sum(p.numel() for p in neck.parameters()) < 1_000_000
    assert max(s.channels for s in neck.out_specs) <= 64
