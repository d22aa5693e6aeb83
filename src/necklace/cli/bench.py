"""``necklace bench``: time necks alone or against a peer library's (``--vs``)."""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from necklace.cli.args import _PROG, _check_output_file, _progress, _table, _UsageError, _write_text
from necklace.cli.necks import _in_specs, _neck_options, _spec_flags, _with_knobs


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


def _bench_format(args: argparse.Namespace) -> str:
    if args.output:
        _check_output_file(args.output, "--output")  # before measuring anything
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
    from necklace.bench import peers
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

    if args.runtime is not None:
        if args.mode != "eager":
            raise _UsageError(f"--runtime {args.runtime} and --mode {args.mode} both say what to time; give one.")
        if args.vs is not None:
            raise _UsageError("--vs times necklace.deploy(runtime='native') with --mode deployed; drop --runtime.")
        args.mode = args.runtime
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


def add_bench_parser(sub: Any) -> None:
    """Register ``bench`` on an argparse sub-parser collection."""
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
        choices=("eager", "deployed", "torchscript"),
        default="eager",
        help="what to time: the neck as built (default), necklace.deploy() of it (the torch runtime), or a frozen "
        "TorchScript trace after deploy; deploy/compile seconds are reported apart",
    )
    p.add_argument(
        "--runtime",
        choices=("torch", "native", "onnxruntime", "openvino", "inductor", "tensorrt", "auto"),
        help="time necklace.deploy(neck, runtime=...) instead: necklace's CPU kernels (native), an ONNX Runtime or "
        "OpenVINO session, torch.compile (inductor), or auto (the fastest verified one on these inputs)",
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
