"""``necklace bench NAME --vs PEER``: one pair built, checked equal and timed interleaved (:func:`compare`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from necklace.bench.counting import count_call_flops, count_params
from necklace.bench.neck import _check_image_size, default_image_size, default_in_specs, random_features
from necklace.bench.peers.checks import bind, deploy_necklace, deploy_peer, eval_call, parity
from necklace.bench.peers.pairs import (
    MMYOLO_DIVISIBLE,
    MMYOLO_FACTORS,
    NASFPN_DIVISIBLE,
    NO_PEER_DEPLOY,
    PEERS,
    R50_C2,
    ULTRALYTICS_DIVISIBLE,
    Pair,
    check_divisible,
    effdet_bifpn_pair,
    mmdet_nasfpn_pair,
    mmdet_pair,
    mmyolo_in_specs,
    mmyolo_reppafpn_pair,
    torchvision_fpn_pair,
)
from necklace.bench.peers.ultralytics import ultralytics_yolo11_pair, ultralytics_yolov8_pair
from necklace.bench.timing import Progress, _check_count, _num_threads, interleaved, ratio_stats, stats_ms
from necklace.registry import RESNET50_C3_C5
from necklace.spec import FeatureSpec, as_feature_specs, validate_in_specs


@dataclass(frozen=True)
class _Setup:
    """How :func:`compare` builds one (neck, peer) pair: accepted options and their defaults, inputs, checks."""

    build: Callable[[tuple[FeatureSpec, ...], tuple[int, int], dict[str, Any]], Pair]
    defaults: dict[str, Any]
    in_specs: Callable[[dict[str, Any]], tuple[FeatureSpec, ...]]
    presets: tuple[str, ...] = ()
    #: the peer fixes the input channels (from the preset): custom in_specs are refused
    fixed_specs: bool = False
    divisible: tuple[int, str] | None = None


def _nasfpn_build(specs: tuple[FeatureSpec, ...], size: tuple[int, int], o: dict[str, Any]) -> Pair:
    start = next((i for i, s in enumerate(specs) if s.stride >= 8), 0)  # RetinaNet: P3 first
    return mmdet_nasfpn_pair(specs, int(o["width"]), int(o["stack_times"]), start)


def _ultralytics_setup(neck: str) -> _Setup:
    """``yolo_pafpn`` (YOLOv8) / ``yolo11_pafpn`` (YOLO11) vs ultralytics' neck of the same preset."""
    make_pair = ultralytics_yolov8_pair if neck == "yolo_pafpn" else ultralytics_yolo11_pair
    return _Setup(
        lambda specs, size, o: make_pair(o["preset"], specs),
        {"preset": "n"},
        lambda o: default_in_specs(neck, {"preset": o["preset"]}),
        presets=("n", "s", "m", "l", "x"),
        fixed_specs=True,
        divisible=ULTRALYTICS_DIVISIBLE,
    )


_SETUPS: dict[tuple[str, str], _Setup] = {
    ("fpn", "torchvision"): _Setup(
        lambda specs, size, o: torchvision_fpn_pair(specs, int(o["width"])),
        {"width": 256},
        lambda o: RESNET50_C3_C5,
    ),
    ("fpn", "mmdet"): _Setup(
        lambda specs, size, o: mmdet_pair("FPN", specs, int(o["width"])), {"width": 256}, lambda o: RESNET50_C3_C5
    ),
    ("pafpn", "mmdet"): _Setup(
        lambda specs, size, o: mmdet_pair("PAFPN", specs, int(o["width"])), {"width": 256}, lambda o: RESNET50_C3_C5
    ),
    ("nasfpn", "mmdet"): _Setup(
        _nasfpn_build, {"width": 256, "stack_times": 7}, lambda o: R50_C2, divisible=NASFPN_DIVISIBLE
    ),
    ("bifpn", "effdet"): _Setup(
        lambda specs, size, o: effdet_bifpn_pair(f"tf_efficientdet_{o['preset']}", specs, size),
        {"preset": "d0"},
        lambda o: default_in_specs("bifpn", o),
        presets=("d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7"),
    ),
    ("yolo_pafpn", "ultralytics"): _ultralytics_setup("yolo_pafpn"),
    ("yolo11_pafpn", "ultralytics"): _ultralytics_setup("yolo11_pafpn"),
    ("rep_pafpn", "mmyolo"): _Setup(
        lambda specs, size, o: mmyolo_reppafpn_pair(o["preset"], specs),
        {"preset": "n"},
        lambda o: mmyolo_in_specs(o["preset"]),
        presets=tuple(MMYOLO_FACTORS),
        fixed_specs=True,
        divisible=MMYOLO_DIVISIBLE,
    ),
}


