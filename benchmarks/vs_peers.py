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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: make the sibling module importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common  # type: ignore[import-not-found]
else:  # imported as benchmarks.vs_peers
    from benchmarks import common  # type: ignore[no-redef]

from necklace import CompileReport, FeatureSpec, compile_model
from necklace.bench import (
    EFFICIENTNET_B0_C3_C5,
    RESNET50_C3_C5,
    count_call_flops,
    count_params,
    default_in_specs,
    peers,
    random_features,
    train_step,
)
from necklace.bench.peers import DEPLOY_TOL, MMYOLO_FACTORS, NO_PEER_DEPLOY, R50_C2, TOL, Pair

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIGS = ("r50_fpn", "r50_pafpn", "bifpn_d0", "yolov8n")
R50 = RESNET50_C3_C5
B0 = EFFICIENTNET_B0_C3_C5

Call = Callable[[list[Tensor]], list[Tensor]]


# ----------------------------------------------------------------------------------------------- cases
# the pairs (peer builders, weights carried over by necklace.convert) are necklace.bench.peers'; a case groups them
@dataclass
class Case:
    name: str
    title: str
    image_size: tuple[int, int]
    in_specs: tuple[FeatureSpec, ...]
    pairs: list[Pair]
    notes: list[str] = field(default_factory=list)


def _r50_fpn(size: tuple[int, int]) -> Case:
    pairs = [peers.torchvision_fpn_pair(R50, 256), peers.mmdet_pair("FPN", R50, 256)]
    return Case("r50_fpn", "R50-FPN P3-P5 (C3-C5 512/1024/2048 -> 256)", size, R50, pairs)


def _r50_fpn_p6p7(size: tuple[int, int]) -> Case:
    pairs = [
        peers.torchvision_fpn_pair(R50, 256, p6p7=True),
        peers.mmdet_pair("FPN", R50, 256, " (RetinaNet: P6/P7 convs on C5)", add_extra_convs="on_input", num_outs=5),
    ]
    return Case("r50_fpn_p6p7", "R50-FPN P3-P7 (C3-C5 -> 256, two stride-2 extra convs)", size, R50, pairs)


def _r50_pafpn(size: tuple[int, int]) -> Case:
    return Case("r50_pafpn", "R50-PAFPN P3-P5 (C3-C5 -> 256)", size, R50, [peers.mmdet_pair("PAFPN", R50, 256)])


def _bifpn_d0(size: tuple[int, int]) -> Case:
    case = Case(
        "bifpn_d0",
        "BiFPN-D0 (EfficientNet-B0 C3-C5 40/112/320 -> 64, 3 cells, P3-P7), eager vs eager",
        size,
        B0,
        [peers.effdet_bifpn_pair("tf_efficientdet_d0", B0, size)],
    )
    case.notes.append("necklace: bifpn preset d0, padding='same', redundant_bias=True (the tf_ port's layout)")
    return case


def _yolo(scale: str, version: str = "v8") -> Callable[[tuple[int, int]], Case]:
    """YOLOv8 (``yolo_pafpn``) or YOLO11 (``yolo11_pafpn``) neck of ``scale`` vs ultralytics' own, on the
    preset's backbone P3-P5."""
    neck = "yolo_pafpn" if version == "v8" else "yolo11_pafpn"
    model = f"yolov8{scale}" if version == "v8" else f"yolo11{scale}"
    make_pair = peers.ultralytics_yolov8_pair if version == "v8" else peers.ultralytics_yolo11_pair
    specs = default_in_specs(neck, {"preset": scale})

    def build(size: tuple[int, int]) -> Case:
        chans = "/".join(str(s.channels) for s in specs)
        case = Case(
            model, f"{model.upper()[:-1]}{scale} neck (P3-P5 {chans} in)", size, specs, [make_pair(scale, specs)]
        )
        case.notes.append(f"necklace: {neck} preset {scale}; ultralytics built from {model}.yaml")
        return case

    return build


def _yolov6(preset: str) -> Callable[[tuple[int, int]], Case]:
    widen = MMYOLO_FACTORS[preset][1]
    specs = peers.mmyolo_in_specs(preset)
    chans = "/".join(str(s.channels) for s in specs)

    def build(size: tuple[int, int]) -> Case:
        peers.check_divisible(f"yolov6{preset}", size, *peers.MMYOLO_DIVISIBLE)
        case = Case(
            f"yolov6{preset}",
            f"YOLOv6-{preset.upper()} RepPAN (P3-P5 {chans} in)",
            size,
            specs,
            [peers.mmyolo_reppafpn_pair(preset, specs)],
        )
        case.notes.append(
            f"necklace: rep_pafpn preset {preset}; mmyolo YOLOv6RepPAFPN as in its yolov6_{preset} config "
            f"(deepen {MMYOLO_FACTORS[preset][0]}, widen {widen}, RepVGGBlock, BN eps 1e-3, ReLU)"
        )
        return case

    return build


