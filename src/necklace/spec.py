"""Contracts: :class:`FeatureSpec` and the input checks every neck runs.

A pyramid level is described by its channel count and its stride (2**level). Tensors flow as
``list[Tensor]``, highest resolution first (the order of timm ``features_only``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from necklace.checks import check_keys, describe_value, is_int

__all__ = [
    "MAX_CHANNELS",
    "FeatureSpec",
    "as_feature_specs",
    "check_features",
    "is_symbolic",
    "level_of_stride",
    "validate_in_specs",
]

MIN_LEVEL = 1
MAX_LEVEL = 8
#: the most channels a level / node / width option may have: far above any published neck (2048), low enough that a
#: typo (an extra zero or two) is an error naming it, not a request for terabytes of weights
MAX_CHANNELS = 16384


@dataclass(frozen=True)
class FeatureSpec:
    """One pyramid level: ``channels`` maps at ``stride`` pixels of the input image.

    Example:
        >>> s = FeatureSpec(channels=256, stride=8)
        >>> s.level
        3
        >>> s.size_for(97, 131)  # spatial size of this level for a 97 x 131 image
        (13, 17)
    """

    channels: int
    stride: int

    def __post_init__(self) -> None:
        for attr in ("channels", "stride"):
            value = getattr(self, attr)
            if not is_int(value):
                kind = ValueError if isinstance(value, (int, float)) else TypeError  # (bool, float: ValueError)
                raise kind(
                    f"FeatureSpec.{attr} must be a positive int, got {describe_value(value)}. Pass a whole number, "
                    "e.g. FeatureSpec(channels=256, stride=8)."
                )
            if value <= 0:
                raise ValueError(f"FeatureSpec.{attr} must be a positive int, got {value!r}.")
            if attr == "channels" and value > MAX_CHANNELS:
                raise ValueError(f"FeatureSpec.channels must be <= {MAX_CHANNELS}, got {value!r}.")
            object.__setattr__(self, attr, int(value))  # (NumPy integers become ints)
        level_of_stride(self.stride)

    @property
    def level(self) -> int:
        """Pyramid level ``log2(stride)`` (stride 8 -> level 3)."""
        return level_of_stride(self.stride)

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of this level for an image of ``height x width``: ``ceil(H/stride)``."""
        return (math.ceil(height / self.stride), math.ceil(width / self.stride))

    def to_dict(self) -> dict[str, int]:
        return {"channels": self.channels, "stride": self.stride}

    @classmethod
    def from_dict(cls, data: Mapping[str, int]) -> FeatureSpec:
        """The spec a dict ``{"channels": C, "stride": S}`` describes (unknown or missing keys raise ``ValueError``).

        Example:
            >>> FeatureSpec.from_dict({"channels": 64, "stride": 8})
            FeatureSpec(channels=64, stride=8)
        """
        if not isinstance(data, Mapping):
            raise TypeError(
                f"an in_spec must be a dict with keys channels and stride, got {describe_value(data)}. "
                "Example: {'channels': 256, 'stride': 8}."
            )
        check_keys(data, ("channels", "stride"), "in_spec")
        missing = [k for k in ("channels", "stride") if k not in data]
        if missing:
            raise ValueError(
                f"in_spec {dict(data)!r} is missing {missing}; give both, e.g. {{channels: 256, stride: 8}}."
            )
        return cls(channels=data["channels"], stride=data["stride"])


def level_of_stride(stride: int) -> int:
    """Return ``log2(stride)``; raise ``ValueError`` when ``stride`` is not a power of two."""
    if stride <= 0 or stride & (stride - 1):
        raise ValueError(
            f"stride {stride} is not a power of two; pyramid strides must be 2**level (4, 8, 16, 32, ...)."
        )
    return stride.bit_length() - 1


def as_feature_specs(specs: Sequence[FeatureSpec | tuple[int, int] | dict[str, int]]) -> tuple[FeatureSpec, ...]:
    """Accept ``FeatureSpec``s, ``(channels, stride)`` pairs or dicts; return a tuple of ``FeatureSpec``."""
    if isinstance(specs, FeatureSpec) or not isinstance(specs, Sequence) or isinstance(specs, str):
        raise TypeError(
            f"in_specs must be a sequence of FeatureSpec (one per backbone level), got {type(specs).__name__}. "
            "Example: [FeatureSpec(512, 8), FeatureSpec(1024, 16), FeatureSpec(2048, 32)]."
        )
    out = []
    for i, s in enumerate(specs):
        if isinstance(s, FeatureSpec):
            out.append(s)
        elif isinstance(s, Mapping):
            out.append(FeatureSpec.from_dict(s))
        elif isinstance(s, (tuple, list)) and len(s) == 2:
            out.append(FeatureSpec(s[0], s[1]))
        else:
            raise TypeError(f"in_specs[{i}] must be a FeatureSpec or a (channels, stride) pair, got {s!r}.")
    return tuple(out)


