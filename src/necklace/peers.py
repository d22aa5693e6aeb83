"""necklace necks vs the peers' necks: same configuration, same weights, equal outputs, interleaved timing.

:func:`compare` builds a peer library's neck with random weights (:func:`randomize`), the necklace neck with
the options that reproduce it, loaded with the peer's weights through :mod:`necklace.convert` (the ultralytics
neck is mapped key by key by :func:`ultralytics_to_necklace`), checks that both give the same outputs on random
backbone maps, then times both in this process, *interleaved* (:func:`necklace.bench.interleaved`: each round
runs each neck once, the first one alternating), and reports the median of the per-round ratios
``t_necklace / t_peer`` (< 1: necklace is faster), MACs and achieved GMAC/s of both.

Supported pairs (``necklace bench NAME --vs PEER`` on the command line), with their default inputs:

- ``fpn`` vs torchvision ``FeaturePyramidNetwork``: ResNet-50 C3-C5 inputs, 640x640, option ``width`` (256);
- ``fpn`` / ``pafpn`` vs mmdet ``FPN`` / ``PAFPN``: the same;
- ``nasfpn`` vs mmdet ``NASFPN`` (RetinaNet config, BN): ResNet-50 C2-C5 (C2 unused), 640x640 (sizes divisible by
  128), options ``width`` (256), ``stack_times`` (7);
- ``bifpn`` vs efficientdet-pytorch ``BiFpn`` (``tf_efficientdet_<preset>``): EfficientNet inputs of the preset,
  its image size (d0: B0, 512x512), option ``preset`` (d0);
- ``yolo_pafpn`` vs ultralytics YOLOv8 layers 10-21 (:class:`UltralyticsNeck`): the preset's P3-P5 (n: 64/128/256),
  640x640 (sizes divisible by 32), option ``preset`` (n);
- ``yolo11_pafpn`` vs ultralytics YOLO11 layers 11-22: the preset's P3-P5 (n: 128/128/256), 640x640 (sizes
  divisible by 32), option ``preset`` (n);
- ``rep_pafpn`` vs mmyolo ``YOLOv6RepPAFPN`` (its ``yolov6_<preset>`` config): the preset's P3-P5 (n:
  64/128/256), 640x640 (sizes divisible by 32), option ``preset`` (n or s).

The peers come with the extras: ``pip install -e '.[parity]'`` (effdet, ultralytics) and
``pip install -e '.[parity-mmdet]'`` then ``pip install --no-deps mmdet==3.3.0 mmyolo==0.6.0`` (mmdet, mmyolo on
mmcv-lite: :func:`import_mmdet_necks` installs a placeholder for mmcv's compiled ops, which no neck calls).

The lower-level pieces (:class:`Pair`, the ``*_pair`` builders, :func:`parity`, :func:`deploy_necklace`,
:func:`deploy_peer`) are what ``benchmarks/vs_peers.py`` runs its configs with.

Example:
    >>> r = compare("fpn", "torchvision", image_size=(64, 64), options={"width": 32}, repeats=2, warmup=0)
    >>> r.peer_module, r.equal, r.max_abs_diff <= r.tolerance
    ('torchvision FeaturePyramidNetwork', True, True)
    >>> r.macs_necklace == r.macs_peer > 0, r.params_necklace == r.params_peer, r.ratio > 0
    (True, True, True)
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import sys
import types
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn

from necklace.bench import (
    RESNET50_C3_C5,
    Progress,
    _check_count,
    _check_image_size,
    _num_threads,
    count_call_flops,
    count_params,
    default_image_size,
    default_in_specs,
    interleaved,
    random_features,
    ratio_stats,
    stats_ms,
)
from necklace.registry import build_neck
from necklace.spec import FeatureSpec, as_feature_specs, validate_in_specs

__all__ = [
    "DEPLOY_TOL",
    "MMYOLO_FACTORS",
    "NO_PEER_DEPLOY",
    "PEERS",
    "TOL",
    "YOLO_LAYER_MAP",
    "Pair",
    "PeerComparison",
    "UltralyticsNeck",
    "bind",
    "calibrate_bn",
    "check_divisible",
    "check_pair",
    "compare",
    "deploy_necklace",
    "deploy_peer",
    "effdet_bifpn_pair",
    "equality",
    "eval_call",
    "import_mmdet_necks",
    "import_mmyolo_necks",
    "install_mmcv_ext_shim",
    "max_abs_diff",
    "mmdet_nasfpn_pair",
    "mmdet_pair",
    "mmyolo_in_specs",
    "mmyolo_reppafpn_pair",
    "mmyolo_switch_to_deploy",
    "parity",
    "randomize",
    "supported_pairs",
    "torchvision_fpn_pair",
    "ultralytics_fuse",
    "ultralytics_to_necklace",
    "ultralytics_yolov8_pair",
]

#: relative tolerance of the equality check: max |necklace - peer| <= TOL * max(1, max |peer|)
TOL = 1e-4
#: the same for a *deployed* necklace neck against the eager peer: Conv+BN folding changes the rounding, and
#: deep stacks with random weights amplify it (NAS-FPN, 7 cells: outputs ~2e6, relative difference ~2e-4)
DEPLOY_TOL = 1e-3
#: what is said for a peer without a deployment form
NO_PEER_DEPLOY = "peer has no deploy form: compared with its eager form"
#: ResNet-50 C2-C5 (NAS-FPN's RetinaNet config gives C2 too, unused with ``start_level`` 1)
R50_C2 = (FeatureSpec(256, 4), *RESNET50_C3_C5)
#: peer -> how to install it
PEERS: dict[str, str] = {
    "torchvision": "pip install torchvision (a dependency of necklace)",
    "mmdet": "pip install -e '.[parity-mmdet]' && pip install --no-deps mmdet==3.3.0",
    "effdet": "pip install -e '.[parity]'",
    "ultralytics": "pip install -e '.[parity]'",
    "mmyolo": "pip install -e '.[parity-mmdet]' && pip install --no-deps mmdet==3.3.0 mmyolo==0.6.0",
}
#: (image-size divisor, why) of the peers that cannot match necklace on other sizes
MMYOLO_DIVISIBLE = (32, "mmyolo upsamples x2 then concatenates")
ULTRALYTICS_DIVISIBLE = (32, "ultralytics upsamples x2 then concatenates")
NASFPN_DIVISIBLE = (128, "mmdet's NASFPN floors odd P6/P7 sizes, necklace ceils them")

#: ``feats -> outputs``
Call = Callable[[list[Tensor]], list[Tensor]]
#: ``(peer module, feats) -> outputs``: how a peer's neck is called
PeerCall = Callable[[nn.Module, list[Tensor]], list[Tensor]]
M = TypeVar("M", bound=nn.Module)


# ----------------------------------------------------------------------------------------------- pairs
@dataclass(frozen=True)
class Pair:
    """One comparison: the necklace neck and a peer's neck holding the same weights.

    ``call(peer_module, feats)`` runs the peer and returns its outputs as a list; ``weights`` says how the
    weights were carried over; ``skipped`` (the other fields then ``None``) says why the peer could not be
    built (not importable). ``peer_deploy`` turns a copy of ``peer_module`` into the peer's own deployment
    form (``None``: the peer has none), ``peer_deploy_what`` describes it.

    Example:
        >>> pair = torchvision_fpn_pair([FeatureSpec(8, 8), FeatureSpec(16, 16)], width=8)
        >>> pair.weights, pair.skipped, pair.peer_deploy is None
        ('necklace.convert.fpn_from_torchvision', None, True)
        >>> eq = parity(pair, [torch.randn(1, 8, 6, 6), torch.randn(1, 16, 3, 3)])
        >>> eq["equal"], eq["out_shapes"]
        (True, [[1, 8, 6, 6], [1, 8, 3, 3]])
    """

    peer: str
    necklace: nn.Module | None = None
    peer_module: nn.Module | None = None
    call: PeerCall | None = None
    weights: str = ""
    skipped: str | None = None
    peer_deploy: Callable[[nn.Module], nn.Module] | None = None
    peer_deploy_what: str = ""


def randomize(module: M, seed: int = 0) -> M:
    """Random weights everywhere: He-scaled convs, non-zero biases, non-trivial BN affine and running stats,
    positive unequal fusion weights (effdet ``edge_weights``). Returns the module in eval mode.

    Example:
        >>> bn = randomize(nn.Sequential(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4)))[1]
        >>> bool(bn.running_var.min() >= 0.5), bn.training
        (True, False)
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("edge_weights"):
                p.copy_(torch.rand(p.shape, generator=g) * 1.5 + 0.25)
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                n = m.weight.shape[0]
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                if isinstance(m, nn.BatchNorm2d):
                    assert m.running_mean is not None and m.running_var is not None
                    m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    module.eval()  # not chained: mmyolo's necks override train() and return None
    return module


