"""Deployment as one explicit transformation with a named runtime: ``necklace.deploy(model, runtime=...)``.

Every runtime starts from the torch runtime's steps on a deep copy (the original model is untouched):
:func:`reparameterize` (RepConv and friends), :func:`fuse_conv_bn` (Conv+BatchNorm folded), :func:`freeze_fusions`
(weighted fusions as constants). Then:

========================  =====================================================================================
``runtime``               what you get
========================  =====================================================================================
``"torch"`` (default)     those steps; plain PyTorch modules (export, tracing, autograd all see torch's ops)
``"native"``              necklace's own CPU kernels applied as declared rewrites (:mod:`necklace.deploy.native`):
                          Winograd 3x3 convs with a small C library built and verified by this call, GEMM 1x1
                          convs, concatenations and upsampled sums never built; channels_last maps
``"onnxruntime"``         an ONNX Runtime session over the exported graph (:mod:`necklace.deploy.sessions`)
``"openvino"``            an OpenVINO session (f32 precision hint) over the same graph
``"inductor"``            ``torch.compile`` of the torch-deployed model (compiled on the example inputs)
``"tensorrt"``            ``torch.compile(backend="tensorrt")`` where torch-tensorrt and CUDA are present
``"auto"``                each available runtime above (``candidates``) deployed, checked and timed on the
                          example inputs; the fastest whose outputs match is returned, every timing and error
                          in the report
========================  =====================================================================================

A named runtime always gives the same structure (nothing is chosen by timing except under ``"auto"``). Every
result is checked against the original on the example inputs (``check``; relative tolerance ``rtol``, default
per runtime in :data:`DEFAULT_RTOL`) and carries a :class:`DeployReport` as ``deploy_report``.

Example:
    >>> import torch, necklace
    >>> neck = necklace.build_neck("yolo_pafpn", [(16, 8), (32, 16), (64, 32)]).eval()
    >>> d = necklace.deploy(neck)
    >>> r = d.deploy_report
    >>> r.runtime, r.folded_bn > 0, r.max_rel_diff < 1e-4
    ('torch', True, True)
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from necklace.deploy.passes import (
    EXAMPLE_IMAGE_SIZE,
    _auto_inputs,
    _flatten,
    _require_eval,
    check_outputs,
    example_pyramid,
    freeze_fusions,
    fuse_conv_bn,
    reparameterize,
    torch_deploy,
)

__all__ = [
    "DEFAULT_RTOL",
    "EXAMPLE_IMAGE_SIZE",
    "RUNTIMES",
    "DeployReport",
    "available_runtimes",
    "deploy",
    "example_pyramid",
    "freeze_fusions",
    "fuse_conv_bn",
    "reparameterize",
]

#: the runtimes :func:`deploy` knows, in the order ``"auto"`` tries them
RUNTIMES = ("torch", "native", "onnxruntime", "openvino", "inductor", "tensorrt")
#: relative tolerance of the output check per runtime (Winograd / other runtimes' kernels round differently, and
#: deep stacks of random-weight convs amplify it)
DEFAULT_RTOL: dict[str, float] = {
    "torch": 1e-4,
    "native": 1e-3,
    "onnxruntime": 1e-3,
    "openvino": 1e-3,
    "inductor": 1e-3,
    "tensorrt": 1e-2,
}
#: what ``"auto"`` tries by default (the compiled runtimes take tens of seconds to compile: name them to include)
AUTO_CANDIDATES = ("torch", "native", "onnxruntime", "openvino")


@dataclass(frozen=True)
class DeployReport:
    """What :func:`deploy` did, attached to the result as ``deployed.deploy_report``.

    ``runtime`` is the runtime of the returned model. ``max_abs_diff`` / ``max_rel_diff``: its largest absolute and
    relative (``max|deployed - original| / max|original|`` per output) difference from the original on the example
    inputs (``None`` when not checked). ``native``: the native runtime's report (library build, rewritten modules).
    ``latency_ms`` / ``errors`` (``"auto"``): the median forward time of every candidate runtime that worked, and
    why each other one was not kept. ``seconds``: the whole deploy call.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU()).eval()
        >>> r = deploy(m, torch.randn(1, 3, 11, 13)).deploy_report
        >>> r.runtime, r.folded_bn, r.checked
        ('torch', 1, True)
        >>> print(r)  # doctest: +ELLIPSIS
        runtime torch; 1 Conv+BN folded, 0 RepConvs re-parameterised, 0 fusions frozen, NCHW; max difference ...
    """

    runtime: str
    reparameterized: int
    folded_bn: int
    frozen_fusions: int
    channels_last: bool
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    native: Any = None
    latency_ms: Mapping[str, float] | None = None
    errors: Mapping[str, str] | None = None
    seconds: float = 0.0

    def __str__(self) -> str:
        """One readable paragraph: the runtime kept, what the torch steps did, the check and (``"auto"``) every
        runtime's time and error."""
        layout = "channels_last" if self.channels_last else "NCHW"
        text = (
            f"runtime {self.runtime}; {self.folded_bn} Conv+BN folded, {self.reparameterized} RepConvs "
            f"re-parameterised, {self.frozen_fusions} fusions frozen, {layout}; "
        )
        if self.checked:
            text += f"max difference from the original {self.max_abs_diff:.2g} (relative {self.max_rel_diff:.2g})"
        else:
            text += "not checked against the original"
        if self.latency_ms:
            times = ", ".join(f"{k} {v:.1f}" for k, v in sorted(self.latency_ms.items(), key=lambda kv: kv[1]))
            text += f"; timed (median ms): {times}"
        if self.errors:
            text += "; not kept: " + "; ".join(f"{k}: {v}" for k, v in self.errors.items())
        return text + f"; deployed in {self.seconds:.1f} s"

    @property
    def checked(self) -> bool:
        """Whether the outputs were compared with the original model's."""
        return self.max_abs_diff is not None

    @staticmethod
    def of(model: Any) -> DeployReport:
        """The report attached to a model returned by :func:`deploy` (typed access to ``deploy_report``)."""
        report = getattr(model, "__dict__", {}).get("deploy_report")
        if not isinstance(report, DeployReport):
            raise ValueError(f"{type(model).__name__} was not produced by necklace.deploy(); it has no deploy_report.")
        return report


