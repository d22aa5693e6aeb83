"""Deployment transformations on a copy of a model, with verified equality (DESIGN habit 8).

:func:`deploy` re-parameterises every block that has a ``reparameterize()`` method (RepConv and friends), folds
every Conv+BatchNorm pair (:func:`fuse_conv_bn`), freezes the learnable weights of weighted fusions into constant
buffers (:meth:`necklace.layers.Fuse.freeze`), optionally picks the faster memory format, and checks that the
deployed model gives the original's outputs. Each step is an explicit module transformation; ``forward`` is
never patched. The original model is left untouched.

Everything folds *running* BatchNorm statistics, so the model must be in ``eval()`` mode first: forgetting it is
the most reported "train vs deploy mismatch" with RepVGG-style models.
"""

from __future__ import annotations

import copy
import itertools
import math
import statistics
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from necklace.graph import GraphNeck
from necklace.layers.conv import ConvNormAct, PointwiseToChannelsLast, SeparableConv
from necklace.layers.fuse import Fuse
from necklace.layers.fused import fused_act_modules, set_fused_conv_act
from necklace.layers.rep import fold_bn_into_conv
from necklace.spec import FeatureSpec

__all__ = [
    "DeployReport",
    "deploy",
    "example_pyramid",
    "freeze_fusions",
    "fuse_conv_bn",
    "reparameterize",
    "set_channels_last",
]

#: Image size the automatic example pyramid is derived from: odd in both directions on purpose.
EXAMPLE_IMAGE_SIZE = (97, 131)


@dataclass(frozen=True)
class DeployReport:
    """What :func:`deploy` did, attached to the deployed model as ``deployed.deploy_report``.

    ``max_abs_diff`` is the largest absolute output difference from the original model; ``max_rel_diff`` the
    largest of ``max|deployed - original| / max|original|`` over output tensors (``None`` when not checked).
    ``latency_ms`` holds the median forward time of each setting that was timed (keys ``contiguous``,
    ``channels_last``, ``channels_last_unfused``), ``None`` when nothing was chosen by measurement.
    ``fused_conv_act`` is whether conv + activation run as one oneDNN call on channels_last maps
    (:func:`necklace.layers.fused.set_fused_conv_act`); ``None`` when the model has no module that can.

    Example:
        >>> import necklace
        >>> neck = necklace.build_neck("yolo_pafpn", [(16, 8), (32, 16), (64, 32)]).eval()
        >>> report = necklace.deploy(neck, channels_last=False).deploy_report
        >>> report.checked, report.folded_bn > 0, report.max_rel_diff < 1e-4
        (True, True, True)
    """

    reparameterized: int
    folded_bn: int
    frozen_fusions: int
    channels_last: bool
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    latency_ms: Mapping[str, float] | None = None
    fused_conv_act: bool | None = None

    @property
    def checked(self) -> bool:
        """Whether the outputs were compared with the original model's."""
        return self.max_abs_diff is not None

    @staticmethod
    def of(model: nn.Module) -> DeployReport:
        """The report attached to a model returned by :func:`deploy` (typed access to ``deploy_report``)."""
        report = model.__dict__.get("deploy_report")
        if not isinstance(report, DeployReport):
            raise ValueError(f"{type(model).__name__} was not produced by necklace.deploy(); it has no deploy_report.")
        return report


def _require_eval(model: nn.Module, what: str) -> None:
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            f"{what}: the model is in training mode ({len(training)} module(s), e.g. {training[0]!r}); "
            "call model.eval() first: BN folding uses running statistics."
        )


def reparameterize(model: nn.Module) -> int:
    """Call ``reparameterize()`` on every submodule that has one (in place); return how many were called.

    Works for necklace's :class:`~necklace.layers.RepConv` / :class:`~necklace.layers.RepBlock` and for
    third-party blocks with the same method (timm ``RepVggBlock``, MobileOne, ...).
    """
    count = 0
    for m in list(model.modules()):
        fn = getattr(m, "reparameterize", None)
        if callable(fn):
            fn()
            count += 1
    return count


