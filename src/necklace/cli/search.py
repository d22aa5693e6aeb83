"""``necklace search``: the argparse side of :func:`necklace.detection.search.search` (a thin layer).

    necklace search [--data tiny_shapes|synthetic|coco:IMAGES_DIR,ANN_FILE|yolo:...] [--latency-budget 3x|5ms]
                    [--runtime torch|native|onnxruntime|openvino|auto] [--time-budget 30m | --trials N]
                    [--detector D] [--backbone NAME] [--image-size N] [--steps N] [--metric ap|ap_small|...]
                    [--verdict-top N] [--verdict-seeds 0,1,2] [--output DIR] ...
    necklace search --detector yolov8n|...|yolo11x [--levels 3,5] [--epochs N] [--warmup-epochs N]
                    [--data tiny_shapes|synthetic|yolo:PATH/data.yaml] ...   (inside an Ultralytics YOLO detector)

Wire it into a CLI with ``add_search_parser(subparsers)``; the sub-parser's ``func`` is :func:`run`
(``run(args, out, err) -> exit status``, the signature the other commands' functions have).

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser(); sub = p.add_subparsers(dest="command"); add_search_parser(sub)
    >>> cfg = search_config_from_args(p.parse_args(["search", "--latency-budget", "5ms", "--trials", "6",
    ...                                             "--metric", "ap_small", "--verdict-seeds", "0,1"]))
    >>> cfg.latency_budget, cfg.n_trials, cfg.metric, cfg.verdict_seeds, cfg.preset
    ('5ms', 6, 'ap_small', (0, 1), 'tiny_shapes')
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from necklace.cli.args import (
    _SCHEDULE_FLAGS,
    _command_text,
    _copy_flags,
    _detector_levels,
    _refuse_for_yolo,
    _UsageError,
)

__all__ = ["add_search_parser", "run", "search_config_from_args"]

#: flag attribute -> field of the base TrainConfig (the full recipe)
_BASE_FIELDS = {
    "detector": "detector",
    "backbone": "backbone",
    "image_size": "image_size",
    "batch_size": "batch_size",
    "lr": "lr",
    "pretrained": "pretrained",
    "workers": "num_workers",
}
#: flag attribute -> SearchConfig field
_FIELDS = {
    "latency_budget": "latency_budget",
    "runtime": "runtime",
    "device": "device",
    "latency_scope": "latency_scope",
    "latency_threads": "latency_threads",
    "time_budget": "time_budget",
    "trials": "n_trials",
    "max_trials": "max_trials",
    "metric": "metric",
    "rung_steps": "rung_steps",
    "rungs": "rungs",
    "reduction_factor": "reduction_factor",
    "pruner": "pruner",
    "warmup_steps": "warmup_steps",
    "holdout": "holdout",
    "fidelity_images": "fidelity_images",
    "verdict_top": "verdict_top",
    "seed": "seed",
    "output": "output",
}
#: flags that do not apply inside a YOLO detector -> why
_NOT_YOLO = {
    "backbone": "a YOLO detector brings its own backbone",
    "backbone_option": "a YOLO detector brings its own backbone (pick its levels with --levels)",
    "pretrained": "YOLO models train from random weights here (nothing is downloaded); the frozen backbone of the "
    "short trainings comes from --warmup-epochs",
    "steps": "Ultralytics trains in epochs: use --epochs",
    "warmup_steps": "the backbone warm-up is an Ultralytics training, in epochs: use --warmup-epochs",
    "val_data": "the Ultralytics data file names its val images",
}
#: flags that apply inside a YOLO detector only -> what torchvision detectors use instead
_YOLO_ONLY = {
    "levels": "set the backbone's levels with --backbone-option levels=2,5",
    "epochs": "the verdict's recipe is in steps: use --steps",
    "warmup_epochs": "the backbone warm-up is in steps: use --warmup-steps",
}


def add_search_parser(sub: Any) -> None:
    """Register ``search`` on an argparse sub-parser collection (``parser.add_subparsers()``)."""
    from necklace.detection.compare import METRICS
    from necklace.detection.search.config import PRUNERS
    from necklace.detection.search.latency import LATENCY_SCOPES

    p = sub.add_parser(
        "search",
        help="find the neck for your data under a latency budget; verdict against the hand-made necks",
        description="Search necklace graphs (FPN / PAFPN / BiFPN / NAS-FPN cells / YOLO PAN templates x levels, "
        "widths, fusion, resampling, blocks, repeats) for the neck that does best on your data within a latency "
        "budget: every candidate is timed first (over budget: rejected in seconds), the rest get short trainings "
        "on cached maps of a frozen backbone with successive-halving pruning; the best ones and the best hand-made "
        "neck are then retrained at the full recipe over seeds (necklace compare), and a winner is declared only "
        "beyond the seed noise. Writes report.md, trials.md/.csv, search.png, winner.yaml under --output. Without "
        "arguments: the CPU-sized search on tiny_shapes (about 30 minutes on 2 cores). --detector yolov8n (or "
        "another YOLOv8 / YOLO11 size) searches inside that Ultralytics YOLO model: candidates are timed on its "
        "backbone's maps, ranked by short trainings of a proxy head on its frozen backbone, and the verdict retrains "
        "them inside YOLO with Ultralytics' trainer (pip install 'necklace[ultralytics]'). Interrupted? Run the same "
        "command again: it continues where it stopped.",
    )
    p.add_argument(
        "--data",
        metavar="SPEC",
        help="tiny_shapes (default) | synthetic | coco:IMAGES,ANN | yolo:... | YOLO detectors: yolo:PATH/data.yaml",
    )
    p.add_argument("--val-data", metavar="SPEC", help="validation data of the verdict (default: see TrainConfig)")
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE", help="e.g. num_images=512 (repeatable)")
    p.add_argument("--latency-budget", metavar="BUDGET", help="'5ms' / 5 (milliseconds) or '3x' the reference neck")
    p.add_argument("--runtime", help="necklace.deploy runtime to time on: torch (default), native, onnxruntime, auto")
    p.add_argument("--device", help="where candidates are timed and trained: cpu (default), cuda")
    p.add_argument("--latency-scope", choices=LATENCY_SCOPES, help="time the neck (default) or the whole detector")
    p.add_argument("--latency-threads", type=int, metavar="N", help="torch threads while timing")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--time-budget", metavar="T", help="wall clock for everything, e.g. 30m, 2h (sizes the study)")
    budget.add_argument("--trials", type=int, metavar="N", help="trained trials (hand-made ones included)")
    p.add_argument("--max-trials", type=int, metavar="N", help="cap of a study sized by --time-budget (80)")
    p.add_argument(
        "--detector",
        metavar="NAME",
        help="faster_rcnn (default), fcos, retinanet, or an Ultralytics YOLO model: yolov8n/s/m/l/x, yolo11n/s/m/l/x",
    )
    p.add_argument("--levels", metavar="LO,HI", help="YOLO only: levels of the necks and Detect (default 3,5)")
    p.add_argument("--epochs", type=int, metavar="N", help="YOLO only: epochs of the verdict's runs (30)")
    p.add_argument("--warmup-epochs", type=int, metavar="N", help="YOLO only: epochs of the backbone warm-up (30)")
    p.add_argument("--backbone", metavar="NAME", help="tiny (default), resnet18/34/50, timm:<model>")
    p.add_argument("--backbone-option", action="append", metavar="KEY=VALUE", help="e.g. levels=2,5 (repeatable)")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None, help="pretrained backbone")
    p.add_argument("--detector-option", action="append", metavar="KEY=VALUE", help="build_detector option")
    p.add_argument("--image-size", type=int, metavar="N", help="image size (default 128)")
    p.add_argument("--batch-size", type=int, metavar="N", help="images per step (default 4)")
    p.add_argument("--steps", type=int, metavar="N", help="steps of the full recipe the verdict retrains (500)")
    p.add_argument("--lr", type=float, help="learning rate (default per detector)")
    p.add_argument("--metric", choices=METRICS, help="metric to maximise and test (default ap)")
    p.add_argument(
        "--handmade",
        metavar="A,B,...",
        help="hand-made necks in the race (default fpn,pafpn,bifpn,yolo_pafpn; YOLO: its own neck,pafpn,bifpn)",
    )
    p.add_argument("--free-cells", action="store_true", help="add the free space of mutated merging-cell graphs")
    p.add_argument("--no-anchors", action="store_true", help="do not enqueue the plain fpn at every finest level")
    p.add_argument("--rung-steps", type=int, metavar="N", help="steps before the first evaluation (60)")
    p.add_argument("--rungs", type=int, metavar="N", help="evaluations per short training (3)")
    p.add_argument("--reduction-factor", type=int, metavar="N", help="keep the top 1/N at each rung (3)")
    p.add_argument("--pruner", choices=PRUNERS, help="successive_halving (default), hyperband, none")
    p.add_argument("--warmup-steps", type=int, metavar="N", help="steps of the backbone warm-up (300; 0: pretrained)")
    p.add_argument("--holdout", type=float, metavar="F", help="fraction of training images held out (0.2)")
    p.add_argument("--fidelity-images", type=int, metavar="N", help="training images cached (1024)")
    p.add_argument("--verdict-top", type=int, metavar="N", help="searched necks retrained by the verdict (2)")
    p.add_argument("--verdict-seeds", metavar="S,S,...", help="seeds of the verdict (0,1,2)")
    p.add_argument("--no-verdict", action="store_true", help="stop after the study (no retraining)")
    p.add_argument("--seed", type=int, metavar="N", help="seed of the sampler and the short trainings (0)")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads for the whole run")
    p.add_argument("--workers", type=int, metavar="N", help="data-loader workers of the verdict's runs")
    p.add_argument("--output", metavar="DIR", help="output folder (default runs/search)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def _ints(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated integers, e.g. {flag} 0,1,2") from None
    if not values:
        raise ValueError(f"{flag} is empty: give comma-separated integers, e.g. {flag} 0,1,2")
    return values


def _common(args: argparse.Namespace) -> dict[str, Any]:
    """The SearchConfig fields every detector shares (budget, study, verdict)."""
    kw: dict[str, Any] = {}
    for flag, name in _FIELDS.items():
        value = getattr(args, flag)
        if value is not None:
            kw[name] = value
    if args.handmade is not None:
        kw["handmade"] = tuple(n.strip() for n in args.handmade.split(",") if n.strip())
    if args.verdict_seeds is not None:
        kw["verdict_seeds"] = _ints("--verdict-seeds", args.verdict_seeds)
    if args.free_cells:
        kw["free_cells"] = True
    if args.no_verdict:
        kw["verdict"] = False
    if args.no_anchors:
        kw["anchors"] = False
    return kw


def search_config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~necklace.detection.search.SearchConfig` a ``search`` command line describes."""
    from necklace.cli import parse_options
    from necklace.detection.compare.yolo_config import check_detector, is_yolo_detector
    from necklace.detection.search.config import CPU_BASE, SearchConfig
    from necklace.detection.search.data import PRESETS
    from necklace.detection.train import DataSpec, TrainConfig

    if args.detector is not None:
        check_detector(args.detector)  # unknown: ValueError listing the torchvision and YOLO detectors
    if is_yolo_detector(args.detector):
        return _yolo_search_config(args)
    for flag, instead in _YOLO_ONLY.items():
        if getattr(args, flag) is not None:
            raise _UsageError(
                f"--{flag.replace('_', '-')} applies to YOLO detectors (--detector yolov8n, ...); {instead}."
            )
    default = SearchConfig()
    base = CPU_BASE.to_dict()
    kw: dict[str, Any] = _common(args)
    if args.data is not None:
        if args.data in PRESETS:
            kw["preset"] = args.data
        else:
            DataSpec.parse(args.data)
            kw["preset"] = None
            base["data"] = args.data
            base["data_options"] = {}
    if args.val_data is not None:
        if kw.get("preset", default.preset) is not None:
            raise ValueError(f"--val-data {args.val_data!r} goes with --data SPEC (the built-in data has its own).")
        base["val_data"] = args.val_data
    for flag, name in _BASE_FIELDS.items():
        value = getattr(args, flag)
        if value is not None:
            base[name] = value
    if args.steps is not None:
        base["steps"], base["epochs"] = args.steps, None
    if args.detector is not None and args.detector != CPU_BASE.detector:
        base["detector_options"] = {}  # the default's Faster R-CNN proposal counts do not apply to FCOS
    if args.backbone is not None and args.backbone != CPU_BASE.backbone:
        base["backbone_options"] = {}
    for flag, name in (
        ("backbone_option", "backbone_options"),
        ("detector_option", "detector_options"),
        ("data_option", "data_options"),
    ):
        extra = parse_options(getattr(args, flag))
        if extra:
            base[name] = {**dict(base.get(name) or {}), **extra}
    return SearchConfig(base=TrainConfig.from_dict(base), **kw)


