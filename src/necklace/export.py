"""Export a neck to ONNX or TorchScript, checked against PyTorch at the export size and at a second size.

:func:`export_onnx` traces with ``torch.export`` (dynamic batch/height/width per input when ``dynamic=True``),
converts with the dynamo ONNX exporter, runs the file in onnxruntime and compares with the PyTorch model.
:func:`export_torchscript` traces with ``torch.jit.trace`` and checks the saved file the same way. Both deploy a
copy first (:func:`necklace.deploy`: re-parameterise, fold BN, freeze fusion weights), write the file atomically
(a temporary file renamed into place only after the check passed) and return an :class:`ExportReport`.

Inputs are named ``c<level>`` (``c3`` for stride 8) and outputs ``p<level>``; the dynamic axes of input ``c3``
are ``batch``, ``h3`` and ``w3``. Output sizes of extra levels appear in the ONNX file as expressions of the
coarsest input's size, e.g. ``((h5 - 1)//2) + 1`` = ``ceil(h5 / 2)``: the engine's rule, for odd sizes too.

Only inference graphs are exported: a model with any module in training mode is refused (``ValueError``), as
:func:`necklace.deploy` does, because BatchNorm must use its running statistics.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from necklace.deploy import deploy
from necklace.deploy.passes import EXAMPLE_IMAGE_SIZE, _first_tensor, _flatten, _require_eval, example_pyramid
from necklace.spec import FeatureSpec, as_feature_specs

__all__ = ["EXPORT_FORMATS", "ExportError", "ExportReport", "export_model", "export_onnx", "export_torchscript"]

#: Formats :func:`export_model` knows, with the file suffixes the CLI infers them from.
EXPORT_FORMATS: dict[str, tuple[str, ...]] = {"onnx": (".onnx",), "torchscript": (".pt", ".ts", ".torchscript")}

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

    exported = deploy(model, (inputs,), check=True) if deploy_first else model
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


# ------------------------------------------------------------------------------------------------------ ONNX
def _size_oblivious() -> contextlib.AbstractContextManager[Any]:
    """Let torch.export reason about sizes as if none were 0 or 1 (no 0/1 specialisation guards)."""
    try:
        from torch.fx.experimental import _config as fx_config
    except ImportError:  # pragma: no cover - older torch
        return contextlib.nullcontext()
    if not hasattr(fx_config, "backed_size_oblivious"):  # pragma: no cover - older torch
        return contextlib.nullcontext()
    patch: Any = fx_config.patch  # type: ignore[attr-defined]  # installed by torch's config module
    return patch(backed_size_oblivious=True)


def _torch_export(job: _Job) -> Any:
    dynamic_shapes = None
    if job.dynamic_axes:
        from torch.export import Dim

        batch = Dim("batch", min=1)
        dims = []
        for name in job.input_names:
            axes = job.dynamic_axes[name]
            dims.append({0: batch, 2: Dim(axes[2], min=1), 3: Dim(axes[3], min=1)})
        dynamic_shapes = (dims,)
    try:
        with _size_oblivious() if job.dynamic_axes else contextlib.nullcontext():
            return torch.export.export(job.export_model, (job.inputs,), dynamic_shapes=dynamic_shapes)
    except Exception as e:
        text = str(e)
        lines = [ln.strip(" -") for ln in text.splitlines() if ln.strip()]
        if job.dynamic_axes and ("Constraints violated" in text or "specializ" in text):
            fixed = re.findall(
                r"You marked (\w+) as dynamic but your code specialized it to be a constant \((\d+)\)", text
            )
            guarded = sorted(set(re.findall(r"Not all values of (\w+) ", text)))
            detail = ", ".join(f"{n}={v}" for n, v in fixed) or ("constrained " + ", ".join(guarded) if guarded else "")
            raise ExportError(
                f"{type(job.model).__name__} cannot be exported with dynamic height/width: torch.export fixed "
                f"{detail or 'some sizes'} at the example's size. Some op computes with the input size in Python "
                "(e.g. adaptive pooling to int(h * ratio) bins); export with dynamic=False for a fixed size."
            ) from e
        raise ExportError(f"torch.export failed for {type(job.model).__name__}: {lines[0] if lines else e!r}") from e


def _rename_dims(proto: Any, program: Any, job: _Job) -> None:
    """Give the ONNX file's symbolic dims our axis names (``s14`` -> ``h3``), expressions included."""
    mapping: dict[str, str] = {}
    user = list(program.graph_signature.user_inputs)
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for in_name, ph_name in zip(job.input_names, user, strict=False):
        val = placeholders[ph_name].meta.get("val")
        if val is None:
            continue
        for axis, axis_name in job.dynamic_axes.get(in_name, {}).items():
            dim = val.shape[axis]
            if isinstance(dim, torch.SymInt):
                mapping.setdefault(str(dim.node.expr), axis_name)
    if not mapping:
        return
    pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True)) + r")\b")
    ceil = re.compile(r"\(*(\w+) - 1\)//(\d+)\)*\s*\+\s*1")  # sympy's "(((h5 - 1)//2)) + 1" = ceil(h5/2)
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for d in value.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                text = pattern.sub(lambda m: mapping[m.group(1)], d.dim_param)
                d.dim_param = ceil.sub(r"ceil(\1/\2)", text) if ceil.fullmatch(text) else text


def _proto_shapes(values: Any) -> tuple[Shape, ...]:
    shapes = []
    for v in values:
        dims: list[int | str] = []
        for d in v.type.tensor_type.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else d.dim_param)
        shapes.append(tuple(dims))
    return tuple(shapes)


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


