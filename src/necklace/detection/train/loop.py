"""The training loop as named steps: read the checkpoint to resume (:func:`_checkpoint_to_resume`), set the run up
(:func:`_set_up`), restore or seed it (:func:`_restore`), open the output (:func:`_open_output`), then per batch
:func:`_train_step`, every ``checkpoint_every`` steps and at a stop :func:`_save`, and at the end
:func:`_final_eval`. :func:`train` strings them together; the order of the steps is the order in which they draw
random numbers, which is what makes a resumed run bit-identical to an uninterrupted one on CPU."""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from necklace.detection.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from necklace.detection.data import check_same_classes, collate_fn
from necklace.detection.evaluate import CocoMetrics, evaluate
from necklace.detection.rundir import RunDirLocked, RunLock, prepare_output_dir
from necklace.detection.train.build import _class_names, build_datasets, build_model
from necklace.detection.train.config import CHECKPOINT_NAME, RESUMABLE_CHANGES, TrainConfig, _positive_int
from necklace.detection.train.logs import _Logs
from necklace.detection.train.optim import _build_optimizer, lr_factor
from necklace.detection.train.results import TrainingInterrupted, TrainResult
from necklace.detection.train.runtime import _Dist, _ResumableSampler, _seed_all, _setup, _SignalStop

__all__ = ["train"]


