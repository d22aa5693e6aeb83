"""The Ultralytics detection model with a necklace neck: :class:`NecklaceDetectionModel` and :class:`NeckLayer`.

The model keeps Ultralytics' layer-list conventions, so everything Ultralytics does with a ``DetectionModel``
(``_predict_once``, the ``save`` list, ``v8DetectionLoss``, ``fuse()``, EMA, export, distillation feature hooks)
works unchanged. For YOLOv8n with a BiFPN on P3-P5 the layers are::

    0-9   the backbone, built by Ultralytics' own parse_model from the model YAML's ``backbone`` rows
    10    NeckLayer        from [4, 6, 9]     necklace neck: [P3, P4, P5] maps -> its outputs (a list)
    11-13 Index            from 10            one level each (Ultralytics' own Index layer)
    14    Detect           from [11, 12, 13]  Ultralytics' Detect, built for the neck's out_specs

Its model YAML (``model.yaml``, a dict: what checkpoints store and what trainers rebuild from) is the source
model's YAML with a ``necklace`` section that says which neck to build, and ``head`` rows that describe the
layers above. Ultralytics' ``parse_model`` resolves module names in its own module globals and cannot build the
``NecklaceNeck`` row: :class:`NecklaceDetectionModel` builds the backbone, ``Index`` and ``Detect`` rows with
``parse_model`` (a stand-in ``nn.Identity`` row in place of the neck) and puts the necklace neck in that slot.
Stock Ultralytics code that rebuilds a model from this YAML (``DetectionTrainer.get_model``, which
``YOLO("last.pt").train(resume=True)`` calls) stops with ``KeyError`` on the neck row, whose module name says
what to call instead (:data:`NECK_ROW_MODULE`). Checkpoints pickle the model object itself: ``YOLO("best.pt")``
loads it for predict / val / export in any process that can import necklace.

The class paths here (``necklace.integrations.ultralytics.model.NecklaceDetectionModel`` / ``NeckLayer``) are
stored in checkpoints: they are part of the checkpoint format.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from necklace.graph import GraphNeck, NeckGraph
from necklace.integrations.ultralytics.compat import check_ultralytics_version
from necklace.registry import build_neck, neck_info
from necklace.spec import FeatureSpec

try:
    from ultralytics.nn.modules import Detect
    from ultralytics.nn.tasks import DetectionModel, parse_model, yaml_model_load
    from ultralytics.utils import LOGGER
    from ultralytics.utils.torch_utils import initialize_weights
except ImportError as e:  # not installed, or a version without these names
    check_ultralytics_version()
    raise ImportError(f"necklace's Ultralytics integration cannot import Ultralytics' model code: {e}") from e

__all__ = [
    "NECKLACE_KEY",
    "NECK_ROW_MODULE",
    "BackboneMap",
    "NeckLayer",
    "NecklaceDetectionModel",
    "is_necklace_cfg",
    "probe_backbone",
]

#: the key of the model YAML section that describes the necklace neck
NECKLACE_KEY = "necklace"
#: the module name of the neck row in the model YAML: what stock Ultralytics code that rebuilds the model from
#: the YAML reports (``KeyError``) since it cannot resolve it
NECK_ROW_MODULE = (
    "NecklaceNeck (a necklace neck: Ultralytics' parse_model cannot build it; load the model with "
    "necklace.integrations.ultralytics.NecklaceYOLO(path), e.g. NecklaceYOLO('last.pt').train(resume=True))"
)
#: input size of the dummy forward that reads the backbone's strides and channels
PROBE_SIZE = 256


class NeckLayer(nn.Module):
    """A necklace neck as one Ultralytics layer: the list of backbone maps its ``f`` names -> the neck's outputs.

    Carries the attributes Ultralytics' layers carry (``i`` index, ``f`` input layers, ``type``, ``np`` parameter
    count, set by :class:`NecklaceDetectionModel`); ``in_specs`` / ``out_specs`` are the neck's.

    Ultralytics' ``load_checkpoint`` sets ``inplace = True`` on every module that has that attribute; the neck's
    activations built out of place (a pre-activation on a map other nodes read, e.g. ``P7 = conv(relu(P6))``)
    would then overwrite that map. The layer keeps the list of those activations and sets them back to out of
    place before each call.

    Example:
        >>> import necklace
        >>> layer = NeckLayer(necklace.build_neck("fpn", [(16, 8), (32, 16)], width=8, levels=(3, 4)))
        >>> [tuple(o.shape) for o in layer([torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)])]
        [(1, 8, 8, 8), (1, 8, 4, 4)]
    """

    def __init__(self, neck: nn.Module) -> None:
        super().__init__()
        specs = (getattr(neck, "in_specs", None), getattr(neck, "out_specs", None))
        if not isinstance(neck, nn.Module) or any(s is None for s in specs):
            raise TypeError(
                f"NeckLayer needs a necklace neck (an nn.Module with in_specs and out_specs, e.g. from "
                f"necklace.build_neck), got {type(neck).__name__}."
            )
        self.neck = neck
        self.in_specs: tuple[FeatureSpec, ...] = tuple(cast(Sequence[FeatureSpec], specs[0]))
        self.out_specs: tuple[FeatureSpec, ...] = tuple(cast(Sequence[FeatureSpec], specs[1]))
        #: the neck's activations built with ``inplace=False`` (plain references, not submodules)
        self._out_of_place: list[nn.Module] = [m for m in neck.modules() if getattr(m, "inplace", None) is False]

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        for m in self._out_of_place:  # undo Ultralytics' load_checkpoint(inplace=True) on them (see the docs)
            cast(Any, m).inplace = False
        # x: one (B, C_l, H/s_l, W/s_l) map per input level, finest first -> the neck's outputs, finest first
        return list(self.neck(list(x)))


# ------------------------------------------------------------------------------------------------ the YAML
def is_necklace_cfg(cfg: object) -> bool:
    """Whether ``cfg`` is a model YAML dict with a :data:`NECKLACE_KEY` section (a necklace-necked model).

    Example:
        >>> is_necklace_cfg({"backbone": [], "necklace": {"neck": "fpn"}}), is_necklace_cfg({"backbone": []})
        (True, False)
    """
    return isinstance(cfg, Mapping) and isinstance(cfg.get(NECKLACE_KEY), Mapping)


def _load_cfg(cfg: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(cfg, (str, Path)):
        loaded: dict[str, Any] = yaml_model_load(cfg)  # Ultralytics' loader: shipped configs, no download
        if is_necklace_cfg(loaded):
            loaded["scale"] = loaded[NECKLACE_KEY].get("scale") or loaded.get("scale", "")  # not the file name's
        cfg = loaded
    if not isinstance(cfg, Mapping):
        raise TypeError(f"NecklaceDetectionModel needs a model YAML dict or path, got {type(cfg).__name__}.")
    if not is_necklace_cfg(cfg):
        raise ValueError(
            f"model YAML {cfg.get('yaml_file', '(dict)')!r} has no {NECKLACE_KEY!r} section, so it describes no "
            "necklace neck. Build a necklace-necked model with necklace.integrations.ultralytics.build_yolo(model, "
            "neck=...), or load a plain Ultralytics model with ultralytics.YOLO."
        )
    for key in ("backbone", "head"):
        if not isinstance(cfg.get(key), list) or not cfg[key]:
            raise ValueError(f"model YAML {cfg.get('yaml_file', '(dict)')!r}: {key!r} must be a non-empty list.")
    return copy.deepcopy(dict(cfg))


def _neck_from_section(section: Mapping[str, Any], in_specs: Sequence[FeatureSpec]) -> nn.Module:
    """Build the neck the ``necklace`` section describes for the backbone maps ``in_specs``."""
    graph = section.get("graph")
    if graph is not None:
        neck_graph = NeckGraph.from_dict(graph)
        if tuple(neck_graph.in_specs) != tuple(in_specs):
            raise ValueError(
                "the neck graph's in_specs "
                f"{[(s.channels, s.stride) for s in neck_graph.in_specs]} do not match the backbone's maps at those "
                f"levels {[(s.channels, s.stride) for s in in_specs]} (channels, stride). Make the graph for this "
                "backbone (in_specs = its maps) or pick the backbone the graph was made for."
            )
        return GraphNeck(neck_graph)
    name = section.get("neck")
    if not isinstance(name, str):
        raise ValueError(f"the {NECKLACE_KEY!r} section needs 'neck' (a registered neck name) or 'graph'.")
    return build_neck(name, in_specs, **dict(section.get("options") or {}))


# -------------------------------------------------------------------------------------------- the backbone
class BackboneMap:
    """One backbone layer's output as the dummy forward of :func:`probe_backbone` saw it.

    Example:
        >>> BackboneMap(4, 64, 8).spec
        FeatureSpec(channels=64, stride=8)
    """

    __slots__ = ("channels", "layer", "stride")

    def __init__(self, layer: int, channels: int, stride: int) -> None:
        self.layer, self.channels, self.stride = layer, channels, stride

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec(self.channels, self.stride)

    def __repr__(self) -> str:
        return f"BackboneMap(layer={self.layer}, channels={self.channels}, stride={self.stride})"


def probe_backbone(layers: Sequence[nn.Module], ch: int = 3, size: int = PROBE_SIZE) -> dict[int, BackboneMap]:
    """Run Ultralytics backbone ``layers`` (with their ``f`` / ``i``) on one ``ch x size x size`` zero image and
    return, per pyramid level, the *last* layer whose output has that stride (its channels and stride).

    The last layer at a stride is the deepest map there (YOLOv8: layers 2, 4, 6, 9 for P2-P5; YOLO11: 2, 4, 6,
    10). The layers are run in eval mode without gradients; their mode is restored.

    Example:
        >>> from ultralytics.nn.tasks import DetectionModel
        >>> bb = DetectionModel("yolov8n.yaml", verbose=False).model[:10]
        >>> {level: (m.layer, m.channels) for level, m in probe_backbone(bb).items()}
        {1: (0, 16), 2: (2, 32), 3: (4, 64), 4: (6, 128), 5: (9, 256)}
    """
    modes = [m.training for m in layers]
    y: list[Tensor | None] = []
    found: dict[int, BackboneMap] = {}
    x: Any = torch.zeros(1, ch, size, size, device=_device_of(layers))
    try:
        with torch.no_grad():
            for m in layers:
                m.eval()
                f = cast(Any, m).f
                if f != -1:
                    x = y[f] if isinstance(f, int) else [x if j == -1 else y[j] for j in f]
                x = m(x)
                y.append(x)
                if isinstance(x, Tensor) and x.dim() == 4 and size % x.shape[-1] == 0:
                    stride = size // int(x.shape[-1])
                    if stride & (stride - 1) == 0 and stride > 1:
                        level = stride.bit_length() - 1
                        found[level] = BackboneMap(int(cast(Any, m).i), int(x.shape[1]), stride)
    finally:
        for m, mode in zip(layers, modes, strict=True):
            m.train(mode)
    return dict(sorted(found.items()))


def _device_of(layers: Sequence[nn.Module]) -> torch.device:
    for m in layers:
        for p in m.parameters():
            return p.device
    return torch.device("cpu")


def select_levels(maps: Mapping[int, BackboneMap], levels: Sequence[int]) -> list[BackboneMap]:
    """The backbone maps a neck with output levels ``levels = (lo, hi)`` reads: levels ``lo .. min(hi, top)``.

    Levels above the backbone's deepest map (P6 over a P5 backbone) are made by the neck. ``ValueError`` when
    ``lo`` is not one of the backbone's levels.

    Example:
        >>> maps = {2: BackboneMap(2, 32, 4), 3: BackboneMap(4, 64, 8), 5: BackboneMap(9, 256, 32)}
        >>> [m.layer for m in select_levels({**maps, 4: BackboneMap(6, 128, 16)}, (3, 6))]
        [4, 6, 9]
    """
    lo, hi = _level_pair(levels)
    top = max(maps)
    wanted = range(lo, min(hi, top) + 1)
    missing = [level for level in wanted if level not in maps]
    if missing or lo < 1:
        have = ", ".join(f"P{level} (stride {m.stride}, layer {m.layer})" for level, m in maps.items())
        raise ValueError(
            f"levels {(lo, hi)}: the backbone has no map at level(s) {missing or [lo]} (stride "
            f"{[2**level for level in (missing or [lo])]}); it has {have}. Pick levels whose finest level is one of "
            f"these, e.g. levels=(3, 5) for P3-P5 or (2, 5) for P2-P5; levels above P{top} are made by the neck."
        )
    return [maps[level] for level in wanted]


def _level_pair(levels: Sequence[int]) -> tuple[int, int]:
    if isinstance(levels, str) or not isinstance(levels, Sequence) or len(levels) != 2:
        raise ValueError(f"levels must be a (finest, coarsest) pair such as (3, 5) for P3-P5, got {levels!r}.")
    lo, hi = (int(v) for v in levels)
    if lo > hi:
        raise ValueError(f"levels {tuple(levels)}: the finest level {lo} is above the coarsest {hi}.")
    return lo, hi


# ----------------------------------------------------------------------------------------------- the model
class NecklaceDetectionModel(DetectionModel):
    """An Ultralytics ``DetectionModel`` whose neck is a necklace neck (see the module docs for the layers).

    ``cfg`` is a model YAML dict (or file) with a ``necklace`` section, as :func:`~necklace.integrations.
    ultralytics.build_yolo` writes it: the section names the neck (``neck`` + ``options``, or a NeckGraph dict
    ``graph``) and its ``levels``; the backbone rows are Ultralytics'. The backbone's maps at those levels are
    read off a dummy forward, the neck is built for them, and the ``Detect`` head (the YAML's last ``head`` row)
    for the neck's ``out_specs``. ``ch`` / ``nc`` / ``verbose`` as in ``DetectionModel``.

    Example:
        >>> cfg = yaml_model_load("yolov8n.yaml")
        >>> cfg["necklace"] = {"neck": "fpn", "options": {"width": 32, "levels": [3, 5]}, "levels": [3, 5]}
        >>> model = NecklaceDetectionModel(cfg, verbose=False)
        >>> type(model.model[10]).__name__, model.model[10].f, model.model[-1].f, model.stride.tolist()
        ('NeckLayer', [4, 6, 9], [11, 12, 13], [8.0, 16.0, 32.0])
        >>> boxes, _ = model.eval()(torch.zeros(1, 3, 64, 96))  # eval: decoded boxes (4 + 80 rows per anchor)
        >>> tuple(boxes.shape)  # anchors: 8x12 + 4x6 + 2x3
        (1, 84, 126)
    """

    def __init__(
        self, cfg: Mapping[str, Any] | str | Path, ch: int = 3, nc: int | None = None, verbose: bool = True
    ) -> None:
        check_ultralytics_version()
        nn.Module.__init__(self)  # DetectionModel.__init__ would run parse_model on the neck row
        d = _load_cfg(cfg)
        section = dict(d[NECKLACE_KEY])
        d["channels"] = ch
        if nc and nc != d.get("nc"):
            LOGGER.info(f"Overriding model.yaml nc={d.get('nc')} with nc={nc}")
            d["nc"] = nc
        if section.get("scale"):
            d["scale"] = section["scale"]
        nb = len(d["backbone"])
        detect_row = list(d["head"][-1])

        # 1. backbone (Ultralytics' parse_model), its maps at the neck's levels, the neck
        backbone, _ = parse_model({**copy.deepcopy(d), "head": []}, ch=ch, verbose=False)
        maps = probe_backbone(list(backbone), ch)
        levels = _level_pair(section.get("levels") or (3, 5))
        inputs = select_levels(maps, levels)
        in_specs = [m.spec for m in inputs]
        neck = _neck_from_section(section, in_specs)
        layer = NeckLayer(neck)
        out_levels = [s.level for s in layer.out_specs]
        if out_levels != list(range(levels[0], levels[1] + 1)):
            raise ValueError(_levels_message(section, in_specs, layer.out_specs, levels))
        in_layers = [m.layer for m in inputs]

        # 2. the head rows: the neck, one Index per level, Detect; built by parse_model with a stand-in neck row
        index_rows = [[nb, 1, "Index", [s.channels, k]] for k, s in enumerate(layer.out_specs)]
        detect_row[0] = [nb + 1 + k for k in range(len(index_rows))]
        skeleton = {**copy.deepcopy(d), "head": [[-1, 1, "nn.Identity", []], *index_rows, detect_row]}
        seq, save = parse_model(copy.deepcopy(skeleton), ch=ch, verbose=False)  # it extends rows' args in place
        layers = list(seq)
        layers[:nb] = list(backbone)  # the probed backbone (same rows); the stand-in's own copy is dropped
        tagged: Any = layer  # Ultralytics' per-layer attributes (``type`` shadows nn.Module.type, as in Ultralytics)
        tagged.i, tagged.f, tagged.type = nb, in_layers, f"necklace.{section.get('neck') or 'graph'}"
        tagged.np = sum(p.numel() for p in layer.parameters())
        layers[nb] = layer
        self.model = nn.Sequential(*layers)
        self.save = sorted(set(save) | set(in_layers))
        d["head"] = [[in_layers, 1, NECK_ROW_MODULE, [section.get("neck") or "graph"]], *index_rows, detect_row]
        section.update(levels=list(levels), in_layers=in_layers, in_specs=[s.to_dict() for s in in_specs])
        d[NECKLACE_KEY] = section
        self.yaml = d
        self.names = {i: f"{i}" for i in range(d["nc"])}
        self.inplace = d.get("inplace", True)

        # 3. what DetectionModel.__init__ does after parse_model: strides, Detect biases, BN settings
        m = self.model[-1]
        if not isinstance(m, Detect):
            raise ValueError(
                f"the model YAML's last head row must be Ultralytics' Detect (a detection model), got "
                f"{type(m).__name__}; necklace necks go into detection models (YOLOv8 / YOLO11 detect)."
            )
        m.inplace = self.inplace
        m.stride = torch.tensor([float(s.stride) for s in layer.out_specs])
        self.stride = m.stride
        m.bias_init()
        for i, lay in enumerate(self.model):
            if i != nb:  # Ultralytics' BN settings for its own layers; the neck keeps necklace's
                initialize_weights(lay)
        self.model.train()
        if verbose:
            self.info()
            LOGGER.info("")

    @property
    def neck_layer(self) -> NeckLayer:
        """The :class:`NeckLayer` (its ``neck`` is the necklace module)."""
        return cast(NeckLayer, self.model[len(self.yaml["backbone"])])

    @property
    def neck(self) -> nn.Module:
        """The necklace neck module."""
        return self.neck_layer.neck


def _levels_message(
    section: Mapping[str, Any],
    in_specs: Sequence[FeatureSpec],
    out_specs: Sequence[FeatureSpec],
    levels: tuple[int, int],
) -> str:
    name = section.get("neck") or "the neck graph"
    got = [s.level for s in out_specs]
    fixes = [f"ask for levels=({got[0]}, {got[-1]})"]
    if section.get("graph") is not None or not isinstance(section.get("neck"), str):
        fixes.append("make the graph's outputs those levels")
    else:
        knobs = neck_info(str(name)).knobs
        if levels[1] > got[-1] and not any(k.split()[0] in ("levels", "extra") for k in knobs):
            fixes.append("use a neck that makes levels above the backbone's (fpn, pafpn, bifpn, augfpn, nasfpn)")
        fixes.append(f"change {name}'s options ({', '.join(knobs)})")
    return (
        f"{name} built on the backbone maps P{in_specs[0].level}-P{in_specs[-1].level} "
        f"(strides {[s.stride for s in in_specs]}) outputs levels {got} (strides {[s.stride for s in out_specs]}), "
        f"but the detector asks for levels {levels[0]}..{levels[1]} "
        f"(strides {[2**lv for lv in range(levels[0], levels[1] + 1)]}). Fix: {', or '.join(fixes)}."
    )


def detect_levels(model: nn.Module) -> tuple[int, int]:
    """``(finest, coarsest)`` pyramid levels of an Ultralytics detection model's ``Detect`` head (its strides).

    Example:
        >>> detect_levels(DetectionModel("yolov8n.yaml", verbose=False))
        (3, 5)
    """
    stride = cast(Any, model).stride
    levels = [round(math.log2(float(s))) for s in stride]
    return min(levels), max(levels)
