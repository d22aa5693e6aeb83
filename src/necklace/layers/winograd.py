"""Winograd F(4x4, 3x3) convolution: 3x3 stride-1 convs with 4x fewer multiplications, for inference.

A 3x3 conv computes every 4x4 output tile from a 6x6 input tile. Winograd's minimal filtering algorithm
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) does it as

    Y = A^T [ (G g G^T) * (B^T d B) ] A

per tile and channel pair: the transformed filter ``U = G g G^T`` (6x6) and input tile ``V = B^T d B`` (6x6) are
multiplied element-wise and summed over input channels, so the channel mixing becomes 36 independent matrix
products ``U[k] @ V[k]`` (one batched GEMM) with 36 multiply-adds per 16 outputs instead of 144: 4x fewer
input-channel MACs than the direct conv. The transforms are fixed linear maps, run here as one depthwise
strided conv (input) and one small GEMM (output), so the whole conv is three library calls plus one fused
copy; no compiled extension.

On this project's 2-core AVX-512 CPU the 256->256 3x3 conv of an FPN runs 1.35x faster at 80x80, 1.25x at
40x40 and 1.7x at 160x160 than mkldnn's direct conv (``benchmarks/winograd.py``); below about 192 channels or
28x28 maps the transforms cost more than they save, so :func:`winograd_pays` keeps the direct conv there.

Numerics: the transforms' coefficients (up to 8 and 1/24) cost about 5 bits, so the result differs from the
direct fp32 conv by about 1e-5 of the output's magnitude (the direct conv's own rounding is ~3e-7), two
orders of magnitude below the 1e-3 that fp16 inference gives. The path is inference only: it runs when
autograd is off, for float32/float64 4-D inputs, and never under CPU autocast or while tracing, scripting,
compiling or exporting (those see the plain ``Conv2d``, so exported graphs are unchanged). Switch it off per model with
:func:`set_winograd` (``necklace.set_winograd(model, False)``) when bit-level agreement with another library
matters more than speed.

Example:
    >>> conv = WinogradConv2d(256, 256, 3, padding=1)
    >>> x = torch.randn(1, 256, 30, 30)
    >>> with torch.no_grad():
    ...     y, ref = conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1)
    >>> y.shape, bool((y - ref).abs().max() <= 1e-4 * ref.abs().max())
    (torch.Size([1, 256, 30, 30]), True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from necklace.spec import _is_tracing, is_symbolic

__all__ = [
    "WinogradConv2d",
    "direct_convs",
    "inference_paths_off",
    "set_winograd",
    "winograd_conv3x3",
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

#: the smallest channel count (in and out) and output map side where the Winograd path is faster than the
#: direct conv here (measured by ``benchmarks/winograd.py``, time ratio winograd / direct: 192 channels at 24x24
#: 1.01-1.1, 256 at 32x32 0.84, 256 at 80x80 0.74, 128 channels >= 0.97 everywhere); from WIDE_CHANNELS on it
#: pays from WIDE_MIN_SIDE
MIN_CHANNELS = 192
MIN_SIDE = 28
WIDE_CHANNELS = 384
WIDE_MIN_SIDE = 20
#: tiles (of 4x4 outputs) per band: per batched GEMM
TILES_PER_BAND = 100


_DIRECT_DEPTH = 0


@contextlib.contextmanager
def direct_convs() -> Iterator[None]:
    """Run every :class:`WinogradConv2d` (and :class:`necklace.layers.conv.PointwiseConv2d`) as the direct conv
    inside the block (e.g. to count nominal MACs, or to compare bit-for-bit with another library).

    Example:
        >>> conv, x = WinogradConv2d(256, 256, 3, padding=1), torch.randn(1, 256, 32, 32)
        >>> with torch.no_grad(), direct_convs():
        ...     torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
        True
    """
    global _DIRECT_DEPTH
    _DIRECT_DEPTH += 1
    try:
        yield
    finally:
        _DIRECT_DEPTH -= 1


def _autocast_on() -> bool:
    """CPU autocast (bfloat16/float16) on: the ops here would be cast piecemeal, so the direct conv runs."""
    try:
        return bool(torch.is_autocast_enabled("cpu"))
    except TypeError:  # older torch: no device argument
        return bool(torch.is_autocast_cpu_enabled())


def inference_paths_off() -> bool:
    """Whether necklace's inference paths (Winograd, GEMM 1x1 convs) must not run now: autograd on, a
    :func:`direct_convs` block, tracing / scripting / compiling / exporting, or CPU autocast."""
    return bool(_DIRECT_DEPTH) or torch.is_grad_enabled() or _is_tracing() or _is_exporting() or _autocast_on()


def _is_exporting() -> bool:
    exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(torch.onnx.is_in_onnx_export() or (exporting is not None and exporting()))


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


def _input_kernel(channels: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    # depthwise kernel whose output channel c*36+k is V[k] = sum_{r,s} B^T[k//6, r] d[r, s] B[s, k%6]
    return _kron(_BT, dtype, device).view(N_IN * N_IN, 1, N_IN, N_IN).repeat(channels, 1, 1, 1)


def winograd_conv3x3(
    x: Tensor,
    u: Tensor,
    bias: Tensor | None = None,
    input_kernel: Tensor | None = None,
    output_matrix: Tensor | None = None,
) -> Tensor:
    """A 3x3, stride-1, padding-1 conv of ``x`` (N, C, H, W) with the transformed filter ``u`` (36, O, C).

    Equals ``F.conv2d(x, weight, bias, padding=1)`` for ``u = winograd_filter(weight)`` up to ~1e-5 of the
    output's magnitude. ``input_kernel`` / ``output_matrix`` are the cached transform constants (built when
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
    if input_kernel is None:
        input_kernel = _input_kernel(c, x.dtype, x.device)
    if output_matrix is None:
        output_matrix = _kron(_AT, x.dtype, x.device)
    xin = x.contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    full = torch.empty((n, o, M_OUT * th, M_OUT * tw), dtype=x.dtype, device=x.device, memory_format=fmt)
    # The map is done in bands of about TILES_PER_BAND tiles (whole tile rows): a band's transformed input
    # (C*36 x tiles) and products (36 x O x tiles) stay in cache between the three steps, which measured ~10 %
    # faster inside a neck than transforming the whole map at once.
    rows = max(1, TILES_PER_BAND // tw)
    right = 1 + M_OUT * tw - w  # zero columns after the map (1 when W is a multiple of 4)
    t_max = min(rows, th) * tw
    m_buf = x.new_empty(N_IN * N_IN * o * t_max)  # the GEMM outputs of every band go to these two buffers
    y_buf = x.new_empty(M_OUT * M_OUT * o * t_max)
    for i in range(n):
        dst_i = full[i].view(o, th, M_OUT, tw, M_OUT)
        for r0 in range(0, th, rows):
            r1 = min(th, r0 + rows)
            lo, hi = M_OUT * r0 - 1, M_OUT * r1 + 1  # input rows this band reads (with the 1-pixel halo)
            band = xin[i : i + 1, :, max(lo, 0) : min(hi, h)]
            top, bottom = max(-lo, 0), max(hi - h, 0)
            if right == 1 and bottom <= top:
                # the conv pads by itself (no copy of the band): columns 1 | 1; rows 0 | 0 inside the map, 1 | 1 for
                # the first band (its bottom pad row is never read when the band stops inside the map)
                v = F.conv2d(band, input_kernel, stride=M_OUT, padding=(top, 1), groups=c)
            else:
                band = F.pad(band, (1, right, top, bottom))
                v = F.conv2d(band, input_kernel, stride=M_OUT, groups=c)
            t = (r1 - r0) * tw
            # v: (1, C*36, r, tw) = (C, 36, t); the GEMM reads it through a strided view
            m = m_buf[: N_IN * N_IN * o * t].view(N_IN * N_IN, o, t)
            torch.bmm(u, v.view(c, N_IN * N_IN, t).transpose(0, 1), out=m)  # (36, O, t)
            y_t = y_buf[: M_OUT * M_OUT * o * t].view(M_OUT * M_OUT, o * t)
            torch.mm(output_matrix, m.view(N_IN * N_IN, o * t), out=y_t)
            y_t = y_t.view(M_OUT, M_OUT, o, r1 - r0, tw)
            # y[o, 4i + a, 4j + b] = y_t[a, b, o, i, j]: one copy into the output layout, adding the bias on the way
            src, dst = y_t.permute(2, 3, 0, 4, 1), dst_i[:, r0:r1]
            if bias is not None:
                torch.add(src, bias.view(o, 1, 1, 1, 1), out=dst)
            else:
                dst.copy_(src)
    if M_OUT * th == h and M_OUT * tw == w:
        return full
    return full[:, :, :h, :w].contiguous(memory_format=fmt)


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


def winograd_pays(in_channels: int, out_channels: int, height: int, width: int) -> bool:
    """Whether the Winograd path is expected to beat the direct conv for this shape on a CPU.

    Example:
        >>> winograd_pays(256, 256, 80, 80), winograd_pays(64, 64, 80, 80), winograd_pays(256, 256, 10, 10)
        (True, False, False)
    """
    channels, side = min(in_channels, out_channels), min(height, width)
    return (channels >= MIN_CHANNELS and side >= MIN_SIDE) or (channels >= WIDE_CHANNELS and side >= WIDE_MIN_SIDE)


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

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._wg_cache: tuple[Tensor, int, Tensor, Tensor, Tensor] | None = None

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

    def _use_winograd(self, x: Tensor) -> bool:
        # cheapest tests first: most convs of a light neck are too narrow, and return after one comparison
        if not self.winograd or min(self.in_channels, self.out_channels) < MIN_CHANNELS or inference_paths_off():
            return False
        if not isinstance(x, Tensor) or x.dim() != 4 or x.device.type != "cpu" or is_symbolic(*x.shape):
            return False
        if x.dtype not in (torch.float32, torch.float64) or self.weight.dtype != x.dtype:
            return False
        return winograd_eligible(self) and winograd_pays(self.in_channels, self.out_channels, x.shape[2], x.shape[3])

    def _constants(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        w = self.weight
        cache = self._wg_cache
        if cache is None or cache[0] is not w or cache[1] != w._version or cache[2].dtype != w.dtype:
            self._wg_cache = cache = (
                w,
                w._version,
                winograd_filter(w),
                _input_kernel(self.in_channels, w.dtype, w.device),
                _kron(_AT, w.dtype, w.device),
            )
        return cache[2], cache[3], cache[4]

    def forward(self, x: Tensor) -> Tensor:
        if not self._use_winograd(x):
            return super().forward(x)
        u, kin, at = self._constants(x)
        return winograd_conv3x3(x, u, self.bias, kin, at)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> WinogradConv2d:
        self._wg_cache = None  # .to() / .double() / .cuda(): rebuild the constants on the next call
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, object]:
        state = dict(super().__getstate__())
        state["_wg_cache"] = None  # deepcopy / pickle: never carry the cache (it would alias the old weight)
        return state


def set_winograd(model: nn.Module, enabled: bool) -> int:
    """Switch the Winograd inference path of every :class:`WinogradConv2d` in ``model`` on or off.

    Returns how many convs were set. Off, each conv runs ``nn.Conv2d.forward`` (bit-identical to the direct
    conv); on (the default), eligible convs use F(4x4, 3x3) in inference where it is faster.

    Example:
        >>> m = nn.Sequential(WinogradConv2d(8, 8, 3, padding=1), nn.ReLU())
        >>> set_winograd(m, False), m[0].winograd
        (1, False)
    """
    count = 0
    for mod in model.modules():
        if isinstance(mod, WinogradConv2d):
            mod.winograd = bool(enabled)
            count += 1
    return count
