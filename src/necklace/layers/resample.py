"""Edge resampling: align channels, then resize to the target level at the target's runtime size."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from necklace.layers.conv import ConvCfg, ConvNormAct, DepthwiseSeparableConv, SeparableConv, make_act, pad_same
from necklace.spec import _is_tracing, is_symbolic

__all__ = [
    "DOWN_MODES",
    "LEARNED_DOWN_MODES",
    "UP_MODES",
    "Resample",
    "match_size",
]

UP_MODES = ("nearest", "bilinear", "transposed")
DOWN_MODES = ("conv", "dwconv", "maxpool", "avgpool", "subsample", "maxpool2", "dpconv")
#: down modes whose stride-2 op is a learned conv that also maps the channels
LEARNED_DOWN_MODES = ("conv", "dwconv", "dpconv")


def match_size(x: Tensor, size: tuple[int, int] | list[int]) -> Tensor:
    """Return ``x`` at spatial ``size``: unchanged when equal, cropped when one pixel larger, else resized.

    This only fires when a backbone's level sizes do not follow ``ceil(H / 2)`` (e.g. floor-halving).

    Under ``torch.export`` with dynamic shapes (symbolic sizes) no size is compared in Python: ``x`` is returned
    as is when its size is provably the target's (e.g. a stride-2 conv of the level below an extra level), else
    cropped to at most the target and resized to it (nearest), which is what eager does for equal, one-larger
    and smaller maps (a map two or more pixels larger is cropped rather than resized). Under ``torch.jit.trace``
    a map at least as large as the target is cropped (with traced sizes, so the trace crops at every size).
    """
    h, w = x.shape[-2:]
    if is_symbolic(h, w, size[0], size[1]):
        from torch.fx.experimental.symbolic_shapes import statically_known_true

        if statically_known_true(h == size[0]) and statically_known_true(w == size[1]):
            return x
        # crop (no-op when not larger), then resize (identity when equal): eager's three cases without a branch
        return F.interpolate(x[..., : size[0], : size[1]], size=(size[0], size[1]), mode="nearest")
    if torch.jit.is_tracing():  # sizes stay traced (no int()): the crop replays at every size, a view when equal
        if h >= size[0] and w >= size[1]:
            return x[..., : size[0], : size[1]]
        return F.interpolate(x[..., : size[0], : size[1]], size=(size[0], size[1]), mode="nearest")
    th, tw = int(size[0]), int(size[1])
    if h == th and w == tw:
        return x
    if th <= h <= th + 1 and tw <= w <= tw + 1:
        return x[..., :th, :tw]
    return F.interpolate(x, size=(th, tw), mode="nearest")


def _down_pool(mode: str, same: bool) -> nn.Module:
    if mode == "subsample":
        return nn.MaxPool2d(kernel_size=1, stride=2)
    if mode == "maxpool2":  # 2x2/2 max-pool, ceil-sized (= TF SAME); n of them = mmcv merge cells' 2^n pool
        return _CeilMaxPool2()
    if same:
        return _SamePool(mode)
    if mode == "maxpool":
        return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    return nn.AvgPool2d(kernel_size=3, stride=2, padding=1, count_include_pad=False)


class _CeilMaxPool2(nn.MaxPool2d):
    """``MaxPool2d(2, 2, ceil_mode=True)``; with symbolic sizes (torch.export) the same values as an explicit
    ``-inf`` pad then a floor-mode pool, whose output size ``(H - 1) // 2 + 1`` needs no ceil-mode guard."""

    def __init__(self) -> None:
        super().__init__(kernel_size=2, stride=2, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        if is_symbolic(*x.shape[-2:]):
            return F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=-math.inf), 2, 2)
        return super().forward(x)


