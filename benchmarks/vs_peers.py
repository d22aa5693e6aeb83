"""necklace necks vs the peers' necks: same configuration, same weights, equal outputs, interleaved timing.

For every config the peer's neck is built with random weights, the necklace neck is built with the options that
reproduce it and loaded with the peer's weights through necklace's converters (``necklace.convert``; the
ultralytics neck is mapped key by key by ``necklace.bench.peers.ultralytics_to_necklace``), the outputs are checked
equal (max abs diff printed), then both are timed interleaved in this process together with the roofline conv.
The pairs (peer builders, converted weights, equality checks, the peers' deploy forms) are those of
``necklace.bench.peers``, which ``necklace bench NAME --vs PEER`` runs one pair at a time; this script groups them into
configs and adds the roofline, train-mode timing and memory:

- eval: ``eval()`` + ``no_grad`` forward, float32, batch 1, ``--threads`` threads; median of ``--repeats``;
  ``ratio`` = median over rounds of ``t_necklace / t_peer`` (< 1: necklace is faster);
- GMACs (torch's FlopCounterMode / 2: convs and matmuls only), achieved GMAC/s = GMACs / median time, and the
  share of the roofline: GMAC/s of one 3x3 conv 256->256 at 80x80, timed in the same interleaved rounds;
- train: ``train()`` forward + backward of ``sum(out.sum())`` (inputs require grad, like backbone maps in a
  detector; grads reset to None before each step), timed interleaved the same way, after checking that both
  give the same gradients w.r.t. the input maps;
- memory: peak bytes of new tensors held by torch's CPU allocator during one train step and one eval forward
  (torch.profiler allocation events; see ``common.peak_memory_bytes``).

A peer that cannot be imported is skipped with a note; a pair whose outputs differ is reported and not timed
(exit status 1).

``--deployed [native|torch|auto|onnxruntime|openvino]`` also times, in the same interleaved eval rounds,
``necklace.deploy(neck, runtime=...)``
and the peer's own deployment form where the peer has one, each checked equal first (the necklace one against
the peer's outputs, the peer's against its eager outputs, same tolerance):

- ultralytics: ``BaseModel.fuse()`` of ultralytics itself run on the neck's layers (``fuse_conv_and_bn`` into
  every ``Conv``, whose ``forward`` becomes ``forward_fuse``), as ``DetectionModel.fuse()`` does at inference;
- mmyolo: ``switch_to_deploy()`` on every ``RepVGGBlock`` (what ``mmyolo.utils.switch_to_deploy`` does; its
  ``ConvModule`` BNs stay unfolded, as in mmyolo's own deploy);
- torchvision, mmdet (FPN, PAFPN, NAS-FPN), effdet have no deployment form: the necklace deployed neck is then
  compared with the peer's eager form (noted in the results).

JSON ``eval_deployed``: ``necklace_deployed`` and ``peer_deployed`` (time stats; the eager peer's where it has
no deploy form), ``ratio_deployed_over_peer`` (vs the eager peer), ``ratio_deployed_over_peer_deployed`` (the
issue target: necklace deployed / peer deployed), ``ratio_peer_deployed_over_peer``, ``peer_deploy`` (form,
params, MACs, equality with the eager peer, or the note why the eager form stands in).

Configs beyond the defaults (run them explicitly with ``--configs``):

- ``yolov6n``: necklace ``rep_pafpn`` preset n vs mmyolo ``YOLOv6RepPAFPN`` as in mmyolo's yolov6_n config
  (deepen 0.33, widen 0.25, in 256/512/1024 and out 128/256/512 before widening, RepVGGBlock), 640x640, P3-P5
  64/128/256 in; sizes must be divisible by 32 (mmyolo upsamples x2 then concatenates);
- ``nasfpn``: necklace ``nasfpn`` vs mmdet ``NASFPN`` as in ``retinanet_r50_nasfpn_crop640-50e_coco.py``
  (C2-C5 256/512/1024/2048 in, start_level 1, 256 wide, 5 outputs P3-P7, stack_times 7, BN), 640x640; sizes
  must be divisible by 128 (mmdet floors odd P6/P7 sizes, necklace ceils them). Heavy (~50 GMACs, ~0.6 s a
  forward on 2 cores): use small ``--repeats``/``--train-repeats``.

Run (from the repository root)::

    .venv/bin/python benchmarks/vs_peers.py --configs r50_fpn,r50_pafpn,bifpn_d0,yolov8n,yolov6n --repeats 20 \
        --deployed native --compile inductor
    .venv/bin/python benchmarks/vs_peers.py --configs nasfpn --repeats 10 --train-repeats 5 --deployed native --merge
    .venv/bin/python benchmarks/vs_peers.py --list

Writes ``<out>/vs_peers.json`` and the ``vs_peers`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: make the sibling module importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common  # type: ignore[import-not-found]
    from vs_peers_cases import CONFIGS, Case  # type: ignore[import-not-found]
    from vs_peers_report import _mb, markdown  # type: ignore[import-not-found]
else:  # imported as benchmarks.vs_peers
    from benchmarks import common  # type: ignore[no-redef]
    from benchmarks.vs_peers_cases import CONFIGS, Case  # type: ignore[no-redef]
    from benchmarks.vs_peers_report import _mb, markdown  # type: ignore[no-redef]

from necklace import CompileReport, compile_model
from necklace.bench import (
    count_call_flops,
    count_params,
    peers,
    random_features,
    train_step,
)
from necklace.bench.peers import DEPLOY_TOL, NO_PEER_DEPLOY, TOL, Pair

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIGS = ("r50_fpn", "r50_pafpn", "bifpn_d0", "yolov8n")

Call = Callable[[list[Tensor]], list[Tensor]]


# ----------------------------------------------------------------------------------------------- measuring
def count_macs(fn: Callable[[], object]) -> int:
    return count_call_flops(fn) // 2


_eval_call = peers.eval_call  # (module, call, feats) -> no-argument callable; also used by profile_ops.py


#: --deployed values: a runtime of ``necklace.deploy`` (``auto``: the fastest verified runtime on the benchmark inputs)
RUNTIMES = ("native", "torch", "auto", "onnxruntime", "openvino")


_bind = peers.bind
run_pair_parity = peers.parity


def _train_step(module: nn.Module, call: Call | None, feats: list[Tensor]) -> Callable[[], object]:
    """One forward + backward of ``sum(out.sum())`` in train mode; grads are set to None first."""
    return train_step(module, feats, call)


def _deployed(
    active: list[tuple[int, Pair, dict[str, Any]]],
    feats: list[Tensor],
    log: Callable[[str], None],
    runtime: str,
) -> dict[int, nn.Module]:
    """``necklace.deploy`` copies of the necklace necks whose outputs still equal the peer's (others noted)."""
    out: dict[int, nn.Module] = {}
    for i, pair, row in active:
        try:
            module, eq = peers.deploy_necklace(pair, feats, runtime=runtime)
        except Exception as e:  # deploy is optional here: report, keep timing the rest
            row["deployed_note"] = f"necklace.deploy failed: {type(e).__name__}: {e}"
            log(f"  [deploy] {pair.peer}: {row['deployed_note']}")
            continue
        diff, rel = eq["max_abs_diff"], eq["max_abs_diff"] / max(1.0, eq["max_abs_output"])
        row["_deployed_equality"] = {
            "max_abs_diff": diff,
            "max_rel_diff": rel,
            "tolerance": eq["tolerance"],
            "equal": eq["equal"],
        }
        log(f"  deployed necklace vs {pair.peer}: max abs diff {diff:.3g} (relative {rel:.2g})")
        if eq["equal"]:
            out[i] = module
        else:
            row["deployed_note"] = (
                f"deployed outputs differ from the peer's (max abs diff {diff:.3g}, relative "
                f"{rel:.2g} > {DEPLOY_TOL:g}); not timed"
            )
            row.pop("_deployed_equality")
    return out


