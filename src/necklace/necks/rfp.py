"""DetectoRS' recursive feature pyramid (Qiao et al., CVPR 2021): an image -> pyramid module around a backbone and
a graph neck.

RFP is not a ``list[Tensor] -> list[Tensor]`` neck: it feeds the neck's outputs back into the backbone, so it
needs the backbone itself. It is therefore **not registered** in the neck registry (which builds necks from
``in_specs`` alone); build it directly::

    from necklace.necks import RecursiveFPN
    model = RecursiveFPN(torchvision.models.resnet50(weights=...), steps=2, width=256, levels=(2, 6))
    pyramid = model(images)  # list[Tensor], model.out_specs

Backbone protocol (:class:`FeedbackBackbone`): a ``stem`` (image -> input of the first stage, max-pool included)
and a list of ``stages`` (``nn.Sequential`` of residual blocks), each stage's output being one pyramid level.
Feedback enters the **first block** of a stage, added after the residual sum and before the block's final
activation (``relu(F(x) + shortcut(x) + rfp_conv(feedback))``), like mmdet's ``DetectoRS_ResNet``. A block type
is supported when :func:`register_feedback_block` knows how to compute its pre-activation residual sum and which
attribute holds its final activation; torchvision's, timm's and mmdet's ``BasicBlock``/``Bottleneck`` are
built in. :meth:`FeedbackBackbone.from_resnet` takes a torchvision / timm / mmdet ``ResNet`` (or ResNeXt,
Wide-ResNet, ...: anything with ``conv1, bn1/norm1, relu/act1, maxpool, layer1..layer4``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from necklace.checks import is_int
from necklace.layers.aspp import ASPP
from necklace.layers.sac import convert_to_aws, convert_to_sac
from necklace.necks.fpn import fpn
from necklace.registry import neck_info
from necklace.spec import FeatureSpec

__all__ = [
    "FeedbackBackbone",
    "FeedbackBlock",
    "RecursiveFPN",
    "register_feedback_block",
    "sac_backbone",
]

ResidualFn = Callable[[Any, Tensor], Tensor]

#: dotted class name -> (residual sum before the final activation, attribute holding the final activation)
_FEEDBACK_BLOCKS: dict[str, tuple[ResidualFn, str]] = {}


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_feedback_block(block_type: type | str, residual: ResidualFn, activation: str) -> None:
    """Teach :class:`FeedbackBlock` a residual block type (a class, or its dotted name to avoid importing it).

    ``residual(block, x)`` must return the block's output *before* its final activation (residual branch +
    shortcut); ``activation`` names the attribute holding that final activation (used once, at the end).
    Subclasses of a registered type are covered. Registering a name again replaces the entry.

    Example:
        >>> class Block(nn.Module):
        ...     def __init__(self, c):
        ...         super().__init__()
        ...         self.conv, self.act = nn.Conv2d(c, c, 3, padding=1), nn.ReLU()
        ...     def forward(self, x):
        ...         return self.act(self.conv(x) + x)
        >>> register_feedback_block(Block, lambda b, x: b.conv(x) + x, "act")
        >>> blk = FeedbackBlock(Block(8), feedback_channels=4, out_channels=8)
        >>> blk(torch.randn(1, 8, 5, 5), torch.randn(1, 4, 5, 5)).shape
        torch.Size([1, 8, 5, 5])
    """
    name = block_type if isinstance(block_type, str) else _dotted(block_type)
    _FEEDBACK_BLOCKS[name] = (residual, activation)


def _lookup(block: nn.Module) -> tuple[ResidualFn, str]:
    for cls in type(block).__mro__:
        entry = _FEEDBACK_BLOCKS.get(_dotted(cls))
        if entry is not None:
            return entry
    raise TypeError(
        f"RFP feedback: block type {_dotted(type(block))} is not known. Register it with "
        "necklace.necks.rfp.register_feedback_block(cls, residual=lambda block, x: <sum before the final "
        "activation>, activation='<attribute of the final activation>'). Known: "
        f"{sorted(_FEEDBACK_BLOCKS)}."
    )


# --------------------------------------------------------------------------- built-in residual blocks
def _tv_basic(b: Any, x: Tensor) -> Tensor:
    out = b.bn2(b.conv2(b.relu(b.bn1(b.conv1(x)))))
    return out + (x if b.downsample is None else b.downsample(x))


def _tv_bottleneck(b: Any, x: Tensor) -> Tensor:
    out = b.relu(b.bn1(b.conv1(x)))
    out = b.relu(b.bn2(b.conv2(out)))
    out = b.bn3(b.conv3(out))
    return out + (x if b.downsample is None else b.downsample(x))


def _timm_tail(b: Any, out: Tensor, x: Tensor) -> Tensor:
    if b.se is not None:
        out = b.se(out)
    if b.drop_path is not None:
        out = b.drop_path(out)
    return out + (x if b.downsample is None else b.downsample(x))


def _timm_basic(b: Any, x: Tensor) -> Tensor:
    out = b.aa(b.act1(b.drop_block(b.bn1(b.conv1(x)))))
    return _timm_tail(b, b.bn2(b.conv2(out)), x)


def _timm_bottleneck(b: Any, x: Tensor) -> Tensor:
    out = b.act1(b.bn1(b.conv1(x)))
    out = b.aa(b.act2(b.drop_block(b.bn2(b.conv2(out)))))
    return _timm_tail(b, b.bn3(b.conv3(out)), x)


def _mmdet_check(b: Any) -> None:
    if getattr(b, "with_plugins", False):
        raise ValueError("RFP feedback does not support mmdet ResNet blocks with plugins.")


def _mmdet_basic(b: Any, x: Tensor) -> Tensor:
    _mmdet_check(b)
    out = b.norm2(b.conv2(b.relu(b.norm1(b.conv1(x)))))
    return out + (x if b.downsample is None else b.downsample(x))


def _mmdet_bottleneck(b: Any, x: Tensor) -> Tensor:
    _mmdet_check(b)
    out = b.relu(b.norm1(b.conv1(x)))
    out = b.relu(b.norm2(b.conv2(out)))
    out = b.norm3(b.conv3(out))
    return out + (x if b.downsample is None else b.downsample(x))


register_feedback_block("torchvision.models.resnet.BasicBlock", _tv_basic, "relu")
register_feedback_block("torchvision.models.resnet.Bottleneck", _tv_bottleneck, "relu")
register_feedback_block("timm.models.resnet.BasicBlock", _timm_basic, "act2")
register_feedback_block("timm.models.resnet.Bottleneck", _timm_bottleneck, "act3")
register_feedback_block("mmdet.models.backbones.resnet.BasicBlock", _mmdet_basic, "relu")
register_feedback_block("mmdet.models.backbones.resnet.Bottleneck", _mmdet_bottleneck, "relu")


class FeedbackBlock(nn.Module):
    """A residual block that adds ``rfp_conv(feedback)`` after its residual sum, before its final activation.

    ``rfp_conv`` is a 1x1 conv with bias (``feedback_channels -> out_channels``), zero-initialised as in the
    official DetectoRS code and mmdet 2.x (mmdet 3.x declares it but never applies it). Without feedback the
    wrapped block runs unchanged. The wrapped block's type must be known (:func:`register_feedback_block`).

    Example:
        >>> from torchvision.models.resnet import BasicBlock
        >>> blk = FeedbackBlock(BasicBlock(16, 16), feedback_channels=8, out_channels=16).eval()
        >>> x, fb = torch.randn(1, 16, 6, 6), torch.randn(1, 8, 6, 6)
        >>> torch.equal(blk(x, fb), blk.block(x))  # rfp_conv starts at zero
        True
    """

    def __init__(self, block: nn.Module, feedback_channels: int, out_channels: int) -> None:
        super().__init__()
        self._residual, self._activation = _lookup(block)
        self.block = block
        self.rfp_conv = nn.Conv2d(feedback_channels, out_channels, 1, bias=True)
        _zero(self.rfp_conv)

    def forward(self, x: Tensor, feedback: Tensor | None = None) -> Tensor:
        if feedback is None:
            return self.block(x)
        out = self._residual(self.block, x) + self.rfp_conv(feedback)  # (N, C_out, H, W)
        return getattr(self.block, self._activation)(out)


def _zero(conv: nn.Conv2d) -> None:
    with torch.no_grad():
        conv.weight.zero_()
        if conv.bias is not None:
            conv.bias.zero_()


def _probe_specs(stem: nn.Module, stages: Sequence[nn.Module], in_channels: int, size: int = 128) -> list[FeatureSpec]:
    params = list(stem.parameters()) + [p for s in stages for p in s.parameters()]
    ref = params[0] if params else torch.empty(0)
    modes = [(m, m.training) for s in (stem, *stages) for m in s.modules()]
    try:
        for m, _ in modes:
            m.training = False
        with torch.no_grad():
            x = torch.zeros(1, in_channels, size, size, device=ref.device, dtype=ref.dtype)
            x = stem(x)
            specs = []
            for i, stage in enumerate(stages):
                x = stage(x)
                stride = size / x.shape[-1]
                if stride < 1 or abs(stride - 2 ** round(math.log2(stride))) > 1e-6:
                    raise ValueError(
                        f"FeedbackBackbone: stage {i} maps a {size}x{size} image to {tuple(x.shape)}, not a power-"
                        "of-two stride; pass out_specs explicitly."
                    )
                specs.append(FeatureSpec(int(x.shape[1]), round(stride)))
    finally:
        for m, mode in modes:
            m.training = mode
    return specs


def _first_conv_in_channels(module: nn.Module) -> int:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


class FeedbackBackbone(nn.Module):
    """A ResNet-style backbone as ``stem`` + ``stages`` whose stages' first blocks can take RFP feedback.

    ``forward(x, feedback=None)`` returns one map per stage (highest resolution first); ``feedback`` is ``None``
    or one entry per stage (a tensor at that stage's output size with :attr:`feedback_channels` channels, or
    ``None``). :meth:`add_feedback` wraps the first block of the chosen stages in :class:`FeedbackBlock`;
    ``out_specs`` are probed with one 128x128 forward in eval mode unless given. The modules passed in are
    used, not copied.

    Example:
        >>> from torchvision.models.resnet import BasicBlock, ResNet
        >>> bb = FeedbackBackbone.from_resnet(ResNet(BasicBlock, [1, 1, 1, 1]))
        >>> [(s.channels, s.stride) for s in bb.out_specs]
        [(64, 4), (128, 8), (256, 16), (512, 32)]
        >>> bb.add_feedback(32, stages=(1, 2, 3))
        >>> img = torch.randn(1, 3, 64, 64)
        >>> fb = [None] + [torch.randn(1, 32, 64 // s.stride, 64 // s.stride) for s in bb.out_specs[1:]]
        >>> [tuple(c.shape[1:]) for c in bb(img, fb)]
        [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        out_specs: Sequence[FeatureSpec] | None = None,
        in_channels: int | None = None,
    ) -> None:
        super().__init__()
        if len(stages) == 0:
            raise ValueError("FeedbackBackbone needs at least one stage.")
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.in_channels = in_channels or _first_conv_in_channels(stem)
        specs = list(out_specs) if out_specs is not None else _probe_specs(stem, stages, self.in_channels)
        if len(specs) != len(stages):
            raise ValueError(f"FeedbackBackbone: {len(stages)} stages but {len(specs)} out_specs.")
        self.out_specs: tuple[FeatureSpec, ...] = tuple(specs)
        self.feedback_stages: tuple[int, ...] = ()
        self.feedback_channels: int | None = None

    @classmethod
    def from_resnet(cls, model: nn.Module, out_specs: Sequence[FeatureSpec] | None = None) -> FeedbackBackbone:
        """Stem ``conv1, bn1|norm1, relu|act1, maxpool`` and stages ``layer1..layer4`` of a torchvision / timm /
        mmdet ResNet (the classifier head is left out). The model's modules are shared, not copied."""
        m: Any = model
        missing = [a for a in ("conv1", "maxpool", "layer1") if not hasattr(m, a)]
        if missing:
            raise TypeError(
                f"FeedbackBackbone.from_resnet: {type(model).__name__} lacks {missing}; pass a torchvision/timm/"
                "mmdet ResNet (e.g. torchvision.models.resnet50()), or build FeedbackBackbone(stem, stages)."
            )
        norm = next((getattr(m, a) for a in ("bn1", "norm1") if hasattr(m, a)), nn.Identity())
        act = next((getattr(m, a) for a in ("relu", "act1") if hasattr(m, a)), nn.Identity())
        stem = nn.Sequential(m.conv1, norm, act, m.maxpool)
        stages = []
        i = 1
        while hasattr(m, f"layer{i}"):
            stages.append(getattr(m, f"layer{i}"))
            i += 1
        return cls(stem, stages, out_specs)

    def add_feedback(self, channels: int, stages: Sequence[int]) -> None:
        """Wrap the first block of each stage index in ``stages`` (0-based) in a :class:`FeedbackBlock`."""
        if self.feedback_stages:
            raise ValueError(f"feedback is already attached to stages {self.feedback_stages}.")
        for i in stages:
            if not 0 <= i < len(self.stages):
                raise ValueError(f"feedback stage {i} is outside 0..{len(self.stages) - 1}.")
            stage = self.stages[i]
            if not isinstance(stage, nn.Sequential) or len(stage) == 0:
                raise TypeError(f"stage {i} must be a non-empty nn.Sequential of blocks, got {type(stage).__name__}.")
            stage[0] = FeedbackBlock(stage[0], channels, self.out_specs[i].channels)
        self.feedback_stages = tuple(stages)
        self.feedback_channels = channels

    def _stage(self, i: int, x: Tensor, feedback: Tensor | None) -> Tensor:
        stage: Any = self.stages[i]
        for j, block in enumerate(stage):
            x = block(x, feedback) if j == 0 and feedback is not None else block(x)
        return x

    def forward(
        self, x: Tensor, feedback: Sequence[Tensor | None] | None = None, grad_checkpoint: bool = False
    ) -> list[Tensor]:
        if feedback is not None:
            if len(feedback) != len(self.stages):
                raise ValueError(f"feedback must have one entry per stage ({len(self.stages)}), got {len(feedback)}.")
            bad = [i for i, f in enumerate(feedback) if f is not None and i not in self.feedback_stages]
            if bad:
                raise ValueError(f"feedback given for stages {bad}, which have no feedback conv (add_feedback).")
        x = self.stem(x)
        outs = []
        for i in range(len(self.stages)):
            fb = None if feedback is None else feedback[i]
            if grad_checkpoint and torch.is_grad_enabled():
                x = checkpoint(self._stage, i, x, fb, use_reentrant=False)
            else:
                x = self._stage(i, x, fb)
            outs.append(x)  # (N, C_i, H / s_i, W / s_i)
        return outs


def _stages_of(model: nn.Module, stages: Sequence[int]) -> list[nn.Module]:
    if isinstance(model, FeedbackBackbone):
        return [model.stages[k - 1] for k in stages]
    missing = [k for k in stages if not hasattr(model, f"layer{k}")]
    if missing:
        raise TypeError(f"{type(model).__name__} has no layer{missing[0]}; pass a ResNet or a FeedbackBackbone.")
    return [getattr(model, f"layer{k}") for k in stages]


def sac_backbone(
    model: nn.Module, stages: Sequence[int] = (2, 3, 4), use_deform: bool = False, aws: bool = False
) -> nn.Module:
    """Swap the 3x3 convs of ResNet stages ``stages`` (1-based: ``layer2..layer4``, DetectoRS'
    ``stage_with_sac=(F, T, T, T)``) for :class:`~necklace.layers.sac.SAConv2d`, keeping their weights: at init
    the model computes the same function. ``aws=True`` also turns every other ``nn.Conv2d`` of the model into
    :class:`~necklace.layers.sac.ConvAWS2d` (DetectoRS' ``conv_cfg=ConvAWS``; also function-preserving).

    In a Bottleneck only ``conv2`` is 3x3 (as mmdet's SAC); in a BasicBlock both convs are. Works in place on a
    torchvision / timm / mmdet ResNet (``layer<k>``) or a :class:`FeedbackBackbone`, and returns the model.

    Example:
        >>> from torchvision.models.resnet import BasicBlock, ResNet
        >>> net = ResNet(BasicBlock, [1, 1, 1, 1]).eval()
        >>> x = torch.randn(1, 3, 64, 64); before = net(x)
        >>> _ = sac_backbone(net)
        >>> type(net.layer2[0].conv1).__name__, torch.allclose(net(x), before, atol=1e-4)
        ('SAConv2d', True)
    """
    for stage in _stages_of(model, stages):
        convert_to_sac(stage, use_deform=use_deform)
    if aws:
        convert_to_aws(model, skip_names=("rfp_conv",))
    return model


class RecursiveFPN(nn.Module):
    """Recursive feature pyramid: backbone + neck unrolled ``steps`` times, each neck output fed back to the
    backbone through a shared ASPP, steps fused by a learned sigmoid gate (DetectoRS; mmdet ``RFP``).

    Step 1: ``x = neck(backbone(img))``. Step t > 1: feedback ``ASPP(x_s)`` for each feedback stage (by default
    every stage but the first whose stride the neck outputs: ResNet stages 2-4 get ``ASPP(P3..P5)``), added in
    the first block of that stage (:class:`FeedbackBlock`; ``feedback_stages`` overrides, 0-based stage
    indices); ``x_t = neck(backbone_t(img, feedback))`` with the **same** neck weights; then per level
    ``w = sigmoid(rfp_weight(x_t))`` and ``x = w * x_t + (1 - w) * x``
    (``rfp_weight``: a shared 1x1 conv ``C -> 1``, zero-initialised, so training starts from the mean of the
    steps; gate and blend run in float32). The output is ``x`` after the last step.

    **Backbones:** as mmdet (``rfp_backbone``) and the official ``rfp_sharing=False``, each extra step runs a
    **separate deep copy** of the backbone (made at construction, so it starts with the same, e.g. pretrained,
    weights and then trains on its own; only the copies get the feedback convs). This costs ``steps`` x the
    backbone's parameters and, in training, about ``steps`` x its activation memory plus ``steps`` x the neck's
    (DetectoRS HTC-R50 does not fit 11 GB at one image per GPU: mmdet #3863). ``share_backbone=True`` (the
    official ``rfp_sharing=True``) reuses one backbone for every step instead; ``grad_checkpoint=True``
    recomputes each backbone stage in the backward pass (less memory, ~1 more backbone forward; BatchNorm in
    training mode then updates its running statistics twice per step).

    ``backbone``: a :class:`FeedbackBackbone` or a torchvision / timm / mmdet ResNet (see the module docstring for
    the protocol); its modules are used, not copied, for step 1. ``neck``: any ``list -> list`` neck with
    ``in_specs``/``out_specs`` whose in-strides are backbone strides and whose outputs at the feedback strides
    share one width (default: ``necklace.necks.fpn(backbone.out_specs, **fpn_options)``, e.g. ``width=256,
    levels=(2, 6)`` for DetectoRS' P2-P6). ``aspp_out_channels`` defaults to ``width // 4`` (DetectoRS: 64, giving
    4 x 64 = 256 feedback channels). ``use_sac`` applies :func:`sac_backbone` (stages 2-4, ``sac_deform`` for
    the deformable SAC of the DetectoRS configs, ``aws`` for ConvAWS everywhere) before the copies are made.

    ``forward(images) -> list[Tensor]`` (``out_specs`` = the neck's); :meth:`unrolled` also returns every step's
    un-fused neck outputs. With ``steps > 2`` the fusion is sequential, so a zero gate gives
    ``(x_1 / 2 + x_2 / 2) / 2 + x_3 / 2``, not the mean of three steps.

    Example:
        >>> from torchvision.models.resnet import BasicBlock, ResNet
        >>> rfp = RecursiveFPN(ResNet(BasicBlock, [1, 1, 1, 1]), steps=2, width=32, levels=(2, 6))
        >>> [(s.channels, s.stride) for s in rfp.out_specs]
        [(32, 4), (32, 8), (32, 16), (32, 32), (32, 64)]
        >>> [tuple(p.shape[-2:]) for p in rfp(torch.randn(1, 3, 64, 96))]
        [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
        >>> rfp.feedback_strides, rfp.rfp_aspp.out_channels
        ((8, 16, 32), 32)
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module | None = None,
        steps: int = 2,
        aspp_out_channels: int | None = None,
        aspp_dilations: Sequence[int] = (1, 3, 6, 1),
        use_sac: bool = False,
        sac_deform: bool = False,
        aws: bool = False,
        share_backbone: bool = False,
        grad_checkpoint: bool = False,
        feedback_stages: Sequence[int] | None = None,
        **fpn_options: Any,
    ) -> None:
        super().__init__()
        if not is_int(steps) or steps < 1:
            raise ValueError(f"RecursiveFPN steps must be an int >= 1 (DetectoRS: 2), got {steps!r}.")
        steps = int(steps)
        bb = backbone if isinstance(backbone, FeedbackBackbone) else FeedbackBackbone.from_resnet(backbone)
        if use_sac:
            sac_backbone(bb, use_deform=sac_deform, aws=aws)
        elif aws:
            convert_to_aws(bb, skip_names=("rfp_conv",))
        if neck is None:  # (the options checked against FPN's typed options, as build_neck does)
            neck = fpn(bb.out_specs, **neck_info("fpn").check_options(fpn_options))
        elif fpn_options:
            raise TypeError(f"RecursiveFPN: FPN options {sorted(fpn_options)} given together with a built neck.")
        in_specs = getattr(neck, "in_specs", None)
        out_specs = getattr(neck, "out_specs", None)
        if in_specs is None or out_specs is None:
            raise TypeError("RecursiveFPN: the neck must expose in_specs and out_specs (e.g. a necklace GraphNeck).")
        by_stride = {s.stride: i for i, s in enumerate(bb.out_specs)}
        self._in_index: list[int] = []
        for s in in_specs:
            i = by_stride.get(s.stride)
            if i is None or bb.out_specs[i].channels != s.channels:
                raise ValueError(
                    f"RecursiveFPN: the neck expects {s} but the backbone gives {list(bb.out_specs)}; build the neck "
                    "from (a consecutive subset of) backbone.out_specs."
                )
            self._in_index.append(i)
        out_strides = [s.stride for s in out_specs]
        if feedback_stages is None:
            feedback_stages = [i for i, s in enumerate(bb.out_specs) if i > 0 and s.stride in out_strides]
        feedback_stages = tuple(int(i) for i in feedback_stages)
        self._fb_out_index: list[tuple[int, int]] = []  # (stage, neck output index)
        for i in feedback_stages:
            if not 0 <= i < len(bb.out_specs) or bb.out_specs[i].stride not in out_strides:
                raise ValueError(
                    f"RecursiveFPN: feedback stage {i} needs a neck output at its stride; stage strides "
                    f"{[s.stride for s in bb.out_specs]}, neck output strides {out_strides}."
                )
            self._fb_out_index.append((i, out_strides.index(bb.out_specs[i].stride)))
        widths = {out_specs[j].channels for _, j in self._fb_out_index}
        if steps > 1 and len(widths) != 1:
            raise ValueError(
                f"RecursiveFPN: the neck outputs fed back need one shared width for the shared ASPP, got {widths}."
            )
        if len(set(s.channels for s in out_specs)) != 1:
            raise ValueError("RecursiveFPN: the step-fusion gate needs every neck output at one width.")
        self.steps = steps
        self.share_backbone = share_backbone
        self.grad_checkpoint = grad_checkpoint
        self.backbone = bb
        self.neck = neck
        self.out_specs: tuple[FeatureSpec, ...] = tuple(out_specs)
        self.feedback_strides: tuple[int, ...] = tuple(bb.out_specs[i].stride for i in feedback_stages)
        self.rfp_backbones = nn.ModuleList()
        if steps > 1:
            width = out_specs[0].channels
            branch = aspp_out_channels or max(1, width // 4)
            self.rfp_aspp: ASPP | None = ASPP(next(iter(widths)), branch, aspp_dilations)
            self.rfp_weight: nn.Conv2d | None = nn.Conv2d(width, 1, 1, bias=True)
            _zero(self.rfp_weight)
            if share_backbone:
                bb.add_feedback(self.rfp_aspp.out_channels, feedback_stages)
            else:
                for _ in range(steps - 1):
                    copy_ = copy.deepcopy(bb)
                    copy_.add_feedback(self.rfp_aspp.out_channels, feedback_stages)
                    self.rfp_backbones.append(copy_)
        else:
            self.rfp_aspp = None
            self.rfp_weight = None

    def _backbone_step(self, t: int, images: Tensor, feedback: list[Tensor | None] | None) -> list[Tensor]:
        module = self.backbone if t == 0 or self.share_backbone else self.rfp_backbones[t - 1]
        feats = module(images, feedback, grad_checkpoint=self.grad_checkpoint and self.training)
        return [feats[i] for i in self._in_index]

    def feedback(self, pyramid: Sequence[Tensor]) -> list[Tensor | None]:
        """Backbone feedback from a pyramid: ``ASPP(P_s)`` for each feedback stage, ``None`` for the others."""
        if self.rfp_aspp is None:
            raise ValueError("RecursiveFPN with steps=1 has no feedback path.")
        fb: list[Tensor | None] = [None] * len(self.backbone.stages)
        for stage, j in self._fb_out_index:
            fb[stage] = self.rfp_aspp(pyramid[j])  # (N, 4 * C_aspp, H_s, W_s)
        return fb

    def fuse(self, new: Sequence[Tensor], old: Sequence[Tensor]) -> list[Tensor]:
        """``w * new + (1 - w) * old`` per level, ``w = sigmoid(rfp_weight(new))`` (float32 gate and blend)."""
        if self.rfp_weight is None:
            raise ValueError("RecursiveFPN with steps=1 has no fusion gate.")
        out = []
        for n, o in zip(new, old, strict=True):
            w = torch.sigmoid(self.rfp_weight(n).float())  # (N, 1, H, W)
            out.append((w * n.float() + (1 - w) * o.float()).to(n.dtype))
        return out

    def unrolled(self, images: Tensor) -> tuple[list[list[Tensor]], list[Tensor]]:
        """``(steps_outputs, fused)``: each step's neck output before fusion, and the final (fused) pyramid."""
        return self._run(images, keep_steps=True)

    def _run(self, images: Tensor, keep_steps: bool) -> tuple[list[list[Tensor]], list[Tensor]]:
        x = self.neck(self._backbone_step(0, images, None))
        steps = [x] if keep_steps else []
        for t in range(1, self.steps):
            new = self.neck(self._backbone_step(t, images, self.feedback(x)))
            if keep_steps:
                steps.append(new)
            x = self.fuse(new, x)
        return steps, x

    def forward(self, images: Tensor) -> list[Tensor]:
        return self._run(images, keep_steps=False)[1]
