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


def test_named_runtimes_give_the_same_structure_every_time() -> None:
    neck = _randomize(necklace.build_neck("yolo_pafpn", SPECS))
    for runtime in ("torch", "native"):
        a, b = deploy(neck, runtime=runtime), deploy(neck, runtime=runtime)
        assert [type(m).__name__ for m in a.modules()] == [type(m).__name__ for m in b.modules()]
        report = DeployReport.of(a)
        assert report.runtime == runtime and report.latency_ms is None and report.errors is None
    plain = deploy(neck)
    assert type(plain) is GraphNeck and not DeployReport.of(plain).channels_last
    assert {type(m) for m in plain.modules() if isinstance(m, nn.Conv2d)} == {nn.Conv2d}  # plain torch convs
    forced = deploy(neck, channels_last=True)
    report = DeployReport.of(forced)
    assert report.channels_last and report.max_rel_diff is not None and report.max_rel_diff <= 1e-4
    conv = next(m.conv for m in forced.modules() if isinstance(m, ConvNormAct) and m.kernel == 3)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_unknown_or_unavailable_runtimes_say_what_to_do() -> None:
    neck = necklace.build_neck("fpn", SPECS, width=8).eval()
    with pytest.raises(ValueError, match=r"unknown runtime 'onnx'; choose one of \['torch', 'native'"):
        deploy(neck, runtime="onnx")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"tensorrt.*CUDA"):
            deploy(neck, runtime="tensorrt")
    available = necklace.available_runtimes()
    assert set(available) == {"torch", "native", "onnxruntime", "openvino", "inductor", "tensorrt"}


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
