"""The native runtime's C library: built by an explicit step, verified before it is loaded, loaded from a private copy.

The Winograd F(4x4, 3x3) conv (:mod:`necklace.deploy.native.winograd`: transforms and channel mixing fused per band
of tiles, ``kernels.c``) and the GEMM of 1x1 convs with their epilogue (:mod:`necklace.deploy.native.cgemm`,
``gemm.c``) are loops torch has no single op for (the C sources are beside this file). The library has no torch
headers and no Python API (plain functions on raw pointers), so it compiles in about a second with
``cc -O3 -march=native -fopenmp -fno-trapping-math``.

Nothing here runs at import or in a forward. :func:`build` (called by ``necklace.deploy(model, runtime="native")``,
or by you ahead of time: ``python -m necklace.deploy.native.loader``) compiles the library into the cache, or finds
it there, and loads it; it returns a :class:`NativeBuild` report (what was found, built or why not). The cache is
``$NECKLACE_NATIVE_DIR``, else ``$XDG_CACHE_HOME/necklace/native`` (default ``~/.cache/necklace/native``), one
folder per hash of the sources, compiler, flags and CPU, holding the library and a manifest with its SHA-256. Writes
are atomic (a temporary file, then a rename), an output the compiler left empty or not a shared object is
deleted, and a cached file is only loaded after its bytes match the manifest, from a private in-memory copy
(``memfd``): a damaged or concurrently rewritten cache file is rebuilt, never mapped, so it cannot crash the
process. ``CC`` may carry arguments (``CC="ccache gcc"``).

Where there is no compiler, the build fails or ``NECKLACE_NATIVE=0`` is set, the report says why and the native
modules run their pure-torch forms (the same results up to rounding, slower).

Example:
    >>> report = status()
    >>> sorted(report.to_dict()) == ["compiler", "error", "flags", "loaded", "path", "seconds", "source"]
    True
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["VERSION", "NativeBuild", "build", "cache_dir", "library", "reset", "status"]

#: what ``nk_native_version()`` of a library built from the sources returns (another version is rebuilt)
VERSION = 12
#: the C sources, beside this file: the Winograd transforms and the GEMMs (with the convs' epilogues)
_SOURCES = (Path(__file__).with_name("kernels.c"), Path(__file__).with_name("gemm.c"))
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
_LIB_NAME, _MANIFEST = "libnecklace_native.so", "manifest.json"
#: the first bytes of a shared object on the platforms the build supports (ELF; Mach-O 64-bit)
_MAGICS = (b"\x7fELF", b"\xcf\xfa\xed\xfe")

_lock = threading.Lock()
_L, _P, _I = ctypes.c_long, ctypes.c_void_p, ctypes.c_int


@dataclass(frozen=True)
class NativeBuild:
    """What :func:`build` did: ``loaded`` (the library is in use), ``source`` (``"cache"``: a verified cached file,
    ``"built"``: compiled now, ``None``: not loaded), ``path`` of the cached library, ``compiler`` (the command),
    ``flags``, ``seconds`` spent (build + verification + load) and ``error`` (why it is not loaded, or what failed
    before a flag set that worked).

    Example:
        >>> NativeBuild(False, None, None, None, None, 0.0, "disabled by NECKLACE_NATIVE=0").loaded
        False
    """

    loaded: bool
    source: str | None
    path: str | None
    compiler: str | None
    flags: str | None
    seconds: float
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_state: dict[str, Any] = {"lib": None, "report": None}


def cache_dir() -> Path:
    """Where built libraries are kept: ``$NECKLACE_NATIVE_DIR``, else ``$XDG_CACHE_HOME/necklace/native``
    (``~/.cache/necklace/native``)."""
    env = os.environ.get("NECKLACE_NATIVE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "necklace" / "native"


def _compiler() -> tuple[list[str] | None, str | None]:
    """The compiler command (``$CC`` split like a shell would, so ``"ccache gcc"`` works) or why there is none."""
    cc = os.environ.get("CC", "").strip()
    if cc:
        try:
            argv = shlex.split(cc)
        except ValueError as e:
            return None, f"CC={cc!r} cannot be split into a command ({e}); set CC to a compiler, e.g. CC=gcc"
        exe = shutil.which(argv[0]) or (argv[0] if Path(argv[0]).is_file() else None)
        if exe is None:
            return None, f"CC={cc!r}: {argv[0]!r} is not an executable on PATH; set CC to an installed C compiler"
        return [exe, *argv[1:]], None
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return [found], None
    return None, "no C compiler found (install gcc or clang, or set CC)"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _key(compiler: list[str], flags: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    parts: tuple[bytes | str, ...] = (
        *(src.read_bytes() for src in _SOURCES),
        " ".join(compiler).encode(),
        " ".join(flags + _MATH).encode(),
        platform.machine(),
    )
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    try:
        version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    h.update(version.encode())
    if "-march=native" in flags:
        h.update(_cpu_flags().encode())
    return h.hexdigest()[:16]


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.nk_native_version.restype = _I
    lib.nk_native_version.argtypes = []
    lib.nk_wino_conv.restype = _I
    # x, n, H, W, C, 4 strides, packed U, bias, O, out, 4 strides, act, accumulate, residual, 4 strides, tiles, threads
    lib.nk_wino_conv.argtypes = [_P, *[_L] * 8, _P, _P, _L, _P, *[_L] * 4, _I, _I, _P, *[_L] * 5, _I]
    lib.nk_gemm.restype = None
    lib.nk_gemm.argtypes = [_I, _P, _L, _L, _P, _P, _P, _L, _P, _L, _L, _L, _L, _L, _I, _I]
    lib.nk_act.restype = None
    lib.nk_act.argtypes = [_P, _L, _I, _I]
    if lib.nk_native_version() != VERSION:
        raise OSError(f"library reports version {lib.nk_native_version()}, expected {VERSION}")
    return lib


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _compile(compiler: list[str], flags: tuple[str, ...], folder: Path) -> bytes:
    """Compile the sources (``kernels.c``, ``gemm.c``); returns the library's bytes (checked to be a non-empty shared
    object). Every file it makes is removed, whatever happens: the caller writes the verified bytes into the cache."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=folder)
    os.close(fd)
    try:
        cmd = [*compiler, *flags, *_MATH, *_COMMON, *map(str, _SOURCES), "-o", tmp, "-lm"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise OSError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-600:]}")
        data = Path(tmp).read_bytes()
        if not data.startswith(_MAGICS):
            what = "an empty file" if not data else f"{len(data)} bytes that are not a shared object"
            raise OSError(f"{' '.join(cmd)} exited 0 but wrote {what}; check the compiler (CC)")
        return data
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_bytes(data: bytes) -> ctypes.CDLL:
    """Load a library from verified bytes through a private copy no other process can change (``memfd`` on
    Linux; elsewhere a file in a private temporary folder, removed after loading)."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        fd = memfd("necklace_native")
        try:
            os.write(fd, data)
            return _bind(ctypes.CDLL(f"/proc/self/fd/{fd}"))
        finally:
            os.close(fd)  # (the mapping keeps the memory alive)
    folder = tempfile.mkdtemp(prefix="necklace-native-")
    path = Path(folder) / _LIB_NAME
    try:
        path.write_bytes(data)
        return _bind(ctypes.CDLL(str(path)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _cached(folder: Path) -> bytes | None:
    """The cached library's bytes if they match its manifest (hash, size, version), else ``None``."""
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
        data = (folder / _LIB_NAME).read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("version") != VERSION or manifest.get("size") != len(data):
        return None
    if manifest.get("sha256") != hashlib.sha256(data).hexdigest() or not data.startswith(_MAGICS):
        return None
    return data


