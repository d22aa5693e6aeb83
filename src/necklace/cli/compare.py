"""``necklace compare``: the argparse side of :mod:`necklace.detection.compare`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TextIO

from necklace.cli.args import (
    _SCHEDULE_FLAGS,
    _command_text,
    _copy_flags,
    _detector_levels,
    _refuse_for_yolo,
    _UsageError,
    parse_options,
)

__all__ = ["add_compare_parser", "compare_config_from_args"]

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
    "pretrained": "pretrained",
    "device": "device",
    "workers": "num_workers",
}


#: --quick inside a YOLO detector: 1 epoch at 96 px on 32 images
_YOLO_QUICK = {"epochs": 1, "image_size": 96, "data_options": {"num_images": 32, "val_images": 16}}
#: flags that do not apply to YOLO detectors -> why
_NOT_YOLO = {
    "backbone": "a YOLO detector brings its own backbone",
    "backbone_option": "a YOLO detector brings its own backbone",
    "pretrained": "YOLO models train from random weights here (nothing is downloaded)",
    "steps": "Ultralytics trains in epochs: use --epochs",
    "val_data": "the Ultralytics data file names its val images",
}


def add_compare_parser(sub: Any) -> None:
    """Register ``compare`` on an argparse sub-parser collection."""
    from necklace.detection.compare import METRICS

    p = sub.add_parser(
        "compare",
        help="train, evaluate and profile several necks over seeds; table, verdict and pictures",
        description="Compare necks on one detection task: the same backbone, head, data, schedule and seeds for "
        "each neck. Trains and COCO-evaluates every (neck, seed), profiles each neck (params, GFLOPs, CPU/GPU "
        "latency), reports mean ± std over seeds and whether the differences exceed the seed spread. Writes "
        "results.json, report.md, ap_by_size.png and ap_vs_latency.png under --output. Without arguments: "
        "fpn, pafpn, bifpn in a CPU-sized Faster R-CNN on the tiny backbone, synthetic shapes at 128 px, "
        "1200 steps, 2 seeds (about 10 minutes on 2 CPU cores). --detector yolov8n (or another YOLOv8 / YOLO11 "
        "size) compares the necks inside that Ultralytics YOLO model, each trained by Ultralytics' trainer, loss and "
        "schedule (default: yolo_pafpn, pafpn, bifpn; needs pip install 'necklace[ultralytics]'). Interrupted? Run "
        "the same command again: finished runs are reused, the rest resumed.",
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
    p.add_argument(
        "--detector",
        metavar="NAME",
        help="faster_rcnn (default), fcos, retinanet, or an Ultralytics YOLO model: yolov8n/s/m/l/x, yolo11n/s/m/l/x",
    )
    p.add_argument("--levels", metavar="LO,HI", help="YOLO only: pyramid levels of the neck and Detect (default 3,5)")
    p.add_argument("--backbone", metavar="NAME", help="tiny (default), resnet18/34/50, timm:<model>")
    p.add_argument("--backbone-option", action="append", metavar="KEY=VALUE", help="backbone option (repeatable)")
    p.add_argument(
        "--pretrained", action=argparse.BooleanOptionalAction, default=None, help="pretrained backbone weights"
    )
    p.add_argument(
        "--detector-option",
        action="append",
        metavar="KEY=VALUE",
        help="build_detector option; for YOLO an Ultralytics training argument (optimizer=SGD, warmup_epochs=1, ...)",
    )
    p.add_argument(
        "--data",
        metavar="SPEC",
        help="synthetic (default) | coco:IMAGES_DIR,ANN_FILE | yolo:IMAGES_DIR,LABELS_DIR,NAMES... | YOLO "
        "detectors: yolo:PATH/data.yaml (an Ultralytics data file)",
    )
    p.add_argument("--val-data", metavar="SPEC", help="evaluation data (default: see TrainConfig.val_data)")
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE", help="e.g. num_images=256")
    p.add_argument("--seeds", metavar="S,S,...", help="seeds, one run per neck and seed (default 0,1)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, metavar="N", help="training steps per run (default 1200)")
    length.add_argument("--epochs", type=int, metavar="N", help="epochs per run instead of steps (YOLO: epochs)")
    p.add_argument("--image-size", type=int, metavar="N", help="image size (default 128)")
    p.add_argument("--batch-size", type=int, metavar="N", help="images per step (default 4)")
    p.add_argument("--lr", type=float, help="learning rate (default per detector)")
    p.add_argument("--metric", choices=METRICS, help="metric to rank and test on (default ap)")
    p.add_argument("--latency-repeats", type=int, metavar="N", help="timed forward passes (default 20)")
    p.add_argument("--gpu-latency", action=argparse.BooleanOptionalAction, default=None, help="time on CUDA too")
    p.add_argument("--device", help="training device: auto (default), cpu, cuda")
    p.add_argument("--workers", type=int, metavar="N", help="data-loader workers (default 0)")
    p.add_argument("--output", metavar="DIR", help="output directory (default runs/compare, --quick: ...-quick)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 60 steps, 96 px, 32 images (a few minutes; checks the pipeline, too short to rank necks)",
    )
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
    from necklace.detection.compare import DEFAULT_BASE, CompareConfig, default_neck_options
    from necklace.detection.compare.yolo_config import check_detector, is_yolo_detector
    from necklace.detection.train import DataSpec, TrainConfig

    if args.detector is not None:
        check_detector(args.detector)  # unknown: ValueError listing the torchvision and YOLO detectors
    if is_yolo_detector(args.detector) or (args.detector is None and args.config and _yolo_file(args.config)):
        return _yolo_config_from_args(args)
    if args.levels is not None:
        raise _UsageError("--levels applies to YOLO detectors (--detector yolov8n, ...); set levels with -o levels=3,6")
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
    necks = _necks(args, "fpn,pafpn,bifpn", default_neck_options)
    output = args.output or ("runs/compare-quick" if args.quick else "runs/compare")
    return _compare_config(args, CompareConfig, necks, base, output)


def _necks(args: argparse.Namespace, default: str, defaults: Any) -> tuple[Any, ...]:
    """``--necks`` with ``defaults(name)`` under the ``-o`` options (shared, then per neck)."""
    from necklace.detection.compare import NeckChoice

    names = [n.strip() for n in (args.necks or default).split(",") if n.strip()]
    if not names:
        raise _UsageError(f"--necks is empty: give registered necks, e.g. --necks {default}")
    shared: dict[str, Any] = {}
    per_neck: dict[str, dict[str, Any]] = {n: {} for n in names}
    for item in args.option or ():
        key, sep, value = item.partition("=")
        target, dot, key = key.strip().rpartition(".")
        if dot and target not in per_neck:
            raise _UsageError(f"-o {item!r}: {target!r} is not one of --necks {','.join(names)}.")
        parsed = parse_options([f"{key}{sep}{value}"])
        (per_neck[target] if dot else shared).update(parsed)
    return tuple(NeckChoice(n, {**defaults(n), **shared, **per_neck[n]}) for n in dict.fromkeys(names))


def _compare_config(args: argparse.Namespace, cls: Any, necks: tuple[Any, ...], base: Any, output: str) -> Any:
    """The CompareConfig of ``necks`` over ``base`` with the seeds, metric and latency flags."""
    seeds: tuple[int, ...] = (0, 1)
    if args.seeds is not None:
        try:
            seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
        except ValueError:
            raise _UsageError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    kw: dict[str, Any] = {"necks": necks, "base": base, "seeds": seeds, "output": output}
    if args.metric:
        kw["metric"] = args.metric
    if args.latency_repeats is not None:
        kw["latency_repeats"] = args.latency_repeats
    elif args.quick:
        kw["latency_repeats"] = 5
    if args.gpu_latency is not None:
        kw["gpu_latency"] = args.gpu_latency
    return cls(**kw)


def _read_mapping(path: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))  # JSON is YAML too
    except OSError as e:
        raise _UsageError(f"--config {path!r}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise _UsageError(f"--config {path!r} is not valid YAML/JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise _UsageError(f"--config {path!r}: expected a mapping of config fields, got {type(data).__name__}")
    return data


def _yolo_file(path: str) -> bool:
    """Whether the --config file names a YOLO detector (a file that cannot be read is left to TrainConfig.load)."""
    from necklace.detection.compare.yolo_config import is_yolo_detector

    try:
        return is_yolo_detector(_read_mapping(path).get("detector"))
    except (_UsageError, UnicodeDecodeError):
        return False


def _yolo_config_from_args(args: argparse.Namespace) -> Any:
    """The CompareConfig of a comparison inside a YOLO detector (a :class:`YoloTrainConfig` base)."""
    from necklace.detection.compare import CompareConfig
    from necklace.detection.compare.yolo_config import (
        DEFAULT_YOLO_BASE,
        YoloTrainConfig,
        default_yolo_necks,
        yolo_neck_options,
    )
    from necklace.detection.train import DataSpec

    _refuse_for_yolo(args, _NOT_YOLO)
    data = (
        YoloTrainConfig.from_dict(_read_mapping(args.config)).to_dict() if args.config else DEFAULT_YOLO_BASE.to_dict()
    )
    if args.detector is not None:
        data["detector"] = args.detector
    base_kind = DataSpec.parse(str(data["data"])).kind
    if args.quick:
        data.update({k: (dict(v) if isinstance(v, dict) else v) for k, v in _YOLO_QUICK.items()})
    _copy_flags(args, data, (("data", "data"), *_SCHEDULE_FLAGS))
    if args.data is not None and args.data_option is None and DataSpec.parse(args.data).kind != base_kind:
        data["data_options"] = {}  # the synthetic sizes do not apply to a data file
    if args.levels is not None:
        data["levels"] = _detector_levels(args.levels)
    for flag, name in (("data_option", "data_options"), ("detector_option", "train_args")):
        extra = parse_options(getattr(args, flag))
        if extra:
            data[name] = {**dict(data.get(name) or {}), **extra}
    base = YoloTrainConfig.from_dict(data)
    necks = _necks(args, ",".join(default_yolo_necks(base.detector)), lambda n: yolo_neck_options(n, base.detector))
    output = args.output or f"runs/compare-{base.detector}" + ("-quick" if args.quick else "")
    return _compare_config(args, CompareConfig, necks, base, output)


def _command_line(args: argparse.Namespace) -> str:
    """The ``necklace compare`` command of ``args`` (flags as given, for the report)."""
    return _command_text(args, "compare")


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
        raise _UsageError(str(e)) from e
    out.write(result.table() + "\n\n" + "\n".join(f"- {line}" for line in verdict_lines(result)) + "\n\n")
    for name, path in result.files.items():
        out.write(f"{name}: {path}\n")
    out.write(f"wall time: {result.wall_time / 60:.1f} min\n")
    return 0