def validate_in_specs(specs: Sequence[FeatureSpec]) -> tuple[FeatureSpec, ...]:
    """Check that ``specs`` is non-empty, ordered finest first, with strides that double at each level."""
    specs = as_feature_specs(specs)
    if not specs:
        raise ValueError("in_specs is empty; a neck needs at least one backbone level.")
    for s in specs:
        if not MIN_LEVEL <= s.level <= MAX_LEVEL:
            raise ValueError(
                f"stride {s.stride} (level {s.level}) is outside the supported range "
                f"{2**MIN_LEVEL}..{2**MAX_LEVEL} (levels {MIN_LEVEL}..{MAX_LEVEL})."
            )
    strides = [s.stride for s in specs]
    for a, b in itertools.pairwise(strides):
        if b != 2 * a:
            raise ValueError(
                f"in_specs strides {strides} are not successive powers of two (each level must be twice the "
                f"previous, finest first); got {a} followed by {b}. Pass one FeatureSpec per consecutive level, "
                "e.g. strides [8, 16, 32]."
            )
    return specs


def is_symbolic(*sizes: object) -> bool:
    """Whether any of ``sizes`` is a symbolic ``torch.SymInt`` (``torch.export`` / ``torch.compile`` with dynamic
    shapes), where Python comparisons on sizes would specialise or guard the traced graph.

    Example:
        >>> is_symbolic(13, 17)
        False
    """
    for s in sizes:  # (a loop: a generator costs about a microsecond, and this runs for every op of a forward)
        if isinstance(s, torch.SymInt):
            return True
    return False


