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
import errno
import os
import pickle
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, cast

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
    anything fails on the way the temporary file is removed and the old ``path`` (if any) is untouched. A failed
    write raises ``OSError`` in plain words with the path (``"no space left writing PATH ..."`` for a full disk,
    not torch's ``inline_container`` message), its ``errno`` kept.

    Example:
        >>> import tempfile
        >>> p = save_checkpoint({"step": 1}, Path(tempfile.mkdtemp()) / "sub" / "c.pt")
        >>> p.name, sorted(f.name for f in p.parent.iterdir())
        ('c.pt', ['c.pt'])
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(path, e) from e
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **dict(state)}
    try:
        with _open_for_write(tmp) as raw:
            sink = _Sink(raw)
            try:
                torch.save(payload, cast(BinaryIO, sink))  # duck-typed: torch needs write() and flush()
            except RuntimeError as e:  # torch wraps the file's own error in "inline_container.cc: ..."
                if sink.error is not None:
                    raise sink.error from e
                raise
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError):
            raise _write_error(path, e) from e
        raise
    _fsync_dir(path.parent)
    return path


def _open_for_write(path: Path) -> BinaryIO:
    """The file a checkpoint is written to (a seam for tests that simulate a full disk)."""
    return open(path, "wb")


class _Sink:
    """Passes torch's writes to the file and keeps the first ``OSError`` (torch reports it without the errno)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.raw.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.raw.flush()


def _write_error(path: Path, e: OSError) -> OSError:
    """``e`` in plain words: what happened, to which file, that the old checkpoint is intact, what to do."""
    kept = "; the previous checkpoint (if any) is unchanged"
    code = e.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        free = _free_bytes(path.parent)
        room = f" ({free / 2**20:.0f} MiB free there)" if free is not None else ""
        text = (
            f"no space left writing {path}{room}{kept}. Free disk space (or raise the quota), or write the run to "
            "another disk (--output / TrainConfig.output)."
        )
    elif code == errno.EFBIG:
        text = f"file too large writing {path} (a file-size limit: ulimit -f, or the file system){kept}."
    elif code in (errno.EACCES, errno.EPERM):
        text = f"permission denied writing {path}{kept}. Choose an output directory you can write to."
    elif code == errno.EROFS:
        text = f"read-only file system: cannot write {path}{kept}. Choose an output directory on a writable disk."
    else:
        text = f"cannot write {path}: {e.strerror or e}{kept}."
    out = (type(e) if type(e).__module__ == "builtins" else OSError)(text)  # PermissionError stays one
    out.errno = code  # (no filename: it is in the text, and would turn str() back into "[Errno ...] ...")
    return out


def _free_bytes(directory: Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


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

    Raises ``FileNotFoundError`` for a missing file (or a directory) and ``ValueError`` naming the path and the
    reason for an empty, truncated or corrupt file, one with foreign objects, or one that is not a necklace
    training checkpoint.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.pt"
        >>> torch.save({"state_dict": {}}, p)
        >>> load_checkpoint(p)
        Traceback (most recent call last):
        ...
        ValueError: ... is not a necklace training checkpoint ...
        >>> _ = p.write_bytes(b"")
        >>> load_checkpoint(p)
        Traceback (most recent call last):
        ...
        ValueError: checkpoint '...x.pt' is empty (0 bytes): ...
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} is a directory; give the checkpoint file (e.g. {str(path / 'checkpoint.pt')!r})."
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist.")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(
            f"checkpoint {str(path)!r} is empty (0 bytes): it was truncated (a copy or transfer that failed, or a "
            "disk that filled up while it was written). Use another checkpoint (an earlier copy) or train again."
        )
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {e.strerror or e}.") from e
    except Exception as e:  # truncated zip, pickle with foreign objects, ...
        raise ValueError(_read_problem(path, size, e)) from e
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


def _read_problem(path: Path, size: int, e: Exception) -> str:
    reason = " ".join(str(e).split()) or type(e).__name__
    if "weights_only" in reason or isinstance(e, pickle.UnpicklingError):
        return (
            f"cannot read checkpoint {str(path)!r}: it holds objects other than tensors and plain data, which "
            f"necklace does not unpickle (weights_only loading; {type(e).__name__}: {reason[:200]}). Load files "
            "written by necklace train."
        )
    if isinstance(e, EOFError) or any(k in reason for k in ("central directory", "zip archive", "EOF", "truncat")):
        return (
            f"cannot read checkpoint {str(path)!r}: the file is truncated or corrupt ({size:,} bytes, not a complete "
            f"checkpoint archive; {type(e).__name__}: {reason[:200]}). Use another checkpoint (an earlier copy) or "
            "train again."
        )
    return f"cannot read checkpoint {str(path)!r}: {type(e).__name__}: {reason[:300]}"


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
