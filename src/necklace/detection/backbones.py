"""Backbones that describe their outputs with :class:`~necklace.FeatureSpec`, so any neck can be attached.

Every backbone here is an ``nn.Module`` whose ``forward(images)`` takes ``[N, 3, H, W]`` and returns a
``list[Tensor]``, highest resolution first, one map per pyramid level in ``levels=(lo, hi)`` (P2 = stride 4 ..
P5 = stride 32), and whose ``out_specs`` says the channels and stride of each map. ``build_neck(name,
backbone.out_specs)`` then builds a neck that fits it.

- :func:`timm_backbone`: any timm model that supports ``features_only`` (``pretrained`` passed through).
- :func:`torchvision_resnet`: torchvision ResNet-18/34/50 (``weights=None`` unless ``pretrained``).
- :class:`TinyBackbone`: a small conv net for CPU experiments and tests (strides 4..32).
- :func:`build_backbone`: one of the above from a name such as ``"tiny"``, ``"resnet50"`` or ``"timm:resnet10t"``.

Spatial sizes: the built-in and ResNet backbones use padded stride-2 convolutions, so level ``i`` is
``ceil(H / stride_i)``; timm models with a patchify stem (ConvNeXt, ...) give ``floor`` sizes instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from necklace.layers.conv import ConvCfg, ConvNormAct
from necklace.spec import FeatureSpec

__all__ = [
    "Backbone",
    "TimmBackbone",
    "TinyBackbone",
    "TorchvisionResNet",
    "build_backbone",
    "timm_backbone",
    "torchvision_resnet",
]

_RESNET_CHANNELS = {18: (64, 128, 256, 512), 34: (64, 128, 256, 512), 50: (256, 512, 1024, 2048)}


def _check_levels(levels: Sequence[int], available: Sequence[int], owner: str) -> tuple[int, int]:
    """Validate a ``(lo, hi)`` level pair against the levels a backbone can produce."""
    if isinstance(levels, (str, int)) or len(levels) != 2:
        raise ValueError(f"{owner}: levels must be a (min_level, max_level) pair such as (3, 5), got {levels!r}.")
    lo, hi = int(levels[0]), int(levels[1])
    if lo > hi:
        raise ValueError(f"{owner}: levels {tuple(levels)}: min_level {lo} is above max_level {hi}.")
    missing = [lv for lv in range(lo, hi + 1) if lv not in available]
    if missing:
        raise ValueError(
            f"{owner}: levels {tuple(levels)} ask for P{missing[0]} (stride {2 ** missing[0]}), but this backbone "
            f"only has levels {sorted(available)} (strides {[2**lv for lv in sorted(available)]}). "
            f"Pick levels within ({min(available)}, {max(available)})."
        )
    return lo, hi


class Backbone(nn.Module):
    """Base class: ``forward(images [N, 3, H, W]) -> list[Tensor]`` (finest first) described by ``out_specs``.

    Subclasses set ``out_specs`` (one :class:`~necklace.FeatureSpec` per returned map) in ``__init__``. Any
    ``nn.Module`` with that attribute and that forward contract works where a ``Backbone`` is expected.

    Example:
        >>> class Stem(Backbone):
        ...     def __init__(self):
        ...         super().__init__((FeatureSpec(8, 2),))
        ...         self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        ...     def forward(self, images):
        ...         return [self.conv(images)]
        >>> b = Stem()
        >>> [tuple(f.shape) for f in b(torch.zeros(1, 3, 9, 9))], b.levels
        ([(1, 8, 5, 5)], (1, 1))
    """

    def __init__(self, out_specs: Sequence[FeatureSpec]) -> None:
        super().__init__()
        self.out_specs: tuple[FeatureSpec, ...] = tuple(out_specs)

    @property
    def levels(self) -> tuple[int, int]:
        """``(lo, hi)``: the pyramid levels of the first and last returned map."""
        return self.out_specs[0].level, self.out_specs[-1].level

    def forward(self, images: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return "out_specs=[" + ", ".join(f"({s.channels}, /{s.stride})" for s in self.out_specs) + "]"


def _check_images(images: object, owner: str) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{owner} expects a batch of images [N, C, H, W], got {got}. Add a batch dim: x[None].")
    return images


class TinyBackbone(Backbone):
    """A small conv net for CPU experiments: stem to stride 4, then one stage per stride 8, 16, 32.

    Level ``l`` (stride ``2**l``) has ``width * 2**(l - 2)`` channels (16/32/64/128 for ``width=16``); every
    stage is a stride-2 3x3 ``Conv-Norm-ReLU`` then a 3x3 one, so sizes are ``ceil(H / stride)``. Only the stages
    up to ``levels[1]`` are built.

    Example:
        >>> b = TinyBackbone(width=8, levels=(3, 5))
        >>> [(s.channels, s.stride) for s in b.out_specs]
        [(16, 8), (32, 16), (64, 32)]
        >>> [tuple(f.shape) for f in b(torch.zeros(1, 3, 97, 131))]
        [(1, 16, 13, 17), (1, 32, 7, 9), (1, 64, 4, 5)]
    """

    def __init__(
        self, width: int = 16, levels: Sequence[int] = (3, 5), in_channels: int = 3, norm: str | None = "bn"
    ) -> None:
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise ValueError(f"TinyBackbone: width must be a positive int, got {width!r}.")
        lo, hi = _check_levels(levels, (2, 3, 4, 5), "TinyBackbone")
        super().__init__(tuple(FeatureSpec(width * 2 ** (lv - 2), 2**lv) for lv in range(lo, hi + 1)))
        cfg = ConvCfg(norm=norm, act="relu")
        half = max(width // 2, 1)
        self.stem = nn.Sequential(  # -> stride 4, `width` channels
            ConvNormAct(in_channels, half, 3, stride=2, cfg=cfg),
            ConvNormAct(half, width, 3, stride=2, cfg=cfg),
            ConvNormAct(width, width, 3, cfg=cfg),
        )
        stages = []
        for lv in range(3, hi + 1):
            cin, cout = width * 2 ** (lv - 3), width * 2 ** (lv - 2)
            stages.append(
                nn.Sequential(ConvNormAct(cin, cout, 3, stride=2, cfg=cfg), ConvNormAct(cout, cout, 3, cfg=cfg))
            )
        self.stages = nn.ModuleList(stages)
        self._lo = lo

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.stem(_check_images(images, "TinyBackbone"))  # [N, width, H/4, W/4]
        outs = [x] if self._lo == 2 else []
        for i, stage in enumerate(self.stages):
            x = stage(x)  # [N, width * 2**(i+1), H / 2**(i+3), ...]
            if i + 3 >= self._lo:
                outs.append(x)
        return outs


class TorchvisionResNet(Backbone):
    """A torchvision ResNet trunk returning ``layer1..layer4`` outputs (P2..P5) for the chosen ``levels``.

    Build it with :func:`torchvision_resnet`; ``model`` is the torchvision ``ResNet`` (classifier unused).

    Example:
        >>> b = torchvision_resnet(18, levels=(3, 5))
        >>> [(s.channels, s.stride) for s in b.out_specs]
        [(128, 8), (256, 16), (512, 32)]
        >>> [tuple(f.shape[-2:]) for f in b(torch.zeros(1, 3, 65, 97))]
        [(9, 13), (5, 7), (3, 4)]
    """

    def __init__(self, model: nn.Module, channels: Sequence[int], levels: Sequence[int] = (2, 5)) -> None:
        lo, hi = _check_levels(levels, (2, 3, 4, 5), "TorchvisionResNet")
        super().__init__(tuple(FeatureSpec(int(channels[lv - 2]), 2**lv) for lv in range(lo, hi + 1)))
        self.model = model
        self._lo, self._hi = lo, hi

    def forward(self, images: Tensor) -> list[Tensor]:
        m: Any = self.model
        x = _check_images(images, "TorchvisionResNet")
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))  # [N, 64, H/4, W/4]
        outs = []
        for lv in range(2, self._hi + 1):
            x = getattr(m, f"layer{lv - 1}")(x)  # [N, C_lv, H / 2**lv, W / 2**lv]
            if lv >= self._lo:
                outs.append(x)
        return outs


def torchvision_resnet(
    depth: int = 50, pretrained: bool = False, levels: Sequence[int] = (2, 5), frozen_bn: bool | None = None
) -> TorchvisionResNet:
    """torchvision ResNet-``depth`` (18, 34 or 50) as a :class:`Backbone` over ``levels`` (P2..P5 by default).

    ``pretrained=False`` builds it with ``weights=None`` (nothing downloaded); ``pretrained=True`` asks torchvision
    for its default ImageNet weights. ``frozen_bn`` (default: ``pretrained``) uses ``FrozenBatchNorm2d`` as
    torchvision's detection backbones do.

    Example:
        >>> b = torchvision_resnet(50, levels=(4, 5))
        >>> [(s.channels, s.stride) for s in b.out_specs]
        [(1024, 16), (2048, 32)]
    """
    if depth not in _RESNET_CHANNELS:
        raise ValueError(f"torchvision_resnet: depth must be one of {sorted(_RESNET_CHANNELS)}, got {depth!r}.")
    from torchvision.models import get_model
    from torchvision.ops import FrozenBatchNorm2d

    frozen = pretrained if frozen_bn is None else frozen_bn
    model = get_model(
        f"resnet{depth}",
        weights="DEFAULT" if pretrained else None,
        norm_layer=FrozenBatchNorm2d if frozen else nn.BatchNorm2d,
    )
    return TorchvisionResNet(model, _RESNET_CHANNELS[depth], levels)


class TimmBackbone(Backbone):
    """A timm ``features_only`` model restricted to the maps of ``levels``; build it with :func:`timm_backbone`.

    Example:
        >>> b = timm_backbone("resnet10t", levels=(3, 5))
        >>> [(s.channels, s.stride) for s in b.out_specs]
        [(128, 8), (256, 16), (512, 32)]
        >>> [tuple(f.shape) for f in b(torch.zeros(1, 3, 64, 64))]
        [(1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]
    """

    def __init__(self, model: nn.Module, indices: Sequence[int], out_specs: Sequence[FeatureSpec]) -> None:
        super().__init__(out_specs)
        self.model = model
        self.indices = tuple(indices)

    def forward(self, images: Tensor) -> list[Tensor]:
        feats = self.model(_check_images(images, "TimmBackbone"))  # list over the model's out_indices
        return [feats[i] for i in self.indices]


def timm_backbone(name: str, pretrained: bool = False, levels: Sequence[int] = (3, 5), **kwargs: Any) -> TimmBackbone:
    """Any timm model created with ``features_only=True``, returning the maps of ``levels`` (P3..P5 by default).

    ``pretrained`` and ``kwargs`` go to ``timm.create_model``; the levels are found from the model's
    ``feature_info`` reductions, so a model without a map at some stride gets an error listing what it has.

    Example:
        >>> b = timm_backbone("resnet10t", levels=(2, 4))
        >>> [s.stride for s in b.out_specs]
        [4, 8, 16]
    """
    try:
        import timm
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("timm_backbone needs timm: pip install timm") from e
    for key in ("features_only", "out_indices"):
        if key in kwargs:
            raise ValueError(f"timm_backbone sets {key} itself from levels; drop {key}={kwargs[key]!r}.")
    try:
        model = timm.create_model(name, pretrained=pretrained, features_only=True, **kwargs)
    except RuntimeError as e:
        if "Unknown model" not in str(e):
            raise
        close = timm.list_models(f"*{name[:4]}*")[:8] if name else []
        raise ValueError(
            f"unknown backbone {name!r}: not a built-in one ('tiny', 'resnet18', 'resnet34', 'resnet50') nor a timm "
            f"model" + (f"; timm has e.g. {', '.join(close)}" if close else "") + " (timm.list_models('*name*') "
            "lists them)."
        ) from None
    info: Any = model.feature_info
    reductions, channels = list(info.reduction()), list(info.channels())
    by_level: dict[int, int] = {}  # level -> position in the model's outputs (first map at that stride)
    for pos, r in enumerate(reductions):
        if r > 0 and r & (r - 1) == 0:
            by_level.setdefault(r.bit_length() - 1, pos)
    try:
        lo, hi = _check_levels(levels, list(by_level), f"timm_backbone({name!r})")
    except ValueError as e:
        raise ValueError(f"{e} (timm feature_info reductions: {reductions})") from None
    positions = [by_level[lv] for lv in range(lo, hi + 1)]
    out_indices = list(info.out_indices)
    if positions[-1] < len(reductions) - 1:  # later stages are not needed: rebuild without them
        model = timm.create_model(
            name, pretrained=pretrained, features_only=True, out_indices=[out_indices[p] for p in positions], **kwargs
        )
        positions = list(range(len(positions)))
    specs = [FeatureSpec(int(channels[by_level[lv]]), 2**lv) for lv in range(lo, hi + 1)]
    return TimmBackbone(model, positions, specs)


def build_backbone(name: str, pretrained: bool = False, levels: Sequence[int] | None = None, **kwargs: Any) -> Backbone:
    """Build a backbone from a name: ``"tiny"`` (:class:`TinyBackbone`, ``kwargs`` such as ``width``),
    ``"resnet18"``/``"resnet34"``/``"resnet50"`` (torchvision; ``"tv:resnet50"`` also works), or
    ``"timm:<model>"`` / any other name (timm). ``levels`` defaults to each builder's default.

    Example:
        >>> build_backbone("tiny", width=8).out_specs[0]
        FeatureSpec(channels=16, stride=8)
        >>> [s.stride for s in build_backbone("resnet18", levels=(2, 3)).out_specs]
        [4, 8]
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"build_backbone: name must be a non-empty string, got {name!r}.")
    lv: dict[str, Any] = {} if levels is None else {"levels": tuple(levels)}
    key = name.lower()
    if key == "tiny":
        if pretrained:
            raise ValueError("build_backbone: the built-in 'tiny' backbone has no pretrained weights.")
        return TinyBackbone(**lv, **kwargs)
    tv = key[3:] if key.startswith("tv:") else key
    if tv.startswith("resnet") and tv[6:].isdigit() and int(tv[6:]) in _RESNET_CHANNELS:
        return torchvision_resnet(int(tv[6:]), pretrained=pretrained, **lv, **kwargs)
    if key.startswith("tv:"):
        raise ValueError(
            f"build_backbone: unknown torchvision backbone {name!r}; choose tv:resnet18, tv:resnet34 or tv:resnet50."
        )
    return timm_backbone(name[5:] if key.startswith("timm:") else name, pretrained=pretrained, **lv, **kwargs)
