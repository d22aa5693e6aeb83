"""A search inside an Ultralytics YOLO detector (``necklace search --detector yolov8n``): what differs from the
torchvision path, phase by phase.

1. **Data**: the ``tiny_shapes`` preset is written once as an Ultralytics YOLO dataset (``data.yaml``,
   :func:`~necklace.detection.search.data.tiny_shapes_yolo`), ``synthetic`` as compare writes it, or the user's
   ``yolo:PATH/data.yaml``; the short trainings read the same files (the data file's ``train`` split, as necklace's
   :class:`~necklace.detection.YoloDetection`), the verdict hands the data file to Ultralytics.
2. **Latency on the target detector**: candidates output the detector's levels (its ``Detect`` head's) and are
   timed on its backbone's maps (channels and strides read off the model as ``build_yolo`` reads them) at its image
   size; ``latency_scope="detector"`` times the whole YOLO model with the candidate as its neck
   (``build_yolo(model_yaml, candidate graph)``, Ultralytics' NMS included). The family's own neck (``yolo_pafpn`` /
   ``yolo11_pafpn``) is the reference.
3. **Cheap fidelity, a proxy**: the frozen backbone is the YOLO model's own, after one warm-up training of the stock
   model by Ultralytics on the same data (:func:`yolo_warmup`: random weights, nothing downloaded), wrapped as a
   necklace :class:`~necklace.detection.Backbone` (:class:`YoloBackbone`) that undoes torchvision's ImageNet
   normalisation (YOLO reads RGB in [0, 1]); the short trainings then train neck + necklace's proxy head
   (:data:`~necklace.detection.search.config.YOLO_PROXY`, a torchvision head on the cached maps) exactly as the
   torchvision path does. Early rounds therefore rank necks on the frozen YOLO backbone's maps with a proxy head;
4. **only the verdict trains inside YOLO**, with Ultralytics' trainer, ``Detect`` head and loss
   (``compare`` on a :class:`~necklace.detection.compare.YoloTrainConfig`).

Ultralytics is imported when these functions run, never when this module is imported.

Example:
    >>> from necklace.detection.search.config import CPU_YOLO_BASE
    >>> [(c.name, c.options) for c in yolo_handmade(("bifpn",), CPU_YOLO_BASE)]
    [('yolo_pafpn', {'preset': 'n'}), ('bifpn', {'width': 64, 'repeats': 2, 'levels': [3, 5]})]
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from necklace.detection.backbones import Backbone
from necklace.detection.compare import NeckChoice
from necklace.detection.compare.yolo_config import YOLO_FAMILIES, YoloTrainConfig, yolo_neck_options
from necklace.detection.search.config import YOLO_PROXY, SearchConfig
from necklace.detection.search.data import tiny_shapes_yolo
from necklace.detection.search.space import SearchSpace
from necklace.detection.train import DataSpec, TrainConfig
from necklace.registry import neck_info
from necklace.spec import FeatureSpec

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "YoloBackbone",
    "YoloDetectorTimed",
    "proxy_config",
    "yolo_data",
    "yolo_detector_factory",
    "yolo_handmade",
    "yolo_space",
    "yolo_warmup",
]

#: torchvision's detection transform normalises images with these (``GeneralizedRCNNTransform``'s defaults)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WARMUP_RECORD = "warmup.json"


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ the backbone
class YoloBackbone(Backbone):
    """The backbone layers of an Ultralytics YOLO detection model as a necklace :class:`~necklace.detection.Backbone`:
    a batch normalised by torchvision's detection transform -> the maps ``build_yolo`` hands its neck (the last
    backbone layer at each stride of the chosen levels).

    The input is first mapped back to RGB in [0, 1] (``x * std + mean``), what YOLO models read; the layers run as
    Ultralytics' ``_predict_once`` runs them (each layer's ``f`` names its inputs). Build it with
    :meth:`from_model`.

    Example:
        >>> from ultralytics.nn.tasks import DetectionModel
        >>> bb = YoloBackbone.from_model(DetectionModel("yolov8n.yaml", verbose=False).eval(), (3, 5))
        >>> [(s.channels, s.stride) for s in bb.out_specs], bb.take
        ([(64, 8), (128, 16), (256, 32)], (4, 6, 9))
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        layers: Sequence[nn.Module],
        take: Sequence[int],
        out_specs: Sequence[FeatureSpec],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(out_specs)
        if len(take) != len(self.out_specs) or not take:
            raise ValueError(
                f"YoloBackbone: take names {len(take)} layers for {len(self.out_specs)} out_specs; give one layer "
                "index per returned map."
            )
        self.take = tuple(int(i) for i in take)
        if max(self.take) >= len(layers) or min(self.take) < 0:
            raise ValueError(f"YoloBackbone: take {list(self.take)} names layers outside 0..{len(layers) - 1}.")
        self.layers = nn.ModuleList(list(layers)[: max(self.take) + 1])
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_model(cls, model: nn.Module, levels: Sequence[int]) -> YoloBackbone:
        """The backbone of an Ultralytics detection model at ``levels = (lo, hi)``: the maps of levels
        ``lo .. min(hi, deepest)``, found by the dummy forward ``build_yolo`` uses."""
        from necklace.integrations.ultralytics.model import probe_backbone, select_levels

        nb = len(cast(Any, model).yaml["backbone"])
        layers = list(cast(Any, model).model[:nb])
        maps = select_levels(probe_backbone(layers), levels)
        return cls(layers, [m.layer for m in maps], [m.spec for m in maps])

    def forward(self, images: Tensor) -> list[Tensor]:
        x: Any = images * self.std + self.mean  # undo torchvision's normalisation: RGB in [0, 1], as YOLO reads it
        y: list[Any] = []
        for m in self.layers:
            f = cast(Any, m).f
            if f != -1:
                x = y[f] if isinstance(f, int) else [x if j == -1 else y[j] for j in f]
            x = m(x)
            y.append(x)
        return [y[i] for i in self.take]  # one [N, C_l, ceil(H / s_l), ceil(W / s_l)] map per level, finest first


