"""Rank-0 logging of a run: ``log.csv`` rows, TensorBoard scalars, a tqdm bar or plain lines."""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from necklace.detection.evaluate import CocoMetrics
from necklace.detection.train.config import TrainConfig


class _Logs:
    """Rank-0 logging: CSV rows, TensorBoard scalars, tqdm bar or plain lines."""

    def __init__(self, config: TrainConfig, out: Path, start_step: int, total: int, progress: bool, main: bool):
        self.main, self.progress = main, progress and main
        self.csv_path = out / "log.csv"
        self.writer: Any = None
        self.bar: Any = None
        if not main:
            return
        if start_step > 0 and self.csv_path.is_file():  # drop rows written after the checkpoint we resume from
            with open(self.csv_path, newline="") as f:
                rows = list(csv.reader(f))
            keep = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= start_step]
            tmp = self.csv_path.with_name(".log.csv.tmp")
            with open(tmp, "w", newline="") as f:
                csv.writer(f).writerows(keep)
            tmp.replace(self.csv_path)
        elif self.csv_path.exists():
            self.csv_path.unlink()
        if config.tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                if config.tensorboard:
                    raise ImportError(
                        "TrainConfig.tensorboard=True needs tensorboard: pip install tensorboard "
                        "(or set tensorboard=False; log.csv is written either way)"
                    ) from e
                self.note("tensorboard is not installed (pip install tensorboard); writing log.csv only")
            else:
                self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        if self.progress:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def note(self, text: str) -> None:
        if self.progress:
            if self.bar is not None:
                self.bar.write(text, file=sys.stderr)
            else:
                print(text, file=sys.stderr, flush=True)

    def step(self, rec: dict[str, float], window: Sequence[dict[str, float]], total: int, elapsed: float) -> None:
        if not self.main:
            return
        if self.bar is not None:
            self.bar.update(1)
        if not window:
            return
        names = [k for k in rec if k not in ("step", "epoch", "lr")]
        means = {k: sum(w[k] for w in window) / len(window) for k in names}
        header = ["step", "epoch", "lr", *names, "time"]
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(header)
            w.writerow(
                [
                    int(rec["step"]),
                    int(rec["epoch"]),
                    f"{rec['lr']:.6g}",
                    *(f"{means[k]:.6f}" for k in names),
                    f"{elapsed:.2f}",
                ]
            )
        if self.writer is not None:
            for k in names:
                self.writer.add_scalar(f"train/{k}", means[k], int(rec["step"]))
            self.writer.add_scalar("train/lr", rec["lr"], int(rec["step"]))
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{means['total']:.4f}", lr=f"{rec['lr']:.2e}", refresh=False)
        elif self.progress:
            parts = " ".join(f"{k} {means[k]:.4f}" for k in names if k != "total")
            print(
                f"step {int(rec['step'])}/{total} epoch {int(rec['epoch'])} lr {rec['lr']:.3g} "
                f"loss {means['total']:.4f} ({parts}) {elapsed:.1f}s",
                file=sys.stderr,
                flush=True,
            )

    def metrics(self, metrics: CocoMetrics, step: int) -> None:
        if self.writer is not None:
            for k, v in metrics.to_dict().items():
                if isinstance(v, float):
                    self.writer.add_scalar(f"eval/{k}", v, step)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.close_bar()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
