"""``necklace features``: per-level heatmaps of a trained model (:mod:`necklace.detection.features`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TextIO

from necklace.cli.args import _check_output_file, _UsageError

__all__ = ["add_features_parser"]


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
        raise _UsageError(f"checkpoint {args.checkpoint!r} not found (give checkpoint.pt or the run directory).")
    if args.image is not None and args.synthetic is not None:
        raise _UsageError("give an IMAGE or --synthetic N, not both.")
    if not str(args.out).lower().endswith(".png"):
        raise _UsageError(f"--out {args.out!r}: the heatmaps are written as PNG; use a .png name.")
    _check_output_file(args.out, "--out")
    model, config = load_model(path, args.device)
    target = None
    if args.image is not None:
        image = load_image(args.image)
        source = args.image
    else:
        dataset: Any = build_dataset(config, "val")
        index = 0 if args.synthetic is None else args.synthetic
        if not 0 <= index < len(dataset):
            raise _UsageError(f"--synthetic {index}: the validation data has images 0..{len(dataset) - 1}.")
        image, target = dataset[index]
        source = f"validation image {index} of {config.val_data or config.data}"
    title = f"{config.detector} + {config.neck} ({config.backbone}), {path}: {source}"
    fig = draw_feature_heatmaps(
        model, image, args.out, reduce=args.reduce, score_thresh=args.score_thresh, target=target, title=title
    )
    levels = ", ".join(f"{lv.name} (/{lv.stride}, {lv.map_size[0]}x{lv.map_size[1]})" for lv in fig.levels)
    out.write(f"wrote {fig.path}: input + {len(fig.levels)} levels: {levels}; {fig.detections} detections\n")
    return 0
