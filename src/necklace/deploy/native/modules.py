"""Native forms of necklace's blocks: the same parameters and state dict, faster inference on CPU maps.

Each class here subclasses the plain block it replaces and changes only its inference arithmetic; under autograd,
tracing, export or autocast it computes what the plain block computes (:mod:`necklace.deploy.native.guard`).
:data:`NATIVE_MODULES` declares which block becomes which (exact types), and :func:`native_module` makes the
native form of one module (a new module sharing the parameters). ``necklace.deploy(model, runtime="native")``
applies them (:func:`necklace.deploy.native.apply_native`).

- :class:`NativeConvNormAct` / :class:`NativeRepConv`: a folded 3x3 conv runs Winograd F(4x4, 3x3) where it pays
  (:class:`~necklace.deploy.native.winograd.WinogradConv2d`), with the activation inside the native output
  transform; a 1x1 conv on a channels_last map runs as the native GEMM with its bias and activation
  (:func:`pointwise_act`), a wide one on an NCHW map as one ``addmm`` (:class:`~necklace.deploy.native.gemm.
  PointwiseConv2d`).
- :class:`NativeResample`: nearest upsampling by integer factors as strided copies on NCHW maps.
- :class:`NativeC2f` / :class:`NativeC3k2` / :class:`NativeCSPBlock`: the final 1x1 conv over the concatenation as
  one GEMM over its parts, the concatenation never written.

Example:
    >>> plain = ConvNormAct(64, 64, 3, cfg=ConvCfg(act="relu")).eval()
    >>> fast = native_module(plain)
    >>> type(fast).__name__, type(fast.conv).__name__, fast.conv.weight is plain.conv.weight
    ('NativeConvNormAct', 'WinogradConv2d', True)
    >>> x = torch.randn(1, 64, 40, 40)
    >>> with torch.no_grad():
    ...     bool((fast(x) - plain(x)).abs().max() <= 1e-4 * plain(x).abs().max())
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

from necklace.deploy.native.cgemm import GEMM_ACTS, gemm_ready, packed_columns, run_gemm
from necklace.deploy.native.gemm import PointwiseConv2d, concat_pointwise, pixel_layout, pointwise_head_ok
from necklace.deploy.native.guard import inference_paths_off
from necklace.deploy.native.loader import library as native_library
from necklace.deploy.native.nearest import upsample_nearest
from necklace.deploy.native.winograd import NATIVE_ACTS, WinogradConv2d, winograd_eligible
from necklace.layers.blocks import Bottleneck, C2f, C3k2, CSPBlock
from necklace.layers.conv import ConvCfg, ConvNormAct, SiLU  # noqa: F401  (ConvCfg: the doctest)
from necklace.layers.rep import RepConv
from necklace.layers.resample import Resample

__all__ = [
    "NATIVE_MODULES",
    "NativeBottleneck",
    "NativeC2f",
    "NativeC3k2",
    "NativeCSPBlock",
    "NativeConvNormAct",
    "NativeRepConv",
    "NativeResample",
    "conv_act",
    "conv_then_act",
    "epilogue_act",
    "fast_conv",
    "native_module",
    "pointwise_act",
]

#: activation module type -> the native output transform's activation (exact types: a subclass may differ)
ACT_NAMES: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.SiLU: "swish", SiLU: "swish", nn.Identity: "none"}

M = TypeVar("M", bound=nn.Module)


_GLOBAL = nn.modules.module


def _hooks(*modules: nn.Module) -> bool:
    """Whether any forward hook would miss a call if these modules ran as one fused op."""
    if getattr(_GLOBAL, "_global_forward_hooks", None) or getattr(_GLOBAL, "_global_forward_pre_hooks", None):
        return True
    for m in modules:  # (a loop: a generator costs a microsecond, and this runs for every fused op)
        if m._forward_hooks or m._forward_pre_hooks:
            return True
    return False


def fast_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """The native form of a plain conv, sharing its weight and bias: a :class:`WinogradConv2d` for a dense 3x3
    stride-1 zero-padded conv, a :class:`PointwiseConv2d` for a dense 1x1 stride-1 one, else ``conv`` itself."""
    if type(conv) is not nn.Conv2d:
        return conv
    if winograd_eligible(conv):
        return WinogradConv2d.from_conv(conv)
    if conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.groups == 1:
        return PointwiseConv2d.from_conv(conv)
    return conv


def conv_act(conv: nn.Module, act: nn.Module, x: Tensor, residual: Tensor | None = None) -> Tensor | None:
    """``act(conv(x))`` (``+ residual``) with the activation (and the residual add) inside the native Winograd
    output transform, where that path runs for ``x`` (no second pass over the output); ``None`` where the modules
    must run (other convs, other activations, forward hooks on either module, autograd / tracing / export)."""
    if type(conv) is not WinogradConv2d or conv._winograd_path(x) != "native":
        return None
    name = ACT_NAMES.get(type(act))
    if name is None or name not in NATIVE_ACTS or _hooks(conv, act):
        return None
    if residual is not None and residual.dtype != x.dtype:
        return None
    return conv._native_act(x, name, residual=residual)


def epilogue_act(block: nn.Module) -> str | None:
    """The activation of a folded :class:`ConvNormAct` (BatchNorm folded into the conv: ``norm`` is Identity) as
    the native kernels' epilogue name (``"none"``, ``"relu"``, ``"swish"``), or ``None`` where its modules must run
    one by one (another norm or activation, activation first, forward hooks on the block or its parts)."""
    if not isinstance(block, ConvNormAct) or block.act_first or block.same:
        return None
    mods = block._modules  # (the submodules straight from their table: nn.Module.__getattr__ is the slow path)
    norm, act = mods["norm"], mods["act"]
    if type(norm) is not nn.Identity:
        return None
    name = ACT_NAMES.get(type(act))  # type: ignore[arg-type]
    if name is None or _hooks(block, mods["conv"], norm, act):  # type: ignore[arg-type]
        return None
    return name


class NativeConvNormAct(ConvNormAct):
    """:class:`~necklace.layers.ConvNormAct` with its conv in native form (:func:`fast_conv`) and, once its
    BatchNorm is folded, the activation inside the Winograd output transform (:func:`conv_act`).

    Example:
        >>> m = native_module(ConvNormAct(32, 64, 1).eval())
        >>> type(m).__name__, type(m.conv).__name__, tuple(m(torch.zeros(1, 32, 5, 7)).shape)
        ('NativeConvNormAct', 'PointwiseConv2d', (1, 64, 5, 7))
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.act_first and not self.same and type(self.norm) is nn.Identity:  # BN folded
            y = conv_act(self.conv, self.act, x)
            if y is None:
                y = pointwise_act(self, x)
            if y is None:
                y = conv_then_act(self, x)
            if y is not None:
                return y
        return super().forward(x)


