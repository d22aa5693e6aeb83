"""Strategies and the oracle of the fuzz suite (:mod:`tests.test_fuzz`): random valid and invalid graph dicts, neck
options read from the registry's typed options, forward inputs and RoI boxes; every case must either work with the
promised shapes or raise ``ValueError`` / ``TypeError`` from necklace's own code."""

from __future__ import annotations

import math
import os
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st
from torch import Tensor

import necklace
from necklace import FeatureSpec
from necklace.graph.model import ALIGN_MODES
from necklace.layers.blocks import BLOCKS, block_arg_specs
from necklace.layers.conv import ACTS
from necklace.layers.resample import DOWN_MODES, UP_MODES
from necklace.options import OptionSpec, _is_sequence, _is_union

SRC = str(Path(necklace.__file__).parent)
#: what the cases ended in, per fuzz test: "ok", "clear" (a necklace ValueError/TypeError)
COUNTS: Counter[str] = Counter()

# ----------------------------------------------------------------------------------------------------- oracle


class DeepError(AssertionError):
    """A bad input surfaced an error that necklace did not raise itself (torch's, Python's) or of another type."""


class SilentWrong(AssertionError):
    """A case ran but broke a promise: wrong shapes, dtypes, non-finite outputs from finite inputs."""


def outcome(kind: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn``: return its result (the caller checks it), or ``None`` after a clear error, which must be a
    ``ValueError`` / ``TypeError`` raised by a frame inside ``src/necklace`` with a message; anything else raises
    :class:`DeepError` with the traceback."""
    try:
        result = fn()
    except (ValueError, TypeError) as e:
        frames = traceback.extract_tb(e.__traceback__)
        last = frames[-1].filename if frames else "?"
        if not last.startswith(SRC) or not str(e).strip():
            COUNTS[f"{kind}:deep"] += 1
            raise DeepError(f"{type(e).__name__} raised outside necklace ({last}): {e}") from e
        COUNTS[f"{kind}:clear"] += 1
        return None
    except Exception as e:
        COUNTS[f"{kind}:deep"] += 1
        raise DeepError(f"{type(e).__name__} (not ValueError/TypeError): {e}") from e
    COUNTS[f"{kind}:ok"] += 1
    return result


def expect(condition: bool, kind: str, message: str) -> None:
    if not condition:
        COUNTS[f"{kind}:silent"] += 1
        raise SilentWrong(message)


def promised_size(image: tuple[int, int], stride: int, finest_input: int) -> tuple[int, int]:
    """``ceil(H / stride)`` at and above the finest backbone level; below it (a graph node finer than every input)
    the engine's documented rule, twice the next coarser level."""
    if stride >= finest_input:
        return (math.ceil(image[0] / stride), math.ceil(image[1] / stride))
    k = finest_input // stride
    return (k * math.ceil(image[0] / finest_input), k * math.ceil(image[1] / finest_input))


def check_outputs(kind: str, neck: Any, outs: Any, image: tuple[int, int], batch: int, dtype: torch.dtype) -> None:
    """Outputs as promised: one per ``out_specs``, ``(N, C_i, ceil(H / s_i), ceil(W / s_i))``, the input dtype."""
    expect(isinstance(outs, list) and len(outs) == len(neck.out_specs), kind, f"{len(outs)} outputs")
    finest = min(s.stride for s in neck.in_specs)
    for o, s in zip(outs, neck.out_specs, strict=True):
        want = (batch, s.channels, *promised_size(image, s.stride, finest))
        expect(tuple(o.shape) == want, kind, f"output {tuple(o.shape)} != promised {want} (stride {s.stride})")
        expect(o.dtype == dtype, kind, f"output dtype {o.dtype} != {dtype}")


def finite(tensors: Sequence[Tensor]) -> bool:
    return all(bool(torch.isfinite(t.float()).all()) for t in tensors)


def maps(specs: Sequence[FeatureSpec], image: tuple[int, int], batch: int, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = image
    return [
        torch.randn(batch, s.channels, math.ceil(h / s.stride), math.ceil(w / s.stride), generator=g) for s in specs
    ]


def examples(default: int) -> int:
    """``NECKLACE_FUZZ_EXAMPLES`` scales every fuzz test (a long run); the default keeps ``make test`` fast."""
    total = os.environ.get("NECKLACE_FUZZ_EXAMPLES")
    return default if not total else max(1, int(total) * default // 100)


# ------------------------------------------------------------------------------------------------ strategies
#: values a user might put anywhere by mistake
JUNK = st.one_of(
    st.sampled_from([None, True, False, "", "3", "yes", "no", [], {}, [1, 2], {"a": 1}, 0, -1, 2**40]),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), -1.5, 0.0, 0.5, 1.7, 3.7, 1e30, 2.0**70]),
    st.floats(-2, 2),
    st.integers(-3, 3).map(np.int64),
    st.text(max_size=4),
)


