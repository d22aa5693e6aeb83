"""Shared helpers of the benchmark scripts: interleaved timing, roofline, memory, environment, atomic writers.

Timing method (used by every script here):

- all callables of one comparison run in the same process, *interleaved*: each round calls every callable
  once, in orders of a balanced Latin square (``round_orders``): every callable takes every position and runs
  right after every other one equally often, so neither slow phases of a noisy machine nor the cache state a
  neighbour leaves behind favour one of them (``interleaved``);
- a comparison of two callables is the median of the per-round ratios ``t_a[i] / t_b[i]`` (more robust to
  drift than the ratio of medians; ``ratio_stats``);
- the "roofline" is the GMAC/s torch reaches on one 3x3 conv 256->256 at 80x80 (batch 1, no bias); timing
  it as one more callable of the same interleaved rounds gives the ceiling under the same conditions;
- ``--malloc steady`` (the default of the comparison scripts) keeps glibc malloc from returning freed memory to
  the system (``steady_allocator``), so no timed call pays page faults that another callable's allocations
  caused; each callable's minor page faults per call are recorded (``--malloc default`` to see them).

``interleaved``, ``stats_ms`` and ``ratio_stats`` are ``necklace.bench``'s, ``max_abs_diff`` and the mmcv-lite
shim (``install_mmcv_ext_shim``, ``import_mmdet_necks``, ``import_mmyolo_necks``) ``necklace.bench.peers``' (the
``necklace bench --vs PEER`` command uses them too); they are re-exported here for the scripts.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from necklace.bench import interleaved, minor_faults, peak_memory_bytes, ratio_stats, stats_ms
from necklace.bench.peers import import_mmdet_necks, import_mmyolo_necks, install_mmcv_ext_shim, max_abs_diff

__all__ = [
    "ROOFLINE_CHANNELS",
    "ROOFLINE_HW",
    "add_malloc_arg",
    "apply_malloc",
    "atomic_write_json",
    "atomic_write_text",
    "environment",
    "import_mmdet_necks",
    "import_mmyolo_necks",
    "install_mmcv_ext_shim",
    "interleaved",
    "load_average",
    "max_abs_diff",
    "minor_faults",
    "peak_memory_bytes",
    "ratio_stats",
    "roofline_case",
    "stats_ms",
    "steady_allocator",
    "threads",
    "update_markdown_section",
]

ROOFLINE_HW = 80
ROOFLINE_CHANNELS = 256
PACKAGES = (
    "necklace",
    "torch",
    "torchvision",
    "numpy",
    "timm",
    "effdet",
    "mmdet",
    "mmcv",
    "mmcv-lite",
    "mmengine",
    "ultralytics",
    "onnxruntime",
)


# ----------------------------------------------------------------------------------------------- threads
def randomize_bn(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BatchNorm running statistics (so that folding them matters), then ``eval()``; returns ``module``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return module.eval()


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------------------- roofline
def roofline_case(hw: int = ROOFLINE_HW, channels: int = ROOFLINE_CHANNELS) -> tuple[Callable[[], object], int]:
    """``(callable, macs)``: one ``channels -> channels`` 3x3 conv (no bias) on ``1 x channels x hw x hw``, no_grad.

    ``macs = channels^2 * 9 * hw^2`` (3.77 GMAC at the default 256 / 80x80).
    """
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / (9 * channels)) ** 0.5)
    x = torch.randn(1, channels, hw, hw, generator=g)
    macs = channels * channels * 9 * hw * hw

    def run() -> Tensor:
        with torch.no_grad():
            return conv(x)

    return run, macs


# ----------------------------------------------------------------------------------------------- allocator
#: glibc ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
#: what :func:`steady_allocator` sets: every block from the heap (no mmap'd blocks, which are unmapped on free),
#: freed memory kept (never trimmed back to the system), 64 MiB of headroom per heap growth
STEADY_MALLOPT = {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 2**30, "M_TOP_PAD": 64 * 2**20}


def steady_allocator() -> dict[str, Any]:
    """Keep glibc malloc from handing freed memory back to the system, so no timed call pays page faults.

    With glibc's defaults, blocks above the (dynamic, at most 32 MiB) mmap threshold are mapped for themselves
    and unmapped when freed, and the heap top is trimmed once it holds more than the trim threshold free; the
    next call that allocates that memory faults on every page again (~1 us per 4 KiB page here). How often that
    happens depends on what ran before and how much it allocated, not on the callable timed: measured here,
    mmyolo's deployed YOLOv6-N neck took 0 or 1,368 faults per call (13.2 vs 14.6 ms) depending on the other
    callables of the rounds, and the roofline conv 3,744. This sets ``STEADY_MALLOPT`` for the rest of the
    process: every callable then runs on a warm heap. Returns what was set (``{"mallopt": {...}}``), or
    ``{"mallopt": None, "note": why}`` where glibc's ``mallopt`` is missing.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as e:
        return {"mallopt": None, "note": f"no glibc mallopt ({e}); allocator left as it is"}
    params = {"M_MMAP_MAX": _M_MMAP_MAX, "M_TRIM_THRESHOLD": _M_TRIM_THRESHOLD, "M_TOP_PAD": _M_TOP_PAD}
    done = {name: value for name, value in STEADY_MALLOPT.items() if mallopt(params[name], value) == 1}
    return {"mallopt": done}


