"""What :func:`~necklace.detection.train.train` returns (:class:`TrainResult`) or raises when stopped by a signal
(:class:`TrainingInterrupted`)."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from necklace.detection.evaluate import CocoMetrics

__all__ = ["TrainResult", "TrainingInterrupted"]


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    ``history`` has one entry per step of the whole run (also the steps before a resume): ``step`` (1-based),
    ``epoch``, ``lr``, each loss, ``total`` (averaged over processes under DDP). ``wall_time`` is the seconds of
    this call; ``metrics`` is set when ``config.eval``.

    Example:
        >>> r = TrainResult(history=({"step": 1, "total": 2.0}, {"step": 2, "total": 1.5}),
        ...                 checkpoint=Path("ckpt.pt"), metrics=None, wall_time=1.0, total_steps=2)
        >>> r.losses, r.final_loss, r.steps, r.completed
        ((2.0, 1.5), 1.5, 2, True)
    """

    history: tuple[dict[str, float], ...]
    checkpoint: Path | None
    metrics: CocoMetrics | None
    wall_time: float
    total_steps: int
    output: Path = Path(".")
    world_size: int = 1

    @property
    def losses(self) -> tuple[float, ...]:
        """Total loss of every step."""
        return tuple(float(h["total"]) for h in self.history)

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.history else float("nan")

    @property
    def steps(self) -> int:
        return int(self.history[-1]["step"]) if self.history else 0

    @property
    def completed(self) -> bool:
        """True when all ``total_steps`` were run (False after ``stop_at``)."""
        return self.steps >= self.total_steps


class TrainingInterrupted(Exception):
    """Raised by :func:`train` after a SIGINT/SIGTERM, once the checkpoint of the last finished step is written.

    Example:
        >>> e = TrainingInterrupted("SIGTERM", 7, 20, Path("run/checkpoint.pt"))
        >>> e.step, e.exit_code
        (7, 143)
    """

    def __init__(self, signal_name: str, step: int, total_steps: int, checkpoint: Path | None) -> None:
        self.signal_name, self.step, self.total_steps, self.checkpoint = signal_name, step, total_steps, checkpoint
        where = f"; checkpoint {checkpoint}" if checkpoint is not None else ""
        super().__init__(f"training interrupted by {signal_name} after step {step}/{total_steps}{where}")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, the shell's convention."""
        return 128 + int(getattr(signal, self.signal_name, signal.SIGINT))
