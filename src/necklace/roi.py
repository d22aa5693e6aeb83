"""RoI side of the pyramid: level assignment, multi-level RoI pooling, PANet adaptive feature pooling, AugFPN soft
RoI selection.

Every pooler here takes the feature maps highest resolution first (a ``list[Tensor]`` or torchvision's
``OrderedDict[str, Tensor]``) and the boxes as a list with one ``Tensor[N_i, 4]`` of ``(x1, y1, x2, y2)`` image-pixel
boxes per image. They subclass :class:`torchvision.ops.MultiScaleRoIAlign`, so torchvision's ``FasterRCNN`` /
``MaskRCNN`` accept them as ``box_roi_pool`` / ``mask_roi_pool`` (their constructors check that type) and call them
as ``pool(features, proposals, image_shapes)``.

Which module for which paper:

- :class:`MultiLevelRoIPool` (FPN): each RoI from the one level FPN eq. (1) picks (:func:`assign_levels`);
  output ``[K, C, out, out]``.
- :class:`AdaptiveFeaturePooling` (PANet): each RoI from every level, a per-level layer, element-wise max;
  output ``[K, hidden]`` (fc layer) or ``[K, C', out, out]`` (conv layer).
- :class:`SoftRoISelection` (AugFPN): each RoI from every level, learned per-level spatial gates, weighted sum;
  output ``[K, C, out, out]``.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign, roi_align

from necklace.layers.conv import ConvCfg, ConvNormAct, make_act
from necklace.spec import FeatureSpec, level_of_stride

__all__ = ["RULES", "AdaptiveFeaturePooling", "MultiLevelRoIPool", "SoftRoISelection", "assign_levels"]

#: Level-assignment conventions understood by :func:`assign_levels` (see its docstring for the table).
RULES: tuple[str, ...] = ("paper", "torchvision", "detectron2", "mmdet", "mmdet_legacy", "augfpn")
_MMDET_RULES = ("mmdet", "mmdet_legacy", "augfpn")


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        close = difflib.get_close_matches(str(rule), RULES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown level-assignment rule {rule!r}; choose one of {list(RULES)}.{hint}")


def _check_boxes(boxes: object, what: str = "boxes") -> Tensor:
    if not isinstance(boxes, Tensor):
        raise TypeError(
            f"{what} must be a Tensor[N, 4] of (x1, y1, x2, y2) boxes, got {type(boxes).__name__}. "
            "Convert with torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)."
        )
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        fix = (
            " For a single box use boxes.unsqueeze(0)."
            if boxes.dim() == 1 and boxes.numel() == 4
            else " Boxes are (x1, y1, x2, y2) in image pixels; drop a batch-index column with boxes[:, 1:]."
            if boxes.dim() == 2 and boxes.shape[-1] == 5
            else ""
        )
        raise ValueError(
            f"{what} has shape {tuple(boxes.shape)}; expected Tensor[N, 4] of (x1, y1, x2, y2) boxes.{fix}"
        )
    return boxes


def assign_levels(
    boxes: Tensor,
    k0: int = 4,
    canonical: float = 224,
    min_level: int = 2,
    max_level: int = 5,
    rule: str = "torchvision",
    *,
    finest_scale: float | None = None,
) -> Tensor:
    """Pyramid level of each box by FPN eq. (1), ``k = floor(k0 + log2(sqrt(w*h) / canonical))``.

    Returns the **absolute** level (``2`` for P2, stride 4) of each box as ``int64``, clamped to
    ``[min_level, max_level]``. Subtract ``min_level`` for an index into the list of feature maps.

    The libraries agree away from the boundaries ``s = canonical * 2**j`` and differ on them only through where their
    epsilon goes and how they measure the box; ``rule`` reproduces each one bit for bit (``s`` is the box size):

    ================ ========================= ============================================================ ========
    rule             s                         level                                                        eps
    ================ ========================= ============================================================ ========
    ``paper``        ``sqrt(w*h)``             ``floor(k0 + log2(s/canonical))``                            none
    ``torchvision``  ``sqrt(w*h)``             ``floor(k0 + log2(s/canonical) + 1e-6)`` (``LevelMapper``)   after log
    ``detectron2``   ``sqrt(w*h)``             ``floor(k0 + log2(s/canonical + 1e-8))`` (``ROIPooler``)     in log
    ``mmdet``        ``sqrt(w*h)``             ``min_level + floor(log2(s/finest_scale + 1e-6))``           in log
                                               (``SingleRoIExtractor``, mmdet 2.x/3.x)
    ``mmdet_legacy`` ``sqrt((w+1)*(h+1))``     as ``mmdet`` (mmdet v0.6-era code; AugFPN, PANet ports)      in log
    ``augfpn``       ``sqrt((w+1)*(h+1))``     alias of ``mmdet_legacy``                                    in log
    ================ ========================= ============================================================ ========

    ``w = x2 - x1``, ``h = y2 - y1``. For the mmdet rules ``finest_scale`` defaults to
    ``canonical * 2**(min_level - k0)`` (56 for the defaults), which makes them algebraically the FPN formula; mmdet
    itself counts levels from its *first* feature map whatever its stride, so to reproduce an mmdet extractor whose
    first map is not P2, pass its ``finest_scale`` (56) explicitly. Near the boundaries: torchvision's eps moves boxes
    up to ``~7e-7 * s`` *below* a boundary to the upper level, mmdet's moves those up to ``56e-6`` pixels below,
    detectron2's (and the paper) keep them on the lower one.

    Degenerate boxes (``x2 < x1`` or ``y2 < y1``) count as zero width/height (size 0, so ``min_level``) instead of
    giving NaN; NaN coordinates also map to ``min_level``. Sizes are computed in the boxes' dtype (float32/float64;
    half precision and integer boxes are promoted to float32), as torchvision does.

    Example:
        >>> b = torch.tensor([[0, 0, 112, 112], [0, 0, 224, 224], [0, 0, 223.9999, 223.9999], [5, 5, 4, 4.]])
        >>> assign_levels(b).tolist()  # torchvision: eps lifts 223.9999 to P4; an inverted box goes to P2
        [3, 4, 4, 2]
        >>> assign_levels(b, rule="detectron2").tolist()
        [3, 4, 3, 2]
        >>> assign_levels(b[:2] - torch.tensor([0, 0, 0.5, 0.5]), rule="augfpn").tolist()  # sqrt((w+1)(h+1))
        [3, 4]
    """
    _check_rule(rule)
    boxes = _check_boxes(boxes)
    if min_level > max_level:
        raise ValueError(
            f"min_level {min_level} > max_level {max_level}; pass the finest pyramid level first, e.g. min_level=2, "
            "max_level=5 for P2..P5 (strides 4..32)."
        )
    if not canonical > 0:
        raise ValueError(f"canonical box size must be positive (224 in the FPN paper), got {canonical!r}.")
    if finest_scale is not None and rule not in _MMDET_RULES:
        raise ValueError(
            f"finest_scale is an mmdet knob; rule {rule!r} uses k0 and canonical instead. Use rule='mmdet' or "
            "drop finest_scale."
        )
    if boxes.dtype not in (torch.float32, torch.float64):
        boxes = boxes.float()
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=0)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    if rule in ("mmdet_legacy", "augfpn"):
        w, h = w + 1, h + 1
    s = torch.sqrt(w * h)
    # The expressions below keep each library's operation order so that results match bit for bit.
    if rule == "paper":
        lvl = torch.floor(k0 + torch.log2(s / canonical))
    elif rule == "torchvision":
        lvl = torch.floor(k0 + torch.log2(s / canonical) + torch.tensor(1e-6, dtype=s.dtype, device=s.device))
    elif rule == "detectron2":
        lvl = torch.floor(k0 + torch.log2(s / canonical + 1e-8))
    else:
        finest = canonical * 2.0 ** (min_level - k0) if finest_scale is None else finest_scale
        if not finest > 0:
            raise ValueError(f"finest_scale must be positive (56 in mmdet), got {finest_scale!r}.")
        lvl = torch.floor(torch.log2(s / finest + 1e-6)) + min_level
    lvl = torch.nan_to_num(lvl, nan=float(min_level))
    return lvl.clamp(min=min_level, max=max_level).to(torch.int64)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        pair = (size, size)
    elif isinstance(size, Sequence) and len(size) == 2 and all(isinstance(v, int) for v in size):
        pair = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"output_size must be an int or an (h, w) pair of ints, got {size!r}.")
    if min(pair) <= 0:
        raise ValueError(f"output_size must be positive, got {size!r}.")
    return pair


def _parse_featmaps(
    featmaps: Sequence[int | FeatureSpec] | None, owner: str
) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """Return (strides, channels) from ints or FeatureSpecs; check strides double level to level."""
    if featmaps is None:
        return None, None
    if isinstance(featmaps, (int, FeatureSpec, str)) or not isinstance(featmaps, Sequence) or not featmaps:
        raise TypeError(
            f"{owner}: featmaps must be a non-empty list of strides or FeatureSpecs (finest first), got {featmaps!r}. "
            "Example: [4, 8, 16, 32], or neck.out_specs."
        )
    strides, channels = [], []
    for i, f in enumerate(featmaps):
        if isinstance(f, FeatureSpec):
            strides.append(f.stride)
            channels.append(f.channels)
        elif isinstance(f, int) and not isinstance(f, bool) and f > 0:
            level_of_stride(f)
            strides.append(f)
        else:
            raise TypeError(f"{owner}: featmaps[{i}] must be a positive int stride or a FeatureSpec, got {f!r}.")
    for a, b in itertools.pairwise(strides):
        if b != 2 * a:
            raise ValueError(
                f"{owner}: strides {strides} are not successive powers of two (finest first, each twice the "
                f"previous); got {a} followed by {b}. The level index is level - min_level, so levels must be "
                "consecutive, e.g. [4, 8, 16, 32]."
            )
    if channels and len(channels) != len(strides):
        raise TypeError(f"{owner}: pass either all strides or all FeatureSpecs in featmaps, got {featmaps!r}.")
    return tuple(strides), (tuple(channels) if channels else None)


def _infer_scale(feature: Tensor, original_size: tuple[int, int]) -> float:
    # torchvision's rule: nearest power of two of (feature H / image H).
    approx = float(feature.shape[-2]) / float(original_size[0])
    return 2 ** float(torch.tensor(approx).log2().round())


class _RoIPoolerBase(MultiScaleRoIAlign):
    """Input handling shared by the poolers: features as list or dict, boxes per image, scales given or inferred."""

    def __init__(
        self,
        featmaps: Sequence[int | FeatureSpec] | None,
        output_size: int | Sequence[int],
        sampling_ratio: int,
        aligned: bool,
        featmap_names: Sequence[str] | None,
        k0: int = 4,
        canonical: float = 224,
    ) -> None:
        out = _pair(output_size)
        # The parent's attributes keep torchvision's meaning (FasterRCNN reads output_size[0] for its default head).
        super().__init__(list(featmap_names or []), out, sampling_ratio, canonical_scale=canonical, canonical_level=k0)
        owner = type(self).__name__
        self.strides, self.channels_per_level = _parse_featmaps(featmaps, owner)
        self.names: tuple[str, ...] | None = tuple(featmap_names) if featmap_names is not None else None
        if self.names is not None and self.strides is not None and len(self.names) != len(self.strides):
            raise ValueError(
                f"{owner}: featmap_names {list(self.names)} name {len(self.names)} maps but featmaps has "
                f"{len(self.strides)} strides {list(self.strides)}; give one name per level."
            )
        self.aligned = bool(aligned)
        self.k0 = k0
        self.canonical = canonical

    @property
    def num_levels(self) -> int | None:
        """Number of pyramid levels, or ``None`` when the strides are inferred at run time."""
        return None if self.strides is None else len(self.strides)

    def __repr__(self) -> str:  # the parent prints a one-liner that hides submodules
        return nn.Module.__repr__(self)

    def extra_repr(self) -> str:
        strides = "inferred" if self.strides is None else list(self.strides)
        return (
            f"strides={strides}, output_size={self.output_size}, sampling_ratio={self.sampling_ratio}, "
            f"aligned={self.aligned}"
        )

    # -- input handling ---------------------------------------------------------------------------------------------
    def _select(self, features: object) -> list[Tensor]:
        owner = type(self).__name__
        if isinstance(features, Mapping):
            keys = list(features.keys())
            if self.names is not None:
                missing = [n for n in self.names if n not in features]
                if missing:
                    raise ValueError(
                        f"{owner}: featmap_names {missing} not in the features, whose keys are {keys}. Pass "
                        f"featmap_names matching the backbone's output keys."
                    )
                feats = [features[n] for n in self.names]
            else:
                feats = list(features.values())
                if self.strides is not None and len(feats) != len(self.strides):
                    raise ValueError(
                        f"{owner} was built for {len(self.strides)} levels (strides {list(self.strides)}) but got "
                        f"{len(feats)} feature maps with keys {keys}. Pass featmap_names="
                        f"{[str(k) for k in keys[: len(self.strides)]]} (torchvision backbones add a 'pool' level "
                        "for the RPN only) or rebuild with one stride per map."
                    )
        elif isinstance(features, (list, tuple)):
            feats = list(features)
        else:
            raise TypeError(
                f"{owner} expects the feature maps as a list (highest resolution first) or an OrderedDict[str, "
                f"Tensor], got {type(features).__name__}"
                + (f" of shape {tuple(features.shape)}" if isinstance(features, Tensor) else "")
                + ". Wrap a single map in a list: [x]."
            )
        if not feats:
            raise ValueError(f"{owner} got no feature maps.")
        if self.strides is not None and len(feats) != len(self.strides):
            raise ValueError(
                f"{owner} expects {len(self.strides)} feature maps with strides {list(self.strides)}, got "
                f"{len(feats)}. Pass one map per stride (highest resolution first) or rebuild the pooler with "
                "featmaps matching your neck (e.g. neck.out_specs)."
            )
        batch = None
        for i, f in enumerate(feats):
            if not isinstance(f, Tensor) or f.dim() != 4:
                got = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
                raise ValueError(f"{owner}: feature map {i} is {got}; expected a 4-D Tensor (N, C, H, W).")
            if batch is None:
                batch = f.shape[0]
            elif f.shape[0] != batch:
                raise ValueError(
                    f"{owner}: feature maps have mismatched batch sizes {[tuple(x.shape) for x in feats]}; all "
                    "levels must come from the same images."
                )
        return feats

    def _rois(self, boxes: object, batch: int) -> Tensor:
        owner = type(self).__name__
        if isinstance(boxes, Tensor):
            if boxes.dim() == 2 and boxes.shape[-1] == 5:
                return boxes  # already (batch_index, x1, y1, x2, y2) rows
            raise TypeError(
                f"{owner}: boxes is a Tensor of shape {tuple(boxes.shape)}; pass a list with one Tensor[N, 4] of "
                "(x1, y1, x2, y2) boxes per image (e.g. [boxes] for one image), or a Tensor[K, 5] of "
                "(batch_index, x1, y1, x2, y2) rows."
            )
        if not isinstance(boxes, (list, tuple)):
            raise TypeError(
                f"{owner}: boxes must be a list with one Tensor[N, 4] per image, got {type(boxes).__name__}."
            )
        if len(boxes) != batch:
            raise ValueError(
                f"{owner}: got boxes for {len(boxes)} images but the feature maps hold a batch of {batch}; pass one "
                "Tensor[N, 4] per image (an empty torch.zeros(0, 4) for an image without boxes)."
            )
        checked = [_check_boxes(b, f"boxes[{i}]") for i, b in enumerate(boxes)]
        if not checked:
            raise ValueError(f"{owner}: boxes is empty; pass one Tensor[N, 4] per image.")
        flat = torch.cat(checked, dim=0)
        ids = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(checked)], dim=0)
        return torch.cat([ids, flat], dim=1)

    def _scales(self, feats: list[Tensor], image_shapes: Sequence[tuple[int, int]] | None) -> list[float]:
        if self.strides is not None:
            return [1.0 / s for s in self.strides]
        owner = type(self).__name__
        if not image_shapes:
            raise ValueError(
                f"{owner} was built without featmaps, so it infers the strides from image_shapes like torchvision's "
                "MultiScaleRoIAlign; pass image_shapes=[(H, W), ...] (one per image, before padding) or build it "
                "with featmaps=[4, 8, 16, 32]."
            )
        size = (max(int(s[0]) for s in image_shapes), max(int(s[1]) for s in image_shapes))
        scales = [_infer_scale(f, size) for f in feats]
        inv = [round(1 / s) for s in scales]
        for a, b in itertools.pairwise(inv):
            if b != 2 * a:
                raise ValueError(
                    f"{owner}: inferred strides {inv} from feature sizes {[tuple(f.shape[-2:]) for f in feats]} and "
                    f"image size {size} are not successive powers of two; pass the maps highest resolution first, "
                    "or build the pooler with explicit featmaps strides."
                )
        return scales

    def _check_channels(self, feats: list[Tensor], expected: int | None) -> int:
        owner = type(self).__name__
        chans = [int(f.shape[1]) for f in feats]
        want = self.channels_per_level or ((expected,) * len(feats) if expected is not None else None)
        if want is not None and tuple(chans) != tuple(want):
            raise ValueError(
                f"{owner}: feature maps have channels {chans}, expected {list(want)}. Rebuild the pooler with the "
                "neck's out_specs or check the order of the maps."
            )
        if len(set(chans)) != 1:
            raise ValueError(
                f"{owner}: all levels must have the same channels to pool into one tensor, got {chans} (shapes "
                f"{[tuple(f.shape) for f in feats]}). Put the maps through a neck with one output width."
            )
        return chans[0]

    def _prepare(
        self, features: object, boxes: object, image_shapes: Sequence[tuple[int, int]] | None
    ) -> tuple[list[Tensor], Tensor, list[float]]:
        feats = self._select(features)
        rois = self._rois(boxes, int(feats[0].shape[0]))
        return feats, rois, self._scales(feats, image_shapes)

    def _align(self, feat: Tensor, rois: Tensor, scale: float) -> Tensor:
        return roi_align(
            feat,
            rois.to(feat.dtype),
            output_size=self.output_size,
            spatial_scale=scale,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
        )

    def _pool_all(self, feats: list[Tensor], rois: Tensor, scales: list[float]) -> list[Tensor]:
        """RoIAlign every RoI from every level: L tensors [K, C, out_h, out_w]."""
        return [self._align(f, rois, s) for f, s in zip(feats, scales, strict=True)]


class MultiLevelRoIPool(_RoIPoolerBase):
    """FPN RoI pooling: each RoI is RoIAligned from the one level :func:`assign_levels` picks for it.

    With the defaults (``rule='torchvision'``, ``sampling_ratio=2``, ``aligned=False``) it equals
    ``torchvision.ops.MultiScaleRoIAlign`` exactly; ``rule='detectron2', aligned=True, sampling_ratio=0`` is
    detectron2's ``ROIPooler`` (``ROIAlignV2``), ``rule='mmdet', aligned=True, sampling_ratio=0`` mmdet's
    ``SingleRoIExtractor``.

    Args:
        featmaps: strides (``[4, 8, 16, 32]``) or FeatureSpecs (e.g. ``neck.out_specs``) of the maps, finest
            first. ``None`` infers them on every call from ``image_shapes`` as torchvision does.
        output_size: pooled size (int or ``(h, w)``).
        sampling_ratio: RoIAlign samples per bin side (``<= 0``: adaptive).
        aligned: half-pixel RoIAlign (``ROIAlignV2``).
        k0, canonical, rule: level assignment, see :func:`assign_levels`.
        featmap_names: keys to take, in order, when the features come as a dict (torchvision backbones add a
            ``'pool'`` map that RoI pooling does not use: pass ``['0', '1', '2', '3']``).

    ``forward(features, boxes, image_shapes=None)``: ``features`` a list (highest resolution first) or an
    ``OrderedDict``; ``boxes`` a list with one ``Tensor[N_i, 4]`` per image (image pixels); returns
    ``Tensor[sum N_i, C, out, out]`` in the order of the boxes. Usable as ``FasterRCNN(..., box_roi_pool=pool)``.

    Example:
        >>> pool = MultiLevelRoIPool([4, 8, 16, 32], output_size=7)
        >>> feats = [torch.randn(2, 16, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
        >>> boxes = [torch.tensor([[0, 0, 20, 20.], [0, 0, 120, 120]]), torch.tensor([[0, 0, 500, 500.]])]
        >>> pool(feats, boxes).shape
        torch.Size([3, 16, 7, 7])
        >>> pool.levels_of(boxes).tolist()  # absolute pyramid level of each RoI (clamped to P2..P5)
        [2, 3, 5]
    """

    def __init__(
        self,
        featmaps: Sequence[int | FeatureSpec] | None = None,
        output_size: int | Sequence[int] = 7,
        sampling_ratio: int = 2,
        aligned: bool = False,
        k0: int = 4,
        canonical: float = 224,
        rule: str = "torchvision",
        *,
        featmap_names: Sequence[str] | None = None,
        finest_scale: float | None = None,
    ) -> None:
        _check_rule(rule)
        super().__init__(featmaps, output_size, sampling_ratio, aligned, featmap_names, k0, canonical)
        self.rule = rule
        self.finest_scale = finest_scale
        if finest_scale is not None and rule not in _MMDET_RULES:
            raise ValueError(f"finest_scale is an mmdet knob; rule {rule!r} uses k0 and canonical. Drop it.")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule={self.rule!r}, k0={self.k0}, canonical={self.canonical}"

    def levels_of(self, boxes: Sequence[Tensor] | Tensor) -> Tensor:
        """Absolute pyramid level of each box (a list with one ``Tensor[N, 4]`` per image, or one ``Tensor[N, 4]``)."""
        if self.strides is None:
            raise ValueError("levels_of needs the strides: build the pooler with featmaps=[4, 8, 16, 32] (or specs).")
        flat = torch.cat([_check_boxes(b) for b in boxes]) if isinstance(boxes, (list, tuple)) else boxes
        lo = level_of_stride(self.strides[0])
        return self._assign(_check_boxes(flat), lo, lo + len(self.strides) - 1)

    def _assign(self, boxes: Tensor, lo: int, hi: int) -> Tensor:
        return assign_levels(boxes, self.k0, self.canonical, lo, hi, self.rule, finest_scale=self.finest_scale)

    def forward(
        self,
        features: Sequence[Tensor] | Mapping[str, Tensor],
        boxes: Sequence[Tensor] | Tensor,
        image_shapes: Sequence[tuple[int, int]] | None = None,
    ) -> Tensor:
        feats, rois, scales = self._prepare(features, boxes, image_shapes)
        channels = self._check_channels(feats, None)
        if len(feats) == 1:
            return self._align(feats[0], rois, scales[0])
        lo = -round(math.log2(scales[0]))
        levels = self._assign(rois[:, 1:], lo, lo + len(feats) - 1) - lo  # index into feats, [K]
        out = feats[0].new_zeros((rois.shape[0], channels, *self.output_size))  # [K, C, oh, ow]
        for i, (f, s) in enumerate(zip(feats, scales, strict=True)):
            idx = torch.where(levels == i)[0]
            if idx.numel() == 0:
                continue
            out[idx] = self._align(f, rois[idx], s).to(out.dtype)
        return out


def _fc_norm(name: str | None, features: int) -> nn.Module:
    if name is None or name == "none":
        return nn.Identity()
    if name == "gn":
        return nn.GroupNorm(math.gcd(32, features), features)
    if name == "bn":
        return nn.BatchNorm1d(features)
    raise ValueError(f"unknown norm {name!r}; choose one of ['bn', 'gn'] or None.")


class AdaptiveFeaturePooling(_RoIPoolerBase):
    """PANet adaptive feature pooling: RoIAlign every RoI from **every** level, a per-level layer, element-wise max.

    ``layer`` picks the per-level layer (separate weights per level):

    - ``'fc'``: flatten, ``Linear(C*out*out -> hidden)``, [norm], ReLU; output ``[K, hidden]``. This is
      ``PANetAllLevelRoIExtractor`` of the AugFPN repo (no norm) and the first fc of official PANet's
      ``roi_2mlp_head_gn_panet`` (``norm='gn'``). The fc is the head's first layer, so pair it with a box head
      that takes ``hidden`` features: ``box_head=torchvision.models.detection.faster_rcnn.TwoMLPHead(hidden, 1024)``
      (two more fc), or ``nn.Sequential(nn.Linear(hidden, 1024), nn.ReLU())`` for AugFPN's
      ``SharedFCBBoxHead(num_fcs=1)``. State-dict keys ``level_layers.{i}.0.*`` are AugFPN's ``fcs.{i}.0.*``.
    - ``'conv'``: 3x3 conv ``C -> out_channels``, [norm], ReLU; output ``[K, out_channels, out, out]``. Official
      PANet's ``roi_Xconv1fc_gn_head_panet`` first conv (``norm='gn'``); fits torchvision's default
      ``TwoMLPHead(out_channels*out*out, 1024)``, so ``box_head`` may be left to FasterRCNN when
      ``out_channels == C``.
    - a zero-argument callable returning a module (called once per level), for any other per-level layer.

    Example:
        >>> afp = AdaptiveFeaturePooling([FeatureSpec(16, 4), FeatureSpec(16, 8)], layer="fc", hidden=64)
        >>> feats = [torch.randn(1, 16, 32, 32), torch.randn(1, 16, 16, 16)]
        >>> afp(feats, [torch.tensor([[0, 0, 40, 40.], [8, 8, 100, 90]])]).shape
        torch.Size([2, 64])
        >>> conv = AdaptiveFeaturePooling([4, 8], channels=16, layer="conv", norm="gn")
        >>> conv(feats, [torch.tensor([[0, 0, 40, 40.]])]).shape
        torch.Size([1, 16, 7, 7])
    """

    def __init__(
        self,
        featmaps: Sequence[int | FeatureSpec],
        channels: int | None = None,
        output_size: int | Sequence[int] = 7,
        sampling_ratio: int = 2,
        aligned: bool = False,
        layer: str | Callable[[], nn.Module] = "fc",
        hidden: int = 1024,
        out_channels: int | None = None,
        norm: str | None = None,
        act: str | None = "relu",
        *,
        featmap_names: Sequence[str] | None = None,
    ) -> None:
        _require_featmaps(type(self).__name__, featmaps)
        super().__init__(featmaps, output_size, sampling_ratio, aligned, featmap_names)
        self.channels = _resolve_channels(type(self).__name__, self.channels_per_level, channels)
        num_levels = len(featmaps)
        oh, ow = self.output_size
        self.flatten = False
        self.out_channels: int | None
        layers: list[nn.Module] = []
        if layer == "fc":
            self.flatten, self.out_channels = True, hidden
            for _ in range(num_levels):
                fc = nn.Linear(self.channels * oh * ow, hidden)
                nn.init.xavier_uniform_(fc.weight)
                nn.init.zeros_(fc.bias)
                layers.append(nn.Sequential(fc, _fc_norm(norm, hidden), make_act(act)))
        elif layer == "conv":
            self.out_channels = out_channels or self.channels
            cfg = ConvCfg(norm=norm, act=act)
            for _ in range(num_levels):
                m = ConvNormAct(self.channels, self.out_channels, 3, cfg=cfg)
                nn.init.kaiming_normal_(m.conv.weight, mode="fan_out", nonlinearity="relu")
                if m.conv.bias is not None:
                    nn.init.zeros_(m.conv.bias)
                layers.append(m)
        elif callable(layer) and not isinstance(layer, str):
            self.out_channels = None
            layers = [layer() for _ in range(num_levels)]
            bad = [type(m).__name__ for m in layers if not isinstance(m, nn.Module)]
            if bad:
                raise TypeError(f"AdaptiveFeaturePooling: layer() must return an nn.Module, got {bad[0]}.")
        else:
            raise ValueError(
                f"AdaptiveFeaturePooling: layer must be 'fc', 'conv' or a callable returning an nn.Module, "
                f"got {layer!r}."
            )
        self.level_layers = nn.ModuleList(layers)

    def forward(
        self,
        features: Sequence[Tensor] | Mapping[str, Tensor],
        boxes: Sequence[Tensor] | Tensor,
        image_shapes: Sequence[tuple[int, int]] | None = None,
    ) -> Tensor:
        feats, rois, scales = self._prepare(features, boxes, image_shapes)
        self._check_channels(feats, self.channels)
        pooled = self._pool_all(feats, rois, scales)  # L x [K, C, oh, ow]
        if self.flatten:
            pooled = [p.flatten(1) for p in pooled]  # L x [K, C*oh*ow]
        outs = [m(p) for m, p in zip(self.level_layers, pooled, strict=True)]  # L x [K, hidden] or [K, C', oh, ow]
        return functools.reduce(torch.maximum, outs)


def _require_featmaps(owner: str, featmaps: object) -> None:
    if featmaps is None:
        raise ValueError(
            f"{owner} builds one layer per level, so it needs featmaps: the strides ([4, 8, 16, 32]) or the "
            "FeatureSpecs (neck.out_specs) of the maps it pools from."
        )


def _resolve_channels(owner: str, per_level: tuple[int, ...] | None, channels: int | None) -> int:
    if per_level is not None:
        if len(set(per_level)) != 1:
            raise ValueError(
                f"{owner}: all levels must have the same channels, got {list(per_level)}; put the maps through a "
                "neck with one output width."
            )
        if channels is not None and channels != per_level[0]:
            raise ValueError(f"{owner}: channels={channels} disagrees with the FeatureSpecs' {per_level[0]}.")
        return per_level[0]
    if channels is None or channels <= 0:
        raise ValueError(
            f"{owner} needs the feature channels to build its layers: pass FeatureSpecs (e.g. neck.out_specs) or "
            f"channels=C with plain strides; got channels={channels!r}."
        )
    return channels


class SoftRoISelection(_RoIPoolerBase):
    """AugFPN soft RoI selection: RoIAlign every RoI from every level, gate each level per spatial location, sum.

    As ``SoftRoIExtractor`` in the official AugFPN code: the L pooled maps ``f_l`` ``[K, C, out, out]`` are
    concatenated (``[K, L*C, out, out]``) and ``spatial_attention_conv`` = ``Conv1x1(L*C -> hidden), ReLU,
    Conv3x3(hidden -> L)`` gives one logit map ``a_l`` per level; the output is ``sum_l sigmoid(a_l) * f_l`` with an
    **independent sigmoid** per level (weights per level and location, shared over channels, not normalised across
    levels). ``gate='softmax'`` normalises across levels instead. Gates are computed in float32. State-dict keys
    (``spatial_attention_conv.{0,2}.*``) match AugFPN checkpoints (``bbox_roi_extractor.`` prefix there); init is
    Xavier-uniform, bias 0, as there. Use ``aligned=False, sampling_ratio=2`` (the defaults) for AugFPN's legacy
    ``RoIAlign(sample_num=2)``.

    Output ``[K, C, out, out]``: fits torchvision's default ``TwoMLPHead(C*out*out, 1024)``.

    Example:
        >>> soft = SoftRoISelection([FeatureSpec(16, 4), FeatureSpec(16, 8), FeatureSpec(16, 16)])
        >>> feats = [torch.randn(2, 16, 64 // s, 64 // s) for s in (4, 8, 16)]
        >>> soft(feats, [torch.tensor([[0, 0, 40, 40.]]), torch.tensor([[8, 8, 60, 50.]])]).shape
        torch.Size([2, 16, 7, 7])
    """

    def __init__(
        self,
        featmaps: Sequence[int | FeatureSpec],
        channels: int | None = None,
        output_size: int | Sequence[int] = 7,
        sampling_ratio: int = 2,
        aligned: bool = False,
        hidden: int | None = None,
        gate: str = "sigmoid",
        *,
        featmap_names: Sequence[str] | None = None,
    ) -> None:
        _require_featmaps(type(self).__name__, featmaps)
        super().__init__(featmaps, output_size, sampling_ratio, aligned, featmap_names)
        self.channels = _resolve_channels(type(self).__name__, self.channels_per_level, channels)
        if gate not in ("sigmoid", "softmax"):
            raise ValueError(f"SoftRoISelection: gate must be 'sigmoid' (AugFPN) or 'softmax', got {gate!r}.")
        self.gate = gate
        num_levels = len(featmaps)
        hid = hidden or self.channels
        self.spatial_attention_conv = nn.Sequential(
            nn.Conv2d(num_levels * self.channels, hid, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hid, num_levels, 3, padding=1),
        )
        for m in self.spatial_attention_conv.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gate={self.gate!r}"

    def gates(self, pooled: Sequence[Tensor]) -> Tensor:
        """Per-level weights ``[K, L, out, out]`` (float32) for the pooled maps ``L x [K, C, out, out]``."""
        logits = self.spatial_attention_conv(torch.cat(list(pooled), dim=1))  # [K, L, oh, ow]
        logits = logits.float()
        return torch.sigmoid(logits) if self.gate == "sigmoid" else F.softmax(logits, dim=1)

    def forward(
        self,
        features: Sequence[Tensor] | Mapping[str, Tensor],
        boxes: Sequence[Tensor] | Tensor,
        image_shapes: Sequence[tuple[int, int]] | None = None,
    ) -> Tensor:
        feats, rois, scales = self._prepare(features, boxes, image_shapes)
        self._check_channels(feats, self.channels)
        pooled = self._pool_all(feats, rois, scales)  # L x [K, C, oh, ow]
        w = self.gates(pooled)  # [K, L, oh, ow]
        out: Any = None
        for i, p in enumerate(pooled):
            term = w[:, i : i + 1].to(p.dtype) * p  # [K, C, oh, ow]
            out = term if out is None else out + term
        return out
