"""Import mmdet's necks without mmcv's compiled ops (``mmcv-lite`` has none; no neck calls one).

``mmcv.ops`` loads its C++/CUDA extension at import time through ``mmcv.utils.ext_loader.load_ext``;
:func:`import_mmdet_necks` replaces that loader with one returning a placeholder module (any op call raises),
then imports ``mmdet.models.necks``.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _MissingExt(types.ModuleType):
    """Stands in for ``mmcv._ext``: attribute lookups succeed, calling an op raises."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def _missing(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"mmcv compiled op {name!r} is not available (mmcv-lite + test shim).")

        return _missing


def install_ext_shim() -> None:
    """Replace ``mmcv.utils.ext_loader.load_ext`` by a placeholder loader (must run before ``mmcv.ops``)."""
    if "mmcv.ops" in sys.modules:
        return  # already imported (with real ops or an earlier shim)
    from mmcv.utils import ext_loader

    def load_ext(name: str, funcs: list[str]) -> types.ModuleType:
        return _MissingExt(f"mmcv.{name}")

    ext_loader.load_ext = load_ext  # type: ignore[assignment]


def import_mmdet_necks() -> types.ModuleType:
    """Return ``mmdet.models.necks`` imported with the ext-loader shim in place."""
    install_ext_shim()
    import mmdet.models.necks as necks

    return necks
