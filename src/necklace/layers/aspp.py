"""The ASPP that turns each RFP output into backbone feedback (DetectoRS; mmdet ``necks/rfp.py``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ASPP"]


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling as in DetectoRS' RFP: one branch per dilation, ReLU each, concatenated.

    A branch with dilation ``d > 1`` is a 3x3 conv with padding ``d``; ``d == 1`` is a 1x1 conv. The **last**
    dilation must be 1: that branch runs on the global average pool of the input and is broadcast back to
    ``H x W``. All convs have a bias and no norm. Output channels: ``len(dilations) * out_channels`` (4 x 64 = 256
    in DetectoRS, the ``rfp_inplanes`` of the backbone's feedback convs). State-dict keys ``aspp.{i}.{weight,bias}``
    match mmdet's ``rfp_aspp``.

    Init: Kaiming-normal (fan_out, ReLU) weights, zero bias, like the official DetectoRS code. mmdet 3.x declares a
    Kaiming init for its ASPP but never applies it (``RFP.init_weights`` does not recurse), so its ASPP keeps
    PyTorch's default init.

    Example:
        >>> aspp = ASPP(256, 64)
        >>> aspp(torch.randn(2, 256, 13, 17)).shape
        torch.Size([2, 256, 13, 17])
    """

    def __init__(self, in_channels: int, out_channels: int, dilations: Sequence[int] = (1, 3, 6, 1)) -> None:
        super().__init__()
        dilations = tuple(int(d) for d in dilations)
        if not dilations or dilations[-1] != 1 or min(dilations) < 1:
            raise ValueError(
                f"ASPP dilations {dilations} must be positive and end with 1 (the last branch is the global "
                "pooling one), e.g. (1, 3, 6, 1)."
            )
        self.dilations = dilations
        self.in_channels, self.branch_channels = in_channels, out_channels
        convs = [
            nn.Conv2d(in_channels, out_channels, 3 if d > 1 else 1, padding=d if d > 1 else 0, dilation=d, bias=True)
            for d in dilations
        ]
        for conv in convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)  # type: ignore[arg-type]
        self.aspp = nn.ModuleList(convs)

    @property
    def out_channels(self) -> int:
        """Channels of the concatenated output: ``len(dilations) * out_channels``."""
        return len(self.dilations) * self.branch_channels

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        outs = [F.relu(conv(x)) for conv in self.aspp[:-1]]  # each (N, C_b, H, W)
        pooled = x.float().mean(dim=(2, 3), keepdim=True).to(x.dtype)  # (N, C_in, 1, 1)
        outs.append(F.relu(self.aspp[-1](pooled)).expand(-1, -1, h, w))
        return torch.cat(outs, dim=1)  # (N, len(dilations) * C_b, H, W)

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{len(self.dilations)}x{self.branch_channels}, dilations={self.dilations}"
