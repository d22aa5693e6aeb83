"""DetectoRS: ConvAWS2d / SAConv2d identities and mmcv parity, ASPP, feedback blocks, RecursiveFPN identities and
mmdet RFP parity (through the mmcv ext-loader shim when mmdet is installed)."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import randomize_bn
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.ops import deform_conv2d

from necklace import FeatureSpec
from necklace.layers.aspp import ASPP
from necklace.layers.sac import ConvAWS2d, SAConv2d, convert_to_aws, convert_to_sac
from necklace.necks import fpn
from necklace.necks.rfp import FeedbackBackbone, FeedbackBlock, RecursiveFPN, register_feedback_block, sac_backbone


def _mmcv():
    """mmcv's SAConv2d / ConvAWS2d and mmdet's RFP / DetectoRS_ResNet, imported through the ext-loader shim."""
    pytest.importorskip("mmdet")
    from tests._mmdet_shim import import_mmdet_necks

    import_mmdet_necks()
    from mmcv.cnn import ConvAWS2d as MMConvAWS2d
    from mmcv.ops.saconv import SAConv2d as MMSAConv2d

    return MMConvAWS2d, MMSAConv2d


def _randomize(module: nn.Module, seed: int, scale: float = 0.1, skip: tuple[str, ...] = ()) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not any(s in name for s in skip):
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def _tiny_resnet(block: type = BasicBlock, seed: int = 0, **kwargs) -> ResNet:
    torch.manual_seed(seed)
    net = ResNet(block, [1, 1, 1, 1], **kwargs)
    randomize_bn(net, seed)
    return net.eval()


# --------------------------------------------------------------------------- ConvAWS2d
def test_aws_load_reconstructs_the_loaded_kernel() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=True)
    aws = ConvAWS2d(16, 32, 3, stride=2, padding=1, bias=True)
    result = aws.load_state_dict(conv.state_dict())  # gamma/beta absent: rebuilt, not reported missing
    assert not result.missing_keys and not result.unexpected_keys
    assert (aws.standardized_weight() - conv.weight).abs().max() < 1e-6
    x = torch.randn(2, 16, 15, 20)
    assert (aws(x) - conv(x)).abs().max() < 1e-5
    # a checkpoint with gamma/beta keeps them
    sd = aws.state_dict()
    sd["weight_gamma"] = torch.full_like(sd["weight_gamma"], 2.0)
    aws2 = ConvAWS2d(16, 32, 3, stride=2, padding=1)
    aws2.load_state_dict(sd)
    assert torch.equal(aws2.weight_gamma, sd["weight_gamma"])
    # freshly built: plain weight standardisation
    fresh = ConvAWS2d(16, 32, 3)
    w = fresh.standardized_weight().flatten(1)
    torch.testing.assert_close(w.mean(1), torch.zeros(32), atol=1e-6, rtol=0)
    assert "weight_gamma" in dict(fresh.named_buffers()) and "weight_gamma" not in dict(fresh.named_parameters())


def test_aws_matches_mmcv() -> None:
    MMConvAWS2d, _ = _mmcv()
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=2, dilation=2, bias=False)
    ref, ours = (
        MMConvAWS2d(8, 16, 3, padding=2, dilation=2, bias=False),
        ConvAWS2d(8, 16, 3, padding=2, dilation=2, bias=False),
    )
    ref.load_state_dict(conv.state_dict())
    ours.load_state_dict(conv.state_dict())
    assert torch.equal(ref.weight_gamma, ours.weight_gamma) and torch.equal(ref.weight_beta, ours.weight_beta)
    x = torch.randn(2, 8, 13, 17)
    assert (ref(x) - ours(x)).abs().max() < 1e-6
    fresh_ref, fresh = MMConvAWS2d(8, 16, 3), ConvAWS2d(8, 16, 3)
    fresh.load_state_dict(fresh_ref.state_dict())
    assert (fresh_ref(x) - fresh(x)).abs().max() < 1e-5


# --------------------------------------------------------------------------- SAConv2d
@pytest.mark.parametrize(("stride", "dilation"), [(1, 1), (2, 1), (1, 2)])
def test_sac_at_init_equals_the_loaded_conv(stride: int, dilation: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(24, 16, 3, 3) * 0.1
    sac = SAConv2d(16, 24, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
    sac.load_state_dict({"weight": w}, strict=False)
    x = torch.randn(2, 16, 17, 22)
    want = F.conv2d(x, w, None, stride, dilation, dilation)
    got = sac(x)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-5


@pytest.mark.parametrize("stride", [1, 2])
def test_sac_matches_mmcv_with_random_switch_and_contexts(stride: int) -> None:
    _, MMSAConv2d = _mmcv()
    torch.manual_seed(0)
    ref = MMSAConv2d(16, 24, 3, stride=stride, padding=1, dilation=1, bias=False, use_deform=False)
    ref.load_state_dict({"weight": torch.randn(24, 16, 3, 3) * 0.1}, strict=False)
    _randomize(ref, seed=1)
    with torch.no_grad():
        ref.weight_gamma.uniform_(0.5, 1.5)
        ref.weight_beta.normal_(0, 0.01)
        ref.switch.bias.fill_(0.3)
    ours = SAConv2d(16, 24, 3, stride=stride, padding=1, dilation=1, bias=False)
    assert set(ours.state_dict()) == set(ref.state_dict())  # mmcv's keys
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 16, 15, 21)
    with torch.no_grad():
        diff = (ours(x) - ref(x)).abs().max().item()
    assert diff < 1e-5, diff


def test_deformable_sac_with_zero_offsets_equals_plain_sac() -> None:
    torch.manual_seed(0)
    plain = SAConv2d(8, 8, 3, stride=2, padding=1, bias=False)
    _randomize(plain, seed=3)
    deform = SAConv2d(8, 8, 3, stride=2, padding=1, bias=False, use_deform=True)
    assert {n for n, _ in deform.named_parameters()} - {n for n, _ in plain.named_parameters()} == {
        "offset_s.weight",
        "offset_s.bias",
        "offset_l.weight",
        "offset_l.bias",
    }
    deform.load_state_dict(plain.state_dict(), strict=False)  # offsets stay zero
    x = torch.randn(1, 8, 11, 14)
    with torch.no_grad():
        assert (deform(x) - plain(x)).abs().max() < 1e-5


def test_torchvision_deform_offsets_are_dy_dx_pairs() -> None:
    """Offset layout check (mmcv's convention: channel 2k is the y offset, 2k+1 the x offset of kernel tap k)."""
    torch.manual_seed(0)
    x, w = torch.randn(1, 4, 9, 10), torch.randn(5, 4, 3, 3)
    for channel, pad in ((0, (1, 1, 0, 2)), (1, (0, 2, 1, 1))):
        offset = torch.zeros(1, 18, 9, 10)
        offset[:, channel::2] = 1.0  # every tap samples one row lower (channel 0) / one column right (channel 1)
        want = F.conv2d(F.pad(x, pad), w)  # the 3x3 window moved by +1 in that direction, zeros beyond the border
        assert (deform_conv2d(x, offset, w, padding=(1, 1)) - want).abs().max() < 1e-5


def test_sac_handles_tiny_maps_and_autocast() -> None:
    torch.manual_seed(0)
    sac = SAConv2d(8, 8, 3, padding=1, bias=False)
    _randomize(sac, seed=4)
    assert sac(torch.randn(1, 8, 2, 2)).shape == (1, 8, 2, 2)  # reflect pad 2 is undefined here: replicate
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sac(torch.randn(2, 8, 9, 9) * 100)
    assert torch.isfinite(out).all()


def test_convert_helpers_keep_the_function() -> None:
    net = _tiny_resnet(Bottleneck, width_per_group=16)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = net(x)
        sac_backbone(net, use_deform=True, aws=True)
        after = net(x)
    assert (after - before).abs().max() < 1e-4 * before.abs().max()
    kinds = [type(m).__name__ for m in net.modules()]
    assert kinds.count("SAConv2d") == 3  # conv2 of the one Bottleneck in layer2..layer4
    assert kinds.count("Conv2d") == 3 * 5  # only SAC's own switch, contexts and offsets stay plain (as mmcv)
    assert kinds.count("ConvAWS2d") == 1 + 4 + 3 * 3  # stem; layer1 conv1-3 + downsample; conv1/conv3/downsample
    m = nn.Sequential(SAConv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1))
    assert convert_to_sac(m) == 1 and convert_to_aws(m) == 1
    assert [type(c).__name__ for c in m] == ["SAConv2d", "SAConv2d", "ConvAWS2d"]
    assert type(m[0].switch) is nn.Conv2d


