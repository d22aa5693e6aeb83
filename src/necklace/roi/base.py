"""Input handling shared by the RoI poolers: featmaps, output size, features as list or dict, boxes per image,
scales given or inferred; every check before ``roi_align`` runs (it crashes on non-finite boxes)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign, roi_align

from necklace.checks import as_bool, as_float, as_int, describe_value, is_int
from necklace.roi.levels import check_boxes
from necklace.spec import FeatureSpec, level_of_stride

__all__ = ["MAX_SAMPLES_PER_BIN"]

#: the most RoIAlign sampling points per output bin that adaptive sampling (``sampling_ratio <= 0``) may take for one
#: box (256 x 256): more means a box far larger than any image (a diverged detector's), whose pooling would run for
#: minutes; such a box is refused with the fix (clip the boxes or use a fixed sampling ratio).
MAX_SAMPLES_PER_BIN = 256 * 256


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if is_int(size):
        pair = (int(size), int(size))  # type: ignore[arg-type]
    elif isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2 and all(map(is_int, size)):
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
        elif is_int(f) and f > 0:
            level_of_stride(int(f))
            strides.append(int(f))
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
        owner = type(self).__name__
        out = _pair(output_size)
        sampling_ratio = as_int(sampling_ratio, f"{owner}: sampling_ratio (samples per bin side; <= 0: adaptive)")
        aligned = as_bool(aligned, f"{owner}: aligned")
        k0 = as_int(k0, f"{owner}: k0 (canonical level)")
        canonical = as_float(canonical, f"{owner}: canonical (box size of level k0)", gt=0)
        if featmap_names is not None and (
            isinstance(featmap_names, str) or not all(isinstance(n, str) for n in featmap_names)
        ):
            raise TypeError(f"{owner}: featmap_names must be a list of str keys, got {describe_value(featmap_names)}.")
        # The parent's attributes keep torchvision's meaning (FasterRCNN reads output_size[0] for its default head).
        super().__init__(list(featmap_names or []), out, sampling_ratio, canonical_scale=canonical, canonical_level=k0)
        self.strides, self.channels_per_level = _parse_featmaps(featmaps, owner)
        self.names: tuple[str, ...] | None = tuple(featmap_names) if featmap_names is not None else None
        if self.names is not None and self.strides is not None and len(self.names) != len(self.strides):
            raise ValueError(
                f"{owner}: featmap_names {list(self.names)} name {len(self.names)} maps but featmaps has "
                f"{len(self.strides)} strides {list(self.strides)}; give one name per level."
            )
        self.aligned = aligned
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
            if not f.is_floating_point():
                raise TypeError(
                    f"{owner}: feature map {i} has dtype {f.dtype}; RoI pooling needs floating-point maps. Pass "
                    "x.float()."
                )
            if f.shape[-2] == 0 or f.shape[-1] == 0:
                raise ValueError(
                    f"{owner}: feature map {i} has an empty spatial size {tuple(f.shape)}; every level needs at least "
                    "1x1 pixels."
                )
            if f.device != feats[0].device:
                raise ValueError(
                    f"{owner}: feature maps are on different devices {[str(x.device) for x in feats]}; move them to "
                    "one device."
                )
            if batch is None:
                batch = f.shape[0]
            elif f.shape[0] != batch:
                raise ValueError(
                    f"{owner}: feature maps have mismatched batch sizes {[tuple(x.shape) for x in feats]}; all "
                    "levels must come from the same images."
                )
        return feats

    def _rois(self, boxes: object, batch: int, device: torch.device) -> Tensor:
        """``[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` from the per-image boxes, every one checked: finite
        coordinates (``roi_align`` crashes the process on NaN/Inf), a real dtype, the features' device, batch
        indices of the batch."""
        owner = type(self).__name__
        if isinstance(boxes, Tensor):
            if boxes.dim() == 2 and boxes.shape[-1] == 5:
                rows = _real_boxes(boxes, f"{owner}: boxes", device)
                _check_finite(rows, f"{owner}: boxes", rows=True)
                rows = rows.to(torch.promote_types(rows.dtype, torch.float32))
                ids = rows[:, 0]
                bad = (ids != ids.round()) | (ids < 0) | (ids >= batch)
                if bool(bad.any()):
                    k = int(torch.nonzero(bad)[0, 0])
                    raise ValueError(
                        f"{owner}: boxes[{k}] has batch index {ids[k].item()!r}, but the feature maps hold a batch of "
                        f"{batch}; the first column of a Tensor[K, 5] must be an image index 0..{batch - 1}."
                    )
                return rows  # (batch_index, x1, y1, x2, y2) rows
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
        checked = [
            _real_boxes(check_boxes(b, f"boxes[{i}]"), f"{owner}: boxes[{i}]", device) for i, b in enumerate(boxes)
        ]
        if not checked:
            raise ValueError(f"{owner}: boxes is empty; pass one Tensor[N, 4] per image.")
        for i, b in enumerate(checked):
            _check_finite(b, f"{owner}: boxes[{i}]", rows=False)
        # one float dtype of at least float32 before concatenating: int64 boxes next to float16 ones would otherwise
        # be cast to float16, where 1e6 is inf (and roi_align crashes on it)
        checked = [b.to(torch.promote_types(b.dtype, torch.float32)) for b in checked]
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
        for i, s in enumerate(image_shapes):
            if not isinstance(s, Sequence) or len(s) != 2 or not all(is_int(v) and v > 0 for v in s):
                raise ValueError(
                    f"{owner}: image_shapes[{i}] must be an (H, W) pair of positive ints, got {describe_value(s)}."
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
        rois = self._rois(boxes, int(feats[0].shape[0]), feats[0].device)
        return feats, rois, self._scales(feats, image_shapes)

    def _align(self, feat: Tensor, rois: Tensor, scale: float) -> Tensor:
        if self.sampling_ratio <= 0 and rois.shape[0] > 0:
            _check_adaptive_samples(rois, scale, self.output_size, type(self).__name__)
        rois_in = rois.to(feat.dtype)
        if feat.element_size() < 4 and rois.numel() and not bool(torch.isfinite(rois_in).all()):
            k = int(torch.nonzero(~torch.isfinite(rois_in).all(dim=1))[0, 0])
            raise ValueError(
                f"{type(self).__name__}: box {[round(v, 1) for v in rois[k, 1:].tolist()]} of image {int(rois[k, 0])} "
                f"does not fit in the {feat.dtype} feature maps' range (RoIAlign computes in the maps' dtype). Clip "
                "the boxes to the image (torchvision.ops.clip_boxes_to_image) or pool float32 maps."
            )
        return roi_align(
            feat,
            rois_in,
            output_size=self.output_size,
            spatial_scale=scale,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
        )

    def _pool_all(self, feats: list[Tensor], rois: Tensor, scales: list[float]) -> list[Tensor]:
        """RoIAlign every RoI from every level: L tensors [K, C, out_h, out_w]."""
        return [self._align(f, rois, s) for f, s in zip(feats, scales, strict=True)]


def _real_boxes(boxes: Tensor, what: str, device: torch.device) -> Tensor:
    """``boxes`` when their dtype is real (integer boxes are fine: pixel coordinates) and they live on ``device``."""
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(
            f"{what} has dtype {boxes.dtype}; boxes are real (x1, y1, x2, y2) coordinates. Pass a float tensor."
        )
    if boxes.device != device:
        raise ValueError(
            f"{what} is on {boxes.device} but the feature maps are on {device}; move the boxes: "
            f"boxes.to({str(device)!r})."
        )
    return boxes


def _check_finite(boxes: Tensor, what: str, rows: bool) -> None:
    """Non-finite coordinates would crash ``roi_align`` (a segmentation fault): refuse them, naming the first one."""
    if boxes.is_floating_point() and boxes.numel() and not bool(torch.isfinite(boxes).all()):
        k = int(torch.nonzero(~torch.isfinite(boxes).all(dim=1))[0, 0])
        layout = "(batch_index, x1, y1, x2, y2)" if rows else "(x1, y1, x2, y2)"
        raise ValueError(
            f"{what}[{k}] = {[round(v, 2) for v in boxes[k].tolist()]} is not finite: NaN/Inf {layout} coordinates "
            "cannot be pooled. Drop them first, e.g. b = b[torch.isfinite(b).all(dim=1)] (a NaN box usually comes "
            "from a diverged box regression)."
        )


def _check_adaptive_samples(rois: Tensor, scale: float, output_size: tuple[int, int], owner: str) -> None:
    """Adaptive sampling takes ``ceil(roi_h * scale / out_h) * ceil(roi_w * scale / out_w)`` points per bin: refuse a
    box that would need more than :data:`MAX_SAMPLES_PER_BIN` (it would run for minutes, or overflow)."""
    size = (rois[:, 3:5] - rois[:, 1:3]).double().clamp(min=0) * scale  # [K, 2] (w, h) in feature pixels
    per_side = torch.ceil(
        size / torch.tensor([output_size[1], output_size[0]], dtype=torch.float64, device=size.device)
    )
    samples = per_side.clamp(min=1).prod(dim=1)
    worst = int(torch.argmax(samples))
    if float(samples[worst]) > MAX_SAMPLES_PER_BIN:
        box = [round(v, 1) for v in rois[worst, 1:].tolist()]
        raise ValueError(
            f"{owner}: box {box} (image {int(rois[worst, 0])}) spans {float(size[worst].max()) / scale:.4g} "
            f"pixels, which adaptive sampling (sampling_ratio <= 0) would sample with {float(samples[worst]):.3g} "
            f"points per bin (at most {MAX_SAMPLES_PER_BIN:,}). Clip the boxes to the image first "
            "(torchvision.ops.clip_boxes_to_image), or build the pooler with a fixed sampling_ratio such as 2."
        )
