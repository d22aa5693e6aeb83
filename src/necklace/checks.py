"""Strict checks for values that come from users: no silent float -> int, no str -> bool, unknown keys refused.

Every helper raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, wrong value) with a message
that names what was given, what was expected and how to fix it. NumPy scalars are accepted as the Python numbers
they stand for (``np.int64(3)`` -> ``3``); ``bool`` is never an int, and a float is never silently truncated.

Example:
    >>> as_int(3, "levels[0]")
    3
    >>> as_int(3.9, "levels[0]")
    Traceback (most recent call last):
    ...
    TypeError: levels[0] must be an int, got 3.9 (float). Pass a whole number such as 3 (no silent rounding).
    >>> check_keys({"kernal": 3}, ("kernel", "act_first"), "block_args of node 'P3'")
    Traceback (most recent call last):
    ...
    ValueError: block_args of node 'P3': unknown key 'kernal'. Did you mean 'kernel'? Valid keys: act_first, kernel.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "as_bool",
    "as_choice",
    "as_float",
    "as_int",
    "as_str",
    "check_keys",
    "closest_hint",
    "describe_value",
    "is_int",
]


def describe_value(value: object) -> str:
    """``repr`` of ``value`` with its type, shortened: ``3.9 (float)``."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def closest_hint(name: object, choices: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the choice closest to ``name`` (difflib), or ``''`` when none is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_keys(data: Mapping[Any, Any], known: Iterable[str], what: str) -> None:
    """Raise ``ValueError`` when ``data`` has a key outside ``known`` (a typo never vanishes silently)."""
    known = sorted(known)
    for key in data:
        if not isinstance(key, str):
            raise TypeError(f"{what}: keys must be strings, got {describe_value(key)}. Valid keys: {', '.join(known)}.")
        if key not in known:
            raise ValueError(
                f"{what}: unknown key {key!r}.{closest_hint(key, known)} Valid keys: {', '.join(known) or '(none)'}."
            )


def _is_numpy_bool(value: object) -> bool:
    t = type(value)
    return t.__module__ == "numpy" and t.__name__ in ("bool_", "bool")


def is_int(value: object) -> bool:
    """Whether ``value`` is an integer (Python or NumPy) and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and not _is_numpy_bool(value)


def _range_error(what: str, value: float, ge: float | None, gt: float | None, le: float | None) -> ValueError | None:
    if ge is not None and not value >= ge:
        return ValueError(f"{what} must be >= {ge}, got {value!r}.")
    if gt is not None and not value > gt:
        return ValueError(f"{what} must be > {gt}, got {value!r}.")
    if le is not None and not value <= le:
        return ValueError(f"{what} must be <= {le}, got {value!r}.")
    return None


def as_int(
    value: object, what: str, *, ge: float | None = None, gt: float | None = None, le: float | None = None
) -> int:
    """``value`` as an ``int`` (NumPy integers accepted); ``TypeError`` for floats, bools and strings."""
    if not is_int(value):
        fix = (
            " Pass a whole number such as 3 (no silent rounding)."
            if isinstance(value, numbers.Real) and not isinstance(value, bool)
            else " Pass a whole number such as 3."
        )
        raise TypeError(f"{what} must be an int, got {describe_value(value)}.{fix}")
    out = int(value)  # type: ignore[call-overload]
    err = _range_error(what, out, ge, gt, le)
    if err is not None:
        raise err
    return out


def as_float(
    value: object,
    what: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    finite: bool = True,
) -> float:
    """``value`` as a ``float`` (ints and NumPy numbers accepted, bools and strings refused); finite by default."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or _is_numpy_bool(value):
        raise TypeError(f"{what} must be a number, got {describe_value(value)}. Pass e.g. 0.5.")
    out = float(value)
    if finite and not math.isfinite(out):
        raise ValueError(f"{what} must be a finite number, got {out!r}.")
    err = _range_error(what, out, ge, gt, le)
    if err is not None:
        raise err
    return out


def as_bool(value: object, what: str) -> bool:
    """``value`` as a ``bool``: only ``True``/``False`` (or a NumPy bool); ``'no'``, ``0`` or ``1`` are refused."""
    if isinstance(value, bool):
        return value
    if _is_numpy_bool(value):
        return bool(value)
    raise TypeError(f"{what} must be True or False, got {describe_value(value)}. Pass a bool, not a string or number.")


def as_str(value: object, what: str) -> str:
    """``value`` when it is a ``str``; ``TypeError`` otherwise."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {describe_value(value)}.")
    return value


def as_choice(value: object, what: str, choices: Sequence[Any], allow_none: bool = False) -> Any:
    """``value`` when it is one of ``choices`` (or ``None`` with ``allow_none``), else a ``ValueError`` naming the
    choices and the closest one."""
    if value is None and allow_none:
        return None
    if is_int(value):
        value = int(value)  # type: ignore[call-overload]
    if isinstance(value, bool) or not any(value == c and type(value) is type(c) for c in choices):
        listed = ", ".join(repr(c) for c in choices) + (" or None" if allow_none else "")
        if isinstance(value, str) or value is None:
            raise ValueError(
                f"unknown {what} {value!r}; choose one of {listed}.{closest_hint(value, [str(c) for c in choices])}"
            )
        raise TypeError(f"{what} must be one of {listed}, got {describe_value(value)}.")
    return value
