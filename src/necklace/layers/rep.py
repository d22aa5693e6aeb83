"""Re-parameterisable and light refine blocks: RepVGG-style ``RepConv``, ``RepBlock``, ``GhostConv``, BN folding.

Re-parameterisation is an explicit transformation (DESIGN habit 8): :meth:`RepConv.reparameterize` replaces
the training branches by one 3x3 conv with bias, and :func:`necklace.deploy.deploy` runs it (plus Conv+BN
folding) on a copy of a whole model and checks the outputs are unchanged. ``forward`` is never patched.

The order matters (seed reference §4.1, YOLOv6's gotcha): each branch's BatchNorm is folded into *its own*
kernel first, and only then are the branches summed. Summing raw kernels and folding one BN afterwards is wrong.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from necklace.layers.conv import ConvCfg, ConvNormAct, make_act
from necklace.layers.fold import fold_bn, fold_bn_into_conv

__all__ = ["BepC3", "BottleRep", "GhostConv", "RepBlock", "RepConv", "fold_bn", "fold_bn_into_conv", "require_bn"]


def require_bn(cfg: ConvCfg, what: str) -> None:
    """Raise a ``ValueError`` unless ``cfg.norm == 'bn'`` (re-parameterisation folds BatchNorm statistics)."""
    if cfg.norm != "bn":
        raise ValueError(
            f"{what} needs norm='bn' (its branches are re-parameterised by folding BatchNorm statistics), got "
            f"norm={cfg.norm!r}. Set the graph's conv=ConvCfg(norm='bn', ...) or pass block_args={{'norm': 'bn'}}."
        )
    if cfg.padding != "symmetric":
        raise ValueError(f"{what} supports padding='symmetric' only, got {cfg.padding!r}.")


def _branch_kernel_bias(branch: ConvNormAct) -> tuple[Tensor, Tensor]:
    """A conv+BN branch as one ``(weight, bias)``: the BN folded in, or the bias of an already fused conv."""
    conv, norm = branch.conv, branch.norm
    if isinstance(norm, _BatchNorm):
        return fold_bn(conv.weight, conv.bias, norm)
    if not isinstance(norm, nn.Identity):
        raise TypeError(f"cannot re-parameterise a branch normalised by {type(norm).__name__}.")
    bias = conv.bias if conv.bias is not None else torch.zeros_like(conv.weight[:, 0, 0, 0])
    return conv.weight.detach(), bias.detach()


class RepConv(nn.Module):
    """RepVGG block: ``act(BN(conv3x3(x)) + alpha * BN(conv1x1(x)) [+ BN(x)])``, re-parameterisable to one conv.

    Branches: a 3x3 conv+BN (``conv_kxk``), a 1x1 conv+BN (``conv_1x1``, scaled by the learnable scalar
    ``alpha`` when ``alpha=True``, PP-YOLOE's ``RepVggBlock``), and an identity BN (``identity``) when
    ``identity=True`` and the shapes allow it (``in == out`` and ``stride == 1``; YOLOv6's ``RepVGGBlock``; use
    ``identity=False`` for Ultralytics' ``RepConv`` and PP-YOLOE). The activation comes after the sum.

    :meth:`reparameterize` folds every branch's BN into its own kernel first, then sums the branches into
    ``conv`` (one 3x3 conv with bias). ``deploy=True`` builds that fused structure directly, so a state dict
    saved after :meth:`reparameterize` loads without the training branches. ``cfg.norm`` must be ``'bn'``;
    ``cfg.act`` is the activation (default ``ConvCfg(norm='bn', act='relu')``).

    Example:
        >>> m = RepConv(16, 16, alpha=True).eval()
        >>> x = torch.randn(1, 16, 9, 11)
        >>> y = m(x)
        >>> m.reparameterize()
        >>> sorted(n for n, _ in m.named_children())
        ['act', 'conv']
        >>> torch.allclose(m(x), y, atol=1e-5), tuple(y.shape)
        (True, (1, 16, 9, 11))
        >>> RepConv(16, 32, stride=2)(x).shape
        torch.Size([1, 32, 5, 6])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        groups: int = 1,
        cfg: ConvCfg | None = None,
        identity: bool = True,
        alpha: bool = False,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else ConvCfg(norm="bn", act="relu")
        require_bn(cfg, "RepConv")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"RepConv: channels {in_channels} -> {out_channels} are not divisible by groups={groups}.")
        self.in_channels, self.out_channels, self.stride, self.groups = in_channels, out_channels, stride, groups
        self.has_identity = identity and in_channels == out_channels and stride == 1
        self.has_alpha = alpha
        self.act = make_act(cfg.act)
        self.conv: nn.Conv2d | None = None
        self.conv_kxk: ConvNormAct | None = None
        self.conv_1x1: ConvNormAct | None = None
        self.identity: nn.BatchNorm2d | None = None
        self.alpha: nn.Parameter | None = None
        if deploy:
            self.conv = nn.Conv2d(in_channels, out_channels, 3, stride, 1, groups=groups, bias=True)
            return
        branch = cfg.with_(act=None, bias=False)
        self.conv_kxk = ConvNormAct(in_channels, out_channels, 3, stride, groups, cfg=branch)
        self.conv_1x1 = ConvNormAct(in_channels, out_channels, 1, stride, groups, cfg=branch)
        if self.has_identity:
            self.identity = nn.BatchNorm2d(out_channels, eps=cfg.norm_eps, momentum=cfg.norm_momentum)
        if alpha:
            self.alpha = nn.Parameter(torch.ones(1))

    @property
    def deployed(self) -> bool:
        """Whether the block is in its fused (single conv) form."""
        return self.conv is not None

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is not None:
            return self.act(self.conv(x))
        assert self.conv_kxk is not None and self.conv_1x1 is not None
        # YOLOv6's / mmyolo's order (identity, kxk, 1x1): backward runs the branches in reverse, which sets the
        # train-step peak memory (YOLOv6-N neck at 640x640: 28.8 -> 28.4 MB, mmyolo's) and the order x's gradient
        # sums the three branches in (now bit-equal to mmyolo's); the output is the same sum, (kxk + 1x1) + id
        idt = self.identity(x) if self.identity is not None else None
        y = self.conv_kxk(x)
        z = self.conv_1x1(x)
        if self.alpha is not None:
            z = z * self.alpha
        y = y + z  # (N, C_out, ceil(H/s), ceil(W/s))
        if idt is not None:
            y = y + idt
        return self.act(y)

    @torch.no_grad()
    def fused_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The ``(weight, bias)`` of the single 3x3 conv equal to the branches (eval-mode BN statistics).

        Each branch's BN is folded into its own kernel first; the 1x1 kernel is padded to the centre of a 3x3
        and scaled by ``alpha``; the identity is a centred 1 at input channel ``i % (in / groups)``.
        """
        if self.conv is not None:
            bias = self.conv.bias if self.conv.bias is not None else torch.zeros_like(self.conv.weight[:, 0, 0, 0])
            return self.conv.weight.detach().clone(), bias.detach().clone()
        assert self.conv_kxk is not None and self.conv_1x1 is not None
        w3, b3 = _branch_kernel_bias(self.conv_kxk)
        w1, b1 = _branch_kernel_bias(self.conv_1x1)
        if self.alpha is not None:
            a = self.alpha.detach().to(w1.dtype)
            w1, b1 = w1 * a, b1 * a
        weight = w3 + F.pad(w1, [1, 1, 1, 1])
        bias = b3 + b1
        if self.identity is not None:
            per_group = self.in_channels // self.groups
            eye = torch.zeros_like(w3)
            idx = torch.arange(self.out_channels, device=w3.device)
            eye[idx, idx % per_group, 1, 1] = 1.0
            wi, bi = fold_bn(eye, None, self.identity)
            weight, bias = weight + wi, bias + bi
        return weight, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the branches by one 3x3 conv with bias (in place, idempotent; call in ``eval()`` mode).

        BN running statistics are folded, so the result equals the block's eval-mode output.
        """
        if self.conv is not None:
            return
        weight, bias = self.fused_kernel_bias()
        conv = nn.Conv2d(self.in_channels, self.out_channels, 3, self.stride, 1, groups=self.groups, bias=True)
        conv = conv.to(device=weight.device, dtype=weight.dtype).train(self.training)
        conv.weight.copy_(weight)
        assert conv.bias is not None
        conv.bias.copy_(bias)
        self.conv = conv
        self.conv_kxk = None
        self.conv_1x1 = None
        self.identity = None
        self.alpha = None

    def extra_repr(self) -> str:
        s = f"{self.in_channels}->{self.out_channels}, stride={self.stride}"
        if self.groups > 1:
            s += f", groups={self.groups}"
        if self.conv is None:
            s += f", identity={self.has_identity}, alpha={self.has_alpha}"
        return s + (", deployed" if self.conv is not None else "")


class RepBlock(nn.Module):
    """``n`` :class:`RepConv` in sequence, the first ``in -> out``, the rest ``out -> out`` (YOLOv6 ``RepBlock``).

    Example:
        >>> m = RepBlock(16, 32, n=2).eval()
        >>> x = torch.randn(1, 16, 7, 9)
        >>> y = m(x)
        >>> m.reparameterize()
        >>> torch.allclose(m(x), y, atol=1e-5), tuple(y.shape)
        (True, (1, 32, 7, 9))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n: int = 1,
        cfg: ConvCfg | None = None,
        identity: bool = True,
        alpha: bool = False,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"RepBlock needs n >= 1 RepConv blocks, got n={n!r}.")
        self.blocks = nn.Sequential(
            *(
                RepConv(in_channels if i == 0 else out_channels, out_channels, 1, 1, cfg, identity, alpha, deploy)
                for i in range(n)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)

    def reparameterize(self) -> None:
        """Re-parameterise every :class:`RepConv` (see :meth:`RepConv.reparameterize`)."""
        for m in self.blocks:
            if isinstance(m, RepConv):
                m.reparameterize()


BASIC_BLOCKS = ("repconv", "conv")


def _basic_block(kind: str, in_channels: int, out_channels: int, cfg: ConvCfg) -> nn.Module:
    if kind == "repconv":
        return RepConv(in_channels, out_channels, cfg=cfg)
    if kind == "conv":
        return ConvNormAct(in_channels, out_channels, 3, cfg=cfg)
    raise ValueError(f"unknown basic block {kind!r}; choose one of {list(BASIC_BLOCKS)}.")


class BottleRep(nn.Module):
    """YOLOv6 ``BottleRep``: two basic 3x3 blocks and, when ``in == out``, a residual ``y + alpha * x``.

    ``basic='repconv'`` (:class:`RepConv`, YOLOv6-M) or ``'conv'`` (3x3 Conv-BN-act, YOLOv6-L's ``ConvBNSiLU``);
    ``alpha=True`` makes the residual weight a learnable scalar initialised to 1 (YOLOv6's ``weight=True``, used
    inside :class:`BepC3`), otherwise it is the constant 1. ``alpha`` stays a parameter after deployment.

    Example:
        >>> m = BottleRep(16, 16).eval()
        >>> x = torch.randn(1, 16, 7, 9)
        >>> y = m(x)
        >>> m.reparameterize()
        >>> torch.allclose(m(x), y, atol=1e-5), tuple(y.shape)
        (True, (1, 16, 7, 9))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cfg: ConvCfg | None = None,
        basic: str = "repconv",
        alpha: bool = True,
    ) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else ConvCfg(norm="bn", act="relu")
        self.conv1 = _basic_block(basic, in_channels, out_channels, cfg)
        self.conv2 = _basic_block(basic, out_channels, out_channels, cfg)
        self.shortcut = in_channels == out_channels
        self.alpha: nn.Parameter | None = nn.Parameter(torch.ones(1)) if alpha and self.shortcut else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        if not self.shortcut:
            return y
        return y + self.alpha * x if self.alpha is not None else y + x

    def reparameterize(self) -> None:
        """Re-parameterise the :class:`RepConv` basic blocks (the residual and ``alpha`` stay)."""
        for m in (self.conv1, self.conv2):
            if isinstance(m, RepConv):
                m.reparameterize()


class BepC3(nn.Module):
    """YOLOv6 ``BepC3`` (CSPStackRep): a CSP block whose inner path is a stack of :class:`BottleRep`.

    ``cv1``/``cv2`` are 1x1 Conv-BN-act to ``hidden = int(out * expansion)``; ``m`` runs ``max(n // 2, 1)``
    BottleReps (YOLOv6 halves the repeat count for BottleRep stacks) on ``cv1``'s output; ``cv3`` is a 1x1 on the
    concat ``[m(cv1(x)), cv2(x)]``. The activation of ``cfg`` applies to every conv (ReLU in YOLOv6-M, SiLU in
    YOLOv6-L with ``basic='conv'``).

    Example:
        >>> m = BepC3(48, 32, n=4, expansion=0.5).eval()
        >>> len(m.m), tuple(m(torch.randn(1, 48, 7, 9)).shape)
        (2, (1, 32, 7, 9))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n: int = 1,
        expansion: float = 0.5,
        cfg: ConvCfg | None = None,
        basic: str = "repconv",
        alpha: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"BepC3 needs n >= 1, got n={n!r}.")
        cfg = cfg if cfg is not None else ConvCfg(norm="bn", act="relu")
        hidden = int(out_channels * expansion)
        if hidden < 1:
            raise ValueError(f"BepC3: out_channels {out_channels} x expansion {expansion} leaves no hidden channels.")
        self.cv1 = ConvNormAct(in_channels, hidden, 1, cfg=cfg)
        self.cv2 = ConvNormAct(in_channels, hidden, 1, cfg=cfg)
        self.cv3 = ConvNormAct(2 * hidden, out_channels, 1, cfg=cfg)
        self.m = nn.Sequential(*(BottleRep(hidden, hidden, cfg, basic, alpha) for _ in range(max(n // 2, 1))))

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))  # (N, C_out, H, W)


class GhostConv(nn.Module):
    """Ghost convolution (Ultralytics ``GhostConv``): half the channels by a ``kernel`` conv, the other half by a
    5x5 depthwise conv on that half, concatenated. ``out_channels`` must be even.

    Example:
        >>> GhostConv(16, 32, kernel=3)(torch.zeros(1, 16, 9, 11)).shape
        torch.Size([1, 32, 9, 11])
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, cfg: ConvCfg | None = None
    ) -> None:
        super().__init__()
        if out_channels % 2:
            raise ValueError(f"GhostConv needs an even out_channels (two halves), got {out_channels}.")
        hidden = out_channels // 2
        self.cv1 = ConvNormAct(in_channels, hidden, kernel, stride, cfg=cfg)
        self.cv2 = ConvNormAct(hidden, hidden, 5, 1, groups=hidden, cfg=cfg)

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv1(x)  # (N, C_out / 2, H', W')
        return torch.cat((y, self.cv2(y)), dim=1)
