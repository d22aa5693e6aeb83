"""Image files: decoding them into ``[3, H, W]`` float tensors in ``[0, 1]`` and writing tensors back as 8-bit RGB.

:func:`read_image` decodes the whole file (a file whose header is intact but whose pixel data is cut short is an
error, not a half-grey image) and converts every Pillow mode to RGB by its real range: 16-bit grayscale (``I;16``,
``I``) is scaled by 65535, not clipped at 255 (which made 16-bit PNGs almost white); palette images go through
their palette (transparent entries included); alpha is dropped; float (``F``) images are taken as ``[0, 1]`` when
they lie there. :func:`probe_image` is the check the loaders run on every image before it counts as valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["IMAGE_EXTS", "probe_image", "read_image"]

#: File suffixes the loaders treat as images.
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # Pillow's modes for 16-bit (and 32-bit int) grayscale
#: what Pillow raises on damaged files; ImportError too: a host library may wrap ``PIL.Image.open`` process-wide
#: and, on a file Pillow cannot identify, try to import an optional plugin (Ultralytics imports ``pi_heif`` there)
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, ImportError)


def read_image(path: str | Path) -> Tensor:
    """Decode an image file completely into a float ``[3, H, W]`` RGB tensor in ``[0, 1]``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (naming the file, the reason and the fix)
    for a file Pillow cannot decode in full (not an image, truncated, corrupt).

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> from PIL import Image
        >>> p = Path(tempfile.mkdtemp()) / "depth.png"
        >>> Image.fromarray(np.full((4, 5), 32768, dtype=np.uint16)).save(p)  # 16-bit grayscale, half range
        >>> image = read_image(p)
        >>> tuple(image.shape), round(image.max().item(), 3)
        ((3, 4, 5), 0.5)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} not found" + (" (it is a directory)." if path.is_dir() else "."))
    try:
        return _decode(path)
    except _READ_ERRORS as e:
        raise ValueError(
            f"cannot decode image {str(path)!r}: {_reason(e)}. Expected a complete image file Pillow can read "
            f"({', '.join(IMAGE_EXTS)}); re-export or replace the file (or load the data set with on_error='drop')."
        ) from e


def probe_image(path: str | Path, full: bool = True) -> tuple[int, int] | str:
    """``(width, height)`` of an image file, or the reason it cannot be read.

    ``full=True`` decodes all the pixel data (JPEGs at reduced scale, which still reads every byte), so a file cut
    short after an intact header is caught here rather than in the middle of an epoch; ``full=False`` reads only
    the header.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> p = Path(tempfile.mkdtemp()) / "x.png"
        >>> Image.new("RGB", (64, 48)).save(p)
        >>> probe_image(p)
        (64, 48)
        >>> _ = p.write_bytes(p.read_bytes()[:60])  # the header survives, the pixels do not
        >>> probe_image(p, full=False), probe_image(p)
        ((64, 48), 'OSError: image file is truncated')
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            size = int(im.size[0]), int(im.size[1])
            if full:
                if im.format == "JPEG":
                    im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))  # DCT scaling: fast, reads all
                im.load()
            return size
    except _READ_ERRORS as e:
        return _reason(e)


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    text = text.split(" (")[0] if text.startswith("image file is truncated") else text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _decode(path: Path) -> Tensor:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return _to_tensor(im)


def _to_tensor(im: Any) -> Tensor:
    """A loaded Pillow image as ``[3, H, W]`` float in ``[0, 1]``, each mode scaled by its own range."""
    mode = im.mode
    if mode in _SIXTEEN_BIT or mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if mode in _SIXTEEN_BIT:
            scale = 65535.0
        else:  # float images: [0, 1] as they are, else 8- or 16-bit ranges
            top = float(np.nanmax(arr)) if arr.size else 0.0
            scale = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0
        gray = torch.from_numpy(np.nan_to_num(arr / scale, nan=0.0)).clamp_(0.0, 1.0)
        return gray.unsqueeze(0).expand(3, -1, -1).contiguous()
    if mode in ("P", "PA"):  # through the palette; transparency as alpha, then dropped
        im = im.convert("RGBA")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return _image_to_tensor(np.asarray(im))


def _image_to_tensor(arr: np.ndarray) -> Tensor:
    arr = np.array(arr, dtype=np.uint8, copy=True)  # PIL arrays are read-only
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)  # [3, H, W] in [0, 1]


def _tensor_to_uint8(image: Tensor) -> np.ndarray:
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image tensor [3, H, W], got shape {tuple(image.shape)}.")
    arr = (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return arr if arr.shape[2] == 3 else np.repeat(arr, 3, axis=2)


def _write_image(image: Tensor, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_tensor_to_uint8(image)).save(path)