# --------------------------------------------------------------------------- ASPP
def test_aspp_layout_and_param_count() -> None:
    aspp = ASPP(256, 64)
    # (256*64 + 64) for each 1x1 branch (d=1 and the global one) + (256*64*9 + 64) for d=3 and d=6
    assert sum(p.numel() for p in aspp.parameters()) == 2 * 16_448 + 2 * 147_520 == 327_936
    assert [tuple(c.kernel_size) for c in aspp.aspp] == [(1, 1), (3, 3), (3, 3), (1, 1)]
    y = aspp(torch.randn(1, 256, 7, 9))
    assert y.shape == (1, 256, 7, 9)
    assert torch.equal(y[:, 192:, :1, :1].expand(-1, -1, 7, 9), y[:, 192:])  # global branch is broadcast
    with pytest.raises(ValueError, match="end with 1"):
        ASPP(8, 2, (1, 3, 6))


def test_aspp_matches_mmdet() -> None:
    _mmcv()
    from mmdet.models.necks.rfp import ASPP as MMASPP

    torch.manual_seed(0)
    ref = MMASPP(32, 8)
    ours = ASPP(32, 8)
    ours.load_state_dict(ref.state_dict())
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in ours.parameters())
    x = torch.randn(2, 32, 9, 11)
    assert (ours(x) - ref(x)).abs().max() < 1e-6