@st.composite
def in_specs(draw: st.DrawFn, valid: bool = True) -> list[dict[str, Any]]:
    n = draw(st.integers(1, 4))
    lo = draw(st.integers(1, 5))
    specs = [{"channels": draw(st.integers(1, 12)), "stride": 2 ** (lo + i)} for i in range(n)]
    if not valid or draw(st.integers(0, 9)) == 0:
        i = draw(st.integers(0, n - 1))
        specs[i][draw(st.sampled_from(["channels", "stride"]))] = draw(JUNK)
    return specs


def _edge(draw: st.DrawFn, source: str) -> Any:
    if draw(st.integers(0, 2)) == 0:
        return source
    edge: dict[str, Any] = {"source": source}
    for key, values in (("align", ALIGN_MODES), ("up", UP_MODES), ("down", DOWN_MODES), ("pre_act", tuple(ACTS))):
        if draw(st.integers(0, 3)) == 0:
            edge[key] = draw(st.sampled_from(values))
    if draw(st.integers(0, 5)) == 0:
        edge["kernel"] = draw(st.sampled_from([1, 3, 5]))
    return edge


def block_args(draw: st.DrawFn, block: str) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for spec in block_arg_specs(block):
        if draw(st.integers(0, 3)) == 0:
            args[spec.name] = draw(option_value(spec, small=True))
    return args


@st.composite
def graph_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A graph dict, valid by construction most of the time; ``mutate`` then breaks one thing in some."""
    specs = draw(in_specs())
    levels = [
        min(max(int(math.log2(s["stride"])), 1), 8) if isinstance(s["stride"], int) and s["stride"] > 0 else 3
        for s in specs
    ]
    known = [(f"C{lv}", lv) for lv in levels]
    nodes = []
    for i in range(draw(st.integers(1, 5))):
        level = draw(st.integers(max(1, min(levels) - 1), min(8, max(levels) + 2)))
        k = draw(st.integers(1, min(3, len(known))))
        sources = draw(st.lists(st.sampled_from([n for n, _ in known]), min_size=k, max_size=k, unique=True))
        fuse = draw(st.sampled_from(["sum", "sum", "concat", "fast", "softmax"] + (["gp"] if k == 2 else [])))
        block = draw(st.sampled_from(["conv", "conv", "identity", *BLOCKS]))
        node: dict[str, Any] = {
            "name": f"N{i}",
            "level": level,
            "inputs": [_edge(draw, s) for s in sources],
            "channels": draw(st.integers(1, 12)),
            "fuse": fuse,
            "block": block,
        }
        if draw(st.booleans()):
            node["block_args"] = block_args(draw, block)
        nodes.append(node)
        known.append((node["name"], level))
    by_level: dict[int, str] = {}
    for name, lv in known:
        by_level[lv] = name  # the latest name at each level
    out_levels = sorted(draw(st.sets(st.sampled_from(sorted(by_level)), min_size=1, max_size=len(by_level))))
    data: dict[str, Any] = {"in_specs": specs, "nodes": nodes, "outputs": [by_level[lv] for lv in out_levels]}
    if draw(st.booleans()):
        data["conv"] = {"norm": draw(st.sampled_from([None, "bn", "gn"])), "act": draw(st.sampled_from([None, "relu"]))}
    if draw(st.integers(0, 4)) == 0:
        data["fuse_eps"] = draw(st.floats(1e-6, 1e-2))
    return data


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [path] + [p for k, v in value.items() for p in _leaves(v, (*path, k))]
    if isinstance(value, list):
        return [path] + [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))]
    return [path]


@st.composite
def mutated(draw: st.DrawFn, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with one thing broken: a leaf replaced by junk, a key added (a typo) or removed."""
    import copy

    data = copy.deepcopy(data)
    path = draw(st.sampled_from([p for p in _leaves(data) if p]))
    parent: Any = data
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["junk", "typo", "drop"]))
    if action == "junk" or not isinstance(parent, dict):
        parent[path[-1]] = draw(JUNK)
    elif action == "typo":
        parent[str(path[-1]) + draw(st.sampled_from(["s", "_", "x"]))] = parent[path[-1]]
    else:
        del parent[path[-1]]
    return data


