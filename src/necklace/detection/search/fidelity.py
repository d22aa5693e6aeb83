"""Cheap, honest fidelity: short trainings of neck + head on cached maps of a frozen backbone.

1. **A frozen backbone.** ``base.pretrained``: the pretrained backbone as is. Otherwise (nothing is downloaded)
   one end-to-end training of the detector with an FPN over every backbone level (``warmup_steps`` of the base
   recipe, through :func:`necklace.detection.train.train`, so it resumes like any run) gives the backbone every
   candidate then shares, frozen (eval mode: BatchNorm statistics fixed).
2. **Cached maps.** Every image goes once through the detector's own transform (resize, normalise, pad to 32)
   and the frozen backbone; the maps are kept (and saved beside the study). :class:`CachedBackbone` is a
   :class:`~necklace.detection.Backbone` that returns the cached maps of the images of the current batch
   (:meth:`CachedBackbone.select`), so a torchvision detector runs unchanged on top of it: its transform still
   resizes the (all-zero, right-sized) images and the targets, its heads and losses are torchvision's own.
3. **Short trainings** (:func:`train_short`): only neck + head learn; evaluations (COCO, on a held-out part of the
   training images) after each rung; at a rung the caller may stop the training (pruning), and a training
   interrupted between rungs resumes from the last rung's checkpoint.

Batches of differently sized images are padded with zeros in map space (the real model pads in image space):
exact for the usual fixed-size data, an approximation otherwise.

Example:
    >>> from necklace.detection import TinyBackbone
    >>> bb = TinyBackbone(width=4).eval()
    >>> cached = CachedBackbone(bb.out_specs, [[f[0] for f in bb(torch.rand(1, 3, 64, 64))]])
    >>> cached.select([0]); [tuple(m.shape) for m in cached(torch.zeros(1, 3, 64, 64))]
    [(1, 8, 8, 8), (1, 16, 4, 4), (1, 32, 2, 2)]
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from necklace.detection.backbones import Backbone, build_backbone
from necklace.detection.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from necklace.detection.detectors import build_detector
from necklace.detection.evaluate import CocoMetrics, coco_metrics, predictions_to_coco, targets_to_coco
from necklace.detection.train import CHECKPOINT_NAME, TrainConfig, build_datasets, load_model, lr_factor, train
from necklace.spec import FeatureSpec

__all__ = [
    "CachedBackbone",
    "FeatureCache",
    "RungResult",
    "ShortTraining",
    "UniformWidth",
    "frozen_backbone",
    "train_short",
    "uniform_width",
    "warmup_config",
]


# ------------------------------------------------------------------------------------------------ the backbone
def warmup_config(base: TrainConfig, steps: int, output: str | Path, seed: int = 0) -> TrainConfig:
    """The end-to-end training whose backbone the short trainings freeze: ``base`` with an FPN (width 32) over
    every level of the backbone plus one, ``steps`` steps, no evaluation.

    Example:
        >>> from necklace.detection.search.config import CPU_BASE
        >>> cfg = warmup_config(CPU_BASE, 300, "out/backbone")
        >>> cfg.neck, cfg.neck_options, cfg.steps
        ('fpn', {'width': 32, 'levels': [2, 6]}, 300)
    """
    specs = build_backbone(base.backbone, pretrained=False, **base.backbone_options).out_specs
    lo, hi = specs[0].level, specs[-1].level
    return base.replace(
        neck="fpn",
        neck_options={"width": 32, "levels": [lo, min(hi + 1, 7)]},
        steps=steps,
        epochs=None,
        seed=seed,
        output=str(output),
        eval=False,
        tensorboard=False,
    )


def frozen_backbone(
    base: TrainConfig, warmup_steps: int, output: str | Path, seed: int = 0, progress: bool = True
) -> tuple[Backbone, dict[str, Any]]:
    """The frozen backbone of the short trainings and what it cost: ``{"source", "steps", "seconds",
    "step_seconds"}`` (``step_seconds``: one end-to-end training step, used to size the study).

    ``base.pretrained``: the pretrained backbone; otherwise :func:`warmup_config` trained (or resumed, or reused
    when finished) in ``output``.
    """
    if base.pretrained and warmup_steps == 0:
        bb = build_backbone(base.backbone, pretrained=True, **base.backbone_options)
        info: dict[str, Any] = {"source": "pretrained", "steps": 0, "seconds": 0.0, "step_seconds": math.nan}
    else:
        cfg = warmup_config(base, warmup_steps, output, seed)
        ckpt = Path(output) / CHECKPOINT_NAME
        state = load_checkpoint(ckpt) if ckpt.is_file() else None
        if state is None or not state.get("complete"):
            if progress:
                what = f"resuming at step {state['step']}" if state else "training"
                print(
                    f"search: backbone warm-up ({warmup_steps} steps, fpn over every level): {what}",
                    file=sys.stderr,
                    flush=True,
                )
            train(cfg, resume=state is not None, progress=progress)
            state = load_checkpoint(ckpt)
        model, _ = load_model(ckpt, "cpu")
        adapter: Any = model.backbone
        bb = adapter.backbone
        seconds = float(state.get("train_time", math.nan))
        info = {"source": "warm-up", "steps": int(state["step"]), "seconds": seconds}
        info["step_seconds"] = seconds / max(int(state["step"]), 1)
    bb.eval()
    for p in bb.parameters():
        p.requires_grad_(False)
    return bb, info


class CachedBackbone(Backbone):
    """Returns cached backbone maps instead of computing them: ``maps[i]`` are image ``i``'s maps (no batch dim).

    Call :meth:`select` with the indices of the batch before each forward; the forward returns their maps stacked
    and zero-padded to the batch's size (``ceil(H / stride)``), checking that the batch has as many images.

    Example:
        >>> specs = (FeatureSpec(2, 8),)
        >>> cb = CachedBackbone(specs, [[torch.ones(2, 3, 4)], [torch.ones(2, 4, 4)]])
        >>> cb.select([0, 1]); cb(torch.zeros(2, 3, 32, 32))[0].shape
        torch.Size([2, 2, 4, 4])
    """

    def __init__(self, out_specs: Sequence[FeatureSpec], maps: Sequence[Sequence[Tensor]]) -> None:
        super().__init__(out_specs)
        self.maps: Sequence[Sequence[Tensor]] = list(maps)
        self._selected: list[int] = []

    def select(self, indices: Sequence[int]) -> None:
        """The images of the next forward, in batch order."""
        self._selected = [int(i) for i in indices]

    def forward(self, images: Tensor) -> list[Tensor]:
        if images.shape[0] != len(self._selected):
            raise ValueError(
                f"CachedBackbone: the batch has {images.shape[0]} images but select() named "
                f"{len(self._selected)}; call select(batch_indices) before each forward."
            )
        h, w = images.shape[-2:]
        out = []
        for k, spec in enumerate(self.out_specs):
            th, tw = spec.size_for(int(h), int(w))
            level = []
            for i in self._selected:
                m = self.maps[i][k][..., :th, :tw].float()
                if m.shape[-2:] != (th, tw):  # a smaller image in a padded batch: pad its maps with zeros
                    m = nn.functional.pad(m, (0, tw - m.shape[-1], 0, th - m.shape[-2]))
                level.append(m)
            out.append(torch.stack(level).to(images.device))  # [N, C_k, ceil(H/s_k), ceil(W/s_k)]
        return out


class UniformWidth(nn.Module):
    """A neck whose outputs differ in width, each output projected (1x1 Conv-BN) to the width of its finest output:
    what torchvision's heads, shared across levels, need. The proxy head of a search inside a YOLO detector trains
    such necks (YOLO's own, with per-level widths) this way; the neck itself, timed and retrained by the verdict, is
    unchanged.

    Example:
        >>> neck = necklace.build_neck("yolo_pafpn", [FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)])
        >>> wide = UniformWidth(neck)
        >>> [s.channels for s in neck.out_specs], [s.channels for s in wide.out_specs]
        ([64, 128, 256], [64, 64, 64])
    """

    def __init__(self, neck: nn.Module) -> None:
        super().__init__()
        out_specs: tuple[FeatureSpec, ...] = tuple(neck.out_specs)  # type: ignore[arg-type]
        width = out_specs[0].channels
        self.neck = neck
        self.in_specs: tuple[FeatureSpec, ...] = tuple(neck.in_specs)  # type: ignore[arg-type]
        self.out_specs = tuple(FeatureSpec(width, s.stride) for s in out_specs)
        self.proj = nn.ModuleList(
            nn.Identity()
            if s.channels == width
            else nn.Sequential(nn.Conv2d(s.channels, width, 1, bias=False), nn.BatchNorm2d(width))
            for s in out_specs
        )

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        outs = self.neck(feats)  # L x [N, C_l, H_l, W_l]
        return [p(o) for p, o in zip(self.proj, outs, strict=True)]  # L x [N, C_0, H_l, W_l]


def uniform_width(neck: nn.Module) -> nn.Module:
    """``neck`` itself when its outputs share one width, else :class:`UniformWidth` ``(neck)``."""
    widths = {s.channels for s in neck.out_specs}  # type: ignore[union-attr]
    return neck if len(widths) == 1 else UniformWidth(neck)


# ------------------------------------------------------------------------------------------------ the cache
@dataclass
class FeatureCache:
    """Cached maps, targets and image sizes of the short trainings' training part and held-out part.

    Build it with :meth:`build`; :meth:`save` / :meth:`load` keep it beside the study (``key`` must match).

    Example:
        >>> from necklace.detection import TinyBackbone
        >>> base = TrainConfig(data_options={"num_images": 6}, image_size=64, batch_size=2)
        >>> cache = FeatureCache.build(base, TinyBackbone(width=4).eval(), holdout=0.34, max_images=None,
        ...                            progress=False)
        >>> len(cache.train_maps), len(cache.hold_maps), [tuple(m.shape) for m in cache.train_maps[0]]
        (4, 2, [(8, 8, 8), (16, 4, 4), (32, 2, 2)])
    """

    specs: tuple[FeatureSpec, ...]
    class_names: tuple[str, ...]
    train_maps: list[list[Tensor]]
    train_targets: list[dict[str, Any]]
    train_sizes: list[tuple[int, int]]
    hold_maps: list[list[Tensor]]
    hold_targets: list[dict[str, Any]]
    hold_sizes: list[tuple[int, int]]
    key: str = ""
    seconds: float = 0.0
    _gt: dict[str, Any] | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls,
        base: TrainConfig,
        backbone: Backbone,
        holdout: float,
        max_images: int | None,
        seed: int = 0,
        key: str = "",
        device: str = "cpu",
        progress: bool = True,
    ) -> FeatureCache:
        """Run ``backbone`` once over (at most ``max_images``, a seeded sample of) ``base``'s training images,
        through the detector's transform; a ``holdout`` fraction of them is kept apart for evaluation."""
        start = time.perf_counter()
        train_ds, _ = build_datasets(base)
        n = len(train_ds)  # type: ignore[arg-type]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        if max_images is not None:
            order = order[:max_images]
        n_hold = max(1, round(holdout * len(order)))
        if len(order) - n_hold < base.batch_size:
            raise ValueError(
                f"the short trainings need at least batch_size={base.batch_size} training images after holding out "
                f"{n_hold} of {len(order)}; add images or lower holdout / batch_size."
            )
        names = tuple(getattr(train_ds, "class_names", ()) or ())
        detector: Any = build_detector(
            base.detector,
            backbone,
            "fpn",
            max(len(names), 1),
            neck_options={"width": 8},
            min_size=base.image_size,
            max_size=base.image_size,
        )
        transform = detector.transform.eval()
        dev = torch.device(device)
        backbone = backbone.to(dev).eval()
        parts: dict[str, tuple[list[list[Tensor]], list[dict[str, Any]], list[tuple[int, int]]]] = {}
        for part, idx in (("train", order[n_hold:]), ("hold", order[:n_hold])):
            maps, targets, sizes = [], [], []
            for j, i in enumerate(idx):
                image, target = train_ds[i]
                with torch.no_grad():
                    batch = transform([image.to(dev)])[0].tensors  # [1, 3, H', W'] normalised, padded
                    feats = backbone(batch)
                maps.append([f[0].cpu() for f in feats])
                targets.append({k: v for k, v in target.items() if k in ("boxes", "labels", "image_id", "area")})
                sizes.append((int(image.shape[-2]), int(image.shape[-1])))
                if progress and (j + 1) % 200 == 0:
                    print(f"search: cached maps of {j + 1}/{len(idx)} {part} images", file=sys.stderr, flush=True)
            parts[part] = (maps, targets, sizes)
        return cls(
            tuple(backbone.out_specs),
            names,
            *parts["train"],
            *parts["hold"],
            key=key,
            seconds=time.perf_counter() - start,
        )

    def save(self, path: str | Path) -> Path:
        state = {k: getattr(self, k) for k in self.__dataclass_fields__ if not k.startswith("_")}
        state["specs"] = [s.to_dict() for s in self.specs]
        return save_checkpoint({"feature_cache": state}, path)

    @classmethod
    def load(cls, path: str | Path, key: str) -> FeatureCache | None:
        """The cache at ``path`` when it exists and was built with ``key``; ``None`` otherwise."""
        if not Path(path).is_file():
            return None
        state = dict(load_checkpoint(path)["feature_cache"])
        if state.get("key") != key:
            return None
        state["specs"] = tuple(FeatureSpec.from_dict(s) for s in state["specs"])
        state["class_names"] = tuple(state["class_names"])
        for k in ("train_sizes", "hold_sizes"):
            state[k] = [tuple(s) for s in state[k]]
        return cls(**state)

    @property
    def num_classes(self) -> int:
        if self.class_names:
            return len(self.class_names)
        return max((int(t["labels"].max()) for t in self.train_targets if len(t["labels"])), default=1)

    def ground_truth(self) -> dict[str, Any]:
        """COCO ground truth of the held-out images (labels as category ids)."""
        if self._gt is None:
            self._gt = targets_to_coco(self.hold_targets, self.hold_sizes, self.class_names or None)
        return self._gt


