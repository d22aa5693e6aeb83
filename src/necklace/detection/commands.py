"""``necklace train``, ``eval``, ``compare`` and ``features``: the argparse side of :mod:`necklace.detection.train`,
``evaluate``, ``compare`` and ``features``.

    necklace train [--config FILE.yaml] [--detector fcos|retinanet|faster_rcnn] [--backbone NAME] [--neck NAME]
                   [-o KEY=VALUE ...] [--data synthetic|coco:IMAGES_DIR,ANN_FILE|yolo:IMAGES_DIR,LABELS_DIR,NAMES...]
                   [--epochs N | --steps N] [--batch-size N] [--lr LR] [--image-size N] [--seed N] [--output DIR]
                   [--resume [CHECKPOINT]] [--eval] ...
    necklace eval --checkpoint FILE [--data ...] [--backend faster_coco_eval|pycocotools] [--format table|json]
    necklace compare [--necks fpn,pafpn,bifpn] [-o [NECK.]KEY=VALUE ...] [--detector D] [--backbone NAME]
                     [--seeds 0,1] [--steps N] [--image-size N] [--output DIR] [--quick] ...
    necklace features [IMAGE | --synthetic N] --checkpoint RUN_DIR|FILE [--out heatmaps.png] [--reduce l2|mean_abs]

Precedence for ``train``: :class:`~necklace.detection.train.TrainConfig` defaults, then the checkpoint's config
(``--resume`` without ``--config``), then ``--config FILE``, then the flags given. Under ``torchrun`` every process
runs the same command; only rank 0 prints. These functions are registered by :func:`necklace.cli.build_parser`.

Example:
    >>> import argparse
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

__all__ = [
    "add_compare_parser",
    "add_eval_parser",
    "add_features_parser",
    "add_train_parser",
    "compare_config_from_args",
    "config_from_args",
]

#: flag attribute -> TrainConfig field, for the plain one-value flags
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


def _usage_error(message: str) -> Exception:
    from necklace.cli import _UsageError

    return _UsageError(message)


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
    from necklace.cli import parse_options, parse_value
    from necklace.detection.checkpoint import load_checkpoint
    from necklace.detection.train import CHECKPOINT_NAME, DataSpec, TrainConfig

    data: dict[str, Any] = {}
    if args.config:
        data = TrainConfig.load(args.config).to_dict()
    elif args.resume:
        path = (
            Path(args.resume) if isinstance(args.resume, str) else Path(args.output or "runs/train") / CHECKPOINT_NAME
        )
        if not path.is_file():
            raise _usage_error(f"nothing to resume: no checkpoint at {str(path)!r} (give --output DIR or a path).")
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
        raise _usage_error(str(e)) from e
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
    from necklace.detection.train import DataSpec, build_dataset, load_model

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.batch_size < 1:
        raise _usage_error(f"--batch-size must be positive, got {args.batch_size}.")
    path = Path(args.checkpoint)
    if not path.is_file():
        raise _usage_error(f"checkpoint {args.checkpoint!r} not found.")
    model, config = load_model(path, device)
    if args.data is not None:
        same_kind = DataSpec.parse(args.data).kind == DataSpec.parse(config.data).kind
        config = config.replace(data=args.data, val_data=None, data_options=config.data_options if same_kind else {})
    dataset: Any = build_dataset(config, "val")
    names = tuple(getattr(dataset, "class_names", ()))
    trained = tuple(getattr(model, "class_names", ()))
    if trained and names and len(names) != len(trained):
        raise _usage_error(
            f"the checkpoint was trained on {len(trained)} classes {list(trained)} but the data has {len(names)} "
            f"{list(names)}; evaluate on data with the same classes."
        )
    metrics = evaluate(
        model, dataset, batch_size=args.batch_size, device=device, backend=args.backend, progress=not args.quiet
    )
    text = json.dumps(metrics.to_dict(), indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
        err.write(f"wrote {args.output}\n")
    out.write(text if args.format == "json" else f"{path} on {config.val_data or config.data}:\n" + metrics.table())
    out.write("\n")
    return 0


# ------------------------------------------------------------------------------------------------ compare
#: --quick: a smoke run of the same comparison (about a minute on 2 CPU cores), into its own default directory
_QUICK = {"steps": 60, "image_size": 96, "data_options": {"num_images": 32, "val_images": 16}}
#: compare flag attribute -> TrainConfig field of the shared base config
_COMPARE_FIELDS = {
    "detector": "detector",
    "backbone": "backbone",
    "data": "data",
    "val_data": "val_data",
    "image_size": "image_size",
    "batch_size": "batch_size",
    "lr": "lr",
    "device": "device",
    "workers": "num_workers",
}


def add_compare_parser(sub: Any) -> None:
    """Register ``compare`` on an argparse sub-parser collection."""
    from necklace.detection.compare import METRICS
    from necklace.detection.detectors import DETECTOR_KINDS

    p = sub.add_parser(
        "compare",
        help="train, evaluate and profile several necks over seeds; table, verdict and pictures",
        description="Compare necks on one detection task: the same backbone, head, data, schedule and seeds for "
        "each neck. Trains and COCO-evaluates every (neck, seed), profiles each neck (params, GFLOPs, CPU/GPU "
        "latency), reports mean ± std over seeds and whether the differences exceed the seed spread. Writes "
        "results.json, report.md, ap_by_size.png and ap_vs_latency.png under --output. Without arguments: "
        "fpn, pafpn, bifpn in a CPU-sized Faster R-CNN on the tiny backbone, synthetic shapes at 128 px, "
        "1200 steps, 2 seeds (about 10 minutes on 2 CPU cores). Interrupted? Run the same command again: finished "
        "runs are reused, the rest resumed.",
    )
    p.add_argument("--necks", metavar="A,B,...", help="registered necks (default fpn,pafpn,bifpn)")
    p.add_argument(
        "--option",
        "-o",
        action="append",
        metavar="[NECK.]KEY=VALUE",
        help="neck option, for one neck (-o bifpn.repeats=3) or all (-o width=64); repeatable",
    )
    p.add_argument("--config", metavar="FILE", help="TrainConfig YAML/JSON for everything the runs share")
    p.add_argument("--detector", choices=DETECTOR_KINDS, help="detector (default faster_rcnn)")
    p.add_argument("--backbone", metavar="NAME", help="tiny (default), resnet18/34/50, timm:<model>")
    p.add_argument("--backbone-option", action="append", metavar="KEY=VALUE", help="backbone option (repeatable)")
    p.add_argument("--detector-option", action="append", metavar="KEY=VALUE", help="build_detector option")
    p.add_argument("--data", metavar="SPEC", help="synthetic (default) | coco:IMAGES_DIR,ANN_FILE | yolo:...")
    p.add_argument("--val-data", metavar="SPEC", help="evaluation data (default: see TrainConfig.val_data)")
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE", help="e.g. num_images=256")
    p.add_argument("--seeds", metavar="S,S,...", help="seeds, one run per neck and seed (default 0,1)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, metavar="N", help="training steps per run (default 1200)")
    length.add_argument("--epochs", type=int, metavar="N", help="epochs per run instead of steps")
    p.add_argument("--image-size", type=int, metavar="N", help="image size (default 128)")
    p.add_argument("--batch-size", type=int, metavar="N", help="images per step (default 4)")
    p.add_argument("--lr", type=float, help="learning rate (default per detector)")
    p.add_argument("--metric", choices=METRICS, help="metric to rank and test on (default ap)")
    p.add_argument("--latency-repeats", type=int, metavar="N", help="timed forward passes (default 20)")
    p.add_argument("--gpu-latency", action=argparse.BooleanOptionalAction, default=None, help="time on CUDA too")
    p.add_argument("--device", help="training device: auto (default), cpu, cuda")
    p.add_argument("--workers", type=int, metavar="N", help="data-loader workers (default 0)")
    p.add_argument("--output", metavar="DIR", help="output directory (default runs/compare, --quick: ...-quick)")
    p.add_argument("--quick", action="store_true", help="smoke run: 60 steps, 96 px, 32 images (about a minute)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines or bars")
    p.set_defaults(func=_cmd_compare)


def compare_config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~necklace.detection.compare.CompareConfig` a ``compare`` command line describes.

    Example:
        >>> p = argparse.ArgumentParser(); sub = p.add_subparsers(dest="command"); add_compare_parser(sub)
        >>> cfg = compare_config_from_args(p.parse_args(["compare", "--necks", "fpn,bifpn", "-o", "width=16",
        ...                                              "-o", "bifpn.repeats=1", "--seeds", "3,4"]))
        >>> [(n.name, n.options) for n in cfg.necks], cfg.seeds
        ([('fpn', {'width': 16, 'levels': [3, 6]}), ('bifpn', {'width': 16, 'levels': [3, 6], 'repeats': 1})], (3, 4))
    """
    from necklace.cli import parse_options
    from necklace.detection.compare import DEFAULT_BASE, CompareConfig, NeckChoice, default_neck_options
    from necklace.detection.train import DataSpec, TrainConfig

    data = (TrainConfig.load(args.config) if args.config else DEFAULT_BASE).to_dict()
    if args.config:
        data["eval"] = True
    base_kind, base_detector, base_backbone = DataSpec.parse(str(data["data"])).kind, data["detector"], data["backbone"]
    if args.quick:
        data.update({k: (dict(v) if isinstance(v, dict) else v) for k, v in _QUICK.items()})
        data["epochs"] = None
    for flag, name in _COMPARE_FIELDS.items():
        value = getattr(args, flag)
        if value is not None:
            data[name] = value
    if args.steps is not None:
        data["steps"], data["epochs"] = args.steps, None
    if args.epochs is not None:
        data["epochs"], data["steps"] = args.epochs, None
    if args.data is not None and args.data_option is None and DataSpec.parse(args.data).kind != base_kind:
        data["data_options"] = {}  # the synthetic sizes do not apply to files
    if args.detector is not None and args.detector != base_detector:
        data["detector_options"] = {}  # e.g. the default's Faster R-CNN proposal counts do not apply to FCOS
    if args.backbone is not None and args.backbone != base_backbone:
        data["backbone_options"] = {}  # the tiny backbone's width does not apply to a ResNet
    for flag, name in (
        ("backbone_option", "backbone_options"),
        ("detector_option", "detector_options"),
        ("data_option", "data_options"),
    ):
        extra = parse_options(getattr(args, flag))
        if extra:
            data[name] = {**dict(data.get(name) or {}), **extra}
    base = TrainConfig.from_dict(data)
    names = [n.strip() for n in (args.necks or "fpn,pafpn,bifpn").split(",") if n.strip()]
    if not names:
        raise _usage_error("--necks is empty: give registered necks, e.g. --necks fpn,pafpn,bifpn")
    shared: dict[str, Any] = {}
    per_neck: dict[str, dict[str, Any]] = {n: {} for n in names}
    for item in args.option or ():
        key, sep, value = item.partition("=")
        target, dot, key = key.strip().rpartition(".")
        if dot and target not in per_neck:
            raise _usage_error(f"-o {item!r}: {target!r} is not one of --necks {','.join(names)}.")
        parsed = parse_options([f"{key}{sep}{value}"])
        (per_neck[target] if dot else shared).update(parsed)
    necks = tuple(NeckChoice(n, {**default_neck_options(n), **shared, **per_neck[n]}) for n in dict.fromkeys(names))
    seeds: tuple[int, ...] = (0, 1)
    if args.seeds is not None:
        try:
            seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
        except ValueError:
            raise _usage_error(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    kw: dict[str, Any] = {"necks": necks, "base": base, "seeds": seeds}
    kw["output"] = args.output or ("runs/compare-quick" if args.quick else "runs/compare")
    if args.metric:
        kw["metric"] = args.metric
    if args.latency_repeats is not None:
        kw["latency_repeats"] = args.latency_repeats
    elif args.quick:
        kw["latency_repeats"] = 5
    if args.gpu_latency is not None:
        kw["gpu_latency"] = args.gpu_latency
    return CompareConfig(**kw)


def _command_line(args: argparse.Namespace) -> str:
    """The ``necklace compare`` command of ``args`` (flags as given, for the report)."""
    import shlex

    parts = ["necklace", "compare"]
    for name, value in vars(args).items():
        if name in ("command", "func", "debug", "quiet") or value in (None, False):
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            for v in value:
                parts += ["-o" if name == "option" else flag, v]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def _cmd_compare(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from necklace.detection.compare import compare, verdict_lines
    from necklace.detection.train import TrainingInterrupted

    config = compare_config_from_args(args)
    command = _command_line(args)
    try:
        result = compare(config, progress=not args.quiet, command=command)
    except TrainingInterrupted as e:
        err.write(f"necklace: {e}. Run the same command again to continue: finished runs are reused.\n")
        return e.exit_code
    except FloatingPointError as e:
        raise _usage_error(str(e)) from e
    out.write(result.table() + "\n\n" + "\n".join(f"- {line}" for line in verdict_lines(result)) + "\n\n")
    for name, path in result.files.items():
        out.write(f"{name}: {path}\n")
    out.write(f"wall time: {result.wall_time / 60:.1f} min\n")
    return 0


# ------------------------------------------------------------------------------------------------ features
def add_features_parser(sub: Any) -> None:
    """Register ``features`` on an argparse sub-parser collection."""
    from necklace.detection.features import REDUCTIONS

    p = sub.add_parser(
        "features",
        help="heatmaps of what each neck output level responds to, for a trained model (one PNG)",
        description="Run an image through a trained detector and draw, per neck output level, the channel norm "
        "of its features over the image (each level scaled to its own range), next to the image with the "
        "detections. Without IMAGE: image --synthetic N (default 0) of the run's validation data.",
    )
    p.add_argument("image", nargs="?", metavar="IMAGE", help="image file (PNG, JPEG, ...)")
    p.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="checkpoint.pt of necklace train/compare, or its run dir"
    )
    p.add_argument("--synthetic", type=int, metavar="N", help="use image N of the run's validation data instead")
    p.add_argument("--out", "--output", dest="out", default="features.png", metavar="FILE", help="PNG to write")
    p.add_argument("--reduce", choices=REDUCTIONS, default="l2", help="channel reduction (default l2)")
    p.add_argument("--score-thresh", type=float, default=0.3, metavar="T", help="draw detections >= T (0.3)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda")
    p.set_defaults(func=_cmd_features)


def _cmd_features(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from necklace.detection.features import draw_feature_heatmaps, load_image
    from necklace.detection.train import CHECKPOINT_NAME, build_dataset, load_model

    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise _usage_error(f"checkpoint {args.checkpoint!r} not found (give checkpoint.pt or the run directory).")
    if args.image is not None and args.synthetic is not None:
        raise _usage_error("give an IMAGE or --synthetic N, not both.")
    if not str(args.out).lower().endswith(".png"):
        raise _usage_error(f"--out {args.out!r}: the heatmaps are written as PNG; use a .png name.")
    model, config = load_model(path, args.device)
    target = None
    if args.image is not None:
        image = load_image(args.image)
        source = args.image
    else:
        dataset: Any = build_dataset(config, "val")
        index = 0 if args.synthetic is None else args.synthetic
        if not 0 <= index < len(dataset):
            raise _usage_error(f"--synthetic {index}: the validation data has images 0..{len(dataset) - 1}.")
        image, target = dataset[index]
        source = f"validation image {index} of {config.val_data or config.data}"
    title = f"{config.detector} + {config.neck} ({config.backbone}), {path}: {source}"
    fig = draw_feature_heatmaps(
        model, image, args.out, reduce=args.reduce, score_thresh=args.score_thresh, target=target, title=title
    )
    levels = ", ".join(f"{lv.name} (/{lv.stride}, {lv.map_size[0]}x{lv.map_size[1]})" for lv in fig.levels)
    out.write(f"wrote {fig.path}: input + {len(fig.levels)} levels: {levels}; {fig.detections} detections\n")
    return 0