def conv_then_act(block: ConvNormAct, x: Tensor) -> Tensor | None:
    """A folded :class:`ConvNormAct` whose conv runs as torch's (a strided conv, say) with its SiLU or ReLU then run
    in place by the native library's vectorised loop (half the time of torch's SiLU here); ``None`` where that does
    not apply (other activations, hooks, autograd / tracing, a layout the loop cannot take as one run)."""
    act = epilogue_act(block)
    if act not in ("swish", "relu") or inference_paths_off():
        return None
    lib = native_library()
    if lib is None or not isinstance(x, Tensor) or x.dtype != torch.float32 or x.device.type != "cpu":
        return None
    y = block.conv(x)
    if y.dtype != torch.float32 or not (y.is_contiguous() or y.is_contiguous(memory_format=torch.channels_last)):
        return block.act(y)
    lib.nk_act(y.data_ptr(), y.numel(), GEMM_ACTS[act], torch.get_num_threads())
    return y


def pointwise_act(block: ConvNormAct, x: Tensor) -> Tensor | None:
    """``block(x)`` for a folded 1x1 :class:`ConvNormAct` on a channels_last map (or a channel slice of one, as C2f
    and CSP blocks make) by the native GEMM, bias and activation fused, into a channels_last output; ``None`` where
    that does not run (other convs or inputs, an NCHW map: its output keeps its layout by the conv, autograd...)."""
    act = epilogue_act(block)
    if act is None or not pointwise_head_ok(block, x) or not gemm_ready(x):
        return None
    layout = pixel_layout(x)
    if layout is None or layout[2]:  # (an NCHW map)
        return None
    conv = block.conv
    n, c, h, w = x.shape
    bias = None if conv.bias is None else conv.bias.detach()
    if n * h * w == 0 or (bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous())):
        return None
    lib = native_library()
    assert lib is not None  # (gemm_ready)
    out = torch.empty((n, conv.out_channels, h, w), dtype=x.dtype, memory_format=torch.channels_last)
    packed = packed_columns(conv, ((0, c),))[0]
    run_gemm(lib, [x.data_ptr(), layout[0], 1, c], n * h * w, conv.out_channels, packed, bias, out.data_ptr(),
             conv.out_channels, act=act)  # fmt: skip
    return out


