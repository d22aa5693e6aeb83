"""ONNX Runtime and OpenVINO as necklace runtimes: a module wrapping the session, ``list[Tensor]`` in and out.

``necklace.deploy(neck, runtime="onnxruntime")`` (or ``"openvino"``) exports the torch-deployed neck to ONNX with
dynamic batch, height and width (:func:`necklace.export_onnx`, verified), and returns a :class:`SessionNeck`: its
``forward`` takes the same list of backbone maps as the neck (float32, CPU) and returns the same list of outputs,
at any input size. The session is rebuilt from the ONNX bytes it keeps after ``copy.deepcopy`` or pickling.
OpenVINO runs with the f32 inference-precision hint, so its results match fp32 PyTorch's.

Example:
    >>> import torch, necklace
    >>> neck = necklace.build_neck("fpn", [(16, 8), (32, 16)], width=8).eval()
    >>> ort_neck = necklace.deploy(neck, runtime="onnxruntime")
    >>> feats = [torch.randn(1, 16, 9, 11), torch.randn(1, 32, 5, 6)]
    >>> [tuple(o.shape) for o in ort_neck(feats)], type(ort_neck).__name__
    ([(1, 8, 9, 11), (1, 8, 5, 6), (1, 8, 3, 3)], 'SessionNeck')
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from necklace.deploy.ov import openvino_core
from necklace.spec import FeatureSpec

__all__ = ["SESSION_RUNTIMES", "SessionNeck", "export_session", "runtime_available"]

#: runtime name -> the Python package it needs
SESSION_RUNTIMES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def runtime_available(runtime: str) -> str | None:
    """``None`` when ``runtime``'s package imports, else why not (with the command that installs it)."""
    package = SESSION_RUNTIMES[runtime]
    try:
        __import__(package)
    except ImportError as e:
        return f"{runtime} is not installed ({e}); pip install {package}"
    return None


class SessionNeck(nn.Module):
    """A neck run by an ONNX Runtime or OpenVINO session over its ONNX graph: ``list[Tensor] -> list[Tensor]``.

    ``in_specs`` / ``out_specs`` are the neck's; inputs must be float32 CPU tensors, one per input level, finest
    first (any batch, height and width). Built by :func:`export_session` (``necklace.deploy(runtime=...)``).

    Example:
        >>> import necklace
        >>> neck = necklace.build_neck("fpn", [(8, 8), (16, 16)], width=8).eval()
        >>> ov_neck = necklace.deploy(neck, runtime="openvino")
        >>> ov_neck.runtime, [tuple(o.shape) for o in ov_neck([torch.randn(2, 8, 6, 6), torch.randn(2, 16, 3, 3)])]
        ('openvino', [(2, 8, 6, 6), (2, 8, 3, 3), (2, 8, 2, 2)])
    """

    def __init__(
        self,
        runtime: str,
        onnx_bytes: bytes,
        input_names: Sequence[str],
        output_names: Sequence[str],
        in_specs: Sequence[FeatureSpec] | None = None,
        out_specs: Sequence[FeatureSpec] | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__()
        if runtime not in SESSION_RUNTIMES:
            raise ValueError(f"unknown session runtime {runtime!r}; choose one of {sorted(SESSION_RUNTIMES)}.")
        self.runtime = runtime
        self.onnx_bytes = onnx_bytes
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        if in_specs is not None:
            self.in_specs = tuple(in_specs)
        if out_specs is not None:
            self.out_specs = tuple(out_specs)
        self.threads = threads if threads is not None else max(1, torch.get_num_threads())
        self._session: Any = None

    def _open(self) -> Any:
        if self.runtime == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            # no spinning workers: the neck runs inside a PyTorch model whose next ops use torch's threads, which
            # ONNX Runtime's spinning workers would take the cores from (measured on 2 cores: torch's YOLOv8n neck
            # right after an ONNX Runtime call 2-3x its time alone; ONNX Runtime itself within noise without them)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
            return ort.InferenceSession(self.onnx_bytes, options, providers=["CPUExecutionProvider"])
        core = openvino_core()
        model = core.read_model(self.onnx_bytes)
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": self.threads}
        return core.compile_model(model, "CPU", config).create_infer_request()

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        if not isinstance(features, (list, tuple)) or len(features) != len(self.input_names):
            got = f"{len(features)} maps" if isinstance(features, (list, tuple)) else type(features).__name__
            raise ValueError(
                f"{self.runtime} neck: expected a list of {len(self.input_names)} feature maps "
                f"({', '.join(self.input_names)}), finest first; got {got}."
            )
        for name, f in zip(self.input_names, features, strict=True):
            if not isinstance(f, Tensor) or f.dtype != torch.float32 or f.device.type != "cpu" or f.dim() != 4:
                what = f"{f.dtype} {f.device.type} {f.dim()}-d tensor" if isinstance(f, Tensor) else type(f).__name__
                raise TypeError(
                    f"{self.runtime} neck: input {name} must be a float32 CPU (N, C, H, W) tensor, got a {what}; "
                    "convert with .float().cpu(), or deploy with runtime='torch' for other dtypes/devices."
                )
        if self._session is None:
            self._session = self._open()
        arrays = [f.detach().contiguous().numpy() for f in features]
        if self.runtime == "onnxruntime":
            outs = self._session.run(list(self.output_names), dict(zip(self.input_names, arrays, strict=True)))
        else:
            self._session.infer(arrays)
            outs = [self._session.get_output_tensor(i).data.copy() for i in range(len(self.output_names))]
        return [torch.from_numpy(o) for o in outs]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["_session"] = None  # deepcopy / pickle: the session is rebuilt from the ONNX bytes on first use
        return state

    def extra_repr(self) -> str:
        return f"{self.runtime}, inputs={list(self.input_names)}, outputs={list(self.output_names)}"


def export_session(runtime: str, model: nn.Module, inputs: list[Tensor], threads: int | None = None) -> SessionNeck:
    """Export ``model`` (a deployed neck in ``eval()``) to ONNX with dynamic batch / height / width, verified in
    ONNX Runtime, and wrap it for ``runtime``. The ONNX file lives in a private temporary folder only while it is
    written; the module keeps its bytes."""
    from necklace.export import export_onnx

    why = runtime_available(runtime)
    if why is not None:
        raise ImportError(why)
    in_specs = getattr(model, "in_specs", None)
    with tempfile.TemporaryDirectory(prefix="necklace-onnx-") as folder:
        path = Path(folder) / "neck.onnx"
        report = export_onnx(
            model,
            path,
            example_inputs=inputs,
            in_specs=in_specs,
            dynamic=in_specs is not None,
            deploy_first=False,
            verify=runtime_available("onnxruntime") is None,
        )
        data = path.read_bytes()
        for extra in os.listdir(folder):  # (external weight files would be lost: refuse them)
            if extra != "neck.onnx":
                raise RuntimeError(f"export_session: the ONNX export wrote external data ({extra}); not supported.")
    return SessionNeck(
        runtime,
        data,
        report.input_names,
        report.output_names,
        in_specs=in_specs,
        out_specs=getattr(model, "out_specs", None),
        threads=threads,
    )