def _tensorrt_available() -> str | None:
    if not torch.cuda.is_available():
        return "tensorrt needs a CUDA GPU (torch.cuda.is_available() is False)"
    try:
        import torch_tensorrt  # noqa: F401
    except ImportError as e:
        return f"tensorrt needs torch-tensorrt ({e}); pip install torch-tensorrt"
    return None


def _inductor_available() -> str | None:
    try:
        import torch._inductor  # noqa: F401
    except ImportError as e:  # pragma: no cover  (every torch >= 2.1 has it)
        return f"inductor is not available in this torch build ({e})"
    return None


def available_runtimes() -> dict[str, str | None]:
    """Each runtime of :data:`RUNTIMES` -> ``None`` when it can run here, else why not (and how to get it).

    Example:
        >>> a = available_runtimes()
        >>> a["torch"] is None and a["native"] is None
        True
    """
    from necklace.deploy.sessions import runtime_available

    return {
        "torch": None,
        "native": None,  # (without a C compiler the native modules run their pure-torch forms: still a runtime)
        "onnxruntime": runtime_available("onnxruntime"),
        "openvino": runtime_available("openvino"),
        "inductor": _inductor_available(),
        "tensorrt": _tensorrt_available(),
    }


def _inputs_of(model: nn.Module, example_inputs: Any) -> tuple[Any, ...] | None:
    if example_inputs is None:
        return _auto_inputs(model)
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def _neck_inputs(runtime: str, inputs: tuple[Any, ...] | None) -> list[Any]:
    if inputs is None or len(inputs) != 1 or not isinstance(inputs[0], (list, tuple)):
        raise ValueError(
            f"deploy(runtime={runtime!r}) runs necks (a list of feature maps in, a list out): pass example_inputs "
            "as that list, or use a model with in_specs (every necklace neck) to get a random pyramid."
        )
    return list(inputs[0])