class NativeBottleneck(Bottleneck):
    """:class:`~necklace.layers.blocks.Bottleneck` whose shortcut add runs inside its second conv's native Winograd
    output transform (``x + act(conv(h))`` in one pass), where that conv runs native Winograd.

    Example:
        >>> block = Bottleneck(32, 32, cfg=ConvCfg(act="silu")).eval()
        >>> fast = native_module(block)
        >>> fast.cv2 = native_module(fast.cv2)
        >>> x = torch.randn(1, 32, 20, 20).contiguous(memory_format=torch.channels_last)
        >>> with torch.no_grad():
        ...     type(fast).__name__, torch.allclose(fast(x), block(x), atol=1e-4)
        ('NativeBottleneck', True)
    """

    def forward(self, x: Tensor) -> Tensor:
        h = self.cv1(x)
        cv2 = self.cv2
        if self.add and type(cv2) is NativeConvNormAct and not _hooks(self) and epilogue_act(cv2) is not None:
            y = conv_act(cv2.conv, cv2.act, h, residual=x)
            if y is not None:
                return y
        y = cv2(h)
        return x + y if self.add else y


class NativeRepConv(RepConv):
    """A re-parameterised :class:`~necklace.layers.RepConv` (one 3x3 conv) with the conv in native form and the
    activation inside the Winograd output transform (:func:`conv_act`).

    Example:
        >>> rep = RepConv(64, 64).eval()
        >>> rep.reparameterize()
        >>> fast = native_module(rep)
        >>> x = torch.randn(1, 64, 20, 20)
        >>> with torch.no_grad():
        ...     type(fast).__name__, bool((fast(x) - rep(x)).abs().max() <= 1e-4 * rep(x).abs().max())
        ('NativeRepConv', True)
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is not None:
            y = conv_act(self.conv, self.act, x)
            if y is not None:
                return y
        return super().forward(x)


class NativeResample(Resample):
    """:class:`~necklace.layers.Resample` whose nearest upsampling by integer factors runs as strided copies
    (:func:`~necklace.deploy.native.nearest.upsample_nearest`, bit-identical).

    Example:
        >>> edge = Resample(8, 8, steps=-1).eval()
        >>> x = torch.randn(1, 8, 5, 7)
        >>> with torch.no_grad():
        ...     torch.equal(native_module(edge)(x, (10, 14)), edge(x, (10, 14)))
        True
    """

    def interpolate(self, x: Tensor, size: tuple[int, int] | list[int]) -> Tensor:
        if self.up_mode == "nearest":
            return upsample_nearest(x, size)
        return super().interpolate(x, size)


class _GemmMerge(C2f):
    def merge(self, parts: list[Tensor]) -> Tensor:
        # cv2(cat(parts)) as one GEMM per part accumulated into one output: the concatenation is never written
        if pointwise_head_ok(self.cv2, parts[0]):
            act = epilogue_act(self.cv2)
            conv = self.cv2.conv
            z = concat_pointwise(parts, conv.weight, conv.bias, act=act or "none", conv=conv)
            if z is not None:
                return z if act is not None else self.cv2.act(self.cv2.norm(z))
        return super().merge(parts)


class NativeC2f(_GemmMerge):
    """:class:`~necklace.layers.C2f` whose final 1x1 conv over the concatenation runs as GEMMs
    (:func:`~necklace.deploy.native.gemm.concat_pointwise`).

    Example:
        >>> block = C2f(24, 32, n=2).eval()
        >>> x = torch.randn(1, 24, 9, 11)
        >>> with torch.no_grad():
        ...     type(native_module(block)).__name__, torch.allclose(native_module(block)(x), block(x), atol=1e-5)
        ('NativeC2f', True)
    """


class NativeC3k2(_GemmMerge, C3k2):
    """:class:`~necklace.layers.blocks.C3k2` with :class:`NativeC2f`'s merge.

    Example:
        >>> block = C3k2(16, 16, n=1).eval()
        >>> type(native_module(block)).__name__, tuple(native_module(block)(torch.zeros(1, 16, 6, 6)).shape)
        ('NativeC3k2', (1, 16, 6, 6))
    """


class NativeCSPBlock(CSPBlock):
    """:class:`~necklace.layers.blocks.CSPBlock` (YOLOv5's C3, YOLOX's CSP layer, YOLO11's C3k) whose final 1x1 conv
    over the concatenation runs as one native GEMM over its two parts (:func:`~necklace.deploy.native.gemm.
    concat_pointwise`: the concatenation never written).

    Example:
        >>> block = CSPBlock(16, 16).eval()
        >>> x = torch.randn(1, 16, 6, 6)
        >>> with torch.no_grad():
        ...     type(native_module(block)).__name__, torch.allclose(native_module(block)(x), block(x), atol=1e-5)
        ('NativeCSPBlock', True)
    """

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.m(self.cv1(x)), self.cv2(x)
        if pointwise_head_ok(self.cv3, a):
            act = epilogue_act(self.cv3)
            conv = self.cv3.conv
            z = concat_pointwise([a, b], conv.weight, conv.bias, act=act or "none", conv=conv)
            if z is not None:
                return z if act is not None else self.cv3.act(self.cv3.norm(z))
        return self.cv3(torch.cat((a, b), dim=1))


def _retyped(module: nn.Module, cls: type[M]) -> M:
    """A new ``cls`` module holding ``module``'s state (parameters, buffers, submodules and attributes shared)."""
    new = cls.__new__(cls)
    state = dict(module.__dict__)
    for key in ("_parameters", "_buffers", "_modules"):
        state[key] = dict(state[key])  # (its own tables: replacing a child of one never touches the other)
    new.__dict__.update(state)
    return new


def _conv_norm_act(m: nn.Module) -> nn.Module:
    new = _retyped(m, NativeConvNormAct)
    new.conv = fast_conv(new.conv)
    return new


def _rep_conv(m: nn.Module) -> nn.Module:
    assert isinstance(m, RepConv)
    if m.conv is None:  # training branches: nothing native to run (deploy re-parameterises first)
        return m
    new = _retyped(m, NativeRepConv)
    assert new.conv is not None
    new.conv = fast_conv(new.conv)
    return new


#: plain block type -> the function making its native form (exact types: a subclass may compute something else)
NATIVE_MODULES: dict[type[nn.Module], Callable[[nn.Module], nn.Module]] = {
    ConvNormAct: _conv_norm_act,
    RepConv: _rep_conv,
    Resample: lambda m: _retyped(m, NativeResample),
    C2f: lambda m: _retyped(m, NativeC2f),
    C3k2: lambda m: _retyped(m, NativeC3k2),
    CSPBlock: lambda m: _retyped(m, NativeCSPBlock),
    Bottleneck: lambda m: _retyped(m, NativeBottleneck),
}


def native_module(module: M) -> M | nn.Module:
    """The native form of ``module`` (a new module sharing its parameters; its children are not converted), or
    ``module`` itself where :data:`NATIVE_MODULES` has no entry for its exact type."""
    make = NATIVE_MODULES.get(type(module))
    return module if make is None else make(module)
