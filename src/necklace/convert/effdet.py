"""Load efficientdet-pytorch (``effdet``) ``BiFpn`` weights into a necklace BiFPN, and back.

effdet numbers the tensors of one cell ``0..L-1`` (its input levels, finest first) and appends each fnode's
output; ``cell.{r}.fnode.{i}.combine.resample.{offset}`` is the edge that reads tensor ``offset``. necklace's
``bifpn`` graph has the same nodes in the same order (``r{r}_*`` nodes of repeat ``r``; extra levels
``P6_in``, ``P7_in``, ... are effdet's ``resample.{level - min_level}``), so the key map is computed from the
graph, for any preset (D0..D7), width, repeat count and level range.

The state dict cannot say *how* a node computes: build the necklace neck with the settings of the effdet
model (``padding="same"`` and ``redundant_bias=True`` for ``tf_efficientdet_*``; fusion ``fast``/``softmax``/
``sum`` as effdet's ``fastattn``/``attn``/``sum``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from necklace.graph import GraphNeck, input_name

__all__ = ["effdet_bifpn_key_map", "from_effdet_bifpn", "to_effdet_bifpn"]

_REPEAT_RE = re.compile(r"^r(\d+)_")
_EDGE_RE = re.compile(r"^edges\.(\d+)\.align\.(conv|norm)\.(.+)$")
#: necklace refine-block prefix -> effdet ``after_combine`` prefix (separable and plain conv nodes)
_BLOCK_PREFIXES = (
    ("block.dw.", "after_combine.conv.conv_dw."),
    ("block.pw.", "after_combine.conv.conv_pw."),
    ("block.norm.", "after_combine.conv.bn."),
    ("block.conv.", "after_combine.conv.conv."),
)
_ALIGN = {"conv": "conv.conv.", "norm": "conv.bn."}
_MAX_LISTED = 12


def _not_bifpn(why: str) -> ValueError:
    return ValueError(
        f"this neck does not have effdet's BiFpn layout: {why}. Build it with "
        "necklace.build_neck('bifpn', in_specs, ...) using the effdet model's width, repeats and levels."
    )


def _layout(neck: GraphNeck) -> tuple[dict[str, int], dict[str, tuple[int, int, tuple[int, ...]]]]:
    """Return ``{creator node: effdet resample index}`` and ``{cell node: (cell, fnode, edge offsets)}``."""
    graph = neck.graph
    known = graph.sources()
    out_levels = [known[o][0] for o in graph.outputs]
    lo, hi = out_levels[0], out_levels[-1]
    if out_levels != list(range(lo, hi + 1)):
        raise _not_bifpn(f"outputs {list(graph.outputs)} are not one per level {lo}..{hi}")
    n_levels = hi - lo + 1
    top_in = max(s.level for s in graph.in_specs)
    feats: dict[int, str] = {}
    for level in range(lo, min(top_in, hi) + 1):
        if input_name(level) not in known:
            raise _not_bifpn(f"level {level} (stride {2**level}) is not a backbone input")
        feats[level] = input_name(level)

    creators: dict[str, int] = {}
    cells: list[list[str]] = []
    for node in graph.nodes:
        m = _REPEAT_RE.match(node.name)
        if m is None:  # extra coarser level made from the level below (effdet ``resample.{index}``)
            srcs = [e.source for e in node.edges]
            if cells or node.level in feats or srcs != [feats.get(node.level - 1)]:
                raise _not_bifpn(
                    f"node {node.name!r} (level {node.level}, inputs {srcs}) is neither an extra-level creator "
                    f"reading level {node.level - 1} nor a cell node named 'r<repeat>_...'"
                )
            creators[node.name] = node.level - lo
            feats[node.level] = node.name
            continue
        r = int(m.group(1))
        if r == len(cells):
            cells.append([])
        elif r != len(cells) - 1:
            raise _not_bifpn(f"node {node.name!r} of repeat {r} comes after nodes of repeat {len(cells) - 1}")
        cells[r].append(node.name)

    nodes = {n.name: n for n in graph.nodes}
    fnodes: dict[str, tuple[int, int, tuple[int, ...]]] = {}
    for r, cell in enumerate(cells):
        missing = [level for level in range(lo, hi + 1) if level not in feats]
        if missing:
            raise _not_bifpn(f"repeat {r} has no input at level(s) {missing}")
        ids = [feats[level] for level in range(lo, hi + 1)]
        for i, name in enumerate(cell):
            offsets = []
            for e in nodes[name].edges:
                if e.source not in ids:
                    raise _not_bifpn(
                        f"node {name!r} reads {e.source!r}, which is neither an input of repeat {r} "
                        f"({ids[:n_levels]}) nor an earlier node of it"
                    )
                offsets.append(ids.index(e.source))
            if len(set(offsets)) != len(offsets):
                raise _not_bifpn(f"node {name!r} reads the same tensor twice ({[e.source for e in nodes[name].edges]})")
            fnodes[name] = (r, i, tuple(offsets))
            ids.append(name)
        last = ids[-n_levels:]
        if [known[n][0] for n in last] != list(range(lo, hi + 1)):
            raise _not_bifpn(f"the last {n_levels} nodes of repeat {r} ({last}) are not levels {lo}..{hi} in order")
        feats = {lo + k: n for k, n in enumerate(last)}
    if not cells:
        raise _not_bifpn("it has no cell nodes (named 'r<repeat>_...')")
    final = tuple(feats[level] for level in range(lo, hi + 1))
    if tuple(graph.outputs) != final:
        raise _not_bifpn(f"outputs {list(graph.outputs)} are not the last cell's last nodes {list(final)}")
    return creators, fnodes


def effdet_bifpn_key_map(neck: GraphNeck) -> dict[str, str]:
    """Map each state-dict key of a necklace BiFPN ``neck`` to the effdet ``BiFpn`` key holding the same tensor.

    Keys are given without effdet's ``fpn.`` prefix (the ``EfficientDet.fpn`` attribute).

    Example:
        >>> neck = necklace.build_neck("bifpn", [FeatureSpec(40, 8), FeatureSpec(112, 16), FeatureSpec(320, 32)])
        >>> keys = effdet_bifpn_key_map(neck)
        >>> keys["nodes.P6_in.edges.0.align.conv.weight"]
        'resample.3.conv.conv.weight'
        >>> keys["nodes.r0_P5_td.edges.0.align.norm.running_var"]
        'cell.0.fnode.1.combine.resample.2.conv.bn.running_var'
        >>> keys["nodes.r2_P4_out.fuse.weight"], keys["nodes.r2_P4_out.block.dw.weight"]
        ('cell.2.fnode.4.combine.edge_weights', 'cell.2.fnode.4.after_combine.conv.conv_dw.weight')
    """
    if not isinstance(neck, GraphNeck):
        raise TypeError(
            f"neck must be a necklace GraphNeck (e.g. build_neck('bifpn', ...)), got {type(neck).__name__}."
        )
    creators, fnodes = _layout(neck)
    out: dict[str, str] = {}
    for key in neck.state_dict():
        parts = key.split(".", 2)
        if len(parts) != 3 or parts[0] != "nodes":
            raise _not_bifpn(f"state-dict key {key!r} is not inside a node")
        name, rest = parts[1], parts[2]
        if name in creators:
            m = _EDGE_RE.match(rest)
            if m is None or m.group(1) != "0":
                raise _not_bifpn(f"extra-level key {key!r} has no effdet counterpart")
            out[key] = f"resample.{creators[name]}.{_ALIGN[m.group(2)]}{m.group(3)}"
            continue
        r, i, offsets = fnodes[name]
        prefix = f"cell.{r}.fnode.{i}."
        m = _EDGE_RE.match(rest)
        if m is not None:
            offset = offsets[int(m.group(1))]
            out[key] = f"{prefix}combine.resample.{offset}.{_ALIGN[m.group(2)]}{m.group(3)}"
        elif rest == "fuse.weight":
            out[key] = f"{prefix}combine.edge_weights"
        else:
            for ours, theirs in _BLOCK_PREFIXES:
                if rest.startswith(ours):
                    out[key] = prefix + theirs + rest[len(ours) :]
                    break
            else:
                raise _not_bifpn(f"key {key!r} has no effdet counterpart")
    return out


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def from_effdet_bifpn(state_dict: Mapping[str, Tensor], neck: GraphNeck) -> dict[str, Tensor]:
    """Convert an effdet ``BiFpn`` state dict into one that ``neck.load_state_dict`` accepts strictly.

    ``state_dict`` is ``BiFpn.state_dict()`` or a whole ``EfficientDet`` state dict (only its ``fpn.`` keys are
    used). ``neck`` must be built with the effdet model's settings: for ``tf_efficientdet_d0`` that is
    ``build_neck("bifpn", [FeatureSpec(40, 8), FeatureSpec(112, 16), FeatureSpec(320, 32)], preset="d0",
    padding="same", redundant_bias=True)``; for ``efficientdet_d0`` the defaults ``padding="symmetric"``,
    ``redundant_bias=False``. Raises ``ValueError`` naming missing and unexpected keys and shape mismatches.

    Example (the round trip through effdet's key layout; tests/test_parity_effdet.py checks real effdet):
        >>> from necklace.convert.effdet import to_effdet_bifpn
        >>> specs = [FeatureSpec(40, 8), FeatureSpec(112, 16), FeatureSpec(320, 32)]
        >>> src = necklace.build_neck("bifpn", specs, preset="d0", padding="same", redundant_bias=True)
        >>> sd = to_effdet_bifpn(src, prefix="fpn.")  # what EfficientDet.state_dict() holds for its BiFpn
        >>> tuple(sd["fpn.cell.0.fnode.1.combine.resample.2.conv.conv.weight"].shape)
        (64, 320, 1, 1)
        >>> dst = necklace.build_neck("bifpn", specs, preset="d0", padding="same", redundant_bias=True)
        >>> dst.load_state_dict(from_effdet_bifpn(sd, dst))
        <All keys matched successfully>
        >>> d1 = necklace.build_neck("bifpn", specs, preset="d1")
        >>> from_effdet_bifpn(sd, d1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: effdet BiFpn weights do not fit this neck: ...
    """
    key_map = effdet_bifpn_key_map(neck)
    if any(k.startswith("fpn.") for k in state_dict):
        sd = {k[4:]: v for k, v in state_dict.items() if k.startswith("fpn.")}
    else:
        sd = dict(state_dict)
    target = neck.state_dict()
    # BatchNorm fills a missing num_batches_tracked itself, so older checkpoints without it still load
    optional = {nk for nk in key_map if nk.endswith(".num_batches_tracked")}
    missing = [ek for nk, ek in key_map.items() if ek not in sd and nk not in optional]
    unexpected = sorted(set(sd) - set(key_map.values()))
    mismatched = [
        f"{ek} {tuple(sd[ek].shape)} -> {nk} {tuple(target[nk].shape)}"
        for nk, ek in key_map.items()
        if ek in sd and tuple(sd[ek].shape) != tuple(target[nk].shape)
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing effdet keys the neck needs: {_listed(missing)}")
        if unexpected:
            problems.append(f"unexpected effdet keys with no place in the neck: {_listed(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches (effdet -> necklace): {_listed(mismatched)}")
        raise ValueError(
            "effdet BiFpn weights do not fit this neck: "
            + "; ".join(problems)
            + ". Build the neck with the effdet model's in_specs, width, repeats, levels, fusion and "
            "redundant_bias (tf_efficientdet_* ports: padding='same', redundant_bias=True)."
        )
    return {nk: sd[ek] for nk, ek in key_map.items() if ek in sd}


def to_effdet_bifpn(neck: GraphNeck, prefix: str = "") -> dict[str, Tensor]:
    """The inverse of :func:`from_effdet_bifpn`: ``neck``'s weights under effdet ``BiFpn`` keys.

    Use ``prefix="fpn."`` for keys of a whole ``EfficientDet`` model.

    Example:
        >>> neck = necklace.build_neck("bifpn", [FeatureSpec(40, 8), FeatureSpec(112, 16), FeatureSpec(320, 32)])
        >>> sd = to_effdet_bifpn(neck)
        >>> len(sd) == len(neck.state_dict()), tuple(sd["cell.0.fnode.4.combine.edge_weights"].shape)
        (True, (3,))
    """
    target = neck.state_dict()
    return {prefix + ek: target[nk] for nk, ek in effdet_bifpn_key_map(neck).items()}