def _build(runtime: str, model: nn.Module, inputs: tuple[Any, ...] | None, channels_last: bool | None) -> Any:
    """The deployed model for one named runtime, with its torch-step counts and runtime-specific report."""
    deployed, counts = torch_deploy(model)
    native_report = None
    cl = False
    if runtime == "torch":
        cl = bool(channels_last)
        if cl:
            deployed.to(memory_format=torch.channels_last)
    elif runtime == "native":
        from necklace.deploy.native import apply_native

        cl = True if channels_last is None else bool(channels_last)
        deployed, native_report = apply_native(deployed, channels_last=cl)
    elif runtime in ("onnxruntime", "openvino"):
        from necklace.deploy.sessions import export_session

        deployed = export_session(runtime, deployed, _neck_inputs(runtime, inputs))
    elif runtime in ("inductor", "tensorrt"):
        why = _inductor_available() if runtime == "inductor" else _tensorrt_available()
        if why is not None:
            raise RuntimeError(why)
        if inputs is None:
            raise ValueError(f"deploy(runtime={runtime!r}) compiles on example inputs: pass example_inputs.")
        backend = "inductor" if runtime == "inductor" else "tensorrt"
        compiled: Any = torch.compile(deployed, backend=backend)
        with torch.no_grad():
            compiled(*inputs)  # compile now, not in the caller's first forward
        return compiled, counts, native_report, cl
    else:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {[*RUNTIMES, 'auto']}.")
    return deployed, counts, native_report, cl


def _median_ms(calls: dict[str, Any], inputs: tuple[Any, ...], rounds: int, budget_s: float) -> dict[str, float]:
    """Median forward time of each callable, in interleaved rounds (the order reversed every other round): two
    warm-up calls each (first-call allocations, lazily built kernels), then ``rounds`` rounds, cut short after
    ``budget_s`` once 5 rounds are in. In a round each callable runs twice and its second call is timed: the
    runtimes use different thread pools (torch's, ONNX Runtime's, OpenVINO's, the native library's OpenMP), whose
    workers keep the cores busy for a while after a call, so the first call after a switch measures the neighbour
    (with one call each, a 1.7x slower runtime was picked on FPN)."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    names = list(calls)
    start = time.perf_counter()
    cuda = any(t.is_cuda for t in _flatten(list(inputs)))
    with torch.no_grad():
        for name in names * 2:  # warm-up
            calls[name](*inputs)
        for r in range(rounds):
            if r >= 5 and time.perf_counter() - start > budget_s:
                break
            for name in names if r % 2 == 0 else names[::-1]:
                calls[name](*inputs)  # settles this runtime's threads
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                calls[name](*inputs)
                if cuda:
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t0)
    return {k: sorted(v)[len(v) // 2] * 1e3 for k, v in times.items()}


def deploy(
    model: nn.Module,
    example_inputs: Any = None,
    runtime: str = "torch",
    *,
    channels_last: bool | None = None,
    check: bool = True,
    rtol: float | None = None,
    candidates: Sequence[str] | None = None,
    rounds: int = 15,
) -> Any:
    """Return a deployment copy of ``model`` for ``runtime`` (see the module docstring for the runtimes).

    ``example_inputs``: a ``tuple`` is the positional arguments of ``model(...)``; anything else (a list of maps
    for a neck, a tensor, a dict) is its single argument. When omitted and the model has ``in_specs`` (every
    necklace neck), a random pyramid at odd sizes derived from a 97x131 image is used; pass inputs of the size you
    deploy for when timing matters (``"auto"``).

    ``channels_last``: the memory format of weights and maps (``None``: contiguous for ``"torch"``, channels_last
    for ``"native"``); ignored by the session and compiled runtimes.

    ``check``: compare the deployed outputs with the original's and raise ``RuntimeError`` when the relative
    difference exceeds ``rtol`` (default :data:`DEFAULT_RTOL` of the runtime); without any inputs it warns.

    ``candidates`` / ``rounds`` (``"auto"``): the runtimes to try (default :data:`AUTO_CANDIDATES` that are
    available) and the most timing rounds (interleaved; at least 5, about 10 s at most).

    Raises ``ValueError`` for a model in training mode or an unknown runtime, ``RuntimeError`` for a runtime that
    cannot run here (the message says why and how to get it) or outputs that differ.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU()).eval()
        >>> d = deploy(m, torch.randn(1, 3, 11, 13))
        >>> d.deploy_report.folded_bn, d.deploy_report.max_rel_diff < 1e-5
        (1, True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"deploy expects an nn.Module, got {type(model).__name__}.")
    if not isinstance(runtime, str) or runtime not in (*RUNTIMES, "auto"):
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {[*RUNTIMES, 'auto']}.")
    _require_eval(model, "deploy")
    start = time.perf_counter()
    inputs = _inputs_of(model, example_inputs)
    if runtime == "auto":
        return _deploy_auto(model, inputs, channels_last, check, rtol, candidates, rounds, start)
    why = available_runtimes()[runtime]
    if why is not None:
        raise RuntimeError(f"deploy(runtime={runtime!r}) cannot run here: {why}.")
    deployed, (n_rep, n_bn, n_frozen), native_report, cl = _build(runtime, model, inputs, channels_last)
    max_abs = max_rel = None
    if check and inputs is None:
        warnings.warn(
            "deploy: no example_inputs and the model has no in_specs, so the outputs were not checked; pass "
            "example_inputs to verify the deployed model.",
            stacklevel=2,
        )
    elif check and inputs is not None:
        max_abs, max_rel = check_outputs(
            model, deployed, inputs, DEFAULT_RTOL[runtime] if rtol is None else rtol, f"deploy(runtime={runtime!r})"
        )
    report = DeployReport(
        runtime, n_rep, n_bn, n_frozen, cl, max_abs, max_rel, native_report, seconds=time.perf_counter() - start
    )
    object.__setattr__(deployed, "deploy_report", report)
    return deployed