def calibrate_bn(module: M, call: Callable[[], object]) -> M:
    """Set every BatchNorm's running statistics to the batch statistics of one ``call()`` in train mode.

    Like a trained network's BN, each layer then normalises what actually reaches it, so a deep random stack
    (NAS-FPN: 7 cells) keeps its activations near unit scale instead of growing ~7x per cell (to ~2e6 with
    :func:`randomize` alone, where fp32 rounding alone reaches 1e-4 of the output). Affine parameters are
    kept; returns the module in eval mode.

    Example:
        >>> m = randomize(nn.Sequential(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4)))
        >>> x = torch.randn(4, 2, 8, 8) * 100
        >>> m = calibrate_bn(m, lambda: m(x))
        >>> y = m[0](x)
        >>> torch.allclose(m[1].running_mean, y.mean((0, 2, 3)), atol=1e-3), m.training
        (True, False)
    """
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one call, exactly that call's statistics
    module.train()
    try:
        with torch.no_grad():
            call()
    finally:
        for bn, mom in zip(bns, momenta, strict=True):
            bn.momentum = mom
        module.eval()
    return module


def _skip(peer: str, what: str, err: BaseException) -> Pair:
    return Pair(peer, skipped=f"{what} is not importable ({type(err).__name__}: {err})")


def check_divisible(name: str, size: Sequence[int], by: int, why: str) -> None:
    """Raise ``ValueError`` unless both sides of ``size`` are multiples of ``by`` (``why``: the peer's reason)."""
    if size[0] % by or size[1] % by:
        raise ValueError(f"{name} needs an image size divisible by {by} ({why}); got {size[0]}x{size[1]}")


# torchvision --------------------------------------------------------------------------------------------
def torchvision_fpn_pair(specs: Sequence[FeatureSpec], width: int, p6p7: bool = False) -> Pair:
    """torchvision ``FeaturePyramidNetwork`` (``+ LastLevelP6P7`` on P5 with ``p6p7``) vs necklace ``fpn``."""
    name = "torchvision FeaturePyramidNetwork" + (" + LastLevelP6P7" if p6p7 else "")
    try:
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    except ImportError as e:
        return _skip(name, "torchvision.ops.FeaturePyramidNetwork", e)
    from necklace.convert import fpn_from_torchvision

    extra = LastLevelP6P7(width, width) if p6p7 else None
    tv = randomize(FeaturePyramidNetwork([s.channels for s in specs], width, extra_blocks=extra))
    keys = [f"c{s.level}" for s in specs]

    def call(m: nn.Module, feats: list[Tensor]) -> list[Tensor]:
        return list(m(OrderedDict(zip(keys, feats, strict=True))).values())

    neck = fpn_from_torchvision(tv, specs).eval()
    return Pair(name, neck, tv, call, "necklace.convert.fpn_from_torchvision")