# ------------------------------------------------------------------------------------------------ neck options
_SMALL_INT = {"width": (1, 24), "rfa_hidden": (1, 16), "max_channels": (8, 64), "gn_groups": (1, 8)}
_SMALL_FLOAT = {"width": (0.03, 0.2), "depth": (0.1, 1.0), "expansion": (0.25, 1.0)}


def option_value(spec: OptionSpec, small: bool = True) -> st.SearchStrategy[Any]:
    """Valid values of one typed option (small, so that a neck builds and runs fast), from its annotation, choices
    and range."""
    return _value(spec.hint, spec, spec.name)


def _value(hint: Any, spec: OptionSpec, name: str) -> st.SearchStrategy[Any]:
    if _is_union(hint):
        members = [m for m in hint.__args__ if m is not type(None)]
        parts = [_value(m, spec, name) for m in members]
        if type(None) in hint.__args__:
            parts.append(st.none())
        return st.one_of(*parts)
    if _is_sequence(hint):
        args = [a for a in getattr(hint, "__args__", ()) if a is not Ellipsis]
        elem = _value(args[0], spec, name) if args else st.integers(1, 4)
        size = (2, 2) if name == "levels" else (3, 3) if name == "channels" else (1, 3)
        return st.lists(elem, min_size=size[0], max_size=size[1])
    if spec.choices is not None:
        return st.sampled_from(list(spec.choices))
    if hint is bool:
        return st.booleans()
    if hint is int:
        lo = int(spec.ge if spec.ge is not None else 1)
        lo_hi = _SMALL_INT.get(name, (lo, lo + 2))
        if name == "levels" or name == "min_level":
            lo_hi = (2, 7)
        values = st.integers(max(lo, lo_hi[0]), lo_hi[1])
        return values.filter(lambda v: v % 2 == 1) if spec.odd else values
    if hint is float:
        lo, hi = _SMALL_FLOAT.get(name, (0.05, 0.9))
        if name in ("norm_eps",):
            lo, hi = 1e-5, 1e-2
        return st.floats(lo, hi)
    return st.nothing()


@st.composite
def neck_options(draw: st.DrawFn, name: str, invalid: bool) -> dict[str, Any]:
    """A neck's small options with a few typed options redrawn; with ``invalid`` one of them is junk, or a typo."""
    info = necklace.neck_info(name)
    options = dict(info.small_options)
    specs = [s for s in info.options if not (s.name == "preset" and "width" not in info.small_options)]
    for spec in draw(st.lists(st.sampled_from(specs), max_size=3, unique_by=lambda s: s.name)):
        options[spec.name] = draw(option_value(spec))
    if invalid:
        spec = draw(st.sampled_from(info.options))
        if draw(st.integers(0, 4)) == 0:
            options[spec.name + draw(st.sampled_from(["s", "_", "x"]))] = spec.default  # a typo'd name
        else:
            options[spec.name] = draw(JUNK)
    return options


@st.composite
def backbone_specs(draw: st.DrawFn) -> list[Any]:
    """Backbone ``in_specs``: mostly consecutive levels (as FeatureSpecs, pairs or dicts), sometimes broken."""
    n = draw(st.integers(2, 4))
    lo = draw(st.integers(2, 4))
    specs: list[Any] = [FeatureSpec(draw(st.integers(1, 24)), 2 ** (lo + i)) for i in range(n)]
    fault = draw(st.sampled_from(["none"] * 8 + ["pair", "dict", "gap", "junk", "reversed"]))
    if fault == "pair":
        specs = [(s.channels, s.stride) for s in specs]
    elif fault == "dict":
        specs = [s.to_dict() for s in specs]
    elif fault == "gap":
        specs = [specs[0], FeatureSpec(4, specs[-1].stride * 2)]
    elif fault == "junk":
        specs[draw(st.integers(0, n - 1))] = draw(JUNK)
    elif fault == "reversed":
        specs = specs[::-1]
    return specs


