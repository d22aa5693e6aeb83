"""Ultralytics YOLOv8 / YOLO11 neck layers as one module (:class:`UltralyticsNeck`), their weights mapped onto
necklace's ``yolo_pafpn`` / ``yolo11_pafpn``, ultralytics' own ``fuse()``, and the pairs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from necklace.bench.peers.pairs import Pair, _list_call, _skip, randomize
from necklace.registry import build_neck
from necklace.spec import FeatureSpec


def _ultralytics_tasks() -> Any:
    """``ultralytics.nn.tasks``, imported without keeping the global patches ultralytics applies at import
    (``PIL.Image.open``, which then tries to pip-install ``pi-heif`` on an unreadable image, and ``torch.save``):
    comparing with ultralytics must not change how other code of the process opens images or saves."""
    import PIL.Image

    saved = (PIL.Image.open, torch.save)
    try:
        import ultralytics.nn.tasks as tasks
    finally:
        PIL.Image.open, torch.save = saved
    return tasks


class UltralyticsNeck(nn.Module):
    """The neck layers of an ultralytics detection model (between the backbone and Detect), run the way
    ``BaseModel._predict_once`` runs them: ``[P3, P4, P5]`` -> the maps Detect reads. YOLOv8: layers 10-21,
    inputs the outputs of layers 4, 6, 9, outputs of 15, 18, 21; YOLO11: layers 11-22, inputs 4, 6, 10, outputs
    16, 19, 22 (read off the model: the head's layers, the backbone layers they read, Detect's inputs).

    Built from the model YAML shipped with ultralytics (``yolov8n.yaml``, ``yolo11n.yaml``: no download); needs
    ultralytics.

    Example:
        >>> import importlib.util
        >>> feats = [torch.randn(1, c, s, s) for c, s in ((64, 8), (128, 4), (256, 2))]
        >>> if importlib.util.find_spec("ultralytics") is not None:
        ...     ul = UltralyticsNeck("yolov8n.yaml").eval()
        ...     shapes, first = [tuple(o.shape) for o in ul(feats)], ul.first
        ... else:  # the shapes it gives
        ...     shapes, first = [(1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2)], 10
        >>> shapes, first
        ([(1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2)], 10)
    """

    def __init__(self, yaml: str) -> None:
        super().__init__()
        detection_model = _ultralytics_tasks().DetectionModel
        model: Any = detection_model(yaml, verbose=False)  # built from the YAML shipped with ultralytics
        first = len(model.yaml["backbone"])
        detect = model.model[-1]
        self.first = first  #: index of the first neck layer in the model
        self.layers = nn.ModuleList(model.model[first:-1])
        self.save = set(model.save)
        layer: Any
        refs = set()
        for layer in self.layers:
            refs |= {j for j in ([layer.f] if isinstance(layer.f, int) else layer.f) if 0 <= j < first}
        self.in_layers = tuple(sorted(refs | {first - 1}))
        self.out_layers = tuple(detect.f)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        y: dict[int, Tensor] = dict(zip(self.in_layers, feats, strict=True))
        x: Any = feats[-1]
        m: Any
        for m in self.layers:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            if m.i in self.save:
                y[m.i] = x
        return [y[i] for i in self.out_layers]


def ultralytics_fuse(ul: nn.Module) -> nn.Module:
    """ultralytics' own inference fusion on an :class:`UltralyticsNeck`, in place: ``BaseModel.fuse()``.

    ``DetectionModel.fuse()`` is ``BaseModel.fuse``: for every ``Conv`` with a ``bn`` it runs
    ``fuse_conv_and_bn`` (``conv`` <- BN folded in, ``bn`` deleted, ``forward = forward_fuse``; RepConv /
    ConvTranspose likewise). It walks ``self.model``, so it is called here, unchanged, on a bare ``BaseModel``
    holding the neck's layers as its ``model``.
    """
    holder = _ultralytics_tasks().BaseModel()
    holder.model = ul.layers
    holder.fuse(verbose=False)
    if not holder.is_fused():
        raise RuntimeError("ultralytics BaseModel.fuse() left unfused Conv+BN modules in the neck")
    return ul


#: necklace yolo_pafpn / yolo11_pafpn (P3-P5) module prefix -> ultralytics layer index counted from the first neck
#: layer (YOLOv8: + 10, YOLO11: + 11)
YOLO_LAYER_MAP = {
    "nodes.T4.block.": 2,
    "nodes.N3.block.": 5,
    "nodes.N4.edges.0.ops.0.": 6,
    "nodes.N4.block.": 8,
    "nodes.N5.edges.0.ops.0.": 9,
    "nodes.N5.block.": 11,
}


def ultralytics_to_necklace(ul: nn.Module, neck: nn.Module) -> dict[str, Tensor]:
    """Map an :class:`UltralyticsNeck`'s state dict onto necklace ``yolo_pafpn`` (YOLOv8) or ``yolo11_pafpn``
    (YOLO11) keys (``conv``/``bn`` -> ``conv``/``norm``; the blocks' submodule names are ultralytics' own).

    Every necklace key must be filled and every ultralytics key used, with equal shapes (else ``ValueError``).
    """
    src = ul.state_dict()
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for key, value in neck.state_dict().items():
        prefix = next((p for p in YOLO_LAYER_MAP if key.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"necklace key {key} has no ultralytics counterpart")
        src_key = f"layers.{YOLO_LAYER_MAP[prefix]}." + key[len(prefix) :].replace("norm.", "bn.")
        if src_key not in src or src[src_key].shape != value.shape:
            raise ValueError(f"{key} {tuple(value.shape)}: no matching {src_key} in the ultralytics neck")
        out[key] = src[src_key]
        used.add(src_key)
    if set(src) - used:
        raise ValueError(f"ultralytics keys without a necklace counterpart: {sorted(set(src) - used)[:5]}")
    return out


def ultralytics_yolov8_pair(scale: str, specs: Sequence[FeatureSpec]) -> Pair:
    """ultralytics YOLOv8 ``scale`` neck (:class:`UltralyticsNeck`) vs necklace ``yolo_pafpn`` preset ``scale``."""
    return _ultralytics_pair(f"yolov8{scale}.yaml", "yolo_pafpn", f"YOLOv8{scale} neck (layers 10-21)", scale, specs)


def ultralytics_yolo11_pair(scale: str, specs: Sequence[FeatureSpec]) -> Pair:
    """ultralytics YOLO11 ``scale`` neck (:class:`UltralyticsNeck`) vs necklace ``yolo11_pafpn`` preset ``scale``."""
    return _ultralytics_pair(f"yolo11{scale}.yaml", "yolo11_pafpn", f"YOLO11{scale} neck (layers 11-22)", scale, specs)


def _ultralytics_pair(yaml: str, neck_name: str, what: str, scale: str, specs: Sequence[FeatureSpec]) -> Pair:
    name = f"ultralytics {what}"
    try:
        _ultralytics_tasks()
    except ImportError as e:
        return _skip(name, "ultralytics", e)
    ul = randomize(UltralyticsNeck(yaml))
    neck = build_neck(neck_name, specs, preset=scale)
    neck.load_state_dict(ultralytics_to_necklace(ul, neck))
    return Pair(
        name,
        neck.eval(),
        ul,
        _list_call,
        "mapped key by key (necklace.bench.peers.ultralytics_to_necklace)",
        peer_deploy=ultralytics_fuse,
        peer_deploy_what="ultralytics BaseModel.fuse(): fuse_conv_and_bn, forward_fuse",
    )
