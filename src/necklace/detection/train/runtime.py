"""The process a run lives in: device and DDP set-up, seeding, SIGINT/SIGTERM handling, the resumable sampler."""

from __future__ import annotations

import os
import random
import signal
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from necklace.detection.train.config import TrainConfig


class _ResumableSampler(DistributedSampler[int]):
    """``DistributedSampler`` that can start partway through an epoch (``start``: samples of this rank to skip)."""

    def __init__(self, dataset: Dataset[Any], num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owned: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup(config: TrainConfig) -> _Dist:
    """Pick the device; under torchrun (WORLD_SIZE > 1) join the process group (gloo on CPU, nccl on CUDA)."""
    want = config.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"TrainConfig.device={config.device!r} but CUDA is not available; use device='cpu'.")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = _Dist()
    is_init = torch.distributed.is_available() and torch.distributed.is_initialized()
    if world > 1 or is_init:
        if not torch.distributed.is_available():
            raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed.")
        d.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if want == "cuda":
            want = f"cuda:{d.local_rank}"
        if want.startswith("cuda"):
            torch.cuda.set_device(torch.device(want))
        if not is_init:
            backend = "nccl" if want.startswith("cuda") else "gloo"
            torch.distributed.init_process_group(backend, device_id=torch.device(want) if backend == "nccl" else None)
            d.owned = True
        d.rank, d.world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    d.device = torch.device(want)
    return d


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _SignalStop:
    """SIGINT/SIGTERM set a flag (the loop checkpoints and stops); a second one stops at once."""

    def __init__(self) -> None:
        self.name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        if self.name is not None:  # second signal: give up on the graceful stop
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
