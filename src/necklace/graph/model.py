"""The neck graph as data: :class:`Edge`, :class:`Node` and :class:`NeckGraph` (wiring, channels, YAML/JSON).

A :class:`Node` says which earlier tensors it reads (:class:`Edge`), how it fuses them and which block refines the
result; :class:`NeckGraph` validates the wiring and every channel count at construction and round-trips through
plain dicts, YAML and JSON. :mod:`necklace.graph.engine` runs it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from necklace.layers.blocks import BLOCKS
from necklace.layers.conv import ConvCfg
from necklace.layers.fuse import FUSE_MODES
from necklace.layers.resample import DOWN_MODES, LEARNED_DOWN_MODES, UP_MODES
from necklace.spec import MAX_LEVEL, MIN_LEVEL, FeatureSpec, as_feature_specs, validate_in_specs

__all__ = ["ALIGN_MODES", "Edge", "NeckGraph", "Node", "input_name"]

ALIGN_MODES = ("auto", "always", "never")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def input_name(level: int) -> str:
    """Name of the backbone input at ``level`` inside a graph: ``C3`` for stride 8."""
    return f"C{level}"


def _to_list(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_to_list(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_list(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Edge:
    """An input of a node: the ``source`` tensor's name plus optional per-edge overrides.

    ``align``: ``auto`` (1x1 conv when channels must change), ``always`` (FPN laterals; on a learned
    ``conv``/``dwconv``/``dpconv`` downsample edge, a 1x1 conv *before* the stride-2 conv, as in YOLOv6's
    BiFusion) or ``never``; ``up``/``down``: resize mode when the source is coarser/finer than the node;
    ``pre_act``: activation applied to the source first (RetinaNet's ReLU before P7); ``kernel``: window of a
    learned stride-2 downsample conv (3; PicoDet's depthwise ``dpconv`` uses 5). ``None`` takes the default.

    Example:
        >>> Edge("P6", down="conv", pre_act="relu").to_dict()
        {'source': 'P6', 'down': 'conv', 'pre_act': 'relu'}
    """

    source: str
    align: str | None = None
    up: str | None = None
    down: str | None = None
    pre_act: str | None = None
    kernel: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise TypeError(f"Edge.source must be a node or input name (str), got {self.source!r}.")
        for attr, choices in (("align", ALIGN_MODES), ("up", UP_MODES), ("down", DOWN_MODES)):
            v = getattr(self, attr)
            if v is not None and v not in choices:
                raise ValueError(f"Edge({self.source!r}).{attr}={v!r} is not one of {list(choices)}.")
        k = self.kernel
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0):
            raise ValueError(f"Edge({self.source!r}).kernel={k!r} must be a positive odd int (3, 5, ...).")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source}
        for f in fields(self)[1:]:
            v = getattr(self, f.name)
            if v is not None:
                out[f.name] = v
        return out

    @classmethod
    def coerce(cls, value: Edge | str | Mapping[str, Any]) -> Edge:
        if isinstance(value, Edge):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, Mapping):
            return cls(**value)
        raise TypeError(f"a node input must be a name, an Edge or a dict, got {value!r}.")


@dataclass(frozen=True)
class Node:
    """One neck node: at pyramid ``level``, fuse ``inputs`` with ``fuse`` and refine with ``block``.

    Its output has ``channels`` channels at stride ``2**level``. Inputs may be strings (names of backbone
    inputs ``C<level>`` or earlier nodes), :class:`Edge` objects, or dicts.

    Example:
        >>> n = Node("P4_td", level=4, inputs=("C4", "P5_lat"), fuse="sum", channels=256)
        >>> [e.source for e in n.edges]
        ['C4', 'P5_lat']
    """

    name: str
    level: int
    inputs: Sequence[Edge | str | Mapping[str, Any]]
    channels: int
    fuse: str = "sum"
    block: str = "identity"
    block_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(f"node name {self.name!r} must be an identifier (letters, digits, '_').")
        if not isinstance(self.level, int) or not MIN_LEVEL <= self.level <= MAX_LEVEL:
            raise ValueError(f"node {self.name!r}: level {self.level!r} outside {MIN_LEVEL}..{MAX_LEVEL}.")
        if isinstance(self.inputs, (str, Edge)):
            raise TypeError(f"node {self.name!r}: inputs must be a list of names/Edges, got {self.inputs!r}.")
        object.__setattr__(self, "inputs", tuple(Edge.coerce(e) for e in self.inputs))
        if not self.inputs:
            raise ValueError(f"node {self.name!r} has no inputs; give it at least one source name.")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int) or self.channels <= 0:
            raise ValueError(f"node {self.name!r}: channels must be a positive int, got {self.channels!r}.")
        if self.fuse not in FUSE_MODES:
            raise ValueError(f"node {self.name!r}: unknown fuse {self.fuse!r}; choose one of {list(FUSE_MODES)}.")
        if self.block not in BLOCKS:
            raise ValueError(f"node {self.name!r}: unknown block {self.block!r}; choose one of {sorted(BLOCKS)}.")
        object.__setattr__(self, "block_args", _to_list(dict(self.block_args)))

    @property
    def edges(self) -> tuple[Edge, ...]:
        """The inputs as :class:`Edge` objects (``inputs`` is normalised to this at construction)."""
        return tuple(self.inputs)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "level": self.level,
            "inputs": [e.source if e == Edge(e.source) else e.to_dict() for e in self.edges],
            "channels": self.channels,
            "fuse": self.fuse,
            "block": self.block,
        }
        if self.block_args:
            out["block_args"] = _to_list(self.block_args)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Node:
        return cls(
            name=data["name"],
            level=int(data["level"]),
            inputs=tuple(Edge.coerce(e) for e in data["inputs"]),
            channels=int(data["channels"]),
            fuse=data.get("fuse", "sum"),
            block=data.get("block", "identity"),
            block_args=dict(data.get("block_args", {})),
        )


@dataclass(frozen=True)
class _EdgePlan:
    source: str
    steps: int
    in_channels: int
    out_channels: int
    align: bool
    up: str
    down: str
    pre_act: str | None
    kernel: int = 3


@dataclass(frozen=True)
class NeckGraph:
    """A whole neck as data: backbone ``in_specs``, ``nodes`` in a valid execution order (each reads only earlier
    names; :class:`GraphNeck` may run independent nodes in another order, same outputs), ``outputs``, defaults.

    ``conv`` configures refine blocks and stride-2 conv resamplers, ``align`` the 1x1 channel-alignment
    convs; ``align_mode``/``up``/``down`` are the edge defaults. Construction validates the wiring and
    every channel count, so a bad graph fails here, not in the first forward.

    Example:
        >>> g = NeckGraph(
        ...     in_specs=(FeatureSpec(64, 8), FeatureSpec(128, 16)),
        ...     nodes=(
        ...         Node("P4", 4, ("C4",), channels=32, block="conv", block_args={"kernel": 1}),
        ...         Node("P3", 3, ("C3", "P4"), channels=32, fuse="sum", block="conv"),
        ...     ),
        ...     outputs=("P3", "P4"),
        ... )
        >>> [s.stride for s in g.out_specs]
        [8, 16]
        >>> NeckGraph.from_dict(g.to_dict()) == g
        True
    """

    in_specs: tuple[FeatureSpec, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]
    conv: ConvCfg = field(default_factory=ConvCfg)
    align: ConvCfg = field(default_factory=ConvCfg)
    align_mode: str = "auto"
    up: str = "nearest"
    down: str = "conv"
    fuse_eps: float = 1e-4

    def __post_init__(self) -> None:
        object.__setattr__(self, "in_specs", validate_in_specs(as_feature_specs(self.in_specs)))
        if isinstance(self.nodes, Node) or not isinstance(self.nodes, Sequence):
            raise TypeError(f"NeckGraph.nodes must be a sequence of Node, got {type(self.nodes).__name__}.")
        object.__setattr__(self, "nodes", tuple(n if isinstance(n, Node) else Node.from_dict(n) for n in self.nodes))
        if isinstance(self.outputs, str):
            raise TypeError(f"NeckGraph.outputs must be a list of node names, got the string {self.outputs!r}.")
        object.__setattr__(self, "outputs", tuple(self.outputs))
        if self.align_mode not in ALIGN_MODES:
            raise ValueError(f"align_mode {self.align_mode!r} is not one of {list(ALIGN_MODES)}.")
        if self.up not in UP_MODES:
            raise ValueError(f"up {self.up!r} is not one of {list(UP_MODES)}.")
        if self.down not in DOWN_MODES:
            raise ValueError(f"down {self.down!r} is not one of {list(DOWN_MODES)}.")
        self.plan()  # validates wiring and channels

    # ------------------------------------------------------------------ wiring
    def sources(self) -> dict[str, tuple[int, int]]:
        """Every name a node may read: backbone inputs and nodes, mapped to ``(level, channels)``."""
        out = {input_name(s.level): (s.level, s.channels) for s in self.in_specs}
        for n in self.nodes:
            out[n.name] = (n.level, n.channels)
        return out

    def plan(self) -> list[tuple[Node, list[_EdgePlan], int]]:
        """Resolve every edge (steps, channels, align, modes) and each block's input channels."""
        known = {input_name(s.level): (s.level, s.channels) for s in self.in_specs}
        plans = []
        for node in self.nodes:
            if node.name in known:
                what = "a backbone input" if node.name.startswith("C") and node.name[1:].isdigit() else "a node"
                raise ValueError(f"node name {node.name!r} is used twice (it is already {what}); rename it.")
            edges = []
            for e in node.edges:
                if e.source not in known:
                    raise ValueError(
                        f"node {node.name!r} reads {e.source!r}, which is not defined before it. Known names at "
                        f"that point: {sorted(known)}. Define {e.source!r} earlier or fix the name "
                        "(backbone inputs are named C<level>, e.g. C3 for stride 8)."
                    )
                level, ch = known[e.source]
                mode = e.align or self.align_mode
                weighted = node.fuse != "concat"
                if mode == "always" or (mode == "auto" and weighted):
                    out_ch = node.channels
                else:
                    out_ch = ch
                edges.append(
                    _EdgePlan(
                        source=e.source,
                        steps=node.level - level,
                        in_channels=ch,
                        out_channels=out_ch,
                        align=mode == "always",
                        up=e.up or self.up,
                        down=e.down or self.down,
                        pre_act=e.pre_act,
                        kernel=3 if e.kernel is None else e.kernel,
                    )
                )
            if node.fuse == "concat":
                block_in = sum(p.out_channels for p in edges)
            else:
                chans = [p.out_channels for p in edges]
                if len(set(chans)) > 1:
                    detail = ", ".join(f"{p.source}: {p.out_channels}" for p in edges)
                    raise ValueError(
                        f"node {node.name!r} fuses by {node.fuse!r} inputs with different channels ({detail}). "
                        "Sum-type fusion needs equal channels: use align 'auto' (1x1 conv to the node's "
                        f"{node.channels} channels) on those edges, or fuse='concat'."
                    )
                block_in = chans[0]
            if node.block == "identity" and block_in != node.channels:
                raise ValueError(
                    f"node {node.name!r}: block 'identity' receives {block_in} channels but the node declares "
                    f"{node.channels}. Use block 'conv' to map channels, or set channels={block_in}."
                )
            plans.append((node, edges, block_in))
            known[node.name] = (node.level, node.channels)
        if not self.outputs:
            raise ValueError("NeckGraph.outputs is empty; list the node names the neck returns.")
        for o in self.outputs:
            if o not in known:
                raise ValueError(f"output {o!r} is not a node or input of the graph; known: {sorted(known)}.")
        levels = [known[o][0] for o in self.outputs]
        if levels != sorted(levels) or len(set(levels)) != len(levels):
            raise ValueError(
                f"outputs {list(self.outputs)} have levels {levels}; outputs must be one per level, highest "
                "resolution (lowest level) first."
            )
        return plans

    @property
    def out_specs(self) -> tuple[FeatureSpec, ...]:
        """``FeatureSpec`` of each output, in order."""
        src = self.sources()
        return tuple(FeatureSpec(src[o][1], 2 ** src[o][0]) for o in self.outputs)

    # ---------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON/YAML-ready) that :meth:`from_dict` turns back into an equal graph."""
        return {
            "in_specs": [s.to_dict() for s in self.in_specs],
            "nodes": [n.to_dict() for n in self.nodes],
            "outputs": list(self.outputs),
            "conv": self.conv.to_dict(),
            "align": self.align.to_dict(),
            "align_mode": self.align_mode,
            "up": self.up,
            "down": self.down,
            "fuse_eps": self.fuse_eps,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NeckGraph:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown NeckGraph keys {sorted(unknown)}; expected some of {sorted(known)}.")
        return cls(
            in_specs=tuple(FeatureSpec.from_dict(s) for s in data["in_specs"]),
            nodes=tuple(Node.from_dict(n) for n in data["nodes"]),
            outputs=tuple(data["outputs"]),
            conv=ConvCfg.from_dict(data.get("conv", {})),
            align=ConvCfg.from_dict(data.get("align", {})),
            align_mode=data.get("align_mode", "auto"),
            up=data.get("up", "nearest"),
            down=data.get("down", "conv"),
            fuse_eps=float(data.get("fuse_eps", 1e-4)),
        )

    def save(self, path: str | Path) -> None:
        """Write the graph as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
        path = Path(path)
        data = self.to_dict()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(data, sort_keys=False)
        else:
            text = json.dumps(data, indent=2)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> NeckGraph:
        """Read a graph written by :meth:`save` (or by hand) from YAML or JSON."""
        path = Path(path)
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: expected a mapping with in_specs/nodes/outputs, got {type(data).__name__}.")
        return cls.from_dict(data)

    # ------------------------------------------------------------- describing
    def describe(self) -> str:
        """The node graph as a text table (level, node, inputs with their resize, fusion, block)."""
        rows = [("level", "node", "ch", "inputs", "fuse", "block")]
        for s in self.in_specs:
            rows.append((f"{s.level} (/{s.stride})", input_name(s.level), str(s.channels), "backbone", "", ""))
        for node, edges, _ in self.plan():
            parts = []
            for p in edges:
                ops = []
                if p.pre_act:
                    ops.append(p.pre_act)
                learned_down = p.steps > 0 and p.down in LEARNED_DOWN_MODES
                if p.align or (not learned_down and p.in_channels != p.out_channels):
                    ops.append(f"1x1 {p.in_channels}->{p.out_channels}")
                if p.steps > 0:
                    k = f" {p.kernel}x{p.kernel}" if learned_down and p.kernel != 3 else ""
                    ops.append(f"{p.down}{k} /{2**p.steps}")
                elif p.steps < 0:
                    ops.append(f"{p.up} x{2**-p.steps}")
                parts.append(p.source + (f" [{', '.join(ops)}]" if ops else ""))
            block = node.block + (f"{node.block_args}" if node.block_args else "")
            fuse = node.fuse if len(edges) > 1 else "-"
            rows.append(
                (f"{node.level} (/{2**node.level})", node.name, str(node.channels), "; ".join(parts), fuse, block)
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        outs = ", ".join(f"{o} ({s.channels}ch /{s.stride})" for o, s in zip(self.outputs, self.out_specs, strict=True))
        return "\n".join(lines) + f"\noutputs: {outs}"