# --------------------------------------------------------------------------- feedback blocks
@pytest.mark.parametrize("kind", ["tv_basic", "tv_bottleneck", "timm_basic", "timm_bottleneck"])
def test_feedback_is_added_before_the_final_activation(kind: str) -> None:
    torch.manual_seed(0)
    if kind.startswith("tv"):
        down = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
        if kind == "tv_basic":
            block: nn.Module = BasicBlock(16, 32, stride=2, downsample=down)
        else:
            block = Bottleneck(16, 8, stride=2, downsample=down)
    else:
        timm_resnet = pytest.importorskip("timm.models.resnet")
        down = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
        if kind == "timm_basic":
            block = timm_resnet.BasicBlock(16, 32, stride=2, downsample=down)
        else:
            block = timm_resnet.Bottleneck(16, 8, stride=2, downsample=down)
    randomize_bn(block)
    block.eval()
    fb_block = FeedbackBlock(block, feedback_channels=12, out_channels=32).eval()
    _randomize(fb_block.rfp_conv, seed=5)
    x, fb = torch.randn(2, 16, 9, 12), torch.randn(2, 12, 5, 6)
    with torch.no_grad():
        plain = block(x)
        got = fb_block(x, fb)
        # the block's output before its final ReLU is recoverable where it is positive: re-derive it
        pre = fb_block._residual(block, x)
        want = F.relu(pre + fb_block.rfp_conv(fb))
        assert torch.equal(fb_block(x), plain)
        assert torch.equal(F.relu(pre), plain)
    assert (got - want).abs().max() == 0
    assert not torch.equal(got, F.relu(plain + fb_block.rfp_conv(fb)))  # i.e. not added after the ReLU


def test_unknown_block_type_is_explained() -> None:
    class Weird(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="register_feedback_block"):
        FeedbackBlock(Weird(), 4, 4)


# --------------------------------------------------------------------------- RecursiveFPN identities
def _rfp(share: bool = False, steps: int = 2, **kw) -> RecursiveFPN:
    model = RecursiveFPN(_tiny_resnet(), steps=steps, width=32, levels=(2, 6), share_backbone=share, **kw)
    return model.eval()


def _plain(model: RecursiveFPN, x: torch.Tensor) -> list[torch.Tensor]:
    return model.neck(model.backbone(x))


@pytest.mark.parametrize("share", [False, True])
def test_rfp_with_zero_feedback_conv_equals_backbone_plus_fpn(share: bool) -> None:
    model = _rfp(share)
    _randomize(model.rfp_weight, seed=7)  # any gate: both steps are equal
    assert all(torch.count_nonzero(m.rfp_conv.weight) == 0 for m in model.modules() if isinstance(m, FeedbackBlock))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        steps, fused = model.unrolled(x)
        plain = _plain(model, x)
    for a, b, s2 in zip(fused, plain, steps[1], strict=True):
        assert torch.equal(s2, b)  # identical copies, zero feedback conv: step 2 == step 1
        assert (a - b).abs().max() < 1e-6  # w * x + (1 - w) * x rounds


