"""Benchmark a registered neck: params, FLOPs and latency on random backbone maps (:func:`bench_neck`).

Example:
    >>> r = bench_neck("fpn", image_size=(64, 64), options={"width": 16}, warmup=0, repeats=1)
    >>> r.params > 0 and r.flops > 0 and r.latency.median_ms > 0
    True
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from necklace.bench.counting import _forward, count_flops, count_params
from necklace.bench.timing import LatencyStats, Progress, _check_count, _num_threads, measure_latency
from necklace.registry import RESNET50_C3_C5 as RESNET50_C3_C5  # (re-exported: peers, benchmarks)
from necklace.registry import build_neck, neck_info
from necklace.spec import FeatureSpec, as_feature_specs, validate_in_specs

#: What :func:`bench_neck` can time: the neck as built (``eager``), deployed to a runtime of :func:`necklace.deploy`
#: (``deployed`` is the torch runtime; ``auto`` the fastest verified runtime), or traced (``torchscript``).
BENCH_MODES = ("eager", "deployed", "torchscript", "torch", "native", "onnxruntime", "openvino", "inductor", "auto")


#: Backbone feature widths used when no ``in_specs`` are given (strides 8, 16, 32); the registry entries carry
#: each neck's own default (:meth:`necklace.registry.NeckInfo.in_specs_for`).
EFFICIENTNET_B0_C3_C5 = (FeatureSpec(40, 8), FeatureSpec(112, 16), FeatureSpec(320, 32))
YOLOV8N_C3_C5 = (FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32))
DEFAULT_IMAGE_SIZE = 640


@dataclass(frozen=True)
class BenchResult:
    """Everything :func:`bench_neck` measured for one neck, plus the settings it ran under.

    ``flops``/``macs`` are exact counts for one forward pass of the whole batch (``flops = 2 * macs``);
    ``gflops``/``gmacs`` are the same in units of 1e9. ``out_shapes`` are the shapes the neck returned.

    Example:
        >>> r = bench_neck("yolo_pafpn", image_size=(64, 96), warmup=0, repeats=1)
        >>> r.out_shapes
        ((1, 64, 8, 12), (1, 128, 4, 6), (1, 256, 2, 3))
        >>> r.gflops > 0, list(r.to_row())[:5]
        (True, ['name', 'options', 'in_specs', 'out_shapes', 'params'])
    """

    name: str
    options: dict[str, Any]
    in_specs: tuple[FeatureSpec, ...]
    out_specs: tuple[FeatureSpec, ...]
    out_shapes: tuple[tuple[int, ...], ...]
    params: int
    flops: int
    latency: LatencyStats
    image_size: tuple[int, int]
    batch: int
    threads: int
    device: str = "cpu"
    torch_version: str = field(default_factory=lambda: torch.__version__)
    #: what was timed: ``eager`` (the built neck), ``deployed`` (:func:`necklace.deploy`), ``inductor`` or
    #: ``torchscript`` (:func:`necklace.compile_model`)
    mode: str = "eager"
    #: seconds spent deploying / compiling before timing (0 for eager), reported apart from the latency
    prepare_s: float = 0.0

    @property
    def macs(self) -> int:
        """Multiply-accumulates (``flops // 2``)."""
        return self.flops // 2

    @property
    def gflops(self) -> float:
        """FLOPs in units of 1e9."""
        return self.flops / 1e9

    @property
    def gmacs(self) -> float:
        """MACs in units of 1e9."""
        return self.macs / 1e9

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (JSON-ready): settings, counts and latency statistics."""
        return {
            "name": self.name,
            "options": dict(self.options),
            "in_specs": [s.to_dict() for s in self.in_specs],
            "out_specs": [s.to_dict() for s in self.out_specs],
            "out_shapes": [list(s) for s in self.out_shapes],
            "params": self.params,
            "flops": self.flops,
            "macs": self.macs,
            "gflops": self.gflops,
            "gmacs": self.gmacs,
            "latency": self.latency.to_dict(),
            "image_size": list(self.image_size),
            "batch": self.batch,
            "threads": self.threads,
            "device": self.device,
            "torch_version": self.torch_version,
            "mode": self.mode,
            "prepare_s": self.prepare_s,
        }

    def to_row(self) -> dict[str, str | int | float]:
        """Flat dict of scalars (one CSV row); specs, shapes and options are compact strings."""
        return {
            "name": self.name,
            "options": ";".join(f"{k}={v}" for k, v in self.options.items()),
            "in_specs": " ".join(f"{s.channels}@{s.stride}" for s in self.in_specs),
            "out_shapes": " ".join("x".join(map(str, s)) for s in self.out_shapes),
            "params": self.params,
            "flops": self.flops,
            "macs": self.macs,
            "gflops": self.gflops,
            "median_ms": self.latency.median_ms,
            "min_ms": self.latency.min_ms,
            "max_ms": self.latency.max_ms,
            "mean_ms": self.latency.mean_ms,
            "repeats": self.latency.repeats,
            "image_h": self.image_size[0],
            "image_w": self.image_size[1],
            "batch": self.batch,
            "threads": self.threads,
            "device": self.device,
            "torch_version": self.torch_version,
            "mode": self.mode,
            "prepare_s": self.prepare_s,
        }


def default_in_specs(name: str, options: Mapping[str, Any] | None = None) -> tuple[FeatureSpec, ...]:
    """Typical backbone ``in_specs`` for neck ``name`` (strides 8/16/32), honouring a ``preset`` option: the
    registry entry's default (:meth:`necklace.registry.NeckInfo.in_specs_for`).

    ``fpn``/``pafpn``: ResNet-50 C3-C5 (plus C2 = 256@4 when ``levels`` starts at 2); ``bifpn``: the
    EfficientNet-B0..B6 of EfficientDet D0..D7; ``yolo_pafpn``: the YOLOv8 backbone of the same preset (n:
    64/128/256); ``yolo11_pafpn``: the YOLO11 backbone (n: 128/128/256). Other registered necks get ResNet-50
    C3-C5.

    Example:
        >>> [s.channels for s in default_in_specs("bifpn", {"preset": "d3"})]
        [48, 136, 384]
        >>> [s.channels for s in default_in_specs("yolo_pafpn", {"preset": "s"})]
        [128, 256, 512]
        >>> [s.channels for s in default_in_specs("yolo11_pafpn", {"preset": "m"})]
        [512, 512, 512]
    """
    return neck_info(name).in_specs_for(options)


def default_image_size(name: str, options: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """Image size ``(H, W)`` to benchmark ``name`` at: the registry entry's (640, or a BiFPN preset's own size).

    Example:
        >>> default_image_size("fpn"), default_image_size("bifpn"), default_image_size("bifpn", {"preset": "d4"})
        ((640, 640), (512, 512), (1024, 1024))
    """
    return neck_info(name).image_size_for(options)


def _check_image_size(image_size: Sequence[int] | int) -> tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    if (
        not isinstance(image_size, Sequence)
        or len(image_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in image_size)
    ):
        raise ValueError(f"image_size must be (H, W) with two positive ints, e.g. (640, 640); got {image_size!r}.")
    return (int(image_size[0]), int(image_size[1]))


def random_features(
    in_specs: Sequence[FeatureSpec],
    image_size: tuple[int, int],
    batch: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[torch.Tensor]:
    """Random backbone maps for an ``H x W`` image: level ``i`` is ``(batch, C_i, ceil(H/s_i), ceil(W/s_i))``.

    Example:
        >>> [tuple(f.shape) for f in random_features([FeatureSpec(8, 8), FeatureSpec(16, 16)], (97, 131))]
        [(1, 8, 13, 17), (1, 16, 7, 9)]
    """
    gen = torch.Generator().manual_seed(seed)
    h, w = _check_image_size(image_size)
    return [torch.randn(batch, s.channels, *s.size_for(h, w), generator=gen).to(device) for s in in_specs]


def bench_neck(
    name: str,
    in_specs: Sequence[FeatureSpec | tuple[int, int]] | None = None,
    image_size: tuple[int, int] | int | None = None,
    batch: int = 1,
    options: Mapping[str, Any] | None = None,
    warmup: int = 2,
    repeats: int = 10,
    threads: int | None = None,
    progress: Progress | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    mode: str = "eager",
) -> BenchResult:
    """Build neck ``name`` with ``options`` and measure params, FLOPs and latency on random backbone maps.

    Defaults: ``in_specs`` from :func:`default_in_specs`, ``image_size`` from :func:`default_image_size`.
    Inputs are random maps of ``ceil(H / stride)`` per level; FLOPs are for the whole batch.

    ``mode`` picks what is timed (one of :data:`BENCH_MODES`): ``eager`` the neck as built, ``deployed``
    :func:`necklace.deploy` of it (BN folded, re-parameterised, memory format timed), ``inductor`` /
    ``torchscript`` :func:`necklace.compile_model`. Deploy/compile time is ``prepare_s``, not part of the latency.

    Example:
        >>> r = bench_neck("bifpn", in_specs=[(16, 8), (32, 16), (64, 32)], image_size=(64, 64),
        ...                options={"width": 16, "repeats": 1}, warmup=0, repeats=2)
        >>> [s.stride for s in r.out_specs], r.latency.repeats
        ([8, 16, 32, 64, 128], 2)
    """
    options = dict(options or {})
    specs = validate_in_specs(as_feature_specs(in_specs)) if in_specs is not None else default_in_specs(name, options)
    size = _check_image_size(image_size if image_size is not None else default_image_size(name, options))
    _check_count("batch", batch, 1)
    _check_count("warmup", warmup, 0)
    _check_count("repeats", repeats, 1)
    if mode not in BENCH_MODES:
        raise ValueError(f"unknown bench mode {mode!r}; choose one of {list(BENCH_MODES)}.")
    dev = torch.device(device)
    module = build_neck(name, specs, **options).to(dev).eval()
    feats = random_features(specs, size, batch=batch, seed=seed, device=dev)
    with torch.no_grad():
        outs = _forward(module, feats)
    out_shapes = tuple(tuple(int(d) for d in o.shape) for o in outs)
    out_specs = tuple(getattr(module, "out_specs", ()))
    flops = count_flops(module, feats)
    with _num_threads(threads) as used_threads:
        timed, prepare_s = _prepare(module, feats, mode)
        latency = measure_latency(timed, feats, warmup=warmup, repeats=repeats, progress=progress)
    return BenchResult(
        name=name,
        options=options,
        in_specs=tuple(specs),
        out_specs=out_specs,
        out_shapes=out_shapes,
        params=count_params(module),
        flops=flops,
        latency=latency,
        image_size=size,
        batch=batch,
        threads=used_threads,
        device=str(dev),
        mode=mode,
        prepare_s=prepare_s,
    )


def _prepare(module: nn.Module, feats: list[torch.Tensor], mode: str) -> tuple[Any, float]:
    """The callable to time for ``mode`` and the seconds it took to make it."""
    if mode == "eager":
        return module, 0.0
    start = time.perf_counter()
    if mode == "torchscript":
        from necklace.deploy.compiled import CompileReport, compile_model

        compiled = compile_model(module, feats, backend=mode)
        return compiled, CompileReport.of(compiled).compile_s
    from necklace.deploy import deploy

    return deploy(module, feats, runtime="torch" if mode == "deployed" else mode), time.perf_counter() - start
