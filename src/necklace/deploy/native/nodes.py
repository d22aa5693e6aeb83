"""Native graph nodes: the engine's align -> resize -> fuse -> refine, with the maps it never needs to build.

:func:`native_node` turns a node module of a :class:`~necklace.graph.GraphNeck` into a :class:`NativeNode` when
one of these routes applies (decided once, from the node's declared structure), and :class:`NativeGraphNeck`
runs them with the inputs in the layout the native kernels prefer:

- **lateral into upsampled** (FPN's ``lateral_1x1(C) + up(P)``): the lateral GEMM accumulates into the nearest-
  upsampled map, so neither the lateral map nor the sum is a separate pass;
- **concat into head** (a concatenation read by a block that declares a 1x1 ``head``: YOLOv8 / YOLO11's C2f /
  C3k2): the head runs per input part (upsampled parts at their own resolution) and the concatenation is never
  built (:func:`~necklace.deploy.native.gemm.concat_pointwise`);
- **up into rep head** (YOLOv6: a 2x transposed-conv upsample concatenated into a re-parameterised RepBlock): the
  transposed conv is folded into the block's first 3x3 conv (:mod:`necklace.deploy.native.fold`);
- **sum into** an unweighted sum adds into an edge's own fresh output (no new map);
- identity edges (same level, nothing to align) are not called.

Every route falls back to the plain node's computation under autograd, tracing, export or autocast, and where
the layouts do not allow it.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from necklace.deploy.native.cgemm import tensor_version
from necklace.deploy.native.fold import compose_transposed_conv3x3, transposed_conv3x3_constant, transposed_conv3x3_into
from necklace.deploy.native.gemm import PointwiseToChannelsLast, add_pointwise_, concat_pointwise, pointwise_head_ok
from necklace.deploy.native.guard import inference_paths_off, inference_scope
from necklace.deploy.native.modules import ACT_NAMES, _retyped, epilogue_act
from necklace.deploy.native.nearest import upsample_nearest
from necklace.deploy.native.winograd import WinogradConv2d, winograd_eligible
from necklace.graph.engine import GraphNeck, _NodeModule
from necklace.layers.blocks import C2f
from necklace.layers.conv import ConvNormAct
from necklace.layers.rep import RepBlock, RepConv
from necklace.layers.resample import Resample

__all__ = ["NativeGraphNeck", "NativeNode", "native_graph_neck", "native_node"]


class NativeNode(_NodeModule):
    """A graph node with the native routes of this module's docstring (same submodules and state dict as the
    plain node it was made from by :func:`native_node`).

    Example:
        >>> import necklace
        >>> neck = necklace.build_neck("fpn", [(16, 8), (32, 16)], width=8).eval()
        >>> node = native_node(neck.nodes["L3"])
        >>> type(node).__name__, node._lateral_sum, set(node.state_dict()) == set(neck.nodes["L3"].state_dict())
        ('NativeNode', (0, 1), True)
    """

    def _plan_routes(self) -> None:
        """Decide once which routes apply, from the node's edges, fusion and declared block structure."""
        fuse_mode = self.fuse.mode
        n = len(self.edges)
        # edges that pass their map through unchanged (same level, no align, no pre-activation) are not called
        self._passthrough = tuple(
            isinstance(e, Resample) and e.steps == 0 and e.align is None and e.pre_act is None and not e.ops
            for e in self.edges
        )
        self._resize_only: tuple[bool, ...] = tuple(
            isinstance(e, Resample) and e._interp and e.up_mode == "nearest" and e.align is None and e.pre_act is None
            for e in self.edges
        )
        self._sum_into = (
            next((k for k, skip in enumerate(self._passthrough) if not skip), None)
            if fuse_mode == "sum" and n > 1
            else None
        )
        self._lateral_sum: tuple[int, int] | None = None
        if fuse_mode == "sum" and n == 2 and not self._passthrough[0] and not self._passthrough[1]:
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
        self._concat_head = fuse_mode == "concat" and n > 1 and isinstance(self.block, C2f)
        ups = [
            k
            for k, e in enumerate(self.edges)
            if isinstance(e, Resample)
            and e.steps == -1
            and e.up_mode == "transposed"
            and e.align is None
            and e.pre_act is None
        ]
        rep_head = (
            isinstance(self.block, RepBlock)
            and isinstance(self.block.blocks[0], RepConv)
            and cast(RepConv, self.block.blocks[0]).conv is not None
        )
        self._up_head = ups[0] if fuse_mode == "concat" and len(ups) == 1 and rep_head else None
        self._up_cache: tuple[Any, ...] | None = None
        #: write channels_last outputs where the routes choose the layout (a concatenation's GEMMs over NCHW
        #: backbone maps), so the blocks after it run on channels_last maps (set by :func:`use_channels_last`)
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
        head = cast(C2f, self.block).head
        if not isinstance(head, ConvNormAct) or not pointwise_head_ok(head, xs[0]):
            return None
        if xs[0].shape[0] > 1 and not xs[0].is_contiguous(memory_format=torch.channels_last):
            return None  # a batch of NCHW maps is not one matrix: the concatenation, as written
        parts = [
            x if skip or low else edge(x, size)
            for edge, x, skip, low in zip(self.edges, xs, self._passthrough, self._resize_only, strict=True)
        ]
        act = epilogue_act(head)
        z = concat_pointwise(
            parts,
            head.conv.weight,
            head.conv.bias,
            upsample=self._resize_only,
            size=size,
            channels_last=self.channels_last_out,
            act=act or "none",
            conv=head.conv,
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
        tail = cast(C2f, self.block).tail
        return tail(z if act is not None else head.act(head.norm(z)))

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
            (t, tensor_version(t), t.dtype, t.device, t.stride())
            for t in (w, conv.bias, up.weight, up.bias)
            if t is not None
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
        rest_conv.winograd = bool(getattr(conv, "winograd", True))  # follows the switches of the original conv
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
        act = ACT_NAMES.get(type(head.act))
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
        if inference_paths_off():
            return super().forward(xs, size)
        if self._up_head is not None:
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
            and ys[self._sum_into].untyped_storage().data_ptr() != xs[self._sum_into].untyped_storage().data_ptr()
            and _alike(ys, ys[self._sum_into])
        ):
            fused = ys[self._sum_into]  # add into an edge's own fresh output, no new map
            for j, y in enumerate(ys):
                if j != self._sum_into:
                    fused.add_(y)
        else:
            fused = self.fuse(ys)
        del ys  # the resampled inputs must not stay alive while the block runs (inference peak memory)
        return self.block(fused)


