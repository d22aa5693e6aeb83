"""What every exporter shares: the report, the example inputs and reference outputs, atomic writes and the check.

Inputs are named ``c<level>`` (``c3`` for stride 8) and outputs ``p<level>``; the dynamic axes of input ``c3``
are ``batch``, ``h3`` and ``w3``. Only inference graphs are exported: a model with any module in training mode is
refused (``ValueError``), as :func:`necklace.deploy` does, because BatchNorm must use its running statistics.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from necklace.deploy.passes import (
    EXAMPLE_IMAGE_SIZE,
    _first_tensor,
    _flatten,
    _require_eval,
    check_outputs,
    example_pyramid,
    torch_deploy,
)
from necklace.spec import FeatureSpec, as_feature_specs

__all__ = ["SECOND_IMAGE_SIZES", "ExportError", "ExportReport"]


#: Second image sizes a dynamic export is checked at (the first that differs from the export size).
SECOND_IMAGE_SIZES = ((64, 80), (161, 97))

Shape = tuple[int | str, ...]


class ExportError(RuntimeError):
    """The model could not be exported as asked, or the exported file does not reproduce the model.

    Example:
        >>> isinstance(ExportError("the exported neck.onnx differs from PyTorch"), RuntimeError)
        True
    """


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` / :func:`export_torchscript` wrote and how well it reproduces the model.

    Shapes are as exported: ints for fixed axes, axis names (``batch``, ``h3``) or size expressions for
    dynamic ones (TorchScript files carry no shapes: their shapes are those at the export size).
    ``max_abs_diff`` is ``max|exported - PyTorch|`` over all outputs at the export inputs (``image_size``,
    ``batch``); ``max_abs_diff_second`` the same at ``second_image_size`` / ``second_batch`` (dynamic exports
    only). The reference is always the original model, so with ``deployed=True`` the check covers deployment too.

    Example:
        >>> r = ExportReport("neck.onnx", "onnx", ("c3",), ("p3",), (("batch", 16, "h3", "w3"),),
        ...                  (("batch", 8, "h3", "w3"),), {"c3": {0: "batch", 2: "h3", 3: "w3"}})
        >>> r.dynamic, r.verified
        (True, False)
    """

    path: str
    format: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    input_shapes: tuple[Shape, ...]
    output_shapes: tuple[Shape, ...]
    dynamic_axes: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None
    batch: int = 1
    deployed: bool = False
    opset: int | None = None
    max_abs_diff: float | None = None
    second_image_size: tuple[int, int] | None = None
    second_batch: int | None = None
    max_abs_diff_second: float | None = None
    export_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def dynamic(self) -> bool:
        """Whether any axis was exported as dynamic."""
        return bool(self.dynamic_axes)

    @property
    def verified(self) -> bool:
        """Whether the exported file was run and compared with the PyTorch model."""
        return self.max_abs_diff is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        out = asdict(self)
        out["dynamic_axes"] = {k: {str(a): n for a, n in v.items()} for k, v in self.dynamic_axes.items()}
        return out

    def describe(self) -> str:
        """A short text table: one row per input/output with its shape, then the check and the timings."""
        rows = [("name", "kind", "shape")]
        groups = (("input", self.input_names, self.input_shapes), ("output", self.output_names, self.output_shapes))
        for kind, names, shapes in groups:
            for n, s in zip(names, shapes, strict=True):
                rows.append((n, kind, " x ".join(_fmt_dim(d) for d in s)))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        fmt = self.format + (f" opset {self.opset}" if self.opset is not None else "")
        axes = "dynamic batch/height/width" if self.dynamic else "fixed shapes"
        head = f"{self.path}: {fmt}, {axes}" + (", deployed (BN folded, re-parameterised)" if self.deployed else "")
        check = "not checked"
        if self.verified:
            engine = "onnxruntime" if self.format == "onnx" else "loaded file"
            check = f"max |{engine} - torch| = {self.max_abs_diff:.2g} at {_fmt_size(self.image_size, self.batch)}"
            if self.max_abs_diff_second is not None:
                check += f", {self.max_abs_diff_second:.2g} at {_fmt_size(self.second_image_size, self.second_batch)}"
        tail = f"check: {check}; export {self.export_seconds:.1f} s, total {self.seconds:.1f} s"
        return "\n".join([head, *lines, tail])


def _fmt_dim(d: int | str) -> str:
    return str(d) if isinstance(d, int) or " " not in d else f"({d})"


