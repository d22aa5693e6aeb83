"""Shared helpers of the benchmark scripts: interleaved timing, roofline, memory, environment, atomic writers.

Timing method (used by every script here):

- all callables of one comparison run in the same process, *interleaved*: each round calls every callable
  once, the starting callable rotating from round to round, so slow phases of a noisy machine hit all of
  them alike;
- a comparison of two callables is the median of the per-round ratios ``t_a[i] / t_b[i]`` (more robust to
  drift than the ratio of medians);
- the "roofline" is the GMAC/s torch reaches on one 3x3 conv 256->256 at 80x80 (batch 1, no bias); timing
  it as one more callable of the same interleaved rounds gives the ceiling under the same conditions.

Nothing here imports necklace: these helpers time and describe any callables.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "ROOFLINE_CHANNELS",
    "ROOFLINE_HW",
    "atomic_write_json",
    "atomic_write_text",
    "environment",
    "import_mmdet_necks",
    "import_mmyolo_necks",
    "install_mmcv_ext_shim",
    "interleaved",
    "load_average",
    "max_abs_diff",
    "peak_memory_bytes",
    "ratio_stats",
    "roofline_case",
    "stats_ms",
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
@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------------------- timing
def interleaved(
    callables: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int = 2,
) -> dict[str, list[float]]:
    """Time every callable ``repeats`` times, interleaved; returns ``{name: [seconds per call, ...]}``.

    Round ``i`` calls the callables in their given order rotated by ``i`` (so none is always first or
    always runs right after the same neighbour). ``warmup`` untimed rounds come first. The garbage collector
    runs once before the timed rounds and is paused during them (like ``timeit``), so a collection never
    lands inside a timed call.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    names = list(callables)
    fns = [callables[n] for n in names]
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: dict[str, list[float]] = {n: [] for n in names}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for i in range(repeats):
            k = i % len(fns)
            for j in list(range(k, len(fns))) + list(range(k)):
                start = time.perf_counter()
                fns[j]()
                times[names[j]].append(time.perf_counter() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def _quantile(values: Sequence[float], q: float) -> float:
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def stats_ms(times_s: Sequence[float]) -> dict[str, float | int]:
    """Median, min, max, mean and quartiles of per-call times, in milliseconds."""
    ms = [t * 1e3 for t in times_s]
    return {
        "median_ms": statistics.median(ms),
        "min_ms": min(ms),
        "max_ms": max(ms),
        "mean_ms": statistics.fmean(ms),
        "p25_ms": _quantile(ms, 0.25),
        "p75_ms": _quantile(ms, 0.75),
        "repeats": len(ms),
    }


def ratio_stats(a_s: Sequence[float], b_s: Sequence[float]) -> dict[str, float | int]:
    """Per-round ratios ``a[i] / b[i]`` of two interleaved series: median (the reported ratio) and quartiles."""
    if len(a_s) != len(b_s) or not a_s:
        raise ValueError(f"need two equally long, non-empty series; got {len(a_s)} and {len(b_s)}.")
    r = [a / b for a, b in zip(a_s, b_s, strict=True)]
    return {
        "median": statistics.median(r),
        "p25": _quantile(r, 0.25),
        "p75": _quantile(r, 0.75),
        "min": min(r),
        "max": max(r),
        "n": len(r),
    }


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


# ----------------------------------------------------------------------------------------------- memory
def peak_memory_bytes(fn: Callable[[], object]) -> dict[str, int]:
    """Peak bytes of tensors that one ``fn()`` allocates and holds at once in torch's CPU allocator.

    Read from ``torch.profiler`` (``profile_memory=True``) allocation/free events, matched by address: only
    blocks allocated during this call count, so the number is the peak of *new* tensor memory (activations
    kept for backward, temporaries, gradients, outputs) on top of whatever existed before (parameters, inputs;
    a train step that starts by setting ``.grad`` to None frees the old gradients first, so this is its peak
    beyond parameters + inputs). Memory that oneDNN or the Python heap allocate outside torch's allocator is
    not seen. ``retained_bytes``: what the call left allocated (e.g. its outputs, new ``.grad`` tensors).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    fd, tmp = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(tmp)
        trace = json.loads(Path(tmp).read_text())
    finally:
        os.unlink(tmp)
    events = [
        e["args"]
        for e in trace.get("traceEvents", [])
        if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0  # 0: CPU
    ]
    events.sort(key=lambda a: a.get("Ev Idx", 0))
    live: dict[int, int] = {}
    current = peak = 0
    for a in events:
        addr, nbytes = int(a["Addr"]), int(a["Bytes"])
        if nbytes > 0:
            live[addr] = nbytes
            current += nbytes
            peak = max(peak, current)
        elif addr in live:  # a free of a block allocated before this call is not ours
            current -= live.pop(addr)
    return {"peak_bytes": peak, "retained_bytes": current, "events": len(events)}


# ----------------------------------------------------------------------------------------------- checks
def max_abs_diff(a: Sequence[Tensor], b: Sequence[Tensor]) -> tuple[float, float]:
    """``(max |a - b|, max |b|)`` over equally shaped tensor lists (raises ``AssertionError`` on shape mismatch)."""
    assert len(a) == len(b), f"{len(a)} outputs vs {len(b)}"
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape, f"output shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}"
    diff = max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b, strict=True))
    scale = max(float(y.float().abs().max()) for y in b)
    return diff, scale


# ----------------------------------------------------------------------------------------------- mmdet shim
class _MissingExt(types.ModuleType):
    """Stands in for ``mmcv._ext``: attribute lookups succeed, calling an op raises."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def _missing(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"mmcv compiled op {name!r} is not available (mmcv-lite + benchmark shim).")

        return _missing


def install_mmcv_ext_shim() -> None:
    """Replace ``mmcv.utils.ext_loader.load_ext`` by a placeholder loader, before ``mmcv.ops`` is imported.

    A copy of ``tests/_mmdet_shim.py``: with ``mmcv-lite`` (no compiled ops) ``mmcv.ops`` then imports, and any
    compiled op raises when called (no neck of mmdet/mmyolo calls one). A no-op once ``mmcv.ops`` is imported.
    Raises ``ImportError`` when mmcv is not installed.
    """
    if "mmcv.ops" in sys.modules:
        return
    from mmcv.utils import ext_loader

    def load_ext(name: str, funcs: list[str]) -> types.ModuleType:
        return _MissingExt(f"mmcv.{name}")

    ext_loader.load_ext = load_ext


def import_mmdet_necks() -> types.ModuleType:
    """``mmdet.models.necks``, importable with ``mmcv-lite`` (no compiled ops; no neck calls one).

    Installs :func:`install_mmcv_ext_shim` first. Raises ``ImportError`` when mmdet/mmcv are not installed.
    """
    install_mmcv_ext_shim()
    import mmdet.models.necks as necks

    return necks


def import_mmyolo_necks() -> types.ModuleType:
    """``mmyolo.models.necks`` (mmyolo 0.6 on mmdet 3 + mmcv-lite), with :func:`install_mmcv_ext_shim` first.

    Build its necks inside ``mmengine.registry.DefaultScope.overwrite_default_scope("mmyolo")``: their blocks
    (``RepVGGBlock``) are looked up by registry name. Raises ``ImportError`` when mmyolo/mmcv are not installed.
    """
    install_mmcv_ext_shim()
    import mmyolo.models.necks as necks

    return necks


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
