"""Convolution + norm + activation, separable convolution, and the name -> layer tables.

Norm and activation are chosen by name in specs (so graphs round-trip through YAML/JSON) and reach the
modules as callables.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from necklace.layers.fused import FUSED_ACTS, conv_act
from necklace.layers.nearest import upsample_nearest
from necklace.layers.winograd import WinogradConv2d, inference_paths_off
from necklace.spec import is_symbolic

__all__ = [
    "ACTS",
    "NORMS",
    "ConvCfg",
    "ConvNormAct",
    "DepthwiseSeparableConv",
    "Hardswish",
    "PointwiseConv2d",
    "PointwiseToChannelsLast",
    "SeparableConv",
    "SiLU",
    "add_pointwise_",
    "concat_pointwise",
    "make_act",
    "make_norm",
    "pad_same",
    "pointwise_head_ok",
]


class SiLU(nn.SiLU):
    """SiLU that runs in place only when autograd is off.

    An in-place SiLU under autograd makes torch clone its input (the backward needs the pre-activation), so it
    costs a copy instead of saving one; in inference (``no_grad``/``inference_mode``) it writes in place.

    Example:
        >>> x = torch.randn(2, 3)
        >>> torch.equal(SiLU(inplace=True)(x.clone()), torch.nn.functional.silu(x))
        True
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.silu(input, inplace=self.inplace and not torch.is_grad_enabled())


FUSED_ACTS[SiLU] = "swish"  # the same function as nn.SiLU: oneDNN's swish post-op (necklace.layers.fused)


