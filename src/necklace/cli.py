"""The ``necklace`` command line: a thin argparse layer over the library.

    necklace list [--format table|json]
    necklace show NAME [spec/option flags] [--png FILE] [--yaml FILE] [--json FILE]
    necklace show --graph FILE.yaml [--png FILE]
    necklace bench [NAME ...] [spec/option flags] [--image-size H W] [--batch B] [--repeats N] [--warmup N]
                   [--threads T] [--device D] [--mode M] [--format table|json|csv] [--output FILE]
    necklace bench [NAME ...] --vs PEER [--width C] [-o preset=P] [--image-size H W] [--repeats N] [--warmup N]
                   [--threads T] [--mode eager|deployed] [--format table|json|csv] [--output FILE]
    necklace train [--config FILE.yaml] [--detector D] [--neck NAME] [-o KEY=VALUE] [--data SPEC] [--steps N]
                   [--output DIR] [--resume [CHECKPOINT]] [--eval] ...   (see necklace.detection.commands)
    necklace eval --checkpoint FILE [--data SPEC] [--backend faster_coco_eval|pycocotools] [--format table|json]
    necklace compare [--necks fpn,pafpn,bifpn] [-o NECK.KEY=VALUE] [--seeds 0,1] [--steps N] [--output DIR] [--quick]
    necklace features [IMAGE | --synthetic N] --checkpoint RUN_DIR [--out heatmaps.png]
    necklace export NAME [spec/option flags] | --graph FILE.yaml  --image-size H W [--format onnx|torchscript]
                    [--dynamic] [--no-deploy] [--no-verify] [--batch B] [--opset N] [--weights FILE] --output FILE

Errors (unknown neck, bad option, bad spec, missing file) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from necklace.graph import NeckGraph
from necklace.spec import FeatureSpec

__all__ = ["build_parser", "main", "parse_options", "parse_value"]

_PROG = "necklace"
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?)$")


class _UsageError(Exception):
    """A user error the CLI reports as one line on stderr (exit status 2)."""


# ------------------------------------------------------------------------------------------------ parsing
def parse_value(text: str) -> Any:
    """Parse an option value: int, float, ``true``/``false``, ``none``, a comma list, or else a string.

    Example:
        >>> parse_value("256"), parse_value("1e-3"), parse_value("True"), parse_value("none")
        (256, 0.001, True, None)
        >>> parse_value("3,7"), parse_value("'d0'"), parse_value("nearest")
        ([3, 7], 'd0', 'nearest')
    """
    text = text.strip()
    if "," in text:
        return [parse_value(part) for part in text.split(",") if part.strip()]
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    if _NUMBER.match(text):
        try:
            return int(text)
        except ValueError:
            return float(text)
    return text


def parse_options(items: Sequence[str] | None) -> dict[str, Any]:
    """Turn ``["width=128", "levels=3,7"]`` into ``{"width": 128, "levels": [3, 7]}``.

    Example:
        >>> parse_options(["width=128", "levels=3,7", "act=relu"])
        {'width': 128, 'levels': [3, 7], 'act': 'relu'}
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise _UsageError(f"bad option {item!r}: write it as key=value, e.g. --option width=128")
        out[key] = parse_value(value)
    return out


