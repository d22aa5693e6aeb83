"""The optimizer (no weight decay on norms and biases) and the learning-rate schedule (linear warm-up, then
cosine or constant)."""

from __future__ import annotations

import math

import torch
from torch import nn

from necklace.detection.train.config import TrainConfig

__all__ = ["lr_factor"]

_WARMUP_START = 0.001  # warm-up starts at this fraction of the learning rate


def lr_factor(
    step: int, total_steps: int, warmup_steps: int, schedule: str = "cosine", min_ratio: float = 0.0
) -> float:
    """Learning-rate multiplier of step ``step`` (0-based): linear warm-up from 0.001, then cosine or constant.

    Example:
        >>> [round(lr_factor(s, 10, 2), 3) for s in (0, 1, 2, 6, 9)]
        [0.001, 0.5, 1.0, 0.5, 0.038]
    """
    if step < warmup_steps:
        return _WARMUP_START + (1.0 - _WARMUP_START) * step / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)  # norms and biases: no weight decay
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    lr = config.resolved_lr()
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=lr)