# mmdet / mmyolo on mmcv-lite ----------------------------------------------------------------------------
class _MissingExt(types.ModuleType):
    """Stands in for ``mmcv._ext``: attribute lookups succeed, calling an op raises."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def _missing(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"mmcv compiled op {name!r} is not available (mmcv-lite + necklace.peers shim).")

        return _missing


def install_mmcv_ext_shim() -> None:
    """Replace ``mmcv.utils.ext_loader.load_ext`` by a placeholder loader, before ``mmcv.ops`` is imported.

    With ``mmcv-lite`` (no compiled ops) ``mmcv.ops`` then imports, and any compiled op raises when called (no
    neck of mmdet/mmyolo calls one). A no-op once ``mmcv.ops`` is imported. Raises ``ImportError`` when mmcv is
    not installed.
    """
    if "mmcv.ops" in sys.modules:
        return
    from mmcv.utils import ext_loader

    def load_ext(name: str, funcs: list[str]) -> types.ModuleType:
        return _MissingExt(f"mmcv.{name}")

    ext_loader.load_ext = load_ext


def import_mmdet_necks() -> types.ModuleType:
    """``mmdet.models.necks``, importable with ``mmcv-lite`` (no compiled ops; no neck calls one).

    Installs :func:`install_mmcv_ext_shim` first. Raises ``ImportError`` when mmdet/mmcv are not installed.
    """
    install_mmcv_ext_shim()
    import mmdet.models.necks as necks

    return cast(types.ModuleType, necks)


def import_mmyolo_necks() -> types.ModuleType:
    """``mmyolo.models.necks`` (mmyolo 0.6 on mmdet 3 + mmcv-lite), with :func:`install_mmcv_ext_shim` first.

    Build its necks inside ``mmengine.registry.DefaultScope.overwrite_default_scope("mmyolo")``: their blocks
    (``RepVGGBlock``) are looked up by registry name. Raises ``ImportError`` when mmyolo/mmcv are not installed.
    """
    install_mmcv_ext_shim()
    import mmyolo.models.necks as necks

    return cast(types.ModuleType, necks)


def _mmdet_necks_or_skip(name: str) -> types.ModuleType | Pair:
    try:
        return import_mmdet_necks()
    except Exception as e:  # ImportError, or mmcv/mmdet version checks
        return _skip(name, "mmdet (with mmcv or mmcv-lite)", e)


def _tuple_call(m: nn.Module, feats: list[Tensor]) -> list[Tensor]:
    return list(m(tuple(feats)))


def _list_call(m: nn.Module, feats: list[Tensor]) -> list[Tensor]:
    return list(m(list(feats)))  # effdet appends the extra levels to the list it is given: always a new list


def mmdet_pair(kind: str, specs: Sequence[FeatureSpec], width: int, label: str = "", **cfg: Any) -> Pair:
    """mmdet ``FPN`` / ``PAFPN`` (``kind``, built with ``cfg``) vs ``necklace.convert.neck_from_mmdet`` of it."""
    name = f"mmdet {kind}{label}"
    necks = _mmdet_necks_or_skip(name)
    if isinstance(necks, Pair):
        return necks
    from necklace.convert import neck_from_mmdet

    cfg.setdefault("num_outs", len(specs))
    mm = randomize(getattr(necks, kind)(in_channels=[s.channels for s in specs], out_channels=width, **cfg))
    neck = neck_from_mmdet(mm, specs).eval()
    return Pair(name, neck, mm, _tuple_call, "necklace.convert.neck_from_mmdet")


def mmdet_nasfpn_pair(specs: Sequence[FeatureSpec], width: int, stack_times: int, start_level: int) -> Pair:
    """mmdet ``NASFPN`` (5 outputs from ``start_level``, BN) vs necklace ``nasfpn`` with the same options."""
    name = f"mmdet NASFPN (stack_times {stack_times})"
    necks = _mmdet_necks_or_skip(name)
    if isinstance(necks, Pair):
        return necks
    from necklace.convert import from_mmdet_nasfpn

    mm = randomize(
        necks.NASFPN(
            in_channels=[s.channels for s in specs],
            out_channels=width,
            num_outs=5,
            stack_times=stack_times,
            start_level=start_level,
            norm_cfg=dict(type="BN", requires_grad=True),
        )
    )
    # BN statistics of a real forward (two 256x256 images): random BN statistics let the 7 cells blow the
    # outputs up to ~2e6, where no fp32 implementation agrees with another to 1e-4
    g = torch.Generator().manual_seed(1)
    calib = tuple(torch.randn(2, s.channels, 256 // s.stride, 256 // s.stride, generator=g) for s in specs)
    calibrate_bn(mm, lambda: mm(calib))
    lo = specs[start_level].level
    neck = build_neck("nasfpn", specs, width=width, stack_times=stack_times, levels=(lo, lo + 4), norm="bn")
    neck.load_state_dict(from_mmdet_nasfpn(mm, cast(Any, neck)))  # the module form also checks the options
    return Pair(name, neck.eval(), mm, _tuple_call, "necklace.convert.from_mmdet_nasfpn")


#: mmyolo YOLOv6 configs: preset -> (deepen_factor, widen_factor)
MMYOLO_FACTORS = {"n": (0.33, 0.25), "s": (0.33, 0.5)}


def mmyolo_in_specs(preset: str) -> tuple[FeatureSpec, ...]:
    """P3-P5 inputs of mmyolo's YOLOv6 ``preset`` neck: 256/512/1024 times its widen factor.

    Example:
        >>> [s.channels for s in mmyolo_in_specs("n")]
        [64, 128, 256]
    """
    widen = MMYOLO_FACTORS[preset][1]
    return tuple(FeatureSpec(int(c * widen), s) for c, s in zip((256, 512, 1024), (8, 16, 32), strict=True))


def mmyolo_switch_to_deploy(module: nn.Module) -> nn.Module:
    """mmyolo's deployment form, in place: ``mmyolo.utils.switch_to_deploy`` (``RepVGGBlock.switch_to_deploy()``
    on every RepVGGBlock: 3x3 + 1x1 + identity branches with their BNs -> one 3x3 conv with bias).

    ``mmyolo.utils`` imports prettytable (not a dependency of its models); where that import fails, the same
    loop as that helper runs here, calling each block's own ``switch_to_deploy``.
    """
    try:
        from mmyolo.utils import switch_to_deploy
    except ImportError:
        from mmyolo.models import RepVGGBlock

        for layer in module.modules():
            if isinstance(layer, RepVGGBlock):
                layer.switch_to_deploy()
    else:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Switch model to deploy modality."
            switch_to_deploy(module)
    return module


def mmyolo_reppafpn_pair(preset: str, specs: Sequence[FeatureSpec]) -> Pair:
    """mmyolo ``YOLOv6RepPAFPN`` as in its ``yolov6_<preset>`` config vs necklace ``rep_pafpn`` ``preset``."""
    name = f"mmyolo YOLOv6RepPAFPN ({preset})"
    try:
        necks = import_mmyolo_necks()
        from mmengine.registry import DefaultScope
    except Exception as e:  # ImportError, or mmcv/mmdet/mmyolo version checks
        return _skip(name, "mmyolo (with mmdet and mmcv or mmcv-lite)", e)
    from necklace.convert import from_mmyolo_reppafpn

    deepen, widen = MMYOLO_FACTORS[preset]
    with DefaultScope.overwrite_default_scope("mmyolo"):  # RepStageBlock builds RepVGGBlock by registry name
        mm = necks.YOLOv6RepPAFPN(
            in_channels=[256, 512, 1024],
            out_channels=[128, 256, 512],
            deepen_factor=deepen,
            widen_factor=widen,
            num_csp_blocks=12,
            norm_cfg=dict(type="BN", momentum=0.03, eps=0.001),
            act_cfg=dict(type="ReLU", inplace=True),
            block_cfg=dict(type="RepVGGBlock"),
        )
    mm = randomize(mm)
    neck = build_neck("rep_pafpn", specs, preset=preset)
    neck.load_state_dict(from_mmyolo_reppafpn(mm, cast(Any, neck)))
    return Pair(
        name,
        neck.eval(),
        mm,
        _list_call,
        "necklace.convert.from_mmyolo_reppafpn",
        peer_deploy=mmyolo_switch_to_deploy,
        peer_deploy_what="mmyolo switch_to_deploy(): RepVGGBlocks re-parameterised, ConvModule BN kept",
    )


# effdet -------------------------------------------------------------------------------------------------
def effdet_bifpn_pair(model_name: str, specs: Sequence[FeatureSpec], image_size: tuple[int, int]) -> Pair:
    """efficientdet-pytorch ``BiFpn`` of ``model_name`` (e.g. ``tf_efficientdet_d0``) vs necklace ``bifpn``.

    effdet bakes every resample size into the module, so it is built for ``image_size``.
    """
    name = f"efficientdet-pytorch BiFpn ({model_name})"
    try:
        from effdet.config import get_efficientdet_config
        from effdet.efficientdet import BiFpn
    except ImportError as e:
        return _skip(name, "effdet (efficientdet-pytorch)", e)
    from necklace.convert import from_effdet_bifpn

    cfg = get_efficientdet_config(model_name)
    cfg.image_size = image_size
    cfg.num_levels = cfg.max_level - cfg.min_level + 1
    ref = randomize(BiFpn(cfg, [{"num_chs": s.channels, "reduction": s.stride} for s in specs]))
    tf = model_name.startswith("tf_")
    neck = build_neck(
        "bifpn",
        specs,
        preset=model_name.rsplit("_", 1)[-1],
        padding="same" if tf else "symmetric",
        redundant_bias=tf,
    )
    neck.load_state_dict(from_effdet_bifpn(ref.state_dict(), cast(Any, neck)))
    return Pair(name, neck.eval(), ref, _list_call, "necklace.convert.from_effdet_bifpn")


# ultralytics --------------------------------------------------------------------------------------------
def _ultralytics_tasks() -> Any:
    """``ultralytics.nn.tasks``, imported without keeping the global patches ultralytics applies at import
    (``PIL.Image.open``, which then tries to pip-install ``pi-heif`` on an unreadable image, and ``torch.save``):
    comparing with ultralytics must not change how other code of the process opens images or saves."""
    import PIL.Image

    saved = (PIL.Image.open, torch.save)
    try:
        import ultralytics.nn.tasks as tasks
    finally:
        PIL.Image.open, torch.save = saved
    return tasks


class UltralyticsNeck(nn.Module):
    """The neck layers of an ultralytics detection model (between the backbone and Detect), run the way
    ``BaseModel._predict_once`` runs them: ``[P3, P4, P5]`` -> the maps Detect reads. YOLOv8: layers 10-21,
    inputs the outputs of layers 4, 6, 9, outputs of 15, 18, 21; YOLO11: layers 11-22, inputs 4, 6, 10, outputs
    16, 19, 22 (read off the model: the head's layers, the backbone layers they read, Detect's inputs).

    Built from the model YAML shipped with ultralytics (``yolov8n.yaml``, ``yolo11n.yaml``: no download); needs
    ultralytics.

    Example:
        >>> import importlib.util
        >>> feats = [torch.randn(1, c, s, s) for c, s in ((64, 8), (128, 4), (256, 2))]
        >>> if importlib.util.find_spec("ultralytics") is not None:
        ...     ul = UltralyticsNeck("yolov8n.yaml").eval()
        ...     shapes, first = [tuple(o.shape) for o in ul(feats)], ul.first
        ... else:  # the shapes it gives
        ...     shapes, first = [(1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2)], 10
        >>> shapes, first
        ([(1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2)], 10)
    """

    def __init__(self, yaml: str) -> None:
        super().__init__()
        detection_model = _ultralytics_tasks().DetectionModel
        model: Any = detection_model(yaml, verbose=False)  # built from the YAML shipped with ultralytics
        first = len(model.yaml["backbone"])
        detect = model.model[-1]
        self.first = first  #: index of the first neck layer in the model
        self.layers = nn.ModuleList(model.model[first:-1])
        self.save = set(model.save)
        layer: Any
        refs = set()
        for layer in self.layers:
            refs |= {j for j in ([layer.f] if isinstance(layer.f, int) else layer.f) if 0 <= j < first}
        self.in_layers = tuple(sorted(refs | {first - 1}))
        self.out_layers = tuple(detect.f)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        y: dict[int, Tensor] = dict(zip(self.in_layers, feats, strict=True))
        x: Any = feats[-1]
        m: Any
        for m in self.layers:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            if m.i in self.save:
                y[m.i] = x
        return [y[i] for i in self.out_layers]


def ultralytics_fuse(ul: nn.Module) -> nn.Module:
    """ultralytics' own inference fusion on an :class:`UltralyticsNeck`, in place: ``BaseModel.fuse()``.

    ``DetectionModel.fuse()`` is ``BaseModel.fuse``: for every ``Conv`` with a ``bn`` it runs
    ``fuse_conv_and_bn`` (``conv`` <- BN folded in, ``bn`` deleted, ``forward = forward_fuse``; RepConv /
    ConvTranspose likewise). It walks ``self.model``, so it is called here, unchanged, on a bare ``BaseModel``
    holding the neck's layers as its ``model``.
    """
    holder = _ultralytics_tasks().BaseModel()
    holder.model = ul.layers
    holder.fuse(verbose=False)
    if not holder.is_fused():
        raise RuntimeError("ultralytics BaseModel.fuse() left unfused Conv+BN modules in the neck")
    return ul


#: necklace yolo_pafpn / yolo11_pafpn (P3-P5) module prefix -> ultralytics layer index counted from the first neck
#: layer (YOLOv8: + 10, YOLO11: + 11)
YOLO_LAYER_MAP = {
    "nodes.T4.block.": 2,
    "nodes.N3.block.": 5,
    "nodes.N4.edges.0.ops.0.": 6,
    "nodes.N4.block.": 8,
    "nodes.N5.edges.0.ops.0.": 9,
    "nodes.N5.block.": 11,
}


def ultralytics_to_necklace(ul: nn.Module, neck: nn.Module) -> dict[str, Tensor]:
    """Map an :class:`UltralyticsNeck`'s state dict onto necklace ``yolo_pafpn`` (YOLOv8) or ``yolo11_pafpn``
    (YOLO11) keys (``conv``/``bn`` -> ``conv``/``norm``; the blocks' submodule names are ultralytics' own).

    Every necklace key must be filled and every ultralytics key used, with equal shapes (else ``ValueError``).
    """
    src = ul.state_dict()
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for key, value in neck.state_dict().items():
        prefix = next((p for p in YOLO_LAYER_MAP if key.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"necklace key {key} has no ultralytics counterpart")
        src_key = f"layers.{YOLO_LAYER_MAP[prefix]}." + key[len(prefix) :].replace("norm.", "bn.")
        if src_key not in src or src[src_key].shape != value.shape:
            raise ValueError(f"{key} {tuple(value.shape)}: no matching {src_key} in the ultralytics neck")
        out[key] = src[src_key]
        used.add(src_key)
    if set(src) - used:
        raise ValueError(f"ultralytics keys without a necklace counterpart: {sorted(set(src) - used)[:5]}")
    return out


def ultralytics_yolov8_pair(scale: str, specs: Sequence[FeatureSpec]) -> Pair:
    """ultralytics YOLOv8 ``scale`` neck (:class:`UltralyticsNeck`) vs necklace ``yolo_pafpn`` preset ``scale``."""
    return _ultralytics_pair(f"yolov8{scale}.yaml", "yolo_pafpn", f"YOLOv8{scale} neck (layers 10-21)", scale, specs)


def ultralytics_yolo11_pair(scale: str, specs: Sequence[FeatureSpec]) -> Pair:
    """ultralytics YOLO11 ``scale`` neck (:class:`UltralyticsNeck`) vs necklace ``yolo11_pafpn`` preset ``scale``."""
    return _ultralytics_pair(f"yolo11{scale}.yaml", "yolo11_pafpn", f"YOLO11{scale} neck (layers 11-22)", scale, specs)


def _ultralytics_pair(yaml: str, neck_name: str, what: str, scale: str, specs: Sequence[FeatureSpec]) -> Pair:
    name = f"ultralytics {what}"
    try:
        _ultralytics_tasks()
    except ImportError as e:
        return _skip(name, "ultralytics", e)
    ul = randomize(UltralyticsNeck(yaml))
    neck = build_neck(neck_name, specs, preset=scale)
    neck.load_state_dict(ultralytics_to_necklace(ul, neck))
    return Pair(
        name,
        neck.eval(),
        ul,
        _list_call,
        "mapped key by key (necklace.peers.ultralytics_to_necklace)",
        peer_deploy=ultralytics_fuse,
        peer_deploy_what="ultralytics BaseModel.fuse(): fuse_conv_and_bn, forward_fuse",
    )


# ----------------------------------------------------------------------------------------------- checks
def max_abs_diff(a: Sequence[Tensor], b: Sequence[Tensor]) -> tuple[float, float]:
    """``(max |a - b|, max |b|)`` over equally shaped tensor lists (raises ``AssertionError`` on shape mismatch).

    Example:
        >>> max_abs_diff([torch.ones(2)], [torch.full((2,), 3.0)])
        (2.0, 3.0)
    """
    assert len(a) == len(b), f"{len(a)} outputs vs {len(b)}"
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape, f"output shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}"
    diff = max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b, strict=True))
    scale = max(float(y.float().abs().max()) for y in b)
    return diff, scale


def equality(got: Sequence[Tensor], ref: Sequence[Tensor], tol: float = TOL) -> dict[str, Any]:
    """``max_abs_diff``, ``max_abs_output`` (of ``ref``), ``tolerance`` (``tol * max(1, max |ref|)``) and
    ``equal`` (the difference within the tolerance)."""
    diff, scale = max_abs_diff(got, ref)
    return {
        "max_abs_diff": diff,
        "max_abs_output": scale,
        "tolerance": tol * max(1.0, scale),
        "equal": diff <= tol * max(1.0, scale),
    }


def bind(pair: Pair, module: nn.Module | None = None) -> Call:
    """The pair's peer (or ``module``, e.g. its deployed copy) as a ``feats -> outputs`` callable."""
    assert pair.call is not None and pair.peer_module is not None
    c, m = pair.call, pair.peer_module if module is None else module
    return lambda f: c(m, f)