MALLOC_CHOICES = ("steady", "default")


def add_malloc_arg(ap: Any) -> None:
    """The ``--malloc {steady,default}`` option of the comparison scripts (see :func:`steady_allocator`)."""
    ap.add_argument(
        "--malloc",
        choices=MALLOC_CHOICES,
        default="steady",
        help="'steady' (default): glibc malloc keeps freed memory, so no timed call pays page faults another "
        "callable caused; 'default': the allocator as it comes (faults per call are recorded either way)",
    )


def apply_malloc(mode: str) -> dict[str, Any]:
    """Apply ``--malloc`` (``steady`` calls :func:`steady_allocator`); returns the description for the results."""
    if mode not in MALLOC_CHOICES:
        raise ValueError(f"--malloc must be one of {MALLOC_CHOICES}, got {mode!r}.")
    if mode == "default":
        return {"mode": "default", "mallopt": None}
    return {"mode": "steady", **steady_allocator()}


# ----------------------------------------------------------------------------------------------- environment
def _cpu_info() -> dict[str, Any]:
    model, physical = platform.processor() or "unknown", set()
    cores_per_socket = None
    flags: list[str] = []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    phys_id = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name":
            model = value
        elif key == "physical id":
            phys_id = value
        elif key == "core id":
            physical.add((phys_id, value))
        elif key == "cpu cores" and cores_per_socket is None:
            cores_per_socket = int(value)
        elif key == "flags" and not flags:
            flags = [f for f in value.split() if f.startswith(("avx", "amx", "fma"))]
    affinity: int | None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count()
    return {
        "model": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "physical_cores": len(physical) or cores_per_socket,
        "simd_flags": flags,
    }


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _git(repo: Path) -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit or None, "dirty": bool(dirty)} if commit else {}


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (empty where the platform has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def environment(n_threads: int) -> dict[str, Any]:
    """Date, machine (CPU model from /proc/cpuinfo, cores), load average, package versions and torch build."""
    load = load_average()
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu": _cpu_info(),
        "load_avg_1_5_15": load,
        "threads": n_threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": _versions(),
        "torch_mkldnn": torch.backends.mkldnn.is_available(),
        "torch_parallel": torch.__config__.parallel_info().splitlines()[:3],
        "git": _git(Path(__file__).resolve().parent.parent),
    }


# ----------------------------------------------------------------------------------------------- writers
def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


RESULTS_HEADER = (
    "# necklace benchmarks\n\n"
    "Generated by the scripts in `benchmarks/`; each section is rewritten by the script named in it.\n"
)


def update_markdown_section(path: str | os.PathLike[str], key: str, body: str) -> Path:
    """Replace the section between ``<!-- key:start -->`` and ``<!-- key:end -->`` in ``path`` (append if absent).

    Other sections (other scripts' results) are kept as they are. The file is created when missing.
    """
    path = Path(path)
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else RESULTS_HEADER
    i, j = text.find(start), text.find(end)
    if i >= 0 and j > i:
        text = text[:i] + block + text[j + len(end) :].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    return atomic_write_text(path, text)