def supported_pairs(peer: str | None = None) -> list[tuple[str, str]]:
    """The ``(neck, peer)`` pairs :func:`compare` knows, optionally only those of ``peer``.

    Example:
        >>> supported_pairs("mmdet")
        [('fpn', 'mmdet'), ('pafpn', 'mmdet'), ('nasfpn', 'mmdet')]
    """
    return [key for key in _SETUPS if peer is None or key[1] == peer]


def check_pair(name: str, peer: str) -> None:
    """Raise ``ValueError`` naming the supported pairs unless :func:`compare` knows ``(name, peer)``.

    Example:
        >>> check_pair("fpn", "mmdet")
        >>> check_pair("fpn", "detectron2")
        Traceback (most recent call last):
        ...
        ValueError: unknown peer 'detectron2'; choose one of torchvision, mmdet, effdet, ultralytics, mmyolo.
    """
    _setup_of(name, peer)


def _setup_of(name: str, peer: str) -> _Setup:
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; choose one of {', '.join(PEERS)}.")
    setup = _SETUPS.get((name, peer))
    if setup is None:
        mine = [n for n, p in _SETUPS if p == peer]
        theirs = [p for n, p in _SETUPS if n == name]
        hint = f" {name} is compared with: {', '.join(theirs)}." if theirs else ""
        raise ValueError(f"no {peer} counterpart of neck {name!r}: {peer} has {', '.join(mine)}.{hint}")
    return setup


def _resolve_options(name: str, peer: str, setup: _Setup, options: Mapping[str, Any] | None) -> dict[str, Any]:
    given = dict(options or {})
    unknown = sorted(set(given) - set(setup.defaults))
    if unknown:
        raise ValueError(
            f"{name} vs {peer}: unsupported option(s) {', '.join(unknown)}; this pair takes "
            f"{', '.join(setup.defaults)} (the peer's neck is built to match them)."
        )
    resolved = {**setup.defaults, **given}
    if setup.presets and resolved.get("preset") not in setup.presets:
        raise ValueError(f"{name} vs {peer}: preset {resolved.get('preset')!r} not in {', '.join(setup.presets)}.")
    return resolved


