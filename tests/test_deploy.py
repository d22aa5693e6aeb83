"""``necklace.deploy``: Conv+BN folding, re-parameterisation and frozen fusion weights on a copy, verified equal
to the original model (every registered neck, custom graphs with rep blocks, plain torch modules)."""

from __future__ import annotations

import warnings

import pytest
import torch
from tests.helpers import pyramid, randomize_bn
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

import necklace
from necklace import ConvCfg, DeployReport, FeatureSpec, GraphNeck, NeckGraph, Node
from necklace.deploy import deploy, freeze_fusions, fuse_conv_bn
from necklace.layers import ConvNormAct, Fuse, RepBlock, RepConv, SeparableConv

SPECS = (FeatureSpec(16, 8), FeatureSpec(32, 16), FeatureSpec(64, 32))


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics, fusion weights and RepConv alphas (so that every transformation matters); eval()."""
    randomize_bn(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, Fuse) and m.weight is not None:
            m.weight.data.copy_(torch.rand(m.n_inputs, generator=g) + 0.1)
        if isinstance(m, RepConv) and m.alpha is not None:
            m.alpha.data.copy_(torch.rand(1, generator=g) + 0.5)
    return model.eval()


def _max_rel(a: list[Tensor], b: list[Tensor]) -> float:
    return max(((x - y).abs().max() / y.abs().max()).item() for x, y in zip(a, b, strict=True))


def _assert_deployed(model: nn.Module) -> None:
    assert not any(isinstance(m, _BatchNorm) for m in model.modules()), "a BatchNorm survived deploy()"
    fuses = [m for m in model.modules() if isinstance(m, Fuse)]
    assert all(m.weight is None for m in fuses), "a trainable fusion weight survived deploy()"
    assert all(m.deployed for m in model.modules() if isinstance(m, RepConv))
    assert not model.training


def test_deploy_refuses_a_training_model() -> None:
    neck = necklace.build_neck("yolo_pafpn", SPECS)
    with pytest.raises(ValueError, match=r"call model\.eval\(\) first: BN folding uses running statistics"):
        deploy(neck)
    neck.eval()
    neck.nodes.train()  # one training submodule is enough to refuse
    with pytest.raises(ValueError, match=r"model\.eval\(\) first"):
        deploy(neck)
    with pytest.raises(ValueError, match=r"model\.eval\(\) first"):
        fuse_conv_bn(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)))


def test_deploy_leaves_the_original_untouched() -> None:
    neck = _randomize(necklace.build_neck("bifpn", SPECS, width=16, repeats=2))
    before = {k: v.clone() for k, v in neck.state_dict().items()}
    n_bn = sum(isinstance(m, _BatchNorm) for m in neck.modules())
    deployed = deploy(neck, channels_last=False)
    assert deployed is not neck
    after = neck.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert sum(isinstance(m, _BatchNorm) for m in neck.modules()) == n_bn > 0
    assert any(isinstance(m, Fuse) and isinstance(m.weight, nn.Parameter) for m in neck.modules())
    _assert_deployed(deployed)


@pytest.mark.parametrize("name", necklace.list_necks())
def test_deploy_every_registered_neck(name: str) -> None:
    torch.manual_seed(0)
    neck = _randomize(necklace.build_neck(name, SPECS))
    deployed = deploy(neck, channels_last=False)
    report = DeployReport.of(deployed)
    assert report.checked and report.max_rel_diff is not None and report.max_rel_diff <= 1e-4
    _assert_deployed(deployed)
    assert isinstance(deployed, type(neck))
    with torch.no_grad():  # a second, independent size
        feats = pyramid(SPECS, (64, 72), batch=1, seed=3)
        assert _max_rel(deployed(feats), neck(feats)) <= 1e-4


def test_deploy_softmax_bifpn_freezes_the_weights() -> None:
    neck = _randomize(necklace.build_neck("bifpn", SPECS, width=16, fuse="softmax"))
    deployed = deploy(neck, channels_last=False)
    report = DeployReport.of(deployed)
    assert report.frozen_fusions > 0 and report.folded_bn > 0
    assert report.max_rel_diff is not None and report.max_rel_diff <= 1e-4
    assert not any(n.endswith("fuse.weight") for n, _ in deployed.named_parameters())
    assert any(n.endswith("fuse.frozen_weight") for n in deployed.state_dict())
    _assert_deployed(deployed)


def _rep_graph(conv: ConvCfg | None = None) -> NeckGraph:
    return NeckGraph(
        in_specs=SPECS,
        nodes=(
            Node("P5", 5, ("C5",), channels=32, block="rep_block", block_args={"n": 2, "alpha": True}),
            Node("P4", 4, ("C4", "P5"), channels=32, fuse="fast", block="repconv", block_args={"act": "silu"}),
            Node("P3", 3, ("C3", "P4"), channels=16, fuse="concat", block="ghost", block_args={"kernel": 3}),
            Node("N4", 4, ("P3", "P4"), channels=32, fuse="fast", block="repconv", block_args={"identity": False}),
        ),
        outputs=("P3", "N4", "P5"),
        conv=conv if conv is not None else ConvCfg(norm="bn", act="relu"),
        align=ConvCfg(norm="bn"),
    )


def test_custom_graph_with_rep_blocks_runs_deploys_and_matches() -> None:
    neck = GraphNeck(_rep_graph())
    assert sum(isinstance(m, RepConv) for m in neck.modules()) == 4
    assert any(isinstance(m, RepBlock) for m in neck.modules())
    _randomize(neck)
    feats = pyramid(SPECS, (97, 131))
    with torch.no_grad():
        ref = neck(feats)
    assert [tuple(o.shape) for o in ref] == [(2, 16, 13, 17), (2, 32, 7, 9), (2, 32, 4, 5)]
    deployed = deploy(neck, (feats,), channels_last=False)
    report = DeployReport.of(deployed)
    assert report.reparameterized >= 4 and report.folded_bn > 0 and report.frozen_fusions == 2
    assert report.max_rel_diff is not None and report.max_rel_diff <= 1e-4
    _assert_deployed(deployed)
    with torch.no_grad():
        assert _max_rel(deployed(feats), ref) <= 1e-4


def test_rep_blocks_in_a_graph_without_batchnorm_fail_clearly() -> None:
    with pytest.raises(ValueError, match="norm='bn'"):
        GraphNeck(_rep_graph(conv=ConvCfg(norm=None, act="relu")))


def test_deploy_plain_torch_sequential() -> None:
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    _randomize(m)
    x = torch.randn(2, 3, 11, 13)
    deployed = deploy(m, x, channels_last=False)
    assert [type(c).__name__ for c in deployed] == ["Conv2d", "Identity", "ReLU", "Conv2d"]
    report = DeployReport.of(deployed)
    assert report.folded_bn == 1 and report.max_rel_diff is not None and report.max_rel_diff <= 1e-5
    assert isinstance(m[1], nn.BatchNorm2d)  # original untouched
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        unchecked = deploy(m, channels_last=False)
    assert not DeployReport.of(unchecked).checked
    assert any("not checked" in str(w.message) for w in caught)


def test_deploy_raises_when_outputs_differ() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.conv(x)

        def reparameterize(self) -> None:  # a wrong re-parameterisation
            with torch.no_grad():
                self.conv.weight.mul_(2)

    with pytest.raises(RuntimeError, match="differs from the original"):
        deploy(Broken().eval(), torch.randn(1, 3, 5, 5), channels_last=False)


def test_channels_last_auto_and_forced() -> None:
    neck = _randomize(necklace.build_neck("yolo_pafpn", SPECS))
    auto = DeployReport.of(deploy(neck))
    assert auto.latency_ms is not None and {"contiguous", "channels_last"} <= set(auto.latency_ms)
    best = min(auto.latency_ms, key=auto.latency_ms.__getitem__)
    assert auto.channels_last == (best != "contiguous")
    forced = deploy(neck, channels_last=True, fused=True)
    report = DeployReport.of(forced)
    assert report.channels_last and report.latency_ms is None and report.fused_conv_act is True
    assert report.max_rel_diff is not None and report.max_rel_diff <= 1e-4
    conv = next(m.conv for m in forced.modules() if isinstance(m, ConvNormAct) and m.kernel == 3)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_fuse_conv_bn_copy_and_module_fuse_methods() -> None:
    m = nn.Sequential(
        ConvNormAct(4, 8, 3, stride=2, cfg=ConvCfg(norm="bn", act="silu")),
        SeparableConv(8, 8, cfg=ConvCfg(norm="bn", act="relu"), act_first=True),
        ConvNormAct(8, 8, 1, cfg=ConvCfg(norm="gn", act="relu")),  # GroupNorm cannot be folded: left alone
    )
    _randomize(m)
    x = torch.randn(1, 4, 9, 11)
    fused = fuse_conv_bn(m)
    assert isinstance(m[0].norm, nn.BatchNorm2d) and isinstance(fused[0].norm, nn.Identity)
    assert isinstance(fused[1].norm, nn.Identity) and fused[1].pw.bias is not None
    assert isinstance(fused[2].norm, nn.GroupNorm)
    assert fused[0].fuse() is False  # idempotent
    assert not any(c.training for c in fused.modules())
    with torch.no_grad():
        assert _max_rel([fused(x)], [m(x)]) <= 1e-5
    assert fuse_conv_bn(fused, inplace=True) is fused


@pytest.mark.parametrize("mode", ["fast", "softmax"])
@pytest.mark.parametrize("n", [1, 3])
def test_fuse_freeze(mode: str, n: int) -> None:
    f = Fuse(mode, n)
    assert f.weight is not None
    f.weight.data.copy_(torch.rand(n) + 0.1)
    xs = [torch.randn(1, 4, 3, 5) for _ in range(n)]
    ref = f(xs)
    assert "frozen_weight" not in f.state_dict()
    assert freeze_fusions(f) == 1 and freeze_fusions(f) == 0
    assert f.weight is None and not list(f.parameters())
    assert set(f.state_dict()) == {"frozen_weight"}
    assert torch.equal(f(xs), ref)


@pytest.mark.parametrize("basic", ["conv", "repconv"])
def test_elan_block_in_a_graph_deploys_and_matches(basic: str) -> None:
    graph = NeckGraph(
        in_specs=SPECS,
        nodes=(
            Node("T4", 4, ("C5", "C4"), channels=32, fuse="concat", block="elan", block_args={"basic": basic}),
            Node("N3", 3, ("T4", "C3"), channels=16, fuse="concat", block="elan", block_args={"stages": 3}),
        ),
        outputs=("N3", "T4"),
        conv=ConvCfg(norm="bn", act="silu"),
    )
    neck = GraphNeck(graph)
    assert (sum(isinstance(m, RepConv) for m in neck.modules()) > 0) == (basic == "repconv")
    _randomize(neck)
    feats = pyramid(SPECS, (97, 131))
    with torch.no_grad():
        ref = neck(feats)
    deployed = deploy(neck, (feats,), channels_last=False)
    _assert_deployed(deployed)
    with torch.no_grad():
        assert _max_rel(deployed(feats), ref) <= 1e-4
    assert NeckGraph.from_dict(graph.to_dict()) == graph


def test_channels_last_deploy_converts_inputs_once_and_keeps_values() -> None:
    neck = _randomize(necklace.build_neck("yolo_pafpn", SPECS))  # inputs feed concats: converted on entry
    feats = pyramid(SPECS, (97, 131), batch=2)
    before = [f.clone() for f in feats]
    deployed = deploy(neck, channels_last=True)
    graph_necks = [m for m in deployed.modules() if isinstance(m, GraphNeck)]
    assert graph_necks and all(m.channels_last_inputs for m in graph_necks)
    assert not any(m.channels_last_inputs for m in neck.modules() if isinstance(m, GraphNeck))  # original untouched
    copies = _check_channels_last_run(neck, deployed, feats)
    assert all(torch.equal(a, b) and a.is_contiguous() for a, b in zip(feats, before, strict=True))  # inputs intact
    # the input maps are converted first, on entry, in order (later same-shape copies are C2f's channel splits)
    assert copies[: len(feats)] == [list(f.shape) for f in feats]
    necklace.set_channels_last(deployed, False)
    assert not any(m.channels_last_inputs for m in deployed.modules() if isinstance(m, GraphNeck))
    with torch.no_grad():
        assert all(o.is_contiguous() for o in deployed(feats))


def test_channels_last_yolo_reads_single_nchw_inputs_in_place() -> None:
    """A single image's backbone maps feed only C2f concat nodes: their GEMMs read them NCHW (no conversion
    copy on entry); a batch is still converted once on entry (an NCHW batch is not one matrix)."""
    neck = _randomize(necklace.build_neck("yolo_pafpn", SPECS))
    deployed = deploy(neck, channels_last=True)
    (graph,) = [m for m in deployed.modules() if isinstance(m, GraphNeck)]
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
    inputs read only by laterals are never converted; set_channels_last(False) restores plain Conv2d."""
    from necklace.layers import PointwiseToChannelsLast

    neck = _randomize(necklace.build_neck(name, SPECS, width=16))
    feats = pyramid(SPECS, (97, 131), batch=2)
    deployed = deploy(neck, channels_last=True)
    (graph,) = [m for m in deployed.modules() if isinstance(m, GraphNeck)]
    assert graph.channels_last_direct == {"C3", "C4", "C5"}
    assert sum(isinstance(m, PointwiseToChannelsLast) for m in deployed.modules()) == len(SPECS)
    with torch.no_grad():
        ref = neck(feats)
        with torch.profiler.profile(record_shapes=True) as prof:
            out = deployed(feats)
    assert _map_copies(prof) == []
    assert all(o.is_contiguous(memory_format=torch.channels_last) for o in out)
    assert _max_rel(out, ref) <= 1e-5
    again = deploy(deployed, channels_last=False)  # re-deploying a channels_last model undoes the layout
    assert not any(isinstance(m, PointwiseToChannelsLast) for m in again.modules())
    assert not any(m.channels_last_inputs for m in again.modules() if isinstance(m, GraphNeck))
    necklace.set_channels_last(deployed, False)
    assert not any(isinstance(m, PointwiseToChannelsLast) for m in deployed.modules())
    assert graph.channels_last_direct == frozenset()
    with torch.no_grad():
        assert _max_rel(deployed(feats), ref) <= 1e-5


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_to_channels_last_equals_the_conv(batch: int, bias: bool) -> None:
    from necklace.layers import PointwiseToChannelsLast

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
