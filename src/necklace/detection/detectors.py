"""torchvision detectors (FCOS, RetinaNet, Faster R-CNN) with a necklace neck in place of their FPN.

The detector classes, heads, losses, box coding and post-processing are torchvision's own; necklace only supplies
the ``backbone`` argument they take: :class:`NeckAdapter` runs backbone + neck and returns the
``OrderedDict[str, Tensor]`` (keys ``"P3"``, ``"P4"``, ...) plus ``out_channels`` that torchvision expects. Anchor
sizes and RoI-pooling levels are derived from the neck's ``out_specs``, so a neck that adds extra coarse levels
(P6, P7) gets anchors there too.

**num_classes convention.** ``build_detector(num_classes=K)`` always takes the number of object classes, and
targets and predictions always use labels ``1..K`` (the convention of every dataset in
:mod:`necklace.detection.data`; 0 is background). torchvision counts differently per detector: ``FasterRCNN``
counts the background class, so it is built with ``num_classes=K + 1`` (softmax output 0 = background);
``FCOS`` and ``RetinaNet`` have no background class (one sigmoid per class, indexed by the label), so they are
built with ``num_classes=K`` and labels ``0..K-1`` inside: the returned models are subclasses of torchvision's
``FCOS``/``RetinaNet`` that subtract 1 from the target labels and add 1 to the predicted ones, so no output is
wasted on an always-negative class 0.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead
from torchvision.ops import MultiScaleRoIAlign

from necklace.detection.backbones import build_backbone
from necklace.registry import build_neck
from necklace.spec import FeatureSpec

__all__ = ["DETECTOR_KINDS", "ROI_POOLS", "NeckAdapter", "anchor_generator_for", "build_detector"]

DETECTOR_KINDS = ("fcos", "retinanet", "faster_rcnn")
ROI_POOLS = ("multilevel", "adaptive", "soft")
#: Default anchor size per level as a multiple of the level's stride (FCOS: its scale ranges need size == stride).
DEFAULT_ANCHOR_SCALE = {"fcos": 1.0, "retinanet": 4.0, "faster_rcnn": 4.0}


class NeckAdapter(nn.Module):
    """``backbone -> neck`` as the ``backbone`` torchvision detectors expect: ``OrderedDict`` + ``out_channels``.

    torchvision's detection heads share their weights across levels, so every neck output must have the same
    channels; the adapter checks that, and that the neck was built for this backbone's ``out_specs``. Keys are
    ``"P<level>"`` (``names``), in the neck's order (highest resolution first).

    Example:
        >>> from necklace.detection import TinyBackbone
        >>> bb = TinyBackbone(width=8)
        >>> adapter = NeckAdapter(bb, necklace.build_neck("fpn", bb.out_specs, width=32))
        >>> out = adapter(torch.zeros(1, 3, 64, 96))
        >>> adapter.out_channels, [(k, tuple(v.shape[-2:])) for k, v in out.items()]
        (32, [('P3', (8, 12)), ('P4', (4, 6)), ('P5', (2, 3)), ('P6', (1, 2))])
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module) -> None:
        super().__init__()
        for what, obj, attrs in (("backbone", backbone, ("out_specs",)), ("neck", neck, ("in_specs", "out_specs"))):
            if not isinstance(obj, nn.Module):
                raise TypeError(f"NeckAdapter: {what} must be an nn.Module, got {type(obj).__name__}.")
            missing = [a for a in attrs if not hasattr(obj, a)]
            if missing:
                raise TypeError(
                    f"NeckAdapter: the {what} {type(obj).__name__} has no {missing[0]!r}; it must describe its maps "
                    "with FeatureSpecs (necklace backbones and necks do)."
                )
        b_specs = tuple(backbone.out_specs)  # type: ignore[arg-type]
        n_specs = tuple(neck.in_specs)  # type: ignore[arg-type]
        if b_specs != n_specs:
            raise ValueError(
                f"NeckAdapter: the neck was built for in_specs {_fmt(n_specs)} but the backbone returns "
                f"{_fmt(b_specs)}. Build the neck from the backbone: build_neck(name, backbone.out_specs, ...)."
            )
        out_specs: tuple[FeatureSpec, ...] = tuple(neck.out_specs)  # type: ignore[arg-type]
        widths = sorted({s.channels for s in out_specs})
        if len(widths) != 1:
            raise ValueError(
                f"NeckAdapter: torchvision detection heads share their weights across levels, so every neck output "
                f"needs the same channels; this neck's outputs are {_fmt(out_specs)} (widths {widths}). Build the "
                "neck with one width, e.g. build_neck(name, specs, width=256) instead of a per-level list."
            )
        self.backbone = backbone
        self.neck = neck
        self.out_specs = out_specs
        self.out_channels: int = widths[0]
        self.names: tuple[str, ...] = tuple(f"P{s.level}" for s in out_specs)

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.neck(self.backbone(images))  # L x [N, out_channels, ceil(H/s), ceil(W/s)], finest first
        return OrderedDict(zip(self.names, feats, strict=True))