@dataclass(frozen=True)
class PeerComparison:
    """What :func:`compare` measured for one necklace neck and its peer's counterpart.

    Equality: ``max_abs_diff`` of the outputs (same weights, same random inputs), ``tolerance`` =
    ``TOL * max(1, max_abs_output)``, ``equal``. Costs: parameters and MACs of both (torch's FlopCounterMode,
    convs and matmuls). Timing (eval, no_grad, batch 1, interleaved rounds): medians ``necklace_ms`` /
    ``peer_ms``, ``ratio`` = median over rounds of ``t_necklace / t_peer`` (< 1: necklace faster) with its
    quartiles. With ``deployed``: ``deployed_ms`` of ``necklace.deploy(neck)``, ``peer_deployed_ms`` of the
    peer's own deployment form ``peer_deploy`` (``None``: it has none, its eager form stands in) and
    ``ratio_deployed`` = necklace deployed / peer deployed. ``times``: full statistics (ms) of every timed form.

    Example:
        >>> r = compare("fpn", "torchvision", image_size=64, options={"width": 16}, repeats=2, warmup=0)
        >>> r.gmacs_necklace == r.gmacs_peer, r.gmac_per_s_necklace > 0, r.ok, sorted(r.times)
        (True, True, True, ['necklace', 'peer'])
        >>> r.to_dict()["eval"]["ratio_necklace_over_peer"]["median"] == r.ratio, r.to_row()["image_h"]
        (True, 64)
    """

    neck: str
    peer: str
    peer_module: str
    weights: str
    options: dict[str, Any]
    in_specs: tuple[FeatureSpec, ...]
    image_size: tuple[int, int]
    out_shapes: tuple[tuple[int, ...], ...]
    max_abs_diff: float
    max_abs_output: float
    tolerance: float
    equal: bool
    params_necklace: int
    params_peer: int
    macs_necklace: int
    macs_peer: int
    necklace_ms: float
    peer_ms: float
    ratio: float
    ratio_p25: float
    ratio_p75: float
    repeats: int
    warmup: int
    threads: int
    times: dict[str, dict[str, float | int]]
    deployed: bool = False
    deployed_ms: float | None = None
    deployed_max_abs_diff: float | None = None
    deployed_equal: bool | None = None
    peer_deploy: str | None = None
    peer_deployed_ms: float | None = None
    peer_deploy_max_abs_diff: float | None = None
    peer_deploy_equal: bool | None = None
    ratio_deployed: float | None = None
    ratio_deployed_p25: float | None = None
    ratio_deployed_p75: float | None = None
    torch_version: str = field(default_factory=lambda: torch.__version__)

    @property
    def gmacs_necklace(self) -> float:
        return self.macs_necklace / 1e9

    @property
    def gmacs_peer(self) -> float:
        return self.macs_peer / 1e9

    @property
    def gmac_per_s_necklace(self) -> float:
        """Achieved GMAC/s of the necklace neck: GMACs / median time."""
        return self.gmacs_necklace / (self.necklace_ms / 1e3)

    @property
    def gmac_per_s_peer(self) -> float:
        return self.gmacs_peer / (self.peer_ms / 1e3)

    @property
    def ok(self) -> bool:
        """Every equality check passed (eager, and deployed forms where timed)."""
        return self.equal and self.deployed_equal is not False and self.peer_deploy_equal is not False

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (JSON-ready)."""
        d: dict[str, Any] = {
            "neck": self.neck,
            "peer": self.peer,
            "peer_module": self.peer_module,
            "weights": self.weights,
            "options": dict(self.options),
            "in_specs": [s.to_dict() for s in self.in_specs],
            "image_size": list(self.image_size),
            "out_shapes": [list(s) for s in self.out_shapes],
            "equality": {
                "max_abs_diff": self.max_abs_diff,
                "max_abs_output": self.max_abs_output,
                "tolerance": self.tolerance,
                "equal": self.equal,
            },
            "params": {"necklace": self.params_necklace, "peer": self.params_peer},
            "macs": {"necklace": self.macs_necklace, "peer": self.macs_peer},
            "gmacs": {"necklace": self.gmacs_necklace, "peer": self.gmacs_peer},
            "eval": {
                "necklace_ms": self.necklace_ms,
                "peer_ms": self.peer_ms,
                "ratio_necklace_over_peer": {"median": self.ratio, "p25": self.ratio_p25, "p75": self.ratio_p75},
                "gmac_per_s": {"necklace": self.gmac_per_s_necklace, "peer": self.gmac_per_s_peer},
            },
            "times": {k: dict(v) for k, v in self.times.items()},
            "settings": {
                "repeats": self.repeats,
                "warmup": self.warmup,
                "threads": self.threads,
                "batch": 1,
                "dtype": "float32",
                "torch_version": self.torch_version,
            },
            "deployed": self.deployed,
        }
        if self.deployed:
            d["eval_deployed"] = {
                "necklace_deployed_ms": self.deployed_ms,
                "max_abs_diff_vs_peer": self.deployed_max_abs_diff,
                "equal": self.deployed_equal,
                "peer_deploy": self.peer_deploy,
                "peer_deploy_note": None if self.peer_deploy else NO_PEER_DEPLOY,
                "peer_deployed_ms": self.peer_deployed_ms,
                "peer_deploy_max_abs_diff_vs_eager": self.peer_deploy_max_abs_diff,
                "peer_deploy_equal": self.peer_deploy_equal,
                "ratio_deployed_over_peer_deployed": {
                    "median": self.ratio_deployed,
                    "p25": self.ratio_deployed_p25,
                    "p75": self.ratio_deployed_p75,
                },
            }
        return d

    def to_row(self) -> dict[str, str | int | float | bool | None]:
        """Flat dict of scalars (one CSV row)."""
        return {
            "neck": self.neck,
            "peer": self.peer,
            "peer_module": self.peer_module,
            "options": ";".join(f"{k}={v}" for k, v in self.options.items()),
            "in_specs": " ".join(f"{s.channels}@{s.stride}" for s in self.in_specs),
            "image_h": self.image_size[0],
            "image_w": self.image_size[1],
            "max_abs_diff": self.max_abs_diff,
            "equal": self.equal,
            "params_necklace": self.params_necklace,
            "params_peer": self.params_peer,
            "gmacs_necklace": self.gmacs_necklace,
            "gmacs_peer": self.gmacs_peer,
            "necklace_ms": self.necklace_ms,
            "peer_ms": self.peer_ms,
            "ratio": self.ratio,
            "ratio_p25": self.ratio_p25,
            "ratio_p75": self.ratio_p75,
            "gmac_per_s_necklace": self.gmac_per_s_necklace,
            "gmac_per_s_peer": self.gmac_per_s_peer,
            "deployed_ms": self.deployed_ms,
            "peer_deploy": self.peer_deploy,
            "peer_deployed_ms": self.peer_deployed_ms,
            "ratio_deployed": self.ratio_deployed,
            "repeats": self.repeats,
            "threads": self.threads,
            "torch_version": self.torch_version,
        }


def compare(
    name: str,
    peer: str,
    image_size: tuple[int, int] | int | None = None,
    options: Mapping[str, Any] | None = None,
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = None,
    deployed: bool = False,
    progress: Progress | None = None,
    in_specs: Sequence[FeatureSpec | tuple[int, int]] | None = None,
    seed: int = 0,
) -> PeerComparison:
    """Compare necklace neck ``name`` with ``peer``'s counterpart: same configuration and weights, outputs
    checked equal, both timed interleaved in this process (eval, no_grad, float32, batch 1).

    ``options`` configure both necks (``width`` for fpn/pafpn/nasfpn, ``stack_times`` for nasfpn, ``preset``
    for bifpn/yolo_pafpn/rep_pafpn); ``in_specs`` and ``image_size`` default per pair (see the module docs);
    yolo_pafpn/rep_pafpn take their inputs from the preset. ``deployed=True`` also times
    ``necklace.deploy(neck)`` against the peer's own deployment form (ultralytics ``fuse()``, mmyolo
    ``switch_to_deploy()``; other peers have none and their eager form stands in), each checked equal first.
    ``threads`` sets torch's thread count while measuring; ``progress(done, repeats)`` follows the timed rounds.

    An unequal result is still timed and returned (``equal`` / ``ok`` False). ``ValueError`` for an unknown pair,
    option, preset or an image size the peer cannot match; ``ImportError`` (with the pip command) for a peer that
    is not installed.

    Example:
        >>> r = compare("fpn", "torchvision", image_size=64, options={"width": 32}, repeats=1, warmup=0,
        ...             deployed=True)
        >>> r.equal, r.deployed_equal, r.peer_deploy is None, r.ratio_deployed > 0
        (True, True, True, True)
        >>> compare("bifpn", "torchvision")
        Traceback (most recent call last):
        ...
        ValueError: no torchvision counterpart of neck 'bifpn': torchvision has fpn. bifpn is compared with: effdet.
    """
    setup = _setup_of(name, peer)
    opts = _resolve_options(name, peer, setup, options)
    _check_count("repeats", repeats, 1)
    _check_count("warmup", warmup, 0)
    default_specs = setup.in_specs(opts)
    specs = validate_in_specs(as_feature_specs(in_specs)) if in_specs is not None else default_specs
    if setup.fixed_specs and tuple(specs) != tuple(default_specs):
        raise ValueError(
            f"{name} vs {peer}: the inputs are fixed by the preset ({opts['preset']}: "
            f"{', '.join(f'{s.channels}@{s.stride}' for s in default_specs)}); pick another preset instead."
        )
    size = _check_image_size(image_size if image_size is not None else default_image_size(name, opts))
    if setup.divisible is not None:
        check_divisible(f"{name} vs {peer}", size, *setup.divisible)
    pair = setup.build(tuple(specs), size, opts)
    if pair.skipped:
        raise ImportError(f"{name} vs {peer}: {pair.skipped}; install it with: {PEERS[peer]}")
    assert pair.necklace is not None and pair.peer_module is not None
    feats = random_features(specs, size, batch=1, seed=seed)
    eq = parity(pair, feats)
    peer_fn = bind(pair)
    fns = {"necklace": eval_call(pair.necklace, None, feats), "peer": eval_call(pair.peer_module, peer_fn, feats)}
    dep: dict[str, Any] = {}
    if deployed:
        module, dep_eq = deploy_necklace(pair, feats)
        fns["deployed"] = eval_call(module, None, feats)
        dep.update(deployed_max_abs_diff=dep_eq["max_abs_diff"], deployed_equal=dep_eq["equal"])
        if pair.peer_deploy is not None:
            peer_module, peer_eq = deploy_peer(pair, feats)
            fns["peer_deployed"] = eval_call(peer_module, bind(pair, peer_module), feats)
            dep.update(
                peer_deploy=pair.peer_deploy_what,
                peer_deploy_max_abs_diff=peer_eq["max_abs_diff"],
                peer_deploy_equal=peer_eq["equal"],
            )
    with _num_threads(threads) as used_threads:
        times = interleaved(fns, repeats=repeats, warmup=warmup, progress=progress)
    ratio = ratio_stats(times["necklace"], times["peer"])
    stats = {k: stats_ms(v) for k, v in times.items()}
    if deployed:
        peer_dep_key = "peer_deployed" if "peer_deployed" in times else "peer"
        r_dep = ratio_stats(times["deployed"], times[peer_dep_key])
        dep.update(
            deployed_ms=stats["deployed"]["median_ms"],
            peer_deployed_ms=stats[peer_dep_key]["median_ms"],
            ratio_deployed=r_dep["median"],
            ratio_deployed_p25=r_dep["p25"],
            ratio_deployed_p75=r_dep["p75"],
        )
    return PeerComparison(
        neck=name,
        peer=peer,
        peer_module=pair.peer,
        weights=pair.weights,
        options=opts,
        in_specs=tuple(specs),
        image_size=size,
        out_shapes=tuple(tuple(s) for s in eq["out_shapes"]),
        max_abs_diff=eq["max_abs_diff"],
        max_abs_output=eq["max_abs_output"],
        tolerance=eq["tolerance"],
        equal=eq["equal"],
        params_necklace=count_params(pair.necklace),
        params_peer=count_params(pair.peer_module),
        macs_necklace=count_call_flops(fns["necklace"]) // 2,
        macs_peer=count_call_flops(fns["peer"]) // 2,
        necklace_ms=float(stats["necklace"]["median_ms"]),
        peer_ms=float(stats["peer"]["median_ms"]),
        ratio=float(ratio["median"]),
        ratio_p25=float(ratio["p25"]),
        ratio_p75=float(ratio["p75"]),
        repeats=repeats,
        warmup=warmup,
        threads=used_threads,
        times=stats,
        deployed=deployed,
        **dep,
    )
