"""1x1 convolutions as GEMMs in the input's own layout, and concatenations that are never built (native runtime).

- :class:`PointwiseConv2d`: a wide 1x1 conv (from :data:`GEMM_MIN_IN_CHANNELS` input channels) as one
  ``addmm`` on the map's own matrix view.
- :class:`PointwiseToChannelsLast`: a lateral 1x1 conv that reads an NCHW backbone map and writes a channels_last
  one in the same GEMM (no layout conversion pass).
- :func:`concat_pointwise`: ``act(conv1x1(cat(parts)))`` without the concatenation (YOLOv8's C2f nodes, C3k2, CSP
  blocks): with the native library, one call of its GEMM over every part (:mod:`necklace.deploy.native.cgemm`: bias
  and activation fused, a nearest-upsampled part multiplied at its own resolution and read through the
  upsampling); otherwise one ``addmm`` per part accumulated into one output.
- :func:`add_pointwise_`: ``acc += conv1x1(x)`` in place (FPN's lateral added into the upsampled map).

All are inference paths (:func:`necklace.deploy.native.guard.inference_paths_off`): under autograd, tracing or
export the modules run ``nn.Conv2d.forward``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from necklace.deploy.native.cgemm import MAX_PARTS, gemm_ready, pack_panels, packed_columns, run_gemm
from necklace.deploy.native.guard import inference_paths_off
from necklace.deploy.native.loader import library as native_library
from necklace.deploy.native.nearest import upsample_nearest
from necklace.layers.conv import ConvNormAct
from necklace.spec import is_symbolic

__all__ = [
    "GEMM_MIN_IN_CHANNELS",
    "PointwiseConv2d",
    "PointwiseToChannelsLast",
    "add_pointwise_",
    "concat_pointwise",
    "pixel_layout",
    "pixel_matrix",
    "pointwise_head_ok",
]


def _gemm_inference(conv: nn.Conv2d, x: Tensor) -> bool:
    """Whether a 1x1 conv's inference call may run as a plain GEMM (autograd off, CPU float, not tracing)."""
    if inference_paths_off():
        return False
    if not isinstance(x, Tensor) or x.dim() != 4 or x.device.type != "cpu" or is_symbolic(*x.shape):
        return False
    return x.dtype in (torch.float32, torch.float64) and conv.weight.dtype == x.dtype and x.numel() > 0


#: the smallest input channel count for which :class:`PointwiseConv2d` runs its GEMM: the wide laterals of
#: ResNet-style backbones (512..2048 -> 256) gain 10-20 %; inside light necks (<= 256 channels, followed by
#: concatenations) the GEMM measured 5 % slower overall than mkldnn's 1x1 conv (YOLOv8n deployed 17.0 vs 16.1 ms)
GEMM_MIN_IN_CHANNELS = 512


class PointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-1 ``Conv2d`` whose inference forward is one GEMM in the input's own layout.

    NCHW input: ``out (O, H*W) = W (O, C) @ x (C, H*W) + b`` (``addmm``; the map already is that matrix);
    channels_last input: ``out (H*W, O) = x (H*W, C) @ W^T + b``, a channels_last output. Measured here against
    mkldnn's 1x1 conv: 512->256 at 80x80 6.4 vs 7.2 ms, 2048->256 at 20x20 1.5 vs 1.9 ms; used from
    :data:`GEMM_MIN_IN_CHANNELS` input channels. Narrower convs, autograd, tracing/export, other dtypes/devices
    and take ``nn.Conv2d.forward``. Same parameters and state
    dict as ``nn.Conv2d``.

    Example:
        >>> conv = PointwiseConv2d(512, 4, 1)
        >>> x = torch.randn(2, 512, 5, 7)
        >>> with torch.no_grad():
        ...     y = conv(x)
        >>> y.shape, torch.allclose(y, nn.functional.conv2d(x, conv.weight, conv.bias), atol=1e-5)
        (torch.Size([2, 4, 5, 7]), True)
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> PointwiseConv2d:
        """Wrap ``conv`` (1x1, stride 1, no padding, groups 1), sharing its weight and bias tensors."""
        if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding != (0, 0) or conv.groups != 1:
            raise ValueError(
                f"{cls.__name__} needs a 1x1 stride-1 unpadded dense conv, got kernel {conv.kernel_size}, "
                f"stride {conv.stride}, padding {conv.padding}, groups {conv.groups}."
            )
        new = cls(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None)
        new.weight = conv.weight
        new.bias = conv.bias
        new.train(conv.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        if self.in_channels < GEMM_MIN_IN_CHANNELS or not _gemm_inference(self, x):
            return super().forward(x)
        n, c, h, w = x.shape
        wt = self.weight.reshape(self.out_channels, c)
        if x.is_contiguous():
            if n == 1:
                xm = x.view(c, h * w)
                out = torch.addmm(self.bias[:, None], wt, xm) if self.bias is not None else torch.mm(wt, xm)
            else:  # one GEMM per image into its slice of the output (a broadcast matmul copies both operands)
                out = x.new_empty((n, self.out_channels, h * w))
                for i in range(n):
                    if self.bias is not None:
                        torch.addmm(self.bias[:, None], wt, x[i].view(c, h * w), out=out[i])
                    else:
                        torch.mm(wt, x[i].view(c, h * w), out=out[i])
            return out.view(n, self.out_channels, h, w)
        if x.is_contiguous(memory_format=torch.channels_last):
            xm = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view: the channels_last map is (N*H*W, C)
            out = torch.addmm(self.bias, xm, wt.t()) if self.bias is not None else torch.mm(xm, wt.t())
            return out.view(n, h, w, self.out_channels).permute(0, 3, 1, 2)
        return super().forward(x)


def pixel_layout(x: Tensor) -> tuple[int, int, bool] | None:
    """How ``x`` (N, C, H, W) is a pixel matrix in memory, without making a view: ``(pixel step, channel step, True)``
    for a single NCHW map (channels major), ``(pixel step, 1, False)`` for a channels_last map (channel slices of
    either work); ``None`` otherwise. :func:`pixel_matrix` makes the view.

    Example:
        >>> pixel_layout(torch.zeros(1, 3, 4, 5)), pixel_layout(torch.zeros(2, 3, 4, 5))
        ((1, 20, True), None)
    """
    n, c, h, w = x.shape
    sn, sc, sh, sw = x.stride()  # (strides of size-1 dims are arbitrary: they are never stepped over)
    if n == 1 and (w == 1 or sw == 1) and (h == 1 or sh == w) and (c == 1 or sc >= h * w):
        return 1, sc if c > 1 else h * w, True
    p = sw if w > 1 else sh // w if h > 1 else sn // (h * w) if n > 1 else c  # the pixel step
    if (c == 1 or sc == 1) and p >= c and (h == 1 or sh == w * p) and (n == 1 or sn == h * w * p):
        return p, 1, False
    return None


def pixel_matrix(x: Tensor) -> tuple[Tensor, bool] | None:
    """``x`` (N, C, H, W) as a matrix view without a copy: ``(C, H*W)`` for a single NCHW map (``True``: channels
    major), ``(N*H*W, C)`` for a channels_last map (``False``); channel slices of either work. ``None`` otherwise."""
    layout = pixel_layout(x)
    if layout is None:
        return None
    n, c, h, w = x.shape
    step, cstep, major = layout
    if major:
        return x.as_strided((c, h * w), (cstep, 1), x.storage_offset()), True
    return x.as_strided((n * h * w, c), (step, 1), x.storage_offset()), False


def concat_pointwise(
    parts: Sequence[Tensor],
    weight: Tensor,
    bias: Tensor | None,
    upsample: Sequence[bool] | None = None,
    size: tuple[int, int] | None = None,
    channels_last: bool = False,
    act: str = "none",
    conv: nn.Conv2d | None = None,
) -> Tensor | None:
    """``act(conv1x1(cat(maps, dim=1), weight, bias))`` without building the concatenation: one GEMM per part,
    accumulated into one output (an inference helper; ``None`` when the layouts do not allow it).

    With the native library loaded and a channels_last output (float32), all parts run as one call of the native
    GEMM (:func:`~necklace.deploy.native.cgemm.gemm_into`: the output written once, bias and ``act`` fused;
    ``conv``, the 1x1 conv owning ``weight``, caches its packed panels); otherwise as ``addmm`` calls and the
    activation after them. ``act`` is ``"none"``, ``"relu"`` or ``"swish"`` (SiLU).

    ``weight`` is the 1x1 conv weight (O, sum C_i, 1, 1) or its matrix. A part flagged in ``upsample`` is a
    low-resolution map whose nearest-neighbour resize to ``size`` is the map to concatenate: a 1x1 conv
    commutes with nearest resizing, so that part's GEMM runs at the low resolution and only its O-channel result
    is resized (YOLOv8's top-down ``C2f(cat(up(p), x))``: 4x fewer multiply-adds for that part, and neither
    the upsampled map nor the concatenation is ever written). Parts are single NCHW maps or channels_last maps
    (the output is channels_last if any part is, or with ``channels_last``: a channels_last neck whose inputs
    are NCHW backbone maps); their spatial size is ``size`` (default: the first part's) unless flagged.

    Example:
        >>> a, b = torch.randn(1, 3, 4, 6), torch.randn(1, 5, 2, 3)
        >>> w, bias = torch.randn(7, 8, 1, 1), torch.randn(7)
        >>> up = nn.functional.interpolate(b, size=(4, 6), mode="nearest")
        >>> ref = nn.functional.conv2d(torch.cat([a, up], 1), w, bias)
        >>> y = concat_pointwise([a, b], w, bias, upsample=[False, True], size=(4, 6))
        >>> y.shape, torch.allclose(y, ref, atol=1e-5)
        (torch.Size([1, 7, 4, 6]), True)
    """
    o = weight.shape[0]
    ups = list(upsample) if upsample is not None else [False] * len(parts)
    if size is None:
        size = (parts[0].shape[2], parts[0].shape[3])
    h, w = size
    n = parts[0].shape[0]
    layouts = [pixel_layout(p) for p in parts]
    if any(lay is None for lay in layouts) or len(ups) != len(parts):
        return None
    # the output is channels_last when any part is (a channels_last neck); a part in the other layout is read
    # as a transposed operand (e.g. a backbone map left NCHW, as PointwiseToChannelsLast reads it)
    major = not channels_last and all(lay[2] for lay in layouts)  # type: ignore[index]
    chans = [p.shape[1] for p in parts]
    if weight.numel() != o * sum(chans):
        return None
    for p, u in zip(parts, ups, strict=True):
        if p.shape[0] != n or (not u and (p.shape[2] != h or p.shape[3] != w)):
            return None
    starts = [sum(chans[:i]) for i in range(len(chans))]
    if not major and len(parts) <= MAX_PARTS and weight.dtype == torch.float32 and gemm_ready(parts[0]):
        if all(p.dtype == torch.float32 and p.device.type == "cpu" for p in parts):
            return _concat_native(parts, layouts, starts, ups, weight, bias, (h, w), act, conv)  # type: ignore[arg-type]
    w2 = weight.reshape(o, -1)
    mats = [pixel_matrix(p) for p in parts]

    def gemm(i: int, acc: Tensor | None, b: Tensor | None) -> Tensor:
        wi, (xi, x_major) = w2[:, starts[i] : starts[i] + chans[i]], mats[i]  # type: ignore[misc]
        if major:  # (O, HW) = W_i (O, C_i) @ X_i (C_i, HW)
            xc = xi if x_major else xi.t()
            if acc is not None:
                return acc.addmm_(wi, xc)
            return torch.addmm(b[:, None], wi, xc) if b is not None else torch.mm(wi, xc)
        xp = xi.t() if x_major else xi  # (NHW, O) = X_i (NHW, C_i) @ W_i^T
        if acc is not None:
            return acc.addmm_(xp, wi.t())
        return torch.addmm(b, xp, wi.t()) if b is not None else torch.mm(xp, wi.t())

    def as_map(mat: Tensor, hh: int, ww: int) -> Tensor:
        return mat.view(1, o, hh, ww) if major else mat.view(n, hh, ww, o).permute(0, 3, 1, 2)

    out: Tensor | None = None
    pending_bias = bias
    for i, part in enumerate(parts):  # low-resolution parts first: their resized result starts the sum
        if ups[i]:
            z = as_map(gemm(i, None, pending_bias), part.shape[2], part.shape[3])
            pending_bias = None
            z = upsample_nearest(z, (h, w))
            out = z if out is None else out.add_(z)
    acc_mat: Tensor | None = None
    if out is not None:
        acc = pixel_matrix(out)
        if acc is None or acc[1] != major:
            return None
        acc_mat = acc[0]  # a view of ``out``: the other GEMMs accumulate into it in place
    for i in range(len(parts)):
        if not ups[i]:
            acc_mat = gemm(i, acc_mat, pending_bias if acc_mat is None else None)
    y = out if out is not None else as_map(acc_mat, h, w)  # type: ignore[arg-type]
    return y if act == "none" else _TORCH_ACTS[act](y)


#: the activations of :func:`concat_pointwise` where the native GEMM does not run (in place)
_TORCH_ACTS = {"relu": torch.relu_, "swish": lambda y: F.silu(y, inplace=True)}


def _concat_native(
    parts: Sequence[Tensor],
    layouts: list[tuple[int, int, bool]],
    starts: list[int],
    ups: list[bool],
    weight: Tensor,
    bias: Tensor | None,
    size: tuple[int, int],
    act: str,
    conv: nn.Conv2d | None,
) -> Tensor | None:
    """:func:`concat_pointwise` by the native GEMM, into a channels_last output: the upsampled part's GEMM at its
    own resolution (with the bias); then one call over the other parts starts from its nearest upsampling (read in
    place, never written) and applies ``act``. The operands go to the library as addresses and strides (no views
    are made: this runs a few times per forward of every C2f neck)."""
    lib = native_library()
    n, o = parts[0].shape[0], weight.shape[0]
    if lib is None or n == 0:
        return None
    if bias is not None:
        bias = bias.detach()
        if bias.shape != (o,) or bias.dtype != torch.float32 or not bias.is_contiguous():
            return None
    # (pointer, row step, column step, columns) of each part's (pixels, channels) matrix
    desc = [(p.data_ptr(), step, cstep, p.shape[1]) for p, (step, cstep, _) in zip(parts, layouts, strict=True)]
    cols = [(starts[i], starts[i] + p.shape[1]) for i, p in enumerate(parts)]
    low_idx = [i for i in range(len(parts)) if ups[i]]
    main = [i for i in range(len(parts)) if not ups[i]]
    groups = (*(cols[i] for i in low_idx), *((tuple(x for i in main for x in cols[i]),) if main else ()))
    if conv is not None:
        packed = packed_columns(conv, groups)
    else:
        w2 = weight.detach().reshape(o, -1)
        packed = tuple(pack_panels(torch.cat([w2[:, g[k] : g[k + 1]] for k in range(0, len(g), 2)], 1)) for g in groups)
    h, w = size
    lows: list[Tensor] = []
    for k, i in enumerate(low_idx):
        hl, wl = parts[i].shape[2], parts[i].shape[3]
        low = torch.empty((n, o, hl, wl), dtype=torch.float32, memory_format=torch.channels_last)
        if low.numel():
            run_gemm(lib, [*desc[i]], n * hl * wl, o, packed[k], None if lows else bias, low.data_ptr(), o)
        lows.append(low)
    exact = not lows or (len(lows) == 1 and h % lows[0].shape[2] == 0 and w % lows[0].shape[3] == 0)
    if not main or not exact:  # (rare: no full-resolution part, several upsampled ones or a fractional factor)
        out: Tensor | None = None
        for low in lows:
            z = F.interpolate(low, size=size, mode="nearest")
            out = z if out is None else out.add_(z)
        assert out is not None
        out = out.contiguous(memory_format=torch.channels_last)
        if not main:
            return out if act == "none" else _TORCH_ACTS[act](out)
        if out.numel():
            run_gemm(lib, [x for i in main for x in desc[i]], n * h * w, o, packed[-1], None, out.data_ptr(), o,
                     out.data_ptr(), o, act=act)  # fmt: skip
        return out
    out = torch.empty((n, o, h, w), dtype=torch.float32, memory_format=torch.channels_last)
    if out.numel() == 0:
        return out
    # the upsampled part's result is read through the nearest upsampling as the initial values (never written out)
    main_desc = [x for i in main for x in desc[i]]
    if lows:
        low = lows[0]
        run_gemm(lib, main_desc, n * h * w, o, packed[-1], None, out.data_ptr(), o, low.data_ptr(), o, low.shape[2],
                 low.shape[3], h, w, act=act)  # fmt: skip
    else:
        run_gemm(lib, main_desc, n * h * w, o, packed[-1], bias, out.data_ptr(), o, act=act)
    return out


def add_pointwise_(acc: Tensor, x: Tensor, weight: Tensor) -> bool:
    """``acc += conv1x1(x, weight)`` in place (no bias) as one GEMM accumulating into ``acc``; returns whether
    it ran (``False``, and ``acc`` untouched, when a layout is not one matrix: e.g. a batch of NCHW maps).

    ``acc`` and ``x`` may differ in layout (NCHW vs channels_last): the GEMM reads either operand transposed.
    An inference helper (FPN's ``lateral(C_l) + up(P_{l+1})`` writes the lateral into the upsampled map).

    Example:
        >>> acc, x, w = torch.randn(1, 4, 3, 5), torch.randn(1, 6, 3, 5), torch.randn(4, 6, 1, 1)
        >>> ref = acc + nn.functional.conv2d(x, w)
        >>> add_pointwise_(acc, x, w), torch.allclose(acc, ref, atol=1e-5)
        (True, True)
    """
    if acc.shape[0] != x.shape[0] or acc.shape[2:] != x.shape[2:]:
        return False
    if acc.shape[0] > 1 and acc.is_contiguous() and x.is_contiguous():  # a batch of NCHW maps: image by image
        return all(add_pointwise_(acc[i : i + 1], x[i : i + 1], weight) for i in range(acc.shape[0]))
    am, xm = pixel_matrix(acc), pixel_matrix(x)
    if am is None or xm is None:
        return False
    w2 = weight.reshape(weight.shape[0], -1)
    (a, a_major), (b, b_major) = am, xm
    if a_major:  # acc (O, HW) += W (O, C) @ X (C, HW)
        a.addmm_(w2, b if b_major else b.t())
    else:  # acc (NHW, O) += X (NHW, C) @ W^T
        a.addmm_(b.t() if b_major else b, w2.t())
    return True


def pointwise_head_ok(block: nn.Module, x: Tensor) -> bool:
    """Whether ``block`` (a :class:`ConvNormAct`) is a plain 1x1 conv that :func:`concat_pointwise` may run
    for input ``x`` now (inference, CPU float, not tracing; see :class:`PointwiseConv2d`)."""
    if not isinstance(block, ConvNormAct) or block.act_first or block.same:
        return False
    c = block.conv
    if c.kernel_size != (1, 1) or c.stride != (1, 1) or c.padding != (0, 0) or c.groups != 1:
        return False
    return _gemm_inference(c, x)


class PointwiseToChannelsLast(PointwiseConv2d):
    """A 1x1, stride-1 ``Conv2d`` that turns a contiguous (NCHW) map into a channels_last one in a single GEMM.

    ``out[n, (h, w), :] = x[n, :, (h, w)]^T @ W^T + b``: the GEMM reads the NCHW map through a transposed view and
    writes (N, H*W, C_out), which *is* the channels_last layout, so no layout conversion runs at all (converting
    the backbone map first and then convolving costs a full copy of it). Used by :func:`necklace.deploy` for
    the lateral 1x1 convs of a channels_last neck; other inputs, autograd and tracing/export take the plain
    ``Conv2d`` path. Same parameters and state dict as the ``Conv2d`` it replaces (:meth:`from_conv`).

    Example:
        >>> conv = nn.Conv2d(8, 4, 1)
        >>> fast = PointwiseToChannelsLast.from_conv(conv)
        >>> x = torch.randn(2, 8, 5, 7)
        >>> with torch.no_grad():
        ...     y = fast(x)
        >>> y.is_contiguous(memory_format=torch.channels_last), torch.allclose(y, conv(x), atol=1e-6)
        (True, True)
    """

    def to_conv(self) -> PointwiseConv2d:
        """The :class:`PointwiseConv2d` with the same weight and bias tensors (undoes :meth:`from_conv`)."""
        conv = PointwiseConv2d(self.in_channels, self.out_channels, 1, bias=self.bias is not None)
        conv.weight = self.weight
        conv.bias = self.bias
        return conv.train(self.training)

    def forward(self, x: Tensor) -> Tensor:
        if not _gemm_inference(self, x) or not x.is_contiguous():
            return super().forward(x)
        n, c, h, w = x.shape
        if n == 0 or h * w == 1:  # (a 1x1 map is both layouts at once: nothing to gain)
            return super().forward(x)
        wt = self.weight.reshape(self.out_channels, c).t()  # (C_in, C_out) view
        xt = x.reshape(n, c, h * w).transpose(1, 2)  # (N, H*W, C_in) view of the NCHW map
        if n == 1:
            out = torch.addmm(self.bias, xt[0], wt) if self.bias is not None else torch.mm(xt[0], wt)
        else:
            out = torch.matmul(xt, wt)
            if self.bias is not None:
                out.add_(self.bias)
        return out.view(n, h, w, self.out_channels).permute(0, 3, 1, 2)
