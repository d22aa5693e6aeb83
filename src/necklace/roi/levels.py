"""Pyramid level of each RoI (FPN eq. (1)) under each library's convention: :func:`assign_levels`, :data:`RULES`."""

from __future__ import annotations

import difflib

import torch
from torch import Tensor

__all__ = ["RULES", "assign_levels", "check_boxes"]

#: Level-assignment conventions understood by :func:`assign_levels` (see its docstring for the table).
RULES: tuple[str, ...] = ("paper", "torchvision", "detectron2", "mmdet", "mmdet_legacy", "augfpn")
_MMDET_RULES = ("mmdet", "mmdet_legacy", "augfpn")


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        close = difflib.get_close_matches(str(rule), RULES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown level-assignment rule {rule!r}; choose one of {list(RULES)}.{hint}")


def check_boxes(boxes: object, what: str = "boxes") -> Tensor:
    """``boxes`` when it is a real ``Tensor[N, 4]`` of ``(x1, y1, x2, y2)`` boxes, else a ``TypeError`` /
    ``ValueError`` with the fix (finiteness is the poolers' check: :func:`assign_levels` maps NaN to ``min_level``).

    Example:
        >>> check_boxes(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        Traceback (most recent call last):
        ...
        ValueError: boxes has shape (4,); expected Tensor[N, 4] of (x1, y1, x2, y2) boxes. For a single box use ...
    """
    if not isinstance(boxes, Tensor):
        raise TypeError(
            f"{what} must be a Tensor[N, 4] of (x1, y1, x2, y2) boxes, got {type(boxes).__name__}. "
            "Convert with torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)."
        )
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        fix = (
            " For a single box use boxes.unsqueeze(0)."
            if boxes.dim() == 1 and boxes.numel() == 4
            else " Boxes are (x1, y1, x2, y2) in image pixels; drop a batch-index column with boxes[:, 1:]."
            if boxes.dim() == 2 and boxes.shape[-1] == 5
            else ""
        )
        raise ValueError(
            f"{what} has shape {tuple(boxes.shape)}; expected Tensor[N, 4] of (x1, y1, x2, y2) boxes.{fix}"
        )
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(
            f"{what} has dtype {boxes.dtype}; boxes are real (x1, y1, x2, y2) pixel coordinates. Pass a float tensor."
        )
    return boxes


def assign_levels(
    boxes: Tensor,
    k0: int = 4,
    canonical: float = 224,
    min_level: int = 2,
    max_level: int = 5,
    rule: str = "torchvision",
    *,
    finest_scale: float | None = None,
) -> Tensor:
    """Pyramid level of each box by FPN eq. (1), ``k = floor(k0 + log2(sqrt(w*h) / canonical))``.

    Returns the **absolute** level (``2`` for P2, stride 4) of each box as ``int64``, clamped to
    ``[min_level, max_level]``. Subtract ``min_level`` for an index into the list of feature maps.

    The libraries agree away from the boundaries ``s = canonical * 2**j`` and differ on them only through where their
    epsilon goes and how they measure the box; ``rule`` reproduces each one bit for bit (``s`` is the box size):

    ================ ========================= ============================================================ ========
    rule             s                         level                                                        eps
    ================ ========================= ============================================================ ========
    ``paper``        ``sqrt(w*h)``             ``floor(k0 + log2(s/canonical))``                            none
    ``torchvision``  ``sqrt(w*h)``             ``floor(k0 + log2(s/canonical) + 1e-6)`` (``LevelMapper``)   after log
    ``detectron2``   ``sqrt(w*h)``             ``floor(k0 + log2(s/canonical + 1e-8))`` (``ROIPooler``)     in log
    ``mmdet``        ``sqrt(w*h)``             ``min_level + floor(log2(s/finest_scale + 1e-6))``           in log
                                               (``SingleRoIExtractor``, mmdet 2.x/3.x)
    ``mmdet_legacy`` ``sqrt((w+1)*(h+1))``     as ``mmdet`` (mmdet v0.6-era code; AugFPN, PANet ports)      in log
    ``augfpn``       ``sqrt((w+1)*(h+1))``     alias of ``mmdet_legacy``                                    in log
    ================ ========================= ============================================================ ========

    ``w = x2 - x1``, ``h = y2 - y1``. For the mmdet rules ``finest_scale`` defaults to
    ``canonical * 2**(min_level - k0)`` (56 for the defaults), which makes them algebraically the FPN formula; mmdet
    itself counts levels from its *first* feature map whatever its stride, so to reproduce an mmdet extractor whose
    first map is not P2, pass its ``finest_scale`` (56) explicitly. Near the boundaries: torchvision's eps moves boxes
    up to ``~7e-7 * s`` *below* a boundary to the upper level, mmdet's moves those up to ``56e-6`` pixels below,
    detectron2's (and the paper) keep them on the lower one.

    Degenerate boxes (``x2 < x1`` or ``y2 < y1``) count as zero width/height (size 0, so ``min_level``) instead of
    giving NaN; NaN coordinates also map to ``min_level``. Sizes are computed in the boxes' dtype (float32/float64;
    half precision and integer boxes are promoted to float32), as torchvision does.

    Example:
        >>> b = torch.tensor([[0, 0, 112, 112], [0, 0, 224, 224], [0, 0, 223.9999, 223.9999], [5, 5, 4, 4.]])
        >>> assign_levels(b).tolist()  # torchvision: eps lifts 223.9999 to P4; an inverted box goes to P2
        [3, 4, 4, 2]
        >>> assign_levels(b, rule="detectron2").tolist()
        [3, 4, 3, 2]
        >>> assign_levels(b[:2] - torch.tensor([0, 0, 0.5, 0.5]), rule="augfpn").tolist()  # sqrt((w+1)(h+1))
        [3, 4]
    """
    _check_rule(rule)
    boxes = check_boxes(boxes)
    if min_level > max_level:
        raise ValueError(
            f"min_level {min_level} > max_level {max_level}; pass the finest pyramid level first, e.g. min_level=2, "
            "max_level=5 for P2..P5 (strides 4..32)."
        )
    if not canonical > 0:
        raise ValueError(f"canonical box size must be positive (224 in the FPN paper), got {canonical!r}.")
    if finest_scale is not None and rule not in _MMDET_RULES:
        raise ValueError(
            f"finest_scale is an mmdet knob; rule {rule!r} uses k0 and canonical instead. Use rule='mmdet' or "
            "drop finest_scale."
        )
    if boxes.dtype not in (torch.float32, torch.float64):
        boxes = boxes.float()
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=0)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    if rule in ("mmdet_legacy", "augfpn"):
        w, h = w + 1, h + 1
    s = torch.sqrt(w * h)
    # The expressions below keep each library's operation order so that results match bit for bit.
    if rule == "paper":
        lvl = torch.floor(k0 + torch.log2(s / canonical))
    elif rule == "torchvision":
        lvl = torch.floor(k0 + torch.log2(s / canonical) + torch.tensor(1e-6, dtype=s.dtype, device=s.device))
    elif rule == "detectron2":
        lvl = torch.floor(k0 + torch.log2(s / canonical + 1e-8))
    else:
        finest = canonical * 2.0 ** (min_level - k0) if finest_scale is None else finest_scale
        if not finest > 0:
            raise ValueError(f"finest_scale must be positive (56 in mmdet), got {finest_scale!r}.")
        lvl = torch.floor(torch.log2(s / finest + 1e-6)) + min_level
    lvl = torch.nan_to_num(lvl, nan=float(min_level))
    return lvl.clamp(min=min_level, max=max_level).to(torch.int64)
