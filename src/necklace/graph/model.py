"""The neck graph as data: :class:`Edge`, :class:`Node` and :class:`NeckGraph` (wiring, channels, YAML/JSON).

A :class:`Node` says which earlier tensors it reads (:class:`Edge`), how it fuses them and which block refines the
result; :class:`NeckGraph` validates the wiring and every channel count at construction and round-trips through
plain dicts, YAML and JSON. :mod:`necklace.graph.engine` runs it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from necklace.checks import as_choice, as_float, as_int, check_keys, closest_hint, describe_value, is_int
from necklace.layers.blocks import BLOCKS, check_block_args, check_block_channels
from necklace.layers.conv import ACTS, NORMS, ConvCfg
from necklace.layers.fuse import FUSE_MODES
from necklace.layers.resample import DOWN_MODES, LEARNED_DOWN_MODES, UP_MODES
from necklace.options import OptionRule, check_options, options_from_signature
from necklace.spec import MAX_CHANNELS, MAX_LEVEL, MIN_LEVEL, FeatureSpec, as_feature_specs, validate_in_specs

__all__ = ["ALIGN_MODES", "Edge", "NeckGraph", "Node", "input_name"]

ALIGN_MODES = ("auto", "always", "never")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def input_name(level: int) -> str:
    """Name of the backbone input at ``level`` inside a graph: ``C3`` for stride 8."""
    return f"C{level}"


#: the fields of a conv / align configuration in a graph dict, typed by :class:`ConvCfg`'s own annotations
_CONV_CFG = options_from_signature(
    ConvCfg,
    {
        "norm": OptionRule(choices=NORMS),
        "act": OptionRule(choices=tuple(ACTS)),
        "norm_eps": OptionRule(gt=0),
        "norm_momentum": OptionRule(ge=0, le=1),
        "gn_groups": OptionRule(ge=1, le=MAX_CHANNELS),
        "padding": OptionRule(choices=("symmetric", "same")),
    },
    skip=0,
)


def _conv_cfg(value: object, what: str) -> ConvCfg:
    """A :class:`ConvCfg`, or a dict of its fields checked strictly (unknown keys, types, ranges)."""
    if isinstance(value, ConvCfg):
        data = value.to_dict()
    elif isinstance(value, Mapping):
        check_keys(value, [s.name for s in _CONV_CFG], what)
        data = dict(value)
    else:
        raise TypeError(f"{what} must be a ConvCfg or a dict of its fields, got {describe_value(value)}.")
    checked = check_options(what, _CONV_CFG, data)
    return value if isinstance(value, ConvCfg) and checked == data else ConvCfg(**checked)


def _mode(value: object, what: str, choices: Sequence[str], allow_none: bool) -> Any:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{what} must be one of {list(choices)}, got {describe_value(value)}.")
    return as_choice(value, what, choices, allow_none=allow_none)


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
            raise TypeError(f"Edge.source must be a node or input name (str), got {describe_value(self.source)}.")
        for attr, choices in (("align", ALIGN_MODES), ("up", UP_MODES), ("down", DOWN_MODES), ("pre_act", ACTS)):
            v = getattr(self, attr)
            if v is not None and (not isinstance(v, str) or v not in choices):
                err = TypeError if not isinstance(v, str) else ValueError
                raise err(
                    f"Edge({self.source!r}).{attr}={v!r} is not one of {list(choices)}.{closest_hint(v, choices)}"
                )
        k = self.kernel
        if k is not None and (not is_int(k) or not 1 <= k <= 31 or k % 2 == 0):
            raise ValueError(
                f"Edge({self.source!r}).kernel={k!r} must be a positive odd int up to 31 (3, 5, ...: 'same' padding "
                "keeps the map at its level's size)."
            )
        if k is not None:
            object.__setattr__(self, "kernel", int(k))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source}
        for f in fields(self)[1:]:
            v = getattr(self, f.name)
            if v is not None:
                out[f.name] = v
        return out

    @classmethod
    def coerce(cls, value: Edge | str | Mapping[str, Any], what: str = "a node input") -> Edge:
        """An :class:`Edge` from itself, a source name, or a dict of its fields (unknown keys refused).

        Example:
            >>> Edge.coerce({"source": "C4", "up": "nearest"})
            Edge(source='C4', align=None, up='nearest', down=None, pre_act=None, kernel=None)
        """
        if isinstance(value, Edge):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, Mapping):
            check_keys(value, [f.name for f in fields(cls)], what)
            if "source" not in value:
                raise ValueError(f"{what} {dict(value)!r} has no 'source'; name the tensor it reads, e.g. source: C4.")
            return cls(**value)
        raise TypeError(
            f"{what} must be a name, an Edge or a dict, got {describe_value(value)}. Example: 'C4' or "
            "{source: C4, up: nearest}."
        )


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
        what = f"node {self.name!r}"
        level = as_int(self.level, f"{what}: level")
        if not MIN_LEVEL <= level <= MAX_LEVEL:
            raise ValueError(
                f"{what}: level {level!r} outside {MIN_LEVEL}..{MAX_LEVEL} (strides {2**MIN_LEVEL}..{2**MAX_LEVEL})."
            )
        object.__setattr__(self, "level", level)
        if isinstance(self.inputs, (str, Edge, Mapping)) or not isinstance(self.inputs, Sequence):
            raise TypeError(
                f"{what}: inputs must be a list of names/Edges, got {describe_value(self.inputs)}. Example: "
                "['C3', 'P4']."
            )
        inputs = tuple(Edge.coerce(e, f"{what}: inputs[{i}]") for i, e in enumerate(self.inputs))
        object.__setattr__(self, "inputs", inputs)
        if not self.inputs:
            raise ValueError(f"node {self.name!r} has no inputs; give it at least one source name.")
        object.__setattr__(self, "channels", as_int(self.channels, f"{what}: channels", ge=1, le=MAX_CHANNELS))
        if not isinstance(self.fuse, str) or self.fuse not in FUSE_MODES:
            raise ValueError(
                f"{what}: unknown fuse {self.fuse!r}; choose one of {list(FUSE_MODES)}."
                + closest_hint(self.fuse, FUSE_MODES)
            )
        if self.fuse == "gp" and len(inputs) != 2:
            raise ValueError(
                f"{what}: fuse 'gp' (x2 + sigmoid(GAP(x2)) * x1, NAS-FPN) takes exactly 2 inputs, got {len(inputs)}."
            )
        if not isinstance(self.block, str) or self.block not in BLOCKS:
            raise ValueError(
                f"{what}: unknown block {self.block!r}; choose one of {sorted(BLOCKS)}."
                + closest_hint(self.block, BLOCKS)
            )
        args = check_block_args(self.block, self.block_args, what)
        object.__setattr__(self, "block_args", _to_list(args))

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
    def from_dict(cls, data: Mapping[str, Any], what: str = "node") -> Node:
        """The node a dict describes (as :meth:`to_dict` writes it); unknown or missing keys raise ``ValueError``.

        Example:
            >>> Node.from_dict({"name": "P3", "level": 3, "inputs": ["C3"], "channels": 8}).block
            'identity'
        """
        if not isinstance(data, Mapping):
            raise TypeError(
                f"{what} must be a dict with name, level, inputs, channels (and fuse, block, block_args), got "
                f"{describe_value(data)}."
            )
        if isinstance(data.get("name"), str):
            what = f"node {data['name']!r}"
        check_keys(data, [f.name for f in fields(cls)], what)
        missing = [k for k in ("name", "level", "inputs", "channels") if k not in data]
        if missing:
            raise ValueError(
                f"{what} lacks the key(s) {missing}; a node needs name, level, inputs and channels, e.g. "
                "{name: P3, level: 3, inputs: [C3, P4], channels: 256}."
            )
        block_args = data.get("block_args", {})
        return cls(
            name=data["name"],
            level=data["level"],
            inputs=data["inputs"],
            channels=data["channels"],
            fuse=data.get("fuse", "sum"),
            block=data.get("block", "identity"),
            block_args={} if block_args is None else block_args,
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
        if isinstance(self.nodes, (Node, str, Mapping)) or not isinstance(self.nodes, Sequence):
            raise TypeError(f"NeckGraph.nodes must be a list of Node (or dicts), got {describe_value(self.nodes)}.")
        nodes = tuple(n if isinstance(n, Node) else Node.from_dict(n, f"nodes[{i}]") for i, n in enumerate(self.nodes))
        object.__setattr__(self, "nodes", nodes)
        if isinstance(self.outputs, (str, Mapping)) or not isinstance(self.outputs, Sequence):
            raise TypeError(
                f"NeckGraph.outputs must be a list of node names, got {describe_value(self.outputs)}; e.g. [P3, P4]."
            )
        for i, o in enumerate(self.outputs):
            if not isinstance(o, str):
                raise TypeError(f"NeckGraph.outputs[{i}] must be a node name (str), got {describe_value(o)}.")
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "conv", _conv_cfg(self.conv, "NeckGraph.conv"))
        object.__setattr__(self, "align", _conv_cfg(self.align, "NeckGraph.align"))
        _mode(self.align_mode, "NeckGraph align_mode", ALIGN_MODES, allow_none=False)
        _mode(self.up, "NeckGraph up", UP_MODES, allow_none=False)
        _mode(self.down, "NeckGraph down", DOWN_MODES, allow_none=False)
        object.__setattr__(self, "fuse_eps", as_float(self.fuse_eps, "NeckGraph.fuse_eps", gt=0))
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
            check_block_channels(node.block, block_in, node.channels, node.block_args, self.conv, f"node {node.name!r}")
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

    @functools.cached_property
    def level_range(self) -> tuple[int, int]:
        """The finest and coarsest level of any input or node: ``(lo, hi)``.

        Example:
            >>> NeckGraph((FeatureSpec(8, 8),), (Node("P4", 4, ("C3",), 8),), ("C3", "P4")).level_range
            (3, 4)
        """
        levels = [s.level for s in self.in_specs] + [n.level for n in self.nodes]
        return (min(levels), max(levels))

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
        """The graph a plain dict describes (as :meth:`to_dict` writes it, or by hand). Unknown keys (at any depth)
        name the closest valid one; missing keys and wrong types raise ``ValueError`` / ``TypeError``.

        Example:
            >>> NeckGraph.from_dict({"in_specs": [{"channels": 8, "stride": 8}], "outputs": ["C3"]})
            Traceback (most recent call last):
            ...
            ValueError: the graph lacks the key 'nodes' (a graph needs in_specs, nodes, outputs): ...
        """
        if not isinstance(data, Mapping):
            raise TypeError(
                f"a graph must be a dict with in_specs, nodes and outputs, got {describe_value(data)}. See "
                "NeckGraph.to_dict() for the layout."
            )
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ValueError(
                f"unknown NeckGraph keys {unknown}.{closest_hint(unknown[0], known)} Valid keys: {', '.join(known)}."
            )
        for key in ("in_specs", "nodes", "outputs"):
            if key not in data:
                raise ValueError(
                    f"the graph lacks the key {key!r} (a graph needs in_specs, nodes, outputs): got keys "
                    f"{sorted(map(str, data))}. Example: in_specs: [{{channels: 256, stride: 8}}], nodes: [...], "
                    "outputs: [P3]."
                )
        specs, nodes, outputs = data["in_specs"], data["nodes"], data["outputs"]
        for key, value in (("in_specs", specs), ("nodes", nodes), ("outputs", outputs)):
            if not isinstance(value, (list, tuple)):
                raise TypeError(f"the graph's {key} must be a list, got {describe_value(value)}.")
        return cls(
            in_specs=tuple(FeatureSpec.from_dict(s) if isinstance(s, Mapping) else s for s in specs),
            nodes=tuple(Node.from_dict(n, f"nodes[{i}]") for i, n in enumerate(nodes)),
            outputs=tuple(outputs),
            conv=_conv_cfg(data.get("conv", {}), "the graph's conv"),
            align=_conv_cfg(data.get("align", {}), "the graph's align"),
            align_mode=data.get("align_mode", "auto"),
            up=data.get("up", "nearest"),
            down=data.get("down", "conv"),
            fuse_eps=data.get("fuse_eps", 1e-4),
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
        """Read a graph written by :meth:`save` (or by hand) from YAML (``.yaml``/``.yml``) or JSON (any other
        suffix). Every problem (missing file, bad YAML/JSON, a top level that is not a mapping, a bad graph) raises
        ``ValueError`` / ``TypeError`` naming the file."""
        if not isinstance(path, (str, Path)):
            raise TypeError(f"NeckGraph.load takes a file path (str or Path), got {describe_value(path)}.")
        path = Path(path)
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "not found"
            raise ValueError(f"graph file {str(path)!r} {what}; give the path of a .yaml/.yml or .json graph file.")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"graph file {str(path)!r} cannot be read as text: {e}.") from None
        yaml_file = path.suffix.lower() in (".yaml", ".yml")
        try:
            if yaml_file:
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as e:  # yaml.YAMLError / json.JSONDecodeError: say where, in one line
            kind = "YAML" if yaml_file else "JSON (its suffix is not .yaml/.yml)"
            detail = " ".join(str(e).split())
            raise ValueError(f"graph file {str(path)!r} is not valid {kind}: {detail}") from None
        if not isinstance(data, Mapping):
            got = "an empty file" if data is None else f"a {type(data).__name__}"
            raise ValueError(
                f"graph file {str(path)!r}: expected a mapping with in_specs/nodes/outputs at the top level, got "
                f"{got}. See NeckGraph.save for the layout."
            )
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as e:
            raise type(e)(f"graph file {str(path)!r}: {e}") from None

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
