"""Edge resampling: align channels, then resize to the target level at the target's runtime size."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from necklace.layers.conv import ConvCfg, ConvNormAct, SeparableConv, make_act, pad_same

__all__ = ["DOWN_MODES", "UP_MODES", "Resample", "match_size"]

UP_MODES = ("nearest", "bilinear", "transposed")
DOWN_MODES = ("conv", "dwconv", "maxpool", "avgpool", "subsample", "maxpool2")


def match_size(x: Tensor, size: tuple[int, int] | list[int]) -> Tensor:
    """Return ``x`` at spatial ``size``: unchanged when equal, cropped when one pixel larger, else resized.

    This only fires when a backbone's level sizes do not follow ``ceil(H / 2)`` (e.g. floor-halving).
    """
    h, w = x.shape[-2:]
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
        return nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
    if same:
        return _SamePool(mode)
    if mode == "maxpool":
        return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    return nn.AvgPool2d(kernel_size=3, stride=2, padding=1, count_include_pad=False)


class _SamePool(nn.Module):
    """3x3 stride-2 pool with TensorFlow 'SAME' padding (-inf for max, excluded for avg)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "maxpool":
            return F.max_pool2d(pad_same(x, 3, 2, value=float("-inf")), 3, 2)
        ones = pad_same(x.new_ones(1, 1, *x.shape[-2:]), 3, 2)
        return F.avg_pool2d(pad_same(x, 3, 2), 3, 2) / F.avg_pool2d(ones, 3, 2)


class Resample(nn.Module):
    """One graph edge: optional pre-activation, optional 1x1 channel alignment, then resize.

    ``steps`` is the level difference ``target_level - source_level`` (> 0 downsample, < 0 upsample).
    Downsampling runs ``steps`` stride-2 operations (``conv``/``dwconv`` also map the channels, so no
    separate 1x1 is built); upsampling interpolates to the target's runtime size in one go (or runs
    ``-steps`` 2x transposed convs). The result always has exactly the target size.

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
        learned_down = steps > 0 and down in ("conv", "dwconv")
        if not learned_down and (align or in_channels != out_channels):
            self.align: nn.Module | None = ConvNormAct(in_channels, out_channels, 1, cfg=align_cfg)
            ch = out_channels
        else:
            self.align = None
            ch = in_channels
        ops: list[nn.Module] = []
        if steps > 0:
            for _ in range(steps):
                if down == "conv":
                    ops.append(ConvNormAct(ch, out_channels, 3, stride=2, cfg=conv_cfg))
                elif down == "dwconv":
                    ops.append(SeparableConv(ch, out_channels, 3, stride=2, cfg=conv_cfg))
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
            if self.up_mode == "bilinear":
                return F.interpolate(x, size=(size[0], size[1]), mode="bilinear", align_corners=False)
            return F.interpolate(x, size=(size[0], size[1]), mode="nearest")
        for op in self.ops:
            x = op(x)
        if self.steps == 0:
            return x
        return match_size(x, size)

    def extra_repr(self) -> str:
        kind = "none" if self.steps == 0 else (self.down_mode if self.steps > 0 else self.up_mode)
        return f"{self.in_channels}->{self.out_channels}, steps={self.steps}, resize={kind}"