def _nasfpn(size: tuple[int, int]) -> Case:
    peers.check_divisible("nasfpn", size, *peers.NASFPN_DIVISIBLE)
    case = Case(
        "nasfpn",
        "NAS-FPN, RetinaNet config (C2-C5 256/512/1024/2048 in, start_level 1, 256 wide, P3-P7, 7 stacks, BN)",
        size,
        R50_C2,
        [peers.mmdet_nasfpn_pair(R50_C2, 256, stack_times=7, start_level=1)],
    )
    case.notes.append(
        "necklace: nasfpn width 256, stack_times 7, levels (3, 7), norm bn; mmdet NASFPN as in "
        "retinanet_r50_nasfpn_crop640-50e_coco.py (the C2 map is given, unused by both)"
    )
    return case


def _tiny_fpn(size: tuple[int, int]) -> Case:
    specs = (FeatureSpec(16, 8), FeatureSpec(32, 16), FeatureSpec(64, 32))
    return Case(
        "tiny_fpn", "tiny FPN (16/32/64 -> 32) for smoke tests", size, specs, [peers.torchvision_fpn_pair(specs, 32)]
    )


CONFIGS: dict[str, tuple[Callable[[tuple[int, int]], Case], tuple[int, int], str]] = {
    "r50_fpn": (_r50_fpn, (640, 640), "R50 C3-C5 -> 256 FPN vs torchvision FeaturePyramidNetwork and mmdet FPN"),
    "r50_fpn_p6p7": (_r50_fpn_p6p7, (640, 640), "FPN P3-P7 vs torchvision + LastLevelP6P7, mmdet RetinaNet FPN"),
    "r50_pafpn": (_r50_pafpn, (640, 640), "R50 C3-C5 -> 256 PAFPN vs mmdet PAFPN"),
    "bifpn_d0": (_bifpn_d0, (512, 512), "BiFPN-D0 vs efficientdet-pytorch BiFpn (tf_efficientdet_d0)"),
    "yolov8n": (_yolo("n"), (640, 640), "yolo_pafpn n vs ultralytics YOLOv8n layers 10-21"),
    "yolov8s": (_yolo("s"), (640, 640), "yolo_pafpn s vs ultralytics YOLOv8s layers 10-21"),
    "yolo11n": (_yolo("n", "11"), (640, 640), "yolo11_pafpn n vs ultralytics YOLO11n layers 11-22"),
    "yolov6n": (_yolov6("n"), (640, 640), "rep_pafpn n vs mmyolo YOLOv6RepPAFPN (yolov6_n config; size % 32)"),
    "nasfpn": (_nasfpn, (640, 640), "nasfpn vs mmdet NASFPN (RetinaNet NAS-FPN, 7 stacks; heavy; size % 128)"),
    "tiny_fpn": (_tiny_fpn, (64, 64), "16/32/64 -> 32 FPN vs torchvision (smoke tests)"),
}


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


def _mb(n: int) -> float:
    return n / 2**20


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


# ----------------------------------------------------------------------------------------------- reporting
def _f(v: float, digits: int = 2) -> str:
    return f"{v:.{digits}f}"


def _deployed_cells(p: dict[str, Any]) -> list[str]:
    """The two deployed columns of a pair's row: ``nk ms / peer ms`` and the ratio nk deployed / peer deployed."""
    d = p.get("eval_deployed")
    if d is None:
        return ["-", "-"]
    pd = d.get("peer_deploy")  # absent in entries kept (--merge) from runs before peer deploy forms were timed
    star = "" if pd and pd["has_deploy_form"] and "note" not in pd else " (eager)"
    nk = _f(d["necklace_deployed"]["median_ms"]) if "necklace_deployed" in d else "-"
    if "peer_deployed" not in d:
        return [f"{nk} / -", "-"]
    cells = [f"{nk} / {_f(d['peer_deployed']['median_ms'])}{star}"]
    if "ratio_deployed_over_peer_deployed" in d:
        r = d["ratio_deployed_over_peer_deployed"]
        cells.append(f"**{_f(r['median'], 3)}** [{_f(r['p25'], 2)}-{_f(r['p75'], 2)}]{star}")
    else:
        cells.append("-")
    return cells


