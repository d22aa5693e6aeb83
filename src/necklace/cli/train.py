"""``necklace train`` and ``necklace eval``: the argparse side of :mod:`necklace.detection.train` and
:mod:`necklace.detection.evaluate`.

    necklace train [--config FILE.yaml] [--detector fcos|retinanet|faster_rcnn] [--backbone NAME] [--neck NAME]
                   [-o KEY=VALUE ...] [--data synthetic|coco:IMAGES_DIR,ANN_FILE|yolo:IMAGES_DIR,LABELS_DIR,NAMES...]
                   [--epochs N | --steps N] [--batch-size N] [--lr LR] [--image-size N] [--seed N] [--output DIR]
                   [--resume [CHECKPOINT]] [--eval] ...
    necklace eval --checkpoint FILE [--data ...] [--backend faster_coco_eval|pycocotools] [--format table|json]

Precedence for ``train``: :class:`~necklace.detection.train.TrainConfig` defaults, then the checkpoint's config
(``--resume`` without ``--config``), then ``--config FILE``, then the flags given. Under ``torchrun`` every process
runs the same command; only rank 0 prints.

Example:
    >>> p = argparse.ArgumentParser(); sub = p.add_subparsers(dest="command")
    >>> add_train_parser(sub); add_eval_parser(sub)
    >>> args = p.parse_args(["train", "--steps", "5", "-o", "width=16"])
    >>> config_from_args(args).neck_options, config_from_args(args).steps
    ({'width': 16}, 5)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, TextIO

from necklace.cli.args import _check_output_file, _UsageError, _write_text, parse_options, parse_value

__all__ = ["add_eval_parser", "add_train_parser", "config_from_args"]

_FLAG_FIELDS = {
    "detector": "detector",
    "backbone": "backbone",
    "neck": "neck",
    "data": "data",
    "val_data": "val_data",
    "image_size": "image_size",
    "batch_size": "batch_size",
    "optimizer": "optimizer",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "warmup_steps": "warmup_steps",
    "schedule": "schedule",
    "grad_clip": "grad_clip",
    "amp": "amp",
    "seed": "seed",
    "output": "output",
    "log_every": "log_every",
    "checkpoint_every": "checkpoint_every",
    "workers": "num_workers",
    "device": "device",
    "eval_backend": "eval_backend",
    "pretrained": "pretrained",
}


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def add_train_parser(sub: Any) -> None:
    """Register ``train`` on an argparse sub-parser collection."""
    from necklace.detection.detectors import DETECTOR_KINDS
    from necklace.detection.evaluate import BACKENDS
    from necklace.detection.train import OPTIMIZERS, SCHEDULES

    p = sub.add_parser(
        "train",
        help="train FCOS / RetinaNet / Faster R-CNN with a neck (CPU, GPU, or torchrun DDP)",
        description="Train a detector with a necklace neck. Defaults are CPU-sized: tiny backbone, FCOS + FPN, "
        "64 synthetic 128 px images, 8 epochs (under a minute on 2 cores). Writes checkpoint.pt, log.csv, "
        "config.yaml and TensorBoard events under --output; Ctrl-C / SIGTERM saves a checkpoint first. "
        "Multi-GPU / multi-process: torchrun --nproc_per_node N -m necklace train ...",
    )
    p.add_argument("--config", metavar="FILE", help="TrainConfig YAML/JSON (flags override it)")
    g = p.add_argument_group("model")
    g.add_argument("--detector", choices=DETECTOR_KINDS, help="detector (default fcos)")
    g.add_argument("--backbone", metavar="NAME", help="tiny (default), resnet18/34/50, timm:<model>")
    g.add_argument("--backbone-option", action="append", metavar="KEY=VALUE", help="backbone option (repeatable)")
    g.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None, help="pretrained backbone")
    g.add_argument("--neck", metavar="NAME", help="registered neck (default fpn; see `necklace list`)")
    g.add_argument("--option", "-o", action="append", metavar="KEY=VALUE", help="neck option (repeatable)")
    g.add_argument("--width", metavar="C", help="neck width (same as -o width=C)")
    g.add_argument("--detector-option", action="append", metavar="KEY=VALUE", help="build_detector option")
    g = p.add_argument_group("data")
    g.add_argument(
        "--data", metavar="SPEC", help="synthetic (default) | coco:IMAGES_DIR,ANN_FILE | yolo:IMAGES,LABELS,NAMES..."
    )
    g.add_argument("--val-data", metavar="SPEC", help="evaluation data (default: see TrainConfig.val_data)")
    g.add_argument("--data-option", action="append", metavar="KEY=VALUE", help="e.g. num_images=64, on_error=drop")
    g.add_argument("--image-size", type=int, metavar="N", help="detector input size (default 128)")
    g.add_argument("--workers", type=int, metavar="N", help="data-loader workers (default 0)")
    g = p.add_argument_group("optimisation")
    length = g.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, metavar="N", help="epochs (default 8)")
    length.add_argument("--steps", type=int, metavar="N", help="steps instead of epochs")
    g.add_argument("--batch-size", type=int, metavar="N", help="images per step per process (default 4)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="sgd (default, momentum 0.9) or adamw")
    g.add_argument("--lr", type=float, help="learning rate (default per detector/optimizer)")
    g.add_argument("--weight-decay", type=float, help="weight decay (default 1e-4)")
    g.add_argument("--warmup-steps", type=int, metavar="N", help="linear warm-up steps (default min(100, 10%%))")
    g.add_argument("--schedule", choices=SCHEDULES, help="after warm-up (default cosine)")
    g.add_argument("--grad-clip", type=float, metavar="NORM", help="max gradient norm (default 10)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="AMP (default: on for CUDA)")
    g.add_argument("--seed", type=int, help="seed (default 0)")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    g = p.add_argument_group("run")
    g.add_argument("--output", metavar="DIR", help="run directory (default runs/train)")
    g.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue the run in --output (or from CHECKPOINT) exactly where it stopped",
    )
    g.add_argument("--log-every", type=int, metavar="N", help="steps per log row (default 10)")
    g.add_argument("--checkpoint-every", type=int, metavar="N", help="steps between checkpoints (default 100)")
    g.add_argument("--eval", action="store_true", default=None, help="COCO-evaluate the final model")
    g.add_argument("--eval-backend", choices=BACKENDS, help="COCO evaluator (default faster_coco_eval)")
    g.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")
    g.add_argument("--save-config", metavar="FILE", help="write the resolved config (YAML/JSON) and exit")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar or lines")
    p.set_defaults(func=_cmd_train)


def add_eval_parser(sub: Any) -> None:
    """Register ``eval`` on an argparse sub-parser collection."""
    from necklace.detection.evaluate import BACKENDS

    p = sub.add_parser(
        "eval",
        help="COCO metrics (AP, AP50, AP75, AP small/medium/large, AR) of a trained checkpoint",
        description="Evaluate a `necklace train` checkpoint with COCO box metrics. Default data: the run's "
        "validation data.",
    )
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="checkpoint.pt written by necklace train")
    p.add_argument("--data", metavar="SPEC", help="synthetic | coco:IMAGES_DIR,ANN_FILE | yolo:IMAGES,LABELS,NAMES...")
    p.add_argument("--backend", choices=BACKENDS, default="faster_coco_eval", help="COCO evaluator")
    p.add_argument("--batch-size", type=int, default=4, metavar="N", help="images per forward pass (default 4)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--output", metavar="FILE", help="also write the metrics as JSON here")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_eval)


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~necklace.detection.train.TrainConfig` a ``train`` command line describes."""
    from necklace.detection.checkpoint import load_checkpoint
    from necklace.detection.train import CHECKPOINT_NAME, DataSpec, TrainConfig

    data: dict[str, Any] = {}
    if args.config:
        data = TrainConfig.load(args.config).to_dict()
    elif args.resume:
        path = (
            Path(args.resume) if isinstance(args.resume, str) else Path(args.output or "runs/train") / CHECKPOINT_NAME
        )
        if path.is_dir():
            path = path / CHECKPOINT_NAME  # --resume RUN_DIR
        if not path.is_file():
            raise _UsageError(f"nothing to resume: no checkpoint at {str(path)!r} (give --output DIR or a path).")
        data = dict(load_checkpoint(path)["config"])
    base_kind = DataSpec.parse(str(data.get("data", "synthetic"))).kind
    for flag, name in _FLAG_FIELDS.items():
        value = getattr(args, flag)
        if value is not None:
            data[name] = value
    if args.steps is not None:
        data["steps"] = args.steps
    if args.epochs is not None:
        data["epochs"], data["steps"] = args.epochs, None
    if args.eval:
        data["eval"] = True
    if args.no_tensorboard:
        data["tensorboard"] = False
    for flag, name in (
        ("option", "neck_options"),
        ("backbone_option", "backbone_options"),
        ("detector_option", "detector_options"),
        ("data_option", "data_options"),
    ):
        extra = parse_options(getattr(args, flag))
        if extra or (name == "neck_options" and args.width is not None):
            base = dict(data.get(name) or TrainConfig().to_dict()[name])
            base.update(extra)
            if name == "neck_options" and args.width is not None:
                base["width"] = parse_value(args.width)
            data[name] = base
    if args.data is not None and args.data_option is None and DataSpec.parse(args.data).kind != base_kind:
        data["data_options"] = {}  # options of another kind of data do not apply
    return TrainConfig.from_dict(data)