def _fold_all(model: nn.Module) -> int:
    count = 0
    for m in list(model.modules()):
        if isinstance(m, (ConvNormAct, SeparableConv)):
            count += int(m.fuse())
        elif isinstance(m, nn.Sequential):
            children = list(m.named_children())
            for (_, conv), (bn_name, bn) in itertools.pairwise(children):
                if (
                    isinstance(conv, nn.Conv2d)
                    and isinstance(bn, _BatchNorm)
                    and bn.running_mean is not None
                    and bn.num_features == conv.out_channels
                ):
                    fold_bn_into_conv(conv, bn)
                    setattr(m, bn_name, nn.Identity().train(bn.training))
                    count += 1
    return count


def fuse_conv_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every BatchNorm that follows a conv into that conv's weight and bias; return the fused model.

    Folds :class:`~necklace.layers.ConvNormAct` (conv + BN), :class:`~necklace.layers.SeparableConv` (pointwise
    conv + BN) via their explicit ``fuse()`` methods, and ``nn.Conv2d`` directly followed by a BatchNorm inside an
    ``nn.Sequential``. Each folded BN becomes ``nn.Identity``. Works on a deep copy unless ``inplace=True``.
    The model must be in ``eval()`` mode.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU()).eval()
        >>> fused = fuse_conv_bn(m)
        >>> [type(c).__name__ for c in fused], fused[0].bias is not None
        (['Conv2d', 'Identity', 'ReLU'], True)
    """
    _require_eval(model, "fuse_conv_bn")
    if not inplace:
        model = copy.deepcopy(model)
    with torch.no_grad():
        _fold_all(model)
    return model


def freeze_fusions(model: nn.Module) -> int:
    """Freeze every weighted :class:`~necklace.layers.Fuse` (fast / softmax) into constant buffers; return how
    many were frozen (in place)."""
    count = 0
    for m in model.modules():
        if isinstance(m, Fuse) and m.weight is not None:
            m.freeze()
            count += 1
    return count


def set_channels_last(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Put ``model``'s 4-d weights in ``torch.channels_last`` (or back) and make its graph necks convert inputs once.

    Every :class:`necklace.graph.GraphNeck` inside gets ``channels_last_inputs = enabled``, so a contiguous
    backbone map is converted once on entry instead of by each op that reads it (mixed formats make convs,
    concatenations and sums copy). In place; returns ``model``.

    Example:
        >>> import necklace
        >>> neck = necklace.build_neck("fpn", [(8, 8), (16, 16)], width=8).eval()
        >>> out = set_channels_last(neck)([torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4)])
        >>> out[0].is_contiguous(memory_format=torch.channels_last)
        True
    """
    model.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
    for m in model.modules():
        if isinstance(m, GraphNeck):
            m.channels_last_inputs = enabled
            for node in m.nodes.values():
                node.channels_last_out = enabled  # type: ignore[assignment]  # (Module.__setattr__ typing)
            direct, single = _direct_laterals(m, enabled)
            m.channels_last_direct = frozenset(direct)
            m.channels_last_direct_single = frozenset(single)
    return model


def _direct_laterals(neck: GraphNeck, enabled: bool) -> tuple[list[str], list[str]]:
    """Swap the lateral 1x1 convs reading backbone inputs to :class:`PointwiseToChannelsLast` (``enabled``) or
    back; returns the inputs that need no layout conversion on entry: ``(direct, single)``. ``direct``: every
    reader is such a conv (any batch). ``single``: the readers are such convs or concatenations that only a 1x1
    conv reads (YOLOv8's C2f nodes), whose GEMMs read a single NCHW map as a transposed operand."""
    direct, single = [], []
    for name, readers in neck.input_reader_nodes().items():
        ok_readers = concat_readers = 0
        for node, k in readers:
            edge = node.edges[k]  # type: ignore[index]
            align = getattr(edge, "align", None)
            if getattr(node, "_concat_head", False) and (node._passthrough[k] or node._resize_only[k]):  # type: ignore[index]
                concat_readers += 1
                continue
            ok = (
                isinstance(align, ConvNormAct)
                and getattr(edge, "pre_act", None) is None
                and not align.act_first
                and not align.same
                and align.conv.kernel_size == (1, 1)
                and align.conv.stride == (1, 1)
                and align.conv.padding == (0, 0)
                and align.conv.groups == 1
            )
            if not ok:
                continue
            assert isinstance(align, ConvNormAct)
            if enabled and not isinstance(align.conv, PointwiseToChannelsLast):
                align.conv = PointwiseToChannelsLast.from_conv(align.conv)
            elif not enabled and isinstance(align.conv, PointwiseToChannelsLast):
                align.conv = align.conv.to_conv()
            ok_readers += 1
        if enabled and readers and ok_readers == len(readers):
            direct.append(name)
        elif enabled and readers and ok_readers + concat_readers == len(readers):
            single.append(name)
    return direct, single


