"""Typed neck options read from a builder's signature, with declared choices and ranges, checked strictly.

A registered neck's options are the keyword parameters of its graph function (``fpn_graph(in_specs, width=256,
levels=None, ...)``): :func:`options_from_signature` turns each into an :class:`OptionSpec` (name, annotation,
default) and attaches the :class:`OptionRule` a neck declares for it (a fixed set of choices, a range).
:func:`check_options` validates what a user passes against them: an unknown name lists the valid ones and the
closest; a value of the wrong type (``levels=(3.7, 5.2)``, ``separable="no"``) or out of range (``repeats=-1``)
raises ``TypeError`` / ``ValueError`` before anything is built. NumPy integers and floats become Python numbers.

Example:
    >>> def graph(in_specs, width: int = 256, fuse: str | None = None, levels: Sequence[int] | None = None): ...
    >>> specs = options_from_signature(graph, {"width": OptionRule(ge=1), "fuse": OptionRule(("fast", "sum"))})
    >>> [s.describe() for s in specs]
    ['width: int = 256 (>= 1)', "fuse: str | None = None ('fast' | 'sum')", 'levels: Sequence[int] | None = None']
    >>> check_options("demo", specs, {"levels": [3, 7], "fuse": "sum"})
    {'levels': [3, 7], 'fuse': 'sum'}
    >>> check_options("demo", specs, {"widht": 64})
    Traceback (most recent call last):
    ...
    TypeError: demo got an unexpected keyword argument 'widht'. Did you mean 'width'? Valid options: width, ...
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from necklace.checks import as_bool, as_choice, as_float, as_int, as_str, closest_hint, describe_value

__all__ = ["OptionRule", "OptionSpec", "check_options", "options_from_signature"]


@dataclass(frozen=True)
class OptionRule:
    """What a neck declares about one option beyond its annotation: the allowed ``choices`` and/or a numeric range
    (``ge``: >=, ``gt``: >, ``le``: <=; applied to every element of a sequence), ``odd`` for a kernel size that must
    keep the map size, and a ``what`` used in messages (``"BiFPN preset"``; default ``"<neck> option <name>"``).

    Example:
        >>> OptionRule(choices=("fast", "softmax", "sum")).choices
        ('fast', 'softmax', 'sum')
    """

    choices: tuple[Any, ...] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    odd: bool = False
    what: str | None = None

    def __post_init__(self) -> None:
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))


@dataclass(frozen=True)
class OptionSpec:
    """One typed option of a registered neck: ``name``, ``annotation`` (as written in the signature), ``default``,
    and the declared ``choices`` / range (``ge``, ``gt``, ``le``).

    Example:
        >>> from necklace import neck_info
        >>> fuse = neck_info("bifpn").option("fuse")
        >>> fuse.annotation, fuse.default, fuse.choices
        ('str | None', None, ('fast', 'softmax', 'sum'))
        >>> fuse.check("softmx", "bifpn")
        Traceback (most recent call last):
        ...
        ValueError: unknown bifpn option fuse 'softmx'; choose one of 'fast', 'softmax', 'sum' or None. Did you ...
    """

    name: str
    annotation: str
    default: Any
    choices: tuple[Any, ...] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    odd: bool = False
    what: str | None = None
    hint: Any = field(default=Any, repr=False, compare=False)

    @property
    def required(self) -> bool:
        """Whether the option has no default (the builder needs it)."""
        return self.default is inspect.Parameter.empty

    def describe(self) -> str:
        """One line for listings: ``fuse: str | None = None ('fast' | 'softmax' | 'sum')``."""
        text = f"{self.name}: {self.annotation}" + ("" if self.required else f" = {self.default!r}")
        extra = []
        if self.choices is not None:
            extra.append(" | ".join(repr(c) for c in self.choices))
        for sym, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le)):
            if bound is not None:
                extra.append(f"{sym} {bound:g}")
        if self.odd:
            extra.append("odd")
        return text + (f" ({', '.join(extra)})" if extra else "")

    def check(self, value: Any, owner: str) -> Any:
        """``value`` checked against the annotation, choices and range (NumPy numbers become Python numbers)."""
        what = self.what or f"{owner} option {self.name}"
        return _check(value, self.hint, what, self)


def _allows_none(hint: Any) -> bool:
    return hint is type(None) or (_is_union(hint) and type(None) in typing.get_args(hint))


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def _is_sequence(hint: Any) -> bool:
    return typing.get_origin(hint) in (collections.abc.Sequence, list, tuple)


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "None"
    if _is_union(hint):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if _is_sequence(hint):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return f"a list of {_type_name(args[0]) if args else 'values'}"
    return getattr(hint, "__name__", str(hint))


def _kind_matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` is at least the right kind of thing for ``hint`` (a list for a sequence, ...)."""
    if _is_sequence(hint):
        return isinstance(value, (list, tuple))
    if hint in (int, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return False


def _check(value: Any, hint: Any, what: str, rule: OptionSpec | OptionRule) -> Any:
    if hint is Any or hint is object:
        return value
    if _is_union(hint):
        members = typing.get_args(hint)
        if value is None:
            if type(None) in members:
                return None
            raise TypeError(f"{what} must be {_type_name(hint)}, got None.")
        errors: list[Exception] = []
        for m in members:
            if m is type(None):
                continue
            try:
                return _check(value, m, what, rule)
            except (TypeError, ValueError) as e:
                if _kind_matches(value, m):
                    raise  # the right kind with a bad element or value: that error is the precise one
                errors.append(e)
        raise TypeError(f"{what} must be {_type_name(hint)}, got {describe_value(value)}.")
    if hint is type(None):
        if value is not None:
            raise TypeError(f"{what} must be None, got {describe_value(value)}.")
        return None
    if _is_sequence(hint):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{what} must be {_type_name(hint)}, got {describe_value(value)}. Pass e.g. [3, 7].")
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        elem = args[0] if args else Any
        items = [_check(v, elem, f"{what}[{i}]", rule) for i, v in enumerate(value)]
        return type(value)(items)
    if hint is bool:
        return as_bool(value, what)
    if hint is int:
        out = as_int(value, what, ge=rule.ge, gt=rule.gt, le=rule.le)
        if rule.odd and out % 2 == 0:
            raise ValueError(
                f"{what} must be odd (1, 3, 5, ...: 'same' padding keeps each map at its level's size), got {out}."
            )
        return _choose(out, what, rule)
    if hint is float:
        return _choose(as_float(value, what, ge=rule.ge, gt=rule.gt, le=rule.le), what, rule)
    if hint is str:
        return _choose(as_str(value, what), what, rule)
    if typing.get_origin(hint) is collections.abc.Callable or hint is Callable:
        if not callable(value):
            raise TypeError(f"{what} must be callable, got {describe_value(value)}.")
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise TypeError(f"{what} must be {hint.__name__}, got {describe_value(value)}.")
    return value


def _choose(value: Any, what: str, rule: OptionSpec | OptionRule) -> Any:
    if rule.choices is None:
        return value
    allow_none = isinstance(rule, OptionSpec) and _allows_none(rule.hint)
    return as_choice(value, what, rule.choices, allow_none=allow_none)


def options_from_signature(
    fn: Callable[..., Any], rules: Mapping[str, OptionRule] | None = None, skip: int = 1
) -> tuple[OptionSpec, ...]:
    """The options of ``fn(in_specs, ...)``: every parameter after the first ``skip`` (the ``in_specs``, whatever
    its name), ``*args``/``**kwargs`` excepted, as :class:`OptionSpec`, each with the :class:`OptionRule` declared
    for it in ``rules``."""
    rules = dict(rules or {})
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:  # an annotation that does not resolve: name it, never guess
        raise TypeError(f"cannot read the option types of {fn.__qualname__}: {e}.") from e
    params = [
        p
        for p in list(sig.parameters.values())[skip:]
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    unknown = sorted(set(rules) - {p.name for p in params})
    if unknown:
        raise ValueError(
            f"rules for {unknown} name no parameter of {fn.__qualname__}; its options are {[p.name for p in params]}."
        )
    out = []
    for p in params:
        rule = rules.get(p.name, OptionRule())
        annotation = p.annotation if isinstance(p.annotation, str) else _type_name(p.annotation)
        out.append(
            OptionSpec(
                name=p.name,
                annotation=annotation,
                default=p.default,
                choices=rule.choices,
                ge=rule.ge,
                gt=rule.gt,
                le=rule.le,
                odd=rule.odd,
                what=rule.what,
                hint=hints.get(p.name, Any),
            )
        )
    return tuple(out)


def check_options(
    owner: str, specs: Sequence[OptionSpec], options: Mapping[str, Any], complete: bool = True
) -> dict[str, Any]:
    """Check ``options`` against ``specs``: unknown names -> ``TypeError`` listing the valid ones and the closest;
    bad values -> ``TypeError`` / ``ValueError``; with ``complete``, a missing required option -> ``TypeError``.
    Returns the options with NumPy numbers made Python numbers."""
    by_name = {s.name: s for s in specs}
    out: dict[str, Any] = {}
    for name, value in options.items():
        spec = by_name.get(name)
        if spec is None:
            valid = ", ".join(by_name) or "(none)"
            raise TypeError(
                f"{owner} got an unexpected keyword argument {name!r}.{closest_hint(name, by_name)} "
                f"Valid options: {valid}."
            )
        out[name] = spec.check(value, owner)
    missing = [s.name for s in specs if s.required and s.name not in out]
    if complete and missing:
        raise TypeError(f"{owner} needs the option(s) {missing}; see neck_info({owner!r}).options.")
    return out
