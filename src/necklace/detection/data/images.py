"""Image files: reading them into ``[3, H, W]`` float tensors and writing tensors back as 8-bit RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["IMAGE_EXTS"]

#: File suffixes the loaders treat as images.
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _image_to_tensor(arr: np.ndarray) -> Tensor:
    arr = np.array(arr, dtype=np.uint8, copy=True)  # PIL arrays are read-only
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)  # [3, H, W] in [0, 1]


def _tensor_to_uint8(image: Tensor) -> np.ndarray:
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image tensor [3, H, W], got shape {tuple(image.shape)}.")
    arr = (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return arr if arr.shape[2] == 3 else np.repeat(arr, 3, axis=2)


def _image_size(path: Path) -> tuple[int, int] | str:
    """``(width, height)`` from the image header, or the reason it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except (OSError, UnidentifiedImageError, ValueError) as e:
        return f"{type(e).__name__}: {e}"


def _write_image(image: Tensor, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_tensor_to_uint8(image)).save(path)
