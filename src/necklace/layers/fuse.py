"""Fusion of a node's (already aligned and resized) inputs: sum, concat, weighted sums."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from necklace.spec import _is_tracing

__all__ = ["FUSE_MODES", "Fuse"]

FUSE_MODES = ("sum", "concat", "fast", "softmax", "gp")


class Fuse(nn.Module):
    """Fuse ``n`` same-size maps.

    - ``sum``: element-wise sum (channels must match);
    - ``concat``: channel concatenation;
    - ``fast``: EfficientDet fast-normalised fusion ``sum(relu(w_i) x_i) / (sum(relu(w)) + eps)``, eps 1e-4;
    - ``softmax``: ``sum(softmax(w)_i x_i)``;
    - ``gp``: NAS-FPN global-pooling attention of two inputs, ``x2 + sigmoid(GAP(x2)) * x1`` (gate in fp32).

    Weights are one scalar per input, initialised to 1 (so both weighted modes start as the mean).

    Example:
        >>> f = Fuse("fast", 2)
        >>> a, b = torch.ones(1, 4, 3, 3), 3 * torch.ones(1, 4, 3, 3)
        >>> round(f([a, b])[0, 0, 0, 0].item(), 3)
        2.0
    """

    def __init__(self, mode: str, n_inputs: int, eps: float = 1e-4) -> None:
        super().__init__()
        if mode not in FUSE_MODES:
            raise ValueError(f"unknown fusion {mode!r}; choose one of {list(FUSE_MODES)}.")
        if mode == "gp" and n_inputs != 2:
            raise ValueError(f"fusion 'gp' (x2 + sigmoid(GAP(x2)) * x1) takes exactly 2 inputs, got {n_inputs}.")
        self.mode, self.n_inputs, self.eps = mode, n_inputs, eps
        if mode in ("fast", "softmax"):
            self.weight: nn.Parameter | None = nn.Parameter(torch.ones(n_inputs))
        else:
            self.weight = None
        self.register_buffer("frozen_weight", None)  # set by freeze(); absent from the state dict until then
        self.frozen_weight: Tensor | None

    def freeze(self) -> None:
        """Store the normalised weights as the constant buffer ``frozen_weight`` and drop the parameter ``weight``.

        An explicit deploy-time transformation (idempotent): the forward output is unchanged, nothing is trainable.
        """
        if self.weight is None:
            return
        frozen = self.normalized_weights().detach().clone()
        self.weight = None
        self.frozen_weight = frozen

    def normalized_weights(self) -> Tensor:
        """The per-input weights the forward applies (after ReLU-normalisation or softmax)."""
        if self.frozen_weight is not None:
            return self.frozen_weight
        if self.weight is None:
            return torch.ones(self.n_inputs)
        if self.mode == "softmax":
            return torch.softmax(self.weight, dim=0)
        w = torch.relu(self.weight)
        return w / (w.sum() + self.eps)

    def forward(self, xs: list[Tensor]) -> Tensor:
        if len(xs) == 1 and self.weight is None and self.frozen_weight is None:
            return xs[0]
        if self.mode == "concat":
            return torch.cat(xs, dim=1)
        if self.mode == "sum":
            out = xs[0] + xs[1] if len(xs) > 1 else xs[0]
            for x in xs[2:]:
                out = out + x
            return out
        if self.mode == "gp":  # gate (N, C, 1, 1) in fp32: GAP + sigmoid overflow-safe under fp16/autocast
            gate = torch.sigmoid(xs[1].float().mean(dim=(2, 3), keepdim=True)).to(xs[1].dtype)
            return xs[1] + gate * xs[0]
        if self.frozen_weight is not None and not _is_tracing():
            # deployed: constant weights as Python scalars, one mul + (n - 1) fused adds, no weight ops
            ws = self.frozen_weight.tolist()
            out = xs[0] * ws[0]
            grad = torch.is_grad_enabled()
            for x, wi in zip(xs[1:], ws[1:], strict=True):
                out = torch.add(out, x, alpha=wi) if grad else out.add_(x, alpha=wi)
            return out
        w = self.normalized_weights().to(xs[0].dtype)
        out = xs[0] * w[0]
        for i in range(1, len(xs)):
            out = torch.addcmul(out, xs[i], w[i])
        return out

    def extra_repr(self) -> str:
        return f"{self.mode}, inputs={self.n_inputs}"
