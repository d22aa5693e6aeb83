"""``necklace list``, ``show`` and ``export``: the neck commands, and the neck flags (``--in-channels``,
``--width``, ``-o``, ...) the bench command shares."""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from necklace.cli.args import (
    _check_suffix,
    _fmt_params,
    _int_list,
    _levels,
    _one_line,
    _UsageError,
    parse_options,
    parse_value,
)
from necklace.graph import NeckGraph
from necklace.spec import FeatureSpec


def _neck_options(args: argparse.Namespace) -> dict[str, Any]:
    options = parse_options(args.option)
    if args.width is not None:
        options["width"] = parse_value(args.width)
    if args.levels is not None:
        options["levels"] = _levels(args.levels)
    return options


def _in_specs(args: argparse.Namespace, name: str, options: dict[str, Any]) -> tuple[FeatureSpec, ...] | None:
    """``in_specs`` from ``--in-channels``/``--in-strides``; ``None`` means the neck's defaults."""
    if args.in_channels is None and args.in_strides is None:
        return None
    from necklace.bench import default_in_specs

    defaults = default_in_specs(name, options)
    chans = _int_list("--in-channels", args.in_channels) if args.in_channels is not None else None
    strides = _int_list("--in-strides", args.in_strides) if args.in_strides is not None else None
    if chans is None:
        if strides is not None and len(strides) != len(defaults):
            raise _UsageError(
                f"--in-strides gives {len(strides)} levels but the default channels for {name} have "
                f"{len(defaults)}; pass --in-channels with one value per stride."
            )
        chans = [s.channels for s in defaults]
    if strides is None:
        first = defaults[0].stride if len(chans) == len(defaults) else 8
        strides = [first * 2**i for i in range(len(chans))]
    if len(chans) != len(strides):
        raise _UsageError(
            f"--in-channels has {len(chans)} values but --in-strides has {len(strides)}; give one channel "
            "count per stride, finest first."
        )
    return tuple(FeatureSpec(c, s) for c, s in zip(chans, strides, strict=True))


def _with_knobs(name: str, err: TypeError) -> _UsageError:
    """A builder's ``TypeError`` as a usage error (``build_neck``'s own message lists the valid options)."""
    return _UsageError(f"{name}: {err}")


def _build(name: str, in_specs: Sequence[FeatureSpec] | None, options: dict[str, Any]) -> Any:
    from necklace.bench import default_in_specs
    from necklace.registry import build_neck

    specs = in_specs if in_specs is not None else default_in_specs(name, options)
    try:
        return build_neck(name, specs, **options)
    except TypeError as err:
        if "argument" in str(err):
            raise _with_knobs(name, err) from err
        raise


# ------------------------------------------------------------------------------------------------ list
def _cmd_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from necklace.registry import list_necks, neck_info

    infos = [neck_info(n) for n in list_necks()]
    if args.format == "json":
        data = [
            {
                "name": i.name,
                "summary": i.summary,
                "paper": i.paper,
                "knobs": list(i.knobs),
                "options": [o.describe() for o in i.options],  # typed: name, type, default, choices / range
            }
            for i in infos
        ]
        out.write(json.dumps(data, indent=2) + "\n")
        return 0
    width = max(len(i.name) for i in infos)
    pad = " " * (width + 2)
    blocks = []
    for i in infos:
        lines = [f"{i.name.ljust(width)}  {i.summary}", f"{pad}paper: {i.paper}"]
        if i.knobs:
            knobs = textwrap.fill(
                "knobs: " + ", ".join(i.knobs), width=110, initial_indent=pad, subsequent_indent=pad + "       "
            )
            lines.append(knobs)
        blocks.append("\n".join(lines))
    out.write(f"{len(infos)} necks (necklace show NAME for the graph, necklace bench NAME to measure)\n\n")
    out.write("\n\n".join(blocks) + "\n")
    return 0