def _int_list(flag: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise _UsageError(f"{flag} {text!r}: expected comma-separated integers, e.g. {flag} 512,1024,2048") from None
    if not values:
        raise _UsageError(f"{flag} is empty: give comma-separated integers, e.g. {flag} 512,1024,2048")
    return values


def _levels(text: str) -> list[int]:
    parts = re.split(r"[-,:]", text.strip())
    try:
        lo, hi = (int(p) for p in parts)
    except ValueError:
        raise _UsageError(f"--levels {text!r}: expected MIN-MAX, e.g. --levels 3-7") from None
    return [lo, hi]


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
    from necklace.registry import neck_info

    knobs = neck_info(name).knobs
    hint = f" Options of {name}: {', '.join(knobs)}." if knobs else ""
    return _UsageError(f"{name}: {err}.{hint}")


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


# ------------------------------------------------------------------------------------------------ output
def _write_text(path: str, text: str) -> None:
    target = Path(path)
    if not target.parent.is_dir():
        raise _UsageError(f"cannot write {path!r}: directory {str(target.parent)!r} does not exist.")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(target)


def _table(rows: list[list[str]], right: Sequence[int] = ()) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def fmt(row: list[str]) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    lines = [fmt(rows[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows[1:]]
    return "\n".join(lines)


def _fmt_params(n: int) -> str:
    return f"{n:,} ({n / 1e6:.2f} M)"


# ------------------------------------------------------------------------------------------------ list
def _cmd_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from necklace.registry import list_necks, neck_info

    infos = [neck_info(n) for n in list_necks()]
    if args.format == "json":
        data = [{"name": i.name, "summary": i.summary, "paper": i.paper, "knobs": list(i.knobs)} for i in infos]
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
        return NeckGraph.load(path)
    except KeyError as e:
        raise _UsageError(
            f"graph file {str(path)!r} lacks the key {e.args[0]!r} (needs in_specs, nodes, outputs)."
        ) from e
    except (yaml.YAMLError, ValueError, TypeError) as e:
        raise _UsageError(f"graph file {str(path)!r}: {e}") from e


def _check_suffix(path: str, suffixes: tuple[str, ...], flag: str) -> None:
    if Path(path).suffix.lower() not in suffixes:
        raise _UsageError(f"{flag} {path!r}: the file name must end in {' or '.join(suffixes)}.")


# ------------------------------------------------------------------------------------------------ bench
def _outputs_summary(shapes: Sequence[Sequence[int]]) -> str:
    chans = {s[1] for s in shapes}
    sizes = " ".join(f"{s[2]}x{s[3]}" for s in shapes)
    if len(chans) == 1:
        return f"{len(shapes)} x {chans.pop()}ch: {sizes}"
    return " ".join(f"{s[1]}@{s[2]}x{s[3]}" for s in shapes)


def _bench_table(results: Sequence[Any]) -> str:
    rows = [["neck", "image", "params (M)", "GFLOPs", "median ms", "min ms", "max ms", "outputs (C: HxW)"]]
    for r in results:
        rows.append(
            [
                r.name,
                f"{r.image_size[0]}x{r.image_size[1]}" + (f" x{r.batch}" if r.batch > 1 else ""),
                f"{r.params / 1e6:.3f}",
                f"{r.gflops:.2f}",
                f"{r.latency.median_ms:.1f}",
                f"{r.latency.min_ms:.1f}",
                f"{r.latency.max_ms:.1f}",
                _outputs_summary(r.out_shapes),
            ]
        )
    first = results[0]
    note = (
        f"{first.device}, {first.threads} threads, torch {first.torch_version}, {first.latency.repeats} timed runs "
        "each; GFLOPs = 2 x MACs of convs (torch FlopCounterMode; pooling/resize/sums not counted)"
    )
    if first.mode != "eager":
        prep = ", ".join(f"{r.name} {r.prepare_s:.1f} s" for r in results)
        note += f"; mode {first.mode}: timed after deploy/compile, which took {prep} (not in the latency)"
    return _table(rows, right=(2, 3, 4, 5, 6)) + "\n" + note


def _bench_csv(results: Sequence[Any]) -> str:
    buf = io.StringIO()
    rows = [r.to_row() for r in results]
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _progress(err: TextIO, label: str) -> Callable[[int, int], None]:
    live = err.isatty()

    def report(done: int, total: int) -> None:
        if live:
            err.write(f"\r{label}: {done}/{total} runs")
            if done == total:
                err.write("\n")
            err.flush()
        elif done == total:
            err.write(f"{label}: {done}/{total} runs done\n")
            err.flush()

    return report


def _bench_format(args: argparse.Namespace) -> str:
    if args.format is not None:
        return str(args.format)
    suffix = Path(args.output).suffix.lower() if args.output else ""
    return {".json": "json", ".csv": "csv"}.get(suffix, "table")


def _emit(args: argparse.Namespace, out: TextIO, err: TextIO, fmt: str, results: Sequence[Any], table: str) -> None:
    """Write ``results`` as ``fmt`` to ``--output`` (then the table to stdout) or to stdout."""
    if fmt == "json":
        text = json.dumps([r.to_dict() for r in results], indent=2) + "\n"
    elif fmt == "csv":
        text = _bench_csv(results)
    else:
        text = table + "\n"
    if args.output:
        _write_text(args.output, text)
        err.write(f"wrote {args.output}\n")
        if fmt != "table":
            out.write(table + "\n")
    else:
        out.write(text)


def _vs_table(results: Sequence[Any]) -> str:
    deployed = results[0].deployed
    head = ["neck", "peer", "image", "max abs diff", "GMACs", "necklace ms", "peer ms", "ratio [p25-p75]"]
    head += ["GMAC/s (nk / peer)"] + (["deployed ms (nk / peer)", "ratio deployed [p25-p75]"] if deployed else [])
    rows = [head]
    for r in results:
        gmacs = f"{r.gmacs_necklace:.3f}"
        if r.macs_necklace != r.macs_peer:
            gmacs += f" / {r.gmacs_peer:.3f}"
        row = [
            r.neck,
            r.peer,
            f"{r.image_size[0]}x{r.image_size[1]}",
            f"{r.max_abs_diff:.2g}" + ("" if r.equal else " DIFFERENT"),
            gmacs,
            f"{r.necklace_ms:.2f}",
            f"{r.peer_ms:.2f}",
            f"{r.ratio:.3f} [{r.ratio_p25:.2f}-{r.ratio_p75:.2f}]",
            f"{r.gmac_per_s_necklace:.1f} / {r.gmac_per_s_peer:.1f}",
        ]
        if deployed:
            eager = "" if r.peer_deploy else " (eager)"
            row += [
                f"{r.deployed_ms:.2f} / {r.peer_deployed_ms:.2f}{eager}",
                f"{r.ratio_deployed:.3f} [{r.ratio_deployed_p25:.2f}-{r.ratio_deployed_p75:.2f}]{eager}",
            ]
        rows.append(row)
    first = results[0]
    notes = [
        f"{first.threads} threads, torch {first.torch_version}, eval + no_grad, batch 1, {first.repeats} interleaved "
        f"rounds after {first.warmup} warm-up; ratio = median over rounds of t_necklace / t_peer (< 1: necklace "
        "faster); same weights (converted), outputs checked equal; GMACs of convs (torch FlopCounterMode)"
    ]
    notes += [f"{r.neck} vs {r.peer_module} (weights: {r.weights})" for r in results]
    if deployed:
        notes.append(
            "deployed: necklace.deploy(neck) vs the peer's own deploy form (ultralytics fuse(), mmyolo "
            "switch_to_deploy()); (eager) = the peer has none, its eager form stands in"
        )
    return _table(rows, right=(3, 4, 5, 6)) + "\n" + "\n".join(notes)


def _bench_vs(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from necklace import peers
    from necklace.registry import neck_info

    if args.batch != 1 or args.device != "cpu":
        raise _UsageError("--vs times batch 1 on the CPU; drop --batch/--device.")
    if args.mode not in ("eager", "deployed"):
        raise _UsageError(f"--vs compares the eager or the deployed neck; --mode {args.mode} is not supported.")
    names = args.names or [n for n, _ in peers.supported_pairs(args.vs)]
    for name in names:  # fail before measuring anything
        neck_info(name)
        peers.check_pair(name, args.vs)
    options = _neck_options(args)
    fmt = _bench_format(args)
    results = []
    for i, name in enumerate(names, 1):
        report = None if args.quiet else _progress(err, f"[{i}/{len(names)}] {name} vs {args.vs}")
        results.append(
            peers.compare(
                name,
                args.vs,
                image_size=tuple(args.image_size) if args.image_size else None,
                options=options,
                repeats=args.repeats,
                warmup=args.warmup,
                threads=args.threads,
                deployed=args.mode == "deployed",
                progress=report,
                in_specs=_in_specs(args, name, options),
            )
        )
    _emit(args, out, err, fmt, results, _vs_table(results))
    bad = [f"{r.neck} vs {r.peer}" for r in results if not r.ok]
    if bad:
        err.write(f"{_PROG}: outputs differ from the peer's (see max abs diff): {', '.join(bad)}\n")
        return 1
    return 0


def _cmd_bench(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from necklace.bench import bench_neck
    from necklace.registry import list_necks, neck_info

    if args.vs is not None:
        return _bench_vs(args, out, err)
    names = args.names or list_necks()
    for name in names:
        neck_info(name)  # fail before measuring anything
    options = _neck_options(args)
    fmt = _bench_format(args)
    results = []
    for i, name in enumerate(names, 1):
        in_specs = _in_specs(args, name, options)
        report = None if args.quiet else _progress(err, f"[{i}/{len(names)}] {name}")
        try:
            result = bench_neck(
                name,
                in_specs=in_specs,
                image_size=tuple(args.image_size) if args.image_size else None,
                batch=args.batch,
                options=options,
                warmup=args.warmup,
                repeats=args.repeats,
                threads=args.threads,
                progress=report,
                device=args.device,
                mode=args.mode,
            )
        except TypeError as e:
            if "argument" in str(e):
                raise _with_knobs(name, e) from e
            raise
        results.append(result)
    _emit(args, out, err, fmt, results, _bench_table(results))
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``necklace`` command (sub-commands ``list``, ``show``, ``bench``, ``train``,
    ``eval``, ``compare``, ``features``)."""
    from necklace import __version__

    parser = argparse.ArgumentParser(
        prog=_PROG, description="Object-detection necks on one graph engine: list, inspect and benchmark them."
    )
    parser.add_argument("--version", action="version", version=f"necklace {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", help="list registered necks with summary, paper and knobs")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_list)

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

    p = sub.add_parser(
        "bench",
        help="measure params, FLOPs and latency of necks on random backbone maps",
        description="Measure params, FLOPs and forward latency (eval, no_grad). Without NAME: every neck. "
        "Default inputs: ResNet-50 C3-C5 for fpn/pafpn, EfficientNet-B0 for bifpn, YOLOv8n for yolo_pafpn, "
        "YOLO11n for yolo11_pafpn; "
        "image 640 (bifpn: its preset's size, 512 for d0). With --vs PEER: build the peer library's neck and "
        "necklace's with the same configuration and weights, check the outputs equal and time both interleaved "
        "(ratio = median of per-round ratios): fpn vs torchvision; fpn, pafpn, nasfpn vs mmdet; bifpn vs effdet; "
        "yolo_pafpn, yolo11_pafpn vs ultralytics; rep_pafpn vs mmyolo (without NAME: every neck the peer has).",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="registered necks (default: all)")
    _spec_flags(p)
    p.add_argument("--image-size", nargs=2, type=int, metavar=("H", "W"), help="image size (default per neck)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--threads", type=int, help="torch threads while timing (default: torch's current)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--mode",
        choices=("eager", "deployed", "inductor", "torchscript"),
        default="eager",
        help="what to time: the neck as built (default), necklace.deploy() of it, or compiled with torch.compile "
        "(inductor) / frozen TorchScript after deploy; deploy/compile seconds are reported apart",
    )
    p.add_argument(
        "--vs",
        choices=("torchvision", "mmdet", "effdet", "ultralytics", "mmyolo"),
        metavar="PEER",
        help="compare with a peer library's neck (torchvision, mmdet, effdet, ultralytics, mmyolo): same weights, "
        "outputs checked equal, timed interleaved; options: --width, -o preset=..., -o stack_times=...; "
        "--mode deployed times necklace.deploy() vs the peer's deploy form",
    )
    p.add_argument("--format", choices=("table", "json", "csv"), help="output format (default table, or by --output)")
    p.add_argument("--output", metavar="FILE", help="write the results here (format from --format or the suffix)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=_cmd_bench)

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

    from necklace.detection.commands import (
        add_compare_parser,
        add_eval_parser,
        add_features_parser,
        add_train_parser,
    )

    add_train_parser(sub)
    add_eval_parser(sub)
    add_compare_parser(sub)
    add_features_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``necklace`` command with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    0: success; 2: a usage or user error (one line on stderr, no traceback); 1: an unexpected internal error
    (one line; ``--debug`` shows the traceback); 130: interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help / --version / argparse usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    out, err = sys.stdout, sys.stderr
    try:
        return int(args.func(args, out, err))
    except BrokenPipeError:  # `necklace show fpn | head`: stop quietly
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        err.write("\ninterrupted\n")
        return 130
    except (_UsageError, ValueError, TypeError, KeyError, OSError, ImportError) as e:
        if args.debug:
            raise
        err.write(f"{_PROG}: error: {_one_line(e)}\n")
        return 2
    except Exception as e:  # a bug rather than a user error: still no traceback unless asked for
        if args.debug:
            raise
        err.write(
            f"{_PROG}: internal error: {type(e).__name__}: {_one_line(e)} (rerun with --debug for the traceback)\n"
        )
        return 1


def _one_line(e: BaseException) -> str:
    text = str(e) if not isinstance(e, KeyError) else f"missing key {e.args[0]!r}"
    return " ".join(text.split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