# ------------------------------------------------------------------------------------------------ data
def yolo_data(config: SearchConfig, progress: bool = False) -> tuple[YoloTrainConfig, Path, str]:
    """``config.base`` on its Ultralytics data file (the preset or synthetic data written under
    ``config.output/data`` first), the data file and a description of the data."""
    base = config.base
    if not isinstance(base, YoloTrainConfig):
        raise TypeError(f"yolo_data needs a search inside a YOLO detector, got base {type(base).__name__}.")
    spec = DataSpec.parse(base.data)
    opts = dict(base.data_options)
    if config.preset is not None:
        n, n_val = int(opts.get("num_images", 256)), int(opts.get("val_images", 64))
        data = tiny_shapes_yolo(config.out / "data", n, n_val, base.image_size, int(opts.get("seed", 0)))
        text = f"tiny_shapes ({n} training images, every object COCO-small; a YOLO dataset)"
    elif spec.data_yaml is not None:
        data = Path(spec.data_yaml).resolve()
        if not data.is_file():
            raise ValueError(f"search: Ultralytics data file {spec.data_yaml!r} not found; give yolo:PATH/data.yaml.")
        text = f"`{spec.data_yaml}`"
    else:
        from necklace.integrations.ultralytics import synthetic_yolo_dataset

        o = base.synthetic
        name = (
            f"synthetic-{o['num_images']}+{o['val_images']}-{base.image_size}px-{o['num_classes']}cls-seed{o['seed']}"
        )
        _say(progress, f"search: writing the synthetic data set once -> {config.out / 'data' / name}")
        data = synthetic_yolo_dataset(
            config.out / "data" / name, o["num_images"], o["val_images"], base.image_size, o["num_classes"], o["seed"]
        )
        text = f"synthetic shapes ({o['num_images']} training images)"
    return base.replace(data=f"yolo:{data}", data_options={}), data, text