def _peer_deployed(
    active: list[tuple[int, Pair, dict[str, Any]]],
    feats: list[Tensor],
    log: Callable[[str], None],
) -> dict[int, nn.Module]:
    """The peers' own deployment forms (on copies) whose outputs equal the peer's eager outputs.

    Every row gets ``_peer_deploy`` (popped into ``eval_deployed.peer_deploy`` after timing): the form, its
    params/MACs and equality, or a note saying why the eager form stands in (none, failed, or different).
    """
    out: dict[int, nn.Module] = {}
    for i, pair, row in active:
        if pair.peer_deploy is None:
            row["_peer_deploy"] = {"what": None, "has_deploy_form": False, "note": NO_PEER_DEPLOY}
            continue
        info: dict[str, Any] = {"what": pair.peer_deploy_what, "has_deploy_form": True}
        row["_peer_deploy"] = info
        try:
            module, eq = peers.deploy_peer(pair, feats)
        except Exception as e:  # report, time the necklace deployed neck against the eager peer instead
            info["note"] = f"peer deploy form failed ({type(e).__name__}: {e}): compared with its eager form"
            log(f"  [peer deploy] {pair.peer}: {info['note']}")
            continue
        info["equality_vs_peer_eager"] = eq
        diff = eq["max_abs_diff"]
        log(f"  peer deployed ({pair.peer_deploy_what.split(':')[0]}) vs its eager form: max abs diff {diff:.3g}")
        if not eq["equal"]:
            info["note"] = (
                f"peer deploy form's outputs differ from its eager ones (max abs diff {diff:.3g}): compared with "
                "its eager form"
            )
            continue
        assert pair.call is not None
        info["params"] = count_params(module)
        info["macs"] = count_macs(functools.partial(pair.call, module, list(feats)))
        out[i] = module
    return out