def _fmt_size(size: tuple[int, int] | None, batch: int | None) -> str:
    img = f"image {size[0]}x{size[1]}" if size is not None else "the example inputs"
    return f"{img}, batch {batch}"


# ----------------------------------------------------------------------------------------------- preparation
@dataclass
class _Job:
    model: nn.Module  # the original (reference) model
    export_model: nn.Module  # deployed copy or the model itself
    path: Path
    inputs: list[Tensor]
    image_size: tuple[int, int] | None
    batch: int
    second: list[Tensor] | None
    second_image_size: tuple[int, int] | None
    second_batch: int | None
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    reference: list[Tensor]
    deployed: bool


def _model_specs(model: nn.Module, name: str) -> tuple[FeatureSpec, ...] | None:
    specs = getattr(model, name, None)
    if isinstance(specs, (tuple, list)) and specs and all(isinstance(s, FeatureSpec) for s in specs):
        return tuple(specs)
    return None


def _as_size(value: Any, what: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (height, width), got {value!r}.") from None
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be positive, got {h}x{w}.")
    return h, w


def _prepare(
    what: str,
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: Sequence[Tensor] | None,
    in_specs: Sequence[FeatureSpec] | None,
    image_size: tuple[int, int] | None,
    batch: int | None,
    dynamic: bool,
    deploy_first: bool,
    verify: bool,
    second_image_size: tuple[int, int] | None,
) -> _Job:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what} expects an nn.Module (a neck), got {type(model).__name__}.")
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{what}: {str(target)!r} is a directory; give a file name, e.g. neck.onnx.")
    if not target.parent.is_dir():
        raise FileNotFoundError(
            f"{what}: cannot write {str(target)!r}: directory {str(target.parent)!r} does not exist."
        )
    _require_eval(model, what)
    specs = as_feature_specs(in_specs) if in_specs is not None else _model_specs(model, "in_specs")
    ref_param = _first_tensor(model)
    device = ref_param.device if ref_param is not None else None
    dtype = ref_param.dtype if ref_param is not None and ref_param.is_floating_point() else None

    if example_inputs is not None:
        if isinstance(example_inputs, Tensor) or not isinstance(example_inputs, (list, tuple)):
            raise TypeError(
                f"{what}: example_inputs must be the list of feature maps the neck takes (finest first), got "
                f"{type(example_inputs).__name__}."
            )
        inputs = list(example_inputs)
        if not inputs or not all(isinstance(t, Tensor) for t in inputs):
            raise TypeError(f"{what}: example_inputs must be a non-empty list of tensors.")
        img = _as_size(image_size, "image_size") if image_size is not None else None
        n = int(inputs[0].shape[0])
    else:
        if specs is None:
            raise ValueError(
                f"{what}: {type(model).__name__} has no in_specs; pass example_inputs (the list of feature maps) "
                "or in_specs with image_size."
            )
        img = _as_size(image_size if image_size is not None else EXAMPLE_IMAGE_SIZE, "image_size")
        n = batch if batch is not None else (2 if dynamic else 1)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{what}: batch must be a positive int, got {n!r}.")
        inputs = example_pyramid(specs, img, batch=n, device=device, dtype=dtype)
    if specs is not None and len(specs) != len(inputs):
        raise ValueError(f"{what}: {len(inputs)} example inputs but {len(specs)} in_specs; give one map per level.")

    second = second_size = second_batch = None
    if dynamic and verify:
        if specs is None:
            raise ValueError(f"{what}: checking a dynamic export at a second size needs in_specs (or verify=False).")
        if second_image_size is not None:
            second_size = _as_size(second_image_size, "second_image_size")
        else:
            second_size = next(s for s in SECOND_IMAGE_SIZES if s != img)
        second_batch = n + 1
        second = example_pyramid(specs, second_size, batch=second_batch, device=device, dtype=dtype, seed=1)

    in_names = [f"c{s.level}" for s in specs] if specs is not None else [f"in{i}" for i in range(len(inputs))]
    dyn: dict[str, dict[int, str]] = {}
    if dynamic:
        for name in in_names:
            suffix = name[1:] if specs is not None else f"_{name}"
            dyn[name] = {0: "batch", 2: f"h{suffix}", 3: f"w{suffix}"}

    with torch.no_grad():
        reference = [t.detach() for t in _flatten(model(inputs))]
    out_specs = _model_specs(model, "out_specs")
    if out_specs is not None and len(out_specs) == len(reference):
        out_names = [f"p{s.level}" for s in out_specs]
    else:
        out_names = [f"out{i}" for i in range(len(reference))]

    exported = model
    if deploy_first:  # the torch runtime's copy (BN folded, re-parameterised, fusions frozen), checked
        exported = torch_deploy(model)[0]
        check_outputs(model, exported, (inputs,), 1e-4, what)
    return _Job(
        model=model,
        export_model=exported,
        path=target,
        inputs=inputs,
        image_size=img,
        batch=n,
        second=second,
        second_image_size=second_size,
        second_batch=second_batch,
        input_names=in_names,
        output_names=out_names,
        dynamic_axes=dyn,
        reference=reference,
        deployed=deploy_first,
    )