def _compiled_note(d: dict[str, Any]) -> str:
    """The notes line of ``--compile``: ratio of the compiled necklace neck to the peer's deployed form."""
    if "note" in d:
        return str(d["note"])
    r = d["ratio_compiled_over_peer"]
    return (
        f"necklace.compile_model(backend={d['backend']!r}) {_f(d['necklace_compiled']['median_ms'])} ms vs peer "
        f"{d['peer_form']} {_f(d['peer']['median_ms'])} ms in rounds of their own: ratio compiled / peer "
        f"{d['peer_form']} **{_f(r['median'], 3)}** [{_f(r['p25'], 2)}-{_f(r['p75'], 2)}] (compile "
        f"{d['compile_s']:.1f} s, not in the latency; relative diff vs peer {d['max_rel_diff_vs_peer']:.1g})"
    )


def _deployed_notes(p: dict[str, Any]) -> list[str]:
    """Notes lines on the deployed forms of one pair (necklace.deploy, the peer's deploy form or its absence)."""
    notes: list[str] = []
    d = p.get("eval_deployed")
    if d is None:
        notes += [p[k] for k in ("deployed_note", "peer_deploy_note") if p.get(k)]
        return notes
    if "necklace_deployed" in d:
        notes.append(
            f"{d['what'].split(':')[0]} {_f(d['necklace_deployed']['median_ms'])} ms, "
            f"ratio deployed/peer {_f(d['ratio_deployed_over_peer']['median'], 3)} "
            f"(max abs diff {d['equality_vs_peer']['max_abs_diff']:.2g}"
            + (
                f", relative {d['equality_vs_peer']['max_rel_diff']:.1g})"
                if "max_rel_diff" in d["equality_vs_peer"]
                else ")"
            )
        )
    elif p.get("deployed_note"):
        notes.append(p["deployed_note"])
    pd = d.get("peer_deploy")
    if pd is None:  # kept (--merge) from a run before peer deploy forms were timed
        return notes
    if pd["has_deploy_form"] and "note" not in pd:
        text = (
            f"peer deployed ({pd['what']}) {_f(d['peer_deployed']['median_ms'])} ms, "
            f"{pd['params'] / 1e6:.3f} M params, {pd['macs'] / 1e9:.3f} GMACs, "
            f"ratio peer deployed/peer eager {_f(d['ratio_peer_deployed_over_peer']['median'], 3)} "
            f"(max abs diff vs its eager form {pd['equality_vs_peer_eager']['max_abs_diff']:.2g})"
        )
    else:
        text = pd["note"]
    if "ratio_deployed_over_peer_deployed" in d:
        text += f"; ratio necklace deployed / peer deployed {_f(d['ratio_deployed_over_peer_deployed']['median'], 3)}"
    notes.append(text)
    return notes


def _malloc_what(mode: str) -> str:
    if mode == "steady":
        return "steady (glibc keeps freed memory: no call pays page faults another caused; `common.steady_allocator`)"
    return "default (glibc as it comes: page faults per call depend on what ran before; see the notes)"


