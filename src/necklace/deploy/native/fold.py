"""YOLOv6's transposed-conv upsample folded into the 3x3 conv that reads it (native runtime).

``conv3x3(cat(..., up(a), ...))`` with ``up`` a 2x2 stride-2 transposed conv: the pair is one 2x2 conv on the
low-resolution ``a`` with four output phases (:func:`compose_transposed_conv3x3`), so neither the upsampled map nor
the concatenation is built (:class:`necklace.deploy.native.nodes.NativeNode`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "add_transposed_conv3x3_",
    "compose_transposed_conv3x3",
    "transposed_conv3x3_constant",
    "transposed_conv3x3_into",
]

# which (3x3 tap d, 2x2 transposed-conv phase k) pairs feed output phase p from low-resolution tap t, along one axis
# (output row 2i + p of a 3x3 conv over a 2x transposed-conv upsample reads low-resolution rows i - 1 + p + t)
_UP_TAPS = torch.zeros(2, 2, 3, 2, dtype=torch.float64)
for _p, _t, _d, _k in ((0, 0, 0, 1), (0, 1, 1, 0), (0, 1, 2, 1), (1, 0, 0, 0), (1, 0, 1, 1), (1, 1, 2, 0)):
    _UP_TAPS[_p, _t, _d, _k] = 1.0


def compose_transposed_conv3x3(up: nn.ConvTranspose2d, weight: Tensor) -> Tensor:
    """The kernel of ``conv3x3(up(a), weight)`` (stride 1, zero padding 1) as one conv on the low-resolution ``a``.

    ``up`` is a 2x2 stride-2 transposed conv (YOLOv6's ``Transpose``), ``weight`` the (O, C_up, 3, 3) slice of the
    3x3 conv that reads its output. Each output pixel of the pair depends on a 2x2 low-resolution window, so the
    pair is a 2x2 conv with 4 * O outputs (one O-block per output phase ``(p, q)``, see
    :func:`add_transposed_conv3x3_`) over ``a`` plus one constant channel carrying ``up``'s bias (zero outside the
    map, where the 3x3 conv's padding reads zeros): 16 * C_in * O multiply-adds per low-resolution pixel instead of
    4 * C_in * C_up + 36 * C_up * O. Shape ``(4 * O, C_in + 1, 2, 2)``, computed in float64 and rounded once.

    Example:
        >>> up, w = nn.ConvTranspose2d(8, 6, 2, 2), torch.randn(5, 6, 3, 3)
        >>> compose_transposed_conv3x3(up, w).shape
        torch.Size([20, 9, 2, 2])
    """
    if tuple(up.kernel_size) != (2, 2) or tuple(up.stride) != (2, 2) or tuple(up.padding) != (0, 0) or up.groups != 1:
        raise ValueError(f"compose_transposed_conv3x3 needs a 2x2 stride-2 transposed conv, got {up}.")
    if weight.dim() != 4 or tuple(weight.shape[1:]) != (up.out_channels, 3, 3):
        raise ValueError(
            f"compose_transposed_conv3x3: the 3x3 weight must be (O, {up.out_channels}, 3, 3) for {up}, got shape "
            f"{tuple(weight.shape)}."
        )
    k = up.weight.detach().to(torch.float64)  # (C_in, C_up, 2, 2)
    bias = up.bias.detach().to(torch.float64) if up.bias is not None else k.new_zeros(up.out_channels)
    k = torch.cat([k, bias.view(1, -1, 1, 1).expand(1, -1, 2, 2)])  # the constant channel: the bias at every phase
    s = _UP_TAPS.to(k.device)
    kc = torch.einsum("ptdk,qsel,ocde,ickl->pqoits", s, s, weight.detach().to(torch.float64), k)
    o = weight.shape[0]
    return kc.reshape(4 * o, k.shape[0], 2, 2).to(weight.dtype).contiguous()


def add_transposed_conv3x3_(y: Tensor, a: Tensor, kernel: Tensor) -> Tensor:
    """``y += conv3x3(up(a))`` in place, with ``kernel = compose_transposed_conv3x3(up, weight)``; ``y`` is
    (N, O, 2h, 2w) for ``a`` (N, C_in, h, w). Returns ``y``.

    Example:
        >>> up, w, a = nn.ConvTranspose2d(8, 6, 2, 2), torch.randn(5, 6, 3, 3), torch.randn(2, 8, 3, 4)
        >>> ref = F.conv2d(up(a), w, padding=1)
        >>> y = add_transposed_conv3x3_(torch.zeros(2, 5, 6, 8), a, compose_transposed_conv3x3(up, w))
        >>> torch.allclose(y, ref, atol=1e-5)
        True
    """
    n, _, h, w = a.shape
    o = kernel.shape[0] // 4
    if tuple(y.shape) != (n, o, 2 * h, 2 * w) or kernel.shape[1] != a.shape[1] + 1:
        raise ValueError(
            f"add_transposed_conv3x3_: y {tuple(y.shape)}, a {tuple(a.shape)} and kernel {tuple(kernel.shape)} do not "
            f"fit; expected y (N, O, 2h, 2w) = {(n, o, 2 * h, 2 * w)} and kernel (4 * O, C_in + 1, 2, 2)."
        )
    ones = F.pad(a, (0, 0, 0, 0, 0, 1), value=1.0)  # the constant channel that carries up's bias
    z = F.conv2d(ones, kernel, padding=1)  # (N, 4O, h + 1, w + 1)
    _phases(y).add_(_phase_view(z, o, h, w))
    return y


def _phase_view(z: Tensor, o: int, h: int, w: int) -> Tensor:
    """The phase conv's output ``z`` (N, 4O, h + 1, w + 1), channels ordered (p, q, O), as the (N, O, h, 2, w, 2)
    view ``[n, c, i, p, j, q] = z[n, (p, q, c), i + p, j + q]``: output pixel (2i + p, 2j + q) of the pair. One
    strided view (the offset is linear in every index), so the four phases move in one op."""
    s_n, s_c, s_h, s_w = z.stride()
    strides = (s_n, s_c, s_h, 2 * o * s_c + s_h, s_w, o * s_c + s_w)
    return z.as_strided((z.shape[0], o, h, 2, w, 2), strides, z.storage_offset())


def _phases(y: Tensor) -> Tensor:
    """``y`` (N, O, 2h, 2w) as the (N, O, h, 2, w, 2) view of its output phases, in either memory format."""
    return y.unflatten(2, (y.shape[2] // 2, 2)).unflatten(4, (y.shape[3] // 2, 2))


def transposed_conv3x3_constant(kernel: Tensor, h: int, w: int) -> Tensor:
    """The part of ``conv3x3(up(a))`` that does not depend on ``a``: ``up``'s bias through the 3x3 conv, zero
    padding included (smaller along the borders), as a (1, O, 2h, 2w) map for ``a`` of size ``h x w``.
    ``kernel = compose_transposed_conv3x3(up, weight)``; its last input channel is the constant one.

    Example:
        >>> up, w = nn.ConvTranspose2d(4, 3, 2, 2), torch.randn(5, 3, 3, 3)
        >>> c = transposed_conv3x3_constant(compose_transposed_conv3x3(up, w), 3, 4)
        >>> torch.allclose(c, F.conv2d(up(torch.zeros(1, 4, 3, 4)), w, padding=1), atol=1e-5)
        True
    """
    o = kernel.shape[0] // 4
    z = F.conv2d(kernel.new_ones(1, 1, h, w), kernel[:, -1:].contiguous(), padding=1)
    return _phase_view(z, o, h, w).reshape(1, o, 2 * h, 2 * w)


def transposed_conv3x3_into(y: Tensor, a: Tensor, kernel_a: Tensor, constant: Tensor) -> Tensor:
    """Write ``y = conv3x3(up(a))`` (overwrites ``y``, any memory format): one 2x2 conv of ``a`` with
    ``kernel_a = compose_transposed_conv3x3(up, weight)[:, :-1]`` (no constant channel, so no padded copy of
    ``a``) plus ``constant = transposed_conv3x3_constant(kernel, h, w)``, moved into the output phases by one op.
    Returns ``y``.

    Example:
        >>> up, w, a = nn.ConvTranspose2d(8, 6, 2, 2), torch.randn(5, 6, 3, 3), torch.randn(2, 8, 3, 4)
        >>> k = compose_transposed_conv3x3(up, w)
        >>> y = transposed_conv3x3_into(torch.empty(2, 5, 6, 8), a, k[:, :-1], transposed_conv3x3_constant(k, 3, 4))
        >>> torch.allclose(y, F.conv2d(up(a), w, padding=1), atol=1e-5)
        True
    """
    n, _, h, w = a.shape
    o = kernel_a.shape[0] // 4
    if (
        tuple(y.shape) != (n, o, 2 * h, 2 * w)
        or kernel_a.shape[1] != a.shape[1]
        or tuple(constant.shape)
        != (
            1,
            o,
            2 * h,
            2 * w,
        )
    ):
        raise ValueError(
            f"transposed_conv3x3_into: y {tuple(y.shape)}, a {tuple(a.shape)}, kernel_a {tuple(kernel_a.shape)} and "
            f"constant {tuple(constant.shape)} do not fit; expected y (N, O, 2h, 2w) = {(n, o, 2 * h, 2 * w)}, "
            f"kernel_a (4 * O, C_in, 2, 2) and constant (1, O, 2h, 2w)."
        )
    z = F.conv2d(a, kernel_a, padding=1)  # (N, 4O, h + 1, w + 1)
    torch.add(_phase_view(z, o, h, w), _phases(constant), out=_phases(y))
    return y
