"""What each neck output level responds to: per-level heatmaps of a trained detector, drawn as one PNG.

:func:`feature_heatmaps` runs an image through the detector's own transform (resize + normalise), backbone and
neck, reduces every output map over its channels (``"l2"``: the L2 norm of the feature vector at each location;
``"mean_abs"``: the mean absolute activation), resizes it back onto the image and scales it to ``[0, 1]`` per level.
:func:`draw_feature_heatmaps` draws the image (with the detector's boxes and, when known, the ground truth) next to
one overlay per level, titled with level, stride and map size. ``necklace features`` is the command for it.

Example:
    >>> from necklace.detection import TinyBackbone, build_detector
    >>> model = build_detector("fcos", TinyBackbone(width=4), "fpn", 3, neck_options={"width": 8},
    ...                        min_size=64, max_size=64, head_convs=1).eval()
    >>> levels = feature_heatmaps(model, torch.rand(3, 64, 96))  # the detector resizes it to 43 x 64, pads to 64
    >>> [(lv.name, lv.stride, lv.map_size, tuple(lv.heatmap.shape)) for lv in levels][:2]
    [('P3', 8, (8, 8), (64, 96)), ('P4', 16, (4, 4), (64, 96))]
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from necklace.detection.data.images import read_image

__all__ = ["REDUCTIONS", "FeatureFigure", "LevelHeatmap", "draw_feature_heatmaps", "feature_heatmaps", "load_image"]

REDUCTIONS = ("l2", "mean_abs")
_REDUCE_TEXT = {"l2": "L2 norm over channels", "mean_abs": "mean |activation| over channels"}


@dataclass(frozen=True)
class LevelHeatmap:
    """One neck output level: ``heatmap`` is ``[H, W]`` on the input image, scaled to ``[0, 1]`` (``low`` and
    ``high`` are the raw reduced values that map to 0 and 1).

    Example:
        >>> from necklace.detection import TinyBackbone, build_detector
        >>> model = build_detector("retinanet", TinyBackbone(width=4), "pafpn", 2, neck_options={"width": 8},
        ...                        min_size=64, max_size=64)
        >>> lv = feature_heatmaps(model, torch.rand(3, 64, 64), reduce="mean_abs")[-1]
        >>> lv.name, lv.stride, lv.map_size, lv.channels, 0 <= float(lv.heatmap.min()) <= float(lv.heatmap.max()) <= 1
        ('P6', 64, (1, 1), 8, True)
    """

    name: str
    stride: int
    channels: int
    map_size: tuple[int, int]
    heatmap: Tensor
    low: float
    high: float


@dataclass(frozen=True)
class FeatureFigure:
    """What :func:`draw_feature_heatmaps` drew: the file, the levels (one panel each) and the detections shown.

    Example:
        >>> fig = FeatureFigure(Path("heat.png"), levels=(), panels=1, detections=0)
        >>> fig.panels == 1 + len(fig.levels)  # the input image, then one panel per neck output level
        True
    """

    path: Path
    levels: tuple[LevelHeatmap, ...]
    panels: int  # image panel + one per level
    detections: int


def load_image(path: str | Path) -> Tensor:
    """An image file as a float ``[3, H, W]`` tensor in ``[0, 1]`` (RGB, decoded in full; 16-bit and palette images
    by their real range: :func:`~necklace.detection.data.read_image`).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> p = Path(tempfile.mkdtemp()) / "x.png"; Image.new("L", (5, 4)).save(p)
        >>> tuple(load_image(p).shape)
        (3, 4, 5)
    """
    return read_image(path)


def _parts(model: nn.Module) -> tuple[Any, Any]:
    transform = getattr(model, "transform", None)
    adapter = getattr(model, "backbone", None)
    if transform is None or adapter is None or not hasattr(adapter, "names") or not hasattr(adapter, "out_specs"):
        raise TypeError(
            f"feature_heatmaps needs a necklace detector (build_detector / load_model), got {type(model).__name__}."
        )
    return transform, adapter


def feature_heatmaps(model: nn.Module, image: Tensor, reduce: str = "l2") -> list[LevelHeatmap]:
    """Per-level heatmaps of ``model``'s neck outputs for ``image`` (``[3, H, W]``, values in ``[0, 1]``).

    The image goes through the detector's transform as in inference; each heatmap is the channel reduction
    (``reduce``: ``"l2"`` or ``"mean_abs"``) of one output level, bilinearly resized onto the ``H x W`` image
    and min-max scaled per level.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce {reduce!r}: choose one of {list(REDUCTIONS)}.")
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"feature_heatmaps expects one RGB image [3, H, W], got {got}.")
    transform, adapter = _parts(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            batch = transform([image.to(device)])[0]
            feats = adapter(batch.tensors)  # OrderedDict P<l> -> [1, C, ceil(Hp/s), ceil(Wp/s)]
    finally:
        model.train(was_training)
    hp, wp = batch.tensors.shape[-2:]
    h, w = batch.image_sizes[0]  # the resized image inside the padded batch
    out = []
    for spec, (name, fmap) in zip(adapter.out_specs, feats.items(), strict=True):
        f = fmap[0].float()
        red = f.norm(dim=0) if reduce == "l2" else f.abs().mean(dim=0)  # [h_l, w_l]
        up = nn.functional.interpolate(red[None, None], size=(hp, wp), mode="bilinear", align_corners=False)
        up = up[:, :, :h, :w]  # drop the padding
        up = nn.functional.interpolate(up, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)[0, 0]
        low, high = float(red.min()), float(red.max())
        scaled = (up - low) / (high - low) if high > low else torch.zeros_like(up)
        out.append(
            LevelHeatmap(
                name=str(name),
                stride=int(spec.stride),
                channels=int(f.shape[0]),
                map_size=(int(f.shape[1]), int(f.shape[2])),
                heatmap=scaled.clamp(0, 1).cpu(),
                low=low,
                high=high,
            )
        )
    return out


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("drawing heatmaps needs matplotlib: pip install 'necklace[viz]'") from e
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _boxes(ax: Any, boxes: Tensor, labels: Tensor, scores: Tensor | None, names: Sequence[str], gt: bool) -> None:
    from matplotlib.patches import Rectangle

    colours = ("#00e5ff", "#ffea00", "#ff4081", "#76ff03", "#ff9100", "#e040fb")
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        lab = int(labels[i])
        colour = "white" if gt else colours[(lab - 1) % len(colours)]
        ax.add_patch(
            Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colour, lw=0.9 if gt else 1.4, ls="--" if gt else "-")
        )
        if not gt:
            name = names[lab - 1] if 0 < lab <= len(names) else str(lab)
            score = f" {float(scores[i]):.2f}" if scores is not None else ""
            box = {"fc": colour, "ec": "none", "pad": 0.6, "alpha": 0.85}
            ax.text(x0, y0, f"{name}{score}", fontsize=6, color="black", va="bottom", bbox=box)


