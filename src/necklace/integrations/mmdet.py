"""MMDetection 3.x / MMYOLO plug-in: every necklace neck from a config file; mmdet neck checkpoints converted.

In a config (the full guide, with RetinaNet and YOLOv8 configs: ``docs/mmdet.md``)::

    custom_imports = dict(imports=["necklace.integrations.mmdet"], allow_failed_imports=False)
    model = dict(neck=dict(
        _delete_=True, type="necklace.Neck", name="bifpn",  # any name in necklace.list_necks()
        in_channels=[256, 512, 1024, 2048], strides=[4, 8, 16, 32],  # the backbone maps, finest first
        width=256, levels=(3, 7),  # the neck's own options (necklace.neck_info("bifpn").knobs)
        out_channels=256, num_outs=5))  # what the head reads: checked when the neck is built

One type for every neck, chosen by ``name`` (the options are :func:`necklace.build_neck`'s; necks registered later
need nothing more; a misspelt name is answered with the closest match). ``necklace.Neck`` is mmengine's
cross-scope spelling: importing this module adds a registry with scope ``necklace`` as a child of mmengine's root
``MODELS`` (public ``Registry`` / ``register_module``). mmdet's and mmyolo's ``MODELS`` are siblings under that
root, so the name resolves from either scope (a module registered into mmdet's ``MODELS`` would not resolve from
mmyolo's). Nothing of mmdet or mmyolo is imported or patched; importing checks the mmengine / mmdet versions.

Checkpoints of mmdet's own ``FPN`` / ``PAFPN`` / ``NASFPN`` switch to the necklace neck without retraining:
``from_mmdet=<the mmdet neck config>`` builds the equal necklace neck, which loads those checkpoints as they are
(``load_from``), or :func:`convert_checkpoint` rewrites a detector checkpoint once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from necklace import FeatureSpec, build_neck, neck_info
from necklace.convert.mmdet import from_mmdet_fpn, from_mmdet_nasfpn, from_mmdet_pafpn
from necklace.integrations.mmdet_config import (
    NECK_TYPE,
    SCOPE,
    SUPPORTED_VERSIONS,
    _channels,
    _check_outputs,
    _in_specs,
    _map_channels,
    _mmdet_layout,
    _neck_names,
    _options_from_mmdet,
    _strides,
    check_versions,
)

__all__ = [
    "NECK_TYPE",
    "SCOPE",
    "SUPPORTED_VERSIONS",
    "NecklaceNeck",
    "check_head",
    "check_versions",
    "convert_checkpoint",
    "register",
]

check_versions()

from mmengine.model import BaseModule  # noqa: E402  (after the version check, which names what to install)
from mmengine.registry import MODELS as _ROOT_MODELS  # noqa: E402
from mmengine.registry import Registry  # noqa: E402


# --------------------------------------------------------------------------- the neck
class NecklaceNeck(BaseModule):
    """Any necklace neck as an MMDetection / MMYOLO neck (config ``type="necklace.Neck"``).

    Args:
        name: a registered necklace neck (:func:`necklace.list_necks`); ``None`` with ``from_mmdet``.
        in_channels: channels of the backbone maps the neck receives, finest first (all of them: a neck reads
            the levels its options select, e.g. ``levels=(3, 7)`` skips a stride-4 map).
        strides: the stride of each of those maps (mmdet necks never get them; necklace needs the levels).
        out_channels: what the head reads: one int (every level) or one per output; checked, not applied
            (set the neck's own width option).
        num_outs: the number of maps the head reads; checked.
        out_strides: the strides the head's anchors / points are laid out for; checked.
        from_mmdet: an mmdet ``FPN`` / ``PAFPN`` / ``NASFPN`` config dict: build the necklace neck that computes
            the same function (instead of ``name`` and ``options``); that neck loads the mmdet neck's
            checkpoints as they are (their ``lateral_convs`` / ``fpn_convs`` / ... keys are converted on load).
        init_cfg: mmengine initialisation config; ``None`` keeps necklace's own initialisation.
        **options: the neck's options, as :func:`necklace.build_neck` takes them.

    ``forward`` takes the backbone's tuple of maps and returns a tuple, finest first. The built neck is
    ``self.necklace`` (state dict keys ``necklace.*``) and its levels are ``in_specs`` / ``out_specs``.

    Example:
        >>> neck = NecklaceNeck("fpn", in_channels=[64, 128, 256], strides=[8, 16, 32], width=32,
        ...                     out_channels=32, num_outs=4)
        >>> outs = neck((torch.randn(1, 64, 32, 32), torch.randn(1, 128, 16, 16), torch.randn(1, 256, 8, 8)))
        >>> type(outs).__name__, [tuple(o.shape) for o in outs]
        ('tuple', [(1, 32, 32, 32), (1, 32, 16, 16), (1, 32, 8, 8), (1, 32, 4, 4)])
        >>> NecklaceNeck("fpn", in_channels=[64, 128, 256], strides=[8, 16, 32], width=32, num_outs=5)
        Traceback (most recent call last):
        ...
        ValueError: necklace.Neck(name='fpn'): the neck gives 4 maps (strides [8, 16, 32, 64]) but num_outs=5 ...
    """

    def __init__(
        self,
        name: str | None = None,
        in_channels: Sequence[int] | None = None,
        strides: Sequence[int] | None = None,
        out_channels: int | Sequence[int] | None = None,
        num_outs: int | None = None,
        out_strides: Sequence[int] | None = None,
        from_mmdet: Mapping[str, Any] | None = None,
        init_cfg: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if from_mmdet is not None:
            name, options, in_channels = _options_from_mmdet(from_mmdet, name, options, in_channels, strides)
            out_channels = from_mmdet["out_channels"] if out_channels is None else out_channels
            num_outs = from_mmdet.get("num_outs") if num_outs is None else num_outs
        if name is None:
            raise TypeError(
                f"{NECK_TYPE} needs name= (one of {', '.join(_neck_names())}) or from_mmdet=<an mmdet FPN / PAFPN / "
                "NASFPN config>."
            )
        if not isinstance(name, str):
            raise TypeError(f"{NECK_TYPE}: name must be a neck name (str), got {name!r}.")
        self.neck_name = name
        self.owner = f"{NECK_TYPE}(name={name!r})"
        specs = _in_specs(self.owner, in_channels, strides)
        try:
            neck = build_neck(name, specs, **options)
        except (TypeError, ValueError) as e:
            knobs = "; its options: " + ", ".join(neck_info(name).knobs) if name in _neck_names() else ""
            raise type(e)(
                f"{self.owner} with in_channels {_channels(specs)}, strides {_strides(specs)}: {e}{knobs}"
            ) from e
        if not hasattr(neck, "out_specs") or not hasattr(neck, "in_specs"):
            raise TypeError(f"{self.owner}: the neck built is a {type(neck).__name__} without in_specs / out_specs.")
        self.necklace: nn.Module = neck
        self.in_specs: tuple[FeatureSpec, ...] = tuple(cast(Any, neck).in_specs)
        self.out_specs: tuple[FeatureSpec, ...] = tuple(cast(Any, neck).out_specs)
        _check_outputs(self.owner, self.out_specs, out_channels, num_outs, out_strides)
        self.register_load_state_dict_pre_hook(_convert_mmdet_keys_on_load)

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        # inputs: one (N, C_i, H_i, W_i) map per in_spec, finest first -> one (N, C_o, H_o, W_o) per out_spec
        if isinstance(inputs, Tensor) or [_map_channels(x) for x in inputs] != _channels(self.in_specs):
            got = (
                f"one tensor of shape {tuple(inputs.shape)}"
                if isinstance(inputs, Tensor)
                else f"{len(inputs)} maps with channels {[_map_channels(x) for x in inputs]}"
            )
            raise ValueError(
                f"{self.owner} got {got} from the backbone; it was built for {len(self.in_specs)} maps with "
                f"in_channels {_channels(self.in_specs)} and strides {_strides(self.in_specs)}. Set the backbone's "
                "out_indices to give those maps, or in_channels / strides to what the backbone gives."
            )
        return tuple(self.necklace(list(inputs)))

    def extra_repr(self) -> str:
        return f"name={self.neck_name!r}, in_specs={list(self.in_specs)}, out_specs={list(self.out_specs)}"


# --------------------------------------------------------------------------- checkpoints
_CONVERTERS: dict[str, Callable[..., dict[str, Tensor]]] = {"FPN": from_mmdet_fpn, "PAFPN": from_mmdet_pafpn}
_CONVERTERS["NASFPN"] = from_mmdet_nasfpn


def _rewrite(state: Mapping[str, Any], prefix: str, neck: NecklaceNeck, kind: str, where: str = "") -> dict[str, Any]:
    """``state`` with the mmdet ``kind`` neck keys under ``prefix`` replaced by ``neck``'s ``prefix + necklace.*``."""
    try:
        mapped = _CONVERTERS[kind](state, neck.necklace, prefix=prefix)
    except ValueError as e:
        raise ValueError(
            f"the checkpoint's neck{where} (keys {prefix}*) is an mmdet {kind}, which does not map onto "
            f"{neck.owner}: {e} Build the neck with from_mmdet=<that {kind} config> to get the equal necklace neck."
        ) from e
    out = {k: v for k, v in state.items() if not k.startswith(prefix)}
    out.update({f"{prefix}necklace.{k}": v for k, v in mapped.items()})
    return out


def _convert_mmdet_keys_on_load(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: object) -> None:
    """Load-state-dict pre-hook (``nn.Module.register_load_state_dict_pre_hook``; the metadata, strict flag and
    key lists it also gets are not needed): an mmdet FPN / PAFPN / NASFPN's keys under ``prefix`` become
    necklace keys, in place, before the neck's modules read theirs."""
    kind = _mmdet_layout(state_dict, prefix)
    if kind is None:
        return
    converted = _rewrite(state_dict, prefix, cast(NecklaceNeck, module), kind)
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]
    state_dict.update({k: v for k, v in converted.items() if k.startswith(prefix)})