def _deploy_auto(
    model: nn.Module,
    inputs: tuple[Any, ...] | None,
    channels_last: bool | None,
    check: bool,
    rtol: float | None,
    candidates: Sequence[str] | None,
    rounds: int,
    start: float,
) -> Any:
    if inputs is None:
        raise ValueError("deploy(runtime='auto') times the runtimes on example inputs: pass example_inputs.")
    available = available_runtimes()
    names = list(AUTO_CANDIDATES if candidates is None else candidates)
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown or not names:
        raise ValueError(f"deploy(runtime='auto'): candidates {unknown or names} must be some of {list(RUNTIMES)}.")
    errors: dict[str, str] = {}
    built: dict[str, Any] = {}
    for name in names:
        if available[name] is not None:
            errors[name] = str(available[name])
            continue
        try:
            d = deploy(model, inputs, name, channels_last=channels_last, check=check, rtol=rtol)
        except Exception as e:  # a runtime that fails to build or to match is reported, not fatal
            errors[name] = f"{type(e).__name__}: {e}"
            continue
        built[name] = d
    if not built:
        raise RuntimeError(f"deploy(runtime='auto'): no candidate runtime worked: {errors}.")
    latency = _median_ms(built, inputs, max(5, rounds), budget_s=10.0)
    best = min(latency, key=latency.__getitem__)
    chosen = built[best]
    r = DeployReport.of(chosen)
    report = DeployReport(
        best,
        r.reparameterized,
        r.folded_bn,
        r.frozen_fusions,
        r.channels_last,
        r.max_abs_diff,
        r.max_rel_diff,
        r.native,
        latency_ms=dict(latency),
        errors=errors,
        seconds=time.perf_counter() - start,
    )
    object.__setattr__(chosen, "deploy_report", report)
    return chosen