def _ort_runner(session: Any, job: _Job) -> Any:
    def run(inputs: list[Tensor]) -> list[Any]:
        feeds = {name: t.detach().cpu().numpy() for name, t in zip(job.input_names, inputs, strict=True)}
        return list(session.run(None, feeds))

    return run


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: Sequence[Tensor] | None = None,
    *,
    in_specs: Sequence[FeatureSpec] | None = None,
    image_size: tuple[int, int] | None = None,
    batch: int | None = None,
    dynamic: bool = False,
    opset: int | None = None,
    deploy_first: bool = True,
    verify: bool = True,
    second_image_size: tuple[int, int] | None = None,
    tolerance: float = 1e-4,
) -> ExportReport:
    """Export ``model`` (a neck: ``list[Tensor] -> list[Tensor]``) to an ONNX file at ``path``.

    The example inputs are ``example_inputs``, or a random pyramid for ``in_specs`` (default: the model's) at
    ``image_size`` (default 97x131, odd on purpose) with ``batch`` images (default 2 when dynamic, else 1).

    ``dynamic=True`` exports batch, height and width of every input as dynamic axes (``torch.export`` with one
    ``Dim`` each; the engine computes level sizes without Python branches on them, so nothing is baked in) and,
    with ``verify``, runs the file at a second image size and batch (``second_image_size``, default 64x80, or
    161x97 when exporting at 64x80). Any size works, odd ones included: every output has ``ceil(H / stride)``,
    as in PyTorch. The graph assumes the backbone maps are each about half the previous (``ceil`` or ``floor``
    halving; a larger map is cropped like PyTorch does); a model whose ops compute with sizes in Python (AugFPN's
    adaptive pooling) raises :class:`ExportError` — export it with ``dynamic=False``.

    ``deploy_first``: export :func:`necklace.deploy`'s copy (BN folded, re-parameterised, fusion weights
    frozen: fewer ONNX nodes); the check still compares with the original ``model``. ``verify``: run the file in
    onnxruntime (CPU) and raise :class:`ExportError` when an output differs by more than
    ``tolerance * max(1, max|output|)``; the file is then not written. ``opset``: ONNX opset (default: the
    exporter's). Raises ``ValueError`` when a module is in training mode (call ``model.eval()`` first) and
    ``FileNotFoundError`` when the directory of ``path`` does not exist; needs ``onnx`` and ``onnxscript``
    (``pip install necklace[export]``), plus ``onnxruntime`` to verify.
    """
    t0 = time.perf_counter()
    what = "export_onnx"
    job = _prepare(
        what, model, path, example_inputs, in_specs, image_size, batch, dynamic, deploy_first, verify, second_image_size
    )
    try:
        import onnx
    except ImportError as e:
        raise ImportError(f"{what} needs onnx and onnxscript: pip install 'necklace[export]' ({e}).") from e
    if verify:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError(f"{what}: verify=True needs onnxruntime: pip install onnxruntime ({e}).") from e

    t_export = time.perf_counter()
    program = _torch_export(job)
    try:
        onnx_program = torch.onnx.export(
            program,
            (job.inputs,),
            dynamo=True,
            input_names=job.input_names,
            output_names=job.output_names,
            opset_version=opset,
            verbose=False,
        )
    except Exception as e:
        first = next((ln for ln in str(e).splitlines() if ln.strip()), repr(e))
        raise ExportError(f"the ONNX conversion of {type(model).__name__} failed: {first}") from e
    assert onnx_program is not None
    proto = onnx_program.model_proto
    _rename_dims(proto, program, job)
    export_seconds = time.perf_counter() - t_export
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)

    diff = diff2 = None
    with _temporary(job.path) as tmp:
        onnx.save_model(proto, str(tmp))
        if verify:
            options = ort.SessionOptions()
            options.intra_op_num_threads = max(1, torch.get_num_threads())
            session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
            run = _ort_runner(session, job)
            where = _fmt_size(job.image_size, job.batch)
            diff = _compare(job, _run_exported(job, run, job.inputs, where), job.reference, where, tolerance)
            if job.second is not None:
                where2 = _fmt_size(job.second_image_size, job.second_batch)
                got2 = _run_exported(job, run, job.second, where2)
                diff2 = _compare(job, got2, _second_reference(job), where2, tolerance)
        os.replace(tmp, job.path)
    return _report(
        job,
        "onnx",
        _proto_shapes(proto.graph.input),
        _proto_shapes(proto.graph.output),
        opset_used,
        diff,
        diff2,
        verify,
        export_seconds,
        t0,
    )


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
                    where = _fmt_size(job.image_size, job.batch)
                    run = lambda xs: _flatten(loaded(xs))  # noqa: E731
                    diff = _compare(job, _run_exported(job, run, job.inputs, where), job.reference, where, tolerance)
                    if job.second is not None:
                        where2 = _fmt_size(job.second_image_size, job.second_batch)
                        got2 = _run_exported(job, run, job.second, where2)
                        diff2 = _compare(job, got2, _second_reference(job), where2, tolerance)
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


def export_model(model: nn.Module, path: str | os.PathLike[str], format: str = "onnx", **options: Any) -> ExportReport:
    """Export with :func:`export_onnx` (``format="onnx"``) or :func:`export_torchscript` (``"torchscript"``).

    Example:
        >>> export_model(nn.Identity(), "x.onnx", format="tflite")
        Traceback (most recent call last):
        ...
        ValueError: unknown export format 'tflite'; choose one of ['onnx', 'torchscript'].
    """
    if format == "onnx":
        return export_onnx(model, path, **options)
    if format == "torchscript":
        return export_torchscript(model, path, **options)
    raise ValueError(f"unknown export format {format!r}; choose one of {sorted(EXPORT_FORMATS)}.")