class _SamePool(nn.Module):
    """3x3 stride-2 pool with TensorFlow 'SAME' padding (-inf for max, excluded for avg)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "maxpool":
            h, w = x.shape[-2:]
            if not is_symbolic(h, w) and not _is_tracing():
                # TF SAME for k3 s2 = pad 1 each side on odd sizes, 0 before / 1 after on even ones; ceil_mode
                # gives exactly those windows without materialising a padded copy
                return F.max_pool2d(x, 3, 2, padding=(int(h) % 2, int(w) % 2), ceil_mode=True)
            return F.max_pool2d(pad_same(x, 3, 2, value=float("-inf")), 3, 2)
        ones = pad_same(x.new_ones(1, 1, *x.shape[-2:]), 3, 2)
        return F.avg_pool2d(pad_same(x, 3, 2), 3, 2) / F.avg_pool2d(ones, 3, 2)


class Resample(nn.Module):
    """One graph edge: optional pre-activation, optional 1x1 channel alignment, then resize.

    ``steps`` is the level difference ``target_level - source_level`` (> 0 downsample, < 0 upsample).
    Downsampling runs ``steps`` stride-2 operations (``conv``/``dwconv``/``dpconv``, with a ``kernel`` x
    ``kernel`` window, also map the channels, so no separate 1x1 is built unless ``align=True`` asks for one
    first: YOLOv6's BiFusion runs 1x1 then 3x3/2); ``dpconv`` is depthwise conv+norm+act then pointwise
    conv+norm+act (PicoDet / YOLOv6-Lite), ``dwconv`` EfficientDet's separable conv; upsampling interpolates
    to the target's runtime size in one go (or runs ``-steps`` 2x transposed convs). The result always has
    exactly the target size.

    Example:
        >>> e = Resample(512, 256, steps=-1, align=True)
        >>> e(torch.zeros(1, 512, 7, 9), (13, 17)).shape
        torch.Size([1, 256, 13, 17])
        >>> e = Resample(256, 256, steps=2, down="maxpool")
        >>> e(torch.zeros(1, 256, 13, 17), (4, 5)).shape
        torch.Size([1, 256, 4, 5])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        steps: int = 0,
        align: bool = False,
        up: str = "nearest",
        down: str = "maxpool",
        align_cfg: ConvCfg | None = None,
        conv_cfg: ConvCfg | None = None,
        pre_act: str | None = None,
        kernel: int = 3,
    ) -> None:
        super().__init__()
        if up not in UP_MODES:
            raise ValueError(f"unknown upsample mode {up!r}; choose one of {list(UP_MODES)}.")
        if down not in DOWN_MODES:
            raise ValueError(f"unknown downsample mode {down!r}; choose one of {list(DOWN_MODES)}.")
        align_cfg = align_cfg or ConvCfg()
        conv_cfg = conv_cfg or ConvCfg()
        self.steps, self.up_mode, self.down_mode = steps, up, down
        self.in_channels, self.out_channels = in_channels, out_channels
        self.pre_act = make_act(pre_act, inplace=False) if pre_act else None
        learned_down = steps > 0 and down in LEARNED_DOWN_MODES
        if align or (not learned_down and in_channels != out_channels):
            self.align: nn.Module | None = ConvNormAct(in_channels, out_channels, 1, cfg=align_cfg)
            ch = out_channels
        else:
            self.align = None
            ch = in_channels
        ops: list[nn.Module] = []
        if steps > 0:
            for _ in range(steps):
                if down == "conv":
                    ops.append(ConvNormAct(ch, out_channels, kernel, stride=2, cfg=conv_cfg))
                elif down == "dwconv":
                    ops.append(SeparableConv(ch, out_channels, kernel, stride=2, cfg=conv_cfg))
                elif down == "dpconv":
                    ops.append(DepthwiseSeparableConv(ch, out_channels, kernel, stride=2, cfg=conv_cfg))
                else:
                    ops.append(_down_pool(down, conv_cfg.padding == "same"))
                ch = out_channels
        elif steps < 0 and up == "transposed":
            for _ in range(-steps):
                ops.append(nn.ConvTranspose2d(ch, out_channels, 2, 2, bias=True))
                ch = out_channels
        self.ops = nn.ModuleList(ops)
        self._interp = steps < 0 and up != "transposed"

    def forward(self, x: Tensor, size: tuple[int, int] | list[int]) -> Tensor:
        if self.pre_act is not None:
            x = self.pre_act(x)
        if self.align is not None:
            x = self.align(x)
        if self._interp:
            return self.interpolate(x, size)
        if self.steps > 1 and self.down_mode == "maxpool2" and not is_symbolic(*x.shape[-2:]) and not _is_tracing():
            # ``steps`` 2x2 ceil max-pools in a row are one 2**steps ceil max-pool: the same windows, so the same
            # values, and under autograd it keeps one int64 index map instead of every intermediate map and its
            # indices (NAS-FPN train step at 640x640: 347.7 -> 309.0 MB, mmdet's peak; mmcv pools once too).
            # Traced / exported graphs keep the chain of 2x2 pools (their size expressions, see _CeilMaxPool2).
            k = 2**self.steps
            return match_size(F.max_pool2d(x, k, k, ceil_mode=True), size)
        for op in self.ops:
            x = op(x)
        if self.steps == 0:
            return x
        return match_size(x, size)

    def interpolate(self, x: Tensor, size: tuple[int, int] | list[int]) -> Tensor:
        """The upsampling of an interpolating edge (``up`` nearest / bilinear) to ``size``, in one go."""
        if self.up_mode == "bilinear":
            return F.interpolate(x, size=(size[0], size[1]), mode="bilinear", align_corners=False)
        return F.interpolate(x, size=(size[0], size[1]), mode="nearest")

    def extra_repr(self) -> str:
        kind = "none" if self.steps == 0 else (self.down_mode if self.steps > 0 else self.up_mode)
        return f"{self.in_channels}->{self.out_channels}, steps={self.steps}, resize={kind}"
