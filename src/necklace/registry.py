"""One small registry of necks: ``register_neck`` / ``build_neck`` / ``list_necks`` / ``neck_info``."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from necklace.spec import FeatureSpec, as_feature_specs

__all__ = ["NeckInfo", "build_neck", "list_necks", "neck_info", "register_neck"]


@dataclass(frozen=True)
class NeckInfo:
    """What the registry knows about a neck: its builder and what to show users.

    Example:
        >>> info = neck_info("fpn")
        >>> info.name, info.paper.split(",")[0]
        ('fpn', 'Lin et al.')
    """

    name: str
    builder: Callable[..., nn.Module]
    summary: str
    paper: str
    knobs: tuple[str, ...]


_REGISTRY: dict[str, NeckInfo] = {}


def register_neck(
    name: str, builder: Callable[..., nn.Module], *, summary: str, paper: str, knobs: Sequence[str] = ()
) -> NeckInfo:
    """Register ``builder(in_specs, **options) -> nn.Module`` under ``name``; duplicates raise ``ValueError``."""
    if not name or not name.replace("_", "").isalnum() or name.lower() != name:
        raise ValueError(f"neck name {name!r} must be lower-case letters, digits and '_'.")
    if name in _REGISTRY:
        raise ValueError(f"a neck named {name!r} is already registered ({_REGISTRY[name].builder}); pick another name.")
    info = NeckInfo(name, builder, summary, paper, tuple(knobs))
    _REGISTRY[name] = info
    return info


def _ensure_builtins() -> None:
    if not _REGISTRY:
        import necklace.necks  # noqa: F401  (registers the built-in necks in one place)


def list_necks() -> list[str]:
    """Names of every registered neck, sorted."""
    _ensure_builtins()
    return sorted(_REGISTRY)


def neck_info(name: str) -> NeckInfo:
    """Registry entry for ``name``; an unknown name lists the known ones and suggests the closest."""
    _ensure_builtins()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown neck {name!r}.{hint} Known necks: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]


def build_neck(name: str, in_specs: Sequence[FeatureSpec | tuple[int, int]], **options: object) -> nn.Module:
    """Build the registered neck ``name`` for a backbone described by ``in_specs``.

    Example:
        >>> neck = build_neck("pafpn", [FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)], width=32)
        >>> [s.stride for s in neck.out_specs]
        [8, 16, 32, 64]
    """
    info = neck_info(name)
    return info.builder(as_feature_specs(in_specs), **options)