def _is_tracing() -> bool:
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def check_features(
    features: object, specs: Sequence[FeatureSpec], owner: str = "neck", neck: nn.Module | None = None
) -> None:
    """Validate the list of feature maps a neck receives against its ``in_specs`` (and, given the ``neck``, against
    its weights: dtype, device, and a training forward that BatchNorm cannot run).

    Checks, each with a ``TypeError``/``ValueError`` naming what was received, what was expected and the fix: a list
    of one 4-D map per spec; channels; one batch size; floating-point maps of one dtype on one device (integer or
    bool maps are refused, never converted); no empty spatial size; each level about half the previous one. With
    ``neck``: maps in the weights' dtype (a float32 neck fed float64 or half maps is an error, not a silent
    conversion; under ``torch.autocast`` float32 maps or maps of the autocast dtype run, that being what autocast is
    for) and on the weights' device; no norm layer fed one value per group on a 1x1 level (BatchNorm in training
    with batch 1, GroupNorm with one channel per group).
    Non-finite values are not checked (they propagate, as in any torch module).

    Example:
        >>> specs = [FeatureSpec(8, 8), FeatureSpec(16, 16)]
        >>> check_features([torch.zeros(1, 8, 8, 8), torch.zeros(1, 16, 4, 4)], specs)
        >>> check_features([torch.zeros(1, 8, 8, 8), torch.zeros(1, 16, 4, 4, dtype=torch.int64)], specs)
        Traceback (most recent call last):
        ...
        TypeError: neck: feature map 1 (stride 16) has dtype torch.int64; necks take floating-point maps ...
    """
    if isinstance(features, Tensor) or not isinstance(features, (list, tuple)):
        raise TypeError(
            f"{owner} expects a list of {len(specs)} feature maps (highest resolution first), got "
            f"{type(features).__name__}"
            + (f" of shape {tuple(features.shape)}" if isinstance(features, Tensor) else "")
            + ". Pass e.g. backbone(x) from a timm model created with features_only=True."
        )
    if len(features) != len(specs):
        raise ValueError(
            f"{owner} expects {len(specs)} feature maps with strides {[s.stride for s in specs]}, got "
            f"{len(features)}. Pass exactly one map per in_spec, or rebuild the neck with in_specs matching "
            "your backbone."
        )
    batch = None
    for i, (f, s) in enumerate(zip(features, specs, strict=True)):
        if not isinstance(f, Tensor):
            raise TypeError(f"{owner}: feature map {i} is a {type(f).__name__}, expected a torch.Tensor.")
        if f.dim() != 4:
            raise ValueError(
                f"{owner}: feature map {i} (stride {s.stride}) has shape {tuple(f.shape)}; expected a 4-D "
                f"tensor (N, {s.channels}, H, W). Add the batch dimension with x.unsqueeze(0) if needed."
            )
        if not f.is_floating_point():
            raise TypeError(
                f"{owner}: feature map {i} (stride {s.stride}) has dtype {f.dtype}; necks take floating-point maps "
                "(float32, float16, bfloat16, float64). Convert with x.float(), or pass the backbone's features."
            )
        if f.shape[1] != s.channels:
            raise ValueError(
                f"{owner}: feature map {i} (stride {s.stride}) has {f.shape[1]} channels (shape "
                f"{tuple(f.shape)}), expected {s.channels}. Rebuild the neck with in_specs channels "
                f"{[int(x.shape[1]) if isinstance(x, Tensor) and x.dim() == 4 else '?' for x in features]} "
                "or check the order of the maps (highest resolution first)."
            )
        if batch is None:
            batch = f.shape[0]
        elif f.shape[0] != batch:
            raise ValueError(
                f"{owner}: feature maps have mismatched batch sizes {[tuple(x.shape) for x in features]}; "
                "all levels must come from the same batch of images."
            )
    first = features[0]
    if any(f.dtype != first.dtype for f in features):
        raise TypeError(
            f"{owner}: feature maps have mixed dtypes {[str(f.dtype) for f in features]}; pass every level in one "
            "dtype, e.g. [x.float() for x in features] (or run the backbone and neck under one torch.autocast)."
        )
    if any(f.device != first.device for f in features):
        raise ValueError(
            f"{owner}: feature maps are on different devices {[str(f.device) for f in features]}; move them to "
            "one device, e.g. [x.to(device) for x in features]."
        )
    if _is_tracing():
        return
    for i, f in enumerate(features):
        if f.shape[-2] == 0 or f.shape[-1] == 0:
            raise ValueError(
                f"{owner}: feature map {i} (stride {specs[i].stride}) has an empty spatial size {tuple(f.shape)}; "
                "every level needs at least 1x1 pixels. Check the image size and the backbone's outputs "
                f"(shapes got: {[tuple(x.shape) for x in features]})."
            )
    if neck is not None:
        _check_weights(first, neck, owner)
    for i in range(1, len(features)):
        prev, cur = features[i - 1].shape[-2:], features[i].shape[-2:]
        for d in range(2):
            if abs(cur[d] - prev[d] / 2) > 1:
                raise ValueError(
                    f"{owner}: feature map {i} has spatial size {tuple(cur)} but map {i - 1} has "
                    f"{tuple(prev)}; each level must be about half the previous one (strides "
                    f"{[s.stride for s in specs]}). Shapes got: {[tuple(x.shape) for x in features]}. "
                    "Pass the maps highest resolution first, from one image."
                )
    if neck is not None:
        _check_norms(features, neck, owner, int(first.shape[0]))


def _first_weight(module: nn.Module) -> Tensor | None:
    """The first floating-point parameter, depth first (a few dict lookups; ``parameters()`` costs ~20 us here)."""
    for p in module._parameters.values():
        if p is not None and p.is_floating_point():
            return p
    for child in module._modules.values():
        if child is not None:
            found = _first_weight(child)
            if found is not None:
                return found
    return None


def _check_weights(x: Tensor, neck: nn.Module, owner: str) -> None:
    """The maps' device and dtype against the neck's first floating-point weight."""
    weight = _first_weight(neck)
    if weight is None:
        return
    if x.device != weight.device:
        raise ValueError(
            f"{owner}: the feature maps are on {x.device} but the neck's weights are on {weight.device}; move one "
            f"to the other: neck.to({str(x.device)!r}) or [x.to({str(weight.device)!r}) for x in features]."
        )
    if torch.is_autocast_enabled(x.device.type):
        low = torch.get_autocast_dtype(x.device.type)
        if x.dtype not in (torch.float32, low):
            raise TypeError(
                f"{owner}: the feature maps are {x.dtype} inside torch.autocast(dtype={low}), which runs float32 "
                f"and {low} maps only (torch's autocast cannot mix {x.dtype} in). Pass [x.float() for x in "
                f"features] or [x.to({low}) for x in features]."
            )
        return
    if x.dtype != weight.dtype:
        name = str(x.dtype).replace("torch.", "")
        raise TypeError(
            f"{owner}: the feature maps are {x.dtype} but the neck's weights are {weight.dtype} (no silent "
            f"conversion). Either convert the neck, neck.to(torch.{name}), or the maps, "
            f"[x.to(torch.{str(weight.dtype).replace('torch.', '')}) for x in features], or run mixed precision "
            f"under torch.autocast({x.device.type!r}, dtype=torch.{name})."
        )


