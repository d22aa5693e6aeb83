"""ONNX export: ``torch.export`` (dynamic batch / height / width per input), the dynamo ONNX exporter, and a check
of the file in onnxruntime at the export size and at a second size.

Output sizes of extra levels appear in the ONNX file as expressions of the coarsest input's size, e.g.
``((h5 - 1)//2) + 1`` = ``ceil(h5 / 2)``: the engine's rule, for odd sizes too.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from necklace.export.common import (
    ExportError,
    ExportReport,
    Shape,
    _Job,
    _prepare,
    _report,
    _temporary,
    _verify,
)
from necklace.spec import FeatureSpec

__all__ = ["export_onnx"]


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
            diff, diff2 = _verify(job, run, tolerance)
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