def proxy_config(base: YoloTrainConfig, data: Path, proxy: TrainConfig = YOLO_PROXY) -> TrainConfig:
    """The recipe of the short trainings: ``proxy``'s detector (head), batch, optimizer and learning rate on the
    ``train`` split of the Ultralytics data file ``data`` (read by necklace as ``yolo:IMAGES,LABELS,NAMES``) at the
    YOLO image size. ``ValueError`` when that split is not one image folder and one label folder."""
    from necklace.integrations.ultralytics.evaluate import read_split

    split = read_split(data, "train")
    image_dirs = sorted({str(p.parent) for p in split.images})
    label_dirs = sorted({str(p.parent) for p in split.labels})
    if len(image_dirs) != 1 or len(label_dirs) != 1:
        raise ValueError(
            f"search: the train split of {str(data)!r} spans {len(image_dirs)} image folders ({image_dirs[:3]}); the "
            "short trainings read one image folder and its labels folder. Put the training images in one folder."
        )
    bad = [n for n in split.names if "," in n or not n.strip()]
    if bad:
        raise ValueError(f"search: class names {bad} of {str(data)!r} must be non-empty and without commas.")
    spec = "yolo:" + ",".join([image_dirs[0], label_dirs[0], *split.names])
    return proxy.replace(data=spec, val_data=None, data_options={}, image_size=base.image_size)


def train_images(data: Path) -> int:
    """Images in the ``train`` split of an Ultralytics data file."""
    from necklace.integrations.ultralytics.evaluate import read_split

    return len(read_split(data, "train").images)