def _yolo_search_config(args: argparse.Namespace) -> Any:
    """The SearchConfig of a search inside a YOLO detector: a :data:`~necklace.detection.search.config.
    CPU_YOLO_BASE`-based :class:`~necklace.detection.compare.YoloTrainConfig` as the verdict's recipe."""
    from necklace.cli import parse_options
    from necklace.detection.compare.yolo_config import YoloTrainConfig
    from necklace.detection.search.config import CPU_YOLO_BASE, SearchConfig
    from necklace.detection.search.data import PRESETS

    _refuse_for_yolo(args, _NOT_YOLO)
    kw = _common(args)
    base = CPU_YOLO_BASE.to_dict()
    base["detector"] = args.detector
    if args.data is not None:
        if args.data in PRESETS:
            kw["preset"] = args.data
        else:
            kw["preset"] = None
            base["data"] = args.data
            if args.data_option is None:
                base["data_options"] = {}
    _copy_flags(args, base, _SCHEDULE_FLAGS)
    if args.levels is not None:
        base["levels"] = _detector_levels(args.levels)
    for flag, name in (("data_option", "data_options"), ("detector_option", "train_args")):
        extra = parse_options(getattr(args, flag))
        if extra:
            base[name] = {**dict(base.get(name) or {}), **extra}
    if args.warmup_epochs is not None:
        kw["warmup_epochs"] = args.warmup_epochs
    kw.setdefault("output", f"runs/search-{args.detector}")
    return SearchConfig(base=YoloTrainConfig.from_dict(base), **kw)


