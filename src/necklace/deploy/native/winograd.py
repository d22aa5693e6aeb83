"""Winograd F(4x4, 3x3) convolution: 3x3 stride-1 convs with 4x fewer multiplications, for inference.

A 3x3 conv computes every 4x4 output tile from a 6x6 input tile. Winograd's minimal filtering algorithm
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) does it as

    Y = A^T [ (G g G^T) * (B^T d B) ] A

per tile and channel pair: the transformed filter ``U = G g G^T`` (6x6) and input tile ``V = B^T d B`` (6x6) are
multiplied element-wise and summed over input channels, so the channel mixing becomes 36 independent matrix
products ``U[k] @ V[k]`` (one batched GEMM) with 36 multiply-adds per 16 outputs instead of 144: 4x fewer
input-channel MACs than the direct conv. The transforms are fixed linear maps: the overlapping 6x6 tiles are
gathered by one strided copy, transformed by one (36 x 36) GEMM, multiplied by one batched GEMM and transformed back
by one small GEMM plus one copy into the output layout; no compiled extension. (An earlier form ran the input
transform as a depthwise strided conv; mkldnn runs that as many tiny GEMMs plus a reorder, 3-10x slower than the
gather + GEMM, depending on the shape.)

On this project's 2-core AVX-512 CPU the 256->256 3x3 conv of an FPN takes 0.67 of mkldnn's direct conv time at
80x80 and 0.69 at 40x40 on NCHW maps, 0.62 and 0.59 on channels_last ones (``benchmarks/winograd.py``); on
narrow channels or small maps these transforms (several passes of torch ops) cost more than they save, so
:func:`winograd_pays` keeps the direct conv there (channels_last pays from 128 channels, NCHW from 192).

Where a C compiler is at hand, the transforms run as native loops instead (:func:`winograd_conv3x3_native`,
:mod:`necklace.deploy.native.loader`): the gather, zero padding and input transform in one pass, the output transform,
bias, activation (ReLU / SiLU) and the write into the output layout in another, with the same batched GEMM in
between. That pays from much narrower convs (:data:`PAYS_NATIVE_CHANNELS_LAST` / :data:`PAYS_NATIVE_NCHW`; on an
AVX2 AMD EPYC, 64 -> 64 channels at 40x40 0.55 of oneDNN's time, 128 at 20x20 0.55, 256 at 80x80 0.37 on
channels_last maps): the 3x3 convs of light necks (YOLO, RepPAN) run through it.

Numerics: the transforms' coefficients (up to 8 and 1/24) cost about 5 bits, so the result differs from the
direct fp32 conv by about 1e-5 of the output's magnitude (the direct conv's own rounding is ~3e-7), two
orders of magnitude below the 1e-3 that fp16 inference gives. The path is inference only: it runs when
autograd is off, for float32/float64 4-D inputs, and never under CPU autocast or while tracing, scripting,
compiling or exporting (those see the plain ``Conv2d``, so exported graphs are unchanged). It runs only in models
deployed with ``necklace.deploy(model, runtime="native")``; the plain layers never take it.

Example:
    >>> conv = WinogradConv2d(256, 256, 3, padding=1)
    >>> x = torch.randn(1, 256, 30, 30)
    >>> with torch.no_grad():
    ...     y, ref = conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1)
    >>> y.shape, bool((y - ref).abs().max() <= 1e-4 * ref.abs().max())
    (torch.Size([1, 256, 30, 30]), True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from necklace.deploy.native import loader as native
from necklace.deploy.native.cgemm import pack_panels, tensor_version
from necklace.deploy.native.guard import inference_paths_off
from necklace.spec import is_symbolic

__all__ = [
    "WinogradConv2d",
    "winograd_conv3x3",
    "winograd_conv3x3_native",
    "winograd_eligible",
    "winograd_filter",
    "winograd_pays",
]

# F(4x4, 3x3) with interpolation points 0, +-1, +-2 and infinity (Lavin & Gray, 2016).
_BT = (
    (4, 0, -5, 0, 1, 0),
    (0, -4, -4, 1, 1, 0),
    (0, 4, -4, -1, 1, 0),
    (0, -2, -1, 2, 1, 0),
    (0, 2, -1, -2, 1, 0),
    (0, 4, 0, -5, 0, 1),
)
_G = (
    (1 / 4, 0, 0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0, 0, 1),
)
_AT = (
    (1, 1, 1, 1, 1, 0),
    (0, 1, -1, 2, -2, 0),
    (0, 1, 1, 4, 4, 0),
    (0, 1, -1, 8, -8, 1),
)
M_OUT = 4  #: output tile size
N_IN = 6  #: input tile size

#: where the Winograd path beats mkldnn's direct conv here (batch 1, 2 threads): it pays when
#: ``min(in, out channels) >= c`` and ``min(H, W) >= side`` for one ``(c, side)`` of the rule for the input's memory
#: format. ``benchmarks/winograd.py`` (direct and Winograd interleaved, steady allocator), time winograd / direct:
#: NCHW 256 ch 0.67 at 80x80, 0.69 at 40x40, 0.66 at 28x28, 0.75 at 20x20, 0.87 at 16x16; 128 ch 0.88 at 80x80,
#: 0.91 at 40x40; channels_last (the tiles' channel runs are contiguous, so the gather is cheaper) 256 ch
#: 0.62 / 0.59 / 0.71 at 80 / 40 / 28, 0.85 at 20x20; 128 ch 0.78 at 40x40, 1.09 at 20x20. Inside a neck the
#: transformed filter (36 x O x C, 4x the weight) comes from memory on every call, which
#: small maps do not amortise: R50-PAFPN eager 47.8 ms with the rules from 28x28 vs 49.8 from 16x16 (channels_last
#: 42.7 vs 44.2), and YOLOv6-N's 128-channel 20x20 convs lose (9.66 vs 9.52 ms); re-checked with the steady allocator
#: and balanced rounds, R50-PAFPN with the rules from 20x20 takes 1.00 of the time. So the rules start at 28x28.
PAYS_NCHW: tuple[tuple[int, int], ...] = ((192, 28), (128, 64))
PAYS_CHANNELS_LAST: tuple[tuple[int, int], ...] = ((192, 28), (128, 40))
#: the NCHW rule's first pair (the common case: 256-channel FPN maps)
MIN_CHANNELS, MIN_SIDE = PAYS_NCHW[0]
#: tiles (of 4x4 outputs) per band: per batched GEMM (the native path: at most, see :func:`band_tiles`)
TILES_PER_BAND = 100
#: the native path's bytes of one band's transformed input and products (V, M), kept in one core's L2 cache
BAND_BYTES = 480 * 1024
#: the fewest tiles per band of the native path (see :func:`band_tiles`)
MIN_BAND_TILES = 24
#: the largest transformed filter (bytes) read from a core's own L2 cache band after band (see :func:`band_tiles`)
FILTER_CACHE_BYTES = 512 * 1024
#: tiles per band for a larger filter (measured on R50-FPN's 256-channel convs: 0.95 of the time of 24-tile bands)
WIDE_BAND_TILES = 96


def band_tiles(in_channels: int, out_channels: int) -> int:
    """Tiles per band of the native path (each band reads the whole transformed filter, 36 x C x O values, so a
    band's tiles amortise it): where that filter fits in :data:`FILTER_CACHE_BYTES`, as many as keep the band's
    transformed input and products within :data:`BAND_BYTES` but at least :data:`MIN_BAND_TILES`; a larger filter
    comes from L3 or memory on every band, so its bands take :data:`WIDE_BAND_TILES` (their input and products
    streamed instead). Never more than :data:`TILES_PER_BAND`.

    Example:
        >>> band_tiles(32, 32), band_tiles(48, 48), band_tiles(256, 256)
        (53, 35, 96)
    """
    if N_IN * N_IN * 4 * in_channels * out_channels > FILTER_CACHE_BYTES:
        return min(TILES_PER_BAND, WIDE_BAND_TILES)
    fit = BAND_BYTES // (N_IN * N_IN * 4 * (in_channels + out_channels))
    return max(min(MIN_BAND_TILES, TILES_PER_BAND), min(TILES_PER_BAND, fit))


#: the same rules for the native path (:func:`winograd_conv3x3_native`: transforms and channel mixing fused per
#: band in C), where the C library is loaded (:mod:`necklace.deploy.native.loader`); a third number is the largest
#: side the rule covers. ``benchmarks/winograd.py --path native`` on the AMD EPYC (2 threads, interleaved), time
#: winograd / the faster direct conv: NCHW 64-256 ch 0.40-0.74 at every side from 8 to 80 (0.62-0.90 at 160),
#: 16-32 ch 0.20-0.85 up to 80 but 1.60 at 160 (16 ch: the channel planes far apart in memory); channels_last
#: 32-128 ch 0.45-0.80 from 10 (0.78-0.89 at 8), 256 ch 0.44-0.91 from 10-14 (1.03 at 8), 16 ch 0.64-0.90 from 10
#: to 80 but 1.05 at 160.
PAYS_NATIVE_NCHW: tuple[tuple[int, ...], ...] = ((64, 8), (16, 8, 112))
PAYS_NATIVE_CHANNELS_LAST: tuple[tuple[int, ...], ...] = ((32, 10), (16, 10, 112))
#: below this many channels no rule holds (the modules' first, cheapest test)
LOWEST_CHANNELS = min(r[0] for r in PAYS_NCHW + PAYS_CHANNELS_LAST + PAYS_NATIVE_NCHW + PAYS_NATIVE_CHANNELS_LAST)
#: activation -> code of the native output transform (the post-op names oneDNN uses too); SiLU ("swish") is the
#: vectorised form of gemm.c (an earlier scalar exp polynomial measured slower than torch's separate in-place op)
NATIVE_ACTS: dict[str, int] = {"none": 0, "relu": 1, "swish": 2}


def _kron(a: tuple[tuple[float, ...], ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    m = torch.tensor(a, dtype=torch.float64)
    return torch.kron(m, m).to(dtype=dtype, device=device)


def winograd_filter(weight: Tensor) -> Tensor:
    """The transformed filter ``U = G g G^T`` of a ``(O, C, 3, 3)`` weight, laid out ``(36, O, C)``.

    Computed in float64 and rounded once to the weight's dtype.

    Example:
        >>> winograd_filter(torch.randn(8, 4, 3, 3)).shape
        torch.Size([36, 8, 4])
    """
    if weight.dim() != 4 or weight.shape[-2:] != (3, 3):
        raise ValueError(f"winograd_filter needs a (O, C, 3, 3) weight, got shape {tuple(weight.shape)}.")
    o, c = weight.shape[:2]
    kg = _kron(_G, torch.float64, weight.device)  # (36, 9)
    u = kg @ weight.detach().to(torch.float64).reshape(o * c, 9).t()
    return u.reshape(N_IN * N_IN, o, c).to(weight.dtype).contiguous()


def _input_matrix(dtype: torch.dtype, device: torch.device) -> Tensor:
    """``B^T (x) B^T`` (36, 36): row ``6a + b`` maps a 6x6 input tile (flattened) to ``V[a, b] = (B^T d B)[a, b]``."""
    return _kron(_BT, dtype, device)


def winograd_conv3x3(
    x: Tensor,
    u: Tensor,
    bias: Tensor | None = None,
    input_matrix: Tensor | None = None,
    output_matrix: Tensor | None = None,
) -> Tensor:
    """A 3x3, stride-1, padding-1 conv of ``x`` (N, C, H, W) with the transformed filter ``u`` (36, O, C).

    Equals ``F.conv2d(x, weight, bias, padding=1)`` for ``u = winograd_filter(weight)`` up to ~1e-5 of the
    output's magnitude. ``input_matrix`` / ``output_matrix`` are the cached transform constants (built when
    ``None``). Any H and W (the last tiles are zero-padded and cropped); the output has ``x``'s memory format.

    Example:
        >>> w, x = torch.randn(16, 8, 3, 3), torch.randn(2, 8, 9, 7)
        >>> y = winograd_conv3x3(x, winograd_filter(w))
        >>> y.shape, torch.allclose(y, F.conv2d(x, w, padding=1), atol=1e-4)
        (torch.Size([2, 16, 9, 7]), True)
    """
    if x.dim() != 4 or u.dim() != 3 or u.shape[0] != N_IN * N_IN or u.shape[2] != x.shape[1]:
        raise ValueError(
            f"winograd_conv3x3 needs x (N, C, H, W) and u (36, O, C) with the same C, got x {tuple(x.shape)} "
            f"and u {tuple(u.shape)}; build u with winograd_filter(weight)."
        )
    n, c, h, w = x.shape
    o = u.shape[1]
    th, tw = -(-h // M_OUT), -(-w // M_OUT)
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    if input_matrix is None:
        input_matrix = _input_matrix(x.dtype, x.device)
    if output_matrix is None:
        output_matrix = _kron(_AT, x.dtype, x.device)
    # one zero row/column before the map and enough after it for whole tiles plus the halo (F.pad keeps the layout)
    xp = F.pad(x, (1, M_OUT * tw + 1 - w, 1, M_OUT * th + 1 - h))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    full = torch.empty((n, o, M_OUT * th, M_OUT * tw), dtype=x.dtype, device=x.device, memory_format=fmt)
    # The map is done in bands of about TILES_PER_BAND tiles (whole tile rows): a band's tiles, their transform and
    # the products stay in cache between the steps. Per band of t tiles:
    #   gather  g[a, b, tile, c] = xp[c, 4i + a, 4j + b]    one strided copy (the 6x6 tiles overlap by 2)
    #   input   V = (B^T (x) B^T) g                          one GEMM (36 x 36) @ (36 x t*C)
    #   product M[k] = U[k] V[k]                             one batched GEMM over the 36 points
    #   output  Y = (A^T (x) A^T) M                          one GEMM, then one copy (+ bias) into the output
    # The tile and channel axes are ordered for the input's layout, so the gather and the final copy read and
    # write runs of contiguous values: (tile, C) for channels_last, (C, tile) for NCHW.
    rows = max(1, TILES_PER_BAND // tw)
    t_max = min(rows, th) * tw
    g_buf = x.new_empty(N_IN * N_IN * t_max * c)  # buffers reused by every band
    v_buf = x.new_empty(N_IN * N_IN * t_max * c)
    m_buf = x.new_empty(N_IN * N_IN * t_max * o)
    y_buf = x.new_empty(M_OUT * M_OUT * t_max * o)
    ut = u.transpose(1, 2)  # (36, C, O) view: the GEMM reads it transposed
    bias5 = None if bias is None else (bias if channels_last else bias.view(o, 1, 1, 1, 1))
    for i in range(n):
        xi = xp[i]
        sc, sh, sw = xi.stride()
        if channels_last:
            dst_i = full[i].permute(1, 2, 0).view(th, M_OUT, tw, M_OUT, o)  # (i, a, j, b, O)
        else:
            dst_i = full[i].view(o, th, M_OUT, tw, M_OUT)  # (O, i, a, j, b)
        for r0 in range(0, th, rows):
            r1 = min(th, r0 + rows)
            r, t = r1 - r0, (r1 - r0) * tw
            base = xi.storage_offset() + M_OUT * r0 * sh
            g = g_buf[: N_IN * N_IN * t * c]
            v = v_buf[: N_IN * N_IN * t * c].view(N_IN * N_IN, t * c)
            m = m_buf[: N_IN * N_IN * t * o]
            y = y_buf[: M_OUT * M_OUT * t * o]
            if channels_last:
                shape, strides = (N_IN, N_IN, r, tw, c), (sh, sw, M_OUT * sh, M_OUT * sw, sc)
                g.view(shape).copy_(xi.as_strided(shape, strides, base))
                torch.mm(input_matrix, g.view(N_IN * N_IN, t * c), out=v)
                torch.bmm(v.view(N_IN * N_IN, t, c), ut, out=m.view(N_IN * N_IN, t, o))  # (36, t, O)
                # Y (a, b, i, j, O) -> out[4i + a, 4j + b, O]
                torch.mm(output_matrix, m.view(N_IN * N_IN, t * o), out=y.view(M_OUT * M_OUT, t * o))
                src = y.view(M_OUT, M_OUT, r, tw, o).permute(2, 0, 3, 1, 4)
                dst = dst_i[r0:r1]
            else:
                shape, strides = (N_IN, N_IN, c, r, tw), (sh, sw, sc, M_OUT * sh, M_OUT * sw)
                g.view(shape).copy_(xi.as_strided(shape, strides, base))
                torch.mm(input_matrix, g.view(N_IN * N_IN, c * t), out=v)
                torch.bmm(u, v.view(N_IN * N_IN, c, t), out=m.view(N_IN * N_IN, o, t))  # (36, O, t)
                # Y (O, i, j, a, b) -> out[O, 4i + a, 4j + b]
                torch.mm(m.view(N_IN * N_IN, o * t).t(), output_matrix.t(), out=y.view(o * t, M_OUT * M_OUT))
                src = y.view(o, r, tw, M_OUT, M_OUT).permute(0, 1, 3, 2, 4)
                dst = dst_i[:, r0:r1]
            if bias5 is not None:
                torch.add(src, bias5, out=dst)
            else:
                dst.copy_(src)
    if M_OUT * th == h and M_OUT * tw == w:
        return full
    return full[:, :, :h, :w].contiguous(memory_format=fmt)


def native_winograd_ok(x: Tensor) -> bool:
    """Whether :func:`winograd_conv3x3_native` can run on ``x``: the native library is loaded and ``x`` is a
    float32 4-D CPU tensor (any strides: torch has no negative ones)."""
    return x.dtype == torch.float32 and x.dim() == 4 and x.device.type == "cpu" and native.library() is not None


def winograd_conv3x3_native(
    x: Tensor,
    ut: Tensor,
    bias: Tensor | None = None,
    act: str = "none",
    out: Tensor | None = None,
    packed: Tensor | None = None,
    residual: Tensor | None = None,
) -> Tensor:
    """:func:`winograd_conv3x3` with the transforms in C (:mod:`necklace.deploy.native.loader`), the activation fused.

    ``ut`` is the transformed filter laid out ``(36, C, O)`` (``winograd_filter(weight).transpose(1, 2)``, made
    contiguous once); ``act`` one of :data:`NATIVE_ACTS` (``"relu"``, ``"swish"`` = SiLU, ``"none"``). Per band of
    about :data:`TILES_PER_BAND` tiles: one pass gathers and transforms the input tiles (zero padding included),
    the 36 channel mixings run as one batched GEMM (the native one of :mod:`~necklace.deploy.native.cgemm` when
    ``packed`` holds ``pack_panels(winograd_filter(weight))``, else ``torch.bmm``), one pass transforms back, adds
    the bias (and ``out``'s values, when ``out`` is given: ``out += conv(x)``, in place), applies the
    activation and adds ``residual`` (a float32 map of the output's shape, any strides: a bottleneck's shortcut,
    ``residual + act(conv(x))``). The output has ``x``'s memory format (channels_last when its channels are
    adjacent in memory);
    float32 only. ``RuntimeError`` where the library is not loaded (check :func:`native_winograd_ok`).

    Example:
        >>> w, x = torch.randn(16, 8, 3, 3), torch.randn(2, 8, 9, 7)
        >>> ut = winograd_filter(w).transpose(1, 2).contiguous()
        >>> if native_winograd_ok(x):
        ...     y = winograd_conv3x3_native(x, ut, act="relu")
        ... else:
        ...     y = F.conv2d(x, w, padding=1).relu()
        >>> y.shape, torch.allclose(y, F.conv2d(x, w, padding=1).relu(), atol=1e-4)
        (torch.Size([2, 16, 9, 7]), True)
    """
    lib = native.library()
    if lib is None:
        raise RuntimeError(f"winograd_conv3x3_native: the native library is not loaded ({native.status().error}).")
    n, c, h, w = x.shape
    if ut.dim() != 3 or ut.shape[0] != N_IN * N_IN or ut.shape[1] != c or not ut.is_contiguous():
        raise ValueError(
            f"winograd_conv3x3_native needs a contiguous ut (36, C, O) with C = {c} for x {tuple(x.shape)}, got "
            f"{tuple(ut.shape)}; build it with winograd_filter(weight).transpose(1, 2).contiguous()."
        )
    if x.dtype != torch.float32 or ut.dtype != torch.float32:
        raise TypeError(f"winograd_conv3x3_native is float32 only, got x {x.dtype} and ut {ut.dtype}.")
    o = ut.shape[2]
    code = NATIVE_ACTS[act]
    accumulate = out is not None
    if out is None:
        channels_last = x.stride(1) == 1 and c > 1
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.empty((n, o, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
    elif (
        tuple(out.shape) != (n, o, h, w)
        or out.dtype != x.dtype
        or not (out.is_contiguous() or out.is_contiguous(memory_format=torch.channels_last))
    ):
        raise ValueError(
            f"winograd_conv3x3_native: out must be a dense (NCHW or channels_last) float32 tensor of shape "
            f"{(n, o, h, w)}, got {tuple(out.shape)} {out.dtype} with strides {out.stride()}."
        )
    bias_ptr = None
    if bias is not None:
        bias = bias.detach().contiguous()
        bias_ptr = bias.data_ptr()
    if packed is None:
        packed = pack_panels(ut.transpose(1, 2))
    elif tuple(packed.shape) != (N_IN * N_IN, -(-o // 16), c, 16) or not packed.is_contiguous():
        raise ValueError(
            f"winograd_conv3x3_native: packed must be pack_panels(winograd_filter(weight)), shape "
            f"{(N_IN * N_IN, -(-o // 16), c, 16)}, got {tuple(packed.shape)}."
        )
    rs: tuple[int, ...] = (0, 0, 0, 0)
    if residual is not None:
        if tuple(residual.shape) != (n, o, h, w) or residual.dtype != torch.float32:
            raise ValueError(
                f"winograd_conv3x3_native: residual must be a float32 map of the output's shape {(n, o, h, w)}, got "
                f"{tuple(residual.shape)} {residual.dtype}."
            )
        rs = residual.stride()
    return _wino_run(lib, x, packed, bias_ptr, o, code, out, accumulate, residual, rs)


def _wino_run(
    lib: Any,
    x: Tensor,
    packed: Tensor,
    bias_ptr: int | None,
    o: int,
    code: int,
    out: Tensor,
    accumulate: bool,
    residual: Tensor | None,
    rs: tuple[int, ...],
) -> Tensor:
    """The library call of :func:`winograd_conv3x3_native`, its operands checked by the caller."""
    n, c, h, w = x.shape
    if n == 0 or h == 0 or w == 0:
        return out
    xs, os_ = x.stride(), out.stride()
    failed = lib.nk_wino_conv(
        x.data_ptr(), n, h, w, c, xs[0], xs[1], xs[2], xs[3], packed.data_ptr(), bias_ptr, o,
        out.data_ptr(), os_[0], os_[1], os_[2], os_[3], code, int(accumulate),
        None if residual is None else residual.data_ptr(), *rs, band_tiles(c, o), torch.get_num_threads(),
    )  # fmt: skip
    if failed:
        raise MemoryError(f"winograd_conv3x3_native: no memory for the scratch of a band ({c} -> {o} channels).")
    return out


def winograd_eligible(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` is a dense 3x3, stride-1, dilation-1, zero-padding-1 conv (what F(4x4, 3x3) computes).

    Example:
        >>> winograd_eligible(nn.Conv2d(8, 8, 3, padding=1)), winograd_eligible(nn.Conv2d(8, 8, 3, stride=2))
        (True, False)
    """
    return (
        conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.padding == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def winograd_pays(
    in_channels: int, out_channels: int, height: int, width: int, channels_last: bool = False, native: bool = False
) -> bool:
    """Whether the Winograd path is expected to beat the direct conv for this shape and memory format on a CPU
    (see :data:`PAYS_NCHW` / :data:`PAYS_CHANNELS_LAST`; with ``native``, the rules of the native path,
    :data:`PAYS_NATIVE_NCHW` / :data:`PAYS_NATIVE_CHANNELS_LAST`).

    Example:
        >>> winograd_pays(256, 256, 80, 80), winograd_pays(64, 64, 80, 80), winograd_pays(256, 256, 20, 20)
        (True, False, False)
        >>> winograd_pays(128, 128, 40, 40), winograd_pays(128, 128, 40, 40, channels_last=True)
        (False, True)
        >>> winograd_pays(16, 16, 80, 80, native=True), winograd_pays(16, 16, 160, 160, native=True)
        (True, False)
    """
    channels, side = min(in_channels, out_channels), min(height, width)
    rule: tuple[tuple[int, ...], ...]
    if native:
        rule = PAYS_NATIVE_CHANNELS_LAST if channels_last else PAYS_NATIVE_NCHW
    else:
        rule = PAYS_CHANNELS_LAST if channels_last else PAYS_NCHW
    return any(channels >= r[0] and side >= r[1] and (len(r) < 3 or side <= r[2]) for r in rule)


class WinogradConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose 3x3 stride-1 inference forward runs Winograd F(4x4, 3x3) where that is faster.

    Same constructor, parameters and state dict as ``nn.Conv2d``. The Winograd path runs only when all hold:
    ``self.winograd`` is true, the conv is :func:`winograd_eligible`, autograd is off, the input is a
    float32/float64 CPU 4-D tensor, :func:`winograd_pays` for its shape, and nothing is tracing, scripting,
    compiling or exporting. Otherwise this is exactly ``nn.Conv2d.forward``. The transformed filter is cached
    and rebuilt when the weight changes (replaced, or modified in place, e.g. by BatchNorm folding).

    Example:
        >>> conv = WinogradConv2d(128, 256, 3, padding=1)
        >>> x = torch.randn(1, 128, 32, 40)
        >>> with torch.no_grad():
        ...     y = conv(x)
        >>> y.shape, torch.allclose(y, F.conv2d(x, conv.weight, conv.bias, padding=1), atol=1e-4)
        (torch.Size([1, 256, 32, 40]), True)
    """

    winograd: bool = True
    #: whether the native path (:func:`winograd_conv3x3_native`) may run where its library is loaded
    native: bool = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._wg_cache: tuple[Tensor, int, Tensor, Tensor, Tensor, Tensor, Tensor | None] | None = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> WinogradConv2d:
        """A ``WinogradConv2d`` sharing ``conv``'s weight and bias tensors (same hyper-parameters)."""
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        new.weight = conv.weight
        new.bias = conv.bias
        return new.train(conv.training)

    def _winograd_path(self, x: Tensor) -> str | None:
        """``"native"`` (:func:`winograd_conv3x3_native`), ``"torch"`` (:func:`winograd_conv3x3`) or ``None``
        (the direct conv) for the input ``x`` (the answer remembered per input shape, strides and dtype)."""
        # cheapest tests first: most convs of a light neck are too narrow, and return after one comparison
        if not self.winograd or min(self.in_channels, self.out_channels) < LOWEST_CHANNELS or inference_paths_off():
            return None
        if not isinstance(x, Tensor) or x.dim() != 4 or x.device.type != "cpu" or is_symbolic(*x.shape):
            return None
        key = (x.shape, x.stride(), x.dtype, self.weight.dtype, self.native, native.library() is not None)
        paths: dict[tuple[Any, ...], str | None] = self.__dict__.setdefault("_wg_paths", {})
        if key in paths:
            return paths[key]
        if len(paths) >= 16:  # (a conv run on many sizes: start over)
            paths.clear()
        path = paths[key] = self._choose_path(x)
        return path

    def _choose_path(self, x: Tensor) -> str | None:
        if x.dtype not in (torch.float32, torch.float64) or self.weight.dtype != x.dtype or not winograd_eligible(self):
            return None
        h, w = x.shape[2], x.shape[3]
        # the native path reads any strides: a map whose channels are adjacent in memory (channels_last, or a
        # channel slice of one, e.g. C2f's chunks) takes the channels_last rule
        if (
            self.native
            and native_winograd_ok(x)
            and winograd_pays(self.in_channels, self.out_channels, h, w, x.stride(1) == 1, True)
        ):
            return "native"
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if winograd_pays(self.in_channels, self.out_channels, h, w, channels_last):
            return "torch"
        return None

    def _use_winograd(self, x: Tensor) -> bool:
        return self._winograd_path(x) is not None

    def _constants(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        w = self.weight
        cache = self._wg_cache
        if cache is None or cache[0] is not w or cache[1] != tensor_version(w) or cache[2].dtype != w.dtype:
            u = winograd_filter(w)
            self._wg_cache = cache = (
                w,
                tensor_version(w),
                u,
                _input_matrix(w.dtype, w.device),
                _kron(_AT, w.dtype, w.device),
                u.transpose(1, 2).contiguous(),  # (36, C, O): torch.bmm's operand on the native path
                pack_panels(u) if w.dtype == torch.float32 else None,  # the native GEMM's panels
            )
        return cache[2], cache[3], cache[4], cache[5], cache[6]

    def forward(self, x: Tensor) -> Tensor:
        path = self._winograd_path(x)
        if path is None:
            return super().forward(x)
        u, kin, at, ut, packed = self._constants(x)
        if path == "native":
            return winograd_conv3x3_native(x, ut, self.bias, packed=packed)
        return winograd_conv3x3(x, u, self.bias, kin, at)

    def forward_act(self, x: Tensor, act: str, out: Tensor | None = None) -> Tensor | None:
        """``act(conv(x))`` (or ``act(out + conv(x))`` into ``out``) with the activation in the native Winograd
        output transform, where the native path runs for ``x``; ``None`` otherwise (the caller runs the modules).
        ``act`` is a key of :data:`NATIVE_ACTS`."""
        if act not in NATIVE_ACTS or self._winograd_path(x) != "native":
            return None
        return self._native_act(x, act, out)

    def _native_act(self, x: Tensor, act: str, out: Tensor | None = None, residual: Tensor | None = None) -> Tensor:
        """:meth:`forward_act` for a caller that has checked ``_winograd_path(x) == "native"`` itself
        (``residual``: added after the activation, see :func:`winograd_conv3x3_native`)."""
        _, _, _, ut, packed = self._constants(x)
        b, lib, o = self.bias, native.library(), self.out_channels
        n, _, h, w = x.shape
        if (
            out is None
            and lib is not None
            and packed is not None
            and (b is None or (b.dtype == torch.float32 and b.is_contiguous()))
            and (residual is None or (residual.dtype == torch.float32 and residual.shape == (n, o, h, w)))
        ):  # the operands this conv made itself: straight to the library (the checks cost more than small calls)
            fmt = torch.channels_last if x.stride(1) == 1 and x.shape[1] > 1 else torch.contiguous_format
            y = torch.empty((n, o, h, w), dtype=x.dtype, memory_format=fmt)
            rs = (0, 0, 0, 0) if residual is None else residual.stride()
            return _wino_run(lib, x, packed, None if b is None else b.data_ptr(), o, NATIVE_ACTS[act], y, False,
                             residual, rs)  # fmt: skip
        return winograd_conv3x3_native(x, ut, b, act, out, packed, residual)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> WinogradConv2d:
        self._wg_cache = None  # .to() / .double() / .cuda(): rebuild the constants on the next call
        self.__dict__.pop("_wg_paths", None)
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, object]:
        state = dict(super().__getstate__())
        state["_wg_cache"] = None  # deepcopy / pickle: never carry the cache (it would alias the old weight)
        return state
