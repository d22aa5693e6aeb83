"""The native library's GEMM (``gemm.c``): packed weights, the conv epilogue fused, any row / column strides.

``out = act(init + [A_0 | A_1 | ...] @ B)`` where the parts ``A_q`` are matrix views of maps (a channels_last
map is ``(N*H*W, C)``; a single NCHW map is ``(H*W, C)`` read through its transpose), so a concatenation is
never built; ``B`` is a 1x1 conv's weight matrix transposed, packed once into panels of 16 output channels
(:func:`pack_panels`, cached per weight by :func:`packed_columns`); ``init`` is the bias or the values already
in ``out`` (a sum into an existing map); ``act`` ReLU or SiLU (:data:`GEMM_ACTS`) is applied while the output
tile is in registers, so the output is written once. The same kernel mixes the channels of the native Winograd
conv (:mod:`necklace.deploy.native.winograd`, inside ``kernels.c``).

On this machine (AMD EPYC, 2 threads) it takes 0.75-0.89 of the time of torch's ``addmm`` + ``addmm_`` + ``silu_``
on the YOLO necks' 1x1 shapes (``benchmarks/native_gemm.py``): no bias copy, no separate SiLU pass, no re-reads of
the output per part. Inference only: the callers check autograd, tracing and the dtype first.

Example:
    >>> import torch
    >>> from necklace.deploy.native import loader
    >>> a, b = torch.randn(10, 3), torch.randn(10, 5)
    >>> w, bias = torch.randn(7, 8), torch.randn(7)
    >>> ref = torch.relu(torch.cat([a, b], 1) @ w.t() + bias)
    >>> if loader.build().loaded:
    ...     out = torch.empty(10, 7)
    ...     _ = gemm_into(out, [a, b], pack_panels(w), bias, act="relu")
    ... else:
    ...     out = ref.clone()
    >>> torch.allclose(out, ref, atol=1e-5)
    True
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from necklace.deploy.native import loader as native

__all__ = [
    "GEMM_ACTS",
    "NR",
    "gemm_into",
    "gemm_ready",
    "pack_panels",
    "packed_columns",
    "run_gemm",
    "tensor_version",
]

#: activation name (the post-op names of :data:`~necklace.deploy.native.winograd.NATIVE_ACTS`) -> epilogue code
GEMM_ACTS: dict[str, int] = {"none": 0, "relu": 1, "swish": 2}
#: output channels per packed panel (the kernel's register tile is 6 rows x 16 columns)
NR = 16
#: the most parts one call takes (``NK_MAX_PARTS`` in gemm.c)
MAX_PARTS = 8


def gemm_ready(x: Tensor) -> bool:
    """Whether the native GEMM can run on maps like ``x``: the library is loaded and ``x`` is float32 on CPU."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and native.library() is not None


def tensor_version(t: Tensor) -> int:
    """``t._version`` (bumped by every in-place change), the key of the packed-weight caches; -1 for an inference
    tensor (made under ``torch.inference_mode()``), which has no version counter: a cache keyed on it sees a new tensor,
    not an in-place change made inside inference mode.

    Example:
        >>> w = torch.zeros(2)
        >>> v = tensor_version(w)
        >>> _ = w.add_(1)
        >>> tensor_version(w) == v + 1
        True
    """
    return -1 if t.is_inference() else t._version