def _command_line(args: argparse.Namespace) -> str:
    """The ``necklace search`` command of ``args`` (flags as given, for the report)."""
    return _command_text(args, "search")


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run ``necklace search`` for parsed ``args``; print the verdict and the files; return the exit status
    (0 done; 128 + signal number after an interruption: run the same command again to continue)."""
    import torch

    from necklace.detection.search.pipeline import search
    from necklace.detection.train import TrainingInterrupted

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be a positive int, got {args.threads}.")
        torch.set_num_threads(args.threads)
    config = search_config_from_args(args)
    try:
        result = search(config, progress=not args.quiet, command=_command_line(args))
    except TrainingInterrupted as e:
        err.write(f"necklace: {e}. Run the same command again to continue where it stopped.\n")
        return e.exit_code
    except KeyboardInterrupt:
        err.write("\nnecklace: search interrupted. Run the same command again to continue where it stopped.\n")
        return 130
    c = result.counts
    lines = [f"- {line}" for line in result.verdict.lines] if result.verdict else ["- no verdict"]
    out.write("\n".join(lines) + "\n\n")
    out.write(
        f"trials: {c['started']} started, {c['rejected']} rejected on latency, {c['trained']} trained "
        f"({c['complete']} finished, {c['pruned']} pruned), {c['reused']} reused, {c['failed']} failed\n"
    )
    for name, path in result.files.items():
        out.write(f"{name}: {path}\n")
    out.write(f"wall time: {result.wall_time / 60:.1f} min\n")
    return 0
