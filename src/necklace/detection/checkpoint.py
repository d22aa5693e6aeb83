"""Training checkpoints: written atomically, read back with checks, and the RNG state they carry.

:func:`save_checkpoint` writes to a temporary file in the same directory, ``fsync``\\ s it and moves it over the
target with ``os.replace`` (atomic on POSIX and Windows), so a crash or a kill during the write leaves the previous
checkpoint intact and never a half-written one under the real name. :func:`load_checkpoint` reads with
``torch.load(weights_only=True)`` (no arbitrary code runs) and says clearly when a file is missing, truncated or
not a necklace checkpoint. :func:`rng_state` / :func:`set_rng_state` capture and restore the Python, NumPy, torch
(and CUDA) generators in a form ``weights_only`` loading accepts.

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "ckpt.pt"
    >>> _ = save_checkpoint({"step": 3, "weights": torch.ones(2)}, path)
    >>> ckpt = load_checkpoint(path)
    >>> ckpt["step"], ckpt["format"]
    (3, 'necklace.train')
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "necklace.train"
CHECKPOINT_VERSION = 1


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``state`` (plus ``format``/``version`` keys) to ``path`` atomically; return the path.

    The bytes go to ``.<name>.<pid>.tmp`` beside ``path``, are flushed to disk, then renamed over ``path``. If
    anything fails on the way the temporary file is removed and the old ``path`` (if any) is untouched.

    Example:
        >>> import tempfile
        >>> p = save_checkpoint({"step": 1}, Path(tempfile.mkdtemp()) / "sub" / "c.pt")
        >>> p.name, sorted(f.name for f in p.parent.iterdir())
        ('c.pt', ['c.pt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **dict(state)}
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only``: tensors and plain data only).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a truncated/corrupt file or one that is
    not a necklace training checkpoint.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.pt"
        >>> torch.save({"state_dict": {}}, p)
        >>> load_checkpoint(p)
        Traceback (most recent call last):
        ...
        ValueError: ... is not a necklace training checkpoint ...
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist.")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle with foreign objects, ...
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {type(e).__name__}: {e}") from e
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a necklace training checkpoint (no 'format': {CHECKPOINT_FORMAT!r} entry); "
            "checkpoints come from necklace.detection.train / `necklace train`."
        )
    if int(data.get("version", 0)) > CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {str(path)!r} has format version {data['version']}; this necklace reads up to "
            f"{CHECKPOINT_VERSION}. Upgrade necklace."
        )
    return data


def rng_state() -> dict[str, Any]:
    """The Python, NumPy, torch CPU (and, when initialised, CUDA) generator states as plain data + tensors.

    Example:
        >>> s = rng_state()
        >>> a = torch.rand(2); set_rng_state(s); bool(torch.equal(a, torch.rand(2)))
        True
    """
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore generators from :func:`rng_state` (CUDA states only when CUDA is available)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32) if isinstance(n["keys"], torch.Tensor) else np.asarray(n["keys"])
    np.random.set_state((n["name"], keys, int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
