"""The process's one ``openvino.Core`` (a leaf module: the session runtime and the OpenVINO exporter both use it)."""

from __future__ import annotations

from typing import Any

__all__ = ["openvino_core"]

_CORE: list[Any] = []


def openvino_core() -> Any:
    """One ``openvino.Core`` for the process: a Core that goes away unloads its device plugins, and a plugin
    unloaded while its threads or handlers are still referenced crashed a later signal in the same process (a
    segmentation fault at the next SIGINT). ``ImportError`` without openvino."""
    if not _CORE:
        import openvino as ov

        _CORE.append(ov.Core())
    return _CORE[0]
