"""``python -m necklace.integrations.ultralytics``: build a YOLO with a necklace neck, optionally train / export it.

    python -m necklace.integrations.ultralytics MODEL NECK [--levels LO HI] [-o KEY=VALUE ...]
        [--data DATA.yaml [--epochs N] [--imgsz N] [--batch N] [--seed N] [--device D] [--project DIR] [--name N]]
        [--export FORMAT] [--save FILE.pt]

MODEL is an Ultralytics model YAML name (``yolov8n.yaml``, ``yolo11n.yaml``: random weights) or a local ``.pt``;
NECK a registered necklace neck or a graph YAML/JSON file; ``-o`` sets neck options (``-o width=64``). Without
``--data`` it prints the model's layers and neck; with it, it trains with Ultralytics' trainer and prints the final
metrics as JSON. Errors print one line on stderr (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m necklace.integrations.ultralytics",
        description="Put a necklace neck into an Ultralytics YOLO detector; optionally train and export it.",
    )
    p.add_argument("model", help="Ultralytics model YAML (yolov8n.yaml, yolo11s.yaml) or a local .pt checkpoint")
    p.add_argument("neck", help="registered necklace neck (necklace list) or a neck graph YAML/JSON file")
    p.add_argument("--levels", nargs=2, type=int, metavar=("LO", "HI"), help="pyramid levels, e.g. 2 5 for P2-P5")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="neck option")
    p.add_argument("--nc", type=int, help="number of classes (training takes it from the data)")
    p.add_argument("--data", help="Ultralytics data.yaml: train on it")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, 0, ... (Ultralytics' device argument)")
    p.add_argument("--project", help="runs directory (Ultralytics' project argument)")
    p.add_argument("--name", help="run name (Ultralytics' name argument)")
    p.add_argument("--export", metavar="FORMAT", help="export after building / training: onnx, torchscript, openvino")
    p.add_argument("--save", metavar="FILE", help="save the model as an Ultralytics checkpoint")
    return p


def _options(pairs: Sequence[str]) -> dict[str, Any]:
    from necklace.cli import parse_value

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"-o expects KEY=VALUE, got {pair!r} (e.g. -o width=64).")
        out[key.strip()] = parse_value(value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line (``argv`` without the program name); returns the exit status.

    Example:
        >>> main(["yolov8n.yaml", "fpn", "-o", "width=32"])  # doctest: +ELLIPSIS
        model: yolov8n-necklace-fpn.yaml ...
        0
    """
    args = _parser().parse_args(argv)
    try:
        from necklace.integrations.ultralytics import build_yolo, train_yolo

        levels = tuple(args.levels) if args.levels else None
        model = build_yolo(args.model, args.neck, levels=levels, nc=args.nc, **_options(args.option))
        m: Any = model.model
        layer = m.neck_layer
        print(
            f"model: {m.yaml['yaml_file']}  neck: {layer.type} reads layers {layer.f} "
            f"{[(s.channels, s.stride) for s in layer.in_specs]} -> Detect on "
            f"{[(s.channels, s.stride) for s in layer.out_specs]} (channels, stride)"
        )
        if args.data:
            run = train_yolo(
                model,
                args.data,
                epochs=args.epochs,
                imgsz=args.imgsz,
                batch=args.batch,
                seed=args.seed,
                device=args.device,
                project=args.project,
                name=args.name,
            )
            print(json.dumps({"metrics": run.metrics, "best": str(run.best), "save_dir": str(run.save_dir)}, indent=2))
        else:
            m.info(verbose=True)
        if args.save:
            model.save(args.save)
            print(f"saved {args.save}")
        if args.export:
            print(f"exported {model.export(format=args.export, imgsz=args.imgsz)}")
    except (ValueError, TypeError, ImportError, FileNotFoundError) as e:
        print(f"necklace: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
