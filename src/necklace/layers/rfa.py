"""AugFPN's residual feature augmentation (RFA) as a refine block (graph block ``"rfa"``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ResidualFeatureAugmentation"]


class ResidualFeatureAugmentation(nn.Module):
    """Ratio-invariant adaptive pooling of the top backbone map + adaptive spatial fusion (AugFPN, Guo et al. 2020).

    As ``HighFPN`` in the official AugFPN code: for each ratio ``r`` the input ``C`` (``h x w``) is
    adaptive-average-pooled to ``(max(1, int(h*r)), max(1, int(w*r)))`` (``int`` truncates: h=25 gives 2, 5, 7),
    mapped by its own 1x1 conv (``high_lateral_conv.{k}``) to ``out_channels`` and resized back to ``h x w``
    bilinearly with ``align_corners=True``. Adaptive spatial fusion: ``high_lateral_conv_attention`` = 1x1 conv
    (``k * out -> hidden``), ReLU, 3x3 conv (``hidden -> k``) gives one logit map per ratio; the output is
    ``sum_k sigmoid(a_k) * f_k`` (independent sigmoids, computed in float32; no softmax across ratios).

    In the AugFPN neck the result is added to the top lateral ``M5`` before the top-down pass. Init: Xavier-uniform,
    zero bias (as ``HighFPN.init_weights``). State-dict keys match the official ``high_lateral_conv*`` names.

    Example:
        >>> rfa = ResidualFeatureAugmentation(2048, 256)
        >>> rfa.pooled_sizes(25, 38)
        [(2, 3), (5, 7), (7, 11)]
        >>> rfa(torch.randn(1, 2048, 25, 38)).shape
        torch.Size([1, 256, 25, 38])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ratios: Sequence[float] = (0.1, 0.2, 0.3),
        hidden: int | None = None,
    ) -> None:
        super().__init__()
        ratios = tuple(float(r) for r in ratios)
        if not ratios or any(not 0 < r <= 1 for r in ratios):
            raise ValueError(f"RFA ratios {ratios} must be a non-empty list of pooling ratios in (0, 1].")
        self.ratios = ratios
        self.in_channels, self.out_channels = in_channels, out_channels
        hid = hidden or out_channels
        self.high_lateral_conv = nn.ModuleList(nn.Conv2d(in_channels, out_channels, 1) for _ in ratios)
        self.high_lateral_conv_attention = nn.Sequential(
            nn.Conv2d(len(ratios) * out_channels, hid, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hid, len(ratios), 3, padding=1),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def pooled_sizes(self, h: int, w: int) -> list[tuple[int, int]]:
        """The adaptive-pool output size for each ratio, for an ``h x w`` input (official ``int`` truncation)."""
        return [(max(1, int(h * r)), max(1, int(w * r))) for r in self.ratios]

    def forward(self, x: Tensor) -> Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        feats = [
            F.interpolate(conv(F.adaptive_avg_pool2d(x, size)), size=(h, w), mode="bilinear", align_corners=True)
            for conv, size in zip(self.high_lateral_conv, self.pooled_sizes(h, w), strict=True)
        ]  # k x (N, C_out, h, w)
        gates = torch.sigmoid(self.high_lateral_conv_attention(torch.cat(feats, dim=1)).float())  # (N, k, h, w)
        out = gates[:, 0:1] * feats[0].float()
        for i in range(1, len(feats)):
            out = out + gates[:, i : i + 1] * feats[i].float()
        return out.to(feats[0].dtype)

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{self.out_channels}, ratios={self.ratios}"
