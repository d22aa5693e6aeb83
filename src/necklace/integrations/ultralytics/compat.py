"""Which Ultralytics versions the integration supports, checked with an error that names the range.

The integration builds on Ultralytics internals that change between minor versions (``parse_model``, the
trainer's ``get_model`` / ``setup_model``, ``Detect``): only the range below is tested. The check reads the
installed version from the package metadata (or ``ultralytics.__version__``) and never imports anything else.
"""

from __future__ import annotations

import re
from importlib import metadata

__all__ = ["SUPPORTED_ULTRALYTICS", "check_ultralytics_version", "ultralytics_version"]

#: ``(lowest supported, first unsupported)`` Ultralytics versions: ``>=8.3.150,<8.5.0`` (tested: 8.3.150, 8.3.253,
#: 8.4.0, 8.4.190; 8.3.0 lacks the ``Index`` layer the model is built with)
SUPPORTED_ULTRALYTICS: tuple[tuple[int, int, int], tuple[int, int, int]] = ((8, 3, 150), (8, 5, 0))
_PIP = "pip install 'necklace[ultralytics]'  (or: pip install 'ultralytics>=8.3.150,<8.5')"


def _fmt(v: tuple[int, int, int]) -> str:
    return ".".join(str(x) for x in v)


def supported_range() -> str:
    """The supported range as pip writes it.

    Example:
        >>> supported_range()
        '>=8.3.150,<8.5.0'
    """
    lo, hi = SUPPORTED_ULTRALYTICS
    return f">={_fmt(lo)},<{_fmt(hi)}"


def ultralytics_version() -> str | None:
    """The installed Ultralytics version string, ``None`` when it is not installed (nothing is imported)."""
    try:
        return metadata.version("ultralytics")
    except metadata.PackageNotFoundError:
        return None


def _parse(version: str) -> tuple[int, int, int] | None:
    m = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", version)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def check_ultralytics_version(version: str | None = None) -> str:
    """Return the Ultralytics version (``version`` or the installed one) when it is supported, else raise.

    ``ImportError`` when Ultralytics is not installed or its version is outside :data:`SUPPORTED_ULTRALYTICS`,
    naming the version found, the supported range and the pip command.

    Example:
        >>> check_ultralytics_version("8.4.190")
        '8.4.190'
        >>> check_ultralytics_version("8.2.103")
        Traceback (most recent call last):
        ...
        ImportError: necklace's Ultralytics integration supports ultralytics>=8.3.150,<8.5.0, found 8.2.103. ...
    """
    found = ultralytics_version() if version is None else version
    if found is None:
        raise ImportError(f"necklace's Ultralytics integration needs ultralytics{supported_range()}: {_PIP}")
    parsed = _parse(found)
    lo, hi = SUPPORTED_ULTRALYTICS
    if parsed is None or not lo <= parsed < hi:
        raise ImportError(
            f"necklace's Ultralytics integration supports ultralytics{supported_range()}, found {found}. "
            f"Install a supported version: {_PIP}"
        )
    return found
