"""The one engine that runs a :class:`~necklace.graph.model.NeckGraph`: :class:`GraphNeck`.

Every neck is the same three steps over a list of pyramid levels (seed "YOLO Neck", minimal mental model):
align channels, resize then fuse, refine. :class:`GraphNeck` builds one module per node, checks the inputs, and at
run time resizes each input to the *runtime* size of the node's level.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn

from necklace.graph.model import NeckGraph, Node, _EdgePlan, input_name
from necklace.layers.blocks import build_block
from necklace.layers.fuse import Fuse
from necklace.layers.resample import (
    Resample,
)
from necklace.spec import FeatureSpec, check_features

__all__ = ["GraphNeck"]


class _NodeModule(nn.Module):
    def __init__(self, graph: NeckGraph, node: Node, edges: list[_EdgePlan], block_in: int) -> None:
        super().__init__()
        self.edges = nn.ModuleList(
            Resample(
                p.in_channels,
                p.out_channels,
                steps=p.steps,
                align=p.align,
                up=p.up,
                down=p.down,
                align_cfg=graph.align,
                conv_cfg=graph.conv,
                pre_act=p.pre_act,
                kernel=p.kernel,
            )
            for p in edges
        )
        self.fuse = Fuse(node.fuse, len(edges), eps=graph.fuse_eps)
        args = dict(node.block_args)
        cfg = graph.conv
        overrides = {k: args.pop(k) for k in ("norm", "act") if k in args}
        if overrides:
            cfg = cfg.with_(**overrides)
        self.block = build_block(node.block, block_in, node.channels, cfg, **args)
        self._lone = len(edges) == 1 and node.fuse != "gp"

    def forward(self, xs: list[Tensor], size: tuple[int, int]) -> Tensor:
        # align -> resize: each edge maps its input to the node's level at the runtime ``size``
        ys = [edge(x, size) for edge, x in zip(self.edges, xs, strict=True)]
        fused = self.fuse(ys)  # (N, C, H_level, W_level): sum / weighted sum / concat / attention
        del ys  # the resampled inputs must not stay alive while the block runs (inference peak memory)
        return self.block(fused)  # refine: (N, C_node, H_level, W_level)


def _schedule(graph: NeckGraph) -> list[Node]:
    """The order :class:`GraphNeck` runs the nodes in: a topological order that works on the freshest maps first.

    Among the nodes whose inputs are all computed, run the one whose newest input was computed last; on a tie the
    one fewer nodes read (an output nobody reads first), then graph order. Outputs are the same in any
    topological order; what changes is memory: autograd's backward runs the ops in reverse creation order, so an
    FPN graph listing every lateral sum ``L<l>`` before the 3x3 output convs ``P<l>`` would compute all the output
    convs' gradients (weights, ``L<l>`` maps) before the largest lateral's backward and hold them at its peak.
    This order runs ``P<l>`` right after ``L<l>``, as torchvision does (R50-FPN train step at 640x640:
    55.4 -> 52.5 MB, torchvision's peak).

    Example:
        >>> from necklace.graph import Edge
        >>> g = NeckGraph(
        ...     in_specs=(FeatureSpec(8, 8), FeatureSpec(16, 16)),
        ...     nodes=(
        ...         Node("L4", 4, (Edge("C4", align="always"),), channels=8),
        ...         Node("L3", 3, (Edge("C3", align="always"), "L4"), channels=8),
        ...         Node("P4", 4, ("L4",), channels=8, block="conv"),
        ...         Node("P3", 3, ("L3",), channels=8, block="conv"),
        ...     ),
        ...     outputs=("P3", "P4"),
        ... )
        >>> [n.name for n in _schedule(g)]
        ['L4', 'P4', 'L3', 'P3']
    """
    readers: dict[str, int] = {}
    for n in graph.nodes:
        for e in n.edges:
            readers[e.source] = readers.get(e.source, 0) + 1
    computed = {input_name(s.level): -1 for s in graph.in_specs}  # name -> step it was computed at
    pending = dict(enumerate(graph.nodes))  # graph position -> node
    order: list[Node] = []
    while pending:
        ready = [(i, n) for i, n in pending.items() if all(e.source in computed for e in n.edges)]
        i, node = min(
            ready, key=lambda r: (-max(computed[e.source] for e in r[1].edges), readers.get(r[1].name, 0), r[0])
        )
        del pending[i]
        computed[node.name] = len(order)
        order.append(node)
    return order


class GraphNeck(nn.Module):
    """Run a :class:`NeckGraph`: ``list[Tensor]`` (one per ``in_specs``, finest first) -> ``list[Tensor]``.

    Output ``i`` has ``out_specs[i].channels`` channels and the spatial size of its level: the backbone map's
    size at backbone levels, ``ceil(H / 2)`` per extra coarser level. Any input size works.

    Example:
        >>> from necklace import build_neck
        >>> neck = build_neck("fpn", [FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)], width=32)
        >>> feats = [torch.randn(1, 64, 13, 17), torch.randn(1, 128, 7, 9), torch.randn(1, 256, 4, 5)]
        >>> [tuple(o.shape) for o in neck(feats)]
        [(1, 32, 13, 17), (1, 32, 7, 9), (1, 32, 4, 5), (1, 32, 2, 3)]
    """

    def __init__(self, graph: NeckGraph) -> None:
        super().__init__()
        if not isinstance(graph, NeckGraph):
            raise TypeError(f"GraphNeck expects a NeckGraph, got {type(graph).__name__}.")
        self.graph = graph
        self.in_specs: tuple[FeatureSpec, ...] = graph.in_specs
        self.out_specs: tuple[FeatureSpec, ...] = graph.out_specs
        plans = graph.plan()
        self.nodes = nn.ModuleDict({n.name: _NodeModule(graph, n, e, b) for n, e, b in plans})
        self._order = [(n.name, n.level, tuple(e.source for e in n.edges)) for n in _schedule(graph)]
        in_levels = [s.level for s in graph.in_specs]
        node_levels = [n.level for n in graph.nodes]
        self._coarser = list(range(max(in_levels) + 1, max(node_levels + in_levels) + 1))
        self._finer = list(range(min(in_levels) - 1, min(node_levels + in_levels) - 1, -1))
        # free intermediate tensors as soon as no later node reads them
        last_use: dict[str, int] = {}
        for i, (_, _, srcs) in enumerate(self._order):
            for s in srcs:
                last_use[s] = i
        keep = set(graph.outputs)
        self._free: list[list[str]] = [[] for _ in self._order]
        for name, i in last_use.items():
            if name not in keep:
                self._free[i].append(name)

    @classmethod
    def from_file(cls, path: str | Path) -> GraphNeck:
        """Build a neck from a graph saved as YAML or JSON (see :meth:`NeckGraph.save`)."""
        return cls(NeckGraph.load(path))

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        env = self._run(features, ())
        return [env[o] for o in self.graph.outputs]

    def forward_with(self, features: list[Tensor], names: Sequence[str]) -> tuple[list[Tensor], list[Tensor]]:
        """Run the neck and also return the intermediate tensors ``names`` (node or backbone-input names).

        Returns ``(outputs, extras)`` with ``extras[i]`` the tensor named ``names[i]``: e.g. pre-fusion laterals
        for auxiliary losses (AugFPN consistent supervision, :meth:`necklace.necks.augfpn.AugFPN.
        forward_with_laterals`). The outputs are those of ``forward``; only the named tensors are kept alive.

        Example:
            >>> from necklace import build_neck
            >>> neck = build_neck("fpn", [FeatureSpec(16, 8), FeatureSpec(32, 16)], width=8)
            >>> outs, (l4,) = neck.forward_with([torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)], ["L4"])
            >>> len(outs), tuple(l4.shape)
            (3, (1, 8, 4, 4))
        """
        if isinstance(names, str):
            raise TypeError(f"names must be a list of node names, got the string {names!r}; use [{names!r}].")
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise TypeError(
                f"names must be a list of node or input names (str), got {names!r}; e.g. ['L4'] "
                f"(known: {sorted(self.graph.sources())})."
            )
        known = self.graph.sources()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"forward_with: {unknown} are not nodes or inputs of the graph; known: {sorted(known)}.")
        env = self._run(features, tuple(names))
        return [env[o] for o in self.graph.outputs], [env[n] for n in names]

    def _run(self, features: list[Tensor], keep: tuple[str, ...]) -> dict[str, Tensor]:
        """Execute the nodes; intermediates are freed after their last use unless listed in ``keep``."""
        check_features(features, self.in_specs, type(self).__name__, neck=self)
        env: dict[str, Tensor] = {}
        sizes: dict[int, tuple[int, int]] = {}
        for spec, f in zip(self.in_specs, features, strict=True):
            name = input_name(spec.level)
            env[name] = self._enter(name, f)
            sizes[spec.level] = (f.shape[-2], f.shape[-1])
        for level in self._coarser:  # extra levels: ceil-halving, like a stride-2 3x3 conv / pool
            h, w = sizes[level - 1]
            # = ceil(h / 2), written as a stride-2 conv's output size so that under torch.export's symbolic
            # shapes the level size and the downsampled tensors' sizes are the same expression (no guards)
            sizes[level] = ((h - 1) // 2 + 1, (w - 1) // 2 + 1)
        for level in self._finer:
            h, w = sizes[level + 1]
            sizes[level] = (2 * h, 2 * w)
        for (name, level, srcs), free in zip(self._order, self._free, strict=True):
            node = self.nodes[name]
            env[name] = node([env[s] for s in srcs], sizes[level])  # (N, C_node, H_level, W_level)
            for s in free:
                if s not in keep:
                    del env[s]
        return env

    def _enter(self, name: str, feature: Tensor) -> Tensor:
        """The backbone map ``name`` as the nodes read it: as given (a runtime's neck may change its layout)."""
        return feature

    def input_readers(self) -> dict[str, list[nn.Module]]:
        """For each backbone input name (``C3``...), the edge modules (:class:`necklace.layers.Resample`) that read
        it, in node order."""
        readers: dict[str, list[nn.Module]] = {input_name(s.level): [] for s in self.in_specs}
        for name, _, srcs in self._order:
            node = self.nodes[name]
            assert isinstance(node, _NodeModule)
            for edge, src in zip(node.edges, srcs, strict=True):
                if src in readers:
                    readers[src].append(edge)
        return readers

    def input_reader_nodes(self) -> dict[str, list[tuple[nn.Module, int]]]:
        """For each backbone input name, the ``(node module, edge index)`` pairs that read it, in node order."""
        readers: dict[str, list[tuple[nn.Module, int]]] = {input_name(s.level): [] for s in self.in_specs}
        for name, _, srcs in self._order:
            node = self.nodes[name]
            for k, src in enumerate(srcs):
                if src in readers:
                    readers[src].append((node, k))
        return readers

    def describe(self) -> str:
        """Text table of the graph (see :meth:`NeckGraph.describe`)."""
        return self.graph.describe()