def eval_call(module: nn.Module, call: Call | None, feats: list[Tensor]) -> Callable[[], object]:
    """A no-argument callable running ``module`` (or ``call``, when given) on a fresh list of ``feats``, no_grad."""

    def run() -> object:
        with torch.no_grad():
            return module(list(feats)) if call is None else call(list(feats))

    return run


def parity(pair: Pair, feats: list[Tensor]) -> dict[str, Any]:
    """:func:`equality` of the necklace outputs with the peer's (tolerance :data:`TOL`; the plain necklace neck runs
    torch's own ops, so on direct convs this is usually exact), plus ``out_shapes``."""
    assert pair.necklace is not None and pair.peer_module is not None and pair.call is not None
    with torch.no_grad():
        ref = pair.call(pair.peer_module, list(feats))
        got = pair.necklace(list(feats))
    return {**equality(got, ref), "out_shapes": [list(t.shape) for t in got]}


def deploy_necklace(pair: Pair, feats: list[Tensor], runtime: str = "native") -> tuple[nn.Module, dict[str, Any]]:
    """``necklace.deploy(runtime=...)`` of the pair's necklace neck (a copy, checked on ``feats``) and the
    :func:`equality` of its outputs with the eager peer's, tolerance :data:`DEPLOY_TOL` (folding and the runtimes'
    kernels change the rounding)."""
    from necklace.deploy import deploy

    assert pair.necklace is not None and pair.peer_module is not None and pair.call is not None
    module = deploy(pair.necklace, list(feats), runtime=runtime, rtol=DEPLOY_TOL)
    with torch.no_grad():
        eq = equality(module(list(feats)), pair.call(pair.peer_module, list(feats)), DEPLOY_TOL)
    return module, eq