def _feedback_model(share: bool = False) -> RecursiveFPN:
    model = _rfp(share)
    for m in model.modules():
        if isinstance(m, FeedbackBlock):
            _randomize(m.rfp_conv, seed=8, scale=0.05)
    return model


def _manual_step2(model: RecursiveFPN, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    p1 = _plain(model, x)
    fb = [None] + [model.rfp_aspp(p1[i]) for i in (1, 2, 3)]  # stages 2-4 <- ASPP(P3..P5)
    bb2 = model.backbone if model.share_backbone else model.rfp_backbones[0]
    return p1, model.neck(bb2(x, fb))


@pytest.mark.parametrize("share", [False, True])
def test_rfp_with_zero_gate_equals_the_mean_of_the_steps(share: bool) -> None:
    model = _feedback_model(share)
    assert torch.count_nonzero(model.rfp_weight.weight) == 0 and torch.count_nonzero(model.rfp_weight.bias) == 0
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        p1, p2 = _manual_step2(model, x)
        steps, fused = model.unrolled(x)
        out = model(x)
    for s1, s2, a, b, o in zip(p1, p2, steps[0], steps[1], fused, strict=True):
        assert torch.equal(s1, a) and torch.equal(s2, b)
        assert not torch.allclose(s1, s2)  # the feedback changed step 2
        assert torch.equal(o, (s1 + s2) / 2)  # sigmoid(0) = 1/2: exactly the mean
    assert all(torch.equal(a, b) for a, b in zip(out, fused, strict=True))


def test_rfp_gate_saturated_gives_one_step() -> None:
    model = _feedback_model()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        p1, p2 = _manual_step2(model, x)
        model.rfp_weight.bias.fill_(-1e4)  # w = sigmoid(-1e4) = 0: keep the old (step-1) pyramid
        old = model(x)
        model.rfp_weight.bias.fill_(1e4)  # w = 1: take the new step
        new = model(x)
    assert all(torch.equal(a, b) for a, b in zip(old, p1, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(new, p2, strict=True))


def test_rfp_one_step_is_plain_and_three_steps_run() -> None:
    model = _rfp(steps=1)
    assert model.rfp_aspp is None and len(model.rfp_backbones) == 0
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), _plain(model, x), strict=True))
    three = _rfp(steps=3)
    assert len(three.rfp_backbones) == 2
    assert [tuple(p.shape) for p in three(x)] == [
        (1, 32, 16, 16),
        (1, 32, 8, 8),
        (1, 32, 4, 4),
        (1, 32, 2, 2),
        (1, 32, 1, 1),
    ]


def test_rfp_copies_are_separate_and_counted() -> None:
    model = _rfp()
    n_bb = sum(p.numel() for p in model.backbone.parameters())
    n_copy = sum(p.numel() for p in model.rfp_backbones[0].parameters())
    # the copy adds one 1x1 feedback conv (32 -> C_stage, bias) to the first block of stages 2-4
    assert n_copy - n_bb == sum(32 * c + c for c in (128, 256, 512))
    p0 = dict(model.backbone.named_parameters())["stages.1.0.conv1.weight"]
    p1 = dict(model.rfp_backbones[0].named_parameters())["stages.1.0.block.conv1.weight"]
    assert torch.equal(p0, p1) and p0.data_ptr() != p1.data_ptr()
    shared = _rfp(share=True)
    assert sum(p.numel() for p in shared.parameters()) == sum(p.numel() for p in model.parameters()) - n_bb


def test_rfp_gradients_and_checkpointing() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for ckpt in (False, True):
        model = _feedback_model()
        model.grad_checkpoint = ckpt
        model.train()
        for m in model.modules():  # BN in eval: checkpointing re-runs stages, which would update stats twice
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        _randomize(model.rfp_weight, seed=9)
        loss = sum(o.square().mean() for o in model(x))
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, missing
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-4, atol=1e-6)


def test_rfp_with_sac_and_timm_backbone() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False).eval()
    model = RecursiveFPN(net, width=32, levels=(3, 5), use_sac=True).eval()
    assert model.feedback_strides == (8, 16, 32)
    n_sac = sum(isinstance(m, SAConv2d) for m in model.modules())
    assert n_sac == 2 * 2 * 3 * 2  # 2 BasicBlocks x 2 convs x stages 2-4, in both backbones
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        plain = model.neck(model.backbone(x))
    assert [o.shape[-1] for o in out] == [8, 4, 2]
    for a, b in zip(out, plain, strict=True):  # SAC at init + zero feedback conv: still backbone + FPN
        assert (a - b).abs().max() < 1e-5


