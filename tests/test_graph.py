"""The engine: hand-written graphs, YAML/JSON round trips, runtime resizing, fusion and resampling maths."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import SPEC_SETS, pyramid

import necklace
from necklace import FeatureSpec, GraphNeck, NeckGraph
from necklace.layers import Fuse, Resample

SPECS = SPEC_SETS["c3c5"]


def _graphs() -> list[NeckGraph]:
    return [necklace.build_neck(n, SPECS).graph for n in necklace.list_necks()] + [
        necklace.build_neck("pafpn", SPECS, variant="panet", width=[16, 24, 32, 40]).graph,
        necklace.build_neck(
            "fpn", SPECS, levels=(3, 7), extra="conv", extra_source="input", relu_before_extra=True
        ).graph,
        necklace.build_neck("bifpn", SPECS, preset="d1", padding="same", redundant_bias=True, fuse="softmax").graph,
    ]


@pytest.mark.parametrize("graph", _graphs(), ids=lambda g: f"{len(g.nodes)}nodes")
def test_dict_round_trip_is_exact(graph: NeckGraph) -> None:
    assert NeckGraph.from_dict(graph.to_dict()) == graph


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_file_round_trip_rebuilds_the_same_neck(tmp_path, suffix: str) -> None:
    neck = necklace.build_neck("bifpn", SPECS, width=16, repeats=2).eval()
    path = tmp_path / f"g{suffix}"
    neck.graph.save(path)
    again = GraphNeck.from_file(path).eval()
    assert again.graph == neck.graph
    again.load_state_dict(neck.state_dict())
    feats = pyramid(SPECS, (97, 131))
    with torch.no_grad():
        for a, b in zip(neck(feats), again(feats), strict=True):
            assert torch.equal(a, b)


def test_hand_written_yaml_graph(tmp_path) -> None:
    text = """
in_specs: [{channels: 24, stride: 8}, {channels: 48, stride: 16}]
nodes:
  - {name: top, level: 4, inputs: [C4], channels: 16, block: conv, block_args: {kernel: 1}}
  - {name: fine, level: 3, inputs: [C3, {source: top, up: bilinear}], channels: 16, fuse: fast, block: conv}
  - {name: down, level: 5, inputs: [{source: top, down: maxpool}], channels: 16}