def deploy_peer(pair: Pair, feats: list[Tensor]) -> tuple[nn.Module, dict[str, Any]]:
    """The peer's own deployment form (``pair.peer_deploy`` on a copy) and the :func:`equality` of its outputs
    with the eager peer's (tolerance :data:`TOL`). ``ValueError`` when the peer has no deployment form."""
    if pair.peer_deploy is None:
        raise ValueError(f"{pair.peer}: {NO_PEER_DEPLOY}")
    assert pair.peer_module is not None and pair.call is not None
    module = pair.peer_deploy(copy.deepcopy(pair.peer_module))
    module.eval()  # not chained: mmyolo's necks override train() and return None
    with torch.no_grad():
        eq = equality(pair.call(module, list(feats)), pair.call(pair.peer_module, list(feats)))
    return module, eq


# ----------------------------------------------------------------------------------------------- compare
@dataclass(frozen=True)
class _Setup:
    """How :func:`compare` builds one (neck, peer) pair: accepted options and their defaults, inputs, checks."""

    build: Callable[[tuple[FeatureSpec, ...], tuple[int, int], dict[str, Any]], Pair]
    defaults: dict[str, Any]
    in_specs: Callable[[dict[str, Any]], tuple[FeatureSpec, ...]]
    presets: tuple[str, ...] = ()
    #: the peer fixes the input channels (from the preset): custom in_specs are refused
    fixed_specs: bool = False
    divisible: tuple[int, str] | None = None