def test_custom_backbone_through_the_protocol() -> None:
    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, stride, 1)
            self.short = nn.Conv2d(cin, cout, 1, stride)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.conv(x) + self.short(x))

    register_feedback_block(Block, lambda b, x: b.conv(x) + b.short(x), "act")
    torch.manual_seed(0)
    stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
    stages = [nn.Sequential(Block(8, 8, 2)), nn.Sequential(Block(8, 16, 2), Block(16, 16, 1))]
    stages.append(nn.Sequential(Block(16, 32, 2)))
    bb = FeedbackBackbone(stem, stages)
    assert bb.out_specs == (FeatureSpec(8, 4), FeatureSpec(16, 8), FeatureSpec(32, 16))
    model = RecursiveFPN(bb, neck=fpn(bb.out_specs[1:], width=16), aspp_out_channels=2).eval()
    assert model.feedback_strides == (8, 16) and model.rfp_aspp.out_channels == 8
    assert [tuple(o.shape) for o in model(torch.randn(1, 3, 40, 56))] == [(1, 16, 5, 7), (1, 16, 3, 4), (1, 16, 2, 2)]


def test_rfp_errors() -> None:
    net = _tiny_resnet()
    with pytest.raises(ValueError, match="steps"):
        RecursiveFPN(net, steps=0)
    with pytest.raises(ValueError, match="backbone gives"):
        RecursiveFPN(_tiny_resnet(), neck=fpn([FeatureSpec(100, 8), FeatureSpec(200, 16)], width=8))
    with pytest.raises(TypeError, match="together with a built neck"):
        RecursiveFPN(_tiny_resnet(), neck=fpn([FeatureSpec(128, 8)], width=8), width=8)
    with pytest.raises(TypeError, match="from_resnet"):
        RecursiveFPN(nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match=r"fpn got an unexpected keyword argument 'widht'\. Did you mean 'width'\?"):
        RecursiveFPN(_tiny_resnet(), widht=8)
    with pytest.raises(TypeError, match=r"fpn option levels\[1\] must be an int, got 5\.5"):
        RecursiveFPN(_tiny_resnet(), width=8, levels=(2, 5.5))


def test_detectors_r50_parameter_count_matches_mmdet() -> None:
    """DetectoRS HTC/Cascade R50 backbone + neck: ConvAWS everywhere, deformable SAC in stages 2-4, RFP 2 steps,
    ASPP 64 x 4, FPN 256 on C2-C5 with P6 by max-pool. Both sides count the backbone without a classifier.

    81,348,675 = main backbone 38,377,505 (ResNet-50 23,508,032 + SAC's weight_diff/switch/contexts/offsets)
    + its copy 39,298,593 (+ rfp_conv 257 x (512 + 1024 + 2048) = 921,088) + FPN 3,344,384 + ASPP 327,936
    + rfp_weight 257. Equal term by term (ConvAWS's gamma/beta are buffers on both sides)."""
    _mmcv()
    from mmdet.models.backbones.detectors_resnet import DetectoRS_ResNet
    from mmdet.models.necks.rfp import RFP
    from torchvision.models import resnet50

    common = dict(
        depth=50, conv_cfg=dict(type="ConvAWS"), sac=dict(type="SAC", use_deform=True),
        stage_with_sac=(False, True, True, True),
    )  # fmt: skip
    torch.manual_seed(0)
    ref_bb = DetectoRS_ResNet(output_img=True, **common)
    ref_neck = RFP(
        rfp_steps=2, rfp_backbone=dict(type="DetectoRS_ResNet", rfp_inplanes=256, **common), aspp_out_channels=64,
        in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5,
    )  # fmt: skip
    n_ref = sum(p.numel() for m in (ref_bb, ref_neck) for p in m.parameters())
    del ref_bb, ref_neck
    ours = RecursiveFPN(resnet50(), width=256, levels=(2, 6), use_sac=True, sac_deform=True, aws=True)
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == n_ref == 81_348_675, (n_ours, n_ref)


# --------------------------------------------------------------------------- mmdet RFP parity
_KEY = re.compile(r"^stages\.(\d+)\.(\d+)\.(block\.)?")


