"""AugFPN: RFA against a transcription of the official HighFPN, consistent-supervision laterals, forward_with."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import pyramid
from torch import nn

import necklace
from necklace import FeatureSpec, GraphNeck, NeckGraph
from necklace.layers.rfa import ResidualFeatureAugmentation
from necklace.necks.augfpn import (
    CONSISTENT_SUPERVISION_WEIGHT,
    AugFPN,
    augfpn,
    augfpn_graph,
    consistent_supervision_loss,
)

SPECS = (FeatureSpec(16, 4), FeatureSpec(32, 8), FeatureSpec(64, 16), FeatureSpec(128, 32))
R50 = (FeatureSpec(256, 4), FeatureSpec(512, 8), FeatureSpec(1024, 16), FeatureSpec(2048, 32))


class HighFPNRef(nn.Module):
    """Transcription of the official ``HighFPN.forward`` (Gus-Guo/AugFPN ``necks/high_fpn.py``, two-stage
    variant, no norm/act, ``num_outs = levels + 1`` by max-pool k1 s2), with its module names."""

    def __init__(self, in_channels: list[int], out_channels: int, ratios=(0.1, 0.2, 0.3)) -> None:
        super().__init__()
        self.ratios = ratios
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.high_lateral_conv = nn.ModuleList(nn.Conv2d(in_channels[-1], out_channels, 1) for _ in ratios)
        self.high_lateral_conv_attention = nn.Sequential(
            nn.Conv2d(out_channels * len(ratios), out_channels, 1),
            nn.ReLU(),
            nn.Conv2d(out_channels, len(ratios), 3, 1, 1),
        )

    def forward(self, inputs):
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        h, w = inputs[-1].size(2), inputs[-1].size(3)
        feats = [
            F.interpolate(
                self.high_lateral_conv[j](
                    F.adaptive_avg_pool2d(inputs[-1], output_size=(max(1, int(h * r)), max(1, int(w * r))))
                ),
                size=(h, w),
                mode="bilinear",
                align_corners=True,
            )
            for j, r in enumerate(self.ratios)
        ]
        weights = torch.sigmoid(self.high_lateral_conv_attention(torch.cat(feats, dim=1)))
        fusion = 0
        for i in range(len(self.ratios)):
            fusion = fusion + weights[:, i : i + 1] * feats[i]
        raw_laterals = [lat.clone() for lat in laterals]
        laterals[-1] = laterals[-1] + fusion
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], scale_factor=2, mode="nearest")
        outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals))]
        outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs, raw_laterals


def _load_from_ref(neck: AugFPN, ref: HighFPNRef) -> None:
    sd = {}
    top = max(s.level for s in neck.in_specs)
    for i, s in enumerate(neck.in_specs):
        for p in ("weight", "bias"):
            sd[f"nodes.M{s.level}.edges.0.align.conv.{p}"] = ref.lateral_convs[i].state_dict()[p]
            sd[f"nodes.P{s.level}.block.conv.{p}"] = ref.fpn_convs[i].state_dict()[p]
    for k, v in ref.state_dict().items():
        if k.startswith("high_lateral_conv"):
            sd[f"nodes.R{top}.block.{k}"] = v
    neck.load_state_dict(sd, strict=True)


@pytest.mark.parametrize("image", [(128, 128), (256, 320)])
def test_matches_official_highfpn_transcription(image: tuple[int, int]) -> None:
    torch.manual_seed(0)
    ref = HighFPNRef([s.channels for s in SPECS], 16).eval()
    neck = augfpn(SPECS, width=16).eval()
    _load_from_ref(neck, ref)
    feats = pyramid(SPECS, image)
    with torch.no_grad():
        want, want_lat = ref(feats)
        outs, lats = neck.forward_with_laterals(feats)
        plain = neck(feats)
    assert len(outs) == len(want) == 5
    for a, b, c in zip(outs, want, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        assert torch.equal(a, c)  # forward_with gives forward's outputs
    for a, b in zip(lats, want_lat, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_rfa_pooled_sizes_truncate_like_the_official_code() -> None:
    rfa = ResidualFeatureAugmentation(8, 4)
    assert rfa.pooled_sizes(25, 38) == [(2, 3), (5, 7), (7, 11)]
    assert rfa.pooled_sizes(4, 5) == [(1, 1), (1, 1), (1, 1)]  # max(1, int(.)) never pools to 0
    assert rfa.pooled_sizes(30, 10) == [(3, 1), (6, 2), (9, 3)]


def test_laterals_are_pre_fusion_and_rfa_is_the_residual() -> None:
    torch.manual_seed(0)
    neck = augfpn(SPECS, width=8).eval()
    feats = pyramid(SPECS, (97, 131))
    with torch.no_grad():
        _, lats = neck.forward_with_laterals(feats)
        _, (m5, r5, l5) = neck.forward_with(feats, ["M5", "R5", "L5"])
        rfa = neck.nodes["R5"].block(feats[-1])
        lateral5 = neck.nodes["M5"].edges[0].align(feats[-1])
    assert neck.lateral_names == ("M2", "M3", "M4", "M5")
    assert neck.lateral_specs == tuple(FeatureSpec(8, s.stride) for s in SPECS)
    assert [tuple(m.shape) for m in lats] == [(2, 8, *f.shape[-2:]) for f in feats]
    assert torch.equal(lats[-1], lateral5) and torch.equal(m5, lateral5)  # M5: 1x1(C5), before the RFA add
    assert torch.equal(r5, rfa)
    assert torch.equal(l5, m5 + r5)


def test_laterals_only_for_built_levels() -> None:
    neck = augfpn(SPECS, width=8, levels=(3, 7), extra="conv", extra_source="input")
    assert neck.lateral_names == ("M3", "M4", "M5")
    outs, lats = neck.forward_with_laterals(pyramid(SPECS, (64, 64)))
    assert [o.shape[-1] for o in outs] == [8, 4, 2, 1, 1] and len(lats) == 3


def test_consistent_supervision_weighting() -> None:
    assert CONSISTENT_SUPERVISION_WEIGHT == 0.25
    losses = [torch.tensor(float(i), requires_grad=True) for i in range(1, 5)]
    total = consistent_supervision_loss(losses)
    assert total.item() == pytest.approx(2.5)
    total.backward()
    assert all(x.grad.item() == 0.25 for x in losses)
    assert consistent_supervision_loss(losses, weight=1.0).item() == pytest.approx(10.0)
    with pytest.raises(ValueError, match="one loss per lateral level"):
        consistent_supervision_loss([])


def test_graph_round_trips_and_loads_from_file(tmp_path) -> None:
    g = augfpn_graph(SPECS, width=8, ratios=(0.1, 0.25), rfa_hidden=4)
    assert NeckGraph.from_dict(g.to_dict()) == g
    path = tmp_path / "augfpn.yaml"
    g.save(path)
    torch.manual_seed(0)
    a = AugFPN(g).eval()
    b = GraphNeck.from_file(path).eval()
    b.load_state_dict(a.state_dict())
    feats = pyramid(SPECS, (64, 96))
    with torch.no_grad():
        for x, y in zip(a(feats), b(feats), strict=True):
            assert torch.equal(x, y)
    assert a.nodes["R5"].block.ratios == (0.1, 0.25)


def test_registered_with_readme_row() -> None:
    assert "augfpn" in necklace.list_necks()
    assert isinstance(necklace.build_neck("augfpn", SPECS, width=8), AugFPN)


def test_parameter_count_r50_faster_rcnn_config() -> None:
    # HighFPN(in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5) of the official Faster R-CNN config,
    # derived from its definition (the official code is not importable here):
    #   FPN laterals + 3x3 outputs:             984,064 + 2,360,320 = 3,344,384 (= necklace fpn on C2-C5)
    #   high_lateral_conv 3 x (2048*256 + 256):                      1,573,632
    #   attention 768*256 + 256 + 256*3*9 + 3:                         203,779
    with torch.device("meta"):
        neck = augfpn(R50, width=256)
        plain = necklace.build_neck("fpn", R50, width=256)
    n_fpn = sum(p.numel() for p in plain.parameters())
    n_rfa = sum(p.numel() for p in neck.nodes["R5"].parameters())
    assert n_fpn == 3_344_384
    assert n_rfa == 1_573_632 + 203_779
    assert sum(p.numel() for p in neck.parameters()) == 5_121_795


def test_forward_with_validates_names() -> None:
    neck = necklace.build_neck("fpn", SPECS[1:], width=8)
    feats = pyramid(SPECS[1:], (64, 64))
    outs, extras = neck.forward_with(feats, ["L4", "C3", "P3"])
    assert [tuple(e.shape[1:]) for e in extras] == [(8, 4, 4), (32, 8, 8), (8, 8, 8)]
    assert extras[1] is feats[0] and extras[2] is outs[0]
    with pytest.raises(ValueError, match="not nodes or inputs"):
        neck.forward_with(feats, ["M4"])
    with pytest.raises(TypeError, match="list of node names"):
        neck.forward_with(feats, "L4")  # type: ignore[arg-type]
    for bad in (5, [4], None):
        with pytest.raises(TypeError, match=r"list of node or input names \(str\), got .*known: \["):
            neck.forward_with(feats, bad)  # type: ignore[arg-type]


def test_rfa_gates_in_float32_under_autocast() -> None:
    torch.manual_seed(0)
    neck = augfpn(SPECS, width=8).eval()
    feats = [f * 1e3 for f in pyramid(SPECS, (64, 64))]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outs, lats = neck.forward_with_laterals(feats)
    assert all(torch.isfinite(o).all() for o in outs + lats)