def train(
    config: TrainConfig, resume: bool | str | Path = False, progress: bool = True, stop_at: int | None = None
) -> TrainResult:
    """Train ``config``'s detector on its data; see :mod:`necklace.detection.train` for what is logged and saved.

    Args:
        config: what to train.
        resume: ``True``: continue from ``<output>/checkpoint.pt``; a path: continue from that checkpoint (or
            that run directory's). The
            config must match the checkpoint's except for :data:`RESUMABLE_CHANGES`.
        progress: tqdm bar / plain progress lines on rank 0 (``False``: silent).
        stop_at: stop after this global step with a checkpoint, as an interruption would (for time-boxed runs
            and tests); the returned result has ``completed == False``.

    Raises:
        TrainingInterrupted: after SIGINT/SIGTERM (the checkpoint is written first).
        FloatingPointError: when the loss stops being finite (the last checkpoint is left as it was).

    Example:
        >>> import tempfile
        >>> cfg = TrainConfig(detector="retinanet", backbone_options={"width": 4}, neck_options={"width": 16},
        ...                   data_options={"num_images": 4}, image_size=64, batch_size=2, steps=3,
        ...                   output=tempfile.mkdtemp(), tensorboard=False)
        >>> first = train(cfg, progress=False, stop_at=1)
        >>> first.steps, first.completed
        (1, False)
        >>> train(cfg, resume=True, progress=False).steps
        3
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train expects a TrainConfig, got {type(config).__name__}.")
    if stop_at is not None:
        _positive_int("stop_at", stop_at)
    t0 = time.perf_counter()
    dist = _setup(config)
    lock: RunLock | None = None
    try:
        lock = _lock_output(config, dist)
        state = _checkpoint_to_resume(config, dist, resume)
        run = _set_up(config, dist)
        _restore(run, state)
        _open_output(run)
        logs = _Logs(config, run.out, run.step, run.total, progress, dist.main)
        run.run_start = time.perf_counter()
        try:
            _loop(run, logs, stop_at)
            logs.close_bar()
            metrics = _final_eval(run, logs, progress)
        finally:
            logs.close()
        return TrainResult(
            history=tuple(run.history),
            checkpoint=run.saved_path,
            metrics=metrics,
            wall_time=time.perf_counter() - t0,
            total_steps=run.total,
            output=run.out,
            world_size=dist.world,
        )
    finally:
        if lock is not None:
            lock.release()
        if dist.owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@dataclass
class _Run:
    """Everything one run carries from step to step (model, optimisation state, position, history)."""

    config: TrainConfig
    dist: _Dist
    train_ds: Dataset[Any]
    val_ds: Dataset[Any]
    class_names: tuple[str, ...]
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    sampler: _ResumableSampler
    steps_per_epoch: int
    total: int
    use_amp: bool
    net: nn.Module | None = None  # the model, wrapped in DistributedDataParallel under torchrun
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    elapsed_before: float = 0.0  # seconds of training before this call (earlier, resumed-from parts)
    run_start: float = 0.0
    saved_path: Path | None = None

    @property
    def out(self) -> Path:
        return Path(self.config.output)

    @property
    def ckpt_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.run_start


# ------------------------------------------------------------------------------------------------ output
def _lock_output(config: TrainConfig, dist: _Dist) -> RunLock | None:
    """Create the output directory and lock it against a second run (rank 0); every process learns the outcome,
    so under torchrun all of them stop when the directory is busy."""
    error: Exception | None = None
    lock = None
    if dist.main:
        try:
            prepare_output_dir(config.output, "output")
            lock = RunLock(config.output).acquire()
        except (ValueError, OSError) as e:
            error = e
    if dist.world > 1:
        box: list[Any] = [None if error is None else str(error)]
        torch.distributed.broadcast_object_list(box, src=0)
        if error is None and box[0] is not None:
            raise RunDirLocked(box[0])
    if error is not None:
        raise error
    return lock


# ------------------------------------------------------------------------------------------------ resume
def _checkpoint_to_resume(config: TrainConfig, dist: _Dist, resume: bool | str | Path) -> dict[str, Any] | None:
    """The checkpoint state to continue from (``None``: a new run), checked against ``config``."""
    ckpt_path = Path(config.output) / CHECKPOINT_NAME
    if not resume and ckpt_path.exists():
        raise FileExistsError(
            f"{str(Path(config.output))!r} already holds a training run ({CHECKPOINT_NAME}); resume it "
            "(resume=True / --resume), or pick another output directory (or delete the old one) to start afresh."
        )
    if not resume:
        return None
    src = ckpt_path if resume is True else Path(resume)
    if src.is_dir():  # a run directory
        src = src / CHECKPOINT_NAME
    if not src.is_file():
        raise FileNotFoundError(
            f"nothing to resume: no checkpoint at {str(src)!r}"
            + (" (train without --resume to start a new run)." if resume is True else ".")
        )
    state = load_checkpoint(src)
    _check_resume(state["config"], config, src)
    if int(state.get("world_size", 1)) != dist.world and dist.main:
        warnings.warn(
            f"resuming a run of {state.get('world_size')} processes with {dist.world}: data order and random "
            "streams differ from an uninterrupted run from here on.",
            stacklevel=3,
        )
    return state


def _check_resume(saved: Mapping[str, Any], config: TrainConfig, path: Path) -> None:
    now = config.to_dict()
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}"
        for k in now
        if k not in RESUMABLE_CHANGES and saved.get(k, now[k]) != now[k]
    ]
    if diffs:
        raise ValueError(
            f"cannot resume from {str(path)!r}: the config differs in {'; '.join(diffs)}. Resuming continues the "
            f"same run; only {', '.join(RESUMABLE_CHANGES)} may change (start a new output directory otherwise)."
        )


# ------------------------------------------------------------------------------------------------ set-up
def _set_up(config: TrainConfig, dist: _Dist) -> _Run:
    """Seed, then build data, model, optimizer, sampler, LR schedule and grad scaler (in this order: the model's
    initial weights come from ``config.seed``)."""
    device = dist.device
    _seed_all(config.seed)
    torch.backends.cudnn.benchmark = False
    train_ds, val_ds = build_datasets(config)
    class_names = _class_names(train_ds)
    if val_ds is not train_ds:  # before any training: labels are positions in these lists
        check_same_classes(class_names, _class_names(val_ds), "the training data", "the validation data")
    model = build_model(config, len(class_names)).to(device)
    optimizer = _build_optimizer(model, config)
    sampler = _ResumableSampler(train_ds, dist.world, dist.rank, config.seed)
    steps_per_epoch = sampler.num_samples // config.batch_size
    if steps_per_epoch == 0:
        n_images = len(train_ds)  # type: ignore[arg-type]
        raise ValueError(
            f"the training data has {n_images} images: fewer than batch_size {config.batch_size} x "
            f"{dist.world} processes, so an epoch has no full batch. Lower batch_size or add images."
        )
    total = config.total_steps(steps_per_epoch)
    warmup = config.resolved_warmup(total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, config.schedule, config.min_lr_ratio)
    )
    use_amp = config.amp if config.amp is not None else device.type == "cuda"
    if use_amp and device.type != "cuda":
        raise ValueError("TrainConfig.amp=True needs a CUDA device (float16 autocast); set amp=None or False on CPU.")
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    return _Run(
        config, dist, train_ds, val_ds, class_names, model, optimizer, scheduler, scaler, sampler, steps_per_epoch,
        total, use_amp,
    )  # fmt: skip


def _restore(run: _Run, state: Mapping[str, Any] | None) -> None:
    """Resume: load the model, optimizer, schedule, scaler, position and this process's RNG state; a new run seeds
    its training stream with ``seed + rank``."""
    if state is None:
        _seed_all(run.config.seed + run.dist.rank)
        return
    if state.get("class_names"):
        check_same_classes(state["class_names"], run.class_names, "the checkpoint", "the training data")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    run.step, run.history = int(state["step"]), [dict(h) for h in state["history"]]
    run.elapsed_before = float(state.get("train_time", 0.0))
    rngs = state["rng"]
    set_rng_state(rngs[min(run.dist.rank, len(rngs) - 1)])
    run.saved_path = run.ckpt_path


def _open_output(run: _Run) -> None:
    """Write ``config.yaml``, clear temporary files of a run killed while saving, wrap the model for DDP."""
    if run.dist.main:
        run.config.save(run.out / "config.yaml")
        for stale in run.out.glob(f".{CHECKPOINT_NAME}.*.tmp"):  # left by a run killed while saving
            stale.unlink(missing_ok=True)
    run.net = run.model
    if run.dist.world > 1:
        device = run.dist.device
        run.net = nn.parallel.DistributedDataParallel(
            run.model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    run.model.train()


# ------------------------------------------------------------------------------------------------ steps
def _loop(run: _Run, logs: _Logs, stop_at: int | None) -> None:
    """Epochs of steps until ``total`` (or ``stop_at``); a SIGINT/SIGTERM finishes the step, saves, then raises."""
    config = run.config
    stopped: str | None = None
    with _SignalStop() as stopper:
        while run.step < run.total and stopped is None and (stop_at is None or run.step < stop_at):
            epoch, offset = divmod(run.step, run.steps_per_epoch)
            for images, targets in _epoch_loader(run, epoch, offset):
                rec, signalled = _train_step(run, images, targets, epoch, stopper)
                if signalled:
                    stopped = stopper.name or "SIGTERM"
                step = run.step
                window = []  # the steps since the previous log row: (step - log_every, step], last one shorter
                if step % config.log_every == 0 or step == run.total:
                    since = step - (step % config.log_every or config.log_every)
                    window = [h for h in run.history if h["step"] > since]
                logs.step(rec, window, run.total, run.elapsed())
                at_stop = stopped is not None or (stop_at is not None and step >= stop_at) or step >= run.total
                if at_stop or (config.checkpoint_every and step % config.checkpoint_every == 0):
                    run.saved_path = _save(run, complete=step >= run.total)
                if at_stop:
                    break
        if stopped is not None:
            raise TrainingInterrupted(stopped, run.step, run.total, run.saved_path)


def _epoch_loader(run: _Run, epoch: int, offset: int) -> DataLoader[Any]:
    """The batches of ``epoch`` from batch ``offset`` on (data order seeded by ``seed`` and the epoch)."""
    config = run.config
    run.sampler.set_epoch(epoch)
    run.sampler.start = offset * config.batch_size
    generator = torch.Generator()
    generator.manual_seed(config.seed * 1_000_003 + epoch)
    return DataLoader(
        run.train_ds,
        batch_size=config.batch_size,
        sampler=run.sampler,
        drop_last=True,
        collate_fn=collate_fn,
        num_workers=config.num_workers,
        generator=generator,
        pin_memory=run.dist.device.type == "cuda",
    )


def _to_device(targets: Sequence[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [{k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]


def _train_step(
    run: _Run, images: Sequence[Tensor], targets: Sequence[dict[str, Any]], epoch: int, stopper: _SignalStop
) -> tuple[dict[str, float], bool]:
    """One optimisation step; returns its history record (losses averaged over processes) and whether any
    process has been signalled to stop."""
    device, config, net = run.dist.device, run.config, run.net
    assert net is not None
    lr = float(run.scheduler.get_last_lr()[0])
    images = [im.to(device, non_blocking=True) for im in images]
    with torch.autocast(device.type, dtype=torch.float16, enabled=run.use_amp):
        losses = net(images, _to_device(targets, device))
    loss = sum(losses.values())
    assert isinstance(loss, Tensor)
    run.scaler.scale(loss).backward()
    if config.grad_clip is not None:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    run.step += 1
    flag = torch.tensor(1.0 if stopper.name else 0.0, device=device)
    vals = torch.stack([*(v.detach().float() for v in losses.values()), loss.detach().float(), flag])
    if run.dist.world > 1:
        torch.distributed.all_reduce(vals)
    reduced = vals.cpu().tolist()
    rec = {"step": float(run.step), "epoch": float(epoch), "lr": lr}
    rec.update({k: v / run.dist.world for k, v in zip([*losses, "total"], reduced[:-1], strict=True)})
    run.history.append(rec)
    if not all(math.isfinite(v) for v in reduced[:-1]):
        values = ", ".join(f"{k} {rec[k]:.4g}" for k in [*losses, "total"])
        raise FloatingPointError(
            f"non-finite loss at step {run.step} ({values}). The last checkpoint "
            f"({run.saved_path or 'none yet'}) is unchanged; lower lr, keep grad_clip, or disable amp."
        )
    return rec, reduced[-1] > 0


# ------------------------------------------------------------------------------------------------ checkpoint
def _save(run: _Run, complete: bool) -> Path:
    """Write the checkpoint (rank 0, atomically) with every process's RNG state; all processes wait for it."""
    dist = run.dist
    rngs = [rng_state()]
    if dist.world > 1:
        gathered: list[Any] = [None] * dist.world
        torch.distributed.all_gather_object(gathered, rngs[0])
        rngs = gathered
    if dist.main:
        save_checkpoint(
            {
                "config": run.config.to_dict(),
                "model": run.model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "scaler": run.scaler.state_dict(),
                "step": run.step,
                "epoch": run.step // run.steps_per_epoch,
                "batch_in_epoch": run.step % run.steps_per_epoch,
                "steps_per_epoch": run.steps_per_epoch,
                "total_steps": run.total,
                "history": run.history,
                "rng": rngs,
                "world_size": dist.world,
                "num_classes": len(run.class_names),
                "class_names": list(run.class_names),
                "train_time": run.elapsed(),
                "complete": complete,
                "torch_version": str(torch.__version__),
            },
            run.ckpt_path,
        )
    if dist.world > 1:
        torch.distributed.barrier()
    return run.ckpt_path


# ------------------------------------------------------------------------------------------------ evaluation
def _final_eval(run: _Run, logs: _Logs, progress: bool) -> CocoMetrics | None:
    """COCO metrics of the finished model on the validation data (``config.eval``); written to ``metrics.json``."""
    config = run.config
    if not (config.eval and run.step >= run.total):
        return None
    assert run.net is not None
    metrics = evaluate(
        run.net,
        run.val_ds,
        batch_size=config.eval_batch_size or config.batch_size,
        device=run.dist.device,
        backend=config.eval_backend,
        num_workers=config.num_workers,
        amp=run.use_amp,
        progress=progress and run.dist.main,
    )
    if run.dist.main:
        _write_atomic(run.out / "metrics.json", json.dumps(metrics.to_dict(), indent=2) + "\n")
        logs.metrics(metrics, run.step)
    return metrics


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
