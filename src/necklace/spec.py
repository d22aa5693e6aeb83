"""Contracts: :class:`FeatureSpec` and the input checks every neck runs.

A pyramid level is described by its channel count and its stride (2**level). Tensors flow as
``list[Tensor]``, highest resolution first (the order of timm ``features_only``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from necklace.checks import check_keys, describe_value, is_int

__all__ = ["FeatureSpec", "as_feature_specs", "check_features", "is_symbolic", "level_of_stride", "validate_in_specs"]

MIN_LEVEL = 1
MAX_LEVEL = 8


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
    return any(isinstance(s, torch.SymInt) for s in sizes)


def _is_tracing() -> bool:
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def check_features(features: object, specs: Sequence[FeatureSpec], owner: str = "neck") -> None:
    """Validate the list of feature maps a neck receives against its ``in_specs``.

    Raises ``TypeError``/``ValueError`` naming what was received, what was expected and the fix.
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
    if _is_tracing():
        return
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
