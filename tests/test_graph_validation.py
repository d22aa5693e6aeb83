"""Graphs as data are checked strictly at construction: unknown keys at every depth (with the closest valid one),
no silent coercion (``level: 3.9``, ``channels: true``), block arguments checked against the block (an even kernel
would shrink maps below ``out_specs``), and the file loader's errors name the file, the problem and the fix."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tests.helpers import SPEC_SETS, pyramid

from necklace import Edge, FeatureSpec, GraphNeck, NeckGraph, Node
from necklace.layers.blocks import build_block, check_block_args
from necklace.layers.conv import ConvCfg

SPECS = SPEC_SETS["c3c5"]


def _graph_dict() -> dict[str, Any]:
    return {
        "in_specs": [{"channels": 24, "stride": 8}, {"channels": 48, "stride": 16}],
        "nodes": [
            {"name": "P4", "level": 4, "inputs": ["C4"], "channels": 16, "block": "conv", "block_args": {"kernel": 1}},
            {"name": "P3", "level": 3, "inputs": ["C3", {"source": "P4", "up": "nearest"}], "channels": 16},
        ],
        "outputs": ["P3", "P4"],
        "conv": {"norm": "bn", "act": "relu"},
        "fuse_eps": 1e-4,
    }


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(_graph_dict())
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


def test_the_reference_dict_builds() -> None:
    g = NeckGraph.from_dict(_graph_dict())
    assert [s.stride for s in g.out_specs] == [8, 16]
    assert NeckGraph.from_dict(g.to_dict()) == g


@pytest.mark.parametrize(
    ("path", "value", "error", "message"),
    [
        (("nodes", 0, "block_args"), {"kernal": 3}, ValueError, r"unknown key 'kernal'\. Did you mean 'kernel'\?"),
        (("nodes", 1, "inputs", 1), {"source": "P4", "upp": "nearest"}, ValueError, r"unknown key 'upp'.*'up'"),
        (("nodes", 1, "chanels"), 16, ValueError, r"node 'P3': unknown key 'chanels'\. Did you mean 'channels'\?"),
        (("in_specs", 0, "stide"), 8, ValueError, r"in_spec: unknown key 'stide'\. Did you mean 'stride'\?"),
        (("conv", "nrom"), "bn", ValueError, r"the graph's conv: unknown key 'nrom'\. Did you mean 'norm'\?"),
        (("nodes", 0, "level"), 3.9, TypeError, r"node 'P4': level must be an int, got 3\.9 \(float\)"),
        (("nodes", 0, "level"), True, TypeError, r"node 'P4': level must be an int, got True \(bool\)"),
        (("nodes", 0, "channels"), True, TypeError, r"node 'P4': channels must be an int, got True \(bool\)"),
        (("nodes", 0, "channels"), "16", TypeError, r"channels must be an int, got '16' \(str\)"),
        (("in_specs", 0, "channels"), True, ValueError, r"FeatureSpec\.channels must be a positive int, got True"),
        (("in_specs", 0, "stride"), 8.0, ValueError, r"FeatureSpec\.stride must be a positive int, got 8\.0"),
        (("fuse_eps",), -1e-4, ValueError, r"NeckGraph\.fuse_eps must be > 0, got -0\.0001"),
        (("fuse_eps",), "1e-4", TypeError, r"NeckGraph\.fuse_eps must be a number, got '1e-4' \(str\)"),
        (("conv", "norm_eps"), 0.0, ValueError, r"the graph's conv option norm_eps must be > 0"),
        (("conv", "gn_groups"), 2.5, TypeError, r"gn_groups must be an int, got 2\.5"),
        (("nodes", 0, "block_args", "kernel"), 2, ValueError, r"node 'P4' block 'conv' option kernel must be odd"),
        (("nodes", 0, "block_args", "kernel"), 3.0, TypeError, r"block 'conv' option kernel must be an int, got 3\.0"),
        (("nodes", 0, "block_args", "act_first"), "no", TypeError, r"act_first must be True or False, got 'no'"),
        (("nodes", 0, "block_args"), [1], TypeError, r"block_args must be a dict, got \[1\] \(list\)"),
        (("nodes", 0, "inputs"), "C4", TypeError, r"node 'P4': inputs must be a list of names/Edges, got 'C4'"),
        (("nodes", 1, "inputs", 1), {"up": "nearest"}, ValueError, r"has no 'source'"),
        (("nodes", 1, "inputs", 1), 7, TypeError, r"inputs\[1\] must be a name, an Edge or a dict, got 7 \(int\)"),
        (("nodes", 0), "P4", TypeError, r"nodes\[0\] must be a dict with name, level, inputs, channels"),
        (("outputs",), "P3", TypeError, r"the graph's outputs must be a list, got 'P3' \(str\)"),
        (("outputs",), ["P3", 4], TypeError, r"outputs\[1\] must be a node name \(str\), got 4 \(int\)"),
        (("nodes", 1, "inputs", 1, "pre_act"), "relu7", ValueError, r"pre_act='relu7' is not one of .*'relu6'"),
        (("up",), "nerest", ValueError, r"unknown NeckGraph up 'nerest'.*Did you mean 'nearest'\?"),
    ],
)
def test_graph_dicts_are_checked_strictly(
    path: tuple[Any, ...], value: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        NeckGraph.from_dict(_with(path, value))


def test_missing_node_keys_are_named() -> None:
    data = _graph_dict()
    del data["nodes"][1]["channels"]
    with pytest.raises(ValueError, match=r"node 'P3' lacks the key\(s\) \['channels'\]; a node needs name, level"):
        NeckGraph.from_dict(data)


def test_numpy_integers_are_accepted_as_ints() -> None:
    data = _with(("nodes", 0, "level"), np.int64(4))
    data["nodes"][0]["channels"] = np.int32(16)
    data["in_specs"][0] = {"channels": np.int64(24), "stride": np.int64(8)}
    data["nodes"][0]["block_args"] = {"kernel": np.int64(1)}
    g = NeckGraph.from_dict(data)
    assert type(g.nodes[0].level) is int and type(g.nodes[0].channels) is int
    assert g == NeckGraph.from_dict(_graph_dict())
    assert json.loads(json.dumps(g.to_dict())) == g.to_dict()  # plain ints: JSON-ready


def test_even_block_kernel_is_refused_at_construction() -> None:
    # an even kernel with 'same' padding would give maps one pixel smaller than out_specs promise
    with pytest.raises(ValueError, match=r"node 'P3' block 'conv' option kernel must be odd \(1, 3, 5"):
        Node("P3", 3, ("C3",), channels=16, block="conv", block_args={"kernel": 4})
    with pytest.raises(ValueError, match=r"block 'csp' option kernel must be odd"):
        Node("P3", 3, ("C3",), channels=16, block="csp", block_args={"kernel": 2})
    with pytest.raises(ValueError, match=r"block 'conv' option kernel must be odd"):
        build_block("conv", 8, 8, ConvCfg(), kernel=2)


@pytest.mark.parametrize(
    ("block", "args", "channels", "message"),
    [
        ("c2f", {"n": 0}, 16, r"block 'c2f' option n must be >= 1, got 0"),
        ("c2f", {"expansion": 0.01}, 16, r"hidden width int\(16 \* expansion 0\.01\) is 0; widen the node"),
        ("c3k2", {}, 2, r"inner bottleneck width int\(1 \* 0\.5\) is 0"),
        ("ghost", {}, 15, r"GhostConv makes two halves, so the node's channels must be even"),
        ("repconv", {"groups": 5}, 16, r"groups=5 must divide both channel counts"),
        ("rep_block", {"norm": None}, 16, r"needs norm='bn'"),
        ("elan", {"basic": "rep"}, 16, r"unknown node 'P3' block 'elan' option basic 'rep'.*'repconv'"),
        ("rfa", {"ratios": [0.1, 1.5]}, 16, r"block 'rfa' option ratios\[1\] must be <= 1, got 1\.5"),
        ("conv", {"act": "reluu"}, 16, r"unknown node 'P3' block 'conv' option act 'reluu'.*Did you mean 'relu'"),
    ],
)
def test_block_args_are_checked_against_the_block(
    block: str, args: dict[str, Any], channels: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        NeckGraph(
            in_specs=SPECS,
            nodes=(Node("P3", 3, ("C3",), channels=channels, block=block, block_args=args),),
            outputs=("P3",),
            conv=ConvCfg(norm="bn", act="relu"),
        )


def test_node_block_args_typo_is_never_dropped() -> None:
    with pytest.raises(ValueError, match=r"unknown key 'kernal'\. Did you mean 'kernel'\? Valid keys: act, act_first"):
        Node("P3", 3, ("C3",), channels=16, block="conv", block_args={"kernal": 3})
    assert check_block_args("conv", {"kernel": np.int64(5)}) == {"kernel": 5}


def test_gp_fusion_needs_two_inputs() -> None:
    with pytest.raises(ValueError, match=r"fuse 'gp' .* takes exactly 2 inputs, got 3"):
        Node("P4", 4, ("C3", "C4", "C5"), channels=16, fuse="gp")


def test_neck_graph_fields_are_checked() -> None:
    nodes = (Node("P3", 3, ("C3",), channels=24),)
    with pytest.raises(TypeError, match=r"NeckGraph\.conv must be a ConvCfg or a dict of its fields, got 'bn'"):
        NeckGraph(SPECS, nodes, ("P3",), conv="bn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"NeckGraph\.fuse_eps must be > 0, got 0\.0"):
        NeckGraph(SPECS, nodes, ("P3",), fuse_eps=0.0)
    with pytest.raises(TypeError, match=r"NeckGraph\.nodes must be a list of Node \(or dicts\), got 'P3'"):
        NeckGraph(SPECS, "P3", ("P3",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Edge\('C3'\)\.kernel=4 must be a positive odd int up to 31"):
        Edge("C3", kernel=4)
    assert Edge("C3", kernel=np.int64(5)).kernel == 5
    assert NeckGraph(SPECS, nodes, ("P3",), conv={"norm": "bn"}).conv == ConvCfg(norm="bn")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------- loader
@pytest.mark.parametrize(
    ("name", "text", "error", "message"),
    [
        ("g.yaml", "nodes: [\n", ValueError, r"graph file '.*g\.yaml' is not valid YAML: .*line"),
        ("g.json", "{nodes: 1}", ValueError, r"is not valid JSON \(its suffix is not \.yaml/\.yml\): Expecting"),
        ("g.yaml", "- 1\n- 2\n", ValueError, r"expected a mapping with in_specs/nodes/outputs .*got a list"),
        ("g.yaml", "", ValueError, r"expected a mapping .*got an empty file"),
        ("g.yml", "in_specs: [{channels: 8, stride: 8}]\noutputs: [C3]\n", ValueError, r"lacks the key 'nodes'"),
        ("g.yaml", "in_specs: 8\nnodes: []\noutputs: [C3]\n", TypeError, r"in_specs must be a list, got 8 \(int\)"),
        (
            "g.yaml",
            "in_specs: [{channels: 8, stride: 8}]\nnodes: [{name: P3, level: 3, inputs: [C3], channels: 8, "
            "kernal: 3}]\noutputs: [P3]\n",
            ValueError,
            r"graph file '.*g\.yaml': node 'P3': unknown key 'kernal'",
        ),
    ],
)
def test_loader_errors_name_the_file_and_the_fix(
    tmp_path: Path, name: str, text: str, error: type[Exception], message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(error, match=message):
        NeckGraph.load(path)
    with pytest.raises(error, match=message):
        GraphNeck.from_file(path)


def test_loader_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"graph file '.*nope\.yaml' not found; give the path of a \.yaml"):
        NeckGraph.load(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match=r"is a directory"):
        GraphNeck.from_file(tmp_path)
    with pytest.raises(TypeError, match=r"NeckGraph\.load takes a file path \(str or Path\), got 3 \(int\)"):
        NeckGraph.load(3)  # type: ignore[arg-type]
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"cannot be read as text"):
        NeckGraph.load(tmp_path / "bin.json")


def test_saved_graph_loads_and_runs(tmp_path: Path) -> None:
    g = NeckGraph.from_dict(_graph_dict())
    g.save(tmp_path / "g.yaml")
    neck = GraphNeck.from_file(tmp_path / "g.yaml").eval()
    specs = (FeatureSpec(24, 8), FeatureSpec(48, 16))
    with torch.no_grad():
        outs = neck(pyramid(specs, (40, 56)))
    assert [tuple(o.shape) for o in outs] == [(2, 16, 5, 7), (2, 16, 3, 4)]
