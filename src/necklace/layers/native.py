"""necklace's native kernels: a small C library built on first use with the system C compiler, loaded with ctypes.

The Winograd F(4x4, 3x3) transforms (:mod:`necklace.layers.winograd`) are memory-bound loops that torch has no
single op for: written as torch ops they cost several passes over the data (a strided gather, two dense 36 x 36
and 16 x 36 GEMMs, a copy), which is why the pure-torch Winograd only paid from 128-192 channels. In C each
transform is one pass that stays in cache (``native.c``, beside this file), so Winograd pays from narrow convs on
small maps, where light necks (YOLO, RepPAN, BiFPN) spend their time.

The library has no torch headers and no Python API (plain functions on raw pointers), so it compiles in about a
second with ``cc -O3 -march=native -fopenmp -fno-trapping-math`` (OpenMP threads are those of torch's own
``libgomp``, already loaded). It is cached under ``$NECKLACE_NATIVE_DIR``, else
``$XDG_CACHE_HOME/necklace/native`` (default ``~/.cache/necklace/native``), in a folder named by a hash of the
source, compiler, flags and CPU, and written atomically (a build to a temporary file, then a rename), so
concurrent processes never load a half-written file.

Where there is no compiler, the build fails or ``NECKLACE_NATIVE=0`` is set, :func:`library` returns ``None``
(with one warning saying why, unless disabled on purpose) and necklace runs its pure-torch paths: the same results
up to rounding, only slower. :func:`status` says which case holds.

Example:
    >>> info = status()
    >>> sorted(info) == ["compiler", "error", "flags", "loaded", "path"]
    True
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

__all__ = ["VERSION", "cache_dir", "library", "reset", "status"]

#: what ``nk_native_version()`` of a library built from ``native.c`` returns (a stale file is rebuilt)
VERSION = 6
_SOURCE = Path(__file__).with_name("native.c")
_FLAG_SETS: tuple[tuple[str, ...], ...] = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-mavx2", "-mfma", "-fopenmp"),
    ("-O3", "-fopenmp"),
    ("-O3",),  # no OpenMP: single-threaded transforms
)
#: with every flag set: no errno / FP-exception semantics (never used), so the ReLU selects vectorise; IEEE
#: arithmetic and NaN propagation are kept (no -ffast-math)
_MATH = ("-fno-math-errno", "-fno-trapping-math")
_COMMON = ("-shared", "-fPIC", "-std=gnu99")

_lock = threading.Lock()
_state: dict[str, Any] = {"tried": False, "lib": None, "path": None, "compiler": None, "flags": None, "error": None}
_L, _P, _I = ctypes.c_long, ctypes.c_void_p, ctypes.c_int


def cache_dir() -> Path:
    """Where built libraries are kept: ``$NECKLACE_NATIVE_DIR``, else ``$XDG_CACHE_HOME/necklace/native``
    (``~/.cache/necklace/native``)."""
    env = os.environ.get("NECKLACE_NATIVE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "necklace" / "native"


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or (cc if Path(cc).is_file() else None)
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _key(compiler: str, flags: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    parts = (_SOURCE.read_bytes(), compiler.encode(), " ".join(flags + _MATH).encode(), platform.machine().encode())
    for part in parts:
        h.update(part)
        h.update(b"\0")
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    h.update(version.encode())
    if "-march=native" in flags:
        h.update(_cpu_flags().encode())
    return h.hexdigest()[:16]


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.nk_native_version.restype = _I
    lib.nk_native_version.argtypes = []
    lib.nk_wino_in.restype = None
    lib.nk_wino_in.argtypes = [_P, _L, _L, _L, _L, _L, _L, _L, _L, _L, _P, _I]
    lib.nk_wino_out.restype = None
    lib.nk_wino_out.argtypes = [_P, _P, _L, _L, _L, _L, _P, _L, _L, _L, _L, _L, _I, _I, _I]
    if lib.nk_native_version() != VERSION:
        raise OSError(f"library reports version {lib.nk_native_version()}, expected {VERSION}")
    return lib


def _build(compiler: str, flags: tuple[str, ...], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, *flags, *_MATH, *_COMMON, str(_SOURCE), "-o", tmp, "-lm"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise OSError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-600:]}")
        os.chmod(tmp, 0o755)  # (mkstemp made it 0600)
        os.replace(tmp, target)  # atomic: another process sees no file or the whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> None:
    if os.environ.get("NECKLACE_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        _state["error"] = "disabled by NECKLACE_NATIVE=0"
        return
    compiler = _compiler()
    if compiler is None:
        _state["error"] = "no C compiler found (set CC, or install gcc/clang)"
        return
    _state["compiler"] = compiler
    errors = []
    for flags in _FLAG_SETS:
        target = cache_dir() / _key(compiler, flags) / "libnecklace_native.so"
        try:
            try:
                if not target.exists():
                    _build(compiler, flags, target)
                lib = _bind(ctypes.CDLL(str(target)))
            except (OSError, AttributeError):
                # a cached file that does not load (truncated by a crash, or another version): build it again
                # under a fresh name (a library once mapped stays in the process) and keep that one
                fresh = target.with_name(f"libnecklace_native-{os.getpid()}-{threading.get_ident()}.so")
                _build(compiler, flags, fresh)
                lib = _bind(ctypes.CDLL(str(fresh)))
                os.replace(fresh, target)
        except (OSError, subprocess.SubprocessError, AttributeError) as e:
            errors.append(str(e))
            continue
        _state.update(lib=lib, path=str(target), flags=" ".join(flags), error=None)
        return
    _state["error"] = "; ".join(errors)


def library() -> ctypes.CDLL | None:
    """The loaded native library, built on the first call (about a second); ``None`` where it cannot be had
    (see :func:`status`), after one ``RuntimeWarning`` saying why unless ``NECKLACE_NATIVE=0`` turned it off."""
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                _load()
                _state["tried"] = True
                if _state["lib"] is None and not str(_state["error"]).startswith("disabled"):
                    warnings.warn(
                        f"necklace: native kernels unavailable ({_state['error']}); running the pure-torch paths "
                        "(same results, slower). Set NECKLACE_NATIVE=0 to skip the build and this warning.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
    return _state["lib"]


def status() -> dict[str, Any]:
    """Whether the native library is loaded, and from where / why not: ``loaded``, ``path``, ``compiler``,
    ``flags``, ``error`` (builds it first if that was not tried yet)."""
    library()
    return {k: _state[k] for k in ("path", "compiler", "flags", "error")} | {"loaded": _state["lib"] is not None}


def reset() -> None:
    """Forget the loaded library (the next :func:`library` call looks again, e.g. after changing the
    environment). A library already loaded stays mapped in the process."""
    with _lock:
        _state.update(tried=False, lib=None, path=None, compiler=None, flags=None, error=None)