def _cmd_train(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from necklace.detection.train import TrainingInterrupted, train

    config = config_from_args(args)
    if args.save_config:
        config.save(args.save_config)
        err.write(f"wrote {args.save_config}\n")
        return 0
    main = _rank() == 0
    try:
        result = train(config, resume=args.resume, progress=not args.quiet)
    except TrainingInterrupted as e:
        if main:
            err.write(
                f"necklace: {e}. Continue with: necklace train --resume --output {config.output}\n"
                if e.checkpoint
                else f"necklace: {e}\n"
            )
        return e.exit_code
    except FloatingPointError as e:
        raise _UsageError(str(e)) from e
    if main:
        losses = result.losses
        n = max(1, min(10, len(losses) // 2))
        first, last = sum(losses[:n]) / n, sum(losses[-n:]) / n
        procs = f" on {result.world_size} processes" if result.world_size > 1 else ""
        out.write(
            f"trained {config.detector} + {config.neck} ({config.backbone}) for {result.steps} steps{procs} in "
            f"{result.wall_time:.1f} s: loss {first:.4f} -> {last:.4f} (mean of the first/last {n} steps)\n"
            f"checkpoint: {result.checkpoint}\nlog: {Path(config.output) / 'log.csv'}\n"
        )
        if result.metrics is not None:
            out.write("\n" + result.metrics.table() + "\n")
    return 0


def _cmd_eval(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import torch

    from necklace.detection.evaluate import evaluate
    from necklace.detection.train import CHECKPOINT_NAME, DataSpec, build_dataset, load_model

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.batch_size < 1:
        raise _UsageError(f"--batch-size must be positive, got {args.batch_size}.")
    path = Path(args.checkpoint)
    if not path.is_file():
        raise _UsageError(
            f"checkpoint {args.checkpoint!r} not found"
            + (f"; it is a directory: give {str(path / CHECKPOINT_NAME)!r}." if path.is_dir() else ".")
        )
    if args.output:
        _check_output_file(args.output, "--output")  # before the evaluation, not after it
    model, config = load_model(path, device)
    if args.data is not None:
        same_kind = DataSpec.parse(args.data).kind == DataSpec.parse(config.data).kind
        config = config.replace(data=args.data, val_data=None, data_options=config.data_options if same_kind else {})
    dataset: Any = build_dataset(config, "val")
    metrics = evaluate(
        model, dataset, batch_size=args.batch_size, device=device, backend=args.backend, progress=not args.quiet
    )
    text = json.dumps(metrics.to_dict(), indent=2)
    if args.output:
        _write_text(args.output, text + "\n")
        err.write(f"wrote {args.output}\n")
    out.write(text if args.format == "json" else f"{path} on {config.val_data or config.data}:\n" + metrics.table())
    out.write("\n")
    return 0