def draw_feature_heatmaps(
    model: nn.Module,
    image: Tensor,
    path: str | Path,
    reduce: str = "l2",
    score_thresh: float = 0.3,
    target: Mapping[str, Tensor] | None = None,
    title: str | None = None,
    columns: int = 3,
) -> FeatureFigure:
    """Draw ``image`` (with the detections scoring ``>= score_thresh``, and ``target``'s boxes dashed when given)
    and one heatmap overlay per neck output level into one PNG grid at ``path``.

    Example:
        >>> import tempfile
        >>> from necklace.detection import TinyBackbone, build_detector
        >>> model = build_detector("fcos", TinyBackbone(width=4), "fpn", 3, neck_options={"width": 8},
        ...                        min_size=64, max_size=64, head_convs=1)
        >>> fig = draw_feature_heatmaps(model, torch.rand(3, 64, 64), Path(tempfile.mkdtemp()) / "f.png")
        >>> fig.panels, [lv.name for lv in fig.levels], fig.path.stat().st_size > 0
        (5, ['P3', 'P4', 'P5', 'P6'], True)
    """
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be a positive int, got {columns!r}.")
    levels = feature_heatmaps(model, image, reduce)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            pred = model([image.to(device)])[0]
    finally:
        model.train(was_training)
    keep = pred["scores"] >= score_thresh
    names = tuple(getattr(model, "class_names", ()) or ())
    plt = _pyplot()
    panels = 1 + len(levels)
    cols = min(columns, panels)
    rows = math.ceil(panels / cols)
    h, w = image.shape[-2:]
    side = 3.6
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols, side * rows * h / w + 0.5 * rows), squeeze=False)
    img = image.permute(1, 2, 0).clamp(0, 1).cpu().numpy()
    grey = img.mean(axis=2)
    ax0 = axes[0][0]
    ax0.imshow(img)
    if target is not None and "boxes" in target:
        _boxes(ax0, target["boxes"].cpu(), target.get("labels", torch.ones(len(target["boxes"]))), None, names, True)
    _boxes(ax0, pred["boxes"][keep].cpu(), pred["labels"][keep].cpu(), pred["scores"][keep].cpu(), names, False)
    gt_note = ", ground truth dashed" if target is not None else ""
    ax0.set_title(f"input {w}x{h}: {int(keep.sum())} detections >= {score_thresh:g}{gt_note}", fontsize=8)
    for i, lv in enumerate(levels, start=1):
        ax = axes[i // cols][i % cols]
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
        ax.imshow(lv.heatmap.numpy(), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
        ax.set_title(
            f"{lv.name}: stride {lv.stride}, map {lv.map_size[0]}x{lv.map_size[1]}, {lv.channels} ch\n"
            f"range {lv.low:.2g} to {lv.high:.2g}",
            fontsize=8,
        )
    for r in range(rows):
        for c in range(cols):
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
            if r * cols + c >= panels:
                axes[r][c].axis("off")
    fig.suptitle(
        (title + "\n" if title else "")
        + f"{_REDUCE_TEXT[reduce]}, each level scaled to its own min (dark) .. max (bright)",
        fontsize=9,
    )
    fig.tight_layout(h_pad=2.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=130)
    finally:
        plt.close(fig)
    tmp.replace(path)
    return FeatureFigure(path=path, levels=tuple(levels), panels=panels, detections=int(keep.sum()))
