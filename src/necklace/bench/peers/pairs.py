"""The pairs: a peer library's neck with random weights and the necklace neck that reproduces it, loaded with the
peer's weights (torchvision, mmdet, mmyolo, efficientdet-pytorch builders; the shared constants and types)."""

from __future__ import annotations

import contextlib
import io
import math
import sys
import types
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn

from necklace.registry import RESNET50_C3_C5, build_neck
from necklace.spec import FeatureSpec

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
        >>> from necklace.bench.peers.checks import parity
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
            raise RuntimeError(f"mmcv compiled op {name!r} is not available (mmcv-lite + necklace.bench.peers shim).")

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