@contextlib.contextmanager
def _temporary(path: Path) -> Iterator[Path]:
    """A temporary file next to ``path``, removed unless the caller renamed it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _compare(job: _Job, got: Sequence[Any], ref: Sequence[Tensor], where: str, tolerance: float) -> float:
    if len(got) != len(ref):
        raise ExportError(f"the exported {job.path.name} returns {len(got)} outputs at {where}; PyTorch {len(ref)}.")
    worst = 0.0
    for name, g, r in zip(job.output_names, got, ref, strict=True):
        g_t = torch.as_tensor(g).detach().cpu().double()
        r_t = r.detach().cpu().double()
        if tuple(g_t.shape) != tuple(r_t.shape):
            raise ExportError(
                f"the exported {job.path.name} gives {name} of shape {tuple(g_t.shape)} at {where}; PyTorch gives "
                f"{tuple(r_t.shape)}. The exported graph does not generalise to this size."
            )
        if r_t.numel() == 0:
            continue
        diff = float((g_t - r_t).abs().max())
        scale = float(r_t.abs().max())
        if not diff <= tolerance * max(1.0, scale):
            raise ExportError(
                f"the exported {job.path.name} differs from PyTorch at {where}: output {name} max abs diff "
                f"{diff:.3g} (output scale {scale:.3g}, tolerance {tolerance:g} x max(1, scale)); nothing was written."
            )
        worst = max(worst, diff)
    return worst


def _second_reference(job: _Job) -> list[Tensor]:
    assert job.second is not None
    with torch.no_grad():
        return [t.detach() for t in _flatten(job.model(job.second))]


def _run_exported(job: _Job, fn: Any, inputs: list[Tensor], where: str) -> list[Any]:
    """Run the exported file's callable; a failure means the graph does not generalise to these inputs."""
    try:
        return list(fn(inputs))
    except Exception as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        first = lines[-1] if lines[0].startswith("The following operation failed") else lines[0]  # TorchScript
        raise ExportError(
            f"the exported {job.path.name} fails at {where} (input shapes {[tuple(t.shape) for t in inputs]}): "
            f"{first[:300]}; nothing was written."
        ) from e


def _report(
    job: _Job,
    format: str,
    input_shapes: tuple[tuple[int | str, ...], ...],
    output_shapes: tuple[tuple[int | str, ...], ...],
    opset: int | None,
    diff: float | None,
    diff2: float | None,
    verify: bool,
    export_seconds: float,
    t0: float,
) -> ExportReport:
    """The :class:`ExportReport` of a finished export job (fields shared by every format)."""
    return ExportReport(
        path=str(job.path),
        format=format,
        input_names=tuple(job.input_names),
        output_names=tuple(job.output_names),
        input_shapes=input_shapes,
        output_shapes=output_shapes,
        dynamic_axes=job.dynamic_axes,
        image_size=job.image_size,
        batch=job.batch,
        deployed=job.deployed,
        opset=opset,
        max_abs_diff=diff,
        second_image_size=job.second_image_size if verify else None,
        second_batch=job.second_batch if verify else None,
        max_abs_diff_second=diff2,
        export_seconds=export_seconds,
        seconds=time.perf_counter() - t0,
    )


def _verify(job: _Job, run: Any, tolerance: float) -> tuple[float, float | None]:
    """Run the exported callable at the export size (and the second size of a dynamic export) and compare with
    PyTorch's outputs; returns the largest absolute differences (``ExportError`` beyond the tolerance)."""
    where = _fmt_size(job.image_size, job.batch)
    diff = _compare(job, _run_exported(job, run, job.inputs, where), job.reference, where, tolerance)
    diff2 = None
    if job.second is not None:
        where2 = _fmt_size(job.second_image_size, job.second_batch)
        diff2 = _compare(job, _run_exported(job, run, job.second, where2), _second_reference(job), where2, tolerance)
    return diff, diff2
