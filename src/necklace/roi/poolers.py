"""The RoI poolers: FPN multi-level RoI pooling, PANet adaptive feature pooling, AugFPN soft RoI selection."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from necklace.checks import as_choice, as_int
from necklace.layers.conv import ACTS, ConvCfg, ConvNormAct, make_act
from necklace.roi.base import _RoIPoolerBase
from necklace.roi.levels import _MMDET_RULES, _check_rule, assign_levels, check_boxes
from necklace.spec import FeatureSpec, level_of_stride

__all__ = ["AdaptiveFeaturePooling", "MultiLevelRoIPool", "SoftRoISelection"]


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
        flat = torch.cat([check_boxes(b) for b in boxes]) if isinstance(boxes, (list, tuple)) else boxes
        lo = level_of_stride(self.strides[0])
        return self._assign(check_boxes(flat), lo, lo + len(self.strides) - 1)

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
        groups = math.gcd(32, features)
        if features // groups < 2:
            raise ValueError(
                f"AdaptiveFeaturePooling: norm='gn' on the fc layer puts hidden={features} features into {groups} "
                "groups of one, which normalises every feature to a constant. Use a hidden width with at least two "
                "features per group of 32 (e.g. 64, 256, 1024: official PANet uses 1024), or norm='bn' / None."
            )
        return nn.GroupNorm(groups, features)
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
        owner = type(self).__name__
        _require_featmaps(owner, featmaps)
        super().__init__(featmaps, output_size, sampling_ratio, aligned, featmap_names)
        self.channels = _resolve_channels(owner, self.channels_per_level, channels)
        hidden = as_int(hidden, f"{owner}: hidden", ge=1)
        out_channels = None if out_channels is None else as_int(out_channels, f"{owner}: out_channels", ge=1)
        as_choice(norm, f"{owner} norm", ("bn", "gn"), allow_none=True)
        as_choice(act, f"{owner} act", tuple(ACTS), allow_none=True)
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
        if self.flatten and self.training and rois.shape[0] == 1:
            if any(isinstance(m, nn.BatchNorm1d) and m.training for m in self.level_layers.modules()):
                raise ValueError(
                    "AdaptiveFeaturePooling: a training forward with one RoI, but the fc layer's BatchNorm1d cannot "
                    "compute batch statistics from one value per feature. Pool at least two RoIs per step (sample "
                    "more proposals), use norm='gn' or None, or run in eval() mode."
                )
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
    if channels is not None:
        channels = as_int(channels, f"{owner}: channels", ge=1)
    if per_level is not None:
        if len(set(per_level)) != 1:
            raise ValueError(
                f"{owner}: all levels must have the same channels, got {list(per_level)}; put the maps through a "
                "neck with one output width."
            )
        if channels is not None and channels != per_level[0]:
            raise ValueError(f"{owner}: channels={channels} disagrees with the FeatureSpecs' {per_level[0]}.")
        return per_level[0]
    if channels is None:
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
        if hidden is not None:
            hidden = as_int(hidden, f"{type(self).__name__}: hidden", ge=1)
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