def _fmt(specs: Sequence[FeatureSpec]) -> str:
    return "[" + ", ".join(f"{s.channels}ch /{s.stride}" for s in specs) + "]"


def anchor_generator_for(
    kind: str, out_specs: Sequence[FeatureSpec], anchor_scale: float | None = None
) -> AnchorGenerator:
    """torchvision ``AnchorGenerator`` with one set of sizes per neck level, derived from its stride.

    - ``fcos``: one anchor per location of size ``stride`` (FCOS's scale ranges ``4..8 x size`` rely on it);
    - ``retinanet``: 3 scales x 3 ratios, sizes ``anchor_scale * stride * 2**(0, 1/3, 2/3)``, ratios (0.5, 1, 2);
    - ``faster_rcnn``: size ``anchor_scale * stride``, ratios (0.5, 1, 2).

    ``anchor_scale`` defaults to 4 (RetinaNet's 32 at stride 8; torchvision's Faster R-CNN recipe uses 8 over
    P2..P6, i.e. 32 at stride 4).

    Example:
        >>> specs = [FeatureSpec(32, 8), FeatureSpec(32, 16)]
        >>> anchor_generator_for("retinanet", specs).sizes[0]
        (32.0, 40.31747359663594, 50.79683366298238)
        >>> anchor_generator_for("fcos", specs).sizes
        ((8.0,), (16.0,))
    """
    _check_kind(kind)
    if kind == "fcos" and anchor_scale not in (None, 1, 1.0):
        raise ValueError(
            f"anchor_scale={anchor_scale!r}: FCOS anchors must be one point per location of size == stride "
            "(its 4x..8x scale ranges are relative to it); leave anchor_scale unset for FCOS."
        )
    scale = DEFAULT_ANCHOR_SCALE[kind] if anchor_scale is None else float(anchor_scale)
    if not scale > 0:
        raise ValueError(f"anchor_scale must be positive, got {anchor_scale!r}.")
    strides = [s.stride for s in out_specs]
    sizes: tuple[tuple[float, ...], ...]
    if kind == "fcos":
        sizes = tuple((float(s),) for s in strides)
        ratios: tuple[tuple[float, ...], ...] = ((1.0,),) * len(strides)
    elif kind == "retinanet":
        sizes = tuple(tuple(scale * s * 2 ** (k / 3) for k in range(3)) for s in strides)
        ratios = ((0.5, 1.0, 2.0),) * len(strides)
    else:
        sizes = tuple((scale * s,) for s in strides)
        ratios = ((0.5, 1.0, 2.0),) * len(strides)
    return AnchorGenerator(sizes, ratios)


def _check_kind(kind: str) -> None:
    if kind not in DETECTOR_KINDS:
        raise ValueError(f"unknown detector kind {kind!r}; choose one of {list(DETECTOR_KINDS)}.")