def _nasfpn_build(specs: tuple[FeatureSpec, ...], size: tuple[int, int], o: dict[str, Any]) -> Pair:
    start = next((i for i, s in enumerate(specs) if s.stride >= 8), 0)  # RetinaNet: P3 first
    return mmdet_nasfpn_pair(specs, int(o["width"]), int(o["stack_times"]), start)


def _ultralytics_setup(neck: str) -> _Setup:
    """``yolo_pafpn`` (YOLOv8) / ``yolo11_pafpn`` (YOLO11) vs ultralytics' neck of the same preset."""
    make_pair = ultralytics_yolov8_pair if neck == "yolo_pafpn" else ultralytics_yolo11_pair
    return _Setup(
        lambda specs, size, o: make_pair(o["preset"], specs),
        {"preset": "n"},
        lambda o: default_in_specs(neck, {"preset": o["preset"]}),
        presets=("n", "s", "m", "l", "x"),
        fixed_specs=True,
        divisible=ULTRALYTICS_DIVISIBLE,
    )


_SETUPS: dict[tuple[str, str], _Setup] = {
    ("fpn", "torchvision"): _Setup(
        lambda specs, size, o: torchvision_fpn_pair(specs, int(o["width"])),
        {"width": 256},
        lambda o: RESNET50_C3_C5,
    ),
    ("fpn", "mmdet"): _Setup(
        lambda specs, size, o: mmdet_pair("FPN", specs, int(o["width"])), {"width": 256}, lambda o: RESNET50_C3_C5
    ),
    ("pafpn", "mmdet"): _Setup(
        lambda specs, size, o: mmdet_pair("PAFPN", specs, int(o["width"])), {"width": 256}, lambda o: RESNET50_C3_C5
    ),
    ("nasfpn", "mmdet"): _Setup(
        _nasfpn_build, {"width": 256, "stack_times": 7}, lambda o: R50_C2, divisible=NASFPN_DIVISIBLE
    ),
    ("bifpn", "effdet"): _Setup(
        lambda specs, size, o: effdet_bifpn_pair(f"tf_efficientdet_{o['preset']}", specs, size),
        {"preset": "d0"},
        lambda o: default_in_specs("bifpn", o),
        presets=("d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7"),
    ),
    ("yolo_pafpn", "ultralytics"): _ultralytics_setup("yolo_pafpn"),
    ("yolo11_pafpn", "ultralytics"): _ultralytics_setup("yolo11_pafpn"),
    ("rep_pafpn", "mmyolo"): _Setup(
        lambda specs, size, o: mmyolo_reppafpn_pair(o["preset"], specs),
        {"preset": "n"},
        lambda o: mmyolo_in_specs(o["preset"]),
        presets=tuple(MMYOLO_FACTORS),
        fixed_specs=True,
        divisible=MMYOLO_DIVISIBLE,
    ),
}


def supported_pairs(peer: str | None = None) -> list[tuple[str, str]]:
    """The ``(neck, peer)`` pairs :func:`compare` knows, optionally only those of ``peer``.

    Example:
        >>> supported_pairs("mmdet")
        [('fpn', 'mmdet'), ('pafpn', 'mmdet'), ('nasfpn', 'mmdet')]
    """
    return [key for key in _SETUPS if peer is None or key[1] == peer]


def check_pair(name: str, peer: str) -> None:
    """Raise ``ValueError`` naming the supported pairs unless :func:`compare` knows ``(name, peer)``.

    Example:
        >>> check_pair("fpn", "mmdet")
        >>> check_pair("fpn", "detectron2")
        Traceback (most recent call last):
        ...
        ValueError: unknown peer 'detectron2'; choose one of torchvision, mmdet, effdet, ultralytics, mmyolo.
    """
    _setup_of(name, peer)


def _setup_of(name: str, peer: str) -> _Setup:
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; choose one of {', '.join(PEERS)}.")
    setup = _SETUPS.get((name, peer))
    if setup is None:
        mine = [n for n, p in _SETUPS if p == peer]
        theirs = [p for n, p in _SETUPS if n == name]
        hint = f" {name} is compared with: {', '.join(theirs)}." if theirs else ""
        raise ValueError(f"no {peer} counterpart of neck {name!r}: {peer} has {', '.join(mine)}.{hint}")
    return setup


def _resolve_options(name: str, peer: str, setup: _Setup, options: Mapping[str, Any] | None) -> dict[str, Any]:
    given = dict(options or {})
    unknown = sorted(set(given) - set(setup.defaults))
    if unknown:
        raise ValueError(
            f"{name} vs {peer}: unsupported option(s) {', '.join(unknown)}; this pair takes "
            f"{', '.join(setup.defaults)} (the peer's neck is built to match them)."
        )
    resolved = {**setup.defaults, **given}
    if setup.presets and resolved.get("preset") not in setup.presets:
        raise ValueError(f"{name} vs {peer}: preset {resolved.get('preset')!r} not in {', '.join(setup.presets)}.")
    return resolved