def _alike(ys: list[Tensor], ref: Tensor) -> bool:
    """Whether every tensor of ``ys`` has ``ref``'s dtype and shape (a plain loop: a generator in the caller would
    make its ``del ys`` a ``DELETE_DEREF``, which torch.compile cannot trace)."""
    for y in ys:
        if y.dtype != ref.dtype or y.shape != ref.shape:
            return False
    return True


def native_node(node: nn.Module) -> nn.Module:
    """The :class:`NativeNode` form of a plain engine node (sharing its submodules); other modules unchanged."""
    if type(node) is not _NodeModule:
        return node
    new = _retyped(node, NativeNode)
    new._plan_routes()
    return new


class NativeGraphNeck(GraphNeck):
    """A :class:`~necklace.graph.GraphNeck` whose nodes are :class:`NativeNode` and whose inputs enter in the layout
    the native kernels prefer (channels_last, set by :func:`use_channels_last`), read in place where every reader
    can take the NCHW map as it is.

    Example:
        >>> import necklace
        >>> neck = necklace.build_neck("fpn", [(16, 8), (32, 16)], width=8).eval()
        >>> fast = native_graph_neck(neck)
        >>> use_channels_last(fast)
        >>> outs = fast([torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)])
        >>> sorted(fast.channels_last_direct), [tuple(o.shape) for o in outs]
        (['C3', 'C4'], [(1, 8, 8, 8), (1, 8, 4, 4), (1, 8, 2, 2)])
    """

    def _setup_layout(self) -> None:
        #: convert the inputs to ``torch.channels_last`` once on entry, not in each op that reads them
        self.channels_last_inputs = False
        #: inputs left as they come: every reader is a lateral 1x1 conv that writes channels_last from NCHW
        self.channels_last_direct: frozenset[str] = frozenset()
        #: the same for single NCHW maps in inference only: every reader is a concatenation only a 1x1 head reads
        self.channels_last_direct_single: frozenset[str] = frozenset()

    def _run(self, features: list[Tensor], keep: tuple[str, ...]) -> dict[str, Tensor]:
        with inference_scope():  # (the native paths' guard checked once for the whole forward)
            return super()._run(features, keep)

    def _enter(self, name: str, feature: Tensor) -> Tensor:
        if (
            self.channels_last_inputs
            and name not in self.channels_last_direct
            and not (name in self.channels_last_direct_single and feature.shape[0] == 1 and not torch.is_grad_enabled())
        ):
            return feature.contiguous(memory_format=torch.channels_last)  # no copy when it already is
        return feature


def native_graph_neck(neck: GraphNeck) -> NativeGraphNeck:
    """The native form of a plain :class:`~necklace.graph.GraphNeck` (sharing its modules), its nodes converted
    by :func:`native_node`."""
    new = _retyped(neck, NativeGraphNeck)
    new._setup_layout()
    for name in list(new.nodes):
        new.nodes[name] = native_node(new.nodes[name])
    return new


def use_channels_last(neck: NativeGraphNeck, enabled: bool = True) -> None:
    """Put the neck's weights in ``torch.channels_last`` (or back) and make it convert its inputs once on entry;
    lateral 1x1 convs reading backbone maps become :class:`~necklace.deploy.native.gemm.PointwiseToChannelsLast`
    (they write channels_last straight from NCHW), and those maps are then left as they come. In place."""
    neck.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
    neck.channels_last_inputs = enabled
    for node in neck.nodes.values():
        if isinstance(node, NativeNode):
            node.channels_last_out = enabled
    direct, single = [], []
    for name, readers in neck.input_reader_nodes().items():
        ok_readers = concat_readers = 0
        for node, k in readers:
            edge = cast(Resample, cast(_NodeModule, node).edges[k])
            if isinstance(node, NativeNode) and node._concat_head and (node._passthrough[k] or node._resize_only[k]):
                concat_readers += 1
                continue
            align = edge.align
            ok = (
                isinstance(align, ConvNormAct)
                and edge.pre_act is None
                and not align.act_first
                and not align.same
                and align.conv.kernel_size == (1, 1)
                and align.conv.stride == (1, 1)
                and align.conv.padding == (0, 0)
                and align.conv.groups == 1
            )
            if not ok:
                continue
            assert isinstance(align, ConvNormAct)
            if enabled and not isinstance(align.conv, PointwiseToChannelsLast):
                align.conv = PointwiseToChannelsLast.from_conv(align.conv)
            elif not enabled and isinstance(align.conv, PointwiseToChannelsLast):
                align.conv = align.conv.to_conv()
            ok_readers += 1
        if enabled and readers and ok_readers == len(readers):
            direct.append(name)
        elif enabled and readers and ok_readers + concat_readers == len(readers):
            single.append(name)
    neck.channels_last_direct = frozenset(direct)
    neck.channels_last_direct_single = frozenset(single)