class Hardswish(nn.Hardswish):
    """Hardswish that runs in place only when autograd is off (see :class:`SiLU`).

    Example:
        >>> x = torch.randn(2, 3)
        >>> torch.equal(Hardswish(inplace=True)(x.clone()), torch.nn.functional.hardswish(x))
        True
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.hardswish(input, inplace=self.inplace and not torch.is_grad_enabled())


ACTS: dict[str, Callable[[bool], nn.Module]] = {
    "relu": lambda inplace: nn.ReLU(inplace=inplace),
    "relu6": lambda inplace: nn.ReLU6(inplace=inplace),
    "silu": lambda inplace: SiLU(inplace=inplace),
    "swish": lambda inplace: SiLU(inplace=inplace),
    "leaky_relu": lambda inplace: nn.LeakyReLU(0.1, inplace=inplace),
    "hardswish": lambda inplace: Hardswish(inplace=inplace),
    "gelu": lambda inplace: nn.GELU(),
}

NORMS = ("bn", "gn")


def _choices_error(kind: str, name: object, choices: list[str]) -> ValueError:
    import difflib

    close = difflib.get_close_matches(str(name), choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown {kind} {name!r}; choose one of {sorted(choices)} or None.{hint}")


def make_act(name: str | None, inplace: bool = True) -> nn.Module:
    """Return a fresh activation module for ``name`` (``None`` -> ``nn.Identity``).

    Use ``inplace=False`` where the input tensor may be read elsewhere (pre-activations).
    """
    if name is None or name == "none":
        return nn.Identity()
    if name not in ACTS:
        raise _choices_error("activation", name, list(ACTS))
    return ACTS[name](inplace)


def make_norm(name: str | None, channels: int, eps: float = 1e-5, momentum: float = 0.1, groups: int = 32) -> nn.Module:
    """Return a norm layer over ``channels`` (``'bn'`` BatchNorm2d, ``'gn'`` GroupNorm, ``None`` identity)."""
    if name is None or name == "none":
        return nn.Identity()
    if name == "bn":
        return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
    if name == "gn":
        g = math.gcd(groups, channels)
        return nn.GroupNorm(g, channels, eps=eps)
    raise _choices_error("norm", name, list(NORMS))


@dataclass(frozen=True)
class ConvCfg:
    """How convolutions are built: norm, activation, bias and padding style.

    ``bias=None`` means "bias only when there is no norm". ``padding='same'`` reproduces TensorFlow's
    asymmetric SAME padding for strided convs and pools (needed for TF-ported weights).

    Example:
        >>> cfg = ConvCfg(norm="bn", act="silu", norm_eps=1e-3)
        >>> m = ConvNormAct(16, 32, 3, cfg=cfg)
        >>> m(torch.zeros(1, 16, 9, 11)).shape
        torch.Size([1, 32, 9, 11])
    """

    norm: str | None = None
    act: str | None = None
    bias: bool | None = None
    norm_eps: float = 1e-5
    norm_momentum: float = 0.1
    gn_groups: int = 32
    padding: str = "symmetric"

    def __post_init__(self) -> None:
        if self.norm not in (None, *NORMS):
            raise _choices_error("norm", self.norm, list(NORMS))
        if self.act is not None and self.act not in ACTS:
            raise _choices_error("activation", self.act, list(ACTS))
        if self.padding not in ("symmetric", "same"):
            raise ValueError(f"padding must be 'symmetric' or 'same' (TensorFlow style), got {self.padding!r}.")

    def with_(self, **changes: Any) -> ConvCfg:
        """Return a copy with ``changes`` applied (unknown keys raise ``TypeError``)."""
        return replace(self, **changes)

    @property
    def use_bias(self) -> bool:
        return self.norm is None if self.bias is None else self.bias

    def norm_layer(self, channels: int) -> nn.Module:
        return make_norm(self.norm, channels, self.norm_eps, self.norm_momentum, self.gn_groups)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConvCfg:
        return cls(**data)


def pad_same(x: Tensor, kernel: int, stride: int, dilation: int = 1, value: float = 0.0) -> Tensor:
    """Pad ``x`` like TensorFlow 'SAME' (extra pixel after) for a ``kernel``/``stride`` window.

    With symbolic sizes (``torch.export`` with dynamic shapes) the leading pad is TF's and the trailing pad is
    extended to a total of ``(kernel - 1) * dilation``: the extra rows are never read, and the strided op's
    output size is ``(H - 1) // stride + 1``, the same expression as the engine's level sizes, with no branch.
    """
    ih, iw = x.shape[-2:]
    eff = (kernel - 1) * dilation + 1
    if is_symbolic(ih, iw):

        def lead(n: Any) -> Any:
            total = eff - 1 - (n - 1) % stride  # TF's total padding (negative only when eff < stride)
            return (total if eff >= stride else torch.sym_max(total, 0)) // 2

        top, left = lead(ih), lead(iw)
        return F.pad(x, [left, eff - 1 - left, top, eff - 1 - top], value=value)
    ph = max((-(-ih // stride) - 1) * stride + eff - ih, 0)
    pw = max((-(-iw // stride) - 1) * stride + eff - iw, 0)
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], value=value)


class ConvNormAct(nn.Module):
    """``Conv2d -> norm -> act`` with 'auto' bias (none when a norm follows).

    ``act_first=True`` gives the pre-activation order ``act -> Conv2d -> norm`` (mmcv merge cells' out conv,
    ``order=('act', 'conv', 'norm')``); the activation then never runs in place on the input.

    Example:
        >>> m = ConvNormAct(8, 16, kernel=3, stride=2)
        >>> m(torch.zeros(2, 8, 15, 20)).shape  # ceil(15/2), ceil(20/2)
        torch.Size([2, 16, 8, 10])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        cfg: ConvCfg | None = None,
        act_first: bool = False,
    ) -> None:
        super().__init__()
        cfg = cfg or ConvCfg()
        self.same = cfg.padding == "same" and stride > 1
        self.act_first = act_first
        pad = 0 if self.same else (kernel - 1) // 2 * dilation
        self.kernel, self.stride, self.dilation = kernel, stride, dilation
        # 3x3 stride-1 dense convs run Winograd F(4x4, 3x3) in inference where it is faster (same parameters)
        # and 1x1 stride-1 dense convs as one GEMM (same parameters)
        conv_cls: type[nn.Conv2d] = nn.Conv2d
        if (kernel, stride, dilation, groups, pad) == (3, 1, 1, 1, 1):
            conv_cls = WinogradConv2d
        elif (kernel, stride, groups) == (1, 1, 1):
            conv_cls = PointwiseConv2d
        self.conv = conv_cls(
            in_channels, out_channels, kernel, stride, pad, dilation=dilation, groups=groups, bias=cfg.use_bias
        )
        self.norm = cfg.norm_layer(out_channels)
        self.act = make_act(cfg.act, inplace=not act_first)

    #: run conv + activation as one oneDNN call where it applies (:func:`necklace.layers.fused.conv_act_fused`);
    #: :func:`necklace.layers.fused.set_fused_conv_act` switches it, :func:`necklace.deploy` picks it by timing
    fused_act: bool = True

    def forward(self, x: Tensor) -> Tensor:
        if not self.act_first and not self.same and type(self.norm) is nn.Identity:  # BN folded
            y = conv_act(self.conv, self.act, x, self.fused_act)  # inference: native Winograd or one oneDNN call
            if y is not None:
                return y
        if self.act_first:
            x = self.act(x)
        if self.same:
            x = pad_same(x, self.kernel, self.stride, self.dilation)
        x = self.norm(self.conv(x))
        return x if self.act_first else self.act(x)

    def fuse(self) -> bool:
        """Fold a BatchNorm ``norm`` (running statistics) into ``conv``: the conv gains a bias, ``norm`` becomes
        ``nn.Identity``. An explicit deploy-time transformation (idempotent); returns whether a BN was folded.
        """
        from necklace.layers.rep import fold_bn_into_conv

        if not isinstance(self.norm, nn.modules.batchnorm._BatchNorm) or self.norm.running_mean is None:
            return False
        fold_bn_into_conv(self.conv, self.norm)
        self.norm = nn.Identity().train(self.training)
        return True