def _run_train(
    active: list[tuple[int, Pair, dict[str, Any]]],
    feats: list[Tensor],
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> None:
    """Train-mode timing, input-gradient check and peak memory of every active pair (fills ``row["train"]``,
    ``row["memory"]``); forward + backward on copies (BN running stats move), interleaved like eval."""

    train_fns: dict[str, Callable[[], object]] = {}
    feats_t = [f.clone().requires_grad_(True) for f in feats]
    steps: dict[str, Callable[[], object]] = {}
    for i, pair, _ in active:
        assert pair.necklace is not None and pair.peer_module is not None and pair.call is not None
        nk_m = copy.deepcopy(pair.necklace).train()
        pe_m = copy.deepcopy(pair.peer_module)
        pe_m.train()  # not chained: mmyolo's necks override train() and return None
        c = pair.call
        train_fns[f"necklace{i}"] = _train_step(nk_m, None, feats_t)
        train_fns[f"peer{i}"] = _train_step(pe_m, functools.partial(c, pe_m), feats_t)
        steps[f"necklace{i}"] = train_fns[f"necklace{i}"]
        steps[f"peer{i}"] = train_fns[f"peer{i}"]
    grad_check: dict[int, dict[str, Any]] = {}
    for i, pair, _ in active:  # same train-mode function: compare the gradients w.r.t. the input maps
        steps[f"necklace{i}"]()
        g_nk = [f.grad.clone() for f in feats_t if f.grad is not None]
        steps[f"peer{i}"]()
        g_pe = [f.grad.clone() for f in feats_t if f.grad is not None]
        diff, scale = peers.max_abs_diff(g_nk, g_pe)
        grad_check[i] = {"input_grad_max_abs_diff": diff, "input_grad_max_abs": scale}
        log(f"  train-mode input gradients vs {pair.peer}: max abs diff {diff:.3g} (max {scale:.3g})")
    t0 = time.perf_counter()
    ttimes = common.interleaved(train_fns, repeats=args.train_repeats or args.repeats, warmup=args.warmup)
    log(f"  (train timing {time.perf_counter() - t0:.1f} s)")
    for i, pair, row in active:
        assert pair.necklace is not None and pair.peer_module is not None
        nk, pe = common.stats_ms(ttimes[f"necklace{i}"]), common.stats_ms(ttimes[f"peer{i}"])
        ratio = common.ratio_stats(ttimes[f"necklace{i}"], ttimes[f"peer{i}"])
        row["train"] = {"necklace": nk, "peer": pe, "ratio_necklace_over_peer": ratio, **grad_check[i]}
        mem = {
            "train_step": {
                "necklace": common.peak_memory_bytes(steps[f"necklace{i}"]),
                "peer": common.peak_memory_bytes(steps[f"peer{i}"]),
            },
            "eval_forward": {
                "necklace": common.peak_memory_bytes(_eval_call(pair.necklace, None, feats)),
                "peer": common.peak_memory_bytes(_eval_call(pair.peer_module, _bind(pair), feats)),
            },
        }
        row["memory"] = mem
        log(
            f"  train vs {pair.peer}: necklace {nk['median_ms']:.2f} ms, peer {pe['median_ms']:.2f} ms, "
            f"ratio {ratio['median']:.3f}; peak MB train {_mb(mem['train_step']['necklace']['peak_bytes']):.1f}"
            f" / {_mb(mem['train_step']['peer']['peak_bytes']):.1f}, eval "
            f"{_mb(mem['eval_forward']['necklace']['peak_bytes']):.1f} / "
            f"{_mb(mem['eval_forward']['peer']['peak_bytes']):.1f}"
        )


def run_case(case: Case, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    feats = random_features(case.in_specs, case.image_size, batch=1, seed=0)
    entry: dict[str, Any] = {
        "config": case.name,
        "title": case.title,
        "image_size": list(case.image_size),
        "input_shapes": [list(f.shape) for f in feats],
        "notes": list(case.notes),
        "measured_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "settings": {
            "threads": args.threads,
            "repeats": args.repeats,
            "train_repeats": args.train_repeats or args.repeats,
            "warmup": args.warmup,
        },
        "pairs": [],
    }
    log(f"\n== {case.name}: {case.title}, image {case.image_size[0]}x{case.image_size[1]}")
    active: list[tuple[int, Pair, dict[str, Any]]] = []
    for i, pair in enumerate(case.pairs):
        row: dict[str, Any] = {"peer": pair.peer, "weights": pair.weights}
        entry["pairs"].append(row)
        if pair.skipped:
            row.update(status="skipped", note=pair.skipped)
            log(f"  [skip] {pair.peer}: {pair.skipped}")
            continue
        eq = run_pair_parity(pair, feats)
        row["equality"] = eq
        log(
            f"  equality vs {pair.peer}: max abs diff {eq['max_abs_diff']:.3g} "
            f"(output max {eq['max_abs_output']:.3g}, tolerance {eq['tolerance']:.3g}) -> "
            f"{'EQUAL' if eq['equal'] else 'DIFFERENT'}"
        )
        if not eq["equal"]:
            row.update(status="mismatch", note="outputs differ with converted weights; not timed")
            continue
        assert pair.necklace is not None and pair.peer_module is not None and pair.call is not None
        peer_call = pair.call
        peer_mod = pair.peer_module
        row["status"] = "ok"
        row["params"] = {"necklace": count_params(pair.necklace), "peer": count_params(peer_mod)}
        row["macs"] = {
            "necklace": count_macs(_eval_call(pair.necklace, None, feats)),
            "peer": count_macs(functools.partial(peer_call, peer_mod, list(feats))),
        }
        active.append((i, pair, row))
    if not active:
        return entry

    # eval: every pair's two necks + the roofline conv, one interleaved series
    roof_fn, roof_macs = common.roofline_case(args.roofline_hw)
    fns: dict[str, Callable[[], object]] = {}
    for i, pair, _ in active:
        assert pair.necklace is not None and pair.peer_module is not None
        fns[f"necklace{i}"] = _eval_call(pair.necklace, None, feats)
        fns[f"peer{i}"] = _eval_call(pair.peer_module, _bind(pair), feats)
    deployed = _deployed(active, feats, log, args.deployed) if args.deployed else {}
    for i, module in deployed.items():
        fns[f"deployed{i}"] = _eval_call(module, None, feats)
    peer_deployed = _peer_deployed(active, feats, log) if args.deployed else {}
    for i, module in peer_deployed.items():
        c = case.pairs[i].call
        assert c is not None
        fns[f"peer_deployed{i}"] = _eval_call(module, functools.partial(c, module), feats)
    fns["roofline"] = roof_fn
    t0 = time.perf_counter()
    faults: dict[str, int] = {}
    # a deployed neck may run on another thread pool (native OpenMP, ONNX Runtime, OpenVINO), whose workers keep the
    # cores busy after a call: each timed call then comes right after an untimed call of the same callable
    settle = 1 if args.deployed else 0
    times = common.interleaved(fns, repeats=args.repeats, warmup=args.warmup, faults=faults, settle=settle)
    entry["minor_faults_per_call"] = {k: v / args.repeats for k, v in faults.items()}
    roof = common.stats_ms(times["roofline"])
    roof_gmac_s = roof_macs / 1e9 / (roof["median_ms"] / 1e3)
    entry["roofline"] = {
        "what": f"3x3 conv {common.ROOFLINE_CHANNELS}->{common.ROOFLINE_CHANNELS} at {args.roofline_hw}x"
        f"{args.roofline_hw}, batch 1, no_grad",
        "gmacs": roof_macs / 1e9,
        "gmac_per_s": roof_gmac_s,
        **roof,
    }
    elapsed = time.perf_counter() - t0
    log(f"  roofline: {roof['median_ms']:.2f} ms -> {roof_gmac_s:.1f} GMAC/s  (eval timing {elapsed:.1f} s)")
    for i, pair, row in active:
        nk, pe = common.stats_ms(times[f"necklace{i}"]), common.stats_ms(times[f"peer{i}"])
        ratio = common.ratio_stats(times[f"necklace{i}"], times[f"peer{i}"])
        gmac_s = {
            "necklace": row["macs"]["necklace"] / 1e9 / (nk["median_ms"] / 1e3),
            "peer": row["macs"]["peer"] / 1e9 / (pe["median_ms"] / 1e3),
        }
        row["eval"] = {
            "necklace": nk,
            "peer": pe,
            "ratio_necklace_over_peer": ratio,
            "gmac_per_s": gmac_s,
            "roofline_share": {k: v / roof_gmac_s for k, v in gmac_s.items()},
        }
        log(
            f"  eval  vs {pair.peer}: necklace {nk['median_ms']:.2f} ms, peer {pe['median_ms']:.2f} ms, "
            f"ratio {ratio['median']:.3f} [{ratio['p25']:.3f}-{ratio['p75']:.3f}]"
        )
        if i in deployed or i in peer_deployed:
            ed: dict[str, Any] = {}
            # the peer's deployed form, or its eager form where it has none (or that failed its check)
            peer_dep_key = f"peer_deployed{i}" if i in peer_deployed else f"peer{i}"
            if i in deployed:
                dep = common.stats_ms(times[f"deployed{i}"])
                dratio = common.ratio_stats(times[f"deployed{i}"], times[f"peer{i}"])
                report = deployed[i].deploy_report
                ed.update(
                    what=f"necklace.deploy(neck, runtime={args.deployed!r}"
                    + (
                        ""
                        if args.deployed != "auto"
                        else f" -> {report.runtime}; deploy timed "
                        + ", ".join(f"{k} {v:.2f} ms" for k, v in (report.latency_ms or {}).items())
                    )
                    + "): BN folded, "
                    "fusion weights frozen",
                    runtime=report.runtime,
                    necklace_deployed=dep,
                    ratio_deployed_over_peer=dratio,
                    equality_vs_peer=row.pop("_deployed_equality"),
                    ratio_deployed_over_peer_deployed=common.ratio_stats(times[f"deployed{i}"], times[peer_dep_key]),
                )
                log(f"        necklace.deploy(): {dep['median_ms']:.2f} ms, ratio vs peer {dratio['median']:.3f}")
            ed["peer_deployed"] = common.stats_ms(times[peer_dep_key])
            ed["ratio_peer_deployed_over_peer"] = common.ratio_stats(times[peer_dep_key], times[f"peer{i}"])
            ed["peer_deploy"] = row.pop("_peer_deploy")
            row["eval_deployed"] = ed
            if i in peer_deployed:
                log(
                    f"        peer deployed: {ed['peer_deployed']['median_ms']:.2f} ms, ratio vs peer eager "
                    f"{ed['ratio_peer_deployed_over_peer']['median']:.3f}"
                )
            if "ratio_deployed_over_peer_deployed" in ed:
                log(
                    f"        ratio necklace deployed / peer deployed "
                    f"{ed['ratio_deployed_over_peer_deployed']['median']:.3f}"
                    + ("" if i in peer_deployed else f" ({ed['peer_deploy']['note']})")
                )
        elif "_peer_deploy" in row:  # neither deployed form was timed
            row["peer_deploy_note"] = row.pop("_peer_deploy").get("note", "")

    if args.compile:
        _run_compiled(active, feats, args, log, peer_deployed)

    # train: forward + backward, on copies (BN running stats move), interleaved the same way
    if not args.no_train:
        try:
            _run_train(active, feats, args, log)
        except Exception as e:  # e.g. BN in train mode on a 1x1 map at batch 1: keep the eval results
            traceback.print_exc()
            note = f"train step failed, not timed ({type(e).__name__}: {e})"
            entry["notes"].append(note)
            for _, _, row in active:
                row.pop("train", None)
                row.pop("memory", None)
                row["train_note"] = note

    return entry


def _run_compiled(
    active: list[tuple[int, Pair, dict[str, Any]]],
    feats: list[Tensor],
    args: argparse.Namespace,
    log: Callable[[str], None],
    peer_deployed: dict[int, nn.Module],
) -> None:
    """``necklace.compile_model`` of each necklace neck vs the peer's deployed form (or eager form), checked equal
    to the peer, timed interleaved in rounds of their own (compiled kernels run their own thread pool, so they are
    kept out of the eval rounds). Sets ``row["compiled"]``."""
    for i, pair, row in active:
        assert pair.necklace is not None and pair.peer_module is not None and pair.call is not None
        try:
            compiled = compile_model(pair.necklace, (list(feats),), backend=args.compile)
            report = CompileReport.of(compiled)
            with torch.no_grad():
                diff, scale = common.max_abs_diff(compiled(list(feats)), pair.call(pair.peer_module, list(feats)))
        except Exception as e:  # optional path: report, keep the rest
            row["compiled"] = {"note": f"necklace.compile_model failed: {type(e).__name__}: {e}"}
            log(f"  [compile] {pair.peer}: {row['compiled']['note']}")
            continue
        rel = diff / max(1.0, scale)
        if rel > DEPLOY_TOL:
            row["compiled"] = {"note": f"compiled outputs differ from the peer's (relative {rel:.2g}); not timed"}
            continue
        peer_module = peer_deployed.get(i, pair.peer_module)
        call = pair.call
        fns = {
            "compiled": _eval_call(compiled, None, feats),
            "peer": _eval_call(peer_module, functools.partial(call, peer_module), feats),
        }
        times = common.interleaved(fns, repeats=args.repeats, warmup=args.warmup)
        ratio = common.ratio_stats(times["compiled"], times["peer"])
        row["compiled"] = {
            "backend": args.compile,
            "compile_s": report.compile_s,
            "max_abs_diff_vs_peer": diff,
            "max_rel_diff_vs_peer": rel,
            "peer_form": "deployed" if i in peer_deployed else "eager",
            "necklace_compiled": common.stats_ms(times["compiled"]),
            "peer": common.stats_ms(times["peer"]),
            "ratio_compiled_over_peer": ratio,
        }
        log(
            f"  compiled ({args.compile}, {report.compile_s:.1f} s to compile) vs {pair.peer} "
            f"({row['compiled']['peer_form']}): ratio {ratio['median']:.3f}"
        )


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help=f"comma list of {list(CONFIGS)}")
    ap.add_argument("--repeats", type=int, default=20, help="timed interleaved rounds (default 20)")
    ap.add_argument("--train-repeats", type=int, default=0, help="rounds for train timing (default: --repeats)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--image-size", type=int, default=0, help="override every config's square image size")
    ap.add_argument("--roofline-hw", type=int, default=common.ROOFLINE_HW, help="roofline conv map size (80)")
    ap.add_argument("--no-train", action="store_true", help="skip train-mode timing and memory")
    ap.add_argument(
        "--deployed",
        nargs="?",
        const="native",
        default=None,
        choices=RUNTIMES,
        help="also time necklace.deploy(neck, runtime=...) (default 'native': necklace's CPU kernels; 'auto': the "
        "fastest verified runtime on the benchmark's inputs); inputs stay NCHW, as the peer gets them",
    )
    ap.add_argument(
        "--compile",
        choices=("inductor", "torchscript"),
        default=None,
        help="also time necklace.compile_model(neck, backend=...) (deploy, then compile) against the peer's "
        "deployed form (its eager form where it has none), in rounds of their own after the eval rounds; compile "
        "seconds reported apart",
    )
    common.add_malloc_arg(ap)
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for vs_peers.json")
    ap.add_argument("--results-md", default=str(HERE / "RESULTS.md"), help="Markdown file to update ('' = none)")
    ap.add_argument("--merge", action="store_true", help="keep other configs' entries of an existing JSON")
    ap.add_argument("--list", action="store_true", help="list the configs and exit")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1 or args.train_repeats < 0:
        ap.error("need --repeats >= 1, --warmup >= 0, --threads >= 1, --train-repeats >= 0")
    args.config_list = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.config_list if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, (_, size, what) in CONFIGS.items():
            print(f"{name:14s} {size[0]}x{size[1]}  {what}")
        return 0

    def log(msg: str) -> None:
        print(msg, flush=True)

    torch.manual_seed(0)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        env = common.environment(args.threads)
        env["allocator"] = common.apply_malloc(args.malloc)
        log(
            f"{env['date_utc']} | {env['cpu']['model']} | {args.threads} threads | load {env['load_avg_1_5_15']} | "
            f"malloc {args.malloc}"
        )
        configs: list[dict[str, Any]] = []
        failed = False
        for name in args.config_list:
            builder, size, _ = CONFIGS[name]
            if args.image_size:
                size = (args.image_size, args.image_size)
            try:
                case = builder(size)
                entry = run_case(case, args, log)
            except Exception as e:  # one broken config must not lose the others' results
                traceback.print_exc()
                entry = {"config": name, "error": f"{type(e).__name__}: {e}", "pairs": [], "image_size": list(size)}
                failed = True
            failed |= any(p.get("status") == "mismatch" for p in entry["pairs"])
            entry["run_utc"] = env["date_utc"]
            configs.append(entry)
    finally:
        torch.set_num_threads(previous_threads)
    env["load_avg_end"] = common.load_average()
    settings = {
        "threads": args.threads,
        "repeats": args.repeats,
        "train_repeats": args.train_repeats or args.repeats,
        "warmup": args.warmup,
        "batch": 1,
        "dtype": "float32",
        "roofline_hw": args.roofline_hw,
        "deployed": args.deployed,
        "compile": args.compile,
        "malloc": args.malloc,
        "tolerance_rel": TOL,
        "command": "benchmarks/vs_peers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    out_path = Path(args.out) / "vs_peers.json"
    if args.merge and out_path.exists():
        import json

        old = json.loads(out_path.read_text())
        ran = {c["config"] for c in configs}
        configs = [c for c in old.get("configs", []) if c["config"] not in ran] + configs
    result = {"env": env, "settings": settings, "configs": configs}
    common.atomic_write_json(out_path, result)
    log(f"\nwrote {out_path}")
    md = markdown(result)
    if args.results_md:
        common.update_markdown_section(args.results_md, "vs_peers", md)
        log(f"updated {args.results_md}")
    log("\n" + md)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