def _store(folder: Path, data: bytes, compiler: list[str], flags: tuple[str, ...]) -> None:
    """Library first, then the manifest that vouches for it (each written atomically)."""
    _write_atomic(folder / _LIB_NAME, data)
    manifest = {
        "version": VERSION,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "compiler": " ".join(compiler),
        "flags": " ".join(flags),
    }
    _write_atomic(folder / _MANIFEST, json.dumps(manifest, indent=1).encode())


def _disabled() -> bool:
    return os.environ.get("NECKLACE_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def _build(force: bool) -> tuple[ctypes.CDLL | None, NativeBuild]:
    start = time.perf_counter()

    def report(source: str | None, path: Path | None, flags: tuple[str, ...] | None, error: str | None) -> NativeBuild:
        return NativeBuild(
            loaded=source is not None,
            source=source,
            path=str(path) if path is not None else None,
            compiler=" ".join(compiler) if compiler else None,
            flags=" ".join(flags) if flags is not None else None,
            seconds=time.perf_counter() - start,
            error=error,
        )

    compiler: list[str] | None = None
    if _disabled():
        return None, report(None, None, None, "disabled by NECKLACE_NATIVE=0")
    compiler, why = _compiler()
    if compiler is None:
        return None, report(None, None, None, why)
    errors: list[str] = []
    for flags in _FLAG_SETS:
        folder = cache_dir() / _key(compiler, flags)
        try:
            data = None if force else _cached(folder)
            source = "cache"
            if data is None:
                data = _compile(compiler, flags, folder)
                source = "built"
            lib = _load_bytes(data)
            if source == "built":
                _store(folder, data, compiler, flags)
        except (OSError, subprocess.SubprocessError, AttributeError) as e:
            errors.append(f"[{' '.join(flags)}] {e}")
            continue
        return lib, report(source, folder / _LIB_NAME, flags, "; ".join(errors) or None)
    return None, report(None, None, None, "; ".join(errors))


def build(force: bool = False) -> NativeBuild:
    """Find (verified) or compile the native library and load it into this process; returns the report.

    An explicit step: ``necklace.deploy(model, runtime="native")`` calls it, and you may call it ahead of time
    (e.g. while building a container image). ``force=True`` compiles even when a verified cached library exists.
    Once loaded, later calls return the same report without touching the disk (unless ``force``).

    Example:
        >>> r = build()
        >>> r.loaded == (library() is not None)
        True
    """
    with _lock:
        if _state["lib"] is not None and not force:
            return _state["report"]
        lib, report = _build(force)
        if lib is not None or _state["lib"] is None:
            _state.update(lib=lib, report=report)
        return report


def library() -> ctypes.CDLL | None:
    """The loaded native library, or ``None`` when :func:`build` has not loaded one. Never builds or reads files."""
    return _state["lib"]


def status() -> NativeBuild:
    """The report of the last :func:`build` in this process (``loaded=False``, ``error="not built yet"`` before)."""
    report = _state["report"]
    if report is None:
        return NativeBuild(False, None, None, None, None, 0.0, "not built yet: call necklace.deploy.native.loader()")
    return report


def reset() -> None:
    """Forget the loaded library (the next :func:`build` looks again, e.g. after changing the environment). A
    library already loaded stays mapped in the process."""
    with _lock:
        _state.update(lib=None, report=None)


def _main() -> int:
    report = build(force=bool(os.environ.get("NECKLACE_NATIVE_FORCE")))
    for k, v in report.to_dict().items():
        print(f"{k}: {v}")
    return 0 if report.loaded else 1


if __name__ == "__main__":
    raise SystemExit(_main())