def _as_neck(neck: NecklaceNeck | Mapping[str, Any]) -> NecklaceNeck:
    if isinstance(neck, NecklaceNeck):
        return neck
    if isinstance(neck, Mapping):
        cfg = dict(neck)
        kind = cfg.pop("type", NECK_TYPE)
        cfg.pop("_delete_", None)
        if kind != NECK_TYPE:
            raise ValueError(f"neck config type {kind!r}: convert_checkpoint builds a {NECK_TYPE!r} neck config.")
        return NecklaceNeck(**cfg)
    raise TypeError(
        f"neck must be a NecklaceNeck or its config dict (type={NECK_TYPE!r}, ...), got {type(neck).__name__}."
    )


def _load(path: Path, weights_only: bool) -> Mapping[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist (or is not a file).")
    try:
        data = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # truncated zip, not a torch file, objects weights_only refuses
        hint = ""
        if weights_only and "weights_only" in str(e).lower():
            hint = (
                " mmengine Runner checkpoints also pickle their message hub; if you trust the file, pass "
                "weights_only=False."
            )
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {type(e).__name__}: {str(e)[:300]}{hint}") from e
    if not isinstance(data, Mapping):
        raise ValueError(f"{str(path)!r} holds a {type(data).__name__}, not a checkpoint dict or state dict.")
    return data


def _save_atomic(obj: Mapping[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then ``os.replace`` (atomic)."""
    if path.is_dir():
        raise ValueError(f"out {str(path)!r} is a directory; give the checkpoint file's path.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(dict(obj), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def convert_checkpoint(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
    neck: NecklaceNeck | Mapping[str, Any],
    out: str | os.PathLike[str] | None = None,
    *,
    prefix: str = "neck.",
    weights_only: bool = True,
) -> dict[str, Any]:
    """Rewrite a detector checkpoint trained with mmdet's ``FPN`` / ``PAFPN`` / ``NASFPN`` for the same detector
    with ``neck`` (a :class:`NecklaceNeck` or its config dict, usually ``from_mmdet=<the old neck config>``).

    ``checkpoint`` is a file, an mmengine checkpoint dict (``{"state_dict": ..., "meta": ...}``) or a bare state
    dict; the result has the same form, every key outside ``prefix`` unchanged. The optimizer state is dropped
    (its parameters were the old neck's): load the result with ``load_from``, not ``resume``. ``out`` writes it
    atomically. ``weights_only=False`` lets ``torch.load`` unpickle more than tensors (only for trusted files).
    Raises ``FileNotFoundError`` / ``ValueError`` (naming the path) for missing or unreadable files and
    ``ValueError`` when the checkpoint's neck does not map onto ``neck``.

    Example:
        >>> old = dict(type="FPN", in_channels=[16, 32], out_channels=8, num_outs=3)
        >>> cfg = dict(type="necklace.Neck", from_mmdet=old, strides=[8, 16])
        >>> convs = {"lateral_convs.0": (8, 16, 1, 1), "lateral_convs.1": (8, 32, 1, 1), "fpn_convs.0": (8, 8, 3, 3),
        ...          "fpn_convs.1": (8, 8, 3, 3)}  # an mmdet FPN's state dict inside a detector's
        >>> sd = {f"neck.{m}.conv.{p}": torch.zeros(s if p == "weight" else s[:1]) for m, s in convs.items()
        ...       for p in ("weight", "bias")} | {"bbox_head.w": torch.ones(1)}
        >>> ckpt = convert_checkpoint({"state_dict": sd, "meta": {"epoch": 12}}, cfg)
        >>> sorted(ckpt["state_dict"])[:2], ckpt["meta"]["epoch"]
        (['bbox_head.w', 'neck.necklace.nodes.L3.edges.0.align.conv.bias'], 12)

    In a script (paths are examples)::

        from mmengine.config import Config
        from necklace.integrations.mmdet import convert_checkpoint
        cfg = Config.fromfile("retinanet_r50_necklace.py")  # neck=dict(type="necklace.Neck", from_mmdet=...)
        convert_checkpoint("retinanet_r50_fpn_1x_coco.pth", cfg.model.neck, out="retinanet_r50_necklace.pth")
    """
    target = _as_neck(neck)
    path = Path(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else None
    if path is not None:
        data = _load(path, weights_only)
    elif isinstance(checkpoint, Mapping):
        data = checkpoint
    else:
        raise TypeError(
            f"checkpoint must be a path, a checkpoint dict or a state dict, got {type(checkpoint).__name__}."
        )
    where = f" in {str(path)!r}" if path is not None else ""
    wrapped = isinstance(data.get("state_dict"), Mapping)
    state = cast(Mapping[str, Any], data["state_dict"] if wrapped else data)
    if not any(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"the checkpoint{where} holds no tensors (keys {list(state)[:5]}); expected a state dict.")
    kind = _mmdet_layout(state, prefix)
    if kind is None:
        under = sorted({k[len(prefix) :].split(".", 1)[0] for k in state if k.startswith(prefix)})
        raise ValueError(
            f"the checkpoint{where} has no mmdet FPN / PAFPN / NASFPN keys under {prefix!r} (found modules "
            f"{under or 'none'}; first keys {list(state)[:3]}). Pass prefix= where the neck lives (e.g. 'neck.', "
            "or 'module.neck.' for a DDP checkpoint); already-converted checkpoints (neck.necklace.*) need nothing."
        )
    new_state = _rewrite(state, prefix, target, kind, where)
    if wrapped:
        result = {k: v for k, v in data.items() if k != "optimizer"}
        result["state_dict"] = new_state
        meta = result.get("meta")
        if meta is None or isinstance(meta, Mapping):  # note the conversion where mmengine keeps its notes
            note = {"converted_from": f"mmdet {kind}", "neck": target.neck_name, "prefix": prefix}
            result["meta"] = {**(meta or {}), "necklace": note}
    else:
        result = new_state
    if out is not None:
        _save_atomic(result, Path(out))
    return result


# --------------------------------------------------------------------------- head check
def _head_levels(head: nn.Module) -> tuple[list[int] | None, int | list[int] | None]:
    """``(strides, in_channels)`` an mmdet / mmyolo dense head reads, where it says."""
    gen = getattr(head, "prior_generator", None)
    strides = None
    if gen is not None and hasattr(gen, "strides"):
        strides = [int(s[0]) if isinstance(s, (tuple, list)) else int(s) for s in gen.strides]
    module = getattr(head, "head_module", head)  # mmyolo keeps the convs in head_module
    channels = getattr(module, "in_channels", None)
    if isinstance(channels, (list, tuple)):
        channels = [int(c) for c in channels]
    return strides, channels


def check_head(detector: nn.Module) -> None:
    """Compare a built mmdet / mmyolo detector's :class:`NecklaceNeck` with its heads: the strides of the
    head's anchors / points and its input channels; ``ValueError`` naming both when they disagree.

    Checks ``bbox_head`` and ``rpn_head`` (dense heads) and ``roi_head.bbox_roi_extractor`` (its strides must
    be among the neck's). Heads that do not say their strides or channels are skipped.

    Example:
        >>> class Head(nn.Module):
        ...     in_channels = 32
        >>> det = nn.Module()
        >>> det.neck = NecklaceNeck("fpn", in_channels=[64, 128], strides=[8, 16], width=16)
        >>> det.bbox_head = Head()
        >>> check_head(det)
        Traceback (most recent call last):
        ...
        ValueError: bbox_head reads maps with 32 channels but ... gives channels [16, 16, 16]. Set ...
    """
    neck = getattr(detector, "neck", None)
    if not isinstance(neck, NecklaceNeck):
        raise TypeError(f"check_head expects a detector whose .neck is a {NECK_TYPE} neck, got {type(neck).__name__}.")
    strides, channels = _strides(neck.out_specs), _channels(neck.out_specs)
    for attr in ("bbox_head", "rpn_head"):
        head = getattr(detector, attr, None)
        if head is None:
            continue
        h_strides, h_channels = _head_levels(head)
        if h_strides is not None and h_strides != strides:
            raise ValueError(
                f"{attr} lays out {len(h_strides)} levels at strides {h_strides} but {neck.owner} gives "
                f"{len(strides)} maps at strides {strides}. Make the neck's levels and the head's strides agree."
            )
        want = [h_channels] * len(channels) if isinstance(h_channels, int) else h_channels
        if want is not None and want != channels:
            raise ValueError(
                f"{attr} reads maps with {h_channels} channels but {neck.owner} gives channels {channels}. Set the "
                "neck's width (or preset) or the head's in_channels to agree."
            )
    extractor = getattr(getattr(detector, "roi_head", None), "bbox_roi_extractor", None)
    roi_strides = getattr(extractor, "featmap_strides", None)
    if roi_strides is not None and not set(roi_strides) <= set(strides):
        raise ValueError(
            f"roi_head.bbox_roi_extractor pools from strides {list(roi_strides)} but {neck.owner} gives strides "
            f"{strides}. Make the neck's levels cover the extractor's featmap_strides."
        )


# --------------------------------------------------------------------------- registration
def register() -> Registry:
    """Register :class:`NecklaceNeck` as ``necklace.Neck`` (idempotent); return the ``necklace`` registry.

    Runs on import. The registry is a child of mmengine's root ``MODELS`` with scope ``necklace`` (created once,
    found again through the root's public ``children``); re-importing (``importlib.reload``) replaces the entry
    with the reloaded class, and a different class already registered under that name raises ``ValueError``.

    Example:
        >>> register() is register()
        True
        >>> _ROOT_MODELS.get("necklace.Neck") is NecklaceNeck
        True
    """
    registry = _ROOT_MODELS.children.get(SCOPE)
    if registry is None:
        registry = Registry("model", parent=_ROOT_MODELS, scope=SCOPE)
    current = registry.module_dict.get("Neck")
    if current is not None and current is not NecklaceNeck:
        ours = (NecklaceNeck.__module__, NecklaceNeck.__qualname__)
        if (current.__module__, current.__qualname__) != ours:
            raise ValueError(
                f"{NECK_TYPE} is already registered to {current.__module__}.{current.__qualname__}; something "
                f"else registered into mmengine's {SCOPE!r} scope."
            )
    registry.register_module(name="Neck", module=NecklaceNeck, force=current is not None)
    return cast(Registry, registry)


register()
