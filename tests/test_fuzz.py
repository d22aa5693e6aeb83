"""Fuzz suite (#20): property-based cases over graph dicts, every registered neck's typed options, forward inputs and
RoI boxes. Every case must either work with the promised shapes (output ``i`` has ``out_specs[i].channels`` channels
and ``ceil(H / stride_i) x ceil(W / stride_i)`` pixels, in the input dtype; finite inputs give finite outputs) or
raise ``ValueError`` / ``TypeError`` whose raising frame is inside ``src/necklace`` (never torch's or Python's error,
never another exception type, never a crash).

``make test`` runs a small, derandomised budget (about a minute). A long run, with fresh random cases each time
(``NECKLACE_FUZZ_EXAMPLES`` is the number of cases per 100 of the default budget, so 2000 means 20x; the counts of
clear errors and working cases are written to ``NECKLACE_FUZZ_STATS`` when set)::

    NECKLACE_FUZZ_EXAMPLES=2000 NECKLACE_FUZZ_STATS=fuzz-stats.json python -m pytest -q tests/test_fuzz.py
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("hypothesis")

import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.fuzz_helpers import (
    COUNTS,
    backbone_specs,
    box_lists,
    check_outputs,
    examples,
    expect,
    feature_lists,
    finite,
    graph_dicts,
    maps,
    mutated,
    neck_options,
    outcome,
)
from tests.helpers import SPEC_SETS

import necklace
from necklace import GraphNeck, NeckGraph
from necklace.roi import AdaptiveFeaturePooling, MultiLevelRoIPool, SoftRoISelection

pytestmark = pytest.mark.fuzz

LONG = bool(os.environ.get("NECKLACE_FUZZ_EXAMPLES"))
NECKS = necklace.list_necks()


def fuzz(default: int) -> Any:
    return settings(
        max_examples=examples(default),
        deadline=None,
        database=None,
        derandomize=not LONG,
        suppress_health_check=list(HealthCheck),
    )


@pytest.fixture(scope="module", autouse=True)
def _stats() -> Iterator[None]:
    yield
    path = os.environ.get("NECKLACE_FUZZ_STATS")
    if path:
        with open(path, "w") as f:
            json.dump(dict(sorted(COUNTS.items())), f, indent=2)


def _forward(neck: Any, feats: list[Any], train: bool, autocast: torch.dtype | None = None) -> Any:
    neck.train(train)
    with torch.set_grad_enabled(train):
        if autocast is not None:
            with torch.autocast("cpu", dtype=autocast):
                return neck(feats)
        return neck(feats)


# --------------------------------------------------------------------------------------------------- graphs
@fuzz(200)
@given(
    data=st.data(),
    base=graph_dicts(),
    broken=st.booleans(),
    image=st.tuples(st.integers(1, 48), st.integers(1, 48)),
    batch=st.integers(1, 2),
    train=st.booleans(),
)
def test_graph_dicts(data: Any, base: dict[str, Any], broken: bool, image: Any, batch: int, train: bool) -> None:
    spec = data.draw(mutated(base)) if broken else base
    graph = outcome("graph", lambda: NeckGraph.from_dict(spec))
    if graph is None:
        return
    neck = GraphNeck(graph)  # a graph that validated must build: every check happens at graph construction
    feats = maps(graph.in_specs, image, batch)
    outs = outcome("graph-forward", lambda: _forward(neck, feats, train))
    if outs is not None:
        check_outputs("graph-forward", neck, outs, image, batch, torch.float32)
        expect(finite(outs), "graph-forward", "finite inputs gave non-finite outputs")


@fuzz(100)
@given(data=st.data(), base=graph_dicts(), kind=st.sampled_from(["yaml", "json", "text", "bytes"]))
def test_graph_files(tmp_path_factory: Any, data: Any, base: dict[str, Any], kind: str) -> None:
    path = tmp_path_factory.mktemp("graphs") / ("g.json" if kind == "json" else "g.yaml")
    spec = data.draw(mutated(base)) if data.draw(st.booleans()) else base
    if kind == "yaml":
        path.write_text(yaml.safe_dump(_plain(spec)))
    elif kind == "json":
        path.write_text(json.dumps(_plain(spec)))
    elif kind == "text":
        path.write_text(data.draw(st.text(max_size=60)))
    else:
        path.write_bytes(data.draw(st.binary(max_size=60)))
    neck = outcome("file", lambda: GraphNeck.from_file(path))
    if neck is not None:
        assert isinstance(neck, GraphNeck) and neck.out_specs


def _plain(value: Any) -> Any:
    """The dict as YAML/JSON can hold it (NumPy scalars as Python numbers, NaN/Inf kept)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


