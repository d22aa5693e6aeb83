"""Convolution + norm + activation, separable convolution, and the name -> layer tables.

Norm and activation are chosen by name in specs (so graphs round-trip through YAML/JSON) and reach the
modules as callables.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from necklace.layers.fold import fold_bn_into_conv
from necklace.spec import is_symbolic

__all__ = [
    "ACTS",
    "NORMS",
    "ConvCfg",
    "ConvNormAct",
    "DepthwiseSeparableConv",
    "Hardswish",
    "SeparableConv",
    "SiLU",
    "make_act",
    "make_norm",
    "pad_same",
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
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel, stride, pad, dilation=dilation, groups=groups, bias=cfg.use_bias
        )
        self.norm = cfg.norm_layer(out_channels)
        self.act = make_act(cfg.act, inplace=not act_first)

    def forward(self, x: Tensor) -> Tensor:
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
        if not isinstance(self.norm, nn.modules.batchnorm._BatchNorm) or self.norm.running_mean is None:
            return False
        fold_bn_into_conv(self.conv, self.norm)
        self.norm = nn.Identity().train(self.training)
        return True


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