def _first_tensor(model: nn.Module) -> Tensor | None:
    for p in model.parameters():
        return p
    for b in model.buffers():
        if b.is_floating_point():
            return b
    return None


def example_pyramid(
    in_specs: tuple[FeatureSpec, ...] | list[FeatureSpec],
    image_size: tuple[int, int] = EXAMPLE_IMAGE_SIZE,
    batch: int = 2,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
) -> list[Tensor]:
    """Random backbone maps for ``in_specs``: ``ceil(H / stride) x ceil(W / stride)`` per level, finest first.

    Example:
        >>> [tuple(t.shape) for t in example_pyramid([FeatureSpec(16, 8), FeatureSpec(32, 16)], batch=1)]
        [(1, 16, 13, 17), (1, 32, 7, 9)]
    """
    g = torch.Generator().manual_seed(seed)
    h, w = image_size
    return [
        torch.randn(batch, s.channels, math.ceil(h / s.stride), math.ceil(w / s.stride), generator=g).to(
            device=device, dtype=dtype
        )
        for s in in_specs
    ]


def _auto_inputs(model: nn.Module) -> tuple[Any, ...] | None:
    specs = getattr(model, "in_specs", None)
    if not isinstance(specs, (tuple, list)) or not specs or not all(isinstance(s, FeatureSpec) for s in specs):
        return None
    ref = _first_tensor(model)
    device = ref.device if ref is not None else None
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else None
    return (example_pyramid(specs, device=device, dtype=dtype),)


def _flatten(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for k in out for t in _flatten(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    return []


def _compare(ref: Any, got: Any) -> tuple[float, float]:
    a, b = _flatten(ref), _flatten(got)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        raise RuntimeError(
            f"deploy: the deployed model's outputs {[tuple(t.shape) for t in b]} do not match the original's "
            f"{[tuple(t.shape) for t in a]}."
        )
    max_abs = max_rel = 0.0
    for x, y in zip(a, b, strict=True):
        if x.numel() == 0:
            continue
        x64, y64 = x.detach().double(), y.detach().double()
        diff = (x64 - y64).abs().max().item()
        scale = x64.abs().max().item()
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else diff)
    return max_abs, max_rel


#: settings :func:`deploy` may time: name -> (channels_last, fused conv + activation)
SETTINGS: dict[str, tuple[bool, bool]] = {
    "contiguous": (False, True),
    "channels_last": (True, True),
    "channels_last_unfused": (True, False),
}
#: rounds of :func:`_time_settings`: at least the first, at most the second, and no new round once the time
#: budget (seconds) is spent
TUNE_ROUNDS, TUNE_BUDGET_S = (5, 15), 3.0


def _time_settings(model: nn.Module, inputs: tuple[Any, ...], names: list[str]) -> dict[str, float]:
    """Median forward ms of ``model`` under each setting of ``names`` (keys of :data:`SETTINGS`), interleaved.

    Each round visits the memory formats in turn (the order reversed every other round), converts the model,
    runs one untimed call (weights just converted, packed weights rebuilt), then times one call per fused
    setting of that format (also in alternating order): neither a slow phase of the machine nor the cache state
    one setting leaves behind favours another. The model is left in the last setting timed."""
    cuda = any(t.is_cuda for t in _flatten(list(inputs)))
    layouts: dict[bool, list[str]] = {}
    for n in names:
        layouts.setdefault(SETTINGS[n][0], []).append(n)
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    with torch.no_grad():
        for r in range(TUNE_ROUNDS[1]):
            if r >= TUNE_ROUNDS[0] and time.perf_counter() - start > TUNE_BUDGET_S:
                break
            for cl in sorted(layouts, reverse=bool(r % 2)):
                set_channels_last(model, cl)
                model(*inputs)  # warm-up after the conversion
                group = layouts[cl] if r % 2 == 0 else layouts[cl][::-1]
                for n in group:
                    set_fused_conv_act(model, SETTINGS[n][1])
                    if cuda:
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    model(*inputs)
                    if cuda:
                        torch.cuda.synchronize()
                    times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(t) * 1e3 for n, t in times.items()}