class _FCOSHead(FCOSHead):
    """torchvision's FCOSHead with ``GroupNorm(gcd(32, C // 2), C)``: 32 groups for C >= 64 (torchvision's
    ``GroupNorm(32, C)``), fewer for narrow heads, so any width works and every group holds >= 2 channels (a
    1-channel group on a 1x1 level fails in GroupNorm)."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, num_convs: int) -> None:
        nn.Module.__init__(self)
        norm = partial(nn.GroupNorm, math.gcd(32, max(in_channels // 2, 1)))
        self.box_coder = det_utils.BoxLinearCoder(normalize_by_size=True)
        self.classification_head = FCOSClassificationHead(
            in_channels, num_anchors, num_classes, num_convs, norm_layer=norm
        )
        self.regression_head = FCOSRegressionHead(in_channels, num_anchors, num_convs, norm_layer=norm)


class _LabelsFromOne(nn.Module):
    """Labels ``1..K`` outside, ``0..K-1`` inside torchvision's sigmoid-per-class detectors (FCOS, RetinaNet)."""

    num_object_classes: int

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        if targets is not None:
            shifted = []
            for i, t in enumerate(targets):
                labels = t["labels"]
                if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) > self.num_object_classes):
                    raise ValueError(
                        f"targets[{i}]['labels'] = {labels.tolist()} must lie in 1..{self.num_object_classes} "
                        f"(num_classes={self.num_object_classes}, 0 is background and never a target label)."
                    )
                shifted.append({**t, "labels": labels - 1})
            targets = shifted
        out = super().forward(images, targets)
        dets = out[1] if isinstance(out, tuple) else out
        if isinstance(dets, list):
            for d in dets:
                d["labels"] = d["labels"] + 1
        return out


class NecklaceFCOS(_LabelsFromOne, FCOS):
    """torchvision ``FCOS`` taking and returning labels ``1..K`` (``num_classes=K`` sigmoid outputs inside)."""


class NecklaceRetinaNet(_LabelsFromOne, RetinaNet):
    """torchvision ``RetinaNet`` taking and returning labels ``1..K`` (``num_classes=K`` sigmoid outputs inside)."""


def _roi_pooler(
    roi_pool: str | nn.Module | None, specs: tuple[FeatureSpec, ...], names: tuple[str, ...], representation: int
) -> tuple[nn.Module, nn.Module | None]:
    """The ``box_roi_pool`` (and, for adaptive pooling, the ``box_head`` that follows it)."""
    if isinstance(roi_pool, nn.Module):
        return roi_pool, None
    if roi_pool is None:
        return MultiScaleRoIAlign(list(names), output_size=7, sampling_ratio=2), None
    if roi_pool not in ROI_POOLS:
        raise ValueError(f"unknown roi_pool {roi_pool!r}; choose None (torchvision), one of {list(ROI_POOLS)}.")
    try:
        from necklace import roi
    except ImportError as e:  # pragma: no cover - roi.py ships with necklace
        raise ImportError(f"roi_pool={roi_pool!r} needs necklace.roi, which failed to import: {e}") from e
    if roi_pool == "multilevel":
        return roi.MultiLevelRoIPool(specs, output_size=7, sampling_ratio=2, featmap_names=names), None
    if roi_pool == "soft":
        return roi.SoftRoISelection(specs, output_size=7, featmap_names=names), None
    pool = roi.AdaptiveFeaturePooling(specs, output_size=7, layer="fc", hidden=representation, featmap_names=names)
    # PANet: the per-level fc is the head's first layer; one shared fc follows (AugFPN's SharedFCBBoxHead(1)).
    return pool, nn.Sequential(nn.Linear(representation, representation), nn.ReLU(inplace=True))