# ------------------------------------------------------------------------------------------------ inputs
DTYPES = [torch.float32] * 4 + [torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool]


@st.composite
def feature_lists(draw: st.DrawFn, specs: Sequence[FeatureSpec]) -> dict[str, Any]:
    """Maps for ``specs`` at a random image size (1x1 up to 70 px, or 0), batch 0-2, a dtype, perhaps broken:
    a wrong channel count, a map dropped, mixed dtypes, non-finite values, a non-tensor."""
    image = (draw(st.integers(0, 70)), draw(st.integers(1, 70)))
    if draw(st.booleans()):
        image = (max(image[0], 1), image[1])
    batch = draw(st.integers(0, 2))
    dtype = draw(st.sampled_from(DTYPES))
    feats: list[Any] = maps(specs, image, batch, draw(st.integers(0, 3)))
    feats = [f.to(dtype) for f in feats]
    fault = draw(
        st.sampled_from(
            ["none"] * 6
            + ["channels_last", "strided", "channels", "drop", "mixed", "nan", "inf", "numpy", "5d", "swap"]
        )
    )
    if fault == "channels_last":  # layouts a backbone may hand over: valid, must give the same shapes
        feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    elif fault == "strided":
        feats = [torch.cat([f, f], dim=-1)[..., ::2] for f in feats]
    if fault == "channels":
        i = draw(st.integers(0, len(feats) - 1))
        feats[i] = torch.zeros(batch, feats[i].shape[1] + 1, *feats[i].shape[2:], dtype=dtype)
    elif fault == "drop":
        feats.pop(draw(st.integers(0, len(feats) - 1)))
    elif fault == "mixed":
        feats[-1] = feats[-1].to(torch.float64 if dtype != torch.float64 else torch.float32)
    elif fault in ("nan", "inf") and feats[0].numel() and feats[0].is_floating_point():
        feats[0] = feats[0].clone()
        feats[0].view(-1)[0] = float("nan") if fault == "nan" else float("inf")
    elif fault == "numpy":
        feats[0] = feats[0].float().numpy()
    elif fault == "5d":
        feats[0] = feats[0].unsqueeze(0)
    elif fault == "swap" and len(feats) > 1:
        feats[0], feats[-1] = feats[-1], feats[0]
    autocast = draw(st.sampled_from([None, None, torch.bfloat16]))
    return {"feats": feats, "image": image, "batch": batch, "dtype": dtype, "fault": fault, "autocast": autocast}


@st.composite
def box_lists(draw: st.DrawFn, batch: int, image: int) -> Any:
    """Per-image boxes (or a Tensor[K, 5]): in-image, inverted, huge, negative, non-finite, integer, empty, wrong
    shapes, wrong counts."""
    coord = st.one_of(
        st.floats(-10, image + 10, width=32),
        st.sampled_from([0.0, float(image), float("nan"), float("inf"), -float("inf"), 1e9, -1e9, 1e30]),
    )
    lists = []
    for _ in range(batch):
        n = draw(st.integers(0, 3))
        rows = [[draw(coord) for _ in range(4)] for _ in range(n)]
        boxes = torch.tensor(rows, dtype=torch.float32).reshape(n, 4)
        kind = draw(st.sampled_from(["float"] * 5 + ["double", "int", "half", "bool", "3col", "flat"]))
        if kind == "double":
            boxes = boxes.double()
        elif kind == "int":
            boxes = torch.nan_to_num(boxes).clamp(-1e6, 1e6).long()
        elif kind == "half":
            boxes = boxes.half()
        elif kind == "bool":
            boxes = boxes > 0
        elif kind == "3col":
            boxes = boxes[:, :3]
        elif kind == "flat" and n == 1:
            boxes = boxes[0]
        lists.append(boxes)
    shape = draw(st.sampled_from(["list"] * 6 + ["fewer", "more", "k5", "tensor"]))
    if shape == "fewer" and lists:
        return lists[:-1]
    if shape == "more":
        return [*lists, torch.zeros(1, 4)]
    if shape == "k5":
        ids = draw(st.lists(st.sampled_from([0.0, 1.0, float(batch), -1.0, 0.5, float("nan")]), min_size=2, max_size=2))
        return torch.tensor([[ids[0], 0, 0, 10, 10], [ids[1], 2, 2, 30, 30]], dtype=torch.float32)
    if shape == "tensor" and lists:
        return lists[0]
    return lists