# --------------------------------------------------------------------------------------------------- options
@fuzz(200)
@given(
    data=st.data(),
    name=st.sampled_from(NECKS),
    invalid=st.booleans(),
    specs=backbone_specs(),
    image=st.tuples(st.integers(1, 64), st.integers(1, 64)),
    batch=st.integers(1, 2),
    train=st.booleans(),
)
def test_neck_options(data: Any, name: str, invalid: bool, specs: Any, image: Any, batch: int, train: bool) -> None:
    options = data.draw(neck_options(name, invalid))
    neck = outcome("options", lambda: necklace.build_neck(name, specs, **options))
    if neck is None:
        return
    feats = maps(neck.in_specs, image, batch)
    outs = outcome("options-forward", lambda: _forward(neck, feats, train))
    if outs is not None:
        check_outputs("options-forward", neck, outs, image, batch, torch.float32)
        expect(finite(outs), "options-forward", f"{name} {options}: finite inputs gave non-finite outputs")


# --------------------------------------------------------------------------------------------------- inputs
_NECK_CACHE: dict[str, tuple[GraphNeck, dict[str, Any]]] = {}


def _cached(name: str) -> GraphNeck:
    """A small neck per name, built once, its weights and BatchNorm statistics restored before every case (a NaN map
    in a training forward poisons the running statistics, as in any torch module)."""
    if name not in _NECK_CACHE:
        torch.manual_seed(0)
        neck = necklace.build_neck(name, SPEC_SETS["c3c5"], **necklace.neck_info(name).small_options)
        _NECK_CACHE[name] = (neck, {k: v.clone() for k, v in neck.state_dict().items()})
    neck, state = _NECK_CACHE[name]
    neck.load_state_dict(state)
    return neck


@fuzz(300)
@given(data=st.data(), name=st.sampled_from(NECKS), train=st.booleans())
def test_forward_inputs(data: Any, name: str, train: bool) -> None:
    neck = _cached(name)
    case = data.draw(feature_lists(neck.in_specs))
    outs = outcome("forward", lambda: _forward(neck, case["feats"], train, case["autocast"]))
    if outs is None:
        return
    image, batch, dtype = case["image"], case["batch"], case["dtype"]
    if case["autocast"] is None:
        check_outputs("forward", neck, outs, image, batch, dtype)
    else:
        check_outputs("forward", neck, outs, image, batch, outs[0].dtype if outs else dtype)
    clean = case["fault"] in ("none", "channels_last", "strided")
    if clean and dtype in (torch.float32, torch.float64) and case["autocast"] is None:
        expect(finite(outs), "forward", f"{name}: finite {dtype} inputs gave non-finite outputs")
        if case["fault"] != "none" and not train:
            # another memory layout of the same maps: the same outputs (in eval mode, where the inference paths run
            # and BatchNorm uses running statistics; a training BatchNorm over two values amplifies float32 rounding
            # of either layout alike, as far from a float64 reference as from each other)
            ref = _forward(_cached(name), [f.contiguous() for f in case["feats"]], train)
            same = all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(outs, ref, strict=True))
            expect(same, "forward", f"{name}: {case['fault']} maps gave other outputs than contiguous ones")


# --------------------------------------------------------------------------------------------------- RoI boxes
_POOLERS = {
    "multilevel": lambda s: MultiLevelRoIPool([4, 8, 16], sampling_ratio=s),
    "adaptive": lambda s: AdaptiveFeaturePooling([4, 8, 16], channels=4, hidden=8, sampling_ratio=s),
    "adaptive-bn": lambda s: AdaptiveFeaturePooling([4, 8, 16], channels=4, hidden=8, norm="bn", sampling_ratio=s),
    "adaptive-gn": lambda s: AdaptiveFeaturePooling([4, 8, 16], channels=4, hidden=64, norm="gn", sampling_ratio=s),
    "adaptive-conv": lambda s: AdaptiveFeaturePooling(
        [4, 8, 16], channels=4, layer="conv", norm="gn", sampling_ratio=s
    ),
    "soft": lambda s: SoftRoISelection([4, 8, 16], channels=4, sampling_ratio=s),
}


@fuzz(300)
@given(
    data=st.data(),
    kind=st.sampled_from(sorted(_POOLERS)),
    sampling=st.sampled_from([2, 0, -1]),
    batch=st.integers(1, 2),
    image=st.sampled_from([32, 48, 5]),
    train=st.booleans(),
)
def test_roi_boxes(data: Any, kind: str, sampling: int, batch: int, image: int, train: bool) -> None:
    torch.manual_seed(0)
    pool = _POOLERS[kind](sampling).train(train)
    feats = [torch.randn(batch, 4, -(-image // s), -(-image // s)) for s in (4, 8, 16)]
    boxes = data.draw(box_lists(batch, image))
    out = outcome("roi", lambda: pool(feats, boxes))
    if out is None:
        return
    count = boxes.shape[0] if isinstance(boxes, torch.Tensor) else sum(b.shape[0] for b in boxes)
    expect(out.shape[0] == count, "roi", f"{kind}: {out.shape[0]} pooled rows for {count} boxes")
    expect(finite([out]), "roi", f"{kind}: finite maps and boxes gave non-finite pooled features")
