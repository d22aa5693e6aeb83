"""TorchScript export: ``torch.jit.trace`` of the deployed neck, saved atomically and checked after loading it back."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from necklace.deploy.passes import _flatten
from necklace.export.common import (
    ExportError,
    ExportReport,
    Shape,
    _prepare,
    _report,
    _temporary,
    _verify,
)
from necklace.spec import FeatureSpec

__all__ = ["export_torchscript"]


# ----------------------------------------------------------------------------------------------- TorchScript
def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: Sequence[Tensor] | None = None,
    *,
    in_specs: Sequence[FeatureSpec] | None = None,
    image_size: tuple[int, int] | None = None,
    batch: int | None = None,
    dynamic: bool = False,
    deploy_first: bool = True,
    verify: bool = True,
    second_image_size: tuple[int, int] | None = None,
    tolerance: float = 1e-4,
) -> ExportReport:
    """Trace ``model`` with ``torch.jit.trace`` and save it as TorchScript at ``path`` (load with ``torch.jit.load``).

    Arguments as :func:`export_onnx`. The check loads the saved file and compares it with ``model`` at the
    export inputs and, when ``dynamic=True``, at a second image size and batch.

    What tracing generalises: the tracer records size arithmetic on ``x.shape`` as graph ops, so the batch, the
    height and the width follow the inputs: the engine's level sizes, every resize target and every crop of a
    resampled map to its level (``match_size``, which under tracing crops with traced sizes) are computed in the
    graph. Checked for every registered neck, traced at one size and run at others, odd and even, for pyramids
    of ``ceil(H / stride)`` maps, and for ``floor``-halved maps too except as below. What it cannot: Python
    branches are fixed at trace time. Where the example's resampled map was at least its target's size, the
    trace always crops; a map *smaller* than its target at run time (a ``floor``-halved backbone with
    transposed-conv upsampling: 6x8 -> 12x16 for a 12x17 level) then gives a shape error, where eager PyTorch and
    the dynamic ONNX graph resize it. Ops that compute sizes in Python with ``int()`` (AugFPN's RFA) are frozen
    at the example's size: ``dynamic=True`` then fails its second-size check. ``torch.jit`` is deprecated in
    recent PyTorch (its warning is silenced here); prefer :func:`export_onnx` for new deployments.

    Example:
        >>> import os, tempfile, necklace
        >>> neck = necklace.build_neck("fpn", [FeatureSpec(16, 8), FeatureSpec(32, 16)], width=8).eval()
        >>> with tempfile.TemporaryDirectory() as d:
        ...     report = export_torchscript(neck, os.path.join(d, "fpn.pt"), dynamic=True)
        >>> report.output_names, report.second_image_size, report.max_abs_diff_second < 1e-5
        (('p3', 'p4', 'p5'), (64, 80), True)
    """
    t0 = time.perf_counter()
    what = "export_torchscript"
    job = _prepare(
        what, model, path, example_inputs, in_specs, image_size, batch, dynamic, deploy_first, verify, second_image_size
    )
    t_export = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.trace is deprecated"
        try:
            traced = torch.jit.trace(job.export_model, (job.inputs,), check_trace=False)
        except Exception as e:
            first = next((ln for ln in str(e).splitlines() if ln.strip()), repr(e))
            raise ExportError(f"torch.jit.trace failed for {type(model).__name__}: {first}") from e
    export_seconds = time.perf_counter() - t_export

    diff = diff2 = None
    with _temporary(job.path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(traced, str(tmp))
            if verify:
                device = job.inputs[0].device
                loaded = torch.jit.load(str(tmp), map_location=device)
                with torch.no_grad():
                    diff, diff2 = _verify(job, lambda xs: _flatten(loaded(xs)), tolerance)
        os.replace(tmp, job.path)

    def shape(t: Tensor, axes: Mapping[int, str]) -> Shape:
        return tuple(axes.get(i, int(d)) for i, d in enumerate(t.shape))

    return _report(
        job,
        "torchscript",
        tuple(shape(t, job.dynamic_axes.get(n, {})) for n, t in zip(job.input_names, job.inputs, strict=True)),
        tuple(tuple(int(d) for d in t.shape) for t in job.reference),
        None,
        diff,
        diff2,
        verify,
        export_seconds,
        t0,
    )
