"""Re-parameterisable blocks: RepConv/RepBlock equality before and after ``reparameterize()``, the fold order,
``deploy=True`` loading of fused state dicts, GhostConv, and the block-table builders."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import randomize_bn
from torch import Tensor, nn

from necklace import ConvCfg
from necklace.layers import BLOCKS, GhostConv, RepBlock, RepConv, build_block, fold_bn


def _rel(a: Tensor, b: Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _random_rep(m: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters, and a non-trivial alpha, then eval()."""
    randomize_bn(m, seed)
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in m.named_parameters():
        if name.endswith("alpha"):
            p.data.copy_(torch.rand(1, generator=g) + 0.5)
    return m.eval()


CASES = {
    "identity": dict(cin=8, cout=8),
    "no_identity": dict(cin=8, cout=8, identity=False),
    "alpha_identity": dict(cin=8, cout=8, alpha=True),
    "alpha_widen": dict(cin=8, cout=16, alpha=True),
    "stride2": dict(cin=8, cout=16, stride=2),
    "stride2_same_ch": dict(cin=8, cout=8, stride=2, alpha=True),
    "groups_identity": dict(cin=8, cout=8, groups=4),
    "groups_widen": dict(cin=8, cout=16, groups=2, alpha=True),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
@pytest.mark.parametrize("size", [(9, 13), (6, 7)], ids=["9x13", "6x7"])
def test_reparameterize_keeps_outputs(case: dict, size: tuple[int, int]) -> None:
    cin, cout = case["cin"], case["cout"]
    stride, groups = case.get("stride", 1), case.get("groups", 1)
    m = _random_rep(
        RepConv(
            cin,
            cout,
            stride=stride,
            groups=groups,
            identity=case.get("identity", True),
            alpha=case.get("alpha", False),
            cfg=ConvCfg(norm="bn", act="silu", norm_eps=1e-3),
        )
    )
    assert (m.identity is not None) == (case.get("identity", True) and cin == cout and stride == 1)
    assert (m.alpha is not None) == case.get("alpha", False)
    x = torch.randn(2, cin, *size)
    with torch.no_grad():
        before = m(x)
        m.reparameterize()
        after = m(x)
    assert m.deployed and m.conv is not None and m.conv.bias is not None
    assert not any(c.training for c in m.modules())
    assert not any(isinstance(c, nn.BatchNorm2d) for c in m.modules())
    assert sorted(k for k in m.state_dict()) == ["conv.bias", "conv.weight"]
    assert after.shape == before.shape == (2, cout, -(-size[0] // stride), -(-size[1] // stride))
    assert _rel(after, before) <= 1e-4


def test_reparameterize_is_idempotent_and_also_works_after_conv_bn_fusion() -> None:
    m = _random_rep(RepConv(8, 8, alpha=True))
    x = torch.randn(1, 8, 7, 5)
    with torch.no_grad():
        ref = m(x)
        assert m.conv_kxk is not None and m.conv_1x1 is not None
        m.conv_kxk.fuse()  # YOLOv6 flow: Conv+BN folding first, then the branch sum
        m.conv_1x1.fuse()
        assert _rel(m(x), ref) <= 1e-5
        m.reparameterize()
        w = m.conv.weight.clone() if m.conv is not None else None
        m.reparameterize()
        assert m.conv is not None and torch.equal(m.conv.weight, w)
        assert _rel(m(x), ref) <= 1e-4


@pytest.mark.parametrize("case", ["identity", "alpha_widen", "stride2", "groups_identity"])
def test_deploy_constructor_loads_a_fused_state_dict(case: str) -> None:
    c = CASES[case]
    kwargs = dict(stride=c.get("stride", 1), groups=c.get("groups", 1), alpha=c.get("alpha", False))
    trained = _random_rep(RepConv(c["cin"], c["cout"], **kwargs))
    x = torch.randn(1, c["cin"], 11, 9)
    with torch.no_grad():
        ref = trained(x)
        trained.reparameterize()
    fresh = RepConv(c["cin"], c["cout"], deploy=True, **kwargs).eval()
    assert fresh.deployed and set(fresh.state_dict()) == {"conv.weight", "conv.bias"}
    fresh.load_state_dict(trained.state_dict())  # strict: same keys, same shapes
    with torch.no_grad():
        assert _rel(fresh(x), ref) <= 1e-4


def test_rep_block_deploy_constructor_loads_a_fused_state_dict() -> None:
    trained = _random_rep(RepBlock(8, 16, n=3, alpha=True))
    x = torch.randn(1, 8, 9, 7)
    with torch.no_grad():
        ref = trained(x)
        trained.reparameterize()
        assert _rel(trained(x), ref) <= 1e-4
    fresh = RepBlock(8, 16, n=3, alpha=True, deploy=True).eval()
    fresh.load_state_dict(trained.state_dict())
    with torch.no_grad():
        assert _rel(fresh(x), ref) <= 1e-4


def test_bn_must_be_folded_per_branch_before_summing() -> None:
    """Summing the raw branch kernels and folding one BN afterwards (YOLOv6's ``switch_to_deploy`` on an
    unfused model is the same mistake) does not reproduce the block; the right order does."""
    m = _random_rep(RepConv(8, 8, cfg=ConvCfg(norm="bn", act=None)))
    assert m.conv_kxk is not None and m.conv_1x1 is not None and m.identity is not None
    x = torch.randn(2, 8, 9, 13)
    with torch.no_grad():
        ref = m(x)
        raw = m.conv_kxk.conv.weight + F.pad(m.conv_1x1.conv.weight, [1, 1, 1, 1])
        eye = torch.zeros_like(raw)
        eye[torch.arange(8), torch.arange(8), 1, 1] = 1.0
        w_wrong, b_wrong = fold_bn(raw + eye, None, m.conv_kxk.norm)  # type: ignore[arg-type]
        wrong = F.conv2d(x, w_wrong, b_wrong, padding=1)
        w_right, b_right = m.fused_kernel_bias()
        right = F.conv2d(x, w_right, b_right, padding=1)
    assert _rel(right, ref) <= 1e-4
    assert _rel(wrong, ref) > 1e-2


def test_fold_bn_uses_the_bn_eps() -> None:
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    bn = nn.BatchNorm2d(6, eps=1e-1).eval()
    randomize_bn(bn)
    bn.running_var.fill_(1e-2)  # eps matters at this variance
    x = torch.randn(1, 4, 5, 7)
    w, b = fold_bn(conv.weight, conv.bias, bn)
    with torch.no_grad():
        assert _rel(F.conv2d(x, w, b, padding=1), bn(conv(x))) <= 1e-5
    bn.eps = 1e-5
    w2, _ = fold_bn(conv.weight, conv.bias, bn)
    assert not torch.allclose(w, w2)


def test_fold_bn_errors() -> None:
    conv = nn.Conv2d(4, 6, 1)
    with pytest.raises(TypeError, match="BatchNorm"):
        fold_bn(conv.weight, None, nn.GroupNorm(2, 6))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="running statistics"):
        fold_bn(conv.weight, None, nn.BatchNorm2d(6, track_running_stats=False))
    with pytest.raises(ValueError, match="output channels"):
        fold_bn(conv.weight, None, nn.BatchNorm2d(5))


def test_rep_blocks_need_batchnorm() -> None:
    with pytest.raises(ValueError, match="norm='bn'"):
        RepConv(8, 8, cfg=ConvCfg(norm="gn", act="relu"))
    for name in ("repconv", "rep_block"):
        with pytest.raises(ValueError, match="norm='bn'"):
            build_block(name, 8, 8, ConvCfg(norm=None, act="relu"))
    with pytest.raises(ValueError, match="groups"):
        RepConv(8, 6, groups=4)
    with pytest.raises(ValueError, match="n >= 1"):
        RepBlock(8, 8, n=0)


def test_rep_block_semantics_and_training_backward() -> None:
    m = RepBlock(8, 16, n=3, alpha=True)
    convs = list(m.blocks)
    assert [(c.in_channels, c.out_channels) for c in convs] == [(8, 16), (16, 16), (16, 16)]
    assert [c.identity is not None for c in convs] == [False, True, True]
    y = m(torch.randn(2, 8, 5, 7))
    y.square().mean().backward()
    assert convs[0].alpha is not None and convs[0].alpha.grad is not None


def test_ghost_conv() -> None:
    m = GhostConv(8, 16, kernel=3, cfg=ConvCfg(norm="bn", act="silu"))
    assert m(torch.randn(1, 8, 9, 13)).shape == (1, 16, 9, 13)
    assert m.cv2.conv.groups == 8
    assert GhostConv(8, 16, stride=2)(torch.randn(1, 8, 9, 13)).shape == (1, 16, 5, 7)
    with pytest.raises(ValueError, match="even"):
        GhostConv(8, 15)


def test_builders_are_registered() -> None:
    cfg = ConvCfg(norm="bn", act="relu")
    assert {"repconv", "rep_block", "ghost"} <= set(BLOCKS)
    x = torch.randn(1, 8, 7, 9)
    rep = build_block("repconv", 8, 8, cfg, alpha=True, identity=False)
    assert isinstance(rep, RepConv) and rep.alpha is not None and rep.identity is None
    block = build_block("rep_block", 8, 16, cfg, n=2)
    assert isinstance(block, RepBlock) and len(block.blocks) == 2
    ghost = build_block("ghost", 8, 16, cfg.with_(norm="gn"), kernel=3)
    assert isinstance(ghost, GhostConv)
    for m in (rep, block, ghost):
        assert m(x).shape[-2:] == (7, 9)