# ------------------------------------------------------------------------------------------------ the warm-up
def yolo_warmup(
    base: YoloTrainConfig, data: Path, epochs: int, output: str | Path, seed: int = 0, progress: bool = True
) -> tuple[YoloBackbone, dict[str, Any]]:
    """The frozen backbone of the short trainings and what it cost: the stock ``base.detector`` (its own neck),
    from random weights, trained ``epochs`` epochs by Ultralytics on ``data`` with ``base``'s batch, learning rate
    and training arguments, in ``output`` (Ultralytics' run directory); reused when finished, resumed from its
    ``last.pt`` when interrupted. Returns the backbone at ``base.levels`` (eval mode, no gradients) and
    ``{"source", "steps", "seconds", "step_seconds", "text"}``."""
    from necklace.detection.compare.yolo import _checkpoint_state, _console, _integration, _sigterm_as_interrupt

    ul = _integration()
    out = Path(output).resolve()
    last = out / "weights" / "last.pt"
    record_path = out / WARMUP_RECORD
    cfg = base.replace(neck=YOLO_FAMILIES[base.detector[:6]], neck_options={}, epochs=epochs, seed=seed)
    steps = epochs * math.ceil(train_images(data) / base.batch_size)
    state, _ = _checkpoint_state(last)
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    if record is None and state in ("finished", "epochs_done"):  # trained, stopped before its record was written
        record = {"epochs": epochs, "steps": steps, "seconds": math.nan}
    if record is None or state not in ("finished", "epochs_done"):
        from ultralytics import YOLO

        what = "resuming from its last.pt" if state == "resumable" else "training"
        _say(progress, f"search: backbone warm-up (stock {base.detector}, {epochs} epochs by Ultralytics): {what}")
        args = {**cfg.ultralytics_args(), "data": str(data), "project": str(out.parent), "name": out.name}
        args["exist_ok"] = True
        threads = torch.get_num_threads()
        t0 = time.perf_counter()
        try:
            with _console(progress), _sigterm_as_interrupt():
                if state == "resumable":
                    device = {"device": args["device"]} if "device" in args else {}
                    YOLO(str(last)).train(resume=True, data=args["data"], workers=args["workers"], **device)
                else:
                    (out / "results.csv").unlink(missing_ok=True)
                    YOLO(cfg.model_yaml).train(**args)
        finally:
            torch.set_num_threads(threads)  # Ultralytics sets the thread count for CPU training
        record = {"epochs": epochs, "steps": steps, "seconds": time.perf_counter() - t0}
        record["ultralytics"] = ul.ultralytics_version()
        out.mkdir(parents=True, exist_ok=True)
        tmp = record_path.with_name(f".{record_path.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(record_path)
    from necklace.integrations.ultralytics.build import load_checkpoint

    model, _ = load_checkpoint(last)
    backbone = YoloBackbone.from_model(model.float().eval(), base.levels)
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    seconds = float(record["seconds"])
    info = {
        "source": "warm-up",
        "steps": int(record["steps"]),
        "seconds": seconds,
        "step_seconds": seconds / max(int(record["steps"]), 1),
        "text": f"stock {base.detector} trained {epochs} epochs ({record['steps']} steps) by Ultralytics on this data, "
        "from random weights",
    }
    return backbone, info


# ------------------------------------------------------------------------------------------------ the race
def yolo_handmade(names: Sequence[str], base: YoloTrainConfig) -> tuple[NeckChoice, ...]:
    """The hand-made necks inside ``base.detector`` with the options ``compare`` and ``build_yolo`` give them,
    written out (the model's scale as ``preset`` of ``yolo_pafpn`` / ``yolo11_pafpn``, the detector's levels for
    necks that take ``levels``), so that the search builds what the verdict trains; the family's own neck first."""
    out = []
    for name in dict.fromkeys([YOLO_FAMILIES[base.detector[:6]], *names]):
        options = yolo_neck_options(name, base.detector)
        knobs = {k.split()[0] for k in neck_info(name).knobs}
        if name in YOLO_FAMILIES.values() and "preset" not in options:
            options["preset"] = base.scale
        if "levels" in knobs and "levels" not in options:
            options["levels"] = list(base.levels)
        out.append(NeckChoice(name, options))
    return tuple(out)


def yolo_space(base: YoloTrainConfig, free_cells: bool = False) -> SearchSpace:
    """The space inside ``base.detector``: every candidate outputs the detector's levels; widths around the P3 width
    of YOLOv8's neck at the model's scale (n: 32 .. 128); ``nasfpn`` only over five levels.

    Example:
        >>> from necklace.detection.search.config import CPU_YOLO_BASE
        >>> s = yolo_space(CPU_YOLO_BASE)
        >>> s.min_levels, s.max_levels, s.widths, "nasfpn" in s.templates
        ((3,), (5,), (32, 48, 64, 96, 128), False)
    """
    lo, hi = base.levels
    w = int(yolo_neck_options("pafpn", base.detector)["width"])
    widths = tuple(sorted({w // 2, w * 3 // 4, w, w * 3 // 2, w * 2}))
    templates = tuple(t for t in ("fpn", "pafpn", "bifpn", "nasfpn", "yolo_pan") if t != "nasfpn" or hi - lo == 4)
    return SearchSpace(templates=templates, min_levels=(lo,), max_levels=(hi,), widths=widths, free_cells=free_cells)


class YoloDetectorTimed(nn.Module):
    """A YOLO detection model and Ultralytics' NMS (compare's evaluation settings) called as a torchvision detector
    is, with a list of images: what :class:`~necklace.detection.search.latency.LatencyProbe` times when
    ``scope="detector"``.

    Example:
        >>> from ultralytics.nn.tasks import DetectionModel
        >>> timed = YoloDetectorTimed(DetectionModel("yolov8n.yaml", verbose=False).eval())
        >>> with torch.no_grad():
        ...     detections = timed([torch.rand(3, 64, 64)])
        >>> len(detections), detections[0].shape[1]  # one image: (n, 6) boxes x1y1x2y2, score, class
        (1, 6)
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from necklace.detection.compare.yolo import _WithNms

        self.model = _WithNms(model)

    def forward(self, images: Sequence[Tensor]) -> list[Tensor]:
        return cast(list[Tensor], self.model(torch.stack(list(images))))  # [N, 3, H, W] -> N x (n, 6) detections


def yolo_detector_factory(base: YoloTrainConfig, num_classes: int) -> Callable[[nn.Module], nn.Module]:
    """``make(neck) -> the whole YOLO detector`` for ``scope="detector"``: ``build_yolo(base.model_yaml,
    neck.graph, levels=base.levels, nc=num_classes)`` (random weights: only its time matters) + NMS."""
    from necklace.detection.compare.yolo import _integration

    ul = _integration()

    def make(neck: nn.Module) -> nn.Module:
        graph = getattr(neck, "graph", None)
        if graph is None:
            raise TypeError(f"the neck {type(neck).__name__} has no graph; build_yolo needs a graph neck to time it.")
        yolo = ul.build_yolo(base.model_yaml, graph, levels=base.levels, nc=num_classes)
        return YoloDetectorTimed(yolo.model.float().eval())

    return make
