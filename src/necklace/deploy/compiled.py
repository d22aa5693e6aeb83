"""Optional compiled inference path: :func:`necklace.deploy` then ``torch.compile`` or a frozen TorchScript trace.

Compilation is slow and happens once, so it is measured and reported apart from the forward latency
(:attr:`CompileReport.compile_s`: build + first call(s), where the compiler does its work). The compiled module is
checked against the original model like :func:`necklace.deploy` checks its result.

- ``"inductor"``: ``torch.compile(deployed)`` (the default backend; on CPU it generates C++/OpenMP kernels with a
  C++ compiler, fusing the element-wise work between convolutions). Recompiles for a new input size unless
  ``dynamic=True``.
- ``"torchscript"``: ``torch.jit.freeze(torch.jit.trace(deployed))``: constants folded, no Python at run time;
  sizes stay traced, so other input sizes work (see :mod:`necklace.export`).

Example:
    >>> import necklace
    >>> neck = necklace.build_neck("fpn", [(16, 8), (32, 16)], width=8).eval()
    >>> fast = compile_model(neck, backend="torchscript")
    >>> report = CompileReport.of(fast)
    >>> report.backend, report.compile_s > 0, report.max_rel_diff < 1e-4
    ('torchscript', True, True)
    >>> [tuple(o.shape) for o in fast([torch.randn(1, 16, 12, 10), torch.randn(1, 32, 6, 5)])]
    [(1, 8, 12, 10), (1, 8, 6, 5), (1, 8, 3, 3)]
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from necklace.deploy import DeployReport, deploy
from necklace.deploy.passes import _auto_inputs, _compare, _require_eval

__all__ = ["COMPILE_BACKENDS", "CompileReport", "compile_model"]

COMPILE_BACKENDS = ("inductor", "torchscript")


@dataclass(frozen=True)
class CompileReport:
    """What :func:`compile_model` did: backend, seconds spent compiling, and the check against the original.

    ``compile_s`` covers deploy + compilation + the first ``warmup_calls`` forwards (where ``torch.compile``
    generates code); time forwards after it. ``deploy`` is the :class:`DeployReport` of the deployed model that
    was compiled (``None`` with ``deploy_first=False``).

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
        >>> r = CompileReport.of(compile_model(m, torch.randn(1, 3, 8, 8), backend="torchscript"))
        >>> r.backend, r.deploy.folded_bn, r.max_rel_diff < 1e-4
        ('torchscript', 1, True)
    """

    backend: str
    compile_s: float
    warmup_calls: int
    dynamic: bool
    deploy: DeployReport | None
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None

    @staticmethod
    def of(model: Any) -> CompileReport:
        """The report attached to a module returned by :func:`compile_model`."""
        report = getattr(model, "__dict__", {}).get("compile_report")
        if not isinstance(report, CompileReport):
            raise ValueError(f"{type(model).__name__} was not produced by necklace.compile_model(); no compile_report.")
        return report


def compile_model(
    model: nn.Module,
    example_inputs: Any = None,
    backend: str = "inductor",
    deploy_first: bool = True,
    channels_last: bool | None = None,
    dynamic: bool = False,
    check: bool = True,
    rtol: float = 1e-4,
) -> Any:
    """Deploy ``model`` (unless ``deploy_first=False``) and compile it for inference; returns the compiled callable.

    ``example_inputs`` as in :func:`necklace.deploy` (a tuple is the positional arguments, anything else the single
    argument; necklace necks get a random odd-sized pyramid when omitted). They drive the compilation and the
    equality check (relative ``rtol``, as in deploy). ``channels_last`` is passed to deploy (torch runtime;
    ``None``: contiguous).
    ``dynamic``: inductor only, compile once for symbolic input sizes instead of once per size.

    The original model is untouched. The :class:`CompileReport` is the result's ``compile_report`` attribute.
    Raises ``ValueError`` for an unknown backend or a model in training mode, ``RuntimeError`` (naming the
    difference) when the compiled outputs differ from the original's.
    """
    if backend not in COMPILE_BACKENDS:
        raise ValueError(f"unknown compile backend {backend!r}; choose one of {list(COMPILE_BACKENDS)}.")
    if not isinstance(model, nn.Module):
        raise TypeError(f"compile_model expects an nn.Module, got {type(model).__name__}.")
    _require_eval(model, "compile_model")
    if example_inputs is None:
        inputs = _auto_inputs(model)
        if inputs is None:
            raise ValueError(
                f"compile_model: {type(model).__name__} has no in_specs, so no example inputs can be made; pass "
                "example_inputs (the arguments of one forward call)."
            )
    else:
        inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)

    start = time.perf_counter()
    target = deploy(model, inputs, channels_last=channels_last, check=check, rtol=rtol) if deploy_first else model
    deploy_report = DeployReport.of(target) if deploy_first else None
    warmup_calls = 2
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)  # torch.jit is deprecated in favour of compile
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        if backend == "inductor":
            compiled: Any = torch.compile(target, dynamic=dynamic)
        else:
            traced = torch.jit.trace(target, inputs, strict=False, check_trace=False)
            compiled = torch.jit.freeze(traced.eval())
        for _ in range(warmup_calls):
            out = compiled(*inputs)
    compile_s = time.perf_counter() - start

    max_abs = max_rel = None
    if check:
        with torch.no_grad():
            max_abs, max_rel = _compare(model(*inputs), out)
        if not max_rel <= rtol:
            raise RuntimeError(
                f"compile_model: the {backend} model differs from the original: max abs diff {max_abs:.3g}, max "
                f"relative diff {max_rel:.3g} > rtol {rtol:g}. Try deploy_first=False or the other backend."
            )
    report = CompileReport(backend, compile_s, warmup_calls, dynamic, deploy_report, max_abs, max_rel)
    object.__setattr__(compiled, "compile_report", report)
    return compiled
