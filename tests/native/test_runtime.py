"""The native runtime on whole necks: channels_last inputs converted once (or read in place where every reader can),
lateral GEMMs writing channels_last from NCHW maps, and outputs equal to the plain neck's."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import pyramid, randomize_bn
from torch import Tensor, nn

import necklace
from necklace import FeatureSpec, GraphNeck
from necklace.deploy import deploy
from necklace.deploy.native.gemm import PointwiseToChannelsLast
from necklace.deploy.native.nodes import NativeGraphNeck, NativeNode, use_channels_last

SPECS = (FeatureSpec(16, 8), FeatureSpec(32, 16), FeatureSpec(64, 32))


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    randomize_bn(model, seed)
    return model.eval()


def _max_rel(a: list[Tensor], b: list[Tensor]) -> float:
    return max(((x - y).abs().max() / y.abs().max()).item() for x, y in zip(a, b, strict=True))


def test_channels_last_deploy_converts_inputs_once_and_keeps_values() -> None:
    neck = _randomize(necklace.build_neck("yolo_pafpn", SPECS))  # inputs feed concats: converted on entry
    feats = pyramid(SPECS, (97, 131), batch=2)
    before = [f.clone() for f in feats]
    deployed = deploy(neck, runtime="native")
    assert isinstance(deployed, NativeGraphNeck) and deployed.channels_last_inputs
    assert type(neck) is GraphNeck and not hasattr(neck, "channels_last_inputs")  # the original untouched
    copies = _check_channels_last_run(neck, deployed, feats)
    assert all(torch.equal(a, b) and a.is_contiguous() for a, b in zip(feats, before, strict=True))  # inputs intact
    # the input maps are converted first, on entry, in order (later same-shape copies are C2f's channel splits)
    assert copies[: len(feats)] == [list(f.shape) for f in feats]
    nchw = deploy(neck, runtime="native", channels_last=False)
    assert not nchw.channels_last_inputs
    with torch.no_grad():
        assert all(o.is_contiguous() for o in nchw(feats))


def test_channels_last_yolo_reads_single_nchw_inputs_in_place() -> None:
    """A single image's backbone maps feed only C2f concat nodes: their GEMMs read them NCHW (no conversion
    copy on entry); a batch is still converted once on entry (an NCHW batch is not one matrix)."""
    neck = _randomize(necklace.build_neck("yolo_pafpn", SPECS))
    deployed = deploy(neck, runtime="native")
    (graph,) = [m for m in deployed.modules() if isinstance(m, NativeGraphNeck)]
    assert graph.channels_last_direct_single == {"C3", "C4", "C5"} and graph.channels_last_direct == frozenset()
    for batch in (1, 2):
        feats = pyramid(SPECS, (97, 131), batch=batch)
        copies = _check_channels_last_run(neck, deployed, feats)
        converted = [s for s in copies if s in [list(f.shape) for f in feats]]
        assert converted == ([] if batch == 1 else [list(f.shape) for f in feats])


def _check_channels_last_run(neck: nn.Module, deployed: nn.Module, feats: list[Tensor]) -> list[list[int]]:
    """Run both necks; assert the deployed outputs are channels_last and equal the original's; return the
    same-shape 4-d copies one more deployed call makes (layout conversions, C2f splits)."""
    with torch.no_grad():
        ref, out = neck(feats), deployed(feats)
        with torch.profiler.profile(record_shapes=True) as prof:
            deployed(feats)
    assert all(o.is_contiguous(memory_format=torch.channels_last) for o in out)
    assert _max_rel(out, ref) <= 1e-5
    return _map_copies(prof)


def _map_copies(prof: torch.profiler.profile) -> list[list[int]]:
    return [
        e.input_shapes[0]
        for e in prof.events()
        if e.name == "aten::copy_" and len(e.input_shapes[0]) == 4 and e.input_shapes[0] == e.input_shapes[1]
    ]


@pytest.mark.parametrize("name", ["fpn", "pafpn"])
def test_channels_last_laterals_read_nchw_maps_without_converting_them(name: str) -> None:
    """Lateral 1x1 convs become PointwiseToChannelsLast: one GEMM from the NCHW map to a channels_last output, so
    inputs read only by laterals are never converted; turning channels_last off restores the convs."""
    neck = _randomize(necklace.build_neck(name, SPECS, width=16))
    feats = pyramid(SPECS, (97, 131), batch=2)
    deployed = deploy(neck, runtime="native")
    (graph,) = [m for m in deployed.modules() if isinstance(m, NativeGraphNeck)]
    assert graph.channels_last_direct == {"C3", "C4", "C5"}
    assert sum(isinstance(m, PointwiseToChannelsLast) for m in deployed.modules()) == len(SPECS)
    with torch.no_grad():
        ref = neck(feats)
        with torch.profiler.profile(record_shapes=True) as prof:
            out = deployed(feats)
    assert _map_copies(prof) == []
    assert all(o.is_contiguous(memory_format=torch.channels_last) for o in out)
    assert _max_rel(out, ref) <= 1e-5
    use_channels_last(graph, False)
    assert not any(isinstance(m, PointwiseToChannelsLast) for m in deployed.modules())
    assert graph.channels_last_direct == frozenset()
    with torch.no_grad():
        assert _max_rel(deployed(feats), ref) <= 1e-5


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_to_channels_last_equals_the_conv(batch: int, bias: bool) -> None:
    conv = nn.Conv2d(12, 6, 1, bias=bias)
    fast = PointwiseToChannelsLast.from_conv(conv)
    assert fast.weight is conv.weight and set(fast.state_dict()) == set(conv.state_dict())
    x = torch.randn(batch, 12, 7, 9)
    with torch.no_grad():
        ref, got = conv(x), fast(x)
        got_cl = fast(x.contiguous(memory_format=torch.channels_last))  # already channels_last: the conv path
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_cl, ref, rtol=1e-5, atol=1e-5)
    y = fast(x.requires_grad_())  # autograd: the plain conv, gradients as usual
    y.sum().backward()
    assert x.grad is not None and y.is_contiguous()
    assert torch.equal(fast.to_conv().weight, conv.weight)
    with pytest.raises(ValueError, match=r"1x1 stride-1 .* kernel \(3, 3\)"):
        PointwiseToChannelsLast.from_conv(nn.Conv2d(4, 4, 3))


@pytest.mark.parametrize("name", necklace.list_necks())
def test_every_registered_neck_deploys_native_and_matches(name: str) -> None:
    specs = SPECS if name not in ("rep_bifpan",) else (FeatureSpec(8, 4), *SPECS)
    opts = {"width": 16} if name in ("fpn", "pafpn", "nasfpn", "augfpn") else {}
    neck = _randomize(necklace.build_neck(name, specs, **opts))
    feats = pyramid(specs, (97, 131), batch=1)
    fast = deploy(neck, runtime="native")
    report = fast.deploy_report
    assert report.runtime == "native" and report.native.build.loaded and report.native.total > 0
    with torch.no_grad():
        ref, out = neck(feats), fast(feats)
    assert [o.shape for o in out] == [r.shape for r in ref]
    assert _max_rel(out, ref) <= 1e-3


@pytest.mark.parametrize("name", ["yolo_pafpn", "rep_pafpn", "fpn"])
def test_a_neck_built_under_inference_mode_deploys_native(name: str) -> None:
    """Weights made under ``torch.inference_mode()`` have no version counter; the packed-weight caches key them
    by identity instead (this raised "Inference tensors do not track version counter" from inside the caches)."""
    specs = (FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32))
    opts = {"width": 32} if name == "fpn" else {}
    with torch.inference_mode():
        neck = necklace.build_neck(name, specs, **opts).eval()
        feats = pyramid(specs, (160, 160), batch=1)
        ref = neck(feats)
        fast = deploy(neck, runtime="native", example_inputs=feats)
        assert fast.deploy_report.native.total > 0
        assert _max_rel(fast(feats), ref) <= 1e-4
        assert _max_rel(fast(feats), ref) <= 1e-4  # (the cached panels again)


def test_native_nodes_skip_identity_edges_but_plain_nodes_call_every_edge() -> None:
    neck = _randomize(necklace.build_neck("fpn", SPECS, width=16))
    calls: list[str] = []
    for name, node in neck.nodes.items():
        for k, edge in enumerate(node.edges):
            edge.register_forward_hook(lambda m, i, o, tag=f"{name}.{k}": calls.append(tag))
    feats = pyramid(SPECS, (64, 64), batch=1)
    with torch.no_grad():
        neck(feats)
    plain_calls = len(calls)
    assert plain_calls == sum(len(n.edges) for n in neck.nodes.values())  # hooks fire on every edge, no_grad too
    fast = deploy(neck, runtime="native")
    assert all(isinstance(n, NativeNode) for n in fast.nodes.values())


def test_inference_scope_checks_once_and_still_follows_autograd() -> None:
    from necklace.deploy.native import guard

    with torch.enable_grad(), guard.inference_scope() as on:
        assert not on and guard.inference_paths_off()  # autograd on: never entered
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="inside"):
            with guard.inference_scope() as on:
                assert on and not guard.inference_paths_off()
                with torch.enable_grad():
                    assert guard.inference_paths_off()  # autograd is still looked at inside
                raise RuntimeError("inside")
        assert getattr(guard._scope, "depth", 0) == 0  # closed on the way out of an error
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert guard.inference_paths_off()  # outside a scope: the full check