outputs: [fine, top, down]
conv: {norm: bn, act: relu}
"""
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    neck = GraphNeck.from_file(path).eval()
    assert [(s.channels, s.stride) for s in neck.out_specs] == [(16, 8), (16, 16), (16, 32)]
    outs = neck([torch.randn(1, 24, 13, 17), torch.randn(1, 48, 7, 9)])
    assert [tuple(o.shape[-2:]) for o in outs] == [(13, 17), (7, 9), (4, 5)]
    assert isinstance(neck.nodes["fine"].fuse, Fuse) and neck.nodes["fine"].fuse.weight is not None


def test_unknown_graph_keys_rejected() -> None:
    data = necklace.build_neck("fpn", SPECS).graph.to_dict()
    data["nodez"] = []
    with pytest.raises(ValueError, match=r"unknown NeckGraph keys \['nodez'\]"):
        NeckGraph.from_dict(data)


def test_fast_fusion_matches_formula() -> None:
    f = Fuse("fast", 3)
    with torch.no_grad():
        f.weight.copy_(torch.tensor([2.0, -1.0, 0.5]))
    xs = [torch.randn(1, 4, 5, 5) for _ in range(3)]
    w = torch.relu(f.weight.detach())
    expected = sum(x * wi for x, wi in zip(xs, w, strict=True)) / (w.sum() + 1e-4)
    torch.testing.assert_close(f(xs), expected)
    s = Fuse("softmax", 3)
    with torch.no_grad():
        s.weight.copy_(torch.tensor([2.0, -1.0, 0.5]))
    sw = torch.softmax(s.weight.detach(), 0)
    torch.testing.assert_close(s(xs), sum(x * wi for x, wi in zip(xs, sw, strict=True)))
    torch.testing.assert_close(Fuse("sum", 3)(xs), xs[0] + xs[1] + xs[2])
    assert Fuse("concat", 3)(xs).shape == (1, 12, 5, 5)


def test_fast_fusion_all_weights_dead_gives_zero() -> None:
    f = Fuse("fast", 2)
    with torch.no_grad():
        f.weight.fill_(-1.0)
    assert f([torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2)]).abs().max() == 0


@pytest.mark.parametrize("mode", ["conv", "dwconv", "maxpool", "avgpool", "subsample"])
@pytest.mark.parametrize("size", [(13, 17), (16, 16), (1, 1)])
def test_downsample_modes_give_ceil_sizes(mode: str, size: tuple[int, int]) -> None:
    e = Resample(8, 8, steps=2, down=mode)
    target = (math.ceil(size[0] / 4), math.ceil(size[1] / 4))
    assert e(torch.randn(1, 8, *size), target).shape[-2:] == target


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "transposed"])
def test_upsample_modes_reach_odd_targets(mode: str) -> None:
    e = Resample(8, 4, steps=-2, up=mode)
    out = e(torch.randn(1, 8, 4, 5), (13, 17))
    assert out.shape == (1, 4, 13, 17)


def test_nearest_upsample_equals_repeat_on_exact_doubling() -> None:
    x = torch.randn(1, 3, 4, 5)
    out = Resample(3, 3, steps=-1)(x, (8, 10))
    torch.testing.assert_close(out, x.repeat_interleave(2, -1).repeat_interleave(2, -2))


def test_same_padding_maxpool_matches_tensorflow_rule() -> None:
    # TF SAME on an even input pads 0 before / 1 after: windows start at 0, 2, 4, ...
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    same = Resample(1, 1, steps=1, down="maxpool", conv_cfg=necklace.ConvCfg(padding="same"))(x, (2, 2))
    expected = F.max_pool2d(F.pad(x, [0, 1, 0, 1], value=-math.inf), 3, 2)
    torch.testing.assert_close(same, expected)
    sym = Resample(1, 1, steps=1, down="maxpool")(x, (2, 2))
    assert not torch.equal(same, sym)


def test_fpn_matches_hand_computation() -> None:
    """A 2-level FPN with identity-like weights computes lateral + upsample, then the 3x3 conv."""
    specs = (FeatureSpec(2, 8), FeatureSpec(2, 16))
    neck = necklace.build_neck("fpn", specs, width=2, levels=(3, 4)).eval()
    for m in neck.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.zeros_(m.weight)
            torch.nn.init.zeros_(m.bias)
            c = m.kernel_size[0] // 2
            for i in range(2):
                m.weight.data[i, i, c, c] = 1.0
    c3, c4 = torch.randn(1, 2, 5, 7), torch.randn(1, 2, 3, 4)
    p3, p4 = neck([c3, c4])
    torch.testing.assert_close(p4, c4)
    torch.testing.assert_close(p3, c3 + F.interpolate(c4, size=(5, 7), mode="nearest"))


def test_levels_and_widths_per_level() -> None:
    neck = necklace.build_neck("fpn", SPEC_SETS["c2c5"], width=[8, 16, 24, 32, 40, 48], levels=(2, 7))
    assert [(s.channels, s.stride) for s in neck.out_specs] == [
        (8, 4),
        (16, 8),
        (24, 16),
        (32, 32),
        (40, 64),
        (48, 128),
    ]
    outs = neck(pyramid(SPEC_SETS["c2c5"], (97, 131)))
    assert [o.shape[1] for o in outs] == [8, 16, 24, 32, 40, 48]


def test_output_level_subset_drops_finest_input() -> None:
    neck = necklace.build_neck("pafpn", SPEC_SETS["c2c5"], width=16, levels=(3, 6))
    assert [s.stride for s in neck.out_specs] == [8, 16, 32, 64]
    assert "L2" not in neck.nodes


def test_extra_level_variants_differ_as_documented() -> None:
    torch.manual_seed(0)
    on_input = necklace.build_neck("fpn", SPECS, levels=(3, 7), extra="conv", extra_source="input")
    assert on_input.nodes["P6"].edges[0].in_channels == 96  # P6 reads C5
    on_output = necklace.build_neck("fpn", SPECS, levels=(3, 7), extra="conv", extra_source="output")
    assert on_output.nodes["P6"].edges[0].in_channels == 256  # P6 reads P5
    relu = necklace.build_neck("fpn", SPECS, levels=(3, 7), extra="conv", relu_before_extra=True)
    assert relu.nodes["P7"].edges[0].pre_act is not None and relu.nodes["P6"].edges[0].pre_act is None
    pool = necklace.build_neck("fpn", SPECS, levels=(3, 6))
    feats = pyramid(SPECS, (97, 131))
    p5, p6 = pool(feats)[2:]
    torch.testing.assert_close(p6, p5[..., ::2, ::2])


def test_pafpn_variants_wire_differently() -> None:
    mm = necklace.build_neck("pafpn", SPECS, width=16, levels=(3, 5))
    pa = necklace.build_neck("pafpn", SPECS, width=16, levels=(3, 5), variant="panet")
    assert [e.source for e in mm.graph.nodes[-1].edges] == ["B5"]
    assert [e.source for e in pa.graph.nodes[-1].edges] == ["N4", "P5"]
    assert isinstance(pa.nodes["N5"].block.norm, torch.nn.GroupNorm)
    assert isinstance(pa.nodes["N5"].block.act, torch.nn.ReLU)
    assert isinstance(pa.nodes["P5"].block.act, torch.nn.Identity)


def test_bifpn_topology_matches_efficientdet_config() -> None:
    g = necklace.build_neck("bifpn", SPECS, repeats=1).graph
    cell = {n.name: [e.source for e in n.edges] for n in g.nodes}
    assert cell["r0_P6_td"] == ["P6_in", "P7_in"]
    assert cell["r0_P3_out"] == ["C3", "r0_P4_td"]
    assert cell["r0_P4_out"] == ["C4", "r0_P4_td", "r0_P3_out"]
    assert cell["r0_P7_out"] == ["P7_in", "r0_P6_out"]
    assert g.outputs == ("r0_P3_out", "r0_P4_out", "r0_P5_out", "r0_P6_out", "r0_P7_out")


@pytest.mark.parametrize(("preset", "expected"), [("d0", (64, 3)), ("d3", (160, 6)), ("d7", (384, 8))])
def test_bifpn_presets(preset: str, expected: tuple[int, int]) -> None:
    g = necklace.build_neck("bifpn", SPECS, preset=preset).graph
    width, repeats = expected
    assert g.out_specs[0].channels == width
    assert sum(1 for n in g.nodes if n.name.endswith("_P3_out")) == repeats
    assert {n.fuse for n in g.nodes if n.name.startswith("r")} == ({"sum"} if preset == "d7" else {"fast"})


def test_parameter_counts_match_published_figures() -> None:
    """tf_efficientdet_d0 BiFPN 196,281 / efficientdet_d0 194,361; YOLOv8n neck 986,880 (reference notes)."""
    b0 = [FeatureSpec(40, 8), FeatureSpec(112, 16), FeatureSpec(320, 32)]
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(necklace.build_neck("bifpn", b0, preset="d0", redundant_bias=True, padding="same")) == 196_281
    assert count(necklace.build_neck("bifpn", b0, preset="d0")) == 194_361
    v8n = [FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)]
    assert count(necklace.build_neck("yolo_pafpn", v8n, preset="n")) == 986_880
    r50 = [FeatureSpec(512, 8), FeatureSpec(1024, 16), FeatureSpec(2048, 32)]
    # torchvision FeaturePyramidNetwork([512, 1024, 2048], 256): 3 laterals + 3 output convs = 3,344,384
    assert count(necklace.build_neck("fpn", r50, levels=(3, 5))) == (512 + 1024 + 2048) * 256 + 3 * 256 + 3 * (
        256 * 256 * 9 + 256
    )


def test_intermediates_are_freed_but_outputs_kept() -> None:
    neck = necklace.build_neck("pafpn", SPECS, width=16)
    freed = {name for names in neck._free for name in names}
    assert "B4" in freed
    assert not set(neck.graph.outputs) & freed
