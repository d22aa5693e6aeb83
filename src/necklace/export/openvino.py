"""OpenVINO export: the neck's ONNX graph (dynamic batch / height / width when asked) converted to OpenVINO IR
(``.xml`` + ``.bin``), compiled on the CPU with the f32 precision hint and checked against PyTorch at the export
size and at a second size before anything is written."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from necklace.deploy.ov import openvino_core
from necklace.export.common import (
    ExportReport,
    _prepare,
    _report,
    _verify,
)
from necklace.spec import FeatureSpec

__all__ = ["export_openvino"]


def export_openvino(
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
    """Export ``model`` (a neck) to OpenVINO IR at ``path`` (``.xml``; the weights go to the ``.bin`` beside it).

    Arguments as :func:`necklace.export_onnx`. With ``verify`` the IR is compiled on the CPU (f32 precision hint)
    and every output compared with the PyTorch model's (``tolerance * max(1, max|output|)``), at a second size too
    when ``dynamic``; both files are written only after the check passed (atomically). Needs ``openvino`` and the
    ONNX exporter (``pip install 'necklace[runtimes]'``).

    Example:
        >>> import necklace, tempfile, pathlib
        >>> neck = necklace.build_neck("fpn", [(8, 8), (16, 16)], width=8).eval()
        >>> with tempfile.TemporaryDirectory() as d:
        ...     r = export_openvino(neck, pathlib.Path(d) / "neck.xml", dynamic=True)
        ...     r.format, r.max_abs_diff < 1e-4, sorted(p.suffix for p in pathlib.Path(d).iterdir())
        ('openvino', True, ['.bin', '.xml'])
    """
    t0 = time.perf_counter()
    what = "export_openvino"
    if Path(path).suffix != ".xml":
        raise ValueError(f"{what}: OpenVINO IR is an .xml file (weights in the .bin beside it), got {str(path)!r}.")
    try:
        import openvino as ov
    except ImportError as e:
        raise ImportError(f"{what} needs openvino: pip install 'necklace[runtimes]' ({e}).") from e
    from necklace.export.onnx import export_onnx

    job = _prepare(
        what, model, path, example_inputs, in_specs, image_size, batch, dynamic, deploy_first, verify, second_image_size
    )
    t_export = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="necklace-ov-", dir=job.path.parent) as folder:
        onnx_path = Path(folder) / "neck.onnx"
        export_onnx(
            job.export_model,
            onnx_path,
            job.inputs,
            in_specs=in_specs if in_specs is not None else getattr(model, "in_specs", None),
            dynamic=dynamic,
            deploy_first=False,
            verify=False,
        )
        core = openvino_core()
        ov_model = core.read_model(str(onnx_path))
        export_seconds = time.perf_counter() - t_export
        diff = diff2 = None
        if verify:
            compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

            def run(inputs: list[Tensor]) -> list[Any]:
                out = compiled([t.detach().cpu().numpy() for t in inputs])
                return [out[o] for o in compiled.outputs]

            diff, diff2 = _verify(job, run, tolerance)
        xml = Path(folder) / "ir.xml"
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)
        in_shapes = tuple(tuple(d if isinstance(d, int) else str(d) for d in _dims(p)) for p in ov_model.inputs)
        out_shapes = tuple(tuple(d if isinstance(d, int) else str(d) for d in _dims(p)) for p in ov_model.outputs)
        os.replace(xml.with_suffix(".bin"), job.path.with_suffix(".bin"))  # weights first: the .xml names them
        os.replace(xml, job.path)
        shutil.rmtree(folder, ignore_errors=True)
    return _report(job, "openvino", in_shapes, out_shapes, None, diff, diff2, verify, export_seconds, t0)


def _dims(port: Any) -> list[int | str]:
    shape = port.get_partial_shape()
    return [d.get_length() if d.is_static else "?" for d in shape]
