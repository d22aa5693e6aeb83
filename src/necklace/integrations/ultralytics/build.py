"""Build, convert and train: :func:`build_yolo`, :func:`from_ultralytics`, :func:`train_yolo`.

- :func:`build_yolo` puts any registered necklace neck (or a ``NeckGraph`` / graph file) into an Ultralytics
  detection model given as a ``YOLO``, a ``DetectionModel``, a model YAML name (``yolov8n.yaml``, shipped with
  Ultralytics) or a local checkpoint, at the pyramid levels you pick; a given model's weights stay in the
  backbone (and in ``Detect`` where its shapes still match).
- :func:`from_ultralytics` replaces a stock YOLOv8 / YOLO11 neck by necklace's ``yolo_pafpn`` / ``yolo11_pafpn``
  with the stock neck's weights converted: the same detector, run by necklace's engine.
- :func:`train_yolo` trains any Ultralytics model with Ultralytics' trainer on a ``data.yaml`` with a given seed
  and schedule, and returns what Ultralytics measured.

Nothing is downloaded: a YAML name builds a randomly initialised model from the config Ultralytics ships, and a
checkpoint path must exist locally.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from torch import nn
from ultralytics.engine.model import Model
from ultralytics.nn import tasks as _tasks
from ultralytics.nn.modules import Detect
from ultralytics.nn.tasks import DetectionModel, yaml_model_load

import necklace
from necklace.graph import GraphNeck, NeckGraph
from necklace.integrations.ultralytics.compat import check_ultralytics_version
from necklace.integrations.ultralytics.model import (
    NECKLACE_KEY,
    NecklaceDetectionModel,
    detect_levels,
    is_necklace_cfg,
)
from necklace.integrations.ultralytics.yolo import NecklaceYOLO
from necklace.registry import neck_info

__all__ = ["YoloRun", "build_yolo", "from_ultralytics", "source_model", "synthetic_yolo_dataset", "train_yolo"]

#: Ultralytics' checkpoint loader (``attempt_load_one_weight`` before 8.3.2xx): ``(model, checkpoint dict)``
load_checkpoint = getattr(_tasks, "load_checkpoint", None) or getattr(_tasks, "attempt_load_one_weight")  # noqa: B009
#: necks whose ``preset`` defaults to the source model's scale (n / s / m / l / x)
SCALE_PRESET_NECKS = ("yolo_pafpn", "yolo11_pafpn")
ModelSource = Model | nn.Module | str | Path
NeckSource = str | Path | NeckGraph


def source_model(source: ModelSource) -> tuple[nn.Module, bool]:
    """The Ultralytics detection model ``source`` names and whether it carries weights to keep.

    ``source``: a ``YOLO`` (its ``.model``), a ``DetectionModel``, a model YAML (``yolov8n.yaml`` /
    ``yolo11s.yaml``: the config Ultralytics ships, random weights; a bare ``yolov8n`` means the same), or an
    existing local ``.pt`` checkpoint (never downloaded). ``ValueError`` / ``TypeError`` otherwise.

    Example:
        >>> model, weighted = source_model("yolo11n")
        >>> type(model).__name__, model.yaml["yaml_file"], weighted
        ('DetectionModel', 'yolo11n.yaml', False)
    """
    check_ultralytics_version()
    if isinstance(source, Model):
        inner = source.model
        if not isinstance(inner, nn.Module):
            raise TypeError(
                f"the YOLO object holds {inner!r}, not a PyTorch model (an exported model?); give the .pt "
                "checkpoint or model YAML it came from."
            )
        return _detection(inner, repr(source.model_name)), True
    if isinstance(source, nn.Module):
        return _detection(source, type(source).__name__), True
    if not isinstance(source, (str, Path)):
        raise TypeError(
            f"model must be an Ultralytics YOLO, a DetectionModel, a model YAML name or a .pt path, got "
            f"{type(source).__name__}."
        )
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix == "":
        path, suffix = path.with_suffix(".yaml"), ".yaml"  # 'yolov8n' -> the shipped yolov8n.yaml (no weights)
    if suffix in (".yaml", ".yml"):
        cfg = yaml_model_load(path)  # Ultralytics' loader: a local file or a config it ships (never downloads)
        model: nn.Module = (
            NecklaceDetectionModel(cfg, verbose=False) if is_necklace_cfg(cfg) else DetectionModel(cfg, verbose=False)
        )
        return _detection(model, str(source)), False
    if suffix == ".pt":
        if not path.is_file():
            raise ValueError(
                f"checkpoint {str(source)!r} not found. necklace never downloads weights: get it first (e.g. "
                f"ultralytics.YOLO({path.name!r}) downloads Ultralytics' release) and pass the local path, or pass "
                f"a model YAML such as {path.stem + '.yaml'!r} for random weights."
            )
        loaded, _ = load_checkpoint(path)
        return _detection(loaded, str(source)), True
    raise ValueError(
        f"model {str(source)!r}: expected a model YAML (.yaml), a checkpoint (.pt), a YOLO or a DetectionModel."
    )


def _detection(model: nn.Module, what: str) -> nn.Module:
    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
    if type(head) is not Detect or not isinstance(getattr(model, "yaml", None), Mapping):
        raise ValueError(
            f"{what} is not an Ultralytics detection model built from a model YAML (its last layer is "
            f"{type(head).__name__}); necklace necks go into YOLO detection models (e.g. yolov8n.yaml, yolo11n.yaml)."
        )
    return model


def _as_graph(neck: NeckSource) -> NeckGraph | None:
    """``neck`` as a NeckGraph (a NeckGraph, a GraphNeck's graph, a graph file), ``None`` for a neck name."""
    if isinstance(neck, NeckGraph):
        return neck
    if isinstance(neck, GraphNeck):
        return neck.graph
    if isinstance(neck, Path) or (isinstance(neck, str) and Path(neck).suffix.lower() in (".yaml", ".yml", ".json")):
        if not Path(neck).is_file():
            raise ValueError(f"neck graph file {str(neck)!r} not found; give a registered neck name or a graph file.")
        return NeckGraph.load(neck)
    if not isinstance(neck, str):
        raise TypeError(
            f"neck must be a registered neck name ({', '.join(necklace.list_necks())}), a NeckGraph or a graph "
            f"YAML/JSON file, got {type(neck).__name__}."
        )
    return None


def _neck_section(neck: NeckSource, options: Mapping[str, Any], levels: tuple[int, int], scale: str) -> dict[str, Any]:
    """The YAML ``necklace`` section for ``neck`` with ``options`` at ``levels``."""
    graph = _as_graph(neck)
    section: dict[str, Any] = {"levels": list(levels), "scale": scale, "necklace_version": necklace.__version__}
    if graph is not None:
        if options:
            raise ValueError(
                f"options {sorted(options)} apply to registered necks; a NeckGraph carries its own settings. "
                "Edit the graph instead."
            )
        return {**section, "neck": None, "options": {}, "graph": graph.to_dict()}
    assert isinstance(neck, str)
    info = neck_info(neck)  # ValueError with the known names on a typo
    opts = dict(options)
    if "levels" not in opts and any(k.split()[0] == "levels" for k in info.knobs):
        opts["levels"] = list(levels)
    if neck in SCALE_PRESET_NECKS and "preset" not in opts and scale in ("n", "s", "m", "l", "x"):
        opts["preset"] = scale
    _check_plain(opts, f"{neck} options")
    return {**section, "neck": neck, "options": opts, "graph": None}


def _check_plain(value: Any, what: str) -> None:
    """Options are stored in the model YAML (checkpoints, trainers rebuild from it): plain data only."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{what}: keys must be strings, got {k!r}.")
            _check_plain(v, f"{what}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_plain(v, what)
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise TypeError(
            f"{what}: {type(value).__name__} values cannot be stored in the model YAML that checkpoints and "
            "trainers rebuild the neck from; use plain data (str, int, float, bool, lists, dicts), e.g. act='silu'."
        )


def _transfer(src: nn.Module, dst: NecklaceDetectionModel) -> dict[str, int]:
    """Copy ``src``'s backbone weights into ``dst`` (same layer indices) and its ``Detect`` weights where every
    shape matches; returns how many tensors each part took."""
    src_sd, dst_sd = src.state_dict(), dst.state_dict()
    nb = len(dst.yaml["backbone"])
    src_detect, dst_detect = len(cast(Any, src).model) - 1, len(dst.model) - 1
    backbone = {k: v for k, v in src_sd.items() if int(k.split(".")[1]) < nb}
    mismatched = [k for k, v in backbone.items() if k not in dst_sd or dst_sd[k].shape != v.shape]
    if mismatched:
        raise ValueError(f"the source backbone does not fit the new model's (e.g. {mismatched[:3]}).")
    head = {
        f"model.{dst_detect}." + k.split(".", 2)[2]: v for k, v in src_sd.items() if int(k.split(".")[1]) == src_detect
    }
    head_ok = bool(head) and all(k in dst_sd and dst_sd[k].shape == v.shape for k, v in head.items())
    head_ok = head_ok and len(head) == sum(1 for k in dst_sd if int(k.split(".")[1]) == dst_detect)
    dst.load_state_dict({**backbone, **(head if head_ok else {})}, strict=False)
    if head_ok and getattr(src, "names", None) is not None:
        dst.names = dict(cast(Any, src).names)
    return {"backbone": len(backbone), "detect": len(head) if head_ok else 0}


def build_yolo(
    model: ModelSource,
    neck: NeckSource,
    levels: tuple[int, int] | None = None,
    nc: int | None = None,
    pretrained: bool = True,
    verbose: bool = False,
    **options: Any,
) -> NecklaceYOLO:
    """An Ultralytics ``YOLO`` (:class:`NecklaceYOLO`) like ``model`` with ``neck`` as its neck.

    ``model``: see :func:`source_model`. ``neck``: a registered neck name with its ``options`` (``levels`` is
    passed for you to necks that take it; ``yolo_pafpn`` / ``yolo11_pafpn`` get the model's scale as ``preset``),
    a ``NeckGraph`` or a graph YAML/JSON file. ``levels``: the ``(finest, coarsest)`` pyramid levels of the
    neck's outputs and of the ``Detect`` head (default: a graph's own, else the model's, P3-P5 for YOLOv8 /
    YOLO11): ``(2, 5)``
    adds the stride-4 map (layer 2 of YOLOv8 / YOLO11), ``(3, 6)`` a level the neck makes above the backbone.
    The backbone's maps at those levels (the last backbone layer at each stride) are read off a dummy forward.
    ``nc``: number of classes (default: the model's; training sets it from the data). ``pretrained``: keep the
    given model's backbone weights (and its ``Detect`` weights where their shapes still match).

    ``ValueError`` naming what was given and expected when the neck's output levels cannot match ``levels``, the
    backbone has no map at the finest level, the model is not a detection model or a checkpoint is missing.

    Example:
        >>> yolo = build_yolo("yolov8n.yaml", "bifpn", width=32, repeats=1)
        >>> m = yolo.model
        >>> m.neck_layer.f, [s.stride for s in m.neck_layer.out_specs], type(m.model[-1]).__name__
        ([4, 6, 9], [8, 16, 32], 'Detect')
        >>> build_yolo("yolo11n.yaml", "yolo11_pafpn", levels=(2, 5)).model.stride.tolist()
        [4.0, 8.0, 16.0, 32.0]
    """
    check_ultralytics_version()
    src, weighted = source_model(model)
    cfg = copy.deepcopy(dict(cast(Any, src).yaml))
    graph = _as_graph(neck)
    if levels is not None:
        lv = _pair(levels)
    elif graph is not None:  # a graph's own output levels
        lv = (graph.out_specs[0].level, graph.out_specs[-1].level)
    else:  # the model's own Detect levels
        lv = detect_levels(src)
    scale = str((cfg.get(NECKLACE_KEY) or {}).get("scale") or cfg.get("scale") or "")
    cfg[NECKLACE_KEY] = _neck_section(neck, options, lv, scale)
    label = cfg[NECKLACE_KEY]["neck"] or "graph"
    stem = Path(str(cfg.get("yaml_file") or "yolo.yaml")).stem.split("-necklace-")[0]
    cfg["yaml_file"] = f"{stem}-necklace-{label}.yaml"
    if nc is not None:
        if isinstance(nc, bool) or not isinstance(nc, int) or nc < 1:
            raise ValueError(f"nc (number of classes) must be a positive int, got {nc!r}.")
        cfg["nc"] = nc
    yolo = NecklaceYOLO(cfg, verbose=verbose)
    if pretrained and weighted:
        _transfer(src, cast(NecklaceDetectionModel, yolo.model))
    return yolo


def _pair(levels: Any) -> tuple[int, int]:
    if isinstance(levels, str) or not hasattr(levels, "__len__") or len(levels) != 2:
        raise ValueError(f"levels must be a (finest, coarsest) pair such as (3, 5) for P3-P5, got {levels!r}.")
    lo, hi = int(levels[0]), int(levels[1])
    if lo > hi or lo < 1:
        raise ValueError(f"levels {tuple(levels)}: need 1 <= finest <= coarsest, e.g. (3, 5) for P3-P5.")
    return lo, hi


def from_ultralytics(model: ModelSource, neck: str | None = None) -> NecklaceYOLO:
    """The same YOLOv8 / YOLO11 detector with its stock neck replaced by necklace's equal one, weights converted.

    The backbone and ``Detect`` weights are copied, the neck's are mapped key by key
    (:func:`necklace.bench.peers.ultralytics_to_necklace`) onto ``yolo_pafpn`` (YOLOv8) / ``yolo11_pafpn``
    (YOLO11) with the model's scale as preset (``neck`` defaults to the one that matches). The result computes what
    the stock model computes: equal outputs bit for bit (the necklace neck runs torch's own ops), equal losses and
    equal training.
    ``ValueError`` when the model's head is not the stock YOLOv8 / YOLO11 P3-P5 neck.

    Example:
        >>> import torch
        >>> from ultralytics import YOLO
        >>> stock = YOLO("yolov8n.yaml").model.eval()
        >>> ours = from_ultralytics(stock).model.eval()
        >>> x = torch.rand(1, 3, 64, 64)
        >>> with torch.no_grad():
        ...     torch.equal(ours(x)[0], stock(x)[0])
        True
    """
    from necklace.bench.peers import ultralytics_to_necklace

    check_ultralytics_version()
    src, _ = source_model(model)
    if isinstance(src, NecklaceDetectionModel):
        raise ValueError("from_ultralytics converts a stock Ultralytics model; this one already has a necklace neck.")
    cfg = cast(Any, src).yaml
    rows = [str(r[2]) for r in cfg["head"][:-1]]
    name = neck or ("yolo11_pafpn" if "C3k2" in rows else "yolo_pafpn")
    if name not in SCALE_PRESET_NECKS:
        raise ValueError(f"from_ultralytics converts to yolo_pafpn (YOLOv8) or yolo11_pafpn (YOLO11), got {name!r}.")
    yolo = build_yolo(src, name, levels=(3, 5))
    ours = cast(NecklaceDetectionModel, yolo.model)
    nb = len(cfg["backbone"])
    holder = nn.Module()
    holder.layers = nn.ModuleList(list(cast(Any, src).model)[nb:-1])  # the stock neck, indexed from its first layer
    try:
        weights = ultralytics_to_necklace(holder, ours.neck)
    except ValueError as e:
        raise ValueError(
            f"from_ultralytics: the model's neck (head rows {rows}) is not the stock {name} layout it converts "
            f"(YOLOv8 / YOLO11 P3-P5, scale {cfg.get('scale')!r}): {e}"
        ) from e
    ours.neck.load_state_dict(weights)
    moved = _transfer(src, ours)
    if not moved["detect"]:
        raise ValueError("from_ultralytics: the Detect head's weights do not fit the rebuilt head.")
    return yolo


@dataclass(frozen=True)
class YoloRun:
    """What :func:`train_yolo` returns: the trained ``model`` (Ultralytics loads ``best.pt`` / ``last.pt`` into
    it; ``model.trainer`` is the trainer), Ultralytics' final validation ``metrics`` of ``best.pt``
    (``metrics/mAP50-95(B)``, ``metrics/mAP50(B)``, ``metrics/precision(B)``, ``metrics/recall(B)``), the run
    directory and checkpoints, and the per-epoch rows of its ``results.csv`` (losses and metrics per epoch).

    Example:
        >>> YoloRun(model=None, metrics={"fitness": 0.5}, save_dir=Path("runs/x")).best
        >>> YoloRun(model=None, metrics={}, save_dir=Path("r"), best=Path("r/best.pt")).best.name
        'best.pt'
    """

    model: Any
    metrics: dict[str, float]
    save_dir: Path
    best: Path | None = None
    last: Path | None = None
    epochs: list[dict[str, float]] = field(default_factory=list)


def train_yolo(
    model: Model,
    data: str | Path,
    epochs: int = 1,
    imgsz: int = 640,
    batch: int = 16,
    seed: int = 0,
    device: str | None = None,
    project: str | Path | None = None,
    name: str | None = None,
    **train_args: Any,
) -> YoloRun:
    """Train ``model`` (any Ultralytics ``YOLO``: a :class:`NecklaceYOLO` from :func:`build_yolo`, or a stock one
    as the baseline) with Ultralytics' trainer on ``data`` (a YOLO ``data.yaml``) for ``epochs`` at ``imgsz`` with
    ``batch`` and ``seed`` (deterministic), and return its :class:`YoloRun`.

    ``train_args`` go to ``model.train`` unchanged (``lr0``, ``optimizer``, ``plots``, ``val``, ``workers``...).
    Two calls with the same arguments train different necks on the same data, schedule and seed.

    Example (not run here: it trains)::

        run = train_yolo(build_yolo("yolov8n.yaml", "bifpn"), "data.yaml", epochs=10, imgsz=320, seed=0)
        run.metrics["metrics/mAP50-95(B)"], run.best
    """
    if not isinstance(model, Model):
        raise TypeError(f"train_yolo needs an Ultralytics YOLO (e.g. from build_yolo), got {type(model).__name__}.")
    for key, count in (("epochs", epochs), ("batch", batch)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{key} must be a positive int, got {count!r}.")
    args: dict[str, Any] = {"data": str(data), "epochs": epochs, "imgsz": imgsz, "batch": batch, "seed": seed}
    args.setdefault("deterministic", True)
    for key, value in (("device", device), ("project", project), ("name", name)):
        if value is not None:
            args[key] = str(value)
    model.train(**{**args, **train_args})
    trainer: Any = model.trainer
    metrics = {k: float(v) for k, v in (getattr(trainer, "metrics", None) or {}).items() if _number(v)}
    rows = trainer.read_results_csv() if hasattr(trainer, "read_results_csv") else {}
    epochs_rows = _rows(rows)
    best, last = Path(trainer.best), Path(trainer.last)
    return YoloRun(
        model=model,
        metrics=metrics,
        save_dir=Path(trainer.save_dir),
        best=best if best.exists() else None,
        last=last if last.exists() else None,
        epochs=epochs_rows,
    )


def _number(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _rows(columns: Any) -> list[dict[str, float]]:
    """``{column: [values...]}`` (Ultralytics' ``read_results_csv``) -> one dict per epoch."""
    if not isinstance(columns, Mapping) or not columns:
        return []
    keys = [k for k in columns if isinstance(columns[k], list)]
    n = min((len(columns[k]) for k in keys), default=0)
    return [{k.strip(): float(columns[k][i]) for k in keys if _number(columns[k][i])} for i in range(n)]


def synthetic_yolo_dataset(
    root: str | Path,
    num_train: int = 64,
    num_val: int = 16,
    image_size: int = 256,
    num_classes: int = 3,
    seed: int = 0,
) -> Path:
    """Write necklace's seeded synthetic detection set (:class:`necklace.detection.data.SyntheticShapes`) under
    ``root`` as an Ultralytics YOLO dataset (``images/{train,val}``, ``labels/{train,val}``) and return its
    ``data.yaml``. Files already written by the same call are reused.

    Example:
        >>> import tempfile
        >>> data = synthetic_yolo_dataset(tempfile.mkdtemp(), num_train=2, num_val=1, image_size=64)
        >>> data.read_text().splitlines()[1:5]
        ['train: images/train', 'val: images/val', 'names:', '  0: rectangle']
        >>> sorted(p.name for p in (data.parent / "labels" / "train").iterdir())
        ['000000.txt', '000001.txt']
    """
    from necklace.detection.data import SyntheticShapes, to_yolo

    for key, value in (("num_train", num_train), ("num_val", num_val), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive int, got {value!r}.")
    root = Path(root).resolve()
    for split, n, split_seed in (("train", num_train, seed), ("val", num_val, seed + 1_000_003)):
        images, labels = root / "images" / split, root / "labels" / split
        if len(list(labels.glob("*.txt"))) != n:
            ds = SyntheticShapes(n, image_size=(image_size, image_size), num_classes=num_classes, seed=split_seed)
            to_yolo(ds, images, labels)
    classes = SyntheticShapes(0, num_classes=num_classes).class_names
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(classes))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return data