def build_detector(
    kind: str,
    backbone: nn.Module | str,
    neck: str | nn.Module = "fpn",
    num_classes: int = 3,
    *,
    neck_options: Mapping[str, Any] | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    roi_pool: str | nn.Module | None = None,
    roi_max_stride: int = 32,
    anchor_scale: float | None = None,
    head_convs: int = 4,
    representation_size: int = 1024,
    **detector_kwargs: Any,
) -> nn.Module:
    """A torchvision ``FCOS`` / ``RetinaNet`` / ``FasterRCNN`` whose backbone is ``backbone`` + a necklace neck.

    Args:
        kind: ``"fcos"``, ``"retinanet"`` or ``"faster_rcnn"``.
        backbone: a :class:`~necklace.detection.Backbone` (anything with ``out_specs``) or a name for
            :func:`~necklace.detection.build_backbone`.
        neck: a registered neck name, built with ``build_neck(neck, backbone.out_specs, **neck_options)``, or a
            neck module already built for ``backbone.out_specs``. All outputs must share one width.
        num_classes: number of object classes ``K``; labels are ``1..K`` for every kind (see the module docstring).
        min_size, max_size: torchvision's ``GeneralizedRCNNTransform`` resize (images are also normalised there).
        roi_pool: Faster R-CNN only. ``None``: torchvision ``MultiScaleRoIAlign``; ``"multilevel"``,
            ``"adaptive"`` (PANet, fc per level + shared fc), ``"soft"`` (AugFPN): the poolers of
            :mod:`necklace.roi`; or a ``MultiScaleRoIAlign`` subclass instance.
        roi_max_stride: Faster R-CNN RoI pooling uses the neck levels with stride ``<=`` this (the RPN uses all).
        anchor_scale: anchor size per level in strides (see :func:`anchor_generator_for`).
        head_convs: FCOS tower depth (torchvision default 4).
        representation_size: Faster R-CNN box-head width (torchvision default 1024).
        detector_kwargs: passed to the torchvision class (``score_thresh``, ``rpn_batch_size_per_image``, ...).

    Example:
        >>> from necklace.detection import TinyBackbone
        >>> model = build_detector("fcos", TinyBackbone(width=8), "fpn", num_classes=2,
        ...                        neck_options={"width": 32}, min_size=64, max_size=64, head_convs=1)
        >>> model.backbone.names, model.backbone.out_channels
        (('P3', 'P4', 'P5', 'P6'), 32)
        >>> _ = model.eval()
        >>> sorted(model([torch.rand(3, 64, 64)])[0])
        ['boxes', 'labels', 'scores']
    """
    _check_kind(kind)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be the number of object classes (>= 1, labels 1..K), got {num_classes!r}.")
    if isinstance(backbone, str):
        backbone = build_backbone(backbone)
    if not hasattr(backbone, "out_specs"):
        raise TypeError(
            f"build_detector: backbone {type(backbone).__name__} has no out_specs; use a necklace.detection backbone "
            "(timm_backbone, torchvision_resnet, TinyBackbone) or give your module an out_specs tuple of FeatureSpec."
        )
    if isinstance(neck, str):
        neck = build_neck(neck, backbone.out_specs, **dict(neck_options or {}))  # type: ignore[arg-type]
    elif neck_options:
        raise ValueError("build_detector: neck_options only apply when neck is a name; this neck is already built.")
    adapter = NeckAdapter(backbone, neck)
    if roi_pool is not None and kind != "faster_rcnn":
        raise ValueError(f"roi_pool={roi_pool!r} is a Faster R-CNN option; {kind} has no RoI head.")
    if isinstance(head_convs, bool) or not isinstance(head_convs, int) or head_convs < 0:
        raise ValueError(f"build_detector: head_convs (FCOS tower depth) must be an int >= 0, got {head_convs!r}.")
    _check_detector_kwargs(kind, detector_kwargs)
    anchors = anchor_generator_for(kind, adapter.out_specs, anchor_scale)
    common: dict[str, Any] = {"min_size": min_size, "max_size": max_size, **detector_kwargs}
    return _assemble(kind, adapter, anchors, common, num_classes, head_convs, roi_max_stride, roi_pool,
                     representation_size)  # fmt: skip