def markdown(result: dict[str, Any]) -> str:
    env = result["env"]
    s = result["settings"]
    cpu = env["cpu"]
    vers = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines = [
        "## necklace vs peers (`benchmarks/vs_peers.py`)",
        "",
        f"- date: {env['date_utc']}; git {env.get('git', {}).get('commit')}"
        f"{' (uncommitted changes)' if env.get('git', {}).get('dirty') else ''}",
        f"- machine: {cpu['model']}, {cpu['physical_cores']} physical cores / {cpu['logical_cpus']} logical "
        f"({cpu['usable_cpus']} usable); load average at start {env['load_avg_1_5_15']}",
        f"- versions: python {env['python']}, {vers}",
        f"- settings: float32, batch 1, {s['threads']} threads, eval + no_grad; {s['warmup']} warm-up rounds, "
        f"median of {s['repeats']} interleaved rounds (train: {s['train_repeats']}); command `{s['command']}`",
        "- ratio = median over rounds of t_necklace / t_peer (< 1: necklace faster), [p25-p75] in brackets; "
        "GMACs from torch's FlopCounterMode (convs only); roofline share = achieved GMAC/s / GMAC/s of a "
        f"3x3 conv 256->256 at {s['roofline_hw']}x{s['roofline_hw']} timed in the same rounds",
        "- train = train() forward + backward of sum(outputs), inputs requiring grad; peak MB = peak of new "
        "tensor memory in torch's CPU allocator during one step (torch.profiler allocation events)",
        "- rounds in balanced Latin-square orders (every callable follows every other equally often)"
        + ("; each timed eval call right after an untimed call of the same neck" if s.get("deployed") else "")
        + "; malloc "
        f"{_malloc_what(s.get('malloc', 'default'))}",
    ]
    has_dep = any("eval_deployed" in p or "deployed_note" in p for c in result["configs"] for p in c["pairs"])
    header = (
        "| config | peer | max abs diff (train input grads) | params M (nk / peer) | GMACs | necklace ms | peer ms "
        "| ratio nk/peer | GMAC/s (nk / peer) | roofline share (nk / peer) | train ms (nk / peer) | train ratio "
        "| train peak MB (nk / peer) |"
    )
    if has_dep:
        lines.append(
            "- deployed = necklace.deploy(neck) vs the peer's own deployment form (ultralytics fuse(), mmyolo "
            "switch_to_deploy()), timed in the same eval rounds; (eager) = the peer has no deploy form (or it "
            "failed its check): its eager form stands in"
        )
        header += " deployed ms (nk / peer) | ratio deployed nk / deployed peer |"
    n_cols = header.count("|") - 1
    lines += ["", header, "|---" * n_cols + "|"]
    notes: list[str] = []
    roofs: list[str] = []
    for c in result["configs"]:
        if "roofline" in c:
            r = c["roofline"]
            spread = (r["p75_ms"] - r["p25_ms"]) / r["median_ms"] * 100
            roofs.append(f"{c['config']} {_f(r['gmac_per_s'], 1)} (IQR {spread:.0f}% of median)")
        for p in c["pairs"]:
            label = f"{c['config']} ({c['image_size'][0]}x{c['image_size'][1]})"
            if p["status"] != "ok":
                diff = f"{p['equality']['max_abs_diff']:.2g}" if "equality" in p else "-"
                lines.append(
                    f"| {label} | {p['peer']} | {diff} | {p['status']}: {p.get('note', '')} |" + " |" * (n_cols - 4)
                )
                continue
            e = p["eval"]
            r = e["ratio_necklace_over_peer"]
            row = [
                label,
                p["peer"],
                f"{p['equality']['max_abs_diff']:.2g}"
                + (f" (grad {p['train']['input_grad_max_abs_diff']:.2g})" if "train" in p else ""),
                f"{p['params']['necklace'] / 1e6:.3f} / {p['params']['peer'] / 1e6:.3f}",
                f"{p['macs']['necklace'] / 1e9:.3f}"
                + ("" if p["macs"]["necklace"] == p["macs"]["peer"] else f" / {p['macs']['peer'] / 1e9:.3f}"),
                _f(e["necklace"]["median_ms"]),
                _f(e["peer"]["median_ms"]),
                f"**{_f(r['median'], 3)}** [{_f(r['p25'], 2)}-{_f(r['p75'], 2)}]",
                f"{_f(e['gmac_per_s']['necklace'], 1)} / {_f(e['gmac_per_s']['peer'], 1)}",
                f"{_f(e['roofline_share']['necklace'])} / {_f(e['roofline_share']['peer'])}",
            ]
            if "train" in p:
                t = p["train"]
                m = p["memory"]["train_step"]
                row += [
                    f"{_f(t['necklace']['median_ms'], 1)} / {_f(t['peer']['median_ms'], 1)}",
                    _f(t["ratio_necklace_over_peer"]["median"], 3),
                    f"{_f(_mb(m['necklace']['peak_bytes']), 1)} / {_f(_mb(m['peer']['peak_bytes']), 1)}",
                ]
            else:
                row += ["-", "-", "-"]
            if has_dep:
                row += _deployed_cells(p)
            lines.append("| " + " | ".join(row) + " |")
        notes += [f"{c['config']}: {n}" for n in c.get("notes", [])]
        if "error" in c:
            notes.append(f"{c['config']}: failed: {c['error']}")
        cs = c.get("settings")
        mine = {k: s[k] for k in ("threads", "repeats", "train_repeats", "warmup")}
        if c.get("run_utc", env["date_utc"]) != env["date_utc"] or (cs is not None and cs != mine):
            notes.append(f"{c['config']}: kept from an earlier run ({c.get('measured_utc')}, settings {cs})")
        pf = c.get("minor_faults_per_call")
        if pf and any(v >= 1 for v in pf.values()):
            notes.append(
                f"{c['config']}: minor page faults per timed call: " + ", ".join(f"{k} {v:.0f}" for k, v in pf.items())
            )
        for p in c["pairs"]:
            notes += [f"{c['config']} vs {p['peer']}: {n}" for n in _deployed_notes(p)]
            if "compiled" in p:
                notes.append(f"{c['config']} vs {p['peer']}: {_compiled_note(p['compiled'])}")
    if roofs:
        lines += [
            "",
            f"Roofline GMAC/s measured in each config's rounds: {', '.join(roofs)}. A wide roofline IQR or a "
            "load average above 0 at start means other processes shared the cores: compare ratios only.",
        ]
    if notes:
        lines += ["", "Notes:", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


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
