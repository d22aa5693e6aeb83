"""One small registry of necks: ``register_neck`` / ``build_neck`` / ``list_necks`` / ``neck_info``.

Each neck family registers its builder where it is defined (``necks/<family>.py``) with the decorator form
``@register_neck(name, summary=..., paper=..., ...)``; ``import necklace`` imports :mod:`necklace.necks` eagerly, so
the registry is complete before any user code runs and registering a custom neck never hides the built-in ones.
This module imports no neck (no import cycle: the necks import this module, never the reverse).

An entry (:class:`NeckInfo`) carries what callers need: the summary and paper, the typed options read from the
builder's signature (:class:`~necklace.options.OptionSpec`, with choices and ranges), the default backbone
``in_specs`` and image size to build / benchmark it with, and a small configuration for tests and smoke runs.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from torch import nn

from necklace.options import OptionRule, OptionSpec, check_options, options_from_signature
from necklace.spec import FeatureSpec, as_feature_specs, validate_in_specs

__all__ = [
    "RESNET50_C3_C5",
    "InSpecsDefault",
    "NeckInfo",
    "build_neck",
    "list_necks",
    "neck_info",
    "register_neck",
    "resnet50_in_specs",
]

#: ResNet-50 C3-C5 (strides 8, 16, 32): the backbone a neck is built on when it names no other.
RESNET50_C3_C5 = (FeatureSpec(512, 8), FeatureSpec(1024, 16), FeatureSpec(2048, 32))

#: default ``in_specs`` of an entry: fixed specs, or a function of the user's options (a preset picks a backbone)
InSpecsDefault = Sequence[FeatureSpec] | Callable[[Mapping[str, Any]], Sequence[FeatureSpec]]
#: default image size of an entry: ``640``, ``(H, W)``, or a function of the user's options
ImageSizeDefault = int | tuple[int, int] | Callable[[Mapping[str, Any]], int | tuple[int, int]]

_B = TypeVar("_B", bound=Callable[..., nn.Module])


def resnet50_in_specs(options: Mapping[str, Any]) -> tuple[FeatureSpec, ...]:
    """ResNet-50 C3-C5, plus C2 (256 @ stride 4) when ``options['levels']`` starts at level 2 or below.

    Example:
        >>> [s.stride for s in resnet50_in_specs({"levels": (2, 6)})]
        [4, 8, 16, 32]
    """
    levels = options.get("levels")
    if isinstance(levels, Sequence) and not isinstance(levels, str) and levels:
        first = levels[0]
        if isinstance(first, int) and not isinstance(first, bool) and first <= 2:
            return (FeatureSpec(256, 4), *RESNET50_C3_C5)
    return RESNET50_C3_C5


def _image_pair(value: object, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ValueError(f"neck {name!r}: image_size must be a positive int or an (H, W) pair, got {value!r}.")
    return (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class NeckInfo:
    """What the registry knows about a neck: its builder and what callers need to build, show and measure it.

    ``options``: the typed options (:class:`~necklace.options.OptionSpec`) read from the builder's signature;
    ``default_in_specs`` / ``image_size``: the backbone and image size the neck is built / benchmarked with (fixed,
    or a function of the user's options); ``small_options``: a small configuration (narrow, shallow) for tests and
    smoke runs; ``compare_options``: what the neck gets in a detection comparison unless overridden (one width and
    the same levels as its rivals); ``knobs``: the options worth showing in a listing.

    Example:
        >>> info = neck_info("fpn")
        >>> info.name, info.paper.split(",")[0]
        ('fpn', 'Lin et al.')
        >>> [s.channels for s in neck_info("bifpn").in_specs_for({"preset": "d3"})], neck_info("bifpn").image_size_for()
        ([48, 136, 384], (512, 512))
        >>> info.option("extra").choices
        ('subsample', 'maxpool', 'conv')
    """

    name: str
    builder: Callable[..., nn.Module]
    summary: str
    paper: str
    knobs: tuple[str, ...] = ()
    options: tuple[OptionSpec, ...] = ()
    default_in_specs: InSpecsDefault = resnet50_in_specs
    image_size: ImageSizeDefault = 640
    small_options: Mapping[str, Any] = field(default_factory=dict)
    compare_options: Mapping[str, Any] = field(default_factory=dict)

    def option(self, name: str) -> OptionSpec:
        """The :class:`~necklace.options.OptionSpec` called ``name``; an unknown name lists the valid ones."""
        for spec in self.options:
            if spec.name == name:
                return spec
        close = difflib.get_close_matches(name, [s.name for s in self.options], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"neck {self.name!r} has no option {name!r}.{hint} Options: {', '.join(s.name for s in self.options)}."
        )

    def check_options(self, options: Mapping[str, Any], complete: bool = True) -> dict[str, Any]:
        """``options`` checked against :attr:`options` (names, types, choices, ranges; with ``complete``, every
        required option present); see :func:`necklace.options.check_options`. An entry registered without typed
        options (a builder taking only ``**options``) passes them through."""
        if not self.options:
            return dict(options)
        return check_options(self.name, self.options, options, complete)

    def in_specs_for(self, options: Mapping[str, Any] | None = None) -> tuple[FeatureSpec, ...]:
        """The default backbone ``in_specs`` for ``options`` (e.g. a BiFPN preset's EfficientNet widths)."""
        spec = self.default_in_specs
        specs = spec(self.check_options(options or {})) if callable(spec) else spec
        return validate_in_specs(as_feature_specs(specs))

    def image_size_for(self, options: Mapping[str, Any] | None = None) -> tuple[int, int]:
        """The default image size ``(H, W)`` for ``options`` (e.g. a BiFPN preset's own resolution)."""
        size = self.image_size
        return _image_pair(size(self.check_options(options or {})) if callable(size) else size, self.name)


_REGISTRY: dict[str, NeckInfo] = {}


@overload
def register_neck(
    name: str,
    builder: None = None,
    *,
    summary: str,
    paper: str,
    knobs: Sequence[str] = (),
    options_from: Callable[..., Any] | None = None,
    rules: Mapping[str, OptionRule] | None = None,
    default_in_specs: InSpecsDefault = resnet50_in_specs,
    image_size: ImageSizeDefault = 640,
    small_options: Mapping[str, Any] | None = None,
    compare_options: Mapping[str, Any] | None = None,
) -> Callable[[_B], _B]: ...


@overload
def register_neck(
    name: str,
    builder: Callable[..., nn.Module],
    *,
    summary: str,
    paper: str,
    knobs: Sequence[str] = (),
    options_from: Callable[..., Any] | None = None,
    rules: Mapping[str, OptionRule] | None = None,
    default_in_specs: InSpecsDefault = resnet50_in_specs,
    image_size: ImageSizeDefault = 640,
    small_options: Mapping[str, Any] | None = None,
    compare_options: Mapping[str, Any] | None = None,
) -> NeckInfo: ...


def register_neck(
    name: str,
    builder: Callable[..., nn.Module] | None = None,
    *,
    summary: str,
    paper: str,
    knobs: Sequence[str] = (),
    options_from: Callable[..., Any] | None = None,
    rules: Mapping[str, OptionRule] | None = None,
    default_in_specs: InSpecsDefault = resnet50_in_specs,
    image_size: ImageSizeDefault = 640,
    small_options: Mapping[str, Any] | None = None,
    compare_options: Mapping[str, Any] | None = None,
) -> Callable[[_B], _B] | NeckInfo:
    """Register ``builder(in_specs, **options) -> nn.Module`` under ``name``; duplicates raise ``ValueError``.

    As a decorator (``builder`` omitted) it registers the decorated function and returns it unchanged; called with
    a builder it returns the :class:`NeckInfo`. The typed options are read from ``options_from`` (default: the
    builder; give the graph function when the builder forwards ``**options`` to it), with ``rules`` attaching
    choices and ranges (:class:`~necklace.options.OptionRule`). A builder whose signature is only ``**options`` and
    no ``options_from`` gets no typed options (its options are passed through unchecked).

    Example:
        >>> @register_neck("doc_identity", summary="returns its inputs", paper="-", default_in_specs=[(8, 8)])
        ... def doc_identity(in_specs, scale: float = 1.0):
        ...     return nn.Identity()
        >>> [s.describe() for s in neck_info("doc_identity").options], neck_info("doc_identity").in_specs_for()
        (['scale: float = 1.0'], (FeatureSpec(channels=8, stride=8),))
        >>> _ = _REGISTRY.pop("doc_identity")  # (keep the doctest from leaving an entry behind)
    """

    def add(fn: Callable[..., nn.Module]) -> NeckInfo:
        if not isinstance(name, str) or not name or not name.replace("_", "").isalnum() or name.lower() != name:
            raise ValueError(f"neck name {name!r} must be lower-case letters, digits and '_'.")
        if name in _REGISTRY:
            raise ValueError(
                f"a neck named {name!r} is already registered ({_REGISTRY[name].builder}); pick another name."
            )
        if not callable(fn):
            raise TypeError(f"register_neck({name!r}): the builder must be callable, got {type(fn).__name__}.")
        source = options_from if options_from is not None else fn
        options = options_from_signature(source, rules)
        info = NeckInfo(
            name=name,
            builder=fn,
            summary=summary,
            paper=paper,
            knobs=tuple(knobs),
            options=options,
            default_in_specs=default_in_specs,
            image_size=image_size,
            small_options=dict(small_options or {}),
            compare_options=dict(compare_options or {}),
        )
        info.check_options(info.small_options, complete=False)
        info.check_options(info.compare_options, complete=False)
        _REGISTRY[name] = info
        return info

    if builder is not None:
        return add(builder)

    def decorate(fn: _B) -> _B:
        add(fn)
        return fn

    return decorate


def list_necks() -> list[str]:
    """Names of every registered neck, sorted."""
    return sorted(_REGISTRY)


def neck_info(name: str) -> NeckInfo:
    """Registry entry for ``name``; an unknown name lists the known ones and suggests the closest."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown neck {name!r}.{hint} Known necks: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]


def build_neck(name: str, in_specs: Sequence[FeatureSpec | tuple[int, int]], **options: object) -> nn.Module:
    """Build the registered neck ``name`` for a backbone described by ``in_specs``.

    Options are checked against the entry's typed options first: an unknown name raises ``TypeError`` listing the
    valid ones and the closest; a wrong type or a value out of range raises before anything is built.

    Example:
        >>> neck = build_neck("pafpn", [FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)], width=32)
        >>> [s.stride for s in neck.out_specs]
        [8, 16, 32, 64]
        >>> build_neck("fpn", [FeatureSpec(64, 8)], out_channels=256)
        Traceback (most recent call last):
        ...
        TypeError: fpn got an unexpected keyword argument 'out_channels'. Valid options: width, levels, extra, ...
    """
    info = neck_info(name)
    checked = info.check_options(options)
    return info.builder(as_feature_specs(in_specs), **checked)