def deploy(
    model: nn.Module,
    example_inputs: Any = None,
    channels_last: bool | None = None,
    check: bool = True,
    rtol: float = 1e-4,
    fused: bool | None = None,
) -> nn.Module:
    """Return a deployment copy of ``model``: re-parameterised, Conv+BN folded, fusion weights frozen, in eval.

    Steps, all explicit module transformations on a deep copy (the original is untouched):
    :func:`reparameterize`, :func:`fuse_conv_bn`, :func:`freeze_fusions`, then the memory format.

    ``example_inputs``: a ``tuple`` is the positional arguments of ``model(...)``; anything else (a tensor, a
    list of tensors for a neck, a dict) is its single argument. When omitted and the model has ``in_specs``
    (every necklace neck), a random pyramid at odd sizes derived from a 97x131 image is used.

    ``channels_last``: ``True``/``False`` forces the memory format; ``None`` times both on the example inputs
    and keeps the faster (contiguous when there are no inputs).

    ``fused``: whether conv + activation run as one oneDNN call on channels_last maps
    (:func:`necklace.layers.fused.set_fused_conv_act`; it pays on some CPUs, not on others); ``None`` times both
    on the example inputs (together with the memory format when that is ``None`` too) and keeps the faster.
    Timing runs interleaved rounds (at least 5, at most 15, within about 3 s), so pass inputs of the size you
    deploy for.

    ``check``: compare the deployed outputs with the original's and raise ``RuntimeError`` when the relative
    difference (``max|diff| / max|original|`` per output) exceeds ``rtol``; without any inputs it warns.

    The result is the deployed module (same class as ``model``); the :class:`DeployReport` is its
    ``deploy_report`` attribute. Raises ``ValueError`` if any module of ``model`` is in training mode.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU()).eval()
        >>> d = deploy(m, torch.randn(1, 3, 11, 13))
        >>> d.deploy_report.folded_bn, d.deploy_report.max_rel_diff < 1e-5
        (1, True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"deploy expects an nn.Module, got {type(model).__name__}.")
    _require_eval(model, "deploy")
    deployed = copy.deepcopy(model)
    with torch.no_grad():
        n_rep = reparameterize(deployed)
        n_bn = _fold_all(deployed)
        n_frozen = freeze_fusions(deployed)
    deployed.eval()

    if example_inputs is None:
        inputs = _auto_inputs(model)
    else:
        inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)

    has_fused = bool(fused_act_modules(deployed))
    candidates = [
        name
        for name, (cl, fuse) in SETTINGS.items()
        if (channels_last is None or cl == channels_last)
        and (fused is None or fuse == fused or not cl)
        and (has_fused or fuse)
    ]
    latency: dict[str, float] | None = None
    set_channels_last(deployed, False)  # start from contiguous, also when the model was deployed before
    if len(candidates) > 1 and inputs is not None:
        latency = _time_settings(deployed, inputs, candidates)
        use_cl, use_fused = SETTINGS[min(latency, key=latency.__getitem__)]
    else:
        use_cl = bool(channels_last)
        use_fused = True if fused is None else bool(fused)
    set_channels_last(deployed, use_cl)
    set_fused_conv_act(deployed, use_fused)

    max_abs = max_rel = None
    if check and inputs is None:
        warnings.warn(
            "deploy: no example_inputs and the model has no in_specs, so the outputs were not checked; pass "
            "example_inputs to verify the deployed model.",
            stacklevel=2,
        )
    elif check and inputs is not None:
        with torch.no_grad():
            max_abs, max_rel = _compare(model(*inputs), deployed(*inputs))
        if not max_rel <= rtol:
            raise RuntimeError(
                f"deploy: the deployed model differs from the original: max abs diff {max_abs:.3g}, max relative "
                f"diff {max_rel:.3g} > rtol {rtol:g}. A block may change behaviour when fused (e.g. a custom "
                "reparameterize()), or the precision is too low for this rtol."
            )
    report = DeployReport(n_rep, n_bn, n_frozen, use_cl, max_abs, max_rel, latency, use_fused if has_fused else None)
    object.__setattr__(deployed, "deploy_report", report)
    return deployed