def _gemm_inference(conv: nn.Conv2d, x: Tensor) -> bool:
    """Whether a 1x1 conv's inference call may run as a plain GEMM (autograd off, CPU float, not tracing)."""
    if inference_paths_off():
        return False
    if not isinstance(x, Tensor) or x.dim() != 4 or x.device.type != "cpu" or is_symbolic(*x.shape):
        return False
    return x.dtype in (torch.float32, torch.float64) and conv.weight.dtype == x.dtype and x.numel() > 0


#: the smallest input channel count for which :class:`PointwiseConv2d` runs its GEMM: the wide laterals of
#: ResNet-style backbones (512..2048 -> 256) gain 10-20 %; inside light necks (<= 256 channels, followed by
#: concatenations) the GEMM measured 5 % slower overall than mkldnn's 1x1 conv (YOLOv8n deployed 17.0 vs 16.1 ms)
GEMM_MIN_IN_CHANNELS = 512


class PointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-1 ``Conv2d`` whose inference forward is one GEMM in the input's own layout.

    NCHW input: ``out (O, H*W) = W (O, C) @ x (C, H*W) + b`` (``addmm``; the map already is that matrix);
    channels_last input: ``out (H*W, O) = x (H*W, C) @ W^T + b``, a channels_last output. Measured here against
    mkldnn's 1x1 conv: 512->256 at 80x80 6.4 vs 7.2 ms, 2048->256 at 20x20 1.5 vs 1.9 ms; used from
    :data:`GEMM_MIN_IN_CHANNELS` input channels. Narrower convs, autograd, tracing/export, other dtypes/devices
    and :func:`necklace.layers.winograd.direct_convs` take ``nn.Conv2d.forward``. Same parameters and state
    dict as ``nn.Conv2d``.

    Example:
        >>> conv = PointwiseConv2d(512, 4, 1)
        >>> x = torch.randn(2, 512, 5, 7)
        >>> with torch.no_grad():
        ...     y = conv(x)
        >>> y.shape, torch.allclose(y, nn.functional.conv2d(x, conv.weight, conv.bias), atol=1e-5)
        (torch.Size([2, 4, 5, 7]), True)
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> PointwiseConv2d:
        """Wrap ``conv`` (1x1, stride 1, no padding, groups 1), sharing its weight and bias tensors."""
        if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding != (0, 0) or conv.groups != 1:
            raise ValueError(
                f"{cls.__name__} needs a 1x1 stride-1 unpadded dense conv, got kernel {conv.kernel_size}, "
                f"stride {conv.stride}, padding {conv.padding}, groups {conv.groups}."
            )
        new = cls(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None)
        new.weight = conv.weight
        new.bias = conv.bias
        new.train(conv.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        if self.in_channels < GEMM_MIN_IN_CHANNELS or not _gemm_inference(self, x):
            return super().forward(x)
        n, c, h, w = x.shape
        wt = self.weight.reshape(self.out_channels, c)
        if x.is_contiguous():
            if n == 1:
                xm = x.view(c, h * w)
                out = torch.addmm(self.bias[:, None], wt, xm) if self.bias is not None else torch.mm(wt, xm)
            else:  # one GEMM per image into its slice of the output (a broadcast matmul copies both operands)
                out = x.new_empty((n, self.out_channels, h * w))
                for i in range(n):
                    if self.bias is not None:
                        torch.addmm(self.bias[:, None], wt, x[i].view(c, h * w), out=out[i])
                    else:
                        torch.mm(wt, x[i].view(c, h * w), out=out[i])
            return out.view(n, self.out_channels, h, w)
        if x.is_contiguous(memory_format=torch.channels_last):
            xm = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view: the channels_last map is (N*H*W, C)
            out = torch.addmm(self.bias, xm, wt.t()) if self.bias is not None else torch.mm(xm, wt.t())
            return out.view(n, h, w, self.out_channels).permute(0, 3, 1, 2)
        return super().forward(x)


def _pixel_matrix(x: Tensor) -> tuple[Tensor, bool] | None:
    """``x`` (N, C, H, W) as a matrix view without a copy: ``(C, H*W)`` for a single NCHW map (``True``: channels
    major), ``(N*H*W, C)`` for a channels_last map (``False``); channel slices of either work. ``None`` otherwise."""
    n, c, h, w = x.shape
    sn, sc, sh, sw = x.stride()  # (strides of size-1 dims are arbitrary: they are never stepped over)
    if n == 1 and (w == 1 or sw == 1) and (h == 1 or sh == w) and (c == 1 or sc >= h * w):
        return x.as_strided((c, h * w), (sc if c > 1 else h * w, 1), x.storage_offset()), True
    p = sw if w > 1 else sh // w if h > 1 else sn // (h * w) if n > 1 else c  # the pixel step
    if (c == 1 or sc == 1) and p >= c and (h == 1 or sh == w * p) and (n == 1 or sn == h * w * p):
        return x.as_strided((n * h * w, c), (p, 1), x.storage_offset()), False
    return None


def concat_pointwise(
    parts: Sequence[Tensor],
    weight: Tensor,
    bias: Tensor | None,
    upsample: Sequence[bool] | None = None,
    size: tuple[int, int] | None = None,
    channels_last: bool = False,
) -> Tensor | None:
    """``conv1x1(cat(maps, dim=1), weight, bias)`` without building the concatenation: one GEMM per part,
    accumulated into one output (an inference helper; ``None`` when the layouts do not allow it).

    ``weight`` is the 1x1 conv weight (O, sum C_i, 1, 1) or its matrix. A part flagged in ``upsample`` is a
    low-resolution map whose nearest-neighbour resize to ``size`` is the map to concatenate: a 1x1 conv
    commutes with nearest resizing, so that part's GEMM runs at the low resolution and only its O-channel result
    is resized (YOLOv8's top-down ``C2f(cat(up(p), x))``: 4x fewer multiply-adds for that part, and neither
    the upsampled map nor the concatenation is ever written). Parts are single NCHW maps or channels_last maps
    (the output is channels_last if any part is, or with ``channels_last``: a channels_last neck whose inputs
    are NCHW backbone maps); their spatial size is ``size`` (default: the first part's) unless flagged.

    Example:
        >>> a, b = torch.randn(1, 3, 4, 6), torch.randn(1, 5, 2, 3)
        >>> w, bias = torch.randn(7, 8, 1, 1), torch.randn(7)
        >>> up = nn.functional.interpolate(b, size=(4, 6), mode="nearest")
        >>> ref = nn.functional.conv2d(torch.cat([a, up], 1), w, bias)
        >>> y = concat_pointwise([a, b], w, bias, upsample=[False, True], size=(4, 6))
        >>> y.shape, torch.allclose(y, ref, atol=1e-5)
        (torch.Size([1, 7, 4, 6]), True)
    """
    w2 = weight.reshape(weight.shape[0], -1)
    o = w2.shape[0]
    ups = list(upsample) if upsample is not None else [False] * len(parts)
    if size is None:
        size = (parts[0].shape[2], parts[0].shape[3])
    h, w = size
    n = parts[0].shape[0]
    mats = [_pixel_matrix(p) for p in parts]
    if any(m is None for m in mats) or len(ups) != len(parts):
        return None
    # the output is channels_last when any part is (a channels_last neck); a part in the other layout is read
    # as a transposed operand (e.g. a backbone map left NCHW, as PointwiseToChannelsLast reads it)
    major = not channels_last and all(m[1] for m in mats)  # type: ignore[index]
    chans = [p.shape[1] for p in parts]
    if sum(chans) != w2.shape[1]:
        return None
    if any(p.shape[0] != n for p in parts):
        return None
    if any(p.shape[2:] != (h, w) for p, u in zip(parts, ups, strict=True) if not u):
        return None
    starts = [sum(chans[:i]) for i in range(len(chans))]

    def gemm(i: int, acc: Tensor | None, b: Tensor | None) -> Tensor:
        wi, (xi, x_major) = w2[:, starts[i] : starts[i] + chans[i]], mats[i]  # type: ignore[misc]
        if major:  # (O, HW) = W_i (O, C_i) @ X_i (C_i, HW)
            xc = xi if x_major else xi.t()
            if acc is not None:
                return acc.addmm_(wi, xc)
            return torch.addmm(b[:, None], wi, xc) if b is not None else torch.mm(wi, xc)
        xp = xi.t() if x_major else xi  # (NHW, O) = X_i (NHW, C_i) @ W_i^T
        if acc is not None:
            return acc.addmm_(xp, wi.t())
        return torch.addmm(b, xp, wi.t()) if b is not None else torch.mm(xp, wi.t())

    def as_map(mat: Tensor, hh: int, ww: int) -> Tensor:
        return mat.view(1, o, hh, ww) if major else mat.view(n, hh, ww, o).permute(0, 3, 1, 2)

    out: Tensor | None = None
    pending_bias = bias
    for i, part in enumerate(parts):  # low-resolution parts first: their resized result starts the sum
        if ups[i]:
            z = as_map(gemm(i, None, pending_bias), part.shape[2], part.shape[3])
            pending_bias = None
            z = upsample_nearest(z, (h, w))
            out = z if out is None else out.add_(z)
    acc_mat: Tensor | None = None
    if out is not None:
        acc = _pixel_matrix(out)
        if acc is None or acc[1] != major:
            return None
        acc_mat = acc[0]  # a view of ``out``: the other GEMMs accumulate into it in place
    for i in range(len(parts)):
        if not ups[i]:
            acc_mat = gemm(i, acc_mat, pending_bias if acc_mat is None else None)
    if out is not None:
        return out
    assert acc_mat is not None
    return as_map(acc_mat, h, w)


def add_pointwise_(acc: Tensor, x: Tensor, weight: Tensor) -> bool:
    """``acc += conv1x1(x, weight)`` in place (no bias) as one GEMM accumulating into ``acc``; returns whether
    it ran (``False``, and ``acc`` untouched, when a layout is not one matrix: e.g. a batch of NCHW maps).

    ``acc`` and ``x`` may differ in layout (NCHW vs channels_last): the GEMM reads either operand transposed.
    An inference helper (FPN's ``lateral(C_l) + up(P_{l+1})`` writes the lateral into the upsampled map).

    Example:
        >>> acc, x, w = torch.randn(1, 4, 3, 5), torch.randn(1, 6, 3, 5), torch.randn(4, 6, 1, 1)
        >>> ref = acc + nn.functional.conv2d(x, w)
        >>> add_pointwise_(acc, x, w), torch.allclose(acc, ref, atol=1e-5)
        (True, True)
    """
    if acc.shape[0] != x.shape[0] or acc.shape[2:] != x.shape[2:]:
        return False
    if acc.shape[0] > 1 and acc.is_contiguous() and x.is_contiguous():  # a batch of NCHW maps: image by image
        return all(add_pointwise_(acc[i : i + 1], x[i : i + 1], weight) for i in range(acc.shape[0]))
    am, xm = _pixel_matrix(acc), _pixel_matrix(x)
    if am is None or xm is None:
        return False
    w2 = weight.reshape(weight.shape[0], -1)
    (a, a_major), (b, b_major) = am, xm
    if a_major:  # acc (O, HW) += W (O, C) @ X (C, HW)
        a.addmm_(w2, b if b_major else b.t())
    else:  # acc (NHW, O) += X (NHW, C) @ W^T
        a.addmm_(b.t() if b_major else b, w2.t())
    return True


def pointwise_head_ok(block: nn.Module, x: Tensor) -> bool:
    """Whether ``block`` (a :class:`ConvNormAct`) is a plain 1x1 conv that :func:`concat_pointwise` may run
    for input ``x`` now (inference, CPU float, not tracing; see :class:`PointwiseConv2d`)."""
    if not isinstance(block, ConvNormAct) or block.act_first or block.same:
        return False
    c = block.conv
    if c.kernel_size != (1, 1) or c.stride != (1, 1) or c.padding != (0, 0) or c.groups != 1:
        return False
    return _gemm_inference(c, x)


class PointwiseToChannelsLast(PointwiseConv2d):
    """A 1x1, stride-1 ``Conv2d`` that turns a contiguous (NCHW) map into a channels_last one in a single GEMM.

    ``out[n, (h, w), :] = x[n, :, (h, w)]^T @ W^T + b``: the GEMM reads the NCHW map through a transposed view and
    writes (N, H*W, C_out), which *is* the channels_last layout, so no layout conversion runs at all (converting
    the backbone map first and then convolving costs a full copy of it). Used by :func:`necklace.deploy` for
    the lateral 1x1 convs of a channels_last neck; other inputs, autograd and tracing/export take the plain
    ``Conv2d`` path. Same parameters and state dict as the ``Conv2d`` it replaces (:meth:`from_conv`).

    Example:
        >>> conv = nn.Conv2d(8, 4, 1)
        >>> fast = PointwiseToChannelsLast.from_conv(conv)
        >>> x = torch.randn(2, 8, 5, 7)
        >>> with torch.no_grad():
        ...     y = fast(x)
        >>> y.is_contiguous(memory_format=torch.channels_last), torch.allclose(y, conv(x), atol=1e-6)
        (True, True)
    """

    def to_conv(self) -> PointwiseConv2d:
        """The :class:`PointwiseConv2d` with the same weight and bias tensors (undoes :meth:`from_conv`)."""
        conv = PointwiseConv2d(self.in_channels, self.out_channels, 1, bias=self.bias is not None)
        conv.weight = self.weight
        conv.bias = self.bias
        return conv.train(self.training)

    def forward(self, x: Tensor) -> Tensor:
        if not _gemm_inference(self, x) or not x.is_contiguous():
            return super().forward(x)
        n, c, h, w = x.shape
        if n == 0 or h * w == 1:  # (a 1x1 map is both layouts at once: nothing to gain)
            return super().forward(x)
        wt = self.weight.reshape(self.out_channels, c).t()  # (C_in, C_out) view
        xt = x.reshape(n, c, h * w).transpose(1, 2)  # (N, H*W, C_in) view of the NCHW map
        if n == 1:
            out = torch.addmm(self.bias, xt[0], wt) if self.bias is not None else torch.mm(xt[0], wt)
        else:
            out = torch.matmul(xt, wt)
            if self.bias is not None:
                out.add_(self.bias)
        return out.view(n, h, w, self.out_channels).permute(0, 3, 1, 2)


class SeparableConv(nn.Module):
    """Depthwise ``k x k`` conv then pointwise 1x1 conv, norm and activation.

    ``act_first=True`` gives EfficientDet's pre-activation node (act -> dw -> pw -> norm, no act after).
    ``pw_bias`` overrides the pointwise bias (EfficientDet's TF ports keep a "redundant" bias before BN).

    Example:
        >>> m = SeparableConv(64, 64, cfg=ConvCfg(norm="bn", act="silu"), act_first=True)
        >>> m(torch.zeros(1, 64, 13, 17)).shape
        torch.Size([1, 64, 13, 17])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 3,
        stride: int = 1,
        cfg: ConvCfg | None = None,
        act_first: bool = False,
        pw_bias: bool | None = None,
    ) -> None:
        super().__init__()
        cfg = cfg or ConvCfg()
        self.same = cfg.padding == "same" and stride > 1
        self.kernel, self.stride = kernel, stride
        self.act_first = act_first
        self.pre_act = make_act(cfg.act, inplace=False) if act_first else nn.Identity()
        self.dw = nn.Conv2d(
            in_channels, in_channels, kernel, stride, 0 if self.same else kernel // 2, groups=in_channels, bias=False
        )
        self.pw = nn.Conv2d(in_channels, out_channels, 1, bias=cfg.use_bias if pw_bias is None else pw_bias)
        self.norm = cfg.norm_layer(out_channels)
        self.act = nn.Identity() if act_first else make_act(cfg.act)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pre_act(x)
        if self.same:
            x = pad_same(x, self.kernel, self.stride)
        return self.act(self.norm(self.pw(self.dw(x))))

    def fuse(self) -> bool:
        """Fold a BatchNorm ``norm`` into the pointwise conv (see :meth:`ConvNormAct.fuse`)."""
        from necklace.layers.rep import fold_bn_into_conv

        if not isinstance(self.norm, nn.modules.batchnorm._BatchNorm) or self.norm.running_mean is None:
            return False
        fold_bn_into_conv(self.pw, self.norm)
        self.norm = nn.Identity().train(self.training)
        return True


class DepthwiseSeparableConv(nn.Module):
    """Depthwise ``k x k`` conv + norm + act, then pointwise 1x1 conv + norm + act (two :class:`ConvNormAct`).

    mmcv's ``DepthwiseSeparableConvModule``, PP-PicoDet's ``DP_Module`` and YOLOv6-Lite's ``DPBlock``: unlike
    :class:`SeparableConv` (EfficientDet), the depthwise conv has its own norm and activation. Both BatchNorms
    fold with :func:`necklace.deploy.fuse_conv_bn` (each half is a ``ConvNormAct``).

    Example:
        >>> m = DepthwiseSeparableConv(32, 48, kernel=5, stride=2, cfg=ConvCfg(norm="bn", act="hardswish"))
        >>> m(torch.zeros(1, 32, 13, 17)).shape
        torch.Size([1, 48, 7, 9])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 3,
        stride: int = 1,
        cfg: ConvCfg | None = None,
    ) -> None:
        super().__init__()
        self.dw = ConvNormAct(in_channels, in_channels, kernel, stride, groups=in_channels, cfg=cfg)
        self.pw = ConvNormAct(in_channels, out_channels, 1, cfg=cfg)

    def forward(self, x: Tensor) -> Tensor:
        return self.pw(self.dw(x))  # (N, C_out, ceil(H / stride), ceil(W / stride))
