"""Conv + activation as one oneDNN call on channels_last maps in inference, the weight pre-packed once.

``F.conv2d`` on a channels_last CPU map hands oneDNN the plain weight, which it reorders into its blocked layout
on every call, and the activation then runs as a second pass over the output. :func:`conv_act_fused` packs the
weight once (``mkldnn_reorder_conv2d_weight``, cached per conv and rebuilt when the weight changes) and runs the
conv with the activation as oneDNN's post-op (``mkldnn::_convolution_pointwise``, the kernels torch.compile's CPU
backend uses). On this project's 2-core CPU: 3x3 convs of 32-128 channels 0.91-0.98 of conv + ReLU / SiLU as two
calls; YOLOv6-N RepPAN deployed 0.96 of its time (A/B, same process). The values are oneDNN's own (the same
kernels; measured bit-identical on RepPAN-n, at most a few ulp elsewhere).

It is an inference path like Winograd (:func:`~necklace.layers.winograd.inference_paths_off`): autograd, tracing,
export, autocast and :func:`~necklace.layers.winograd.direct_convs` blocks see the modules; so do NCHW maps,
convs with forward hooks, and builds without oneDNN (or with ``torch.backends.mkldnn.enabled = False``).

Whether it pays depends on the CPU: on an AVX2-only AMD EPYC (no AVX-512) it is within a few percent of conv and
activation as two calls (after weights were packed per input shape; before, 27.3 vs 19.3 ms for YOLOv8-N). The
modules that use it (:class:`~necklace.layers.conv.ConvNormAct`, :class:`~necklace.layers.rep.RepConv`) carry a
``fused_act`` switch, set for a whole model by :func:`set_fused_conv_act`; :func:`necklace.deploy` times both
settings on the example inputs and keeps the faster.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn

from necklace.layers.winograd import WinogradConv2d, inference_paths_off

__all__ = [
    "FUSED_ACTS",
    "conv_act",
    "conv_act_fused",
    "fused_act_modules",
    "packed_weight_count",
    "set_fused_conv_act",
]

#: activation module type -> oneDNN post-op (exact types: a subclass may compute something else;
#: necklace's own SiLU registers itself in :mod:`necklace.layers.conv`)
FUSED_ACTS: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.SiLU: "swish", nn.Identity: "none"}

# conv -> (weight, its version, {input shape: packed weight or None where oneDNN refused it}); weak keys, so deep
# copies and pickles never carry (or alias) a packed weight. Packed per input shape: oneDNN picks its kernel (and
# the weight layout that kernel reads) by the whole problem, so a weight packed without the input's size can
# mismatch the kernel picked at run time and be reordered on every call (measured: a stride-2 3x3 conv 128 ch
# at 40x40 + SiLU, 8.0 ms packed without the size, 1.3 ms with it, 1.1 ms as conv and SiLU apart)
_PACKED: weakref.WeakKeyDictionary[nn.Module, tuple[Tensor, int, dict[tuple[int, ...], Tensor | None]]] = (
    weakref.WeakKeyDictionary()
)
#: input shapes packed per conv before its cache starts over (a neck run on many image sizes)
MAX_PACKED_SHAPES = 8


def packed_weight_count() -> int:
    """How many convs hold a packed weight now (alive modules only).

    Example:
        >>> packed_weight_count() >= 0
        True
    """
    return sum(1 for entry in _PACKED.values() if any(p is not None for p in entry[2].values()))


def fused_act_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that may run :func:`conv_act_fused` (those with a boolean ``fused_act`` switch).

    Example:
        >>> from necklace.layers.conv import ConvNormAct
        >>> len(fused_act_modules(nn.Sequential(ConvNormAct(4, 8, 3), nn.ReLU())))
        1
    """
    return [m for m in model.modules() if isinstance(getattr(type(m), "fused_act", None), bool)]


def set_fused_conv_act(model: nn.Module, enabled: bool) -> int:
    """Switch the one-call conv + activation path (:func:`conv_act_fused`) of every module of ``model`` that has
    one on or off; returns how many were set. Off, each runs its conv and its activation as two calls (the same
    values up to rounding). In place.

    Example:
        >>> from necklace.layers.conv import ConvNormAct
        >>> m = nn.Sequential(ConvNormAct(4, 8, 3), ConvNormAct(8, 8, 1))
        >>> set_fused_conv_act(m, False), m[0].fused_act
        (2, False)
    """
    mods = fused_act_modules(model)
    for m in mods:
        m.fused_act = bool(enabled)  # type: ignore[assignment]  # (nn.Module.__getattr__ types it Tensor | Module)
    return len(mods)


