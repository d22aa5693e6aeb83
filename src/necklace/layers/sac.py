"""DetectoRS convolutions: adaptive weight standardisation (:class:`ConvAWS2d`) and switchable atrous convolution
(:class:`SAConv2d`), with helpers that swap them into an existing model keeping its weights.

Both follow mmcv (``mmcv/cnn/bricks/conv_ws.py``, ``mmcv/ops/saconv.py``) and the official DetectoRS code, with
three deliberate differences:

- the weight standardisation and the switch blend run in float32 (fp16/AMP reports NaNs there: mmdet #3292, #3605);
- the convolutions are explicit functional calls: nothing mutates ``padding``/``dilation`` in ``forward`` (mmcv's
  SAC does, which breaks tracing, export and ``torch.compile``);
- ``SAConv2d`` applies its ``bias`` (once, after the blend); mmcv silently ignores it. DetectoRS uses ``bias=False``.

State-dict keys are mmcv's (``weight``, ``weight_gamma``, ``weight_beta``, ``weight_diff``, ``switch.*``,
``pre_context.*``, ``post_context.*``, ``offset_s.*``, ``offset_l.*``), so DetectoRS checkpoints load as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

__all__ = ["ConvAWS2d", "SAConv2d", "convert_to_aws", "convert_to_sac"]

_AWS_EPS = 1e-5


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _standardize(weight: Tensor, eps: float) -> Tensor:
    """``(w - mean) / sqrt(var_unbiased + eps)`` per output channel, in float32."""
    w = weight.float()
    flat = w.flatten(1)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    std = torch.sqrt(flat.var(dim=1) + eps).view(-1, 1, 1, 1)
    return (w - mean) / std


class ConvAWS2d(nn.Conv2d):
    """``Conv2d`` with adaptive weight standardisation: ``W = gamma * standardize(weight) + beta``.

    ``gamma``/``beta`` (``weight_gamma``/``weight_beta``, shape ``(out, 1, 1, 1)``) are **buffers**, not parameters:
    when a state dict *without* them is loaded (an ImageNet ResNet), they are set to the loaded kernel's per-channel
    ``sqrt(var + 1e-5)`` and ``mean``, so the effective kernel reproduces the loaded one exactly and its usual
    "missing keys" are not reported (mmcv's ``_load_from_state_dict`` trick). A freshly constructed module has
    ``gamma = 1, beta = 0`` (plain weight standardisation). The standardisation is computed in float32, also
    under autocast, and cast back to the weight's dtype.

    Example:
        >>> conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        >>> aws = ConvAWS2d(8, 16, 3, padding=1, bias=False)
        >>> aws.load_state_dict(conv.state_dict())  # gamma/beta rebuilt from the loaded weight
        <All keys matched successfully>
        >>> x = torch.randn(1, 8, 9, 11)
        >>> torch.allclose(aws(x), conv(x), atol=1e-5)
        True
    """

    weight_gamma: Tensor
    weight_beta: Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation, groups=groups,
            bias=bias,
        )  # fmt: skip
        self.register_buffer("weight_gamma", torch.ones(self.out_channels, 1, 1, 1))
        self.register_buffer("weight_beta", torch.zeros(self.out_channels, 1, 1, 1))

    def standardized_weight(self, weight: Tensor | None = None) -> Tensor:
        """The kernel the convolution uses: ``gamma * standardize(weight) + beta`` (float32 math, weight's dtype)."""
        w = self.weight if weight is None else weight
        out = self.weight_gamma.float() * _standardize(w, _AWS_EPS) + self.weight_beta.float()
        return out.to(w.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)

    def _load_from_state_dict(
        self,
        state_dict: Any,
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        self.weight_gamma.data.fill_(-1)
        local_missing: list[str] = []
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, local_missing, unexpected_keys, error_msgs
        )
        if self.weight_gamma.data.mean() > 0:  # the checkpoint had gamma: keep it
            missing_keys.extend(local_missing)
            return
        with torch.no_grad():
            flat = self.weight.detach().float().flatten(1)
            self.weight_beta.copy_(flat.mean(dim=1).view(-1, 1, 1, 1))
            self.weight_gamma.copy_(torch.sqrt(flat.var(dim=1) + _AWS_EPS).view(-1, 1, 1, 1))
        missing_keys.extend(k for k in local_missing if not k.endswith(("weight_gamma", "weight_beta")))


def _gap(x: Tensor) -> Tensor:
    """Global average pool ``(N, C, 1, 1)``, accumulated in float32."""
    return x.float().mean(dim=(2, 3), keepdim=True).to(x.dtype)


class SAConv2d(ConvAWS2d):
    """Switchable atrous convolution (DetectoRS): one AWS kernel at dilation ``d`` and ``3d``, blended per pixel.

    ``forward``: ``x <- x + pre_context(GAP(x))``; ``a = avg_pool5x5(reflect_pad(x, 2))``; ``s = switch(a)`` (a 1x1
    conv with the conv's stride, *no* sigmoid); ``W = AWS(weight)``;
    ``out = s * conv(x, W, d) + (1 - s) * conv(x, W + weight_diff, 3d)``; ``out <- out + post_context(GAP(out))``.
    ``use_deform=True`` makes both branches deformable (``torchvision.ops.deform_conv2d``; offsets from ``a`` via
    ``offset_s``/``offset_l``, 3x3 convs to ``2*kh*kw`` channels, one deform group).

    Initialisation makes it the plain AWS conv: ``switch`` weight 0 / bias 1, ``weight_diff``, contexts and offsets
    0. So a freshly built SAC that loaded a conv's weights computes exactly that conv (:func:`convert_to_sac`).
    The switch and the blend run in float32. Maps of height or width <= 2 (where reflect padding by 2 is
    undefined and mmcv raises) use replicate padding.

    Example:
        >>> conv = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        >>> sac = SAConv2d(8, 8, 3, stride=2, padding=1, bias=False)
        >>> _ = sac.load_state_dict(conv.state_dict(), strict=False)  # weight_diff, switch, ... keep their init
        >>> x = torch.randn(1, 8, 15, 20)
        >>> sac(x).shape, torch.allclose(sac(x), conv(x), atol=1e-5)
        (torch.Size([1, 8, 8, 10]), True)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        use_deform: bool = False,
    ) -> None:
        if isinstance(padding, str):
            raise ValueError(f"SAConv2d needs integer padding (got {padding!r}); the large branch uses 3x padding.")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.use_deform = use_deform
        self.switch = nn.Conv2d(in_channels, 1, kernel_size=1, stride=stride, bias=True)
        self.weight_diff = nn.Parameter(torch.zeros_like(self.weight))
        self.pre_context = nn.Conv2d(in_channels, in_channels, kernel_size=1, bias=True)
        self.post_context = nn.Conv2d(out_channels, out_channels, kernel_size=1, bias=True)
        if use_deform:
            kh, kw = self.kernel_size
            self.offset_s = nn.Conv2d(in_channels, 2 * kh * kw, 3, padding=1, stride=stride, bias=True)
            self.offset_l = nn.Conv2d(in_channels, 2 * kh * kw, 3, padding=1, stride=stride, bias=True)
        self.reset_switch()

    def reset_switch(self) -> None:
        """Identity-like init: switch weight 0 / bias 1 (all small branch), ``weight_diff``, contexts, offsets 0."""
        with torch.no_grad():
            self.weight_diff.zero_()
            mods = [self.switch, self.pre_context, self.post_context]
            if self.use_deform:
                mods += [self.offset_s, self.offset_l]
            for m in mods:
                m.weight.zero_()
                if m.bias is not None:
                    m.bias.fill_(1.0 if m is self.switch else 0.0)

    def _branch(self, x: Tensor, offset_conv: str, a: Tensor, w: Tensor, scale: int) -> Tensor:
        pad = tuple(scale * p for p in _pair(self.padding))  # type: ignore[arg-type]
        dil = tuple(scale * d for d in _pair(self.dilation))
        if self.use_deform:
            offset = getattr(self, offset_conv)(a)
            return deform_conv2d(x, offset, w, None, self.stride, pad, dil)
        return F.conv2d(x, w, None, self.stride, pad, dil, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pre_context(_gap(x))  # (N, C, H, W) + (N, C, 1, 1)
        mode = "reflect" if min(x.shape[-2:]) > 2 else "replicate"
        a = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode=mode), kernel_size=5, stride=1)  # (N, C, H, W)
        switch = self.switch(a).float()  # (N, 1, H', W'), unconstrained, starts at 1
        w = self.standardized_weight()
        out_s = self._branch(x, "offset_s", a, w, 1)  # dilation d
        out_l = self._branch(x, "offset_l", a, w + self.weight_diff, 3)  # dilation 3d
        out = (switch * out_s.float() + (1 - switch) * out_l.float()).to(out_s.dtype)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out + self.post_context(_gap(out))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", use_deform={self.use_deform}"


def _replace_convs(
    module: nn.Module, make: Callable[[nn.Conv2d], nn.Module | None], skip_names: Sequence[str] = ()
) -> int:
    count = 0
    for name, child in list(module.named_children()):
        if name in skip_names or isinstance(child, ConvAWS2d):  # never touch SAC's own switch/context convs
            continue
        new = make(child) if type(child) is nn.Conv2d else None
        if new is not None:
            setattr(module, name, new)
            count += 1
        else:
            count += _replace_convs(child, make, skip_names)
    return count


def _load_conv(new: ConvAWS2d, conv: nn.Conv2d) -> ConvAWS2d:
    if conv.padding_mode != "zeros":
        raise ValueError(f"cannot convert {conv} to {type(new).__name__}: padding_mode must be 'zeros'.")
    new.to(device=conv.weight.device, dtype=conv.weight.dtype)
    new.load_state_dict(conv.state_dict(), strict=False)  # AWS rebuilds gamma/beta: same function as `conv`
    new.weight.requires_grad_(conv.weight.requires_grad)
    if conv.bias is not None and new.bias is not None:
        new.bias.requires_grad_(conv.bias.requires_grad)
    return new.train(conv.training)


def convert_to_sac(module: nn.Module, use_deform: bool = False, kernel_size: tuple[int, int] = (3, 3)) -> int:
    """Replace every plain ``nn.Conv2d`` with a ``kernel_size`` kernel inside ``module`` by an :class:`SAConv2d`
    that computes the same function (weights kept through the AWS load trick; SAC parts at their identity init).

    Returns the number of convolutions replaced. Convs that already are AWS/SAC are left alone.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 1))
        >>> x = torch.randn(1, 4, 6, 6); before = m(x)
        >>> convert_to_sac(m), type(m[0]).__name__, type(m[2]).__name__
        (1, 'SAConv2d', 'Conv2d')
        >>> torch.allclose(m(x), before, atol=1e-5)
        True
    """

    def make(conv: nn.Conv2d) -> nn.Module | None:
        if tuple(conv.kernel_size) != tuple(kernel_size) or isinstance(conv.padding, str):
            return None
        sac = SAConv2d(
            conv.in_channels, conv.out_channels, _pair(conv.kernel_size), _pair(conv.stride), _pair(conv.padding),
            _pair(conv.dilation), conv.groups, conv.bias is not None, use_deform,
        )  # fmt: skip
        return _load_conv(sac, conv)

    return _replace_convs(module, make)


def convert_to_aws(module: nn.Module, skip_names: Sequence[str] = ()) -> int:
    """Replace every plain ``nn.Conv2d`` inside ``module`` by a :class:`ConvAWS2d` computing the same function
    (DetectoRS builds its whole ResNet with ``conv_cfg=ConvAWS``). Returns the number replaced. Submodules
    named in ``skip_names`` (e.g. ``rfp_conv``) and the plain convs inside SAC (switch, contexts, offsets) are kept.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(8))
        >>> convert_to_aws(m), type(m[0]).__name__
        (1, 'ConvAWS2d')
    """

    def make(conv: nn.Conv2d) -> nn.Module | None:
        if isinstance(conv.padding, str):  # 'same'/'valid' padding: left as it is
            return None
        aws = ConvAWS2d(
            conv.in_channels, conv.out_channels, _pair(conv.kernel_size), _pair(conv.stride), _pair(conv.padding),
            _pair(conv.dilation), conv.groups, conv.bias is not None,
        )  # fmt: skip
        return _load_conv(aws, conv)

    return _replace_convs(module, make, skip_names)
