"""Every user-facing error names what it got, what it expected and the fix."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import SPEC_SETS, pyramid

import necklace
from necklace import Edge, FeatureSpec, GraphNeck, NeckGraph, Node

SPECS = SPEC_SETS["c3c5"]


@pytest.fixture(scope="module")
def neck() -> GraphNeck:
    return necklace.build_neck("fpn", SPECS, width=16).eval()


def test_wrong_number_of_maps(neck: GraphNeck) -> None:
    feats = pyramid(SPECS, (64, 64))
    with pytest.raises(ValueError, match=r"expects 3 feature maps with strides \[8, 16, 32\], got 2"):
        neck(feats[:2])


def test_wrong_channels(neck: GraphNeck) -> None:
    feats = pyramid(SPECS, (64, 64))
    feats[1] = torch.randn(2, 50, 4, 4)
    with pytest.raises(ValueError, match=r"feature map 1 \(stride 16\) has 50 channels .*expected 48.*in_specs"):
        neck(feats)


def test_non_4d(neck: GraphNeck) -> None:
    feats = pyramid(SPECS, (64, 64))
    feats[0] = feats[0][0]
    with pytest.raises(ValueError, match=r"shape \(24, 8, 8\); expected a 4-D tensor \(N, 24, H, W\).*unsqueeze"):
        neck(feats)


def test_single_tensor_instead_of_list(neck: GraphNeck) -> None:
    with pytest.raises(TypeError, match=r"expects a list of 3 feature maps.*got Tensor of shape \(1, 24, 8, 8\)"):
        neck(torch.randn(1, 24, 8, 8))


def test_non_tensor_element(neck: GraphNeck) -> None:
    feats = pyramid(SPECS, (64, 64))
    with pytest.raises(TypeError, match=r"feature map 2 is a ndarray, expected a torch.Tensor"):
        neck([feats[0], feats[1], feats[2].numpy()])


def test_mismatched_batch(neck: GraphNeck) -> None:
    feats = pyramid(SPECS, (64, 64))
    feats[2] = feats[2][:1]
    with pytest.raises(
        ValueError, match=r"mismatched batch sizes \[\(2, 24, 8, 8\), \(2, 48, 4, 4\), \(1, 96, 2, 2\)\]"
    ):
        neck(feats)


def test_reversed_order(neck: GraphNeck) -> None:
    feats = pyramid(SPECS, (64, 64))
    bad = [torch.randn(2, 24, 2, 2), torch.randn(2, 48, 4, 4), torch.randn(2, 96, 8, 8)]
    with pytest.raises(ValueError, match=r"about half the previous one.*highest resolution first"):
        neck(bad)
    assert feats  # the good pyramid still works
    neck(feats)


def test_strides_not_successive_powers_of_two() -> None:
    with pytest.raises(ValueError, match=r"strides \[8, 32\] are not successive powers of two.*got 8 followed by 32"):
        necklace.build_neck("fpn", [FeatureSpec(8, 8), FeatureSpec(16, 32)])
    with pytest.raises(ValueError, match=r"stride 12 is not a power of two"):
        FeatureSpec(64, 12)
    with pytest.raises(ValueError, match=r"strides \[16, 8\]"):
        necklace.build_neck("fpn", [FeatureSpec(8, 16), FeatureSpec(16, 8)])


def test_bad_feature_spec_values() -> None:
    with pytest.raises(ValueError, match=r"channels must be a positive int, got 0"):
        FeatureSpec(0, 8)
    with pytest.raises(TypeError, match=r"in_specs must be a sequence of FeatureSpec"):
        necklace.build_neck("fpn", FeatureSpec(8, 8))  # type: ignore[arg-type]


def test_unknown_neck_suggests_closest() -> None:
    with pytest.raises(ValueError, match=r"unknown neck 'bifnp'\. Did you mean 'bifpn'\? Known necks: .*fpn"):
        necklace.build_neck("bifnp", SPECS)


def test_duplicate_registration_refused() -> None:
    with pytest.raises(ValueError, match=r"already registered"):
        necklace.register_neck("fpn", necklace.neck_info("fpn").builder, summary="x", paper="y")


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'widht'"):
        necklace.build_neck("fpn", SPECS, widht=64)


def test_levels_outside_backbone_names_the_fix() -> None:
    with pytest.raises(ValueError, match=r"finest output level 2 \(stride 4\).*Add a backbone map at stride 4"):
        necklace.build_neck("fpn", SPECS, levels=(2, 6))


def test_width_list_of_wrong_length() -> None:
    with pytest.raises(ValueError, match=r"list of 4 ints \(one per output level 3..6\), got \[8, 16\]"):
        necklace.build_neck("fpn", SPECS, width=[8, 16])


def test_graph_node_with_missing_input() -> None:
    with pytest.raises(ValueError, match=r"node 'P3' reads 'P4', which is not defined before it.*Known names"):
        NeckGraph(
            in_specs=SPECS,
            nodes=(Node("P3", 3, ("C3", "P4"), channels=16), Node("P4", 4, ("C4",), channels=16)),
            outputs=("P3", "P4"),
        )


def test_graph_sum_of_mismatched_channels() -> None:
    with pytest.raises(ValueError, match=r"node 'P3' fuses by 'sum' inputs with different channels \(C3: 24, C4: 48\)"):
        NeckGraph(
            in_specs=SPECS,
            nodes=(Node("P3", 3, (Edge("C3", align="never"), Edge("C4", align="never")), channels=24),),
            outputs=("P3",),
        )


def test_graph_identity_block_channel_change() -> None:
    with pytest.raises(ValueError, match=r"block 'identity' receives 72 channels but the node declares 24"):
        NeckGraph(
            in_specs=SPECS,
            nodes=(Node("P3", 3, ("C3", "C4"), channels=24, fuse="concat"),),
            outputs=("P3",),
        )


def test_graph_duplicate_and_bad_names() -> None:
    with pytest.raises(ValueError, match=r"node name 'C3' is used twice"):
        NeckGraph(in_specs=SPECS, nodes=(Node("C3", 3, ("C4",), channels=16),), outputs=("C3",))
    with pytest.raises(ValueError, match=r"must be an identifier"):
        Node("P3.out", 3, ("C3",), channels=16)


def test_graph_unknown_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown fuse 'mean'"):
        Node("P3", 3, ("C3",), channels=16, fuse="mean")
    with pytest.raises(ValueError, match=r"unknown block 'c3k3'"):
        Node("P3", 3, ("C3",), channels=16, block="c3k3")
    with pytest.raises(ValueError, match=r"down='pool' is not one of"):
        Edge("C3", down="pool")
    with pytest.raises(ValueError, match=r"unknown activation 'swishh'.*Did you mean 'swish'"):
        necklace.ConvCfg(act="swishh")


def test_graph_outputs_out_of_order() -> None:
    with pytest.raises(ValueError, match=r"outputs \['P4', 'P3'\] have levels \[4, 3\]"):
        NeckGraph(
            in_specs=SPECS,
            nodes=(Node("P4", 4, ("C4",), channels=16), Node("P3", 3, ("C3",), channels=16)),
            outputs=("P4", "P3"),
        )


def test_graph_unknown_output() -> None:
    with pytest.raises(ValueError, match=r"output 'P9' is not a node or input"):
        NeckGraph(in_specs=SPECS, nodes=(Node("P3", 3, ("C3",), channels=16),), outputs=("P9",))


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match=r"unknown BiFPN preset 'd9'"):
        necklace.build_neck("bifpn", SPECS, preset="d9")
    with pytest.raises(ValueError, match=r"unknown YOLO preset 'q'"):
        necklace.build_neck("yolo_pafpn", SPECS, preset="q")
