"""What the MMDetection plug-in (:mod:`necklace.integrations.mmdet`) reads from MMDetection: the supported
mmengine / mmdet versions, the backbone maps a config describes (``in_channels`` / ``strides``), the necklace neck
and options equal to an mmdet ``FPN`` / ``PAFPN`` / ``NASFPN`` config, the outputs a head is configured for, and
which mmdet neck wrote a checkpoint's keys. Plain functions: nothing here imports mmengine or registers anything.

Example:
    >>> [s.stride for s in _in_specs("necklace.Neck", [64, 128], [8, 16])]
    [8, 16]
    >>> _mmdet_layout({"neck.lateral_convs.0.conv.weight": 0}, "neck.")
    'FPN'
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

from torch import Tensor

from necklace import FeatureSpec
from necklace.convert.mmdet import mmdet_neck_options

__all__ = ["NECK_TYPE", "SCOPE", "SUPPORTED_VERSIONS", "check_versions"]

#: the mmengine registry scope the plug-in adds, and the ``type`` a config names
SCOPE = "necklace"
NECK_TYPE = f"{SCOPE}.Neck"
#: the mmdet necks whose configs (and checkpoints) map onto necklace necks
_MMDET_NECKS = ("FPN", "PAFPN", "NASFPN")

#: package -> (minimum, maximum exclusive) version this adapter is tested with
SUPPORTED_VERSIONS: dict[str, tuple[str, str]] = {"mmengine": ("0.7.1", "1.0.0"), "mmdet": ("3.0.0", "4.0.0")}
_INSTALL = (
    "Install MMDetection 3.x the OpenMMLab way (pip install -U openmim; mim install mmengine "
    '"mmcv>=2.0.0rc4,<2.2.0" "mmdet>=3.0,<4.0"), or pip install "necklace[mmdet]" plus an mmcv built for your torch.'
)


def _version_tuple(text: str) -> tuple[int, int, int]:
    """``'3.3.0'`` / ``'2.0.0rc4'`` -> ``(3, 3, 0)`` / ``(2, 0, 0)``."""
    m = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", text)
    if m is None:
        raise ValueError(f"cannot read the version {text!r}; expected e.g. '3.3.0'.")
    major, minor, patch = (int(g or 0) for g in m.groups())
    return major, minor, patch


def check_versions() -> dict[str, str]:
    """The installed mmengine / mmdet versions; ``ImportError`` naming the supported range when one is missing
    or outside :data:`SUPPORTED_VERSIONS`. Runs when this module is imported (before mmengine is).

    Example:
        >>> sorted(check_versions())
        ['mmdet', 'mmengine']
    """
    found: dict[str, str] = {}
    for pkg, (lo, hi) in SUPPORTED_VERSIONS.items():
        try:
            version = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            raise ImportError(
                f"necklace.integrations.mmdet needs {pkg}>={lo},<{hi}, which is not installed. {_INSTALL}"
            ) from None
        if not _version_tuple(lo) <= _version_tuple(version) < _version_tuple(hi):
            raise ImportError(
                f"necklace.integrations.mmdet supports {pkg}>={lo},<{hi}; {pkg} {version} is installed. "
                f"Install a supported {pkg}, or use necklace.build_neck and hand the model to your trainer."
            )
        found[pkg] = version
    return found


def _neck_names() -> list[str]:
    from necklace import list_necks

    return list_necks()


def _map_channels(x: object) -> int | str:
    return int(x.shape[1]) if isinstance(x, Tensor) and x.dim() == 4 else f"{type(x).__name__}?"


def _channels(specs: Sequence[FeatureSpec]) -> list[int]:
    return [s.channels for s in specs]


def _strides(specs: Sequence[FeatureSpec]) -> list[int]:
    return [s.stride for s in specs]


def _int_list(owner: str, what: str, value: object, example: str) -> list[int]:
    ok = isinstance(value, Sequence) and not isinstance(value, str)
    items = list(cast(Sequence[object], value)) if ok else []
    if not ok or not items or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in items):
        raise TypeError(f"{owner}: {what} must be a non-empty list of positive ints, got {value!r}; e.g. {example}.")
    return cast(list[int], items)


def _in_specs(owner: str, in_channels: object, strides: object) -> tuple[FeatureSpec, ...]:
    example = "in_channels=[256, 512, 1024, 2048], strides=[4, 8, 16, 32] for a ResNet with out_indices=(0, 1, 2, 3)"
    if in_channels is None or strides is None:
        missing = [n for n, v in (("in_channels", in_channels), ("strides", strides)) if v is None]
        raise TypeError(f"{owner} needs {' and '.join(missing)}: the backbone maps it receives, e.g. {example}.")
    channels = _int_list(owner, "in_channels", in_channels, example)
    stride_list = _int_list(owner, "strides", strides, example)
    if len(channels) != len(stride_list):
        raise ValueError(
            f"{owner}: in_channels {channels} has {len(channels)} entries but strides {stride_list} has "
            f"{len(stride_list)}; give one stride per backbone map, e.g. {example}."
        )
    try:
        return tuple(FeatureSpec(c, s) for c, s in zip(channels, stride_list, strict=True))
    except ValueError as e:
        raise ValueError(f"{owner}: strides {stride_list}: {e}") from e


def _check_outputs(
    owner: str,
    out_specs: Sequence[FeatureSpec],
    out_channels: int | Sequence[int] | None,
    num_outs: int | None,
    out_strides: Sequence[int] | None,
) -> None:
    """Compare the neck's ``out_specs`` with what the head is configured for; ``ValueError`` names both."""
    have = f"the neck gives {len(out_specs)} maps (strides {_strides(out_specs)}, channels {_channels(out_specs)})"
    fix = "Change the neck's options (levels, width, preset, ...) or the head's configuration to agree."
    if num_outs is not None and int(num_outs) != len(out_specs):
        raise ValueError(
            f"{owner}: the neck gives {len(out_specs)} maps (strides {_strides(out_specs)}) but num_outs={num_outs} "
            f"(what the head reads). {fix} For fpn / pafpn / bifpn, levels=(lo, hi) gives hi - lo + 1 maps."
        )
    if out_channels is not None:
        if isinstance(out_channels, int):
            want = [out_channels] * len(out_specs)
        else:
            want = _int_list(owner, "out_channels", out_channels, "out_channels=256 or [64, 128, 256]")
        if want != _channels(out_specs):
            raise ValueError(
                f"{owner}: {have} but out_channels={out_channels!r} (what the head reads, e.g. its in_channels). "
                f"{fix} The width option sets the channels of fpn / pafpn / bifpn / nasfpn."
            )
    if out_strides is not None:
        want_strides = _int_list(owner, "out_strides", out_strides, "out_strides=[8, 16, 32, 64, 128]")
        if want_strides != _strides(out_specs):
            raise ValueError(
                f"{owner}: {have} but out_strides={want_strides} (the head's anchor / point strides). {fix}"
            )