def _mmdet_key(ours: str) -> str:
    key = ours.replace("stem.0.", "conv1.").replace("stem.1.", "bn1.")
    m = _KEY.match(key)
    if m:
        key = f"layer{int(m.group(1)) + 1}.{m.group(2)}." + key[m.end() :]
    return key


def _swap_mmcv_convs(module: nn.Module, mm_sac: type, mm_aws: type) -> None:
    """Replace mmcv's SAConv2d / ConvAWS2d by necklace's (same state dict keys)."""
    for name, child in list(module.named_children()):
        if isinstance(child, (mm_sac, mm_aws)):
            args = (child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding)
            args += (child.dilation, child.groups, child.bias is not None)
            new = SAConv2d(*args, use_deform=child.use_deform) if isinstance(child, mm_sac) else ConvAWS2d(*args)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new.eval())
        else:
            _swap_mmcv_convs(child, mm_sac, mm_aws)


def test_rfp_matches_mmdet() -> None:
    MMConvAWS2d, MMSAConv2d = _mmcv()
    from mmdet.models.backbones.detectors_resnet import DetectoRS_ResNet
    from mmdet.models.necks.rfp import RFP

    from necklace.convert.mmdet import from_mmdet_fpn

    common = dict(
        depth=50, base_channels=8, stem_channels=8, conv_cfg=dict(type="ConvAWS"),
        sac=dict(type="SAC", use_deform=False), stage_with_sac=(False, True, True, True),
    )  # fmt: skip
    torch.manual_seed(0)
    ref_bb = DetectoRS_ResNet(output_img=True, **common)
    ref_neck = RFP(
        rfp_steps=2, rfp_backbone=dict(type="DetectoRS_ResNet", rfp_inplanes=32, **common), aspp_out_channels=8,
        in_channels=[32, 64, 128, 256], out_channels=32, num_outs=5,
    )  # fmt: skip
    for m in (ref_bb, ref_neck):
        randomize_bn(m, seed=1)
        for name, mod in m.named_modules():  # non-trivial SAC switch / contexts, feedback convs and gate
            if isinstance(mod, MMSAConv2d):
                _randomize(mod.switch, seed=2, scale=0.2)
                _randomize(mod.pre_context, seed=3, scale=0.05)
                _randomize(mod.post_context, seed=4, scale=0.05)
                with torch.no_grad():
                    mod.weight_diff.normal_(0, 0.01)
            if name.endswith("rfp_conv") or name == "rfp_weight":
                _randomize(mod, seed=5, scale=0.05)
        # as when loading ImageNet weights: AWS gamma/beta rebuilt from the kernels (fresh AWS would explode)
        m.load_state_dict({k: v for k, v in m.state_dict().items() if "weight_gamma" not in k}, strict=False)
    ref_bb.eval()
    ref_neck.eval()

    main = copy.deepcopy(ref_bb)
    _swap_mmcv_convs(main, MMSAConv2d, MMConvAWS2d)
    specs = [FeatureSpec(c, s) for c, s in zip((32, 64, 128, 256), (4, 8, 16, 32), strict=True)]
    neck = fpn(specs, width=32, levels=(2, 6))
    sd = {k: v for k, v in ref_neck.state_dict().items() if k.startswith(("lateral_convs", "fpn_convs"))}
    neck.load_state_dict(from_mmdet_fpn(sd, neck))
    model = RecursiveFPN(FeedbackBackbone.from_resnet(main), neck=neck, aspp_out_channels=8).eval()
    model.rfp_aspp.load_state_dict(ref_neck.rfp_aspp.state_dict())
    model.rfp_weight.load_state_dict(ref_neck.rfp_weight.state_dict())
    ref_copy = ref_neck.rfp_modules[0].state_dict()
    mapped = {k: ref_copy[_mmdet_key(k)] for k in model.rfp_backbones[0].state_dict()}
    model.rfp_backbones[0].load_state_dict(mapped)
    assert not any(isinstance(m, (MMSAConv2d, MMConvAWS2d)) for m in model.modules())

    x = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        want = ref_neck(ref_bb(x))
        got = model(x)
        step1 = model.neck(model.backbone(x))
    assert len(got) == len(want) == 5
    assert all((a - b).abs().max() > 0.1 for a, b in zip(got, step1, strict=True))  # the recursion matters here
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        assert (a - b).abs().max() < 1e-4 * b.abs().max(), (a - b).abs().max()