@dataclass(frozen=True)
class PeerComparison:
    """What :func:`compare` measured for one necklace neck and its peer's counterpart.

    Equality: ``max_abs_diff`` of the outputs (same weights, same random inputs), ``tolerance`` =
    ``TOL * max(1, max_abs_output)``, ``equal``. Costs: parameters and MACs of both (torch's FlopCounterMode,
    convs and matmuls). Timing (eval, no_grad, batch 1, interleaved rounds): medians ``necklace_ms`` /
    ``peer_ms``, ``ratio`` = median over rounds of ``t_necklace / t_peer`` (< 1: necklace faster) with its
    quartiles. With ``deployed``: ``deployed_ms`` of ``necklace.deploy(neck)``, ``peer_deployed_ms`` of the
    peer's own deployment form ``peer_deploy`` (``None``: it has none, its eager form stands in) and
    ``ratio_deployed`` = necklace deployed / peer deployed. ``times``: full statistics (ms) of every timed form.

    Example:
        >>> r = compare("fpn", "torchvision", image_size=64, options={"width": 16}, repeats=2, warmup=0)
        >>> r.gmacs_necklace == r.gmacs_peer, r.gmac_per_s_necklace > 0, r.ok, sorted(r.times)
        (True, True, True, ['necklace', 'peer'])
        >>> r.to_dict()["eval"]["ratio_necklace_over_peer"]["median"] == r.ratio, r.to_row()["image_h"]
        (True, 64)
    """

    neck: str
    peer: str
    peer_module: str
    weights: str
    options: dict[str, Any]
    in_specs: tuple[FeatureSpec, ...]
    image_size: tuple[int, int]
    out_shapes: tuple[tuple[int, ...], ...]
    max_abs_diff: float
    max_abs_output: float
    tolerance: float
    equal: bool
    params_necklace: int
    params_peer: int
    macs_necklace: int
    macs_peer: int
    necklace_ms: float
    peer_ms: float
    ratio: float
    ratio_p25: float
    ratio_p75: float
    repeats: int
    warmup: int
    threads: int
    times: dict[str, dict[str, float | int]]
    deployed: bool = False
    deployed_ms: float | None = None
    deployed_max_abs_diff: float | None = None
    deployed_equal: bool | None = None
    peer_deploy: str | None = None
    peer_deployed_ms: float | None = None
    peer_deploy_max_abs_diff: float | None = None
    peer_deploy_equal: bool | None = None
    ratio_deployed: float | None = None
    ratio_deployed_p25: float | None = None
    ratio_deployed_p75: float | None = None
    torch_version: str = field(default_factory=lambda: torch.__version__)

    @property
    def gmacs_necklace(self) -> float:
        return self.macs_necklace / 1e9

    @property
    def gmacs_peer(self) -> float:
        return self.macs_peer / 1e9

    @property
    def gmac_per_s_necklace(self) -> float:
        """Achieved GMAC/s of the necklace neck: GMACs / median time."""
        return self.gmacs_necklace / (self.necklace_ms / 1e3)

    @property
    def gmac_per_s_peer(self) -> float:
        return self.gmacs_peer / (self.peer_ms / 1e3)

    @property
    def ok(self) -> bool:
        """Every equality check passed (eager, and deployed forms where timed)."""
        return self.equal and self.deployed_equal is not False and self.peer_deploy_equal is not False

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (JSON-ready)."""
        d: dict[str, Any] = {
            "neck": self.neck,
            "peer": self.peer,
            "peer_module": self.peer_module,
            "weights": self.weights,
            "options": dict(self.options),
            "in_specs": [s.to_dict() for s in self.in_specs],
            "image_size": list(self.image_size),
            "out_shapes": [list(s) for s in self.out_shapes],
            "equality": {
                "max_abs_diff": self.max_abs_diff,
                "max_abs_output": self.max_abs_output,
                "tolerance": self.tolerance,
                "equal": self.equal,
            },
            "params": {"necklace": self.params_necklace, "peer": self.params_peer},
            "macs": {"necklace": self.macs_necklace, "peer": self.macs_peer},
            "gmacs": {"necklace": self.gmacs_necklace, "peer": self.gmacs_peer},
            "eval": {
                "necklace_ms": self.necklace_ms,
                "peer_ms": self.peer_ms,
                "ratio_necklace_over_peer": {"median": self.ratio, "p25": self.ratio_p25, "p75": self.ratio_p75},
                "gmac_per_s": {"necklace": self.gmac_per_s_necklace, "peer": self.gmac_per_s_peer},
            },
            "times": {k: dict(v) for k, v in self.times.items()},
            "settings": {
                "repeats": self.repeats,
                "warmup": self.warmup,
                "threads": self.threads,
                "batch": 1,
                "dtype": "float32",
                "torch_version": self.torch_version,
            },
            "deployed": self.deployed,
        }
        if self.deployed:
            d["eval_deployed"] = {
                "necklace_deployed_ms": self.deployed_ms,
                "max_abs_diff_vs_peer": self.deployed_max_abs_diff,
                "equal": self.deployed_equal,
                "peer_deploy": self.peer_deploy,
                "peer_deploy_note": None if self.peer_deploy else NO_PEER_DEPLOY,
                "peer_deployed_ms": self.peer_deployed_ms,
                "peer_deploy_max_abs_diff_vs_eager": self.peer_deploy_max_abs_diff,
                "peer_deploy_equal": self.peer_deploy_equal,
                "ratio_deployed_over_peer_deployed": {
                    "median": self.ratio_deployed,
                    "p25": self.ratio_deployed_p25,
                    "p75": self.ratio_deployed_p75,
                },
            }
        return d

    def to_row(self) -> dict[str, str | int | float | bool | None]:
        """Flat dict of scalars (one CSV row)."""
        return {
            "neck": self.neck,
            "peer": self.peer,
            "peer_module": self.peer_module,
            "options": ";".join(f"{k}={v}" for k, v in self.options.items()),
            "in_specs": " ".join(f"{s.channels}@{s.stride}" for s in self.in_specs),
            "image_h": self.image_size[0],
            "image_w": self.image_size[1],
            "max_abs_diff": self.max_abs_diff,
            "equal": self.equal,
            "params_necklace": self.params_necklace,
            "params_peer": self.params_peer,
            "gmacs_necklace": self.gmacs_necklace,
            "gmacs_peer": self.gmacs_peer,
            "necklace_ms": self.necklace_ms,
            "peer_ms": self.peer_ms,
            "ratio": self.ratio,
            "ratio_p25": self.ratio_p25,
            "ratio_p75": self.ratio_p75,
            "gmac_per_s_necklace": self.gmac_per_s_necklace,
            "gmac_per_s_peer": self.gmac_per_s_peer,
            "deployed_ms": self.deployed_ms,
            "peer_deploy": self.peer_deploy,
            "peer_deployed_ms": self.peer_deployed_ms,
            "ratio_deployed": self.ratio_deployed,
            "repeats": self.repeats,
            "threads": self.threads,
            "torch_version": self.torch_version,
        }


def compare(
    name: str,
    peer: str,
    image_size: tuple[int, int] | int | None = None,
    options: Mapping[str, Any] | None = None,
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = None,
    deployed: bool = False,
    progress: Progress | None = None,
    in_specs: Sequence[FeatureSpec | tuple[int, int]] | None = None,
    seed: int = 0,
) -> PeerComparison:
    """Compare necklace neck ``name`` with ``peer``'s counterpart: same configuration and weights, outputs
    checked equal, both timed interleaved in this process (eval, no_grad, float32, batch 1).

    ``options`` configure both necks (``width`` for fpn/pafpn/nasfpn, ``stack_times`` for nasfpn, ``preset``
    for bifpn/yolo_pafpn/rep_pafpn); ``in_specs`` and ``image_size`` default per pair (see the module docs);
    yolo_pafpn/rep_pafpn take their inputs from the preset. ``deployed=True`` also times
    ``necklace.deploy(neck)`` against the peer's own deployment form (ultralytics ``fuse()``, mmyolo
    ``switch_to_deploy()``; other peers have none and their eager form stands in), each checked equal first.
    ``threads`` sets torch's thread count while measuring; ``progress(done, repeats)`` follows the timed rounds.

    An unequal result is still timed and returned (``equal`` / ``ok`` False). ``ValueError`` for an unknown pair,
    option, preset or an image size the peer cannot match; ``ImportError`` (with the pip command) for a peer that
    is not installed.

    Example:
        >>> r = compare("fpn", "torchvision", image_size=64, options={"width": 32}, repeats=1, warmup=0,
        ...             deployed=True)
        >>> r.equal, r.deployed_equal, r.peer_deploy is None, r.ratio_deployed > 0
        (True, True, True, True)
        >>> compare("bifpn", "torchvision")
        Traceback (most recent call last):
        ...
        ValueError: no torchvision counterpart of neck 'bifpn': torchvision has fpn. bifpn is compared with: effdet.
    """
    setup = _setup_of(name, peer)
    opts = _resolve_options(name, peer, setup, options)
    _check_count("repeats", repeats, 1)
    _check_count("warmup", warmup, 0)
    default_specs = setup.in_specs(opts)
    specs = validate_in_specs(as_feature_specs(in_specs)) if in_specs is not None else default_specs
    if setup.fixed_specs and tuple(specs) != tuple(default_specs):
        raise ValueError(
            f"{name} vs {peer}: the inputs are fixed by the preset ({opts['preset']}: "
            f"{', '.join(f'{s.channels}@{s.stride}' for s in default_specs)}); pick another preset instead."
        )
    size = _check_image_size(image_size if image_size is not None else default_image_size(name, opts))
    if setup.divisible is not None:
        check_divisible(f"{name} vs {peer}", size, *setup.divisible)
    pair = setup.build(tuple(specs), size, opts)
    if pair.skipped:
        raise ImportError(f"{name} vs {peer}: {pair.skipped}; install it with: {PEERS[peer]}")
    assert pair.necklace is not None and pair.peer_module is not None
    feats = random_features(specs, size, batch=1, seed=seed)
    eq = parity(pair, feats)
    peer_fn = bind(pair)
    fns = {"necklace": eval_call(pair.necklace, None, feats), "peer": eval_call(pair.peer_module, peer_fn, feats)}
    dep: dict[str, Any] = {}
    if deployed:
        module, dep_eq = deploy_necklace(pair, feats)
        fns["deployed"] = eval_call(module, None, feats)
        dep.update(deployed_max_abs_diff=dep_eq["max_abs_diff"], deployed_equal=dep_eq["equal"])
        if pair.peer_deploy is not None:
            peer_module, peer_eq = deploy_peer(pair, feats)
            fns["peer_deployed"] = eval_call(peer_module, bind(pair, peer_module), feats)
            dep.update(
                peer_deploy=pair.peer_deploy_what,
                peer_deploy_max_abs_diff=peer_eq["max_abs_diff"],
                peer_deploy_equal=peer_eq["equal"],
            )
    with _num_threads(threads) as used_threads:
        times = interleaved(fns, repeats=repeats, warmup=warmup, progress=progress)
    ratio = ratio_stats(times["necklace"], times["peer"])
    stats = {k: stats_ms(v) for k, v in times.items()}
    if deployed:
        peer_dep_key = "peer_deployed" if "peer_deployed" in times else "peer"
        r_dep = ratio_stats(times["deployed"], times[peer_dep_key])
        dep.update(
            deployed_ms=stats["deployed"]["median_ms"],
            peer_deployed_ms=stats[peer_dep_key]["median_ms"],
            ratio_deployed=r_dep["median"],
            ratio_deployed_p25=r_dep["p25"],
            ratio_deployed_p75=r_dep["p75"],
        )
    return PeerComparison(
        neck=name,
        peer=peer,
        peer_module=pair.peer,
        weights=pair.weights,
        options=opts,
        in_specs=tuple(specs),
        image_size=size,
        out_shapes=tuple(tuple(s) for s in eq["out_shapes"]),
        max_abs_diff=eq["max_abs_diff"],
        max_abs_output=eq["max_abs_output"],
        tolerance=eq["tolerance"],
        equal=eq["equal"],
        params_necklace=count_params(pair.necklace),
        params_peer=count_params(pair.peer_module),
        macs_necklace=count_call_flops(fns["necklace"]) // 2,
        macs_peer=count_call_flops(fns["peer"]) // 2,
        necklace_ms=float(stats["necklace"]["median_ms"]),
        peer_ms=float(stats["peer"]["median_ms"]),
        ratio=float(ratio["median"]),
        ratio_p25=float(ratio["p25"]),
        ratio_p75=float(ratio["p75"]),
        repeats=repeats,
        warmup=warmup,
        threads=used_threads,
        times=stats,
        deployed=deployed,
        **dep,
    )
