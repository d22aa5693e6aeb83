"""The one engine that runs a :class:`~necklace.graph.model.NeckGraph`: :class:`GraphNeck`.

Every neck is the same three steps over a list of pyramid levels (seed "YOLO Neck", minimal mental model):
align channels, resize then fuse, refine. :class:`GraphNeck` builds one module per node, checks the inputs, and at
run time resizes each input to the *runtime* size of the node's level.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from necklace.graph.model import NeckGraph, Node, _EdgePlan, input_name
from necklace.layers.blocks import build_block
from necklace.layers.conv import ConvNormAct, add_pointwise_, concat_pointwise, pointwise_head_ok
from necklace.layers.fuse import Fuse
from necklace.layers.fused import FUSED_ACTS
from necklace.layers.nearest import upsample_nearest
from necklace.layers.rep import RepBlock, RepConv
from necklace.layers.resample import (
    Resample,
    compose_transposed_conv3x3,
    transposed_conv3x3_constant,
    transposed_conv3x3_into,
)
from necklace.layers.winograd import WinogradConv2d, inference_paths_off, winograd_eligible
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
        # edges that pass their map through unchanged (same level, no align, no pre-activation) are not called,
        # and a lone input without weights skips the fusion: fewer Python module calls on light necks
        self._passthrough = tuple(
            p.steps == 0 and not isinstance(e.align, nn.Module) and e.pre_act is None
            for p, e in zip(edges, self.edges, strict=True)
        )
        self._lone = len(edges) == 1 and node.fuse != "gp"
        # a concatenation read only by a 1x1 conv (C2f's cv1): in inference the conv runs per input, nearest-
        # upsampled inputs at their own resolution, and the concatenation is never built (_concat_into_head)
        self._resize_only: tuple[bool, ...] = tuple(
            bool(e._interp and e.up_mode == "nearest" and e.align is None and e.pre_act is None)
            for e in self.edges
            if isinstance(e, Resample)
        )
        # an unweighted sum with an input that an edge computed (not passed through): inference adds into it
        self._sum_into = (
            next((k for k, skip in enumerate(self._passthrough) if not skip), None)
            if node.fuse == "sum" and len(edges) > 1
            else None
        )
        # FPN's top-down sum of a lateral 1x1 conv (no norm/act) and a nearest-upsampled coarser map
        self._lateral_sum: tuple[int, int] | None = None
        if node.fuse == "sum" and len(edges) == 2 and not self._passthrough[0] and not self._passthrough[1]:
            for lat, up in ((0, 1), (1, 0)):
                e = self.edges[lat]
                if (
                    isinstance(e, Resample)
                    and e.steps == 0
                    and e.pre_act is None
                    and isinstance(e.align, ConvNormAct)
                    and self._resize_only[up]
                ):
                    self._lateral_sum = (lat, up)
        self._concat_head = (
            node.fuse == "concat"
            and len(edges) > 1
            and hasattr(self.block, "tail")
            and isinstance(getattr(self.block, "cv1", None), nn.Module)
        )
        # a concatenation with one 2x transposed-conv upsample read by a RepBlock (YOLOv6's top-down nodes): once the
        # block's first RepConv is deployed (one 3x3 conv), inference folds the transposed conv into that conv
        # (_up_into_rep_head), so neither the upsampled map nor the concatenation is built
        ups = [
            k
            for k, e in enumerate(self.edges)
            if isinstance(e, Resample)
            and e.steps == -1
            and e.up_mode == "transposed"
            and e.align is None
            and e.pre_act is None
        ]
        self._up_head = ups[0] if node.fuse == "concat" and len(ups) == 1 and isinstance(self.block, RepBlock) else None
        self._up_cache: tuple[Any, ...] | None = None
        #: write channels_last outputs where the inference paths choose the layout (a concatenation's GEMMs over
        #: NCHW backbone maps): set with the neck's ``channels_last_inputs`` by :func:`necklace.deploy.
        #: set_channels_last`, so the blocks after it (C2f's 3x3 convs) run on channels_last maps
        self.channels_last_out = False

    def _lateral_into_upsampled(self, xs: list[Tensor], size: tuple[int, int]) -> Tensor | None:
        """FPN's ``lateral_1x1(C) + up(P)`` in inference: the lateral GEMM accumulates into the upsampled map
        (the bias added at the coarse resolution), so neither the lateral map nor the sum is a separate pass."""
        lat, up = self._lateral_sum  # type: ignore[misc]
        conv = cast(ConvNormAct, self.edges[lat].align)
        if not pointwise_head_ok(conv, xs[lat]):
            return None
        if not isinstance(conv.norm, nn.Identity) or not isinstance(conv.act, nn.Identity):
            return None
        coarse = xs[up]
        if conv.conv.bias is not None:
            coarse = coarse + conv.conv.bias.view(1, -1, 1, 1)
        acc = upsample_nearest(coarse, size)
        x = xs[lat]
        if not add_pointwise_(acc, x, conv.conv.weight):
            return None
        return self.block(acc)

    def _concat_into_head(self, xs: list[Tensor], size: tuple[int, int]) -> Tensor | None:
        head = self.block.cv1
        if not isinstance(head, ConvNormAct) or not pointwise_head_ok(head, xs[0]):
            return None
        if xs[0].shape[0] > 1 and not xs[0].is_contiguous(memory_format=torch.channels_last):
            return None  # a batch of NCHW maps is not one matrix: the concatenation, as written
        parts = [
            x if skip or low else edge(x, size)
            for edge, x, skip, low in zip(self.edges, xs, self._passthrough, self._resize_only, strict=True)
        ]
        z = concat_pointwise(
            parts,
            head.conv.weight,
            head.conv.bias,
            upsample=self._resize_only,
            size=size,
            channels_last=self.channels_last_out,
        )
        if z is None:  # layouts the GEMMs cannot read in place (mixed batches): concatenate after all
            fused = torch.cat(
                [
                    edge(p, size) if low else p
                    for edge, p, low in zip(self.edges, parts, self._resize_only, strict=True)
                ],
                dim=1,
            )
            del parts  # (inference peak memory: the parts must not stay alive while the block runs)
            return self.block(fused)
        del parts
        tail = cast(Callable[[Tensor], Tensor], self.block.tail)
        return tail(head.act(head.norm(z)))

    def _up_into_rep_head(self, xs: list[Tensor], size: tuple[int, int]) -> Tensor | None:
        """``RepBlock(cat(..., up(a), ...))`` in inference with the block's first RepConv deployed: the 3x3 conv
        runs on the other parts only (its weight's other input channels), and the transposed conv ``up`` composed
        with the weight's ``up`` channels runs as one 2x2 conv on the low-resolution ``a`` (a 4x smaller map),
        written into the output phases (:func:`~necklace.layers.resample.transposed_conv3x3_into`); the conv of the
        other parts then adds into it (the native Winograd conv with its bias and activation in one pass). Exact
        up to rounding;
        ``None`` (the general path) where it does not apply (training, an odd target size, a head not deployed)."""
        j = cast(int, self._up_head)
        blocks = list(cast(RepBlock, self.block).blocks)
        head = cast(RepConv, blocks[0])
        conv = head.conv
        a = xs[j]
        if (
            not isinstance(conv, nn.Conv2d)
            or conv.bias is None
            or not winograd_eligible(conv)
            or 2 * a.shape[-2] != size[0]
            or 2 * a.shape[-1] != size[1]
        ):
            return None
        up = cast(nn.ConvTranspose2d, cast(Resample, self.edges[j]).ops[0])
        rest = [
            x if skip else edge(x, size)
            for k, (edge, x, skip) in enumerate(zip(self.edges, xs, self._passthrough, strict=True))
            if k != j
        ]
        start = sum(r.shape[1] for r in rest[:j])
        w, cu = conv.weight, up.out_channels
        # (the strides too: deploy switches memory formats in place, which keeps the tensors and their versions)
        key = tuple(
            (t, t._version, t.dtype, t.device, t.stride()) for t in (w, conv.bias, up.weight, up.bias) if t is not None
        )
        cache = self._up_cache
        if (
            cache is None
            or cache[0] != start
            or len(cache[1]) != len(key)
            or any(k0[0] is not k1[0] or k0[1:] != k1[1:] for k0, k1 in zip(cache[1], key, strict=True))
        ):
            w_rest = torch.cat([w[:, :start], w[:, start + cu :]], dim=1).detach()
            rest_conv = WinogradConv2d(w_rest.shape[1], w.shape[0], 3, padding=1, device=w.device, dtype=w.dtype)
            rest_conv.weight = nn.Parameter(w_rest, requires_grad=False)
            rest_conv.bias = nn.Parameter(conv.bias.detach(), requires_grad=False)
            kernel = compose_transposed_conv3x3(up, w[:, start : start + cu])
            kernel_a = kernel[:, :-1].contiguous()  # (the last input channel is up's bias: the constant map)
            if not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last):
                # a channels_last neck (deploy): weights in its layout, or every conv call would convert them
                rest_conv.to(memory_format=torch.channels_last)
                kernel_a = kernel_a.contiguous(memory_format=torch.channels_last)
            cache = self._up_cache = (start, key, rest_conv.eval(), kernel_a, kernel, {})
        rest_conv, kernel_a, kernel = cache[2], cache[3], cache[4]
        rest_conv.winograd = bool(getattr(conv, "winograd", True))  # follows set_winograd on the original conv
        rest_conv.native = bool(getattr(conv, "native", True))
        x = rest[0] if len(rest) == 1 else torch.cat(rest, dim=1)
        del rest
        # y = the up part: the phase conv of a moved into the output phases, plus the map of up's bias (cached per
        # size); then the conv of the other parts is added: by the native Winograd conv accumulating into y with
        # its bias and the activation (no separate pass), else as a sum
        constants: dict[tuple[Any, ...], Tensor] = cache[5]
        fmt = torch.channels_last if x.stride(1) == 1 and x.shape[1] > 1 else torch.contiguous_format
        ckey = (a.shape[-2], a.shape[-1], a.dtype, fmt)
        constant = constants.get(ckey)
        if constant is None:
            if len(constants) >= 8:  # a neck run on many image sizes: start over
                constants.clear()
            constant = transposed_conv3x3_constant(kernel, a.shape[-2], a.shape[-1]).contiguous(memory_format=fmt)
            constants[ckey] = constant
        y = torch.empty((x.shape[0], w.shape[0], *size), dtype=x.dtype, device=x.device, memory_format=fmt)
        transposed_conv3x3_into(y, a, kernel_a, constant)
        act = FUSED_ACTS.get(type(head.act))
        if act is not None and rest_conv._winograd_path(x) == "native":
            y = rest_conv._native_act(x, act, out=y)
        else:
            y = head.act(y.add_(rest_conv(x)))
        for m in blocks[1:]:
            y = m(y)
        return y

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["_up_cache"] = None  # deepcopy / pickle: never carry the folded weights (they would alias the old ones)
        return state

    def forward(self, xs: list[Tensor], size: tuple[int, int]) -> Tensor:
        if self._up_head is not None and not inference_paths_off():
            out = self._up_into_rep_head(xs, size)
            if out is not None:
                return out
        if self._lateral_sum is not None and self.fuse.weight is None and self.fuse.frozen_weight is None:
            out = self._lateral_into_upsampled(xs, size)
            if out is not None:
                return out
        if self._concat_head:
            out = self._concat_into_head(xs, size)
            if out is not None:
                return out
        ys = [x if skip else edge(x, size) for edge, x, skip in zip(self.edges, xs, self._passthrough, strict=True)]
        if self._lone and self.fuse.weight is None and self.fuse.frozen_weight is None:
            fused = ys[0]
        elif (
            self._sum_into is not None
            and not inference_paths_off()
            and ys[self._sum_into].untyped_storage().data_ptr() != xs[self._sum_into].untyped_storage().data_ptr()
            and _alike(ys, ys[self._sum_into])
        ):
            fused = ys[self._sum_into]  # inference: add into an edge's own fresh output, no new map
            for j, y in enumerate(ys):
                if j != self._sum_into:
                    fused.add_(y)
        else:
            fused = self.fuse(ys)
        del ys  # the resampled inputs must not stay alive while the block runs (inference peak memory)
        return self.block(fused)


def _alike(ys: list[Tensor], ref: Tensor) -> bool:
    """Whether every tensor of ``ys`` has ``ref``'s dtype and shape. (A plain loop, not a generator over ``ys`` in
    the caller: a closure would make the caller's ``del ys`` a ``DELETE_DEREF``, which torch.compile cannot trace.)"""
    for y in ys:
        if y.dtype != ref.dtype or y.shape != ref.shape:
            return False
    return True


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
        #: Convert the inputs to ``torch.channels_last`` once on entry (set by :func:`necklace.deploy` together with
        #: channels_last weights). Without it every conv, concat and sum that meets a contiguous backbone map
        #: converts or mixes formats on its own (measured: 34% of a deployed YOLOv8n neck's time at 640x640 here).
        self.channels_last_inputs = False
        #: inputs left as they come even with ``channels_last_inputs``: every reader of them is a lateral 1x1 conv
        #: that writes channels_last straight from NCHW (:class:`necklace.layers.PointwiseToChannelsLast`)
        self.channels_last_direct: frozenset[str] = frozenset()
        #: the same for single NCHW maps in inference only: every reader is a concatenation that only a 1x1 conv
        #: reads (C2f nodes), whose GEMMs read the NCHW map as a transposed operand (a batch is converted)
        self.channels_last_direct_single: frozenset[str] = frozenset()
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
            if (
                self.channels_last_inputs
                and name not in self.channels_last_direct
                and not (name in self.channels_last_direct_single and f.shape[0] == 1 and not torch.is_grad_enabled())
            ):
                f = f.contiguous(memory_format=torch.channels_last)  # no copy when it already is
            env[name] = f
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
