"""Argument helpers every ``necklace`` command shares: the usage error, option parsing (``-o KEY=VALUE``),
number lists, tables, atomic text output. A leaf: it imports nothing from necklace, so any command module (and
nothing in the library) may use it."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["parse_options", "parse_value"]

_PROG = "necklace"
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?)$")


class _UsageError(Exception):
    """A user error the CLI reports as one line on stderr (exit status 2)."""


# ------------------------------------------------------------------------------------------------ parsing
def parse_value(text: str) -> Any:
    """Parse an option value: int, float, ``true``/``false``, ``none``, a comma list, or else a string.

    Example:
        >>> parse_value("256"), parse_value("1e-3"), parse_value("True"), parse_value("none")
        (256, 0.001, True, None)
        >>> parse_value("3,7"), parse_value("'d0'"), parse_value("nearest")
        ([3, 7], 'd0', 'nearest')
    """
    text = text.strip()
    if "," in text:
        return [parse_value(part) for part in text.split(",") if part.strip()]
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    if _NUMBER.match(text):
        try:
            return int(text)
        except ValueError:
            return float(text)
    return text


def parse_options(items: Sequence[str] | None) -> dict[str, Any]:
    """Turn ``["width=128", "levels=3,7"]`` into ``{"width": 128, "levels": [3, 7]}``.

    Example:
        >>> parse_options(["width=128", "levels=3,7", "act=relu"])
        {'width': 128, 'levels': [3, 7], 'act': 'relu'}
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise _UsageError(f"bad option {item!r}: write it as key=value, e.g. --option width=128")
        out[key] = parse_value(value)
    return out


def _int_list(flag: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise _UsageError(f"{flag} {text!r}: expected comma-separated integers, e.g. {flag} 512,1024,2048") from None
    if not values:
        raise _UsageError(f"{flag} is empty: give comma-separated integers, e.g. {flag} 512,1024,2048")
    return values


def _levels(text: str) -> list[int]:
    parts = re.split(r"[-,:]", text.strip())
    try:
        lo, hi = (int(p) for p in parts)
    except ValueError:
        raise _UsageError(f"--levels {text!r}: expected MIN-MAX, e.g. --levels 3-7") from None
    return [lo, hi]


#: flag attribute -> training-config field, shared by compare's and search's YOLO settings
_SCHEDULE_FLAGS = (
    ("image_size", "image_size"),
    ("batch_size", "batch_size"),
    ("epochs", "epochs"),
    ("lr", "lr"),
    ("device", "device"),
    ("workers", "num_workers"),
)


def _copy_flags(args: Any, target: dict[str, Any], pairs: Sequence[tuple[str, str]]) -> None:
    """``target[field] = args.<flag>`` for every ``(flag, field)`` pair whose flag was given (not ``None``)."""
    for flag, name in pairs:
        value = getattr(args, flag)
        if value is not None:
            target[name] = value


def _refuse_for_yolo(args: Any, why: Mapping[str, str]) -> None:
    """A usage error for the first flag of ``why`` (flag attribute -> reason) that was given although the detector
    is a YOLO model."""
    for flag, reason in why.items():
        if getattr(args, flag) not in (None, False, []):
            raise _UsageError(f"--{flag.replace('_', '-')} does not apply to YOLO detectors: {reason}.")


def _command_text(args: Any, command: str) -> str:
    """The ``necklace COMMAND ...`` line of parsed ``args`` (the flags as given; ``-o`` for ``--option``), for
    reports.

    Example:
        >>> import argparse
        >>> args = argparse.Namespace(command="compare", seeds="0,1", quick=True, option=["width=16"])
        >>> _command_text(args, "compare")
        'necklace compare --seeds 0,1 --quick -o width=16'
    """
    import shlex

    parts = ["necklace", command]
    for name, value in vars(args).items():
        if name in ("command", "func", "debug", "quiet") or value in (None, False):
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            for v in value:
                parts += ["-o" if name == "option" else flag, v]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def _detector_levels(text: str) -> list[int]:
    """``--levels LO,HI`` of a YOLO detector (compare, search): the pyramid levels of the neck and ``Detect``."""
    levels = [v.strip() for v in text.split(",")]
    if len(levels) != 2 or not all(v.isdigit() for v in levels):
        raise _UsageError(f"--levels {text!r}: expected LO,HI such as 3,5 (P3-P5) or 2,5 (adds P2)")
    return [int(v) for v in levels]


# ------------------------------------------------------------------------------------------------ output
def _check_output_file(path: str, flag: str) -> Path:
    """Fail early (before any work) when ``path`` cannot be written as a file: a directory is in the way or the
    directory it goes into does not exist."""
    target = Path(path)
    if target.is_dir():
        raise _UsageError(f"{flag} {path!r} is a directory; give a file name, e.g. {str(target / 'out.json')!r}.")
    if not target.parent.is_dir():
        raise _UsageError(
            f"cannot write {flag} {path!r}: directory {str(target.parent)!r} does not exist (create it first)."
        )
    return target


def _write_text(path: str, text: str, flag: str = "--output") -> None:
    """Write ``text`` to ``path`` atomically (temporary file + rename), with plain errors."""
    target = _check_output_file(path, flag)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _UsageError(f"cannot write {flag} {path!r}: {e.strerror or e}.") from e


def _table(rows: list[list[str]], right: Sequence[int] = ()) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def fmt(row: list[str]) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    lines = [fmt(rows[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows[1:]]
    return "\n".join(lines)


def _fmt_params(n: int) -> str:
    return f"{n:,} ({n / 1e6:.2f} M)"


def _check_suffix(path: str, suffixes: tuple[str, ...], flag: str) -> None:
    if Path(path).suffix.lower() not in suffixes:
        raise _UsageError(f"{flag} {path!r}: the file name must end in {' or '.join(suffixes)}.")


def _progress(err: TextIO, label: str) -> Callable[[int, int], None]:
    live = err.isatty()

    def report(done: int, total: int) -> None:
        if live:
            err.write(f"\r{label}: {done}/{total} runs")
            if done == total:
                err.write("\n")
            err.flush()
        elif done == total:
            err.write(f"{label}: {done}/{total} runs done\n")
            err.flush()

    return report


def _one_line(e: BaseException) -> str:
    text = str(e) if not isinstance(e, KeyError) else f"missing key {e.args[0]!r}"
    return " ".join(text.split()) or type(e).__name__