def pack_panels(w2: Tensor) -> Tensor:
    """A weight matrix ``(N, K)`` (output x input channels; a batch ``(B, N, K)`` too) packed as the kernel reads
    ``B = w2^T``: ``(..., ceil(N / 16), K, 16)``, zeros past ``N``, float32, contiguous.

    Example:
        >>> pack_panels(torch.randn(20, 3)).shape
        torch.Size([2, 3, 16])
    """
    *batch, n, k = w2.shape
    panels = -(-n // NR)
    wp = w2.new_zeros((*batch, panels * NR, k), dtype=torch.float32)
    wp[..., :n, :] = w2.detach()
    return wp.view(*batch, panels, NR, k).transpose(-1, -2).contiguous()


def packed_columns(conv: nn.Conv2d, groups: tuple[tuple[int, ...], ...]) -> tuple[Tensor, ...]:
    """Packed panels of a 1x1 conv's weight, one per group of input-channel ranges: ``groups`` is a tuple of
    flattened ``(start, stop, start, stop, ...)`` tuples, each group's columns concatenated in that order (the
    parts one GEMM call reads). Cached on ``conv`` and rebuilt when the weight is replaced or changed in place.

    Example:
        >>> conv = nn.Conv2d(6, 4, 1)
        >>> [p.shape for p in packed_columns(conv, ((0, 2, 4, 6), (2, 4)))]
        [torch.Size([1, 4, 16]), torch.Size([1, 2, 16])]
    """
    w = conv.weight
    cache: dict[tuple[tuple[int, ...], ...], tuple[Tensor, int, tuple[Tensor, ...]]] = conv.__dict__.setdefault(
        "_nk_packed", {}
    )
    hit = cache.get(groups)
    if hit is not None and hit[0] is w and hit[1] == tensor_version(w):
        return hit[2]
    w2 = w.detach().reshape(w.shape[0], -1)
    packed = tuple(pack_panels(torch.cat([w2[:, g[i] : g[i + 1]] for i in range(0, len(g), 2)], dim=1)) for g in groups)
    if len(cache) >= 8:  # (a module called with many part layouts: start over)
        cache.clear()
    cache[groups] = (w, tensor_version(w), packed)
    return packed


def gemm_into(
    out: Tensor,
    parts: Sequence[Tensor],
    packed: Tensor,
    bias: Tensor | None = None,
    init_out: bool = False,
    act: str = "none",
    upsampled: tuple[Tensor, int, int] | None = None,
) -> Tensor:
    """``out = act(init + cat(parts, 1) @ B)`` in place: ``out`` a float32 ``(M, N)`` view with unit column stride,
    ``parts`` float32 ``(M, K_i)`` views with any strides, ``packed`` :func:`pack_panels` of ``B^T`` (N, sum K_i).
    ``init``: the ``bias`` (N) (zero when ``None``); with ``init_out``, ``out``'s own values; with ``upsampled =
    (low, h, w)``, the nearest upsampling of ``low`` (a dense channels_last ``(n, N, h / f_h, w / f_w)`` map, integer
    factors) to ``h x w`` pixels, ``out``'s rows being the ``n * h * w`` pixels (it is read, never built). Returns
    ``out``. ``RuntimeError`` where the library is not loaded, ``ValueError`` on shapes that do not fit.

    Example:
        >>> low, x, w = torch.randn(1, 4, 2, 3), torch.randn(24, 5), torch.randn(4, 5)
        >>> up = nn.functional.interpolate(low, size=(4, 6), mode="nearest")
        >>> ref = torch.relu(up.permute(0, 2, 3, 1).reshape(24, 4) + x @ w.t())
        >>> if native.build().loaded:
        ...     low = low.contiguous(memory_format=torch.channels_last)
        ...     got = gemm_into(torch.empty(24, 4), [x], pack_panels(w), act="relu", upsampled=(low, 4, 6))
        ... else:
        ...     got = ref
        >>> torch.allclose(got, ref, atol=1e-5)
        True
    """
    lib = native.library()
    if lib is None:
        raise RuntimeError(f"gemm_into: the native library is not loaded ({native.status().error}).")
    m, n = out.shape
    init, ld, lh, lw, hh, hw = None, 0, 1, 1, 1, 1
    if upsampled is not None:
        low, hh, hw = upsampled
        lh, lw = low.shape[2], low.shape[3]
        if (
            low.dim() != 4
            or low.shape[1] != n
            or low.dtype != torch.float32
            or not low.is_contiguous(memory_format=torch.channels_last)
            or lh < 1
            or lw < 1
            or hh % lh
            or hw % lw
            or low.shape[0] * hh * hw != m
        ):
            raise ValueError(
                f"gemm_into: upsampled needs a dense channels_last float32 map (n, {n}, h / f, w / f) with integer "
                f"factors to ({hh}, {hw}) and n * h * w = {m} rows, got {tuple(low.shape)} {low.dtype}."
            )
        init, ld = low.data_ptr(), n
    elif init_out:
        init, ld, lh, lw, hh, hw = out.data_ptr(), out.stride(0), 1, 1, 1, 1
    q = len(parts)
    # one array of (pointer, row stride, column stride, columns) per part; the checks in the same loop
    desc: list[int] = []
    ok = 0 < q <= MAX_PARTS and out.stride(1) == 1 and out.dtype == torch.float32 and out.device.type == "cpu"
    k = 0
    for p in parts:
        if not ok or p.dim() != 2 or p.shape[0] != m or p.dtype != torch.float32 or p.device.type != "cpu":
            ok = False
            break
        sm, sk = p.stride()
        desc += (p.data_ptr(), sm, sk, p.shape[1])
        k += p.shape[1]
    panels = (n + NR - 1) // NR
    if (
        not ok
        or packed.shape != (panels, k, NR)
        or not packed.is_contiguous()
        or (bias is not None and (bias.shape != (n,) or not bias.is_contiguous() or bias.dtype != torch.float32))
    ):
        raise ValueError(
            f"gemm_into: out (M, N) with unit column stride, 1 to {MAX_PARTS} float32 parts (M, K_i) and packed "
            f"panels (ceil(N/16), sum K_i, 16) expected; got out {tuple(out.shape)} strides {out.stride()}, parts "
            f"{[tuple(p.shape) for p in parts]}, packed {tuple(packed.shape)}."
        )
    if m == 0:
        return out
    run_gemm(lib, desc, m, n, packed, bias, out.data_ptr(), out.stride(0), init, ld, lh, lw, hh, hw, act)
    return out


#: ctypes array types of part descriptors by length (made once)
_DESC_TYPES: dict[int, type] = {}


def run_gemm(
    lib: ctypes.CDLL,
    desc: list[int],
    m: int,
    n: int,
    packed: Tensor,
    bias: Tensor | None,
    out: int,
    ldo: int,
    init: int | None = None,
    ld: int = 0,
    lh: int = 1,
    lw: int = 1,
    hh: int = 1,
    hw: int = 1,
    act: str = "none",
) -> None:
    """The library call behind :func:`gemm_into`, unchecked: ``desc`` holds ``(pointer, row stride, column stride,
    columns)`` of each float32 part, ``out`` / ``init`` are addresses. For callers that built every operand
    themselves (the native modules: their shapes follow from the weights they packed), so each call skips the
    checks of :func:`gemm_into`; anything else calls :func:`gemm_into`."""
    t = _DESC_TYPES.get(len(desc))
    if t is None:
        t = _DESC_TYPES[len(desc)] = ctypes.c_long * len(desc)
    lib.nk_gemm(
        len(desc) // 4, t(*desc), m, n, packed.data_ptr(), None if bias is None else bias.data_ptr(), out, ldo,
        init, ld, lh, lw, hh, hw, GEMM_ACTS[act], torch.get_num_threads(),
    )  # fmt: skip