def _hooks(*modules: nn.Module) -> bool:
    g = nn.modules.module
    if getattr(g, "_global_forward_hooks", None) or getattr(g, "_global_forward_pre_hooks", None):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def _available() -> bool:
    return bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled) and hasattr(
        torch.ops.mkldnn, "_convolution_pointwise"
    )


def _packed(conv: nn.Conv2d, x: Tensor) -> Tensor | None:
    w = conv.weight
    entry = _PACKED.get(conv)
    shape = tuple(x.shape)
    if entry is None or entry[0] is not w or entry[1] != w._version:
        entry = _PACKED[conv] = (w, w._version, {})
    elif shape in entry[2]:
        return entry[2][shape]
    elif len(entry[2]) >= MAX_PACKED_SHAPES:  # (a full cache starts over, but never for a shape it holds)
        entry[2].clear()
    packed: Tensor | None
    try:
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(  # type: ignore[call-arg]  # (stubs lack input_size)
            w.detach().to_mkldnn(), list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, list(shape)
        )
    except RuntimeError:  # a shape oneDNN does not take: the modules run, and this is not retried
        packed = None
    entry[2][shape] = packed
    return packed


def conv_act_fused(conv: nn.Module, act: nn.Module, x: Tensor) -> Tensor | None:
    """``act(conv(x))`` as one oneDNN call with a pre-packed weight, or ``None`` where the modules must run.

    It runs for a channels_last float32 CPU map in inference, ``conv`` a zero-padded ``nn.Conv2d`` (or a
    :class:`~necklace.layers.winograd.WinogradConv2d` not taking its Winograd path for ``x``), ``act`` one of
    :data:`FUSED_ACTS`, and no forward hooks on either.

    Example:
        >>> conv, act = nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        >>> x = torch.randn(1, 8, 12, 12).contiguous(memory_format=torch.channels_last)
        >>> with torch.no_grad():
        ...     y = conv_act_fused(conv, act, x)
        >>> y is None or (tuple(y.shape), torch.allclose(y, act(conv(x)), atol=1e-5))
        ((1, 16, 12, 12), True)
    """
    return _packed_conv_act(conv, act, x, check_winograd=True)


def _packed_conv_act(conv: nn.Module, act: nn.Module, x: Tensor, check_winograd: bool) -> Tensor | None:
    """:func:`conv_act_fused`; ``check_winograd=False`` where the caller knows a WinogradConv2d takes no Winograd
    path for ``x`` (:func:`conv_act` decided that once)."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return None  # (first: layout tests on symbolic sizes would add guards to an exported graph)
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return None  # NCHW maps (and 1x1 maps, both at once) run the modules
    attr = FUSED_ACTS.get(type(act))
    if attr is None or x.dim() != 4 or x.dtype != torch.float32 or x.device.type != "cpu":
        return None
    kind = type(conv)
    if kind is not nn.Conv2d and kind is not WinogradConv2d:
        return None
    assert isinstance(conv, nn.Conv2d)
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str) or conv.weight.dtype != torch.float32:
        return None
    if inference_paths_off() or _hooks(conv, act) or not _available():
        return None
    if check_winograd and kind is WinogradConv2d and conv._use_winograd(x):  # type: ignore[operator]
        return None
    packed = _packed(conv, x)
    if packed is None:
        return None
    return torch.ops.mkldnn._convolution_pointwise(
        x, packed, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, attr, [], ""
    )


def conv_act(conv: nn.Module, act: nn.Module, x: Tensor, fused: bool = True) -> Tensor | None:
    """``act(conv(x))`` by the fastest inference path that applies, or ``None`` where the modules must run.

    First the native Winograd path of a :class:`~necklace.layers.winograd.WinogradConv2d`, with the activation
    in its output transform (no second pass over the output; any memory format); then, with ``fused``, oneDNN's
    conv with the activation as a post-op (:func:`conv_act_fused`, channels_last maps). Forward hooks on either
    module keep the modules.

    Example:
        >>> conv, act = WinogradConv2d(64, 64, 3, padding=1), nn.ReLU()
        >>> x = torch.randn(1, 64, 20, 20)
        >>> with torch.no_grad():
        ...     y = conv_act(conv, act, x)
        >>> y is None or bool(torch.allclose(y, act(conv(x)), atol=1e-4))
        True
    """
    if type(conv) is WinogradConv2d:
        path = conv._winograd_path(x)  # decided once here (the conv's own forward decides the same)
        if path == "native":
            name = FUSED_ACTS.get(type(act))
            return None if name is None or _hooks(conv, act) else conv._native_act(x, name)
        if path is not None:
            return None  # the pure-torch Winograd: conv, then act
    return _packed_conv_act(conv, act, x, check_winograd=False) if fused else None