# ------------------------------------------------------------------------------------------------ short training
@dataclass(frozen=True)
class ShortTraining:
    """How a short training runs: the detector (``base``'s kind, options, image size, batch size, optimizer and
    learning rate), the rung steps (the last is its length), the seed and where rung checkpoints go.

    Example:
        >>> ShortTraining(TrainConfig(), rungs=(10, 30)).total_steps
        30
    """

    base: TrainConfig
    rungs: tuple[int, ...]
    seed: int = 0
    eval_batch_size: int = 8
    checkpoint: Path | None = None

    @property
    def total_steps(self) -> int:
        return self.rungs[-1]


@dataclass(frozen=True)
class RungResult:
    """The held-out metrics after ``step`` steps (rung ``rung``) and the seconds trained so far.

    Example:
        >>> RungResult(0, 40, CocoMetrics.from_stats([0.1] * 12), 3.0).to_dict()["ap"]
        0.1
    """

    rung: int
    step: int
    metrics: CocoMetrics
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "rung": self.rung,
            "step": self.step,
            "seconds": self.seconds,
            **{k: getattr(m, k) for k in ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RungResult:
        keys = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
        stats = [float(d[k]) for k in keys] + [-1.0] * 6
        return cls(int(d["rung"]), int(d["step"]), CocoMetrics.from_stats(stats), float(d["seconds"]))


def _optimizer(model: nn.Module, base: TrainConfig) -> torch.optim.Optimizer:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)  # norms and biases: no weight decay
    groups = [{"params": decay, "weight_decay": base.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if base.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=base.resolved_lr(), momentum=base.momentum)
    return torch.optim.AdamW(groups, lr=base.resolved_lr())


def _evaluate(model: nn.Module, backbone: CachedBackbone, cache: FeatureCache, batch_size: int) -> CocoMetrics:
    model.eval()
    results = []
    try:
        with torch.no_grad():
            n = len(cache.hold_maps)
            for start in range(0, n, batch_size):
                idx = list(range(start, min(start + batch_size, n)))
                backbone.select(idx)
                images = [torch.zeros(3, *cache.hold_sizes[i]) for i in idx]
                dets = model(images)
                results += predictions_to_coco(
                    [(int(cache.hold_targets[i]["image_id"]), d) for i, d in zip(idx, dets, strict=True)]
                )
    finally:
        model.train()
    return coco_metrics(cache.ground_truth(), results)


def train_short(
    make_neck: Callable[[], nn.Module],
    cache: FeatureCache,
    settings: ShortTraining,
    on_rung: Callable[[RungResult], None] | None = None,
) -> list[RungResult]:
    """Train neck + head of ``settings.base``'s detector on ``cache`` for ``settings.total_steps`` steps and
    evaluate on the held-out images at every rung; ``on_rung`` may raise to stop (pruning). Deterministic for a
    seed: the model is built after seeding, batches follow a seeded permutation per epoch. With
    ``settings.checkpoint`` a rung writes a checkpoint there and a later call resumes from it.

    Raises ``FloatingPointError`` when the loss stops being finite.
    """
    base = settings.base
    saved = load_checkpoint(settings.checkpoint) if settings.checkpoint and settings.checkpoint.is_file() else None
    torch.manual_seed(settings.seed)
    backbone = CachedBackbone(cache.specs, cache.train_maps)
    model = build_detector(
        base.detector,
        backbone,
        make_neck(),
        cache.num_classes,
        min_size=base.image_size,
        max_size=base.image_size,
        **base.detector_options,
    )
    model.train()
    optimizer = _optimizer(model, base)
    total = settings.total_steps
    warm = base.resolved_warmup(total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warm, base.schedule, base.min_lr_ratio)
    )
    results: list[RungResult] = []
    step, trained = 0, 0.0
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"])
        step, trained = int(saved["step"]), float(saved["seconds"])
        results = [RungResult.from_dict(r) for r in saved["rungs"]]
        for r in results:  # the caller sees every rung again (its pruning decisions are repeatable)
            if on_rung is not None:
                on_rung(r)
    n, bs = len(cache.train_maps), base.batch_size
    per_epoch = n // bs
    blank: dict[tuple[int, int], Tensor] = {}
    rung_steps = list(settings.rungs)
    t0 = time.perf_counter()
    while step < total:
        epoch, pos = divmod(step, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)).tolist()
        idx = perm[pos * bs : (pos + 1) * bs]
        backbone.maps = cache.train_maps
        backbone.select(idx)
        images = [blank.setdefault(cache.train_sizes[i], torch.zeros(3, *cache.train_sizes[i])) for i in idx]
        targets = [
            {k: v.clone() if isinstance(v, Tensor) else v for k, v in cache.train_targets[i].items()} for i in idx
        ]
        losses = model(images, targets)
        loss = sum(losses.values())
        assert isinstance(loss, Tensor)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step + 1} of a short training ({float(loss)}).")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if base.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), base.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        if step in rung_steps:
            backbone.maps = cache.hold_maps
            metrics = _evaluate(model, backbone, cache, settings.eval_batch_size)
            result = RungResult(rung_steps.index(step), step, metrics, trained + time.perf_counter() - t0)
            results.append(result)
            if settings.checkpoint is not None and step < total:
                save_checkpoint(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "rng": rng_state(),
                        "step": step,
                        "seconds": result.seconds,
                        "rungs": [r.to_dict() for r in results],
                    },
                    settings.checkpoint,
                )
            if on_rung is not None:
                on_rung(result)
    return results