# --------------------------------------------------------------------------- from an mmdet neck config
def _mmdet_type(cfg: Mapping[str, Any]) -> str:
    kind = str(cfg.get("type", "FPN"))
    kind = kind.split(".", 1)[1] if kind.startswith("mmdet.") else kind
    if kind not in _MMDET_NECKS:
        raise ValueError(
            f"{NECK_TYPE}: from_mmdet type {cfg.get('type')!r} has no necklace equivalent here; supported: "
            f"{', '.join(_MMDET_NECKS)} (or build any necklace neck with name=...)."
        )
    return kind


def _nasfpn_options(cfg: Mapping[str, Any], specs: Sequence[FeatureSpec]) -> dict[str, Any]:
    """``nasfpn`` options equal to mmdet's ``NASFPN(**cfg)`` on the maps ``specs``."""
    start, end = int(cfg.get("start_level", 0)), int(cfg.get("end_level", -1))
    if end not in (-1, len(specs) - 1) or not 0 <= start < len(specs):
        raise ValueError(
            f"{NECK_TYPE}: mmdet NASFPN start_level={start}, end_level={end} on {len(specs)} maps: necklace's "
            "nasfpn reads every map from start_level to the coarsest (drop the maps above end_level instead)."
        )
    if int(cfg.get("num_outs", 5)) != 5 or cfg.get("add_extra_convs", False):
        raise ValueError(
            f"{NECK_TYPE}: mmdet NASFPN num_outs={cfg.get('num_outs')}, add_extra_convs="
            f"{cfg.get('add_extra_convs', False)}: necklace's nasfpn has 5 levels from max-pool extra levels."
        )
    norm_cfg = cfg.get("norm_cfg")
    if norm_cfg is not None and norm_cfg.get("type") not in ("BN", "BN2d", "SyncBN"):
        raise ValueError(f"{NECK_TYPE}: mmdet NASFPN norm_cfg {dict(norm_cfg)!r}: supported are BN, SyncBN or None.")
    lo = specs[start].level
    return {
        "width": int(cfg["out_channels"]),
        "stack_times": int(cfg["stack_times"]),
        "levels": (lo, lo + 4),
        "norm": None if norm_cfg is None else "bn",
    }