def _check_detector_kwargs(kind: str, kwargs: Mapping[str, Any]) -> None:
    """torchvision passes unknown keywords to its transform, which ignores them: a typo would change nothing."""
    known = _tv_options(kind)
    for key in kwargs:
        if key not in known:
            hint = difflib.get_close_matches(key, [*known, *_OWN_OPTIONS], n=1)
            raise TypeError(
                f"build_detector: {kind} has no option {key!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; its options are build_detector's ({', '.join(_OWN_OPTIONS)}) and the torchvision "
                f"{_TV_CLASS[kind].__name__} keywords ({', '.join(known)})."
            )


def _assemble(
    kind: str,
    adapter: NeckAdapter,
    anchors: Any,
    common: dict[str, Any],
    num_classes: int,
    head_convs: int,
    roi_max_stride: int,
    roi_pool: Any,
    representation_size: int,
) -> nn.Module:
    model: nn.Module
    if kind == "fcos":
        head = _FCOSHead(adapter.out_channels, 1, num_classes, head_convs)
        model = NecklaceFCOS(adapter, num_classes, anchor_generator=anchors, head=head, **common)
    elif kind == "retinanet":
        model = NecklaceRetinaNet(adapter, num_classes, anchor_generator=anchors, **common)
    else:
        keep = [i for i, s in enumerate(adapter.out_specs) if s.stride <= roi_max_stride]
        if not keep:
            raise ValueError(
                f"roi_max_stride={roi_max_stride} leaves no neck level for RoI pooling; the neck's strides are "
                f"{[s.stride for s in adapter.out_specs]}. Raise roi_max_stride."
            )
        specs = tuple(adapter.out_specs[i] for i in keep)
        names = tuple(adapter.names[i] for i in keep)
        pool, box_head = _roi_pooler(roi_pool, specs, names, representation_size)
        box_head = common.pop("box_head", None) or box_head
        if box_head is None:
            out_h, out_w = _pooled_size(pool)
            box_head = TwoMLPHead(adapter.out_channels * out_h * out_w, representation_size)
        predictor = common.pop("box_predictor", None) or FastRCNNPredictor(representation_size, num_classes + 1)
        model = FasterRCNN(
            adapter,
            num_classes=None,
            rpn_anchor_generator=anchors,
            box_roi_pool=pool,
            box_head=box_head,
            box_predictor=predictor,
            **common,
        )
    model.num_object_classes = num_classes  # type: ignore[assignment]  # labels 1..num_classes for every kind
    return model


#: build_detector's own keyword options (the rest go to the torchvision class)
_OWN_OPTIONS = (
    "neck_options",
    "min_size",
    "max_size",
    "roi_pool",
    "roi_max_stride",
    "anchor_scale",
    "head_convs",
    "representation_size",
)
_TV_CLASS: dict[str, type] = {"fcos": FCOS, "retinanet": RetinaNet, "faster_rcnn": FasterRCNN}
_SET_HERE = {"self", "backbone", "num_classes", "kwargs", "min_size", "max_size", "anchor_generator", "head"}
_SET_HERE |= {"rpn_anchor_generator", "box_roi_pool"}  # (box_head / box_predictor may be given: they replace ours)


def _tv_options(kind: str) -> list[str]:
    """Keyword options of the torchvision detector class of ``kind`` that build_detector passes through."""
    params = [p for p in inspect.signature(_TV_CLASS[kind]).parameters if p not in _SET_HERE]
    return [*params, "size_divisible", "fixed_size"]  # GeneralizedRCNNTransform's, reached through **kwargs


def _pooled_size(pool: nn.Module) -> tuple[int, int]:
    size = getattr(pool, "output_size", (7, 7))
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])