# ------------------------------------------------------------------------------------------------ show
def _cmd_show(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from necklace.bench import count_params
    from necklace.graph import GraphNeck

    if (args.name is None) == (args.graph is None):
        raise _UsageError("give a neck NAME (see `necklace list`) or --graph FILE.yaml, not both and not neither.")
    for flag, value, suffixes in (
        ("--yaml", args.yaml, (".yaml", ".yml")),
        ("--json", args.json, (".json",)),
        ("--png", args.png, (".png", ".svg", ".pdf")),
    ):
        if value is not None:  # check output paths before any work, so a typo costs nothing
            _check_suffix(value, suffixes, flag)
            if not Path(value).parent.is_dir():
                raise _UsageError(f"cannot write {value!r}: directory {str(Path(value).parent)!r} does not exist.")
    if args.graph is not None:
        if args.in_channels or args.in_strides or args.option or args.width or args.levels:
            raise _UsageError("--graph FILE already fixes in_specs and options; drop --in-*/--option/--width/--levels.")
        path = Path(args.graph)
        if not path.is_file():
            raise _UsageError(f"graph file {args.graph!r} not found.")
        neck: Any = GraphNeck(_load_graph(path))
        title = path.name
        header = f"graph file {args.graph}"
    else:
        from necklace.registry import neck_info

        info = neck_info(args.name)
        options = _neck_options(args)
        neck = _build(args.name, _in_specs(args, args.name, options), options)
        title = args.name + (" " + " ".join(f"{k}={v}" for k, v in options.items()) if options else "")
        header = f"{info.name}: {info.summary}\npaper: {info.paper}"
        if options:
            header += "\noptions: " + ", ".join(f"{k}={v!r}" for k, v in options.items())
    graph = neck.graph if isinstance(getattr(neck, "graph", None), NeckGraph) else None
    in_specs = getattr(neck, "in_specs", ())
    out.write(header + "\n")
    if in_specs:
        out.write("in_specs: " + ", ".join(f"{s.channels}ch /{s.stride}" for s in in_specs) + "\n")
    out.write("\n")
    if graph is not None:
        out.write(graph.describe() + "\n")
    else:
        out.write(repr(neck) + "\n")
    out.write(f"params: {_fmt_params(count_params(neck))}\n")
    if args.png or args.yaml or args.json:
        if graph is None:
            raise _UsageError(f"{title} is not built from a NeckGraph, so it has no graph to draw or save.")
        _write_graph_files(args, graph, title, err)
    return 0


def _write_graph_files(args: argparse.Namespace, graph: NeckGraph, title: str, err: TextIO) -> None:
    if args.yaml:
        graph.save(args.yaml)
        err.write(f"wrote {args.yaml}\n")
    if args.json:
        graph.save(args.json)
        err.write(f"wrote {args.json}\n")
    if args.png:
        from necklace.viz import draw_graph

        draw_graph(graph, args.png, title=title)
        err.write(f"wrote {args.png}\n")


def _load_graph(path: Path) -> Any:
    import yaml

    try:
        return NeckGraph.load(path)  # (its errors name the file and the fix)
    except (yaml.YAMLError, ValueError, TypeError) as e:
        raise _UsageError(str(e)) from e


# ------------------------------------------------------------------------------------------------ export
def _export_format(args: argparse.Namespace) -> str:
    from necklace.export import EXPORT_FORMATS

    if args.format is not None:
        if args.format not in EXPORT_FORMATS:
            raise _UsageError(f"unknown --format {args.format!r}; choose one of {', '.join(EXPORT_FORMATS)}.")
        return str(args.format)
    suffix = Path(args.output).suffix.lower()
    for fmt, suffixes in EXPORT_FORMATS.items():
        if suffix in suffixes:
            return fmt
    raise _UsageError(
        f"cannot tell the format of --output {args.output!r} from its suffix; pass --format onnx or --format "
        "torchscript (or name the file .onnx / .pt)."
    )


def _cmd_export(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from necklace.export import ExportError, export_model
    from necklace.graph import GraphNeck

    fmt = _export_format(args)
    if args.opset is not None and fmt != "onnx":
        raise _UsageError("--opset applies to --format onnx only.")
    target = Path(args.output)
    if not target.parent.is_dir():  # before building anything
        raise _UsageError(f"cannot write {args.output!r}: directory {str(target.parent)!r} does not exist.")
    if (args.name is None) == (args.graph is None):
        raise _UsageError("give a neck NAME (see `necklace list`) or --graph FILE.yaml, not both and not neither.")
    if args.graph is not None:
        if args.in_channels or args.in_strides or args.option or args.width or args.levels:
            raise _UsageError("--graph FILE already fixes in_specs and options; drop --in-*/--option/--width/--levels.")
        path = Path(args.graph)
        if not path.is_file():
            raise _UsageError(f"graph file {args.graph!r} not found.")
        neck: Any = GraphNeck(_load_graph(path))
    else:
        options = _neck_options(args)
        neck = _build(args.name, _in_specs(args, args.name, options), options)
    if args.weights is not None:
        import torch

        if not Path(args.weights).is_file():
            raise _UsageError(f"weights file {args.weights!r} not found.")
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
        try:
            neck.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        except RuntimeError as e:
            raise _UsageError(f"--weights {args.weights!r} do not fit this neck: {_one_line(e)[:300]}") from e
    neck.eval()
    extra = {"opset": args.opset} if args.opset is not None else {}
    try:
        report = export_model(
            neck,
            args.output,
            format=fmt,
            image_size=tuple(args.image_size),
            batch=args.batch,
            dynamic=args.dynamic,
            deploy_first=not args.no_deploy,
            verify=not args.no_verify,
            **extra,
        )
    except ExportError as e:
        raise _UsageError(str(e)) from e
    out.write(report.describe() + "\n")
    return 0


# ------------------------------------------------------------------------------------------------ parser
def _spec_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backbone and neck options")
    g.add_argument("--in-channels", metavar="C,C,C", help="backbone channels, finest first (e.g. 512,1024,2048)")
    g.add_argument("--in-strides", metavar="S,S,S", help="backbone strides, finest first (default 8,16,32)")
    g.add_argument("--levels", metavar="MIN-MAX", help="output levels, e.g. 3-7 (P3..P7)")
    g.add_argument("--width", metavar="C", help="neck width (channels), or one per level: 64,128,256")
    g.add_argument(
        "--option",
        "-o",
        action="append",
        metavar="KEY=VALUE",
        help="any builder option (repeatable): ints, floats, true/false, none, comma lists; see `necklace list`",
    )


def add_list_parser(sub: Any) -> None:
    """Register ``list`` on an argparse sub-parser collection."""
    p = sub.add_parser("list", help="list registered necks with summary, paper and knobs")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_list)


def add_show_parser(sub: Any) -> None:
    """Register ``show`` on an argparse sub-parser collection."""
    p = sub.add_parser(
        "show",
        help="print a neck's node graph and parameter count; draw it or save it as YAML/JSON",
        description="Print a neck's node graph (level, node, inputs with their resize, fusion, block).",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="registered neck (see `necklace list`)")
    p.add_argument("--graph", metavar="FILE", help="show a graph file (YAML/JSON, see NeckGraph.save) instead")
    _spec_flags(p)
    p.add_argument("--png", metavar="FILE", help="draw the graph (.png, .svg or .pdf; needs matplotlib)")
    p.add_argument("--yaml", metavar="FILE", help="save the graph as YAML (loadable with --graph / NeckGraph.load)")
    p.add_argument("--json", metavar="FILE", help="save the graph as JSON")
    p.set_defaults(func=_cmd_show)


def add_export_parser(sub: Any) -> None:
    """Register ``export`` on an argparse sub-parser collection."""
    p = sub.add_parser(
        "export",
        help="export a neck to ONNX or TorchScript and check the file against PyTorch",
        description="Export a neck (random weights unless --weights) to ONNX (torch.export + onnxruntime check) or "
        "TorchScript (torch.jit.trace). Inputs are named c<level>, outputs p<level>; --dynamic makes batch, height "
        "and width dynamic and checks the file at a second size too.",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="registered neck (see `necklace list`)")
    p.add_argument("--graph", metavar="FILE", help="export a graph file (YAML/JSON, see NeckGraph.save) instead")
    _spec_flags(p)
    p.add_argument("--format", help="onnx or torchscript (default: from the --output suffix: .onnx, .pt/.ts)")
    p.add_argument("--image-size", nargs=2, type=int, required=True, metavar=("H", "W"), help="example image size")
    p.add_argument("--batch", type=int, help="example batch (default 2 with --dynamic, else 1)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch/height/width (checked at a second size)")
    p.add_argument("--no-deploy", action="store_true", help="export as is: no BN folding / re-parameterisation")
    p.add_argument("--no-verify", action="store_true", help="do not run the exported file to compare outputs")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--weights", metavar="FILE", help="a state dict (torch.save) to load into the neck first")
    p.add_argument("--output", required=True, metavar="FILE", help="file to write (.onnx, .pt)")
    p.set_defaults(func=_cmd_export)