def _options_from_mmdet(
    cfg: Mapping[str, Any],
    name: str | None,
    options: Mapping[str, Any],
    in_channels: Sequence[int] | None,
    strides: Sequence[int] | None,
) -> tuple[str, dict[str, Any], Sequence[int]]:
    """``(name, options, in_channels)`` of the necklace neck equal to the mmdet neck config ``cfg``."""
    if not isinstance(cfg, Mapping):
        raise TypeError(f"{NECK_TYPE}: from_mmdet must be an mmdet neck config dict, got {type(cfg).__name__}.")
    if options:
        raise ValueError(
            f"{NECK_TYPE}: from_mmdet sets the neck's options itself; got also {sorted(options)}. Give either "
            "from_mmdet=<mmdet config> or name=... with options."
        )
    kind = _mmdet_type(cfg)
    missing = [
        k for k in ("in_channels", "out_channels") + (("stack_times",) if kind == "NASFPN" else ()) if k not in cfg
    ]
    if missing:
        raise ValueError(f"{NECK_TYPE}: from_mmdet {kind} config lacks {missing}.")
    channels = list(cfg["in_channels"])
    if in_channels is not None and list(in_channels) != channels:
        raise ValueError(
            f"{NECK_TYPE}: in_channels {list(in_channels)} differ from from_mmdet's in_channels {channels}; "
            "leave in_channels out (from_mmdet gives it) or make them equal."
        )
    specs = _in_specs(f"{NECK_TYPE}(from_mmdet={kind})", channels, strides)
    mm = {k: v for k, v in cfg.items() if k not in ("init_cfg",)}
    mm["type"] = kind
    if kind == "NASFPN":
        neck, opts = "nasfpn", _nasfpn_options(mm, specs)
    else:
        neck, opts = mmdet_neck_options(mm, specs)
    if name is not None and name != neck:
        raise ValueError(f"{NECK_TYPE}: an mmdet {kind} converts to necklace {neck!r}, but name={name!r}.")
    return neck, opts, channels


def _mmdet_layout(state: Mapping[str, Any], prefix: str) -> str | None:
    """Which mmdet neck wrote the keys under ``prefix`` (``None``: none, or already necklace keys)."""
    roots = {k[len(prefix) :].split(".", 1)[0] for k in state if k.startswith(prefix)}
    if "necklace" in roots:
        return None
    if "fpn_stages" in roots:
        return "NASFPN"
    if "downsample_convs" in roots or "pafpn_convs" in roots:
        return "PAFPN"
    if "lateral_convs" in roots:
        return "FPN"
    return None