def _level_sizes(features: Sequence[Tensor], specs_levels: Sequence[int], top: int) -> dict[int, tuple[int, int]]:
    sizes = {lv: (int(f.shape[-2]), int(f.shape[-1])) for lv, f in zip(specs_levels, features, strict=True)}
    for level in range(max(specs_levels) + 1, top + 1):  # as the engine: ceil-halving above the backbone
        h, w = sizes[level - 1]
        sizes[level] = ((h - 1) // 2 + 1, (w - 1) // 2 + 1)
    return sizes


def _uses_group_norm(graph: object) -> bool:
    cfgs = [getattr(graph, "conv", None), getattr(graph, "align", None)]
    if any(getattr(c, "norm", None) == "gn" for c in cfgs):
        return True
    return any(n.block_args.get("norm") == "gn" for n in getattr(graph, "nodes", ()))


def _check_norms(features: Sequence[Tensor], neck: nn.Module, owner: str, batch: int) -> None:
    """Refuse a forward in which a norm layer would see one value per group on a 1x1 level: BatchNorm in training
    with batch 1 (one value per channel), GroupNorm with one channel per group (in any mode), naming the node.
    Duck-typed on :class:`~necklace.graph.GraphNeck` (``graph`` + ``nodes``); other modules pass. Cheap unless a
    level is 1x1 and such a norm may be present."""
    graph: Any = neck.__dict__.get("graph")
    level_range = getattr(graph, "level_range", None)
    if level_range is None or batch == 0:
        return
    # the coarsest map is the smallest (the maps were checked to halve level to level); the extra levels above it
    # ceil-halve it, so some level is 1x1 exactly when its longer side is at most 2**(extra levels)
    in_levels = [s.level for s in graph.in_specs]
    h, w = int(features[-1].shape[-2]), int(features[-1].shape[-1])
    if max(h, w) > 2 ** max(level_range[1] - in_levels[-1], 0):
        return
    modules = getattr(neck, "nodes", None)
    if modules is None or not hasattr(graph, "plan"):
        return
    sizes = _level_sizes(features, in_levels, level_range[1])
    tiny = {level for level, (h, w) in sizes.items() if h * w == 1}
    batch_norm = neck.training and batch == 1
    if not tiny or not (batch_norm or _uses_group_norm(graph)):
        return
    shapes = [tuple(f.shape) for f in features]
    for node, edges, _ in graph.plan():
        module = modules[node.name]
        runs = [(node.level, module.block)]
        for plan, edge in zip(edges, module.edges, strict=True):
            src = node.level - plan.steps
            runs.append((src, getattr(edge, "align", None)))
            for k, op in enumerate(getattr(edge, "ops", ())):
                runs.append((src + k + 1 if plan.steps > 0 else node.level, op))
        for level, part in runs:
            if level not in tiny or part is None:
                continue
            where = f"level {level} (stride {2**level}) map is 1x1 (input shapes {shapes})"
            for m in part.modules():
                if batch_norm and isinstance(m, _BatchNorm) and m.training:
                    raise ValueError(
                        f"{owner}: a training forward with batch 1 whose {where}: BatchNorm in node {node.name!r} "
                        "cannot compute batch statistics from one value per channel. Train with a batch of 2 or "
                        f"more, use larger images (at least {2**level + 1} pixels on a side), or run the neck in "
                        "eval() mode."
                    )
                if isinstance(m, nn.GroupNorm) and m.num_channels // m.num_groups == 1:
                    raise ValueError(
                        f"{owner}: the {where}: GroupNorm in node {node.name!r} has one channel per group "
                        f"({m.num_channels} channels, {m.num_groups} groups), so each group holds one value, which "
                        f"GroupNorm refuses. Use larger images (at least {2**level + 1} pixels on a side), fewer "
                        "groups (gn_groups) or more channels per node, or norm='bn'."
                    )
